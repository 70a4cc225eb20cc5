"""DALNet wiring: identity, cross-/intra-modal circle and style refinement losses.

L = L_id(shared: photo, aux, sketch) + w_mia · L_id(MIA: photo, sketch)
    + w_cc · Σ_{(a,b) ∈ (p,s), (p,x), (x,s)} L_circle(a, b) + w_ic · L_circle-intra
    + w_style · L_style

(x = the DAG's auxiliary modality; every weight in ``config.loss``; a term whose weight is 0 is
not computed.) The seed lost its formula images, so the choices are ours and stated here:

* Identity terms are summed over the feature sets (three shared, two MIA), each a mean CE.
* Circle losses use the pre-BN features (cosine, so the scale does not matter) of the global
  batch (all-gathered).
* Cross-modal direction (``loss.circle_cross_symmetric``, default True): a pair (a, b) is the mean
  of the term anchored in a and the term anchored in b. The seed sums the circle loss over the
  three modality pairs without naming an anchor; circle loss weighs each anchor's positives and
  negatives by a softmax over that anchor's candidates, so anchoring only in the photos would never
  train the sketch-anchored comparison that retrieval makes (a sketch ranks photos). The mean
  keeps the term at the one-direction scale. False anchors in the pair's first modality only.
* Intra-modal circle: with MIA, the anchors are each modality's "before MIA" features and every
  candidate an "after MIA" feature (positives: the same identity, the sample itself included;
  negatives: the ``loss.circle_hard_negatives`` most similar other identities), for photo and
  sketch (``losses.circle_intra``). Both sides are mean-pooled LayerNorm outputs of the same
  LayerNorm (``models/dalnet.py`` says why the GeM feature cannot be the anchor). Without MIA
  (DALNet Table 1's row before MIA is added) each photo or sketch is the anchor and the other
  samples of its modality the candidates (itself excluded), with the same hard-negative mining, on
  the same kind of feature: the shared map through a LayerNorm, mean-pooled (``ln_feat``). The
  seed defines the term by its "most easily confused different-identity pairs" and names sketches
  and photos, not the auxiliary images, so the row keeps both in either form.
* Scale (``optim.clip_per_term``, ``optim.clip_exempt``, ``loss.circle_scale``). With γ = 64 the
  circle terms' gradients at init, from scratch (width 8, 96×48), had norms of about 210
  (cross-modal) and 300 (intra-modal) against 4 for the identity loss, over the backbone. From
  scratch a clip is needed (``optim.grad_clip_norm``; without one SGD diverged), and one global
  clip of the sum scaled the identity loss's share of every update down 40–60×: in the synthetic
  ablation (seed 0) the row with both circle terms kept the identity loss at chance for all 12
  epochs. ``configs/dalnet.py`` therefore clips each term on its own (``clip_per_term``: each
  term's gradient to norm ≤ grad_clip_norm, then the sum; ``optim.per_term_clipped_grads``),
  and leaves the BNNecks and classifiers, which only the identity losses train, outside any clip
  (``clip_exempt``). Measured on the same command, seed 0, single-query mAP: cross-modal row 14.9
  per term against 13.7 with one global clip; intra-modal row (with its LayerNorm feature) 10.1
  per term. Dividing the circle terms by γ (``circle_scale='gamma'``) was measured too and is not
  the default: every gradient stays small, but the terms then sat for all 12 epochs at their
  stationary point where every pair has s ≈ 0.5 (28.7 per modality pair = γ((1 − s)² + s² − 2m²)
  + log(P·Q)) and stopped contributing: mAP 6.8 (cross-modal row) and 6.3 (full model) against
  14.4 and 11.0 with the loss as written. The paper presets clip nothing (``grad_clip_norm=0``),
  so both switches are idle in an ImageNet-initialised run.
* Style refinement (InfoNCE, τ = 0.07) is computed on each device's own batch: anchor = aux
  stream's pooled layer-2 feature, the positive = the sketch of the same row (same identity by
  the batch layout), negatives = every photo of that batch; sketch and photo sides are
  stop-gradient so only the DAG kernel and the aux stream learn from it (docs/design.md §4).
* Masks: ``data.mask_source='u2net'`` runs the frozen U²-Net(P) in the step (``prepare``) on this
  device's photos; its weights are frozen variables, loaded once by ``frozen_for``, not parameters.
"""

