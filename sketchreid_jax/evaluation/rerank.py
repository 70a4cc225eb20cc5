"""k-reciprocal re-ranking of a query × gallery distance matrix (Zhong et al., CVPR 2017).

Z. Zhong, L. Zheng, D. Cao, S. Li, "Re-ranking Person Re-identification with k-reciprocal
Encoding", CVPR 2017 (arXiv:1701.08398). The numbers re-id papers report as "+ re-ranking" come
from the authors' numpy code, ``re_ranking(q_g_dist, q_q_dist, g_g_dist, k1=20, k2=6,
lambda_value=0.3)`` (github.com/zhunzhong07/person-re-ranking, copied into open-reid, torchreid,
reid-strong-baseline, ...). :func:`k_reciprocal_rerank` computes what that code computes, without
its per-sample loops. Paper notation: N(p, k) the k nearest neighbours of p, R(p, k) its
k-reciprocal set, R*(p, k) the expanded set, V_p the k-reciprocal feature, d_J the Jaccard
distance, d* the final distance. (Quantities are named rather than numbered: the equation numbers
could not be checked against the paper here.)

Conventions — the reference code's, followed even where it departs from the paper's text, because
they change the numbers (through the exp(-d) weights and the λ mix) and comparability with
published re-ranked results is the point of re-ranking at evaluation time:

* Inputs are *distances* (smaller = closer), used as given: the reference pipelines pass plain
  Euclidean distances, e.g. :func:`~sketchreid_jax.evaluation.pairwise_distance` three times.
  All N = num_query + num_gallery samples form one neighbourhood graph: queries are neighbours of
  each other and of gallery items.
* The original distance d is the block matrix D = [[q_q, q_g], [q_gᵀ, g_g]] squared elementwise
  (``np.power(D, 2)`` in the inputs' dtype, then cast to float32), each column divided by its
  maximum, then transposed: d[i, j] = D[j, i]² / max_k D[k, i]². For symmetric inputs this is row
  i of D² over its maximum, so each row of d lies in [0, 1] with maximum 1. The paper uses d
  unscaled; the scaling is the code's.
* N(p, k) is the first k + 1 entries of p's row of ``np.argsort(d)`` (p itself normally comes
  first, so k1 means k1 + 1 entries); fewer when N is smaller. The half-size sets R(c, k1/2) use
  ``int(np.around(k1 / 2)) + 1`` entries — numpy rounds half to even, so k1 = 5 gives 3.
* Expansion: every c ∈ R(p, k1) adds R(c, k1/2) to R*(p, k1) when
  |R(c, k1/2) ∩ R(p, k1)| > 2/3 |R(c, k1/2)|, strictly greater as in the code.
* V_p[g] = exp(-d[p, g]) / Σ_{g' ∈ R*(p, k1)} exp(-d[p, g']) on R*(p, k1), zero elsewhere.
* Local query expansion: V_p becomes the mean of V over the first k2 entries of p's argsort row.
  With k2 = 1 it is skipped, as in the code (this is not the same as averaging over that one
  entry, which is not p itself when p ties at distance 0 with another sample).
* d_J(p, g) = 1 - Σ min(V_p, V_g) / (2 - Σ min(V_p, V_g)): the code's shortcut for Σ max in the
  denominator, exact because every V row sums to 1 (min + max = sum of both). A row whose R* is
  empty (possible only with ties at distance 0) stays zero and gets d_J = 1, as in the code.
* d* = (1 - λ) d_J + λ d with the squared, normalised d above, restricted to query rows and
  gallery columns: λ = 1 returns d[:num_query, num_query:], not ``q_g_dist``.
* Ties in d are broken by the reference's own ``np.argsort`` (default kind), so the neighbour lists
  are identical to its ``initial_rank`` also for duplicated samples.
* Precision: d, V and the result are float32. Some copies of the reference store V as float16
  (which loses about three digits of the weights); later copies (H. Huang's, Z. Zheng's) use
  float32, as here. Sums are accumulated in float64, so results agree with the loop code to about
  1e-6 rather than bit for bit.
* Departure: a sample at distance 0 from every sample makes its column maximum 0; the reference
  then divides 0 by 0 and returns NaNs, this raises ``ValueError``.

Vectorisation (numpy; Python loops run only over blocks of rows):

1. d is never materialised. Blocks of its rows are built from the inputs, and only each row's first
   max(k1 + 1, k2) argsort entries are kept, an (N, K) index array. ``np.partition`` finds them in
   linear time per row; a row whose leading values contain a tie — where the order among equal
   values depends on the sort algorithm — is re-sorted with the full ``np.argsort``, so the kept
   entries equal the reference's ``initial_rank[:, :K]`` exactly.
2. "x ∈ N(p, k)" is a binary search for the key p·N + x among the sorted keys of all neighbour
   lists; x ∈ R(p, k) iff x ∈ N(p, k) and p ∈ N(x, k). The expansion test is evaluated for every
   (p, c ∈ R(p, k1)) pair at once on a (rows, k1 + 1, k1/2 + 1) array of R(c, k1/2) members.
3. V is sparse, at most (k1 + 1)(k1/2 + 2) entries per row, kept as (row, column, value) triplets
   sorted by row; query expansion gathers k2 rows per sample and sums duplicates with
   ``np.unique`` / ``np.bincount``.
4. Σ min(V_p, V_g) is the reference's inverted-index loop flattened: every nonzero (p, k) of a query
   row is joined with every nonzero (g, k) of column k over gallery rows g, and the minima are
   summed into (p, g) with ``np.bincount``.

Beyond the inputs and the (num_query, num_gallery) output, memory is O(chunk·N) plus the sparse V,
at most k2·(k1 + 1)(k1/2 + 2) entries per row and far fewer in practice; the reference holds
several dense (N, N) matrices (Market-1501: N = 19,281, 1.5 GB each in float32). On a
Market-sized random problem (3,368 × 15,913, float32 inputs) a call took ~16 s on a 2-core CPU,
its peak memory ~0.2 GB above the inputs, output included.
"""

