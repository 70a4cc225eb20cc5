"""CMAlign: dense cross-modal correspondence, its masks, the pairing and the reconstructions.

Implements docs/design.md §4 "CMAlign (L_ic, L_dt)" (the dense alignment of the MM'23 Market-Sketch-1K
baseline, taken from Park et al., "Learning by Aligning: Visible-Infrared Person Re-identification
using Cross-Modal Correspondences", ICCV 2021). Pure functions without parameters; they live under
``models`` because they are part of the training forward pass. The loss on their outputs, L_dt, is
``sketchreid_jax.losses.dense_triplet``; L_ic (identity CE of the reconstructed positives through
the remaining layers) is wired by the training step.

For a query map f_q and a key map f_k of the same sample pair (NHWC, positions i, j ∈ 1..HW):

    S_ij  = <f_q,i / ‖f_q,i‖, f_k,j / ‖f_k,j‖>            (cosine, over channels)
    P_ij  = exp(T·S_ij) / Σ_j' exp(T·S_ij')              (row softmax, T = 50)
    f̃_i   = Σ_j P_ij f_k,j                               (warp: f_k seen at f_q's positions)
    m     = minmax(‖f_q,i‖)  or  minmax(A·a)             (mask, stop-gradient)
    f̂     = m ⊙ f̃ + (1 − m) ⊙ f_q                        (reconstruction)
    c     = minmax(m_q ⊙ (P·m_k))                        (co-mask of the positive pair, stop-grad)
    minmax(x) = (x − min x) / (max x − min x + eps)      (per image, over its H×W positions)

Interpretations chosen:

* Pairing. The per-device batch is laid out [photos (``num_photos`` rows) | sketches]. For every
  row i, ``pos[i]`` is drawn uniformly among the rows of the same label in the *other* modality and
  ``neg[i]`` uniformly among the rows of a different label in the other modality, independently per
  row (argmax of iid uniform scores over the valid candidates: jit-able, static shapes). The public
  reference instead permutes the K same-identity rows and draws K *distinct* negative identities
  per identity (hence its P − 1 ≥ K requirement); our independent draws have the same marginal
  distribution per row and need no such condition.
* A row without a candidate cannot be detected from shapes under ``jit`` (labels are traced).
  Eagerly (concrete labels) ``pair_indices`` raises. Under ``jit`` it falls back, deterministically:
  no positive (its identity is absent from the other modality) → ``pos[i] = i`` (self-warp, so
  f̂⁺ ≈ f); no negative (one identity in the batch) → ``neg[i] = pos[i]``, so f̂⁻ = f̂⁺ exactly and
  that row's L_dt term is the constant c·margin with zero gradient. The P×K sampler never
  produces either case. What shapes do reveal (an empty modality half) is an error at trace time.
* The reconstruction mask m is the *query's* mask, for the positive and the negative alike (as the
  reference); the co-mask multiplies the query mask by the positive's mask carried over by P.
* Attribute mask (``mask='attribute'``): a fixed, non-trainable Gaussian matrix A of shape
  (num_attributes, H·W) made by ``attribute_projection(seed, …)`` maps each row's attribute vector
  a (the 0-based codes of ``datasets/attributes.py``, used as floats as given: −1 = unknown counts
  as −1) to an H×W map, then min–max normalised. Min–max makes it invariant to the scale and
  offset of A·a; an all-zero vector gives a constant map, hence m ≡ 0 (no alignment for that row).
  Rows of one identity share their mask, whatever their modality. The MM'23 code derived a map from
  its attribute text; a seeded random projection is our documented stand-in.
* Masks are wrapped in ``stop_gradient`` at their inputs (so the norm's undefined gradient at a
  zero vector is never formed); ``reconstruct`` takes m as given.
* Numerics: the similarity is computed in (at least) float32 with ``Precision.HIGHEST``: the
  temperature multiplies any matmul error by 50 before the exponential (bfloat16 inputs or TF32
  matmuls would move logits by ~0.05–0.5). Channel normalisation uses rsqrt(max(‖x‖², eps²)), finite
  at zero vectors (``F.normalize``'s eps = 1e-12 in the reference). The warp and the reconstruction
  return the dtype of the feature maps they reproduce; masks and P are float32.
"""

from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

__all__ = [
  'attribute_mask',
  'attribute_projection',
  'cmalign_maps',
  'co_mask',
  'correspondence',
  'feature_norm_mask',
  'minmax_normalise',
  'pair_indices',
  'reconstruct',
  'warp',
]


