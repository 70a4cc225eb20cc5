"""MM'23 baseline wiring: two-stream ResNet-50 + GeM + BNNeck, identity CE + metric loss (DESIGN §4).

The metric loss (WRT by default) and the identity loss both see the global P×K×2 batch; the metric
loss uses the pre-BN GeM feature and the identity loss the BNNeck logits, as in the reference code.
"""

import jax.numpy as jnp

from sketchreid_jax import losses
from sketchreid_jax import models
from sketchreid_jax.methods import Method, register


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


def losses_for(outputs, batch, config):
  labels = batch['label']
  return {
    'id': (
      config.loss.id_weight,
      losses.cross_entropy(outputs['logits'], labels, label_smoothing=config.loss.label_smoothing),
    ),
    'metric': (config.loss.metric_weight, metric_loss(outputs['feat'], labels, config)),
  }


METHOD = register(
  Method(name='baseline', model_for=model_for, losses_for=losses_for, sketch_fusion=True)
)
