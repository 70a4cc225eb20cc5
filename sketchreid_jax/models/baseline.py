"""The ACM MM'23 "Beyond Domain Gap" two-stream baseline (Market-Sketch-1K).

Implements docs/design.md §4 "Baseline": a ResNet-50 whose stem (conv1, bn1, relu, maxpool) is
modality-specific (``photo_stem``, ``sketch_stem``) and whose layer1–layer4 are shared, followed
by a shared GeM (p = 3, fixed by default) and a shared BNNeck. The module only assembles parts from
``resnet.py`` and ``heads.py``; there is no new maths here.

Interpretations chosen:

* A training batch arrives as two halves of equal size N, [photos | sketches]. Each stem sees its
  own half; the shared stages and head see the concatenation, so the BatchNorm statistics of the
  shared stages and of the BNNeck mix both modalities (as the reference, which concatenates after
  the stems).
* ``feat`` is the pre-BN GeM feature (used by WRT/RTCL). The test feature is the L2-normalised
  pre-BN feature by default (post-BN as an option); the normalisation happens in evaluation, not
  in the model, so ``extract`` returns both raw features.
* Modality is a static Python int, ``modality.PHOTO`` (0) or ``modality.SKETCH`` (1).
* The backbone computes in ``dtype``; the heads (GeM, BNNeck, logits) always compute in float32.
* Parameter tree: ``photo_stem/{conv1,bn1}``, ``sketch_stem/{conv1,bn1}``, ``layer1``…``layer4``
  (torchvision block names inside, see resnet.py), ``gem`` (only with a learnable p),
  ``bnneck/{bn,classifier}``.
* ImageNet init (``config.model.init_checkpoint``): ``resnet50_init_map`` declares what comes
  from a converted torchvision ResNet-50 (each stem its own copy of conv1/bn1, layer1–4 from
  layer1–4); ``weights.pretrained.load_pretrained_backbone`` applies it. CMDSL inherits it.

Building blocks for later methods (CMDSL's CMAlign pushes reconstructed layer-3 maps through
``stages(start='layer4', stop='layer4')`` and ``head``): ``stem``, ``stages``, ``head``, and the
``post_stage(name, x, *, train)`` hook that ``stages`` applies after every shared stage (the
identity here; CMDSL puts an FFAM there).
"""

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

# PHOTO and SKETCH stay importable from here (and from models) for older code.
from sketchreid_jax.modality import PHOTO, SKETCH, check_modality
from sketchreid_jax.models.fusion import mean_of_sets
from sketchreid_jax.models.heads import BNNeck, GeM
from sketchreid_jax.models.nonlocal_block import NonLocal
from sketchreid_jax.models.resnet import (
  RESNET50_BLOCKS,
  STAGE_NAMES,
  ResNetStage,
  ResNetStem,
  run_stages,
  stage_specs,
)

Dtype = Any
Array = jax.Array