def _check_map(x: Array, name: str, fn: str, channels: int | None = None) -> None:
  if x.ndim != 4 or (channels is not None and x.shape[-1] != channels):
    want = 'an NHWC map (N, H, W, C)' if channels is None else f'(N, H, W, {channels})'
    raise ValueError(f'{fn}: {name} must be {want}, got shape {tuple(x.shape)}.')


def _float32_at_least(x: Array) -> Array:
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def minmax_normalise(x: Array, *, eps: float = 1e-12) -> Array:
  """Per-sample min–max normalisation over all non-batch axes: (x − min)/(max − min + eps)."""
  x = _float32_at_least(jnp.asarray(x))
  axes = tuple(range(1, x.ndim))
  lo = jnp.min(x, axis=axes, keepdims=True)
  shifted = x - lo
  return shifted / (jnp.max(shifted, axis=axes, keepdims=True) + eps)


def correspondence(
  f_q: Array,
  f_k: Array,
  *,
  temperature: float = 50.0,
  eps: float = 1e-12,
  precision: Any = jax.lax.Precision.HIGHEST,
) -> Array:
  """P = row-softmax(T · cos(f_q,i, f_k,j)) of each pair: (N, H, W, C) ×2 -> (N, HW, HW) float32.

  Row i (a position of f_q) is a distribution over the positions j of f_k.
  """
  f_q, f_k = jnp.asarray(f_q), jnp.asarray(f_k)
  _check_map(f_q, 'f_q', 'correspondence')
  if f_k.shape != f_q.shape:
    raise ValueError(
      f'correspondence: f_q and f_k must be maps of the same shape (paired samples of one '
      f'layer), got {tuple(f_q.shape)} and {tuple(f_k.shape)}.'
    )
  n, h, w, c = f_q.shape

  def unit(x: Array) -> Array:
    x = _float32_at_least(x).reshape(n, h * w, c)
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), eps * eps))

  sim = jnp.einsum('nic,njc->nij', unit(f_q), unit(f_k), precision=precision)
  return jax.nn.softmax(temperature * sim, axis=-1)


def warp(P: Array, f_k: Array) -> Array:
  """f̃ = P · f_k: (N, HW, HW), (N, H, W, C) -> (N, H, W, C), f_k's features at f_q's positions."""
  P, f_k = jnp.asarray(P), jnp.asarray(f_k)
  _check_map(f_k, 'f_k', 'warp')
  n, h, w, c = f_k.shape
  if P.shape != (n, h * w, h * w):
    raise ValueError(
      f'warp: P must be (N, HW, HW) = {(n, h * w, h * w)} for f_k of shape {tuple(f_k.shape)}, '
      f'got {tuple(P.shape)}; pass the output of correspondence(f_q, f_k).'
    )
  out = jnp.einsum('nij,njc->nic', P, _float32_at_least(f_k).reshape(n, h * w, c))
  return out.reshape(n, h, w, c).astype(f_k.dtype)


def feature_norm_mask(f: Array, *, eps: float = 1e-12) -> Array:
  """Per-image minmax of the channel L2 norm at each position: (N, H, W, C) -> (N, H, W, 1)."""
  f = jnp.asarray(f)
  _check_map(f, 'f', 'feature_norm_mask')
  f = _float32_at_least(jax.lax.stop_gradient(f))
  norms = jnp.sqrt(jnp.sum(f * f, axis=-1, keepdims=True))
  return minmax_normalise(norms, eps=eps)


def attribute_projection(seed: int, num_attributes: int, h: int, w: int) -> np.ndarray:
  """The fixed attribute → H×W projection: (num_attributes, h·w) float32, N(0, 1/num_attributes).

  Drawn with ``np.random.default_rng(seed).standard_normal``; the same arguments always give the
  same matrix (store the seed in the config, not the matrix). The 1/√A scale only keeps A·a of
  order one; the min–max normalisation of ``attribute_mask`` removes any global scale.
  """
  for name, value in (('num_attributes', num_attributes), ('h', h), ('w', w)):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
      raise ValueError(f'attribute_projection: {name} must be a positive int, got {value!r}.')
  rng = np.random.default_rng(seed)
  proj = rng.standard_normal((num_attributes, h * w)) / np.sqrt(num_attributes)
  return proj.astype(np.float32)


