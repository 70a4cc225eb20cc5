"""The optimiser: learning-rate schedule, parameter groups, gradient clipping, SGD/AdamW.

Three parameter groups: 'head' (``optim.head_modules``, full learning rate), 'backbone'
(lr × ``optim.backbone_lr_mult``) and 'frozen' (``Method.frozen_params``: no update of any kind).
Clipping is either one global norm over the clipped parameters (``make_optimizer``) or each loss
term on its own (``per_term_clipped_grads``, called by the train step before the optimiser).
"""

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import traverse_util

from sketchreid_jax import parallel
from sketchreid_jax.methods import get_method


def lr_schedule(config: ml_collections.ConfigDict, steps_per_epoch: int, base_lr: float):
  """The epoch-wise step schedule of docs/design.md §4 as a function of the global step.

  For epoch e: base·(e+1)/warmup for e < warmup, then base × gamma^(number of milestones ≤ e).
  """
  s = config.schedule
  milestones = jnp.asarray(s.milestones, jnp.int32)

  def schedule(step):
    epoch = step // steps_per_epoch
    warm = jnp.minimum((epoch + 1) / max(s.warmup_epochs, 1), 1.0)
    decay = s.gamma ** jnp.sum(epoch >= milestones)
    return base_lr * warm * decay

  return schedule


def param_groups(params, head_modules, frozen_paths=()) -> Any:
  """Labels each parameter 'head' (full lr), 'backbone' (lr × backbone_lr_mult) or 'frozen'.

  ``frozen_paths`` are '/'-joined parameter paths (or path prefixes) that must not change at all
  (``Method.frozen_params``): a stopped gradient is not enough, since coupled weight decay and
  momentum would still move them, so their group's transformation is ``optax.set_to_zero``.
  """
  present = [m for m in head_modules if m in params]
  if not present:
    raise ValueError(
      f"config.optim.head_modules={tuple(head_modules)} matches none of the model's "
      f'parameter collections {sorted(params)}'
    )
  flat = traverse_util.flatten_dict(params, sep='/')
  unmatched = [f for f in frozen_paths if not any(_under(k, f) for k in flat)]
  if unmatched:
    raise ValueError(
      f'frozen parameters {unmatched} are not in the model (its parameters: '
      f"{sorted(flat)[:8]}...); the method's frozen_params names a path that does not exist."
    )

  def label(path: str) -> str:
    if any(_under(path, f) for f in frozen_paths):
      return 'frozen'
    return 'head' if path.split('/')[0] in head_modules else 'backbone'

  return traverse_util.unflatten_dict({k: label(k) for k in flat}, sep='/')


def _under(path: str, prefix: str) -> bool:
  return path == prefix or path.startswith(prefix + '/')


def _sgd(o, lr):
  # Coupled L2 before momentum, as torch.optim.SGD(weight_decay=…) in the reference code.
  return optax.chain(
    optax.add_decayed_weights(o.weight_decay),
    optax.sgd(lr, momentum=o.momentum, nesterov=o.nesterov),
  )


def _adamw(o, lr):
  return optax.adamw(lr, b1=o.momentum, weight_decay=o.weight_decay)


# config.optim.name -> (optim config, learning-rate schedule) -> transformation
OPTIMIZERS = {'sgd': _sgd, 'adamw': _adamw}


