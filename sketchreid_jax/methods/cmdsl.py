"""CMDSL wiring (CMDSL Eq. 13): L = L_id + L_wrt + λ1 (L_ic + L_dt) + λ2 L_rtcl.

The same method also gives the MM'23 baseline with CMAlign (FFAM off, RTCL weight 0, L_ic weight 0
as in the released MM'23 code) and every Table 6 ablation, by config alone. Terms whose weight is
0 are not computed at all (no FFAM modules, no CMAlign pass, no RTCL), so an ablation costs what
it contains.

Which batch each term sees: L_id, L_wrt and L_rtcl use the all-gathered global P×K×2 batch; CMAlign
pairs and reconstructs within each device's own [photos | sketches] batch (as the reference does
within its batch), so L_dt and L_ic are per-device means, averaged over devices by the step.
"""

import dataclasses

from sketchreid_jax import losses, models
from sketchreid_jax.datasets import attributes as attributes_lib
from sketchreid_jax.methods import Method, baseline
from sketchreid_jax.models.resnet import STAGE_NAMES


def config(c) -> None:
  """CMDSL's keys: the baseline's, FFAM, RTCL, CMAlign and the attribute noise of Table 7."""
  baseline.config(c)
  c.data.attribute_noise = 0  # CMDSL Table 7: corrupt this many of the 27 attributes per identity
  c.model.ffam_stages = ()  # CMDSL: stages followed by an FFAM, e.g. ('layer1', ..., 'layer4')
  c.model.ffam_reduction = 16  # FFAM channel-attention reduction r (Eq. 3)
  c.loss.rtcl_weight = 0.0  # λ2 of CMDSL Eq. 13 (0.9 in the paper); 0 = off
  c.loss.cmalign_ic_weight = 0.0  # λ1 on L_ic (CMDSL: 0.5; the released MM'23 code: 0)
  c.loss.cmalign_dt_weight = 0.0  # λ1 on L_dt (0.5 in both)
  c.loss.cmalign_layers = ('layer3', 'layer4')  # maps aligned by CMAlign
  c.loss.cmalign_temperature = 50.0  # softmax temperature of the dense correspondence
  c.loss.cmalign_margin = 0.3  # L_dt margin
  c.loss.cmalign_mask = 'norm'  # 'norm' (feature-norm mask) or 'attribute' (MM'23 attribute map)


def _uses_cmalign(config) -> bool:
  return bool(config.loss.cmalign_ic_weight or config.loss.cmalign_dt_weight)


def check(config, num_devices: int | None) -> None:
  """The baseline's checks, CMAlign's choices, and CMAlign's identities per device in training.

  CMAlign pairs the rows of each *device's* batch, and every row's negative is drawn from the
  other identities on that device, so each device needs at least two identities: P/N − 1 ≥ 1.
  The public reference code needs P − 1 ≥ K because it gives the K rows of an identity K
  *distinct* negative identities; our pairing draws each row's negative independently
  (``models/cmalign.py``), so it needs only one other identity and that stronger condition is
  not imposed.
  """
  from sketchreid_jax import validate

  baseline.check(config, num_devices)
  validate.check_choices(config, {'loss.cmalign_mask': ('norm', 'attribute')})
  c = config.loss
  if num_devices is None or not (c.cmalign_ic_weight or c.cmalign_dt_weight):
    return
  per_device = config.sampler.P // num_devices
  if per_device - 1 < 1:
    raise validate.ConfigError(
      f'CMAlign (config.loss.cmalign_ic_weight={c.cmalign_ic_weight}, cmalign_dt_weight='
      f"{c.cmalign_dt_weight}) draws each row's negative among the other identities of its "
      f"device's batch, but config.sampler.P = {config.sampler.P} over {num_devices} device(s) "
      f'leaves {per_device} identity per device: P / devices - 1 must be >= 1 (e.g. '
      f'--config.sampler.P={2 * num_devices}).'
    )


def prepare_data(config, table, train_set):
  """Table 7's corrupted attributes (``data.attribute_noise`` of the 27 per identity)."""
  del table
  n = config.data.attribute_noise
  if not n:
    return train_set, None
  if train_set.attributes is None:
    raise ValueError(
      f'config.data.attribute_noise={n} but {config.data.root} has no attributes '
      '(market_attribute.mat); set it to 0.'
    )
  noisy = attributes_lib.corrupt_attributes(train_set.attributes, n, config.seed)
  return dataclasses.replace(train_set, attributes=noisy), None


def model_for(config, num_classes: int, bn_axis_name: str | None):
  m = config.model
  return models.CMDSL(
    **baseline.backbone_kwargs(config, num_classes, bn_axis_name),
    **baseline.fusion_kwargs(config),
    ffam_stages=tuple(m.ffam_stages),
    ffam_reduction=m.ffam_reduction,
    cmalign_layers=tuple(config.loss.cmalign_layers) if _uses_cmalign(config) else (),
    cmalign_identity=bool(config.loss.cmalign_ic_weight),
    cmalign_temperature=config.loss.cmalign_temperature,
    cmalign_mask=config.loss.cmalign_mask,
    attribute_seed=config.seed,
  )


def losses_for(outputs, batch, config):
  c = config.loss
  terms = baseline.losses_for(outputs, batch, config)
  if c.rtcl_weight:
    terms['rtcl'] = (c.rtcl_weight, losses.rtcl(outputs['feat'], batch['label'], batch['modality']))
  if 'cmalign' in outputs:
    aligned = outputs['cmalign']
    layers = [k for k in aligned if k != 'labels']
    if c.cmalign_dt_weight:
      terms['cmalign_dt'] = (
        c.cmalign_dt_weight,
        sum(
          losses.dense_triplet(
            aligned[k]['f'],
            aligned[k]['f_pos_hat'],
            aligned[k]['f_neg_hat'],
            aligned[k]['comask'],
            margin=c.cmalign_margin,
          )
          for k in layers
        ),
      )
    if c.cmalign_ic_weight:
      terms['cmalign_ic'] = (
        c.cmalign_ic_weight,
        sum(
          losses.cross_entropy(
            aligned[k]['ic_logits'], aligned['labels'], label_smoothing=c.label_smoothing
          )
          for k in layers
        ),
      )
  return terms


def _default_stage(model) -> str:
  # Grad-CAM of CMDSL Figs. 4–5: the FFAM attention, i.e. the last stage with an FFAM.
  with_ffam = [name for name in STAGE_NAMES if name in tuple(model.ffam_stages)]
  return with_ffam[-1] if with_ffam else 'layer4'


METHOD = Method(
  name='cmdsl',
  model_for=model_for,
  losses_for=losses_for,
  model_types=(models.CMDSL,),
  config=config,
  check=check,
  prepare_data=prepare_data,
  model_inputs=('label', 'attributes'),
  sketch_fusion=True,
  stage_split=dataclasses.replace(baseline.STAGE_SPLIT, default=_default_stage),
)
