"""Circle losses of DALNet (docs/design.md §4 "circle loss"), cross-modal and intra-modal.

Circle loss (Sun et al., "Circle Loss: A Unified Perspective of Pair Similarity Optimization",
CVPR 2020), pair-based form, for one anchor with positive similarities s_p and negative ones s_n:

    s      = cosine similarity of the L2-normalised features
    α_p    = [1 + m − s_p]₊,   α_n = [s_n + m]₊        (both under stop_gradient)
    Δ_p    = 1 − m,            Δ_n = m
    L      = softplus(logsumexp_p(−γ α_p (s_p − Δ_p)) + logsumexp_n(γ α_n (s_n − Δ_n)))

which is Sun et al.'s log[1 + Σ_n exp(γ α_n (s_n − Δ_n)) Σ_p exp(−γ α_p (s_p − Δ_p))]. docs/design.md §4 fixes
m = 0.25 and γ = 64 (the keyword defaults; the config sets them).

Interpretations chosen (the seed lost its formula images; docs/design.md §4 fixes the facts above):

* **Cross-modal** (``circle_pairwise``): anchors are the rows of ``a``, candidates the rows of
  ``b``; positives are the candidates of the anchor's identity, negatives all the others. The
  caller applies it to (photo, sketch), (photo, aux) and (aux, sketch) and sums; it is not
  symmetrised here (swap the arguments to make the other modality the anchor).
* When ``a is b`` (or ``exclude_self=True``) the anchor's own row is not its positive: the self
  pair sits at s = 1 by construction, so it carries no signal yet would enter the positive sum and
  damp the real positives' weights. The ``a is b``
  test is a Python identity check, so under ``jit`` with ``a`` and ``b`` passed as separate
  arguments it cannot fire: pass ``exclude_self=True`` there.
* **Intra-modal** (``circle_intra``): within one modality, anchor i is the feature before the MIA
  attention module, pre[i], and every candidate is a feature after it, post[j]: the positives are
  post[j] for every j of its identity, j = i included (the same sample before and after MIA), the
  negatives the ``hard_negatives`` (config knob; default 1, the single hardest) most similar post
  rows of other identities; ``hard_negatives=0`` keeps all of them, and a value above their number
  keeps all of those. Positives and negatives thus come from one comparison, pre against post, so
  a negative is judged on the same scale as the positives it competes with (mixing in pre–pre
  similarities let features that are merely alike before MIA, e.g. all non-negative, supply the
  hardest negative of every anchor). The caller must give pre and post of the same kind (same
  pooling and normalisation, ``models/dalnet.py``), or the positive pair cannot reach 1 − m. Ties
  are broken by ``lax.top_k`` (lowest index first); tied candidates have equal similarity, so the
  loss value does not depend on it. The selection is a mask: gradient flows through the chosen
  similarities, not the choice.
* **Bounds.** Every logit is at least −γm²: with u = 1 − s_p, the positive logit is
  −γ(m + u)(m − u) = γ(u² − m²) (minimal at s_p = 1), and the negative logit is γ(s_n² − m²) for
  s_n ≥ −m (minimal at s_n = 0) and 0 below. So every anchor's loss is at least
  softplus(−2γm²) (3.4e-4 at γ = 64, m = 0.25), and an anchor whose P positives sit at s_p = 1 and
  whose Q negatives at s_n = 0 has exactly softplus(log(P·Q) − 2γm²): the term's lower region.
* The loss is the mean over anchors with at least one positive and one negative; with no such
  anchor (e.g. a one-identity batch) it is 0.0, with a finite (zero) gradient. Masked-out pairs
  are removed before the exponential, so values and gradients stay NaN-free; the log-sum-exps
  are max-shifted (γ·α·s reaches ±2γ).
* Features are promoted to at least float32 and normalised with rsqrt(max(‖x‖², eps²))
  (``distances.cosine_similarity``): a zero feature has similarity 0 with everything and a finite
  gradient.
"""

import numbers

import jax
import jax.numpy as jnp

from sketchreid_jax.losses.distances import cosine_similarity

__all__ = ['circle_intra', 'circle_pairwise']


def _masked_logsumexp(x: jax.Array, mask: jax.Array) -> jax.Array:
  """Row-wise log Σ_{mask} e^x; an empty row gives a finite stand-in (its anchor is dropped)."""
  row_max = jnp.max(jnp.where(mask, x, -jnp.inf), axis=1, keepdims=True)
  row_max = jax.lax.stop_gradient(jnp.where(jnp.isfinite(row_max), row_max, 0.0))
  # Masked-out entries may lie far above the shift; exponentiate 0 there so nothing overflows.
  e = jnp.where(mask, jnp.exp(jnp.where(mask, x - row_max, 0.0)), 0.0)
  total = jnp.sum(e, axis=1)
  # A non-empty row sums to ≥ 1 after the shift; only an empty one needs a stand-in for log(0).
  return jnp.log(jnp.where(total > 0, total, 1.0)) + row_max[:, 0]


def _circle(
  sim: jax.Array, is_pos: jax.Array, is_neg: jax.Array, *, margin: float, gamma: float
) -> jax.Array:
  """Mean circle loss over the valid rows of an (anchors, candidates) similarity matrix."""
  alpha_p = jax.lax.stop_gradient(jax.nn.relu(1.0 + margin - sim))
  alpha_n = jax.lax.stop_gradient(jax.nn.relu(sim + margin))
  logit_p = -gamma * alpha_p * (sim - (1.0 - margin))
  logit_n = gamma * alpha_n * (sim - margin)
  per_anchor = jax.nn.softplus(
    _masked_logsumexp(logit_p, is_pos) + _masked_logsumexp(logit_n, is_neg)
  )
  valid = jnp.any(is_pos, axis=1) & jnp.any(is_neg, axis=1)
  total = jnp.sum(jnp.where(valid, per_anchor, 0.0))
  return total / jnp.maximum(jnp.sum(valid), 1).astype(total.dtype)


