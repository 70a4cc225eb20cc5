"""evaluate_rank / pairwise_distance against straightforward per-query loops and hand values."""

import numpy as np
import pytest
from scipy.spatial.distance import cdist

from sketchreid_jax.evaluation import RankResult, evaluate_rank, pairwise_distance


def naive_evaluate(distmat, q_pids, g_pids, q_camids=None, g_camids=None, max_rank=50):
  """Definitions applied one query at a time; ties broken by gallery index."""
  cmcs, aps, inps = [], [], []
  num_q, num_g = distmat.shape
  for i in range(num_q):
    order = sorted(range(num_g), key=lambda j: (distmat[i, j], j))
    if q_camids is not None:
      order = [j for j in order if not (g_pids[j] == q_pids[i] and g_camids[j] == q_camids[i])]
    pos_ranks = [r + 1 for r, j in enumerate(order) if g_pids[j] == q_pids[i]]
    if not pos_ranks:
      continue
    aps.append(np.mean([(n + 1) / r for n, r in enumerate(pos_ranks)]))
    inps.append(len(pos_ranks) / pos_ranks[-1])
    cmcs.append([1.0 if pos_ranks[0] <= k else 0.0 for k in range(1, max_rank + 1)])
  return np.mean(cmcs, axis=0), float(np.mean(aps)), float(np.mean(inps)), len(aps)


def assert_same(result: RankResult, expected) -> None:
  cmc, m_ap, m_inp, num_valid = expected
  assert result.cmc.shape == cmc.shape
  np.testing.assert_allclose(result.cmc, cmc, atol=1e-6)
  assert result.mAP == pytest.approx(m_ap, abs=1e-6)
  assert result.mINP == pytest.approx(m_inp, abs=1e-6)
  assert result.num_valid_queries == num_valid


def random_split(seed, num_q=30, num_g=80, num_ids=10, num_cams=3, ties=False):
  rng = np.random.default_rng(seed)
  distmat = rng.random((num_q, num_g))
  if ties:  # few distinct values: many ties, which must rank by gallery order
    distmat = np.round(distmat * 4) / 4
  return (
    distmat,
    rng.integers(0, num_ids, num_q),
    rng.integers(0, num_ids, num_g),
    rng.integers(0, num_cams, num_q),
    rng.integers(0, num_cams, num_g),
  )


@pytest.mark.parametrize('seed', [0, 1, 2])
@pytest.mark.parametrize('ties', [False, True])
def test_matches_naive_with_camera_filtering(seed, ties):
  distmat, qp, gp, qc, gc = random_split(seed, ties=ties)
  expected = naive_evaluate(distmat, qp, gp, qc, gc, max_rank=20)
  assert_same(evaluate_rank(distmat, qp, gp, qc, gc, max_rank=20), expected)


@pytest.mark.parametrize('seed', [3, 4])
def test_matches_naive_without_cameras(seed):
  distmat, qp, gp, _, _ = random_split(seed, ties=True)
  assert_same(
    evaluate_rank(distmat, qp, gp, max_rank=15), naive_evaluate(distmat, qp, gp, max_rank=15)
  )


def test_query_with_only_same_camera_matches_is_skipped():
  distmat, qp, gp, qc, gc = random_split(5)
  # Query 0 gets a fresh identity present in the gallery only under its own camera.
  qp, gp, gc = qp.copy(), gp.copy(), gc.copy()
  qp[0], qc[0] = 99, 1
  gp[[3, 7]], gc[[3, 7]] = 99, 1
  expected = naive_evaluate(distmat, qp, gp, qc, gc, max_rank=10)
  result = evaluate_rank(distmat, qp, gp, qc, gc, max_rank=10)
  assert_same(result, expected)
  without_q0 = evaluate_rank(distmat[1:], qp[1:], gp, qc[1:], gc, max_rank=10)
  assert result.num_valid_queries == without_q0.num_valid_queries
  assert result.mAP == without_q0.mAP
  # Without cameras the same query is valid.
  assert evaluate_rank(distmat[:1], qp[:1], gp).num_valid_queries == 1


def test_short_gallery_pads_cmc_with_last_value():
  distmat, qp, gp, qc, gc = random_split(6, num_q=12, num_g=7, num_ids=3, num_cams=2)
  result = evaluate_rank(distmat, qp, gp, qc, gc, max_rank=20)
  assert_same(result, naive_evaluate(distmat, qp, gp, qc, gc, max_rank=20))
  assert result.cmc.shape == (20,)
  np.testing.assert_array_equal(result.cmc[6:], np.ones(14))