def attribute_mask(
  attributes: Array, projection: Array, hw: tuple[int, int], *, eps: float = 1e-12
) -> Array:
  """minmax(a · A) per row as an H×W map: (N, A), (A, H·W), (H, W) -> (N, H, W, 1), stop-grad."""
  attributes = jnp.asarray(attributes)
  projection = jnp.asarray(projection)
  h, w = hw
  if attributes.ndim != 2:
    raise ValueError(
      f'attribute_mask: attributes must be (N, num_attributes), one row per sample (gather the '
      f'per-label table with the batch labels), got shape {tuple(attributes.shape)}.'
    )
  if projection.shape != (attributes.shape[1], h * w):
    raise ValueError(
      f'attribute_mask: projection must be (num_attributes, H·W) = '
      f'{(attributes.shape[1], h * w)} for attributes {tuple(attributes.shape)} and maps of '
      f'H×W = {h}×{w}, got {tuple(projection.shape)}; build it with '
      f'attribute_projection(seed, {attributes.shape[1]}, {h}, {w}).'
    )
  a = jax.lax.stop_gradient(attributes).astype(jnp.float32)
  proj = jax.lax.stop_gradient(projection).astype(jnp.float32)
  maps = jnp.matmul(a, proj, precision=jax.lax.Precision.HIGHEST)
  return minmax_normalise(maps.reshape(-1, h, w, 1), eps=eps)


def reconstruct(f: Array, f_warped: Array, m: Array) -> Array:
  """f̂ = m ⊙ f̃ + (1 − m) ⊙ f, in f's dtype; m (N, H, W, 1) broadcasts over channels."""
  f, f_warped, m = jnp.asarray(f), jnp.asarray(f_warped), jnp.asarray(m)
  if f_warped.shape != f.shape or m.shape != f.shape[:-1] + (1,):
    raise ValueError(
      f'reconstruct: f and f_warped must share a shape and m be (N, H, W, 1), got '
      f'{tuple(f.shape)}, {tuple(f_warped.shape)} and {tuple(m.shape)}.'
    )
  return (m * f_warped + (1.0 - m) * f).astype(f.dtype)


def co_mask(m_q: Array, P: Array, m_k: Array, *, eps: float = 1e-12) -> Array:
  """c = minmax(m_q ⊙ (P·m_k)) of (N, H, W, 1), (N, HW, HW), (N, H, W, 1) masks; stop-gradient."""
  m_q, P, m_k = (jax.lax.stop_gradient(jnp.asarray(x)) for x in (m_q, P, m_k))
  _check_map(m_q, 'm_q', 'co_mask', channels=1)
  n, h, w, _ = m_q.shape
  if m_k.shape != m_q.shape or P.shape != (n, h * w, h * w):
    raise ValueError(
      f'co_mask: expected m_q, m_k of shape (N, H, W, 1) and P (N, HW, HW) = '
      f'{(n, h * w, h * w)}, got {tuple(m_q.shape)}, {tuple(m_k.shape)} and {tuple(P.shape)}.'
    )
  carried = jnp.einsum('nij,nj->ni', P, _float32_at_least(m_k).reshape(n, h * w))
  return minmax_normalise(m_q * carried.reshape(n, h, w, 1), eps=eps)


def _check_pair_args(labels: Array, num_photos: Any) -> int:
  if labels.ndim != 1 or not jnp.issubdtype(labels.dtype, jnp.integer):
    raise ValueError(
      f'pair_indices: labels must be a 1-D integer array (one identity per batch row), got '
      f'shape {tuple(labels.shape)} and dtype {labels.dtype}.'
    )
  n = labels.shape[0]
  if isinstance(num_photos, bool) or not isinstance(num_photos, (int, np.integer)):
    raise ValueError(
      f'pair_indices: num_photos must be a static Python int (the photo rows of the '
      f'[photos | sketches] batch), got {num_photos!r}.'
    )
  if not 0 < num_photos < n:
    raise ValueError(
      f'pair_indices: num_photos = {num_photos} leaves a modality empty in a batch of {n} rows; '
      f'CMAlign needs photos and sketches in every per-device batch (0 < num_photos < {n}).'
    )
  return int(num_photos)


def _check_candidates_concrete(labels: np.ndarray, num_photos: int) -> None:
  """Eager-only check (labels known): every row needs a positive and a negative candidate."""
  halves = {'photo': labels[:num_photos], 'sketch': labels[num_photos:]}
  for name, other in (('photo', 'sketch'), ('sketch', 'photo')):
    other_ids = set(halves[other].tolist())
    for y in sorted(set(halves[name].tolist())):
      if y not in other_ids:
        raise ValueError(
          f'pair_indices: {name} rows of label {y} have no same-identity {other} row; every '
          f'identity of the batch must appear in both halves (P×K sampler).'
        )
      if not other_ids - {y}:
        raise ValueError(
          f'pair_indices: {name} rows of label {y} have no different-identity {other} row; '
          f'CMAlign needs at least two identities per per-device batch (config P ≥ 2).'
        )