import numbers

import numpy as np

__all__ = ['k_reciprocal_rerank']

_NAME = 'k_reciprocal_rerank'


def k_reciprocal_rerank(
  q_g_dist,
  q_q_dist,
  g_g_dist,
  *,
  k1: int = 20,
  k2: int = 6,
  lambda_value: float = 0.3,
  chunk: int = 256,
) -> np.ndarray:
  """Re-ranked (num_query, num_gallery) float32 distances d* (conventions: module docstring).

  Args:
    q_g_dist: (Q, G) query-gallery distances.
    q_q_dist: (Q, Q) query-query distances.
    g_g_dist: (G, G) gallery-gallery distances.
    k1: size of the k-reciprocal neighbourhoods R(p, k1); the expansion uses R(c, k1/2).
    k2: size of the local query expansion; 1 turns it off.
    lambda_value: weight λ of the original distance in d* = (1 - λ) d_J + λ d.
    chunk: rows per block; temporaries hold about chunk × (Q + G) elements. Only memory and speed
      depend on it, not the result (up to float32 summation order).

  Returns:
    (Q, G) float32 array; smaller is a better match.

  Raises:
    ValueError: on inconsistent shapes, empty or non-real inputs, NaN/inf distances, k1, k2 or
      chunk not a positive int, λ outside [0, 1], or a sample at distance 0 from every sample.
  """
  q_g, q_q, g_g = _check_distances(q_g_dist, q_q_dist, g_g_dist)
  k1 = _check_positive_int(k1, 'k1')
  k2 = _check_positive_int(k2, 'k2')
  chunk = _check_positive_int(chunk, 'chunk')
  lambda_value = _check_lambda(lambda_value)
  dist = _OriginalDistance(q_g, q_q, g_g)
  n = dist.n

  k_full = min(k1 + 1, n)
  k_half = min(int(np.around(k1 / 2.0)) + 1, n)
  k_qe = min(k2, n)
  ranks = dist.leading_argsort(max(k_full, k_qe), chunk)
  v_rows, v_cols, v_vals = _k_reciprocal_features(dist, ranks[:, :k_full], ranks[:, :k_half], chunk)
  if k2 != 1:
    v_rows, v_cols, v_vals = _query_expansion(v_rows, v_cols, v_vals, ranks[:, :k_qe], n, chunk)
  del ranks
  return _final_distance(dist, v_rows, v_cols, v_vals, lambda_value, chunk)


