"""k_reciprocal_rerank against the reference algorithm written as loops, plus properties."""

import time

import numpy as np
import pytest
from scipy.spatial.distance import cdist

from sketchreid_jax.evaluation import k_reciprocal_rerank

NUM_Q, NUM_G, DIM = 7, 23, 16


def loop_rerank(q_g, q_q, g_g, k1=20, k2=6, lambda_value=0.3):
  """Zhong et al.'s re-ranking one sample at a time, in the loop structure of their numpy code.

  Original distance: the concatenated matrix squared, columns over their maxima, transposed.
  Neighbour lists: rows of its argsort. V in float32. Jaccard through an inverted index.
  """
  num_q = q_g.shape[0]
  d = np.concatenate([np.concatenate([q_q, q_g], axis=1), np.concatenate([q_g.T, g_g], axis=1)])
  d = np.power(d, 2).astype(np.float32)
  d = np.transpose(1.0 * d / np.max(d, axis=0))
  n = len(d)
  rank = np.argsort(d)

  def reciprocal(p, k):  # R(p, k): forward neighbours that have p among their own k + 1
    return [int(x) for x in rank[p, : k + 1] if p in rank[x, : k + 1]]

  half = int(np.around(k1 / 2.0))
  v = np.zeros((n, n), np.float32)
  for p in range(n):
    r = reciprocal(p, k1)
    expanded = set(r)
    for c in r:
      rc = reciprocal(c, half)
      if len(set(rc) & set(r)) > 2.0 / 3.0 * len(rc):
        expanded |= set(rc)
    idx = np.array(sorted(expanded), dtype=np.int64)
    weight = np.exp(-d[p, idx])
    v[p, idx] = weight / np.sum(weight)
  if k2 != 1:
    v = np.stack([np.mean(v[rank[p, :k2]], axis=0) for p in range(n)])
  inverted = [np.nonzero(v[:, k])[0] for k in range(n)]
  jaccard = np.zeros((num_q, n), np.float32)
  for p in range(num_q):
    overlap = np.zeros(n, np.float32)
    for k in np.nonzero(v[p])[0]:
      overlap[inverted[k]] += np.minimum(v[p, k], v[inverted[k], k])
    jaccard[p] = 1 - overlap / (2.0 - overlap)
  final = jaccard * (1 - lambda_value) + d[:num_q] * lambda_value
  return final[:, num_q:]


def split(x, num_q):
  """q_g, q_q, g_g blocks of a full (N, N) matrix."""
  return x[:num_q, num_q:], x[:num_q, :num_q], x[num_q:, num_q:]


def euclidean(seed, num_q=NUM_Q, num_g=NUM_G, dim=DIM):
  feats = np.random.default_rng(seed).normal(size=(num_q + num_g, dim))
  return split(cdist(feats, feats), num_q)


PARAMS = [
  {},  # k1=20, k2=6, λ=0.3 (the paper's)
  {'k1': 3, 'k2': 1},  # no query expansion
  {'k1': 5, 'k2': 3, 'lambda_value': 0.0},  # pure Jaccard; round(5/2) = 2 (half to even)
  {'k1': 40, 'k2': 6},  # k1 + 1 > N: every sample is a neighbour
  {'k1': 1, 'k2': 2, 'lambda_value': 1.0},
  {'k1': 8, 'k2': 45, 'lambda_value': 0.5},  # k2 > N
  {'k1': 10, 'k2': 4, 'chunk': 1},  # one-row blocks, one-entry pair slices
  {'k1': 12, 'k2': 6, 'chunk': 5},  # uneven blocks: queries 5 + 2 rows, gallery 4 × 5 + 3
]


@pytest.mark.parametrize('seed', [0, 1, 2])
@pytest.mark.parametrize('params', PARAMS, ids=lambda p: ','.join(f'{k}={v}' for k, v in p.items()))
def test_matches_loop_reference(seed, params):
  dists = euclidean(seed)
  ref_params = {k: v for k, v in params.items() if k != 'chunk'}
  got = k_reciprocal_rerank(*dists, **params)
  assert got.shape == (NUM_Q, NUM_G) and got.dtype == np.float32
  np.testing.assert_allclose(got, loop_rerank(*dists, **ref_params), atol=1e-5, rtol=0)


@pytest.mark.parametrize('k2', [1, 6])
def test_matches_loop_reference_with_ties(k2):
  # Duplicated samples (distance 0 ties, also with the sample itself) and coarsely rounded
  # distances: the neighbour lists then depend on how argsort orders equal values.
  rng = np.random.default_rng(3)
  feats = rng.normal(size=(NUM_Q + NUM_G, 4))
  feats[NUM_Q + 1] = feats[NUM_Q]
  feats[NUM_Q + 2] = feats[NUM_Q]
  feats[0] = feats[NUM_Q + 5]
  full = np.round(cdist(feats, feats), 1)
  for k1 in (2, 6, 20):
    got = k_reciprocal_rerank(*split(full, NUM_Q), k1=k1, k2=k2)
    np.testing.assert_allclose(got, loop_rerank(*split(full, NUM_Q), k1=k1, k2=k2), atol=1e-5)