import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sketchreid_jax import losses, models
from sketchreid_jax.losses.circle import circle_intra, circle_pairwise
from sketchreid_jax.losses.style import style_refinement
from sketchreid_jax.methods import Method, StageSplit, baseline
from sketchreid_jax.models.baseline import PHOTO, SKETCH
from sketchreid_jax.models.dalnet import EarlyStream
from sketchreid_jax.models.resnet import STAGE_NAMES, ResNetStage, stage_specs

CROSS_PAIRS = (('photo', 'sketch'), ('photo', 'aux'), ('aux', 'sketch'))
INTRA = ('photo', 'sketch')  # the seed's intra-modal term compresses sketches and photos


def config(c) -> None:
  """DALNet's keys: the foreground masks, the three streams, DAG and MIA, the circle and style
  losses. Tables 1–2 ablate them."""
  # DALNet's foreground masks (docs/design.md §4 "DAG"): 'none' | 'precomputed' (read
  # <root>/masks/<mask_set>/..., made by tools.precompute_masks) | 'u2net' (run the frozen U²-Net
  # in the step; needs model.u2net_weights) | 'auto' ('precomputed' when <root>/masks/<mask_set>
  # exists, else 'none' with a warning).
  c.data.mask_source = 'none'
  c.data.mask_set = 'u2netp'  # which U²-Net made (or makes) the masks: 'u2netp' or 'u2net'
  c.model.use_aux = True  # the DAG auxiliary modality and its stream
  c.model.use_mia = True  # Modality Interactive Attention (BAM + ACA), training only
  c.model.mia_reduction = 16  # BAM bottleneck C -> C/r (the seed's r was lost; SE-style 16)
  c.model.dag_trainable = True  # Table 2: the DAG's 3×3 edge kernel trains (False = frozen)
  c.model.dag_center = 9.0  # initial edge kernel: centre
  c.model.dag_neighbour = -0.8  # initial edge kernel: the eight neighbours
  c.model.num_private_stages = 2  # per-modality stem + layer1..layerN; the rest is shared
  # Converted U²-Net weights for data.mask_source='u2net' ('' = pretrained/<data.mask_set>.msgpack,
  # made by tools.convert_weights) and the frozen net's input size (official: 320×320).
  c.model.u2net_weights = ''
  c.model.u2net_size = (320, 320)
  # DALNet losses. The seed lost its weight values; each term defaults to 1 (the text calls the
  # total "the sum" of the terms). Circle m and γ: Sun et al.'s defaults (docs/design.md §4).
  c.loss.mia_id_weight = 1.0  # identity CE on the two MIA outputs (the seed's second L_id part)
  c.loss.circle_cross_weight = (
    0.0  # cross-modal circle over (photo,sketch),(photo,aux),(aux,sketch)
  )
  c.loss.circle_intra_weight = 0.0  # intra-modal circle (pre/post-MIA positives, hard negatives)
  c.loss.circle_margin = 0.25  # m
  c.loss.circle_gamma = 64.0  # γ
  c.loss.circle_hard_negatives = (
    1  # intra-modal: hardest other-identity samples per anchor; 0 = all
  )
  # Circle terms' scale: 'none' = as written, 'gamma' = divided by γ (measured and rejected as the
  # default: the module doc, "Scale").
  c.loss.circle_scale = 'none'
  c.loss.circle_cross_symmetric = True  # cross-modal circle anchored in both modalities (mean)
  c.loss.style_weight = 0.0  # style refinement InfoNCE (DAG kernels + aux stream only)
  c.loss.style_temperature = 0.07  # τ (the seed's experimental details)


def model_for(config, num_classes: int, bn_axis_name: str | None):
  m = config.model
  return models.DALNet(
    **baseline.backbone_kwargs(config, num_classes, bn_axis_name),
    use_aux=m.use_aux,
    use_mia=m.use_mia,
    mia_reduction=m.mia_reduction,
    dag_trainable=m.dag_trainable,
    dag_center=m.dag_center,
    dag_neighbour=m.dag_neighbour,
    num_private_stages=m.num_private_stages,
  )


def circle_scale(config) -> float:
  """The factor on both circle terms (``loss.circle_scale``; the module doc says why)."""
  c = config.loss
  scale = {'gamma': 1.0 / c.circle_gamma, 'none': 1.0}
  if c.circle_scale not in scale:
    raise ValueError(
      f'config.loss.circle_scale must be one of {sorted(scale)} (none = the loss as written), '
      f'got {c.circle_scale!r}.'
    )
  return scale[c.circle_scale]