def pair_indices(labels: Array, rng: Array, *, num_photos: int) -> tuple[Array, Array]:
  """(pos, neg) int32 (N,): a random other-modality row of the same / a different label per row.

  Batch layout [photos (num_photos rows) | sketches]; ``rng`` a PRNG key. Candidates are drawn
  uniformly and independently per row; see the module docstring for rows without a candidate.
  """
  labels = jnp.asarray(labels)
  num_photos = _check_pair_args(labels, num_photos)
  if not isinstance(labels, jax.core.Tracer):
    _check_candidates_concrete(np.asarray(labels), num_photos)
  n = labels.shape[0]
  is_sketch = np.arange(n) >= num_photos
  other_modality = jnp.asarray(is_sketch[:, None] != is_sketch[None, :])
  same = labels[:, None] == labels[None, :]
  pos_ok = other_modality & same
  neg_ok = other_modality & ~same
  key_pos, key_neg = jax.random.split(rng)

  def draw(key: Array, ok: Array) -> Array:
    # argmax of iid U[0, 1) scores over the valid set is a uniform choice within it; the −1 fill
    # keeps invalid entries below every valid score.
    scores = jnp.where(ok, jax.random.uniform(key, (n, n)), -1.0)
    return jnp.argmax(scores, axis=1).astype(jnp.int32)

  rows = jnp.arange(n, dtype=jnp.int32)
  pos = jnp.where(jnp.any(pos_ok, axis=1), draw(key_pos, pos_ok), rows)
  neg = jnp.where(jnp.any(neg_ok, axis=1), draw(key_neg, neg_ok), pos)
  return pos, neg


def cmalign_maps(
  f: Array,
  labels: Array,
  rng: Array,
  *,
  num_photos: int,
  temperature: float,
  mask: Literal['norm', 'attribute'] = 'norm',
  attributes: Array | None = None,
  projection: Array | None = None,
  norm_eps: float = 1e-12,
  mask_eps: float = 1e-12,
) -> dict[str, Array]:
  """CMAlign on one layer's map of the [photos | sketches] batch.

  Args:
    f: (N, H, W, C) map of the whole per-device batch (photo rows first).
    labels: (N,) integer identities.
    rng: PRNG key for the pairing.
    num_photos: static number of photo rows.
    temperature: T of the correspondence softmax (50 in the reference).
    mask: 'norm' (feature-norm mask) or 'attribute' (needs ``attributes`` and ``projection``).
    attributes: (N, A) per-row attribute vectors, for mask='attribute'.
    projection: (A, H·W) matrix from ``attribute_projection``, for mask='attribute'.
    norm_eps: clamp of the channel norm in the cosine similarity.
    mask_eps: eps in the min–max denominators of the mask and the co-mask.

  Returns:
    {'f_pos_hat', 'f_neg_hat': (N, H, W, C) reconstructions of f from its positive / negative,
     'comask': (N, H, W, 1) co-mask of the positive pair, 'pos', 'neg': (N,) int32 row indices}.
  """
  f = jnp.asarray(f)
  _check_map(f, 'f', 'cmalign_maps')
  n, h, w, _ = f.shape
  if jnp.shape(labels) != (n,):
    raise ValueError(
      f'cmalign_maps: labels must be (N,) = ({n},) for f of shape {tuple(f.shape)}, got '
      f'{tuple(jnp.shape(labels))}.'
    )
  if mask == 'norm':
    m = feature_norm_mask(f, eps=mask_eps)
  elif mask == 'attribute':
    if attributes is None or projection is None:
      raise ValueError(
        "cmalign_maps: mask='attribute' needs attributes (N, A) and projection (A, H·W) "
        "(attribute_projection); pass both or use mask='norm'."
      )
    if jnp.shape(attributes)[:1] != (n,):
      raise ValueError(
        f'cmalign_maps: attributes must have one row per batch row ({n}), got shape '
        f'{tuple(jnp.shape(attributes))}.'
      )
    m = attribute_mask(attributes, projection, (h, w), eps=mask_eps)
  else:
    raise ValueError(f"cmalign_maps: mask must be 'norm' or 'attribute', got {mask!r}.")

  pos, neg = pair_indices(labels, rng, num_photos=num_photos)
  out: dict[str, Array] = {'pos': pos, 'neg': neg}
  for name, idx in (('pos', pos), ('neg', neg)):
    f_k = f[idx]
    P = correspondence(f, f_k, temperature=temperature, eps=norm_eps)
    out[f'f_{name}_hat'] = reconstruct(f, warp(P, f_k), m)
    if name == 'pos':
      out['comask'] = co_mask(m, P, m[idx], eps=mask_eps)
  return out
