"""DALNet wiring (seed 003): identity, cross-/intra-modal circle and style refinement losses.

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
  term's gradient to norm ≤ grad_clip_norm, then the sum; ``train._per_term_clipped_grads``),
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
INTRA = ('photo', 'sketch')  # the seed's intra-modal term compresses sketches and photos


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


METHOD = register(
  Method(
    name='dalnet',
    model_for=model_for,
    losses_for=losses_for,
    global_outputs=('streams', 'mia'),
    model_inputs=('label', 'mask'),
    frozen_for=frozen_for,
    prepare=prepare,
    frozen_params=frozen_params,
  )
)
