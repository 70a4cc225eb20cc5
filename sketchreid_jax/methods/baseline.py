"""MM'23 baseline wiring: two-stream ResNet-50 + GeM + BNNeck, identity CE + metric loss (docs/design.md §4).

The metric loss (WRT by default) and the identity loss both see the global P×K×2 batch; the metric
loss uses the pre-BN GeM feature and the identity loss the BNNeck logits, as in the reference code.
"""

import jax.numpy as jnp

from sketchreid_jax import losses, models
from sketchreid_jax.methods import Method, StageSplit
from sketchreid_jax.models.resnet import STAGE_NAMES


def config(c) -> None:
  """The baseline's own keys: its metric loss and the release's multi-query fusion block."""
  # The release's Non-local block on each fused stem map (models/nonlocal_block.py).
  c.model.fusion_nonlocal = False
  c.loss.metric = 'wrt'  # 'wrt' (weighted regularised triplet) or 'batch_hard'
  c.loss.metric_weight = 1.0
  c.loss.triplet_margin = 0.3  # batch-hard margin (unused by WRT, which has none)
  # WRT softmax max-shift: 'set' (over each positive/negative set) or 'reference' (over the whole
  # row, as the released code; losses/triplet.py explains the difference).
  c.loss.wrt_shift = 'set'


def dtype_of(config):
  return jnp.dtype(config.model.dtype)


def backbone_kwargs(config, num_classes: int, bn_axis_name: str | None) -> dict:
  """The model arguments every method shares: classes, ResNet width and stride, GeM, BN sync."""
  m = config.model
  return dict(
    num_classes=num_classes,
    width=m.width,
    last_stride=m.last_stride,
    blocks=tuple(m.blocks),
    gem_p=m.gem_p,
    gem_learnable=m.gem_learnable,
    bn_axis_name=bn_axis_name,
    dtype=dtype_of(config),
  )


def fusion_kwargs(config) -> dict:
  """The two-stream models' multi-query fusion switches (models/fusion.py)."""
  return dict(
    sketch_fusion=bool(config.model.sketch_fusion),
    fusion_nonlocal=bool(config.model.fusion_nonlocal),
  )


def model_for(config, num_classes: int, bn_axis_name: str | None):
  return models.Baseline(
    **backbone_kwargs(config, num_classes, bn_axis_name), **fusion_kwargs(config)
  )


METRIC_LOSSES = {
  'wrt': lambda feat, labels, config: losses.wrt_triplet(feat, labels, shift=config.loss.wrt_shift),
  'batch_hard': lambda feat, labels, config: losses.batch_hard_triplet(
    feat, labels, margin=config.loss.triplet_margin
  ),
}


def metric_loss(feat, labels, config):
  """The configured metric-learning term on pre-BN features (shared by the methods built on this)."""
  if config.loss.metric not in METRIC_LOSSES:
    raise ValueError(
      f'config.loss.metric must be one of {sorted(METRIC_LOSSES)}, got {config.loss.metric!r}'
    )
  return METRIC_LOSSES[config.loss.metric](feat, labels, config)


def check(config, num_devices: int | None) -> None:
  """The metric loss's switches (validate.py runs this before anything else)."""
  del num_devices
  from sketchreid_jax import validate

  validate.check_choices(
    config, {'loss.wrt_shift': ('set', 'reference'), 'loss.metric': tuple(METRIC_LOSSES)}
  )


def losses_for(outputs, batch, config):
  labels = batch['label']
  return {
    'id': (
      config.loss.id_weight,
      losses.cross_entropy(outputs['logits'], labels, label_smoothing=config.loss.label_smoothing),
    ),
    'metric': (config.loss.metric_weight, metric_loss(outputs['feat'], labels, config)),
  }


# ----------------------------------------------------------------------------- Grad-CAM
# A modality-specific stem, then the shared layer1–4 (each followed by ``post_stage``).
ALL_STAGES: tuple[str, ...] = ('stem', *STAGE_NAMES)


def _front(model, variables, images, modality: int, stage: str):
  def front(m, x):
    x = m.stem(x, modality=modality, train=False)
    return x if stage == 'stem' else m.stages(x, start='layer1', stop=stage, train=False)

  return model.apply(variables, images, method=front)


def _back(model, variables, fmap, stage: str, modality: int):
  del modality  # every stage after the stem is shared
  later = ALL_STAGES[ALL_STAGES.index(stage) + 1 :]

  def back(m, x):
    if later:
      x = m.stages(x, start=later[0], stop=later[-1], train=False)
    return m.head(x, train=False)

  return model.apply(variables, fmap, method=back)


STAGE_SPLIT = StageSplit(
  stages=lambda model: ALL_STAGES, default=lambda model: 'layer4', front=_front, back=_back
)

METHOD = Method(
  name='baseline',
  model_for=model_for,
  losses_for=losses_for,
  model_types=(models.Baseline,),
  config=config,
  check=check,
  sketch_fusion=True,
  stage_split=STAGE_SPLIT,
)
