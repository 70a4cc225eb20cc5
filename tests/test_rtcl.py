"""RTCL (CMDSL Eqs. 6–12) against a naive float64 loop, hand values, symmetry and jit properties."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sketchreid_jax.losses import rtcl, rtcl_terms

P, K, D = 4, 3, 8
IDS = np.array([17, 3, 42, 8])  # not 0..P−1, not sorted


def shuffled_batch(seed: int, k_photo: int = K, k_sketch: int = K, scale: float = 1.0):
  """P identities × (k_photo photos + k_sketch sketches), rows in a random order."""
  rng = np.random.default_rng(seed)
  labels = np.concatenate([np.repeat(IDS, k_photo), np.repeat(IDS, k_sketch)])
  modality = np.concatenate([np.zeros(P * k_photo, int), np.ones(P * k_sketch, int)])
  features = scale * rng.normal(size=(labels.size, D))
  perm = rng.permutation(labels.size)
  return features[perm], labels[perm], modality[perm]


def naive_rtcl_terms(features, labels, modality):
  """Eqs. 6–11 read off CMDSL one anchor and one identity at a time, in float64."""
  x = np.asarray(features, np.float64)
  n = len(x)

  def mean_or_zero(values):
    return float(np.mean(values)) if values else 0.0

  phi_terms = []
  for a in range(n):
    intra = [
      np.linalg.norm(x[a] - x[i])
      for i in range(n)
      if i != a and labels[i] == labels[a] and modality[i] == modality[a]
    ]
    across = [
      np.linalg.norm(x[a] - x[i])
      for i in range(n)
      if labels[i] == labels[a] and modality[i] != modality[a]
    ]
    phi_terms.append((mean_or_zero(intra) - mean_or_zero(across)) ** 2)
  phi = float(np.mean(phi_terms))

  numerator = denominator = 0.0
  for y in set(labels.tolist()):
    members = [j for j in range(n) if labels[j] == y]
    centroid = sum(x[j] for j in members) / len(members)
    pos = [np.linalg.norm(x[j] - centroid) for j in members]
    neg = [np.linalg.norm(x[j] - centroid) for j in range(n) if labels[j] != y]
    d_neg = sum(neg) / len(neg)
    hard = [d for d in neg if d < d_neg] or neg
    numerator += sum(pos) / len(pos)
    denominator += sum(hard) / len(hard)
  return phi, numerator / denominator


# One compile per batch shape instead of one per primitive: keeps the file fast on a small CPU.
# The eager path (and its input checks) is exercised by the jit == eager and bad-input tests.
_jit_terms = jax.jit(rtcl_terms)


def terms(features, labels, modality):
  return tuple(float(t) for t in _jit_terms(jnp.asarray(features), jnp.asarray(labels), modality))


@pytest.mark.parametrize(
  'seed, k_photo, k_sketch, scale',
  [(0, K, K, 1.0), (1, K, K, 5.0), (2, 1, 1, 1.0), (3, 2, 1, 0.5)],
)
def test_matches_naive_loop_float64(seed, k_photo, k_sketch, scale):
  # (2, 1, 1): K = 1, every D_intra is 0; (3, 2, 1): only the sketches lack an intra partner.
  features, labels, modality = shuffled_batch(seed, k_photo, k_sketch, scale)
  want = naive_rtcl_terms(features, labels, modality)
  with jax.enable_x64(True):
    phi, theta = terms(features, labels, jnp.asarray(modality))
    total = float(jax.jit(rtcl)(features, labels, modality))
  assert phi == pytest.approx(want[0], rel=1e-9)
  assert theta == pytest.approx(want[1], rel=1e-9)
  assert total == pytest.approx(sum(want), rel=1e-9)
  assert want[0] > 1e-3 and want[1] > 1e-3  # neither term is trivially zero here


def test_low_precision_input_computed_in_float32():
  features, labels, modality = shuffled_batch(4)
  phi, theta = _jit_terms(jnp.asarray(features, jnp.bfloat16), jnp.asarray(labels), modality)
  assert phi.dtype == jnp.float32 and theta.dtype == jnp.float32
  rounded = np.asarray(jnp.asarray(features, jnp.bfloat16), np.float64)
  want = naive_rtcl_terms(rounded, labels, modality)
  assert float(phi) == pytest.approx(want[0], rel=1e-4)
  assert float(theta) == pytest.approx(want[1], rel=1e-4)


def test_phi_zero_for_equidistant_simplex_and_positive_after_perturbation():
  # Each identity's 2K samples sit at c_p + s·e_k (k < 2K ≤ D): a regular simplex, every pair at
  # distance s·√2, so D_intra = D_across for every anchor and φ must vanish.
  rng = np.random.default_rng(5)
  labels = np.repeat(IDS, 2 * K)
  modality = np.tile(np.repeat([0, 1], K), P)
  centres = 10.0 * rng.normal(size=(P, D))
  features = np.concatenate([centres[p] + 0.7 * np.eye(D)[: 2 * K] for p in range(P)])
  perm = rng.permutation(labels.size)
  features, labels, modality = features[perm], labels[perm], modality[perm]
  with jax.enable_x64(True):
    phi, theta = terms(features, labels, jnp.asarray(modality))
  assert abs(phi) < 1e-12
  assert theta == pytest.approx(naive_rtcl_terms(features, labels, modality)[1], rel=1e-9)
  # Push one identity's sketches away from its photos: intra ≠ across now, φ > 0.
  moved = features.copy()
  sketches_of_first = (labels == IDS[0]) & (modality == 1)
  moved[sketches_of_first] += 3.0 * np.eye(D)[-1]
  with jax.enable_x64(True):
    phi_moved, _ = terms(moved, labels, jnp.asarray(modality))
  assert phi_moved > 0.1
  assert phi_moved == pytest.approx(naive_rtcl_terms(moved, labels, modality)[0], rel=1e-9)


def test_one_dimensional_example_by_hand():
  # K = 1, 1-D. Identity 7: photo 0, sketch 2 (c = 1); 30: photo −3, sketch 5 (c = 1);
  # 5: photo 20, sketch 24 (c = 22).
  #  y=7 : pos |0−1|,|2−1| → 1;  negs 4,4,19,23 → d_neg 12.5, hard {4,4} → 4
  #  y=30: pos 4,4 → 4;          negs 1,1,19,23 → d_neg 11,   hard {1,1} → 1
  #  y=5 : pos 2,2 → 2;          negs 22,20,25,17 → d_neg 21, hard {20,17} → 18.5
  #  θ = (1 + 4 + 2) / (4 + 1 + 18.5) = 14/47.
  #  φ: D_intra = 0 (K = 1), D_across = 2, 8, 4 for both anchors → (4+4+64+64+16+16)/6 = 28.
  features = np.array([[5.0], [20.0], [0.0], [24.0], [-3.0], [2.0]])
  labels = np.array([30, 5, 7, 5, 30, 7])
  modality = np.array([1, 0, 0, 1, 0, 1])
  phi, theta = terms(features, labels, modality)
  assert theta == pytest.approx(14 / 47, rel=1e-6)
  assert phi == pytest.approx(28.0, rel=1e-6)
  assert float(jax.jit(rtcl)(features, labels, modality)) == pytest.approx(28 + 14 / 47, rel=1e-6)


def test_empty_hard_negative_set_falls_back_to_all_negatives():
  # Both centroids at 1 and every negative equidistant from it: no negative is strictly below
  # d_neg, so each identity uses all its negatives: θ = (1 + 4) / (4 + 1) = 1.
  features = np.array([[0.0], [2.0], [-3.0], [5.0]])
  labels = np.array([0, 0, 1, 1])
  modality = np.array([0, 1, 0, 1])
  _, theta = terms(features, labels, modality)
  assert theta == pytest.approx(1.0, rel=1e-6)


def test_gradients_finite_with_duplicated_features():
  features, labels, modality = shuffled_batch(6)
  first, second = IDS[0], IDS[1]

  def rows(y, m):
    return np.flatnonzero((labels == y) & (modality == m))

  features[rows(first, 0)[1]] = features[rows(first, 0)[0]]  # same identity, same modality
  features[rows(first, 1)[0]] = features[rows(first, 0)[0]]  # same identity, across modalities
  features[rows(second, 0)[0]] = features[rows(first, 1)[1]]  # different identities
  features[labels == IDS[2]] = features[rows(IDS[2], 0)[0]]  # an identity collapsed on its centroid
  f = jnp.asarray(features, jnp.float32)
  for fn in (rtcl, lambda *a: rtcl_terms(*a)[0], lambda *a: rtcl_terms(*a)[1]):
    grads = np.asarray(jax.jit(jax.grad(fn))(f, jnp.asarray(labels), jnp.asarray(modality)))
    assert np.isfinite(grads).all()
    assert np.abs(grads).sum() > 0


def test_invariant_to_batch_permutation():
  features, labels, modality = shuffled_batch(7)
  perm = np.random.default_rng(1).permutation(labels.size)
  a = terms(np.float32(features), labels, modality)
  b = terms(np.float32(features[perm]), labels[perm], modality[perm])
  np.testing.assert_allclose(a, b, rtol=1e-5)


def test_jit_equals_eager():
  features, labels, modality = shuffled_batch(8)
  args = (jnp.asarray(features, jnp.float32), jnp.asarray(labels), jnp.asarray(modality))
  np.testing.assert_allclose(jax.jit(rtcl_terms)(*args), rtcl_terms(*args), rtol=1e-6)
  assert float(jax.jit(rtcl)(*args)) == pytest.approx(float(rtcl(*args)), rel=1e-6)


def test_single_identity_under_jit_gives_zero_theta():
  # Values cannot be checked when traced; the documented fallback is θ = 0, φ as usual.
  features, labels, modality = shuffled_batch(9)
  keep = labels == IDS[0]
  phi, theta = jax.jit(rtcl_terms)(
    jnp.asarray(features[keep]), jnp.asarray(labels[keep]), jnp.asarray(modality[keep])
  )
  assert float(theta) == 0.0
  assert float(phi) == pytest.approx(_phi_only(features[keep], modality[keep]), rel=1e-5)


def _phi_only(x, modality):
  """φ of one identity by the loop of Eqs. 6–8 (θ is undefined without negatives)."""
  n = len(x)
  out = []
  for a in range(n):
    intra = [np.linalg.norm(x[a] - x[i]) for i in range(n) if i != a and modality[i] == modality[a]]
    across = [np.linalg.norm(x[a] - x[i]) for i in range(n) if modality[i] != modality[a]]
    out.append((np.mean(intra) - np.mean(across)) ** 2)
  return float(np.mean(out))


@pytest.mark.parametrize(
  'features, labels, modality, match',
  [
    (np.zeros((4, 2)), np.zeros(3, int), np.zeros(4, int), r'\(B, D\)'),
    (np.zeros((4, 2)), np.zeros(4), np.zeros(4, int), 'labels must be integer'),
    (np.zeros((4, 2)), np.array([0, 0, 1, 1]), np.array([0, 2, 0, 1]), '0 \\(photo\\) or 1'),
    (np.zeros((4, 2)), np.array([3, 3, 3, 3]), np.array([0, 1, 0, 1]), 'P ≥ 2'),
    (np.zeros((4, 2)), np.array([0, 0, 1, 1]), np.array([0, 0, 0, 1]), r'identities \[0\]'),
  ],
)
def test_bad_input_raises(features, labels, modality, match):
  with pytest.raises(ValueError, match=match):
    rtcl(features, labels, modality)