class Baseline(nn.Module):
  """Two-stream ResNet-50 (modality-specific stems, shared layer1–4) + GeM + BNNeck."""

  num_classes: int
  width: int = 64
  last_stride: int = 1
  blocks: tuple[int, ...] = RESNET50_BLOCKS  # Bottlenecks per stage (resnet.stage_specs)
  gem_p: float = 3.0
  gem_learnable: bool = False
  bn_axis_name: str | None = None
  dtype: Dtype = jnp.float32
  gem_eps: float = 1e-6
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  neck_scale_init_std: float = 0.01
  classifier_init_std: float = 0.001
  # Multi-query training (models/fusion.py): the sketch input is a batch of sketch *sets*
  # (N, M, H, W, 3) with a validity mask, each set fused at the stem; False: one sketch per row.
  sketch_fusion: bool = False
  # The release's Non-local block on every fused stem map (training and 'stem' multi-query tests).
  fusion_nonlocal: bool = False

  def setup(self) -> None:
    bn_kwargs = dict(
      bn_momentum=self.bn_momentum,
      bn_epsilon=self.bn_epsilon,
      bn_axis_name=self.bn_axis_name,
      dtype=self.dtype,
    )
    self.photo_stem = ResNetStem(width=self.width, **bn_kwargs)
    self.sketch_stem = ResNetStem(width=self.width, **bn_kwargs)
    layers = [
      ResNetStage(s.num_blocks, s.features, s.stride, **bn_kwargs)
      for s in stage_specs(self.width, self.last_stride, self.blocks)
    ]
    self.layer1, self.layer2, self.layer3, self.layer4 = layers
    if self.fusion_nonlocal:
      self.fusion_block = NonLocal(**bn_kwargs)
    self.gem = GeM(p=self.gem_p, learnable=self.gem_learnable, eps=self.gem_eps)
    # Heads compute in float32 regardless of the backbone dtype (docs/design.md §4).
    self.bnneck = BNNeck(
      self.num_classes,
      bn_axis_name=self.bn_axis_name,
      dtype=jnp.float32,
      bn_momentum=self.bn_momentum,
      bn_epsilon=self.bn_epsilon,
      scale_init_std=self.neck_scale_init_std,
      classifier_init_std=self.classifier_init_std,
    )

  @nn.nowrap
  def resnet50_init_map(self) -> dict[str, str]:
    """Which parts start from an ImageNet ResNet-50 (``weights.pretrained``): path in this
    model's variables → path in ``models.ResNet50``'s, in 'params' and 'batch_stats' alike.

    Each modality-specific stem gets its own copy of conv1/bn1; the shared layer1–4 come from
    layer1–4. Everything else (GeM, BNNeck and its classifier, CMDSL's FFAMs) keeps its fresh init.
    """
    stems = {
      f'{stem}/{part}': part for stem in ('photo_stem', 'sketch_stem') for part in ('conv1', 'bn1')
    }
    return stems | {name: name for name in STAGE_NAMES}

  def stem(self, x: Array, *, modality: int, train: bool, mask: Array | None = None) -> Array:
    """The modality-specific stem: 0 = photo, 1 = sketch. ``mask`` (N,) leaves rows out of the
    BatchNorm statistics (the padding of sketch sets)."""
    stem = self.photo_stem if check_modality(modality) == PHOTO else self.sketch_stem
    return stem(x, train=train, mask=mask)

  def fuse(self, mean_maps: Array, *, train: bool) -> Array:
    """A fused (mean) sketch stem map through the Non-local block, if the model has one."""
    return self.fusion_block(mean_maps, train=train) if self.fusion_nonlocal else mean_maps

  def fused_sketch_stem(self, sets: Array, valid: Array, *, train: bool) -> Array:
    """(N, M, H, W, 3) sketch sets with (N, M) validity -> (N, h, w, c) fused stem maps."""
    n, m = sets.shape[:2]
    valid = valid.astype(bool)
    maps = self.stem(
      sets.reshape(n * m, *sets.shape[2:]),
      modality=SKETCH,
      train=train,
      mask=valid.reshape(n * m),
    )
    return self.fuse(mean_of_sets(maps.reshape(n, m, *maps.shape[1:]), valid), train=train)

  def sketch_maps(self, sketches: Array, sketch_valid: Array | None, *, train: bool) -> Array:
    """The sketch half's stem maps: one per sketch, or one fused map per set (sketch_fusion).

    With ``sketch_fusion`` a 4-D batch is read as sets of one sketch each (``model.init``'s shape
    probe and single sketches), and a missing ``sketch_valid`` means every member is real.
    """
    if not self.sketch_fusion:
      maps = self.stem(sketches, modality=SKETCH, train=train)
      if self.fusion_nonlocal and self.is_initializing():
        self.fuse(maps, train=False)  # creates the block that 'stem' multi-query tests use
      return maps
    if sketches.ndim == 4:
      sketches = sketches[:, None]
    if sketch_valid is None:
      sketch_valid = jnp.ones(sketches.shape[:2], bool)
    return self.fused_sketch_stem(sketches, sketch_valid, train=train)

  def post_stage(self, name: str, x: Array, *, train: bool) -> Array:
    """Applied to the output of every shared stage; the identity here.

    Subclasses insert per-stage modules through it (CMDSL's FFAM), so ``stages`` with any
    ``start``/``stop`` and the ``maps`` of ``__call__`` see them.
    """
    del name, train
    return x

  def stages(self, x: Array, *, start: str = 'layer1', stop: str = 'layer4', train: bool) -> Array:
    """The shared stages from ``start`` to ``stop`` inclusive ('layer1'..'layer4'), each
    followed by ``post_stage``."""
    layers = {
      'layer1': self.layer1,
      'layer2': self.layer2,
      'layer3': self.layer3,
      'layer4': self.layer4,
    }

    def then_post(name: str, layer: ResNetStage) -> Callable[..., Array]:
      return lambda y, *, train: self.post_stage(name, layer(y, train=train), train=train)

    named = {name: then_post(name, layer) for name, layer in layers.items()}
    return run_stages(named, x, start=start, stop=stop, train=train)

  def head(self, fmap: Array, *, train: bool) -> dict[str, Array]:
    """GeM + BNNeck on a layer-4 map: {'feat' (pre-BN), 'bn_feat', 'logits' (float32)}."""
    feat = self.gem(fmap)
    bn_feat, logits = self.bnneck(feat, train=train)
    return {'feat': feat, 'bn_feat': bn_feat, 'logits': logits}

  def __call__(
    self, photos: Array, sketches: Array, *, train: bool, sketch_valid: Array | None = None
  ) -> dict[str, Any]:
    """Training forward on N photos and N sketches (or, with ``sketch_fusion``, N sketch sets
    (N, M, H, W, 3) and their (N, M) ``sketch_valid``).

    Returns {'feat': (2N, D), 'bn_feat': (2N, D), 'logits': (2N, C) float32,
    'maps': {'layer3', 'layer4'}: NHWC maps of the concatenated batch}, rows [photos; sketches].
    """
    set_shape = sketches.ndim == 5 and self.sketch_fusion
    if (
      photos.ndim != 4
      or photos.shape != (sketches.shape[:1] + sketches.shape[-3:])
      or not (sketches.ndim == 4 or set_shape)
    ):
      raise ValueError(
        f'Baseline: photos must be an NHWC batch and sketches the same shape (or, with '
        f'sketch_fusion, (N, M, H, W, 3) sets), got {tuple(photos.shape)} and '
        f'{tuple(sketches.shape)}.'
      )
    sketch_maps = self.sketch_maps(sketches, sketch_valid, train=train)
    x = jnp.concatenate([self.stem(photos, modality=PHOTO, train=train), sketch_maps], axis=0)
    layer3 = self.stages(x, start='layer1', stop='layer3', train=train)
    layer4 = self.stages(layer3, start='layer4', stop='layer4', train=train)
    out = self.head(layer4, train=train)
    out['maps'] = {'layer3': layer3, 'layer4': layer4}
    return out

  def extract(self, images: Array, *, modality: int, train: bool = False) -> dict[str, Array]:
    """Evaluation features of one modality: {'feat' (pre-BN), 'bn_feat'} (not normalised)."""
    return self.extract_from_stem(self.extract_stem(images, modality=modality, train=train))

  def extract_stem(self, images: Array, *, modality: int, train: bool = False) -> Array:
    """The modality-specific part of ``extract`` (what multi-query 'stem' fusion averages)."""
    return self.stem(images, modality=modality, train=train)

  def extract_from_stem(self, maps: Array, *, train: bool = False) -> dict[str, Array]:
    """The shared rest of ``extract``, from stem maps."""
    out = self.head(self.stages(maps, train=train), train=train)
    return {'feat': out['feat'], 'bn_feat': out['bn_feat']}

  def extract_fused(self, mean_maps: Array, *, train: bool = False) -> dict[str, Array]:
    """Multi-query features from each query's mean sketch stem map: Non-local block (if any),
    then the shared rest (the release's ``--test_mq`` path)."""
    return self.extract_from_stem(self.fuse(mean_maps, train=train), train=train)
