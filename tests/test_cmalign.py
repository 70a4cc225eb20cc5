"""CMAlign maps (models/cmalign.py) and L_dt (losses/cmalign.py) against loops and known answers."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sketchreid_jax.losses import dense_triplet
from sketchreid_jax.models import cmalign

H, W, C = 3, 2, 16
HW = H * W
TEMPERATURE = 50.0


def random_maps(seed: int, n: int, c: int = C) -> np.ndarray:
  return np.random.default_rng(seed).normal(size=(n, H, W, c)).astype(np.float32)


def naive_correspondence(f_q: np.ndarray, f_k: np.ndarray, temperature: float) -> np.ndarray:
  n = f_q.shape[0]
  q = f_q.reshape(n, HW, -1).astype(np.float64)
  k = f_k.reshape(n, HW, -1).astype(np.float64)
  out = np.zeros((n, HW, HW))
  for b in range(n):
    for i in range(HW):
      s = [
        q[b, i] @ k[b, j] / (np.linalg.norm(q[b, i]) * np.linalg.norm(k[b, j])) for j in range(HW)
      ]
      e = [math.exp(temperature * (v - max(s))) for v in s]
      out[b, i] = np.asarray(e) / sum(e)
  return out


def naive_minmax(x: np.ndarray) -> np.ndarray:
  flat = x.reshape(x.shape[0], -1).astype(np.float64)
  lo, hi = flat.min(1, keepdims=True), flat.max(1, keepdims=True)
  return ((flat - lo) / (hi - lo)).reshape(x.shape)


# --------------------------------------------------------------------------- correspondence


def test_correspondence_matches_naive_softmax_of_cosines():
  f_q, f_k = random_maps(0, 2), random_maps(1, 2)
  got = np.asarray(cmalign.correspondence(f_q, f_k, temperature=3.0))
  np.testing.assert_allclose(got, naive_correspondence(f_q, f_k, 3.0), rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(got.sum(-1), 1.0, rtol=1e-6)


def test_correspondence_recovers_a_spatial_permutation_and_warp_inverts_it():
  rng = np.random.default_rng(2)
  # Distinct random features per position with very different norms (cosine ignores them).
  f_q = rng.normal(size=(2, H, W, 32)) * rng.uniform(0.5, 3.0, size=(2, H, W, 1))
  perms = [rng.permutation(HW) for _ in range(2)]
  # f_k at position j holds f_q's feature of position perm[j].
  f_k = np.stack([f_q[b].reshape(HW, -1)[perms[b]] for b in range(2)]).reshape(f_q.shape)
  P = np.asarray(cmalign.correspondence(f_q, f_k, temperature=TEMPERATURE))
  for b in range(2):
    np.testing.assert_array_equal(P[b].argmax(-1), np.argsort(perms[b]))  # i -> j with perm[j]=i
  warped = np.asarray(cmalign.warp(P, jnp.asarray(f_k, jnp.float32)))
  # Tolerance from the draw: each row puts at most (HW−1)·exp(−T(1 − s_max)) on wrong positions,
  # where s_max is the largest cosine between two distinct positions; a wrong feature differs by
  # at most 2·max|f| per element. Plus float32 rounding.
  unit = f_q.reshape(2, HW, -1) / np.linalg.norm(f_q.reshape(2, HW, -1), axis=-1, keepdims=True)
  cos = np.einsum('nic,njc->nij', unit, unit) - 2 * np.eye(HW)
  s_max = cos.max()
  assert s_max < 0.8, 'the random draw is not well separated; the test would be meaningless'
  wrong_mass = (HW - 1) * math.exp(-TEMPERATURE * (1 - s_max))
  tol = wrong_mass * 2 * np.abs(f_q).max() + 1e-5 * np.abs(f_q).max()
  assert tol < 1e-3
  np.testing.assert_allclose(warped, f_q, atol=tol, rtol=0)


def test_warp_is_a_weighted_sum_of_key_positions():
  f_k = random_maps(3, 2)
  P = np.random.default_rng(4).dirichlet(np.ones(HW), size=(2, HW)).astype(np.float32)
  got = np.asarray(cmalign.warp(P, f_k))
  want = np.zeros_like(f_k, dtype=np.float64).reshape(2, HW, C)
  for b in range(2):
    for i in range(HW):
      want[b, i] = sum(P[b, i, j] * f_k[b].reshape(HW, C)[j] for j in range(HW))
  np.testing.assert_allclose(got.reshape(2, HW, C), want, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- masks


def test_feature_norm_mask_is_minmax_of_channel_norms_in_unit_range():
  f = random_maps(5, 3)
  m = np.asarray(cmalign.feature_norm_mask(f))
  assert m.shape == (3, H, W, 1)
  np.testing.assert_allclose(m, naive_minmax(np.linalg.norm(f, axis=-1, keepdims=True)), atol=1e-6)
  assert m.min() >= 0.0 and m.max() <= 1.0
  flat = m.reshape(3, -1)
  np.testing.assert_allclose(flat.min(1), 0.0, atol=1e-7)
  np.testing.assert_allclose(flat.max(1), 1.0, atol=1e-6)
  # Under stop_gradient: no gradient reaches f, even through a zero vector.
  f0 = jnp.asarray(f).at[0, 0, 0].set(0.0)
  g = jax.grad(lambda x: jnp.sum(cmalign.feature_norm_mask(x) * x[..., :1]))(f0)
  np.testing.assert_array_equal(np.asarray(g)[..., 1:], 0.0)
  assert np.isfinite(np.asarray(g)).all()


def test_minmax_of_a_constant_map_is_zero_not_nan():
  out = np.asarray(cmalign.minmax_normalise(jnp.ones((2, H, W, 1))))
  np.testing.assert_array_equal(out, 0.0)


def test_attribute_projection_is_seeded_and_attribute_mask_matches_numpy():
  a = cmalign.attribute_projection(7, 27, H, W)
  assert a.shape == (27, HW) and a.dtype == np.float32
  np.testing.assert_array_equal(a, cmalign.attribute_projection(7, 27, H, W))
  assert not np.allclose(a, cmalign.attribute_projection(8, 27, H, W))
  attrs = np.random.default_rng(9).integers(-1, 2, size=(4, 27))
  m = np.asarray(cmalign.attribute_mask(attrs, a, (H, W)))
  want = naive_minmax((attrs.astype(np.float64) @ a.astype(np.float64)).reshape(4, H, W, 1))
  np.testing.assert_allclose(m, want, atol=1e-5)
  np.testing.assert_allclose(m.reshape(4, -1).max(1), 1.0, atol=1e-6)
  with pytest.raises(ValueError, match='attribute_projection'):
    cmalign.attribute_mask(attrs, a, (W, H + 1))


def test_reconstruct_endpoints_and_co_mask_against_loop():
  f, f_w = random_maps(10, 2), random_maps(11, 2)
  ones, zeros = np.ones((2, H, W, 1), np.float32), np.zeros((2, H, W, 1), np.float32)
  np.testing.assert_array_equal(np.asarray(cmalign.reconstruct(f, f_w, ones)), f_w)
  np.testing.assert_array_equal(np.asarray(cmalign.reconstruct(f, f_w, zeros)), f)
  half = np.full((2, H, W, 1), 0.25, np.float32)
  np.testing.assert_allclose(cmalign.reconstruct(f, f_w, half), 0.25 * f_w + 0.75 * f, rtol=1e-6)

  P = naive_correspondence(f, f_w, 2.0).astype(np.float32)
  m_q, m_k = (
    np.random.default_rng(s).uniform(size=(2, H, W, 1)).astype(np.float32) for s in (12, 13)
  )
  raw = np.zeros((2, HW))
  for b in range(2):
    for i in range(HW):
      raw[b, i] = m_q[b].reshape(HW)[i] * sum(P[b, i, j] * m_k[b].reshape(HW)[j] for j in range(HW))
  got = np.asarray(cmalign.co_mask(m_q, P, m_k))
  np.testing.assert_allclose(got, naive_minmax(raw).reshape(2, H, W, 1), atol=1e-6)


# --------------------------------------------------------------------------- L_dt


def naive_dense_triplet(f, fp, fn, c, margin, eps):
  n = f.shape[0]
  total = 0.0
  for b in range(n):
    for y in range(H):
      for x in range(W):
        dp = math.sqrt(sum((f[b, y, x, k] - fp[b, y, x, k]) ** 2 for k in range(f.shape[-1])) + eps)
        dn = math.sqrt(sum((f[b, y, x, k] - fn[b, y, x, k]) ** 2 for k in range(f.shape[-1])) + eps)
        total += c[b, y, x, 0] * max(0.0, dp - dn + margin)
  return total / (n * H * W)


@pytest.mark.parametrize('margin', [0.3, 5.0])
def test_dense_triplet_matches_naive_loop(margin):
  f, fp, fn = (0.5 * random_maps(s, 2, c=4) for s in (20, 21, 22))
  c = np.random.default_rng(23).uniform(size=(2, H, W, 1))
  want = naive_dense_triplet(f.astype(np.float64), fp, fn, c, margin, 1e-6)
  got = float(dense_triplet(f, fp, fn, c, margin=margin))
  assert want > 0
  assert got == pytest.approx(want, rel=1e-5)
  got_3d = float(dense_triplet(f, fp, fn, c[..., 0], margin=margin))  # (N, H, W) co-mask
  assert got_3d == pytest.approx(want, rel=1e-5)


def test_dense_triplet_zero_for_exact_positive_and_far_negative():
  f = random_maps(24, 2, c=4)
  direction = np.zeros(4, np.float32)
  direction[0] = 1.0
  far = f + (0.3 + 0.01) * direction  # ‖f − f̂⁻‖ = 0.31 > margin + sqrt(eps) at every position
  c = np.ones((2, H, W, 1), np.float32)
  assert float(dense_triplet(f, f, far, c, margin=0.3)) == 0.0
  near = f + 0.2 * direction  # ... and positive once the negative is inside the margin
  assert float(dense_triplet(f, f, near, c, margin=0.3)) == pytest.approx(
    0.3 + math.sqrt(1e-6) - math.sqrt(0.04 + 1e-6), rel=1e-4
  )


def test_dense_triplet_gradients_finite_even_at_zero_distance():
  f = random_maps(25, 2, c=4)
  fn = f + 0.05 * random_maps(26, 2, c=4)  # inside the margin, so the hinge is active
  c = np.random.default_rng(27).uniform(size=(2, H, W, 1)).astype(np.float32)
  grads = jax.jit(jax.grad(dense_triplet, argnums=(0, 1, 2, 3)))(f, f, fn, c)
  for g in grads:
    assert np.isfinite(np.asarray(g)).all()
  assert np.abs(np.asarray(grads[0])).sum() > 0
  np.testing.assert_array_equal(np.asarray(grads[3]), 0.0)  # the co-mask is stop-gradient


# --------------------------------------------------------------------------- pairing


def pk_labels(P: int, K: int) -> np.ndarray:
  return np.concatenate([np.repeat(np.arange(P), K)] * 2).astype(np.int32)


@pytest.mark.parametrize(
  'labels, num_photos',
  [
    (pk_labels(3, 2), 6),
    # Unequal halves: 5 photos (ids 0,0,1,2,2) and 3 sketches (ids 2,0,1).
    (np.array([0, 0, 1, 2, 2, 2, 0, 1], np.int32), 5),
  ],
)
def test_pair_indices_valid_and_cover_every_candidate(labels, num_photos):
  n = len(labels)
  keys = jax.random.split(jax.random.key(0), 300)
  pair = functools.partial(cmalign.pair_indices, num_photos=num_photos)
  draw = jax.jit(jax.vmap(pair, (None, 0)))
  pos, neg = (np.asarray(x) for x in draw(labels, keys))
  assert pos.shape == neg.shape == (300, n)
  is_sketch = np.arange(n) >= num_photos
  for i in range(n):
    other = np.flatnonzero(is_sketch != is_sketch[i])
    want_pos = {j for j in other if labels[j] == labels[i]}
    want_neg = {j for j in other if labels[j] != labels[i]}
    assert set(pos[:, i].tolist()) == want_pos  # all valid, and each one drawn at least once
    assert set(neg[:, i].tolist()) == want_neg


def test_pair_indices_eager_equals_jit_and_rejects_impossible_batches():
  labels, key = pk_labels(2, 2), jax.random.key(1)
  eager = cmalign.pair_indices(labels, key, num_photos=4)
  jitted = jax.jit(functools.partial(cmalign.pair_indices, num_photos=4))(labels, key)
  for a, b in zip(eager, jitted):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  with pytest.raises(ValueError, match='num_photos'):
    jax.jit(functools.partial(cmalign.pair_indices, num_photos=8))(pk_labels(2, 2), key)
  with pytest.raises(ValueError, match='two identities'):
    cmalign.pair_indices(np.zeros(6, np.int32), key, num_photos=3)
  with pytest.raises(ValueError, match='no same-identity'):
    cmalign.pair_indices(np.array([0, 1, 1, 1], np.int32), key, num_photos=2)


def test_pair_indices_fallbacks_under_jit():
  key = jax.random.key(2)
  fn = jax.jit(functools.partial(cmalign.pair_indices, num_photos=3))
  pos, neg = fn(np.zeros(6, np.int32), key)  # one identity: no negative anywhere
  np.testing.assert_array_equal(np.asarray(neg), np.asarray(pos))
  assert (np.asarray(pos)[:3] >= 3).all() and (np.asarray(pos)[3:] < 3).all()
  pos, neg = fn(np.array([0, 1, 2, 1, 2, 2], np.int32), key)  # id 0 has no sketch
  assert int(pos[0]) == 0 and int(neg[0]) in (3, 4, 5)


# --------------------------------------------------------------------------- one layer end to end


@pytest.mark.parametrize('mask', ['norm', 'attribute'])
def test_cmalign_maps_composes_the_parts_and_jits(mask):
  labels = pk_labels(2, 2)
  f = random_maps(30, len(labels))
  attrs = np.random.default_rng(31).integers(0, 2, size=(2, 27))[labels]
  proj = cmalign.attribute_projection(0, 27, H, W)
  extra = dict(attributes=attrs, projection=proj) if mask == 'attribute' else {}
  fn = jax.jit(
    functools.partial(cmalign.cmalign_maps, num_photos=4, temperature=TEMPERATURE, mask=mask)
  )
  out = fn(f, labels, jax.random.key(3), **extra)
  pos, neg = np.asarray(out['pos']), np.asarray(out['neg'])
  assert (labels[pos] == labels).all() and (labels[neg] != labels).all()
  if mask == 'norm':
    m = naive_minmax(np.linalg.norm(f, axis=-1, keepdims=True))
  else:
    m = naive_minmax((attrs @ proj.astype(np.float64)).reshape(-1, H, W, 1))
  P_pos = naive_correspondence(f, f[pos], TEMPERATURE)
  P_neg = naive_correspondence(f, f[neg], TEMPERATURE)

  def naive_recon(P, idx):
    warped = np.einsum('nij,njc->nic', P, f[idx].reshape(-1, HW, C)).reshape(f.shape)
    return m * warped + (1 - m) * f

  want_pos, want_neg = naive_recon(P_pos, pos), naive_recon(P_neg, neg)
  np.testing.assert_allclose(out['f_pos_hat'], want_pos, atol=1e-4)
  np.testing.assert_allclose(out['f_neg_hat'], want_neg, atol=1e-4)
  carried = np.einsum('nij,nj->ni', P_pos, m[pos].reshape(-1, HW)).reshape(m.shape)
  np.testing.assert_allclose(out['comask'], naive_minmax(m * carried), atol=1e-4)

  def loss(x):
    o = cmalign.cmalign_maps(
      x, labels, jax.random.key(3), num_photos=4, temperature=TEMPERATURE, mask=mask, **extra
    )
    return dense_triplet(x, o['f_pos_hat'], o['f_neg_hat'], o['comask'])

  g = jax.jit(jax.grad(loss))(f)
  assert np.isfinite(np.asarray(g)).all() and np.abs(np.asarray(g)).sum() > 0


def test_cmalign_maps_rejects_bad_arguments():
  labels, f, key = pk_labels(2, 2), random_maps(32, 8), jax.random.key(4)
  with pytest.raises(ValueError, match="mask='attribute' needs"):
    cmalign.cmalign_maps(f, labels, key, num_photos=4, temperature=TEMPERATURE, mask='attribute')
  with pytest.raises(ValueError, match="'norm' or 'attribute'"):
    cmalign.cmalign_maps(f, labels, key, num_photos=4, temperature=TEMPERATURE, mask='edges')
  with pytest.raises(ValueError, match='labels must be'):
    cmalign.cmalign_maps(f, labels[:6], key, num_photos=4, temperature=TEMPERATURE)
  with pytest.raises(ValueError, match='same shape'):
    cmalign.correspondence(f, f[:, :2])