def test_hand_computed_single_query():
  # Positives (pid 1) at ranks 1 and 3 of 4.
  result = evaluate_rank(np.array([[0.1, 0.2, 0.3, 0.4]]), [1], [1, 2, 1, 3], max_rank=6)
  assert result.mAP == pytest.approx((1 + 2 / 3) / 2)
  assert result.mINP == pytest.approx(2 / 3)
  np.testing.assert_array_equal(result.cmc, np.ones(6))
  # Positives at ranks 2 and 3: CMC jumps at rank 2.
  result = evaluate_rank(np.array([[0.1, 0.2, 0.3, 0.4]]), [1], [2, 1, 1, 3], max_rank=4)
  assert result.mAP == pytest.approx((1 / 2 + 2 / 3) / 2)
  assert result.mINP == pytest.approx(2 / 3)
  np.testing.assert_array_equal(result.cmc, [0, 1, 1, 1])


def test_hand_computed_camera_removal_shifts_ranks():
  # Item 0 (same pid, same camera) is removed; the positive at position 3 becomes rank 2 of 3.
  result = evaluate_rank(
    np.array([[0.1, 0.2, 0.3, 0.4]]), [1], [1, 2, 1, 3], [0], [0, 0, 1, 1], max_rank=3
  )
  assert result.mAP == pytest.approx(1 / 2)
  assert result.mINP == pytest.approx(1 / 2)
  np.testing.assert_array_equal(result.cmc, [0, 1, 1])


def test_ties_rank_by_gallery_order():
  # The negative (index 0) ties with the positive (index 1) and comes first in the gallery.
  result = evaluate_rank(np.array([[0.5, 0.5, 0.9]]), [7], [3, 7, 3], max_rank=3)
  np.testing.assert_array_equal(result.cmc, [0, 1, 1])
  assert result.mAP == pytest.approx(0.5)


def test_rank_result_helpers():
  result = evaluate_rank(np.array([[0.1, 0.2, 0.3, 0.4]]), [1], [2, 1, 1, 3], max_rank=20)
  assert result.rank(1) == 0.0 and result.rank(2) == 1.0
  d = result.to_dict()
  assert list(d) == ['mAP', 'mINP', 'R-1', 'R-5', 'R-10', 'R-20', 'num_valid_queries']
  assert d['R-1'] == 0.0 and d['R-5'] == 1.0 and d['num_valid_queries'] == 1
  with pytest.raises(ValueError, match='max_rank'):
    result.rank(21)


@pytest.mark.parametrize(
  'kwargs, match',
  [
    (dict(distmat=np.zeros((2, 3)), q_pids=[1, 2, 3], g_pids=[1, 2, 3]), 'q_pids'),
    (dict(distmat=np.zeros((2, 3)), q_pids=[1, 2], g_pids=[1, 2]), 'g_pids'),
    (dict(distmat=np.zeros(3), q_pids=[1], g_pids=[1, 2, 3]), '2-D'),
    (dict(distmat=np.zeros((1, 2)), q_pids=[1], g_pids=[1, 2], q_camids=[0]), 'both'),
    (dict(distmat=np.array([[np.nan, 0.0]]), q_pids=[1], g_pids=[1, 2]), 'NaN'),
    (dict(distmat=np.zeros((2, 2)), q_pids=[1, 2], g_pids=[3, 4]), 'none of the 2 queries'),
    (dict(distmat=np.zeros((1, 2)), q_pids=[1], g_pids=[1, 2], max_rank=0), 'max_rank'),
  ],
)
def test_bad_input_raises_clear_error(kwargs, match):
  with pytest.raises(ValueError, match=match):
    evaluate_rank(**kwargs)


@pytest.mark.parametrize('metric, scipy_metric', [('euclidean', 'euclidean'), ('cosine', 'cosine')])
def test_pairwise_distance_matches_scipy_across_chunks(metric, scipy_metric):
  rng = np.random.default_rng(0)
  q, g = rng.normal(size=(11, 16)), rng.normal(size=(9, 16))
  q[3] = g[2]  # an exact zero distance must not go negative/NaN
  got = pairwise_distance(q, g, metric, chunk_size=4)
  assert got.dtype == np.float32 and got.shape == (11, 9)
  want = cdist(q, g, scipy_metric)
  off_zero = np.ones(want.shape, bool)
  off_zero[3, 2] = False
  np.testing.assert_allclose(got[off_zero], want[off_zero], atol=1e-5, rtol=1e-5)
  # At zero distance the expanded float32 form cancels to ~1e-6 before the root; the clamp at 0
  # keeps it real.
  assert 0.0 <= got[3, 2] < 3e-3 if metric == 'euclidean' else abs(got[3, 2]) < 1e-6


def test_pairwise_distance_rejects_mismatched_dims():
  with pytest.raises(ValueError, match='same dim'):
    pairwise_distance(np.zeros((2, 3)), np.zeros((2, 4)))
