"""DALNet: a three-stream ResNet-50 with the Dynamic Auxiliary Generator and MIA.

Implements DALNet's §2 ("Dynamic Auxiliary Generator", "Feature Extraction", "Modality Interactive
Attention") as fixed in docs/design.md §4 "DAG" and "Three streams". The maths lives in ``dag.py``,
``mia.py``, ``resnet.py`` and ``heads.py``; this module only assembles them.

Interpretations chosen:

* Streams. Photo, auxiliary and sketch each have their own stem + layer1 + layer2
  (``photo_stream``, ``aux_stream``, ``sketch_stream``); layer3 and layer4 are shared and see the
  concatenation [photo | aux | sketch], so the shared BatchNorm statistics mix the three modalities
  (as the baseline's shared stages mix two).
* The auxiliary image of photo i is DAG(photo i, mask i), so row i of the aux stream has photo i's
  identity. The batch layout [photos | sketches] pairs photo i with sketch i of the same identity
  (sampler's module doc), which is how MIA pairs (X_photo_i, A_i) and (X_sketch_i, A_i).
* The foreground ``mask`` arrives with the batch, one (H, W, 1) map per row of [photos | sketches]
  (sketch rows are ignored): precomputed by the frozen U²-Net, computed in the step by the frozen
  U²-Net, or absent (no masking) — docs/design.md §4's three mask sources. The U²-Net is not a submodule:
  it is frozen, so its weights are not parameters of this model (``methods/dalnet.py``).
* Pooling: one shared GeM with a learnable p (init 3) for the shared-backbone features; the MIA
  outputs are LayerNorm-ed (signed) maps, which GeM's clamp at eps would mostly zero, so they are
  average-pooled. The style refinement features are the private-stream (layer2) maps of each
  stream pooled by a second learnable GeM, ``style_gem`` (init 3), as the seed pools the "front-end
  ResBlock" features with GeM before the style loss; it has its own p because those maps are
  another level of the network than the shared ones. Gradients to the sketch/photo side are
  stopped in the loss wiring.
* The intra-modal circle needs a "before MIA" feature of the same kind as the "after MIA" one:
  the MIA output is a mean of LayerNorm-ed positions (each position has zero channel mean), while
  the GeM feature is a mean of ReLU outputs (every component ≥ 0). A non-negative vector v has
  cosine at most √(1 − cos²(v, 𝟙)) with any zero-mean one, about 0.4 at init, below the circle
  target 1 − m = 0.75, so that pair could never be satisfied. ``out['mia'][t]['pre']`` is instead
  the unrefined shared map X_t through the *same* LayerNorm as X̂_t (ACA's ``norm``), mean-pooled
  like X̂_t: pre and post then differ only by what MIA adds (BAM's gate and the attention round
  trip), and pre = post is reachable.
* Without MIA, the intra-modal circle compares ``out['streams'][t]['ln_feat']``: the shared map
  through a parameter-free LayerNorm over channels (ACA's LayerNorm at its initialisation, scale
  1 and bias 0) and mean-pooled, the same kind of feature as MIA's pre/post pair. The GeM feature
  cannot serve there either: within one modality every pair of non-negative GeM features starts
  at cos ≈ 0.93 (width 8, from scratch), and a circle term asking other identities for cos ≤ m
  can only be met by making the features sparse (GeM's p rose from 3 to 7.7 in 12 epochs). On the
  synthetic ablation (seed 0, chance 2.4) that row's single-query mAP was 2.4 on the GeM feature
  with one global clip and 4.2 with ``optim.clip_per_term``; on this feature 2.8 with one global
  clip and 10.1 with ``clip_per_term`` (``methods/dalnet.py``, "Scale").
* Heads: one shared BNNeck (+ classifier) for the three shared-backbone features; a second BNNeck
  ``mia_bnneck`` for the two MIA outputs (their distribution differs: LayerNorm then mean).
* MIA is training only (a sketch query has no paired auxiliary); ``extract`` runs a modality's
  own stream and the shared stages, never the DAG or MIA.
* Ablations (DALNet Tables 1–2): ``use_aux=False`` drops the DAG, the aux stream, MIA and the style
  features (a two-stream model with private early stages); ``use_mia=False`` drops MIA;
  ``dag_trainable=False`` freezes the DAG's edge kernel.

Outputs of ``__call__`` (rows of each entry are this device's N samples of one modality)::

    {'streams': {'photo'|'aux'|'sketch': {'feat', 'bn_feat', 'logits', 'label',
                                          'ln_feat' (without MIA)}},
     'mia':     {'photo'|'sketch': {'feat', 'pre', 'bn_feat', 'logits', 'label'}},  # use_mia
     'style':   {'anchor' (aux), 'positive' (sketch), 'negatives' (photo)},      # use_aux
     'aux_images': the DAG output (N, H, W, 3)}                                  # use_aux

Parameter tree: ``{photo,aux,sketch}_stream/{stem/{conv1,bn1},layer1,layer2}``, ``layer3``,
``layer4``, ``gem/p``, ``style_gem/p``, ``bnneck/{bn,classifier}``, ``dag/edge_kernel``, ``mia/...``,
``mia_bnneck/{bn,classifier}``. ImageNet init (``config.model.init_checkpoint``):
``resnet50_init_map`` gives every stream its own copy of the ResNet-50 stem and private stages, as
the reference code does; ``weights.pretrained.load_pretrained_backbone`` applies it.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from sketchreid_jax.modality import PHOTO, SKETCH
from sketchreid_jax.models.dag import DAG
from sketchreid_jax.models.heads import BNNeck, GeM
from sketchreid_jax.models.mia import MIA
from sketchreid_jax.models.resnet import (
  RESNET50_BLOCKS,
  STAGE_NAMES,
  ResNetStage,
  ResNetStem,
  stage_specs,
)

Dtype = Any
Array = jax.Array

STREAMS = ('photo', 'aux', 'sketch')


class EarlyStream(nn.Module):
  """One modality's private layers: stem + the first ``num_stages`` ResNet stages."""

  width: int = 64
  num_stages: int = 2
  blocks: tuple[int, ...] = RESNET50_BLOCKS
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  bn_axis_name: str | None = None
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, *, train: bool) -> Array:
    bn = dict(
      bn_momentum=self.bn_momentum,
      bn_epsilon=self.bn_epsilon,
      bn_axis_name=self.bn_axis_name,
      dtype=self.dtype,
    )
    x = ResNetStem(width=self.width, name='stem', **bn)(x, train=train)
    for s in stage_specs(self.width, 1, self.blocks)[: self.num_stages]:
      x = ResNetStage(s.num_blocks, s.features, s.stride, name=s.name, **bn)(x, train=train)
    return x


