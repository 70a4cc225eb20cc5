"""Style refinement loss of DALNet (docs/design.md §4 "style refinement").

A cosine InfoNCE: for anchor a_i (the auxiliary-modality feature), its single positive p_i (the
same identity's sketch feature) and negatives n_ij (photo features), with ā = a/‖a‖:

    l_i0 = ā_i·p̄_i / τ,   l_ij = ā_i·n̄_ij / τ   (j = 1..M)
    L    = (1/N) Σ_i −log softmax(l_i)_0 = (1/N) Σ_i softplus(logsumexp_j (l_ij − l_i0))

with τ = 0.07 (the keyword default; the config sets it).

Interpretations chosen (the seed lost its formula images; docs/design.md §4 fixes the roles above):

* Negatives are either one (M, D) set shared by every anchor (e.g. all photos of the batch, the
  anchor's own identity included, as in the seed's "photo features are negatives") or an
  (N, M, D) set per anchor, if the caller wants to pick them (e.g. other identities only).
* No stop-gradient is applied here: every input receives gradient. Which branches are detached
  (e.g. the sketch and photo features, so that only the auxiliary generator is refined) is the
  caller's choice.
* The second form above is the one computed: it equals the first, but stays accurate in float32
  when the positive dominates (at τ = 0.07 a loss of ~1e-6 would otherwise round to 0). At least
  one negative is required (M ≥ 1): without one the loss is identically 0.
* Features are promoted to at least float32 and normalised with rsqrt(max(‖x‖², eps²)), as in
  ``distances.cosine_similarity``: a zero feature has similarity 0 and a finite gradient.
"""

import jax
import jax.numpy as jnp

__all__ = ['style_refinement']


def _normalize(x: jax.Array, eps: float) -> jax.Array:
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), eps * eps))


def style_refinement(
  anchor: jax.Array,
  positive: jax.Array,
  negatives: jax.Array,
  *,
  temperature: float = 0.07,
  eps: float = 1e-12,
) -> jax.Array:
  """DALNet, style refinement loss: cosine InfoNCE (equation in the module docstring).

  Applies no stop-gradient; the caller detaches whichever inputs should not be trained.

  Args:
    anchor: (N, D) auxiliary-modality features.
    positive: (N, D) row i is anchor i's single positive (its identity's sketch feature).
    negatives: (M, D) photo features shared by all anchors, or (N, M, D) per anchor; M ≥ 1.
    temperature: τ > 0 (0.07; config).
    eps: the clamp on feature norms before normalising.

  Returns:
    The mean over anchors, a scalar in at least float32.
  """
  anchor, positive, negatives = (jnp.asarray(x) for x in (anchor, positive, negatives))
  if anchor.ndim != 2 or positive.shape != anchor.shape:
    raise ValueError(
      f'style_refinement: anchor and positive must both be (N, D), got {tuple(anchor.shape)} '
      f'and {tuple(positive.shape)}.'
    )
  num, dim = anchor.shape
  if not (
    (negatives.ndim == 2 and negatives.shape[1] == dim)
    or (negatives.ndim == 3 and negatives.shape[0] == num and negatives.shape[2] == dim)
  ):
    raise ValueError(
      f'style_refinement: negatives must be (M, {dim}) or ({num}, M, {dim}) for anchors of shape '
      f'{tuple(anchor.shape)}, got {tuple(negatives.shape)}.'
    )
  if negatives.shape[-2] == 0:
    raise ValueError('style_refinement: needs at least one negative (M ≥ 1), got M = 0.')
  try:
    bad_temperature = not temperature > 0
  except jax.errors.ConcretizationTypeError:
    bad_temperature = False  # Traced under jit: the value cannot be checked.
  if bad_temperature:
    raise ValueError(f'style_refinement: temperature must be > 0, got {temperature!r}.')
  dtype = jnp.promote_types(jnp.result_type(anchor, positive, negatives), jnp.float32)
  a, p, n = (_normalize(x.astype(dtype), eps) for x in (anchor, positive, negatives))
  hi = jax.lax.Precision.HIGHEST
  pos = jnp.sum(a * p, axis=1)
  if n.ndim == 2:
    neg = jnp.matmul(a, n.T, precision=hi)
  else:
    neg = jnp.einsum('nd,nmd->nm', a, n, precision=hi)
  # Differences first: the loss is then exact where the positive logit dominates.
  gaps = (neg - pos[:, None]) / temperature
  return jnp.mean(jax.nn.softplus(jax.nn.logsumexp(gaps, axis=1)))