def _circle(a, b, config, **kw):
  c = config.loss
  return circle_pairwise(
    a['feat'], a['label'], b['feat'], b['label'], margin=c.circle_margin, gamma=c.circle_gamma, **kw
  )


def _cross(a, b, config):
  if not config.loss.circle_cross_symmetric:
    return _circle(a, b, config)
  return 0.5 * (_circle(a, b, config) + _circle(b, a, config))


def losses_for(outputs, batch, config):
  del batch  # every output carries its own labels (three streams do not fit [photos | sketches])
  c = config.loss
  streams, mia = outputs['streams'], outputs.get('mia')

  def ce(head):
    return losses.cross_entropy(head['logits'], head['label'], label_smoothing=c.label_smoothing)

  terms = {'id': (c.id_weight, sum(ce(h) for h in streams.values()))}
  if mia is not None and c.mia_id_weight:
    terms['mia_id'] = (c.mia_id_weight, sum(ce(h) for h in mia.values()))
  scale = circle_scale(config)
  if c.circle_cross_weight:
    pairs = [(a, b) for a, b in CROSS_PAIRS if a in streams and b in streams]
    terms['circle_cross'] = (
      c.circle_cross_weight * scale,
      sum(_cross(streams[a], streams[b], config) for a, b in pairs),
    )
  if c.circle_intra_weight:
    # Before/after MIA with it; without it each feature against the others of its modality.
    pairs = {
      k: (mia[k]['pre'], mia[k]['feat']) if mia else (streams[k]['ln_feat'],) * 2 for k in INTRA
    }
    intra = sum(
      circle_intra(
        pre,
        post,
        streams[k]['label'],
        margin=c.circle_margin,
        gamma=c.circle_gamma,
        hard_negatives=c.circle_hard_negatives,
        exclude_self=mia is None,
      )
      for k, (pre, post) in pairs.items()
    )
    terms['circle_intra'] = (c.circle_intra_weight * scale, intra)
  if c.style_weight and 'style' in outputs:
    s = outputs['style']
    terms['style'] = (
      c.style_weight,
      style_refinement(
        s['anchor'],
        jax.lax.stop_gradient(s['positive']),
        jax.lax.stop_gradient(s['negatives']),
        temperature=c.style_temperature,
      ),
    )
  return terms


def frozen_params(config) -> tuple[str, ...]:
  """DALNet Table 2's frozen DAG: its edge kernel gets no update at all (no decay, no momentum)."""
  return () if config.model.dag_trainable or not config.model.use_aux else ('dag/edge_kernel',)


# ----------------------------------------------------------------------------- U²-Net masks


def u2net_weights_path(config) -> str:
  return config.model.u2net_weights or os.path.join('pretrained', f'{config.data.mask_set}.msgpack')


def _u2net_module(config):
  return models.U2NetP() if config.data.mask_set == 'u2netp' else models.U2Net()


def frozen_for(config):
  """The frozen U²-Net's variables when ``data.mask_source='u2net'``, else None."""
  if config.data.mask_source != 'u2net':  # 'auto' never means u2net: it needs a weights file
    return None
  from sketchreid_jax.weights import io as weights_io

  path = u2net_weights_path(config)
  if not os.path.isfile(path):
    raise FileNotFoundError(
      f'data.mask_source=u2net needs the converted {config.data.mask_set} weights at {path!r} '
      f'(set config.model.u2net_weights to use another file). Convert the official '
      f'{config.data.mask_set}.pth with:\n'
      f'  python -m sketchreid_jax.tools.convert_weights --model={config.data.mask_set} '
      f'--input={config.data.mask_set}.pth --output={path}\n'
      'or use --config.data.mask_source=none (no masking).'
    )
  return weights_io.load_variables(path)


def prepare(batch, frozen, config):
  """Adds ``batch['mask']`` from the frozen U²-Net when masks are computed in the step."""
  if frozen is None:
    return batch
  images = batch['image']
  half = images.shape[0] // 2
  photo_masks = models.predict_masks(
    _u2net_module(config), frozen, images[:half], size=tuple(config.model.u2net_size)
  )
  batch['mask'] = jnp.concatenate([photo_masks, jnp.ones_like(photo_masks)], axis=0)
  return batch


# ----------------------------------------------------------------------------- checks and data


