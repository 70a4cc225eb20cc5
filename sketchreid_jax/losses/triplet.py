"""Triplet-family metric losses on a global batch of embeddings (docs/design.md §4 "WRT").

**Weighted regularised triplet (WRT)** — Ye et al., "Deep Learning for Person Re-identification: A
Survey and Outlook" (AGW, TPAMI 2021); the metric loss of the MM'23 Market-Sketch-1K baseline:

    d_ij    = sqrt(max(‖f_i‖² + ‖f_j‖² − 2 f_i·f_j, 1e-12))
    P_i     = {j : y_j = y_i}  (i itself included),   N_i = {j : y_j ≠ y_i}
    w^p_ij  = exp(d_ij − s^p_i) / (Σ_{k∈P_i} exp(d_ik − s^p_i) + 1e-6),      j ∈ P_i
    w^n_ij  = exp(−d_ij − s^n_i) / (Σ_{k∈N_i} exp(−d_ik − s^n_i) + 1e-6),    j ∈ N_i
    d^p_i   = Σ_j w^p_ij d_ij,    d^n_i = Σ_j w^n_ij d_ij
    L_wrt   = (1/N) Σ_i softplus(d^p_i − d^n_i)

**Batch-hard triplet** — Hermans, Beyer & Leibe, "In Defense of the Triplet Loss for Person
Re-Identification" (2017):

    L_bh = mean_{valid i} [max_{j∈P_i∖{i}} d_ij − min_{j∈N_i} d_ij + margin]_+
    (soft margin, margin=None: softplus(max_{j∈P_i∖{i}} d_ij − min_{j∈N_i} d_ij))

Interpretations chosen:

* WRT max-shift. ``shift='set'`` (default) uses the maximum over the set itself,
  s^p_i = max_{P_i} d, s^n_i = max_{N_i} (−d): the numerically stable softmax the "softmax
  over the set, max-shifted" describes; the weights then sum to 1/(1 + 1e-6·e^{…}) ≈ 1.
  ``shift='reference'`` reproduces the public AGW code, which shifts by ``max(x * mask)`` over the
  whole row: identical for positives, but for negatives that maximum is 0 (every masked-out entry is
  0 and −d < 0), so s^n_i = 0 and, once all negatives are far (e^{−d} ≪ 1e-6, d ≳ 15), the weights
  sum to much less than 1 and d^n shrinks towards 0. Choose it to reproduce the reference exactly.
* The weights are not stop-gradient'ed (the reference does not detach them).
* WRT with no negatives for an anchor (a batch of one identity) gives d^n_i = 0, as the reference
  does. Batch-hard averages over the anchors that have another positive *and* a negative; with
  none it returns 0. Neither can raise under ``jit``; the P×K sampler guarantees both sets.
* Distances are computed in (at least) float32 with the clamp before the square root, so gradients
  are finite at zero distance (see ``distances.py``).
"""

from typing import Literal

import jax
import jax.numpy as jnp

from sketchreid_jax.losses.distances import euclidean_distance

__all__ = ['batch_hard_triplet', 'wrt_triplet']


def _check(features: jax.Array, labels: jax.Array, fn: str) -> None:
  if features.ndim != 2 or labels.shape != features.shape[:1]:
    raise ValueError(
      f'{fn}: features must be (N, D) and labels (N,), got {features.shape} and {labels.shape}.'
    )


def _masked_softmax_weights(x: jax.Array, mask: jax.Array, *, shift: str, eps: float) -> jax.Array:
  """Row-wise softmax of ``x`` restricted to ``mask``, with ``eps`` added to the denominator."""
  if shift == 'set':
    row_max = jnp.max(jnp.where(mask, x, -jnp.inf), axis=1, keepdims=True)
    # A row with an empty set has nothing to weight; any finite shift keeps it NaN-free.
    row_max = jnp.where(jnp.isfinite(row_max), row_max, 0.0)
  elif shift == 'reference':
    row_max = jnp.max(x * mask, axis=1, keepdims=True)
  else:
    raise ValueError(f"wrt_triplet: shift must be 'set' or 'reference', got {shift!r}.")
  # Masked-out entries may lie above the shift; exponentiate 0 there so nothing overflows.
  e = jnp.where(mask, jnp.exp(jnp.where(mask, x - row_max, 0.0)), 0.0)
  return e / (jnp.sum(e, axis=1, keepdims=True) + eps)


def wrt_triplet(
  features: jax.Array,
  labels: jax.Array,
  *,
  shift: Literal['set', 'reference'] = 'set',
  weight_eps: float = 1e-6,
  dist_eps: float = 1e-12,
) -> jax.Array:
  """Weighted regularised triplet loss (AGW) over all N samples; equation in the module docstring.

  Args:
    features: (N, D) unnormalised embeddings (the pre-BN GeM feature).
    labels: (N,) integer identities; samples of both modalities share them.
    shift: the softmax max-shift convention (module docstring); 'set' by default.
    weight_eps: the constant added to the softmax denominators (1e-6 in the reference).
    dist_eps: the clamp on squared distances before the square root (1e-12 in the reference).
  """
  features = jnp.asarray(features)
  labels = jnp.asarray(labels)
  _check(features, labels, 'wrt_triplet')
  dist = euclidean_distance(features, features, eps=dist_eps)
  is_pos = labels[:, None] == labels[None, :]
  is_neg = ~is_pos
  # Masking by multiplication, as the reference, so 'reference' shift sees zeros off the set.
  dist_ap = dist * is_pos
  dist_an = dist * is_neg
  w_p = _masked_softmax_weights(dist_ap, is_pos, shift=shift, eps=weight_eps)
  w_n = _masked_softmax_weights(-dist_an, is_neg, shift=shift, eps=weight_eps)
  d_p = jnp.sum(w_p * dist_ap, axis=1)
  d_n = jnp.sum(w_n * dist_an, axis=1)
  return jnp.mean(jax.nn.softplus(d_p - d_n))


def batch_hard_triplet(
  features: jax.Array, labels: jax.Array, *, margin: float | None = 0.3, dist_eps: float = 1e-12
) -> jax.Array:
  """Batch-hard triplet loss (Hermans et al. 2017); ``margin=None`` selects the soft margin."""
  features = jnp.asarray(features)
  labels = jnp.asarray(labels)
  _check(features, labels, 'batch_hard_triplet')
  dist = euclidean_distance(features, features, eps=dist_eps)
  same = labels[:, None] == labels[None, :]
  is_pos = same & ~jnp.eye(labels.shape[0], dtype=bool)
  is_neg = ~same
  # d ≥ 0, so 0 is a neutral fill for the max; +inf for the min.
  hardest_pos = jnp.max(jnp.where(is_pos, dist, 0.0), axis=1)
  hardest_neg = jnp.min(jnp.where(is_neg, dist, jnp.inf), axis=1)
  gap = hardest_pos - hardest_neg
  per_anchor = jax.nn.softplus(gap) if margin is None else jax.nn.relu(gap + margin)
  valid = jnp.any(is_pos, axis=1) & jnp.any(is_neg, axis=1)
  total = jnp.sum(jnp.where(valid, per_anchor, 0.0))
  return total / jnp.maximum(jnp.sum(valid), 1)
