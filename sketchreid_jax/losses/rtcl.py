"""Recognisable Target Centroid Loss (CMDSL seed ``000_…`` §3.2, Eqs. 6–12; docs/design.md §4 "RTCL").

On the pre-BN embeddings f of a P×K×2 batch (K photos and K sketches for each of P identities),
with φ(·,·) the Euclidean distance:

    D^intra_a  = 1/(K−1) Σ_{i ≠ a, y_i = y_a, m_i = m_a} ‖f_a − f_i‖                    (6)
    D^across_a = 1/K     Σ_{i: y_i = y_a, m_i ≠ m_a}      ‖f_a − f_i‖                    (7)
    φ          = 1/(2PK) Σ_a (D^intra_a − D^across_a)²                                   (8)
    c_y        = 1/(2K)  Σ_{j: y_j = y} f_j                                              (9)
    d^neg_y    = mean_{j: y_j ≠ y} ‖f_j − c_y‖                                           (10)
    H_y        = {j : y_j ≠ y, ‖f_j − c_y‖ < d^neg_y}   (all negatives of y if empty)
    θ          = Σ_y mean_{j: y_j = y} ‖f_j − c_y‖ / Σ_y mean_{j ∈ H_y} ‖f_j − c_y‖      (11)
    L_RTCL     = φ + θ                                                                   (12)

Interpretations chosen (docs/design.md §4 fixes the first four; the rest are ours):

* Eq. 8 is written for sketch anchors; we apply (6)–(7) symmetrically to every one of the
  2PK anchors, photos included (a photo's "intra" set is the other photos of its identity and its
  "across" set the sketches), and φ is the mean over all of them.
* Eq. 10's 1/(2K(P−1)) is the mean over all samples of other identities; Eq. 11's expectations
  are per-identity means, summed over the identities (not one pooled mean).
* The hard-negative set H_y uses a strict "<"; when it is empty (every negative equidistant from
  c_y) the mean runs over all of y's negatives, so the denominator never silently loses a term.
* Distances clamp the squared distance at ``eps`` before the square root (``distances.py``), so
  gradients are finite at zero distance (duplicated features, a sample at its centroid); a zero
  distance therefore reads as sqrt(eps) = 1e-6 by default.
* No row order is assumed: every set above is a (B, B) mask built from ``labels`` and
  ``modality``, so the loss is invariant to permuting the batch (the multi-device step
  concatenates device shards). Identities are whatever label values occur (they need not be
  0..P−1); the centroid is computed once per *sample* from its same-label row of the mask, and a
  sum over identities is a sum over samples weighted by 1/(#samples of that identity).
* An anchor that is the only sample of its identity in its modality (K = 1) has no intra-modal
  partner: D^intra_a is defined as 0, so its φ term is (D^across_a)² and pulls the cross-modal
  pair together, which is what RTCL asks of a consistent identity. Likewise an empty across set
  (an identity seen in one modality only) gives D^across_a = 0.
* Batches the P×K×2 sampler never produces — modality values other than 0/1, a single identity,
  an identity seen in only one modality — raise a ``ValueError`` when the call is eager (concrete
  labels). Under ``jit`` values cannot be checked: a single-identity batch then has θ = 0 (no
  negatives, ratio undefined) and the across-set rule above applies.
* The hard-negative mask is a comparison, so d^neg_y passes no gradient (as in the seed, it only
  selects). Everything is computed in at least float32 (float64 stays float64 under x64).
"""

import jax
import jax.numpy as jnp
import numpy as np

from sketchreid_jax.losses.distances import euclidean_distance

__all__ = ['rtcl', 'rtcl_terms']


def _masked_mean(values: jax.Array, mask: jax.Array) -> jax.Array:
  """Row-wise mean of ``values`` over ``mask``; 0 for an empty row (the conventions above)."""
  total = jnp.sum(jnp.where(mask, values, 0.0), axis=1)
  return total / jnp.maximum(jnp.sum(mask, axis=1), 1).astype(values.dtype)