class DALNet(nn.Module):
  """Three-stream ResNet-50 + DAG + MIA + GeM/BNNeck heads (docs/design.md §4, DALNet)."""

  num_classes: int
  width: int = 64
  last_stride: int = 1
  blocks: tuple[int, ...] = RESNET50_BLOCKS  # Bottlenecks per stage (resnet.stage_specs)
  gem_p: float = 3.0
  gem_learnable: bool = True
  bn_axis_name: str | None = None
  dtype: Dtype = jnp.float32
  use_aux: bool = True
  use_mia: bool = True
  mia_reduction: int = 16
  dag_trainable: bool = True
  dag_center: float = 9.0
  dag_neighbour: float = -0.8
  num_private_stages: int = 2
  gem_eps: float = 1e-6
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  neck_scale_init_std: float = 0.01
  classifier_init_std: float = 0.001

  def setup(self) -> None:
    if self.use_mia and not self.use_aux:
      raise ValueError(
        'DALNet: use_mia=True needs use_aux=True (MIA aligns photo and sketch through the '
        'auxiliary modality); set model.use_mia=False for the two-stream ablation.'
      )
    if not 0 < self.num_private_stages < 4:
      raise ValueError(
        f'DALNet: num_private_stages must be 1, 2 or 3 (at least layer4 is shared), got '
        f'{self.num_private_stages}.'
      )
    bn = dict(
      bn_momentum=self.bn_momentum,
      bn_epsilon=self.bn_epsilon,
      bn_axis_name=self.bn_axis_name,
      dtype=self.dtype,
    )
    stream = dict(width=self.width, num_stages=self.num_private_stages, blocks=self.blocks, **bn)
    self.photo_stream = EarlyStream(**stream)
    self.sketch_stream = EarlyStream(**stream)
    if self.use_aux:
      self.aux_stream = EarlyStream(**stream)
      self.dag = DAG(
        center=self.dag_center, neighbour=self.dag_neighbour, trainable=self.dag_trainable
      )
      # p ≥ 1: the seed's GeM ranges from average (p = 1) to max pooling (p → ∞). Unbounded, the
      # style loss (its only source of gradient) drove p to 0.10 in 12 synthetic epochs.
      self.style_gem = GeM(p=self.gem_p, learnable=self.gem_learnable, eps=self.gem_eps, p_min=1.0)
    specs = stage_specs(self.width, self.last_stride, self.blocks)[self.num_private_stages :]
    self.shared = [
      ResNetStage(s.num_blocks, s.features, s.stride, name=s.name, **bn) for s in specs
    ]
    self.gem = GeM(p=self.gem_p, learnable=self.gem_learnable, eps=self.gem_eps)
    neck = dict(
      num_classes=self.num_classes,
      bn_axis_name=self.bn_axis_name,
      dtype=jnp.float32,  # heads compute in float32 (docs/design.md §4)
      bn_momentum=self.bn_momentum,
      bn_epsilon=self.bn_epsilon,
      scale_init_std=self.neck_scale_init_std,
      classifier_init_std=self.classifier_init_std,
    )
    self.bnneck = BNNeck(**neck)
    if self.use_mia:
      self.mia = MIA(reduction=self.mia_reduction)
      self.mia_bnneck = BNNeck(**neck)
    else:  # the intra-modal circle's feature without MIA: ACA's LayerNorm at its init
      self.intra_norm = nn.LayerNorm(
        epsilon=1e-5, use_bias=False, use_scale=False, use_fast_variance=False, dtype=jnp.float32
      )

  @nn.nowrap
  def resnet50_init_map(self) -> dict[str, str]:
    """Which parts start from an ImageNet ResNet-50 (``weights.pretrained``): path in this
    model's variables → path in ``models.ResNet50``'s, in 'params' and 'batch_stats' alike.

    Each stream (photo, sketch and, with ``use_aux``, aux) gets its own copy of conv1/bn1 and of
    the private stages layer1..layer{num_private_stages}; the shared stages come from the stages of
    the same name. The DAG, both GeMs, both BNNecks (and classifiers) and MIA keep their fresh init.
    """
    private = STAGE_NAMES[: self.num_private_stages]
    mapping = {}
    for stream in STREAMS if self.use_aux else ('photo', 'sketch'):
      mapping |= {f'{stream}_stream/stem/{part}': part for part in ('conv1', 'bn1')}
      mapping |= {f'{stream}_stream/{name}': name for name in private}
    return mapping | {name: name for name in STAGE_NAMES[self.num_private_stages :]}

  def _shared(self, x: Array, *, train: bool) -> Array:
    for stage in self.shared:
      x = stage(x, train=train)
    return x

  def _head(self, neck: BNNeck, feat: Array, label: Array, *, train: bool) -> dict[str, Array]:
    bn_feat, logits = neck(feat, train=train)
    return {'feat': feat, 'bn_feat': bn_feat, 'logits': logits, 'label': label}

  def __call__(
    self,
    photos: Array,
    sketches: Array,
    *,
    train: bool,
    label: Array | None = None,
    mask: Array | None = None,
  ) -> dict[str, Any]:
    """Training forward on [photos | sketches] halves of N rows each (see the module doc).

    ``label`` (2N,) labels of [photos | sketches] (zeros when None, e.g. at init); ``mask``
    (2N, H, W, 1) foreground masks of the same rows (only the photo rows are used) or None.
    """
    if photos.ndim != 4 or photos.shape != sketches.shape:
      raise ValueError(
        f'DALNet: photos and sketches must be NHWC batches of the same shape, got '
        f'{tuple(photos.shape)} and {tuple(sketches.shape)}.'
      )
    n = photos.shape[0]
    if label is None:
      label = jnp.zeros((2 * n,), jnp.int32)
    if label.shape != (2 * n,):
      raise ValueError(f'DALNet: label must have shape ({2 * n},), got {tuple(label.shape)}.')
    if mask is not None and mask.shape != (2 * n, *photos.shape[1:3], 1):
      raise ValueError(
        f'DALNet: mask must have shape {(2 * n, *photos.shape[1:3], 1)} (one map per row of '
        f'[photos | sketches]), got {tuple(mask.shape)}.'
      )
    labels = {'photo': label[:n], 'aux': label[:n], 'sketch': label[n:]}
    early = {
      'photo': self.photo_stream(photos, train=train),
      'sketch': self.sketch_stream(sketches, train=train),
    }
    out: dict[str, Any] = {}
    if self.use_aux:
      aux_images = self.dag(photos, None if mask is None else mask[:n])
      early['aux'] = self.aux_stream(aux_images, train=train)
      out['aux_images'] = aux_images
      pooled = dict(zip(early, jnp.split(self.style_gem(jnp.concatenate(list(early.values()))), 3)))
      out['style'] = {
        'anchor': pooled['aux'],
        'positive': pooled['sketch'],
        'negatives': pooled['photo'],
      }
    names = [k for k in STREAMS if k in early]
    maps = self._shared(jnp.concatenate([early[k] for k in names], axis=0), train=train)
    maps = dict(zip(names, jnp.split(maps, len(names), axis=0)))
    feats = self.gem(jnp.concatenate([maps[k] for k in names], axis=0))
    feats = dict(zip(names, jnp.split(feats, len(names), axis=0)))
    # One BNNeck call over all streams, so its batch statistics see the whole batch.
    heads = self._head(
      self.bnneck,
      jnp.concatenate([feats[k] for k in names]),
      jnp.concatenate([labels[k] for k in names]),
      train=train,
    )
    split = {key: jnp.split(v, len(names)) for key, v in heads.items()}
    out['streams'] = {k: {key: split[key][i] for key in split} for i, k in enumerate(names)}
    if not self.use_mia:
      for k in names:
        out['streams'][k]['ln_feat'] = self.intra_norm(maps[k].astype(jnp.float32)).mean((1, 2))
    if self.use_mia:
      photo_hat, sketch_hat, photo_pre, sketch_pre = self.mia(
        maps['photo'], maps['aux'], maps['sketch'], references=True
      )

      def pool(*maps_):
        return jnp.mean(jnp.concatenate(maps_).astype(jnp.float32), axis=(1, 2))

      mia = self._head(
        self.mia_bnneck,
        pool(photo_hat, sketch_hat),
        jnp.concatenate([labels['photo'], labels['sketch']]),
        train=train,
      )
      mia['pre'] = pool(photo_pre, sketch_pre)
      split = {key: jnp.split(v, 2) for key, v in mia.items()}
      out['mia'] = {
        k: {key: split[key][i] for key in split} for i, k in enumerate(('photo', 'sketch'))
      }
    return out

  def extract(self, images: Array, *, modality: int, train: bool = False) -> dict[str, Array]:
    """Evaluation features of one modality through its own stream and the shared stages."""
    return self.extract_from_stem(self.extract_stem(images, modality=modality, train=train))

  def extract_stem(self, images: Array, *, modality: int, train: bool = False) -> Array:
    """The modality's own stream (what multi-query 'stem' fusion averages)."""
    if modality not in (PHOTO, SKETCH) or isinstance(modality, bool):
      raise ValueError(f'modality must be the Python int {PHOTO} or {SKETCH}, got {modality!r}.')
    stream = self.photo_stream if modality == PHOTO else self.sketch_stream
    return stream(images, train=train)

  def extract_from_stem(self, maps: Array, *, train: bool = False) -> dict[str, Array]:
    """The shared stages, GeM and BNNeck on a stream's (possibly fused) maps."""
    feat = self.gem(self._shared(maps, train=train))
    bn_feat, _ = self.bnneck(feat, train=train)
    return {'feat': feat, 'bn_feat': bn_feat}

  def extract_fused(self, mean_maps: Array, *, train: bool = False) -> dict[str, Array]:
    """Multi-query 'stem' features from a group's mean private-stream map: DALNet has no
    Non-local block, so this is ``extract_from_stem`` on the mean."""
    return self.extract_from_stem(mean_maps, train=train)
