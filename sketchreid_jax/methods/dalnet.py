"""DALNet wiring (seed 003): identity, cross-/intra-modal circle and style refinement losses.

L = L_id(shared: photo, aux, sketch) + w_mia · L_id(MIA: photo, sketch)
    + w_cc · Σ_{(a,b) ∈ (p,s), (p,x), (x,s)} L_circle(a, b) + w_ic · L_circle-intra
    + w_style · L_style

(x = the DAG's auxiliary modality; every weight in ``config.loss``; a term whose weight is 0 is
not computed.) The seed lost its formula images, so the choices are ours and stated here:

* Identity terms are summed over the feature sets (three shared, two MIA), each a mean CE.
* Circle losses use the pre-BN features (cosine, so the scale does not matter) of the global
  batch (all-gathered). The cross-modal term takes anchors in the first modality of each pair.
* Intra-modal circle: with MIA, positives of a pre-MIA anchor are the same identity's post-MIA
  features and negatives its ``loss.circle_hard_negatives`` most similar other-identity features
  (``losses.circle_intra``), for photo and sketch. Without MIA (DALNet Table 1's row before MIA is
  added) it is the plain circle loss inside each modality, self-pairs excluded.
* Style refinement (InfoNCE, τ = 0.07) is computed on each device's own batch: anchor = aux
  stream's pooled layer-2 feature, the positive = the sketch of the same row (same identity by
  the batch layout), negatives = every photo of that batch; sketch and photo sides are
  stop-gradient so only the DAG kernel and the aux stream learn from it (DESIGN §4).
* Masks: ``data.mask_source='u2net'`` runs the frozen U²-Net(P) in the step (``prepare``) on this
  device's photos; its weights are frozen variables, loaded once by ``frozen_for``, not parameters.
"""

import os

import jax
import jax.numpy as jnp

from sketchreid_jax import losses
from sketchreid_jax import models
from sketchreid_jax.losses.circle import circle_intra, circle_pairwise
from sketchreid_jax.losses.style import style_refinement
from sketchreid_jax.methods import Method, baseline, register

CROSS_PAIRS = (('photo', 'sketch'), ('photo', 'aux'), ('aux', 'sketch'))


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


def _circle(a, b, config, **kw):
  c = config.loss
  return circle_pairwise(
    a['feat'], a['label'], b['feat'], b['label'], margin=c.circle_margin, gamma=c.circle_gamma, **kw
  )


def losses_for(outputs, batch, config):
  del batch  # every output carries its own labels (three streams do not fit [photos | sketches])
  c = config.loss
  streams, mia = outputs['streams'], outputs.get('mia')

  def ce(head):
    return losses.cross_entropy(head['logits'], head['label'], label_smoothing=c.label_smoothing)

  terms = {'id': (c.id_weight, sum(ce(h) for h in streams.values()))}
  if mia is not None and c.mia_id_weight:
    terms['mia_id'] = (c.mia_id_weight, sum(ce(h) for h in mia.values()))
  if c.circle_cross_weight:
    pairs = [(a, b) for a, b in CROSS_PAIRS if a in streams and b in streams]
    terms['circle_cross'] = (
      c.circle_cross_weight,
      sum(_circle(streams[a], streams[b], config) for a, b in pairs),
    )
  if c.circle_intra_weight:
    if mia is not None:
      intra = sum(
        circle_intra(
          streams[k]['feat'],
          mia[k]['feat'],
          streams[k]['label'],
          margin=c.circle_margin,
          gamma=c.circle_gamma,
          hard_negatives=c.circle_hard_negatives,
        )
        for k in ('photo', 'sketch')
      )
    else:
      intra = sum(_circle(h, h, config, exclude_self=True) for h in streams.values())
    terms['circle_intra'] = (c.circle_intra_weight, intra)
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


METHOD = register(
  Method(
    name='dalnet',
    model_for=model_for,
    losses_for=losses_for,
    global_outputs=('streams', 'mia'),
    model_inputs=('label', 'mask'),
    frozen_for=frozen_for,
    prepare=prepare,
  )
)
