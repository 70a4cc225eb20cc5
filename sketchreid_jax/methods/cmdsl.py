"""CMDSL wiring (seed 000, Eq. 13): L = L_id + L_wrt + λ1 (L_ic + L_dt) + λ2 L_rtcl.

The same method also gives the MM'23 baseline with CMAlign (FFAM off, RTCL weight 0, L_ic weight 0
as in the released MM'23 code) and every Table 6 ablation, by config alone. Terms whose weight is
0 are not computed at all (no FFAM modules, no CMAlign pass, no RTCL), so an ablation costs what
it contains.

Which batch each term sees: L_id, L_wrt and L_rtcl use the all-gathered global P×K×2 batch; CMAlign
pairs and reconstructs within each device's own [photos | sketches] batch (as the reference does
within its batch), so L_dt and L_ic are per-device means, averaged over devices by the step.
"""

from sketchreid_jax import losses
from sketchreid_jax import models
from sketchreid_jax.methods import Method, baseline, register


def _uses_cmalign(config) -> bool:
  return bool(config.loss.cmalign_ic_weight or config.loss.cmalign_dt_weight)


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


METHOD = register(
  Method(
    name='cmdsl',
    model_for=model_for,
    losses_for=losses_for,
    model_inputs=('label', 'attributes'),
    sketch_fusion=True,
  )
)