def check(config, num_devices: int | None) -> None:
  """The circle scale, and with ``data.mask_source='u2net'`` the U²-Net input size and weights.

  DALNet adds no image-size constraint: the DAG is a padded 3×3 convolution and the U²-Net
  resizes its input to ``model.u2net_size`` (ceil-mode pooling takes any size).
  """
  del num_devices
  from sketchreid_jax import validate

  validate.check_choices(
    config,
    {
      'loss.circle_scale': ('none', 'gamma'),
      'data.mask_source': ('none', 'precomputed', 'u2net', 'auto'),
      'data.mask_set': ('u2netp', 'u2net'),
    },
  )
  if config.data.mask_source != 'u2net':
    return
  validate.check_size_pair(config.model.u2net_size, 'model.u2net_size')
  path = u2net_weights_path(config)
  if not os.path.isfile(path):
    s = config.data.mask_set
    raise validate.ConfigError(
      f'config.data.mask_source=u2net needs the converted {s} weights at {path!r} '
      f'(config.model.u2net_weights): run `python -m sketchreid_jax.tools.convert_weights '
      f'--model={s} --input={s}.pth --output={path}`, or use --config.data.mask_source=none.'
    )


def prepare_data(config, table, train_set):
  """The precomputed U²-Net masks of the training photos, when ``data.mask_source`` picks them."""
  from sketchreid_jax.datasets import masks as masks_lib

  if masks_lib.resolve_mask_source(config.data) != 'precomputed':
    return train_set, None
  photos = np.concatenate(train_set.photo_index_by_label)
  return train_set, masks_lib.load_masks(table, photos, config.data.mask_set)


# ----------------------------------------------------------------------------- Grad-CAM
# Per-modality streams (stem + private stages), then the shared stages. The streams are compact
# modules, so their inner stages are run as standalone modules on the stream's own variables (the
# same modules and arguments EarlyStream builds).
ALL_STAGES: tuple[str, ...] = ('stem', *STAGE_NAMES)


def _bn_kwargs(model) -> dict[str, Any]:
  return dict(bn_momentum=model.bn_momentum, bn_epsilon=model.bn_epsilon, dtype=model.dtype)


def _stream_variables(variables, modality: int) -> dict[str, Any]:
  stream = 'photo_stream' if modality == PHOTO else 'sketch_stream'
  return {col: tree[stream] for col, tree in variables.items() if stream in tree}


def _private(model) -> tuple[str, ...]:
  return ALL_STAGES[: model.num_private_stages + 1]


def _front(model, variables, images, modality: int, stage: str):
  private = _private(model)
  if stage in private:
    if modality not in (PHOTO, SKETCH) or isinstance(modality, bool):
      raise ValueError(f'modality must be the Python int {PHOTO} or {SKETCH}, got {modality!r}.')
    stream = EarlyStream(
      width=model.width, num_stages=private.index(stage), blocks=model.blocks, **_bn_kwargs(model)
    )
    return stream.apply(_stream_variables(variables, modality), images, train=False)

  def front(m, x):
    x = m.extract_stem(x, modality=modality, train=False)
    for layer in m.shared:
      x = layer(x, train=False)
      if layer.name == stage:
        return x
    raise AssertionError(stage)  # unreachable: the stage was validated

  return model.apply(variables, images, method=front)


def _back(model, variables, fmap, stage: str, modality: int):
  # The private stages after the cut belong to the query modality's own stream.
  private = _private(model)
  if stage in private:
    sub = _stream_variables(variables, modality)
    for spec in stage_specs(model.width, 1, model.blocks)[
      private.index(stage) : model.num_private_stages
    ]:
      layer = ResNetStage(spec.num_blocks, spec.features, spec.stride, **_bn_kwargs(model))
      fmap = layer.apply({col: tree[spec.name] for col, tree in sub.items()}, fmap, train=False)
    stage = private[-1]

  def back(m, x):
    started = stage == private[-1]
    for layer in m.shared:
      if started:
        x = layer(x, train=False)
      started = started or layer.name == stage
    feat = m.gem(x)
    bn_feat, _ = m.bnneck(feat, train=False)
    return {'feat': feat, 'bn_feat': bn_feat}

  return model.apply(variables, fmap, method=back)


METHOD = Method(
  name='dalnet',
  model_for=model_for,
  losses_for=losses_for,
  model_types=(models.DALNet,),
  config=config,
  check=check,
  prepare_data=prepare_data,
  global_outputs=('streams', 'mia'),
  model_inputs=('label', 'mask'),
  frozen_for=frozen_for,
  prepare=prepare,
  frozen_params=frozen_params,
  stage_split=StageSplit(
    stages=lambda model: ALL_STAGES, default=lambda model: 'layer4', front=_front, back=_back
  ),
)
