"""Fine-grained sketch-based image retrieval (FG-SBIR) metrics: acc@K and mAP of the paired photo.

The QMUL-ShoeV2/ChairV2 protocol: every test sketch queries every test photo, and each photo is its
own identity, so a query has exactly one true match. With ``d`` the (Q, G) distances, ``q_id`` and
``g_id`` the identities, the 0-based rank of query q's paired photo is

    r_q = #{ g : g_id[g] ≠ q_id[q]  and  d[q, g] < min_{g' : g_id[g'] = q_id[q]} d[q, g'] },

the number of photos of another identity *strictly* closer than the closest photo of the query's
own identity, and

    acc@K = (1/Q) Σ_q [r_q < K],        mAP = (1/Q) Σ_q AP_q,   AP_q = 1 / (r_q + 1) (one match).

Interpretations chosen:

* **Ties count in the query's favour.** A photo at exactly the paired photo's distance does not
  push it down, so results do not depend on gallery order. (Scripts that count ``d ≤ d_paired``
  count such ties against the query; the two agree whenever there is no exact tie.)
* **Several photos of the query's identity** (not the QMUL case, but allowed): acc@K uses the
  closest of them, as above; AP is the usual non-interpolated average precision under the same
  optimistic tie rule, every match placed before the non-matches at its distance:
  AP_q = (1/m) Σ_{j=1..m} j / (n_j + j), with the m matches in distance order and n_j the number
  of non-matches strictly closer than match j. With m = 1 this is 1 / (r_q + 1).
* **Every query must have a match.** A query whose identity has no gallery photo is an error, not
  a skipped query: in this protocol it means a broken pairing between sketches and photos.
* **Distances must be finite**; NaN cannot be ranked and ±inf only hides a broken embedding.
* **Chance** (:func:`sbir_chance_levels`) is the expectation under a uniformly random ranking of
  the G gallery items: with one match, acc@K = min(K, G) / G and E[AP] = E[1/rank] =
  (1/G) Σ_{r=1..G} 1/r = H_G / G.

Vectorised with numpy: the work is a few boolean (block × G) passes over the matrix, in blocks of
queries that bound the temporaries, never a Python loop over single queries.
"""

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
  'METRICS',
  'SBIRResult',
  'sbir_accuracy',
  'sbir_chance_levels',
  'sbir_map',
  'sbir_ranks',
]

DEFAULT_KS: tuple[int, ...] = (1, 5, 10)
# The keys of SBIRResult.to_dict() with the default ks: the report columns and the names
# config.eval.best_metric accepts for this protocol.
METRICS: tuple[str, ...] = ('acc@1', 'acc@5', 'acc@10', 'mAP')
_MAX_LISTED = 5
# Elements of one boolean (block × G) temporary: ~16 MB per pass, whatever the matrix size.
_BLOCK_ELEMENTS = 1 << 24


def _check_ids(query_ids, gallery_ids, fn: str, shape=None) -> tuple[np.ndarray, np.ndarray]:
  """The ids as arrays: 1-D (one per distmat row/column if ``shape``), every query id in the
  gallery."""
  query_ids, gallery_ids = np.asarray(query_ids), np.asarray(gallery_ids)
  for name, ids, axis, n in (
    ('query_ids', query_ids, 'row', None if shape is None else shape[0]),
    ('gallery_ids', gallery_ids, 'column', None if shape is None else shape[1]),
  ):
    if ids.ndim != 1 or ids.size == 0 or (n is not None and ids.size != n):
      want = f'one id per distmat {axis} ({n})' if n is not None else 'non-empty'
      raise ValueError(f'{fn}: {name} must be 1-D, {want}, got shape {ids.shape}.')
  missing = ~np.isin(query_ids, gallery_ids)
  if missing.any():
    ids = np.unique(query_ids[missing])
    listed = ', '.join(str(i) for i in ids[:_MAX_LISTED]) + (
      ', ...' if ids.size > _MAX_LISTED else ''
    )
    raise ValueError(
      f'{fn}: {int(missing.sum())} of {query_ids.size} queries (ids {listed}) have no gallery item '
      'of their id; every sketch needs its paired photo in the gallery.'
    )
  return query_ids, gallery_ids