def _check(features: jax.Array, labels: jax.Array, modality: jax.Array) -> None:
  if features.ndim != 2 or labels.shape != features.shape[:1] or modality.shape != labels.shape:
    raise ValueError(
      'rtcl: features must be (B, D), labels (B,) and modality (B,), got '
      f'{features.shape}, {labels.shape} and {modality.shape}.'
    )
  if not jnp.issubdtype(labels.dtype, jnp.integer):
    raise ValueError(f'rtcl: labels must be integer identities, got dtype {labels.dtype}.')
  if not (jnp.issubdtype(modality.dtype, jnp.integer) or modality.dtype == jnp.bool_):
    raise ValueError(f'rtcl: modality must be integer (0 photo, 1 sketch), got {modality.dtype}.')
  try:
    y, m = np.asarray(labels), np.asarray(modality).astype(np.int64)
  except jax.errors.TracerArrayConversionError:
    return  # Traced under jit: only the static checks above are possible.
  if not np.isin(m, (0, 1)).all():
    raise ValueError(
      f'rtcl: modality must hold 0 (photo) or 1 (sketch), got values {sorted(set(m.tolist()))}.'
    )
  ids = np.unique(y)
  if ids.size < 2:
    raise ValueError(
      f'rtcl: the batch holds {ids.size} identity; θ needs negatives, so sample P ≥ 2 identities '
      '(config.sampler.P).'
    )
  one_sided = [int(i) for i in ids if np.unique(m[y == i]).size < 2]
  if one_sided:
    raise ValueError(
      f'rtcl: identities {one_sided} have samples of only one modality; D_across needs both, so '
      'feed a P×K×2 batch (K photos and K sketches per identity).'
    )


def rtcl_terms(
  features: jax.Array, labels: jax.Array, modality: jax.Array, *, eps: float = 1e-12
) -> tuple[jax.Array, jax.Array]:
  """The two RTCL terms (φ, θ) of Eqs. 8 and 11 (module docstring), e.g. for logging.

  Args:
    features: (B, D) pre-BN embeddings of a P×K×2 batch, in any row order.
    labels: (B,) integer identities (any values; samples of both modalities share them).
    modality: (B,) 0 for a photo, 1 for a sketch.
    eps: the clamp on squared distances before the square root.

  Returns:
    (phi, theta), scalars in at least float32.
  """
  features = jnp.asarray(features)
  labels = jnp.asarray(labels)
  modality = jnp.asarray(modality)
  _check(features, labels, modality)
  features = features.astype(jnp.promote_types(features.dtype, jnp.float32))
  num = labels.shape[0]

  same_id = labels[:, None] == labels[None, :]
  same_mod = modality[:, None] == modality[None, :]
  not_self = ~jnp.eye(num, dtype=bool)

  # Eqs. 6–8: consistency of intra- and cross-modal distances, one term per anchor.
  dist = euclidean_distance(features, features, eps=eps)
  d_intra = _masked_mean(dist, same_id & same_mod & not_self)
  d_across = _masked_mean(dist, same_id & ~same_mod)
  phi = jnp.mean(jnp.square(d_intra - d_across))

  # Eq. 9, one centroid per sample (row i = c_{y_i}): labels need not index anything.
  id_counts = jnp.sum(same_id, axis=1).astype(features.dtype)
  centroids = (
    jnp.matmul(same_id.astype(features.dtype), features, precision=jax.lax.Precision.HIGHEST)
    / id_counts[:, None]
  )
  to_centroid = euclidean_distance(centroids, features, eps=eps)  # [i, j] = ‖f_j − c_{y_i}‖

  # Eqs. 10–11. A comparison passes no gradient, so d_neg needs no stop_gradient.
  is_neg = ~same_id
  d_neg = _masked_mean(to_centroid, is_neg)
  hard = is_neg & (to_centroid < d_neg[:, None])
  hard = jnp.where(jnp.any(hard, axis=1, keepdims=True), hard, is_neg)
  pos_mean = _masked_mean(to_centroid, same_id)
  hard_mean = _masked_mean(to_centroid, hard)
  # Σ_y over identities = Σ_i over samples weighted by 1/#samples of y_i.
  numerator = jnp.sum(pos_mean / id_counts)
  denominator = jnp.sum(hard_mean / id_counts)
  # Only a batch without negatives has a zero denominator (distances are ≥ sqrt(eps) otherwise).
  has_neg = jnp.any(is_neg)
  theta = jnp.where(has_neg, numerator / jnp.where(has_neg, denominator, 1.0), 0.0)
  return phi, theta


def rtcl(
  features: jax.Array, labels: jax.Array, modality: jax.Array, *, eps: float = 1e-12
) -> jax.Array:
  """L_RTCL = φ + θ (CMDSL Eq. 12) on a P×K×2 batch; arguments as in ``rtcl_terms``."""
  phi, theta = rtcl_terms(features, labels, modality, eps=eps)
  return phi + theta