class _OriginalDistance:
  """The reference's ``original_dist`` d, computed on demand from the three input blocks."""

  def __init__(self, q_g, q_q, g_g):
    self.q_g, self.q_q, self.g_g = q_g, q_q, g_g
    self.num_q, self.num_g = q_g.shape
    self.n = self.num_q + self.num_g
    # The reference squares the concatenated matrix, i.e. in the inputs' common dtype.
    self.dtype = np.result_type(q_g, q_q, g_g)
    self.row_max = np.empty(self.n, np.float32)  # filled by leading_argsort

  def _squared(self, x):
    return np.power(x.astype(self.dtype, copy=False), 2).astype(np.float32)

  def row_blocks(self, chunk: int):
    """(start, stop) blocks of ≤ chunk rows that do not straddle the query/gallery boundary."""
    for lo, hi in ((0, self.num_q), (self.num_q, self.n)):
      for start in range(lo, hi, chunk):
        yield start, min(start + chunk, hi)

  def squared_columns(self, start: int, stop: int) -> np.ndarray:
    """(stop - start, N) float32: columns start:stop of D², i.e. rows of (D²)ᵀ before scaling."""
    q = self.num_q
    out = np.empty((stop - start, self.n), np.float32)
    if stop <= q:
      out[:, :q] = self._squared(self.q_q[:, start:stop].T)
      out[:, q:] = self._squared(self.q_g[start:stop])
    else:
      out[:, :q] = self._squared(self.q_g[:, start - q : stop - q].T)
      out[:, q:] = self._squared(self.g_g[:, start - q : stop - q].T)
    return out

  def leading_argsort(self, width: int, chunk: int) -> np.ndarray:
    """(N, width) first entries of every row of ``np.argsort(d)``; also fills ``row_max``."""
    ranks = np.empty((self.n, width), np.intp)
    for start, stop in self.row_blocks(chunk):
      squared = self.squared_columns(start, stop)
      top = squared.max(axis=1)
      if not np.all(np.isfinite(top)):
        raise ValueError(
          f'{_NAME}: squared distances overflow float32 (inputs up to ~1.8e19 are supported); '
          'rescale the distances.'
        )
      if not np.all(top > 0):
        i = start + int(np.argmin(top > 0))
        where = f'query {i}' if i < self.num_q else f'gallery item {i - self.num_q}'
        raise ValueError(
          f'{_NAME}: {where} is at distance 0 from every sample, so normalising its column by its '
          'maximum divides by zero (the reference code returns NaN); check for collapsed features.'
        )
      self.row_max[start:stop] = top
      # Same float32 division as the reference's `1. * original_dist / np.max(..., axis=0)`.
      ranks[start:stop] = _leading_argsort(squared / top[:, None], width)
    return ranks

  def gather(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """float32 d[rows, cols] = D[cols, rows]² / row_max[rows], elementwise."""
    q = self.num_q
    raw = np.empty(rows.shape, self.dtype)
    row_q, col_q = rows < q, cols < q
    for mask, block, r, c in (
      (row_q & col_q, self.q_q, cols, rows),
      (~row_q & col_q, self.q_g, cols, rows - q),  # a query column of a gallery row
      (row_q & ~col_q, self.q_g, rows, cols - q),  # D[j, p] = q_gᵀ[j - q, p]
      (~row_q & ~col_q, self.g_g, cols - q, rows - q),
    ):
      raw[mask] = block[r[mask], c[mask]]
    return self._squared(raw) / self.row_max[rows]

  def query_gallery(self, start: int, stop: int) -> np.ndarray:
    """float32 d[start:stop, num_q:] for query rows: q_g² over each query's column maximum."""
    return self._squared(self.q_g[start:stop]) / self.row_max[start:stop, None]


def _leading_argsort(dist: np.ndarray, width: int) -> np.ndarray:
  """``np.argsort(dist, axis=1)[:, :width]`` without sorting whole rows where that is exact."""
  n = dist.shape[1]
  if width >= n:
    return np.argsort(dist, axis=1)[:, :width]
  lead = np.sort(np.partition(dist, width, axis=1)[:, : width + 1], axis=1)
  # With width + 1 distinct smallest values the first `width` indices are unique: any sort
  # agrees. A tie among them is left to the reference's argsort, whose order for ties we copy.
  distinct = np.all(lead[:, 1:] > lead[:, :-1], axis=1)
  out = np.empty((len(dist), width), np.intp)
  if not distinct.all():
    out[~distinct] = np.argsort(dist[~distinct], axis=1)[:, :width]
  if distinct.any():
    inside = dist <= lead[:, width - 1 : width]
    inside[~distinct] = False
    rows, cols = np.nonzero(inside)  # exactly `width` per distinct row, in row order
    cols = cols.reshape(-1, width)
    order = np.argsort(dist[rows, cols.ravel()].reshape(-1, width), axis=1)
    out[distinct] = np.take_along_axis(cols, order, axis=1)
  return out


def _contains(sorted_keys: np.ndarray, n: int, owner: np.ndarray, member: np.ndarray):
  """Elementwise: is ``member`` in the neighbour list of ``owner``? (keys owner·n + member)."""
  probe = owner.astype(np.int64) * n + member
  pos = np.minimum(np.searchsorted(sorted_keys, probe), len(sorted_keys) - 1)
  return sorted_keys[pos] == probe


def _list_keys(neighbours: np.ndarray, n: int) -> np.ndarray:
  rows = np.arange(len(neighbours), dtype=np.int64)[:, None]
  return (rows * n + np.sort(neighbours, axis=1)).ravel()  # sorted: rows ascend, then members


def _k_reciprocal_features(dist: _OriginalDistance, full, half, chunk: int):
  """Sparse V: (rows, cols, values) sorted by (row, col), from N(·, k1) and N(·, k1/2)."""
  n = dist.n
  keys_full, keys_half = _list_keys(full, n), _list_keys(half, n)
  k_full, k_half = full.shape[1], half.shape[1]

  # R(c, k1/2) as a mask over N(c, k1/2), for every c: needed for any row's candidates.
  half_recip = np.empty(half.shape, bool)
  step = max(1, chunk * n // k_half)
  for start in range(0, n, step):
    owners = np.arange(start, min(start + step, n))[:, None]
    half_recip[start : start + step] = _contains(keys_half, n, half[start : start + step], owners)
  half_size = half_recip.sum(axis=1)

  keys = []
  step = max(1, chunk * n // (k_full * k_half))
  for start in range(0, n, step):
    stop = min(start + step, n)
    p = np.arange(start, stop)[:, None]
    cand = full[start:stop]  # (B, K) candidates c ∈ N(p, k1)
    recip = _contains(keys_full, n, cand, p)  # c ∈ R(p, k1)
    members = half[cand]  # (B, K, Kh) x ∈ N(c, k1/2)
    p3 = p[:, :, None]
    in_both = (
      half_recip[cand]  # x ∈ R(c, k1/2)
      & _contains(keys_full, n, p3, members)  # x ∈ N(p, k1)
      & _contains(keys_full, n, members, p3)  # p ∈ N(x, k1), so x ∈ R(p, k1)
    )
    size = half_size[cand]
    # Same float comparison as the reference's `len(...) > 2./3*len(...)`.
    grow = recip & (in_both.sum(axis=2) > 2.0 / 3.0 * size)
    added = grow[:, :, None] & half_recip[cand]
    keys.append(
      np.unique(np.concatenate([(p * n + cand)[recip], (p3 * n + members)[added].ravel()]))
    )
  keys = np.concatenate(keys)  # blocks ascend, so globally sorted by (row, col)
  rows, cols = np.divmod(keys, n)
  weights = np.exp(-dist.gather(rows, cols))  # float32, like the reference
  total = np.bincount(rows, weights=weights, minlength=n).astype(np.float32)
  return rows, cols, weights / total[rows]


def _cost_blocks(cost: np.ndarray, budget: int):
  """Contiguous (start, stop) blocks costing ≤ budget in all, or one item that alone costs more."""
  cum = np.cumsum(cost)
  start = 0
  while start < len(cost):
    before = cum[start - 1] if start else 0
    stop = max(int(np.searchsorted(cum, before + budget, side='right')), start + 1)
    yield start, stop
    start = stop


def _ragged_take(indptr: np.ndarray, segments: np.ndarray):
  """Positions of all entries of the given CSR segments, concatenated, and each segment's length."""
  length = indptr[segments + 1] - indptr[segments]
  offset = np.repeat(indptr[segments] - (np.cumsum(length) - length), length)
  return offset + np.arange(offset.size), length


def _query_expansion(rows, cols, vals, nearest, n: int, chunk: int):
  """V_p ← mean of V over p's first k2 argsort entries, for every p (sparse, sorted by row)."""
  k2 = nearest.shape[1]
  indptr = np.searchsorted(rows, np.arange(n + 1))
  per_sample = (indptr[nearest + 1] - indptr[nearest]).sum(axis=1)
  out_keys, out_vals = [], []
  for start, stop in _cost_blocks(per_sample, chunk * n):
    src = nearest[start:stop].ravel()
    pos, length = _ragged_take(indptr, src)
    owner = np.repeat(np.repeat(np.arange(start, stop, dtype=np.int64), k2), length)
    keys, inverse = np.unique(owner * n + cols[pos], return_inverse=True)
    out_keys.append(keys)
    out_vals.append((np.bincount(inverse, weights=vals[pos]) / k2).astype(np.float32))
  rows, cols = np.divmod(np.concatenate(out_keys), n)
  return rows, cols, np.concatenate(out_vals)


def _final_distance(dist: _OriginalDistance, rows, cols, vals, lambda_value: float, chunk: int):
  """(1 - λ) d_J + λ d over query rows × gallery columns, Σ min(V_p, V_g) via an inverted index."""
  num_q, num_g, n = dist.num_q, dist.num_g, dist.n
  # Inverted index over gallery rows: for each column k, the gallery rows g with V_g[k] ≠ 0.
  gallery = rows >= num_q
  by_col = np.argsort(cols[gallery], kind='stable')
  g_rows = rows[gallery][by_col] - num_q
  g_vals = vals[gallery][by_col]
  col_ptr = np.searchsorted(cols[gallery][by_col], np.arange(n + 1))
  # Query rows come first in the row-sorted triplets.
  num_entries = int(np.searchsorted(rows, num_q))
  q_rows, q_cols, q_vals = rows[:num_entries], cols[:num_entries], vals[:num_entries]
  q_ptr = np.searchsorted(q_rows, np.arange(num_q + 1))
  pairs = col_ptr[q_cols + 1] - col_ptr[q_cols]  # pairs each query entry joins into

  out = np.empty((num_q, num_g), np.float32)
  for start, stop in dist.row_blocks(chunk):
    if start >= num_q:
      break
    overlap = np.zeros((stop - start) * num_g)
    lo, hi = q_ptr[start], q_ptr[stop]
    for a, b in _cost_blocks(pairs[lo:hi], chunk * n):
      entry = np.arange(lo + a, lo + b)
      pos, length = _ragged_take(col_ptr, q_cols[entry])
      smaller = np.minimum(np.repeat(q_vals[entry], length), g_vals[pos])
      target = np.repeat(q_rows[entry] - start, length) * num_g + g_rows[pos]
      overlap += np.bincount(target, weights=smaller, minlength=overlap.size)
    overlap = overlap.reshape(stop - start, num_g).astype(np.float32)
    # Same float32 expressions as the reference, so λ = 1 returns d exactly.
    jaccard = 1 - overlap / (2.0 - overlap)
    out[start:stop] = jaccard * (1 - lambda_value) + dist.query_gallery(start, stop) * lambda_value
  return out


def _check_positive_int(value, name: str) -> int:
  if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral) or value < 1:
    raise ValueError(f'{_NAME}: {name} must be a positive int, got {value!r}.')
  return int(value)


def _check_lambda(value) -> float:
  if (
    isinstance(value, (bool, np.bool_))
    or not isinstance(value, numbers.Real)
    or not 0.0 <= float(value) <= 1.0  # False for NaN
  ):
    raise ValueError(f'{_NAME}: lambda_value must be a real number in [0, 1], got {value!r}.')
  # A Python float keeps the float32 arithmetic float32 (NumPy treats it as a weak scalar).
  return float(value)


def _check_distances(q_g_dist, q_q_dist, g_g_dist):
  arrays = {}
  for name, value in (('q_g_dist', q_g_dist), ('q_q_dist', q_q_dist), ('g_g_dist', g_g_dist)):
    arr = np.asarray(value)
    if arr.ndim != 2 or 0 in arr.shape:
      raise ValueError(f'{_NAME}: {name} must be a non-empty 2-D array, got shape {arr.shape}.')
    if arr.dtype == bool or not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
      raise ValueError(f'{_NAME}: {name} must hold real distances, got dtype {arr.dtype}.')
    arrays[name] = arr
  q_g, q_q, g_g = arrays.values()
  num_q, num_g = q_g.shape
  if q_q.shape != (num_q, num_q):
    raise ValueError(
      f'{_NAME}: q_q_dist must be ({num_q}, {num_q}) to match q_g_dist {q_g.shape} (queries × '
      f'gallery), got {q_q.shape}.'
    )
  if g_g.shape != (num_g, num_g):
    raise ValueError(
      f'{_NAME}: g_g_dist must be ({num_g}, {num_g}) to match q_g_dist {q_g.shape} (queries × '
      f'gallery), got {g_g.shape}.'
    )
  for name, arr in arrays.items():
    if np.issubdtype(arr.dtype, np.floating):
      step = max(1, (1 << 22) // arr.shape[1])  # bounded temporaries for the (G, G) matrix
      for start in range(0, len(arr), step):
        if not np.isfinite(arr[start : start + step]).all():
          raise ValueError(f'{_NAME}: {name} contains NaN or inf; distances must be finite.')
  return q_g, q_q, g_g