def _check_features(x: jax.Array, labels: jax.Array, x_name: str, labels_name: str, fn: str):
  if x.ndim != 2 or labels.shape != x.shape[:1]:
    raise ValueError(
      f'{fn}: {x_name} must be (num, D) and {labels_name} (num,), got {tuple(x.shape)} and '
      f'{tuple(labels.shape)}.'
    )


def circle_pairwise(
  a: jax.Array,
  labels_a: jax.Array,
  b: jax.Array,
  labels_b: jax.Array,
  *,
  margin: float = 0.25,
  gamma: float = 64.0,
  exclude_self: bool | None = None,
  eps: float = 1e-12,
) -> jax.Array:
  """Cross-modal circle loss, DALNet, circle loss (Sun et al. 2020, pair-based form).

  Equation and interpretations in the module docstring.

  Args:
    a: (N, D) anchor features of one modality (unnormalised).
    labels_a: (N,) identities of the anchors.
    b: (M, D) candidate features (usually another modality).
    labels_b: (M,) identities of the candidates.
    margin: the relaxation m (0.25; config).
    gamma: the scale γ (64; config).
    exclude_self: drop the diagonal pair (anchor i, candidate i) from the positives; requires
      N == M. ``None`` means ``a is b``.
    eps: the clamp on feature norms before normalising.

  Returns:
    The mean over anchors having a positive and a negative (0.0 if none), in at least float32.
  """
  self_pairs = a is b if exclude_self is None else bool(exclude_self)
  a, labels_a, b, labels_b = (jnp.asarray(x) for x in (a, labels_a, b, labels_b))
  _check_features(a, labels_a, 'a', 'labels_a', 'circle_pairwise')
  _check_features(b, labels_b, 'b', 'labels_b', 'circle_pairwise')
  if a.shape[1] != b.shape[1]:
    raise ValueError(
      f'circle_pairwise: a and b must share the feature dim, got {tuple(a.shape)} and '
      f'{tuple(b.shape)}.'
    )
  if self_pairs and a.shape[0] != b.shape[0]:
    raise ValueError(
      f'circle_pairwise: exclude_self needs as many anchors as candidates (row i of a is row i '
      f'of b), got {a.shape[0]} and {b.shape[0]}.'
    )
  sim = cosine_similarity(a, b, eps=eps)
  same = labels_a[:, None] == labels_b[None, :]
  is_pos = same & ~jnp.eye(a.shape[0], b.shape[0], dtype=bool) if self_pairs else same
  return _circle(sim, is_pos, ~same, margin=margin, gamma=gamma)


def circle_intra(
  pre: jax.Array,
  post: jax.Array,
  labels: jax.Array,
  *,
  margin: float = 0.25,
  gamma: float = 64.0,
  hard_negatives: int = 1,
  exclude_self: bool = False,
  eps: float = 1e-12,
) -> jax.Array:
  """Intra-modal circle loss, DALNet, circle loss around the MIA module.

  Equation and interpretations (positives before/after MIA, hard-negative mining) in the module
  docstring.

  Args:
    pre: (N, D) features of one modality before the MIA attention module (the anchors).
    post: (N, D) the same samples' features after MIA (row i is pre[i] after MIA).
    labels: (N,) identities.
    margin: the relaxation m (0.25; config).
    gamma: the scale γ (64; config).
    hard_negatives: how many of the most similar other-identity post rows each anchor uses as
      negatives (config); 0 keeps all of them. Must be a Python int (it fixes a shape).
    exclude_self: drop the pair (pre[i], post[i]) from the positives: for ``post is pre`` (the
      intra-modal term without MIA), where that pair is the constant s = 1.
    eps: the clamp on feature norms before normalising.

  Returns:
    The mean over anchors having a negative (0.0 if none), in at least float32.
  """
  pre, post, labels = (jnp.asarray(x) for x in (pre, post, labels))
  _check_features(pre, labels, 'pre', 'labels', 'circle_intra')
  if post.shape != pre.shape:
    raise ValueError(
      f'circle_intra: post must have the shape of pre {tuple(pre.shape)}, got {tuple(post.shape)}.'
    )
  if (
    isinstance(hard_negatives, bool)
    or not isinstance(hard_negatives, numbers.Integral)
    or hard_negatives < 0
  ):
    raise ValueError(
      f'circle_intra: hard_negatives must be an int ≥ 0 (0 = all), got {hard_negatives!r}.'
    )
  num = pre.shape[0]
  sim = cosine_similarity(pre, post, eps=eps)
  same = labels[:, None] == labels[None, :]
  is_neg = ~same
  is_pos = same & ~jnp.eye(num, dtype=bool) if exclude_self else same
  k = min(int(hard_negatives), num)
  if k > 0:
    _, idx = jax.lax.top_k(jax.lax.stop_gradient(jnp.where(is_neg, sim, -jnp.inf)), k)
    picked = jnp.zeros_like(is_neg).at[jnp.arange(num)[:, None], idx].set(True)
    # With fewer than k negatives top_k also returns masked-out (-inf) slots; drop them.
    is_neg = is_neg & picked
  return _circle(sim, is_pos, is_neg, margin=margin, gamma=gamma)