def test_matches_loop_reference_asymmetric_float32():
  # Non-symmetric blocks pin down which axis is normalised and transposed.
  rng = np.random.default_rng(4)
  full = rng.uniform(0.1, 3.0, size=(NUM_Q + NUM_G,) * 2).astype(np.float32)
  np.fill_diagonal(full, 0.0)
  got = k_reciprocal_rerank(*split(full, NUM_Q), k1=6, k2=3)
  np.testing.assert_allclose(got, loop_rerank(*split(full, NUM_Q), k1=6, k2=3), atol=1e-5)


def test_lambda_one_is_squared_column_normalised_distance():
  q_g, q_q, g_g = euclidean(5)
  got = k_reciprocal_rerank(q_g, q_q, g_g, lambda_value=1.0)
  # Query i's column of the concatenated matrix is [q_q[:, i]; q_g[i, :]].
  column_max = np.maximum((q_q**2).max(axis=0), (q_g**2).max(axis=1)).astype(np.float32)
  np.testing.assert_array_equal(got, (q_g**2).astype(np.float32) / column_max[:, None])
  assert not np.allclose(got, q_g)


def test_chunk_does_not_change_the_result():
  dists = euclidean(6, num_q=11, num_g=40)
  want = k_reciprocal_rerank(*dists, k1=9, k2=4)
  for chunk in (1, 2, 7, 10_000):
    np.testing.assert_allclose(
      k_reciprocal_rerank(*dists, k1=9, k2=4, chunk=chunk), want, atol=1e-6
    )


@pytest.mark.parametrize('lambda_value', [0.0, 0.3])
def test_two_clusters_stay_apart(lambda_value):
  rng = np.random.default_rng(7)
  centres = np.zeros((2, DIM))
  centres[1, 0] = 20.0
  q_lab, g_lab = np.repeat([0, 1], 4), np.repeat([0, 1], 15)
  q = centres[q_lab] + rng.normal(size=(8, DIM))
  g = centres[g_lab] + rng.normal(size=(30, DIM))
  got = k_reciprocal_rerank(
    cdist(q, g), cdist(q, q), cdist(g, g), k1=6, k2=3, lambda_value=lambda_value
  )
  np.testing.assert_array_equal(g_lab[np.argmin(got, axis=1)], q_lab)
  # Other-cluster items share no k-reciprocal neighbours with the query: d_J = 1.
  other = q_lab[:, None] != g_lab[None, :]
  assert np.all(got[other] >= (1 - lambda_value) - 1e-6)


def test_moderate_size_is_fast():
  rng = np.random.default_rng(8)
  ids = rng.integers(0, 100, size=1200)
  feats = rng.normal(size=(100, 32))[ids] + 0.5 * rng.normal(size=(1200, 32))
  dists = split(cdist(feats, feats).astype(np.float32), 200)
  start = time.perf_counter()
  got = k_reciprocal_rerank(*dists)
  elapsed = time.perf_counter() - start
  assert got.shape == (200, 1000) and got.dtype == np.float32
  assert np.all(np.isfinite(got)) and got.min() >= 0 and got.max() <= 1 + 1e-6
  assert elapsed < 5.0, f'{elapsed:.1f} s for 200 × 1000: something is looping per sample'


def test_bad_inputs():
  q_g, q_q, g_g = euclidean(9)
  with pytest.raises(ValueError, match='q_q_dist must be'):
    k_reciprocal_rerank(q_g, q_q[:-1, :-1], g_g)
  with pytest.raises(ValueError, match='g_g_dist must be'):
    k_reciprocal_rerank(q_g, q_q, g_g[:, :-1])
  with pytest.raises(ValueError, match='q_g_dist must be a non-empty 2-D'):
    k_reciprocal_rerank(q_g[0], q_q, g_g)
  with pytest.raises(ValueError, match='q_g_dist must be a non-empty 2-D'):
    k_reciprocal_rerank(np.zeros((0, NUM_G)), np.zeros((0, 0)), g_g)
  with pytest.raises(ValueError, match='g_g_dist must hold real'):
    k_reciprocal_rerank(q_g, q_q, g_g.astype(complex))
  for bad in (np.nan, np.inf):
    broken = g_g.copy()
    broken[3, 4] = bad
    with pytest.raises(ValueError, match='g_g_dist contains NaN or inf'):
      k_reciprocal_rerank(q_g, q_q, broken)
  for name, value in [('k1', 0), ('k1', 2.0), ('k1', True), ('k2', 0), ('k2', -1), ('chunk', 0)]:
    with pytest.raises(ValueError, match=f'{name} must be a positive int'):
      k_reciprocal_rerank(q_g, q_q, g_g, **{name: value})
  for value in (-0.1, 1.5, float('nan'), '0.3', None):
    with pytest.raises(ValueError, match='lambda_value must be'):
      k_reciprocal_rerank(q_g, q_q, g_g, lambda_value=value)
  # A sample at distance 0 from everything: the column maximum is 0 (the reference gives NaN).
  full = np.ones((NUM_Q + NUM_G,) * 2)
  full[:, 2] = full[2, :] = 0.0
  with pytest.raises(ValueError, match='query 2 is at distance 0 from every sample'):
    k_reciprocal_rerank(*split(full, NUM_Q))