def make_optimizer(
  config, steps_per_epoch: int, params, frozen_paths=None
) -> optax.GradientTransformation:
  """SGD or AdamW per parameter group, after the gradient clip the config asks for.

  ``frozen_paths`` defaults to what the config's method freezes (``Method.frozen_params``).
  """
  o = config.optim
  if frozen_paths is None:
    frozen_paths = get_method(config.method).frozen_params(config)
  if o.name not in OPTIMIZERS:
    raise ValueError(f'unknown config.optim.name {o.name!r}; known: {sorted(OPTIMIZERS)}')
  build = OPTIMIZERS[o.name]
  tx = optax.multi_transform(
    {
      'head': build(o, lr_schedule(config, steps_per_epoch, o.lr)),
      'backbone': build(o, lr_schedule(config, steps_per_epoch, o.lr * o.backbone_lr_mult)),
      'frozen': optax.set_to_zero(),
    },
    param_groups(params, o.head_modules, frozen_paths),
  )
  if o.grad_clip_norm < 0:
    raise ValueError(f'config.optim.grad_clip_norm must be >= 0 (0 = off), got {o.grad_clip_norm}')
  if o.grad_clip_norm and not o.clip_per_term:  # per term: per_term_clipped_grads
    # One global norm over every clipped parameter, before the update (the logged grad_norm is
    # pre-clip). ``optim.clip_exempt`` modules are left out of it: a classifier that only the
    # identity loss trains must not be slowed because another term's gradient is large elsewhere.
    tx = optax.chain(_clip(params, o.grad_clip_norm, tuple(o.get('clip_exempt', ()))), tx)
  return tx


def _clip(params, max_norm: float, exempt: tuple[str, ...]) -> optax.GradientTransformation:
  clip = optax.clip_by_global_norm(max_norm)
  if not exempt:
    return clip
  # As head_modules: an ablation may lack some of them (no MIA, no mia_bnneck), not all.
  if not any(m in params for m in exempt):
    raise ValueError(
      f"config.optim.clip_exempt={exempt} matches none of the model's parameter collections "
      f'{sorted(params)}.'
    )
  labels = {
    k: jax.tree.map(lambda _: 'free' if k in exempt else 'clip', v) for k, v in params.items()
  }
  return optax.multi_transform({'clip': clip, 'free': optax.identity()}, labels)


def per_term_clipped_grads(forward, params, terms_fn, o):
  """Gradients with each loss term clipped on its own (``optim.clip_per_term``).

  One forward pass, one backward pass per term: term t's gradient g_t (averaged over devices)
  is scaled to norm ≤ ``optim.grad_clip_norm`` over the clipped parameters (all but
  ``optim.clip_exempt``), and the scaled gradients are summed. Why: with one global clip, a term
  whose gradient is large and uninformative (DALNet's circle terms from scratch: norms of 200–300
  against 4 for the identity loss, at the point where every pair has the same similarity) scales
  every other term's update down with it, 40–60× here, and the identity loss never leaves chance.
  Per term, each keeps at most the clip's share. Returns (grads, batch_stats, metrics); the
  metrics add ``grad_norm/<term>``, each term's norm before its clip, and ``grad_norm`` is the
  norm of the unclipped sum as in the global mode.
  """
  outputs, backward, batch_stats = jax.vjp(forward, params, has_aux=True)
  terms = terms_fn(outputs)
  names = list(terms)
  weighted, terms_backward = jax.vjp(
    lambda out: jnp.stack([w * v for w, v in terms_fn(out).values()]), outputs
  )
  exempt = tuple(o.clip_exempt)
  clipped = lambda tree: {k: v for k, v in tree.items() if k not in exempt}
  total, raw, metrics = None, None, {}
  for i, name in enumerate(names):
    (g_out,) = terms_backward(jnp.zeros_like(weighted).at[i].set(1.0))
    (g,) = backward(g_out)
    g = parallel.pmean(g)
    norm = optax.tree.norm(clipped(g))
    metrics[f'grad_norm/{name}'] = norm
    scale = jnp.minimum(1.0, o.grad_clip_norm / jnp.maximum(norm, 1e-12))
    g_scaled = {k: v if k in exempt else jax.tree.map(lambda x: x * scale, v) for k, v in g.items()}
    raw = g if raw is None else jax.tree.map(jnp.add, raw, g)
    total = g_scaled if total is None else jax.tree.map(jnp.add, total, g_scaled)
  metrics |= {f'loss/{name}': value for name, (_, value) in terms.items()}
  metrics |= {'loss': jnp.sum(weighted), 'grad_norm': optax.tree.norm(raw)}
  return total, batch_stats, metrics