def _check(distmat, query_ids, gallery_ids, fn: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  distmat = np.asarray(distmat)
  if distmat.ndim != 2 or 0 in distmat.shape:
    raise ValueError(
      f'{fn}: distmat must be a non-empty 2-D (num_query, num_gallery) array, got shape '
      f'{distmat.shape}.'
    )
  if not np.issubdtype(distmat.dtype, np.number) or np.iscomplexobj(distmat):
    raise ValueError(f'{fn}: distmat must be real-valued, got dtype {distmat.dtype}.')
  query_ids, gallery_ids = _check_ids(query_ids, gallery_ids, fn, distmat.shape)
  # min/max propagate NaN and ±inf without a (Q, G) temporary; only a bad matrix pays for argwhere.
  if not (np.isfinite(distmat.min()) and np.isfinite(distmat.max())):
    bad = np.argwhere(~np.isfinite(distmat))
    raise ValueError(
      f'{fn}: distmat holds {len(bad)} non-finite value(s) (first at query {bad[0, 0]}, gallery '
      f'{bad[0, 1]}: {distmat[bad[0, 0], bad[0, 1]]}); check the embeddings for NaN/inf.'
    )
  return distmat, query_ids, gallery_ids


def _check_ks(ks: Sequence[int], fn: str) -> tuple[int, ...]:
  ks = (ks,) if np.ndim(ks) == 0 else tuple(ks)
  bad = [k for k in ks if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k <= 0]
  if not ks or bad:
    raise ValueError(f'{fn}: ks must be a non-empty sequence of positive ints, got {ks!r}.')
  return tuple(int(k) for k in ks)


def _ranks_and_ap(distmat, query_ids, gallery_ids) -> tuple[np.ndarray, np.ndarray]:
  """(r_q, AP_q) for every query, from validated inputs (module docstring)."""
  num_q, num_g = distmat.shape
  ids, first_col, counts = np.unique(gallery_ids, return_index=True, return_counts=True)
  slot = np.searchsorted(ids, query_ids)
  num_matches = counts[slot]
  ranks = np.empty(num_q, np.int64)
  ap = np.empty(num_q, np.float64)
  if (num_matches == 1).all():
    # The QMUL case, one match per query: its column is known, so r_q is one comparison pass (the
    # match itself is not < its own distance).
    paired = distmat[np.arange(num_q), first_col[slot]]
    step = max(1, _BLOCK_ELEMENTS // num_g)
    for start in range(0, num_q, step):
      rows = slice(start, start + step)
      ranks[rows] = np.count_nonzero(distmat[rows] < paired[rows, None], axis=1)
    return ranks, 1.0 / (ranks + 1.0)
  # Several matches: n_j of every (query, match) pair, against that query's non-matches; blocks are
  # sized so that the (pairs × G) temporaries stay within the budget.
  step = max(1, _BLOCK_ELEMENTS // (num_g * int(num_matches.max())))
  for start in range(0, num_q, step):
    rows = slice(start, start + step)
    d = distmat[rows]
    same = query_ids[rows, None] == gallery_ids[None, :]
    q, g = np.nonzero(same)  # grouped by query
    n = np.count_nonzero((d[q] < d[q, g][:, None]) & ~same[q], axis=1)
    order = np.lexsort((n, q))
    q, n = q[order], n[order]
    first = np.searchsorted(q, q, side='left')
    j = np.arange(q.size) - first + 1  # 1-based position among the query's matches
    ranks[rows] = n[np.searchsorted(q, np.arange(d.shape[0]))]  # the closest match's n
    ap[rows] = np.bincount(q, weights=j / (n + j), minlength=d.shape[0]) / num_matches[rows]
  return ranks, ap


def sbir_ranks(distmat, query_ids, gallery_ids) -> np.ndarray:
  """(Q,) 0-based rank r_q of each query's closest same-id gallery item, ties in its favour."""
  distmat, query_ids, gallery_ids = _check(distmat, query_ids, gallery_ids, 'sbir_ranks')
  return _ranks_and_ap(distmat, query_ids, gallery_ids)[0]


def sbir_accuracy(distmat, query_ids, gallery_ids, ks=DEFAULT_KS) -> dict:
  """``{'acc@K': fraction of queries with r_q < K}`` for K in ``ks`` (module docstring).

  Args:
    distmat: (Q, G) finite distances, smaller = closer.
    query_ids: (Q,) identities of the queries (sketches).
    gallery_ids: (G,) identities of the gallery items (photos); every query id must occur.
    ks: positive cut-offs; K ≥ G gives 1.

  Raises:
    ValueError: bad shapes, non-finite distances, a query id absent from the gallery, K ≤ 0.
  """
  ks = _check_ks(ks, 'sbir_accuracy')
  ranks = _ranks_and_ap(*_check(distmat, query_ids, gallery_ids, 'sbir_accuracy'))[0]
  return {f'acc@{k}': float(np.mean(ranks < k)) for k in ks}


def sbir_map(distmat, query_ids, gallery_ids) -> float:
  """Mean over queries of AP_q (= 1 / (r_q + 1) with one match; module docstring), in [0, 1]."""
  distmat, query_ids, gallery_ids = _check(distmat, query_ids, gallery_ids, 'sbir_map')
  return float(_ranks_and_ap(distmat, query_ids, gallery_ids)[1].mean())


@dataclasses.dataclass(frozen=True)
class SBIRResult:
  """Outcome of the 'sbir' protocol; every metric is a fraction in [0, 1], as in ``RankResult``.

  ``ranks`` holds r_q per query, so acc@K is available for any K; ``cmc`` is acc@k for
  k = 1..max_rank, the curve the report draws (acc@K under this protocol's tie rule).
  """

  ranks: np.ndarray  # (Q,) 0-based rank of each query's paired photo
  mAP: float
  max_rank: int = 50
  ks: tuple[int, ...] = DEFAULT_KS

  @classmethod
  def compute(cls, distmat, query_ids, gallery_ids, *, max_rank: int = 50, ks=DEFAULT_KS):
    """The result of one query × gallery distance matrix (checks as :func:`sbir_accuracy`)."""
    ks = _check_ks(ks, 'SBIRResult')
    if isinstance(max_rank, bool) or not isinstance(max_rank, (int, np.integer)) or max_rank < 1:
      raise ValueError(f'SBIRResult: max_rank must be a positive int, got {max_rank!r}.')
    distmat, query_ids, gallery_ids = _check(distmat, query_ids, gallery_ids, 'SBIRResult')
    ranks, ap = _ranks_and_ap(distmat, query_ids, gallery_ids)
    return cls(ranks=ranks, mAP=float(ap.mean()), max_rank=int(max_rank), ks=ks)

  @property
  def num_valid_queries(self) -> int:
    return int(self.ranks.size)  # every query has a match, or compute() refused

  def acc(self, k: int) -> float:
    """acc@k: the fraction of queries whose paired photo is among the k closest."""
    _check_ks((k,), 'SBIRResult.acc')
    return float(np.mean(self.ranks < k))

  @property
  def cmc(self) -> np.ndarray:
    return (self.ranks[:, None] < np.arange(1, self.max_rank + 1)[None, :]).mean(axis=0)

  def to_dict(self, ks: Sequence[int] | None = None) -> dict[str, float | int]:
    """``{'acc@K' for K in ks, 'mAP', 'num_valid_queries'}``."""
    out: dict[str, float | int] = {f'acc@{k}': self.acc(k) for k in (ks or self.ks)}
    out['mAP'] = float(self.mAP)
    out['num_valid_queries'] = self.num_valid_queries
    return out


def sbir_chance_levels(
  query_ids, gallery_ids, ks: Sequence[int] = DEFAULT_KS, *, max_rank: int = 50
) -> dict[str, Any]:
  """Exact expected metrics of a uniformly random ranking of the gallery: ``{'acc@K', 'mAP',
  'num_valid_queries', 'cmc'}`` (``cmc``: expected acc@k for k = 1..max_rank, for the plot).

  With one match per query (the QMUL protocol) the match's rank is uniform on 1..G, so
  acc@K = min(K, G) / G and E[AP] = E[1/rank] = (1/G) Σ_{r=1..G} 1/r = H_G / G, computed in
  closed form. With m matches a random ranking has no ties, so the levels are those of
  ``report.chance_levels``: acc@K = 1 − C(G−m, K) / C(G, K), E[AP] = (m−1)/(G−1) + (G−m)/(G−1) ·
  H_G / G, averaged over the queries.
  """
  ks = _check_ks(ks, 'sbir_chance_levels')
  if isinstance(max_rank, bool) or not isinstance(max_rank, (int, np.integer)) or max_rank < 1:
    raise ValueError(f'sbir_chance_levels: max_rank must be a positive int, got {max_rank!r}.')
  query_ids, gallery_ids = _check_ids(query_ids, gallery_ids, 'sbir_chance_levels')
  num_g = gallery_ids.size
  if np.unique(gallery_ids).size == num_g:
    cutoffs = np.arange(1, max_rank + 1)
    out: dict[str, Any] = {f'acc@{k}': float(min(k, num_g) / num_g) for k in ks}
    out['mAP'] = math.fsum(1.0 / np.arange(1, num_g + 1)) / num_g
    out['num_valid_queries'] = int(query_ids.size)
    out['cmc'] = np.minimum(cutoffs, num_g) / num_g
    return out
  from sketchreid_jax.evaluation.report import chance_levels  # report imports this module

  levels = chance_levels(query_ids, gallery_ids, ranks=ks, max_rank=max_rank)
  out = {f'acc@{k}': levels[f'R-{k}'] for k in ks}
  out.update(mAP=levels['mAP'], num_valid_queries=levels['num_valid_queries'], cmc=levels['cmc'])
  return out
