"""Pairwise distances between embedding sets, shared by the metric-learning losses (docs/design.md §4).

    euclidean(a, b)_ij = sqrt(max(‖a_i‖² + ‖b_j‖² − 2 a_i·b_j, eps))
    cosine(a, b)_ij    = a_i·b_j / (max(‖a_i‖, eps) · max(‖b_j‖, eps))

Interpretations chosen:

* The clamp happens *before* the square root (as ``dist.clamp(min=1e-12).sqrt()`` in the re-id
  reference code): at zero distance — the diagonal of a vs a, or duplicated samples — the clamped
  branch has zero gradient, so gradients stay finite where sqrt'(0) would be infinite.
* Inputs are promoted to at least float32 (bfloat16 activations lose the small differences that
  the expanded form relies on); float64 stays float64 when x64 is enabled. The inner products use
  ``Precision.HIGHEST`` for the same reason: the accelerators' default float32 matmul (TF32 on
  GPUs, bfloat16 passes on TPUs) makes ‖a‖² + ‖b‖² − 2a·b cancel badly for near-equal rows.
* Cosine normalises with rsqrt(max(‖x‖², eps²)) rather than ``x / max(norm(x), eps)``: the gradient
  of ``norm`` is NaN at a zero vector even when the clamp is active.
"""

import jax
import jax.numpy as jnp

__all__ = ['cosine_similarity', 'euclidean_distance']


def _promote(a: jax.Array, b: jax.Array) -> tuple[jax.Array, jax.Array]:
  if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
    raise ValueError(
      f'distance: a and b must be 2-D (num, dim) with the same dim, got {a.shape} and {b.shape}.'
    )
  dtype = jnp.promote_types(jnp.result_type(a, b), jnp.float32)
  return a.astype(dtype), b.astype(dtype)


def euclidean_distance(a: jax.Array, b: jax.Array, eps: float = 1e-12) -> jax.Array:
  """(N, M) Euclidean distances between rows of a (N, D) and b (M, D); see module docstring."""
  a, b = _promote(jnp.asarray(a), jnp.asarray(b))
  sq = (
    jnp.sum(a * a, axis=1)[:, None]
    + jnp.sum(b * b, axis=1)[None, :]
    - 2.0 * jnp.matmul(a, b.T, precision=jax.lax.Precision.HIGHEST)
  )
  return jnp.sqrt(jnp.maximum(sq, eps))


def cosine_similarity(a: jax.Array, b: jax.Array, eps: float = 1e-12) -> jax.Array:
  """(N, M) cosine similarities between rows of a (N, D) and b (M, D); norms clamped at eps."""
  a, b = _promote(jnp.asarray(a), jnp.asarray(b))
  a = a * jax.lax.rsqrt(jnp.maximum(jnp.sum(a * a, axis=1, keepdims=True), eps * eps))
  b = b * jax.lax.rsqrt(jnp.maximum(jnp.sum(b * b, axis=1, keepdims=True), eps * eps))
  return jnp.matmul(a, b.T, precision=jax.lax.Precision.HIGHEST)
