"""WRT / batch-hard triplet, distances and identity CE against naive float64 loops, hand values."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.spatial.distance import cdist

from sketchreid_jax.losses import (
  batch_hard_triplet,
  cosine_similarity,
  cross_entropy,
  euclidean_distance,
  wrt_triplet,
)

P, K, D = 4, 3, 8


def pk_batch(seed: int, scale: float = 1.0):
  """[photos | sketches] layout, each identity-contiguous, as the sampler produces."""
  rng = np.random.default_rng(seed)
  labels = np.concatenate([np.repeat(np.arange(P), K)] * 2)
  features = scale * rng.normal(size=(labels.size, D))
  return features, labels


def naive_wrt(features, labels, shift='set'):
  x = np.asarray(features, np.float64)
  n = len(x)
  d = np.array([[max(np.linalg.norm(x[i] - x[j]), 1e-6) for j in range(n)] for i in range(n)])
  losses = []
  for i in range(n):
    pos = [j for j in range(n) if labels[j] == labels[i]]
    neg = [j for j in range(n) if labels[j] != labels[i]]
    if shift == 'set':
      sp, sn = max(d[i, pos]), max(-d[i, neg])
    else:  # the reference's max over the multiplicatively masked row (zeros off the set)
      sp, sn = max(d[i, pos]), 0.0
    zp = sum(math.exp(d[i, j] - sp) for j in pos) + 1e-6
    zn = sum(math.exp(-d[i, j] - sn) for j in neg) + 1e-6
    dp = sum(math.exp(d[i, j] - sp) / zp * d[i, j] for j in pos)
    dn = sum(math.exp(-d[i, j] - sn) / zn * d[i, j] for j in neg)
    losses.append(math.log1p(math.exp(dp - dn)))
  return float(np.mean(losses))


def naive_batch_hard(features, labels, margin):
  x = np.asarray(features, np.float64)
  n = len(x)
  losses = []
  for i in range(n):
    pos = [np.linalg.norm(x[i] - x[j]) for j in range(n) if j != i and labels[j] == labels[i]]
    neg = [np.linalg.norm(x[i] - x[j]) for j in range(n) if labels[j] != labels[i]]
    if not pos or not neg:
      continue
    gap = max(pos) - min(neg)
    losses.append(math.log1p(math.exp(gap)) if margin is None else max(gap + margin, 0.0))
  return float(np.mean(losses))


@pytest.mark.parametrize('shift', ['set', 'reference'])
@pytest.mark.parametrize('seed, scale', [(0, 1.0), (1, 0.3), (2, 8.0)])
def test_wrt_matches_naive_loop_float64(shift, seed, scale):
  # scale 8 puts negatives at d ≈ 30 where exp(−d) ≪ 1e-6: the two shifts then differ a lot.
  features, labels = pk_batch(seed, scale)
  with jax.enable_x64(True):
    got = float(wrt_triplet(jnp.asarray(features), jnp.asarray(labels), shift=shift))
  assert got == pytest.approx(naive_wrt(features, labels, shift), rel=1e-9, abs=1e-9)


def test_wrt_float32_close_to_float64_reference():
  features, labels = pk_batch(3)
  got = wrt_triplet(jnp.asarray(features, jnp.float32), jnp.asarray(labels))
  assert got.dtype == jnp.float32
  assert float(got) == pytest.approx(naive_wrt(features, labels), rel=1e-4)


def test_wrt_shift_conventions_differ_for_far_negatives():
  features, labels = pk_batch(4, scale=8.0)
  set_loss = float(wrt_triplet(features, labels, shift='set'))
  ref_loss = float(wrt_triplet(features, labels, shift='reference'))
  # Reference weights on negatives sum to ≪ 1, so d_n collapses and the loss grows.
  assert ref_loss > set_loss + 1.0


@pytest.mark.parametrize(
  'loss_fn',
  [
    wrt_triplet,
    functools.partial(batch_hard_triplet, margin=0.3),
    functools.partial(batch_hard_triplet, margin=None),
  ],
)
def test_gradients_finite_with_duplicated_features(loss_fn):
  features, labels = pk_batch(5)
  features[1] = features[0]  # same identity, zero distance
  features[7] = features[0]  # different identity, zero distance
  features[13] = features[4]
  grads = jax.jit(jax.grad(loss_fn))(jnp.asarray(features, jnp.float32), jnp.asarray(labels))
  assert np.isfinite(np.asarray(grads)).all()
  assert np.abs(np.asarray(grads)).sum() > 0


@pytest.mark.parametrize('loss_fn', [wrt_triplet, batch_hard_triplet])
def test_invariant_to_batch_permutation(loss_fn):
  features, labels = pk_batch(6)
  perm = np.random.default_rng(0).permutation(len(labels))
  a = float(loss_fn(jnp.asarray(features, jnp.float32), jnp.asarray(labels)))
  b = float(loss_fn(jnp.asarray(features[perm], jnp.float32), jnp.asarray(labels[perm])))
  assert a == pytest.approx(b, rel=1e-5)


@pytest.mark.parametrize('margin', [0.3, 1.5, None])
def test_batch_hard_matches_naive_loop(margin):
  features, labels = pk_batch(7)
  with jax.enable_x64(True):
    got = float(batch_hard_triplet(jnp.asarray(features), jnp.asarray(labels), margin=margin))
  assert got == pytest.approx(naive_batch_hard(features, labels, margin), rel=1e-9)


def test_batch_hard_skips_anchor_without_other_positive():
  features, labels = pk_batch(8)
  labels = labels.copy()
  labels[0] = 99  # a singleton identity: no positive besides itself
  want = naive_batch_hard(features, labels, 2.0)
  with jax.enable_x64(True):
    got = float(batch_hard_triplet(jnp.asarray(features), jnp.asarray(labels), margin=2.0))
    grads = jax.grad(batch_hard_triplet)(jnp.asarray(features), jnp.asarray(labels), margin=2.0)
  assert got == pytest.approx(want, rel=1e-9)
  assert np.isfinite(np.asarray(grads)).all()


def test_losses_jit_equal_eager():
  features, labels = pk_batch(9)
  f, y = jnp.asarray(features, jnp.float32), jnp.asarray(labels)
  for fn in (wrt_triplet, functools.partial(batch_hard_triplet, margin=0.3)):
    assert float(jax.jit(fn)(f, y)) == pytest.approx(float(fn(f, y)), rel=1e-6)
  logits = jnp.asarray(np.random.default_rng(0).normal(size=(6, 5)), jnp.float32)
  ce = functools.partial(cross_entropy, label_smoothing=0.1)
  assert float(jax.jit(ce)(logits, y[:6])) == pytest.approx(float(ce(logits, y[:6])), rel=1e-6)


def test_distances_match_scipy_and_have_finite_gradients():
  rng = np.random.default_rng(10)
  a, b = rng.normal(size=(5, 7)), rng.normal(size=(4, 7))
  with jax.enable_x64(True):
    np.testing.assert_allclose(euclidean_distance(a, b), cdist(a, b), rtol=1e-10)
    np.testing.assert_allclose(cosine_similarity(a, b), 1 - cdist(a, b, 'cosine'), rtol=1e-10)
    diag = np.diag(np.asarray(euclidean_distance(a, a)))
  np.testing.assert_allclose(diag, 1e-6, rtol=1e-3)  # sqrt of the 1e-12 clamp
  a32 = jnp.asarray(a, jnp.float32).at[2].set(0.0)  # a zero vector for the cosine
  for fn in (lambda x: euclidean_distance(x, x).sum(), lambda x: cosine_similarity(x, x).sum()):
    assert np.isfinite(np.asarray(jax.jit(jax.grad(fn))(a32))).all()


def test_cross_entropy_with_smoothing_by_hand():
  logits = [[1.0, 2.0, 3.0], [0.5, -1.0, 0.0]]
  labels = [2, 0]

  def row_loss(z, y, eps):
    log_z = math.log(sum(math.exp(v) for v in z))
    q = [(1 - eps) * (c == y) + eps / 3 for c in range(3)]
    return -sum(qc * (zc - log_z) for qc, zc in zip(q, z))

  for eps in (0.0, 0.1):
    want = (row_loss(logits[0], 2, eps) + row_loss(logits[1], 0, eps)) / 2
    got = cross_entropy(jnp.asarray(logits), jnp.asarray(labels), label_smoothing=eps)
    assert float(got) == pytest.approx(want, rel=1e-6)
  # eps = 0, row 0 in closed form: log(e + e² + e³) − 3.
  one_row = cross_entropy(jnp.asarray(logits[:1]), jnp.asarray(labels[:1]))
  assert float(one_row) == pytest.approx(math.log(math.e + math.e**2 + math.e**3) - 3, rel=1e-6)


def test_cross_entropy_computes_in_float32_for_bfloat16_logits():
  logits = jnp.asarray(np.random.default_rng(1).normal(size=(4, 6)), jnp.bfloat16)
  labels = jnp.asarray([0, 3, 5, 1])
  got = cross_entropy(logits, labels, label_smoothing=0.1)
  assert got.dtype == jnp.float32
  ref = cross_entropy(logits.astype(jnp.float32), labels, label_smoothing=0.1)
  assert float(got) == pytest.approx(float(ref), rel=1e-6)


@pytest.mark.parametrize(
  'call, match',
  [
    (lambda: cross_entropy(jnp.zeros((2, 3)), jnp.zeros((3,), jnp.int32)), 'labels'),
    (lambda: cross_entropy(jnp.zeros((2, 3)), jnp.zeros((2,)), label_smoothing=0.0), 'integer'),
    (
      lambda: cross_entropy(jnp.zeros((2, 3)), jnp.zeros((2,), jnp.int32), label_smoothing=1.0),
      'label_smoothing',
    ),
    (lambda: wrt_triplet(jnp.zeros((4, 2)), jnp.zeros((3,), jnp.int32)), 'wrt_triplet'),
    (lambda: wrt_triplet(jnp.zeros((4, 2)), jnp.zeros((4,), jnp.int32), shift='max'), 'shift'),
    (lambda: batch_hard_triplet(jnp.zeros((4,)), jnp.zeros((4,), jnp.int32)), 'batch_hard'),
  ],
)
def test_bad_input_raises(call, match):
  with pytest.raises(ValueError, match=match):
    call()
