"""Our WRT triplet and GeM against float64 numpy transcriptions of the MM'23 release (loss.py,
model.py of github.com/Lin-Kayla/subjectivity-sketch-reid).

The transcriptions follow the release line by line, not our formulas: ``pdist_torch`` (squared
norms + addmm, clamp 1e-12, sqrt), ``softmax_weights`` (shift by the max of ``dist * mask`` over
the whole row, ``exp(diff) * mask``, +1e-6 on the denominator), ``TripletLoss_WRT`` (weights of
``dist_ap`` and ``-dist_an``, ``SoftMarginLoss(closest_negative - furthest_positive, 1)`` =
mean log(1 + exp(-(d_n - d_p)))) and ``GeMP`` (NCHW, ``(mean_hw(x**p) + 1e-12) ** (1/p)``).

GeM differs in one place by design: ours clamps ``max(x, eps)`` (eps 1e-6) before the power, the
release adds 1e-12 after the mean. On ReLU maps without exact zeros the clamp never binds and 1e-12
is far below the float32 resolution of the means, so they agree to 1e-5 (checked here). Exact
zeros are not tested: each adds eps^3 = 1e-18 to our mean, negligible unless a whole channel is 0,
where ours gives 1e-6 and the release (1e-12)^(1/3) = 1e-4.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sketchreid_jax.config_base import base_config
from sketchreid_jax.losses import wrt_triplet
from sketchreid_jax.methods import baseline
from sketchreid_jax.models.heads import gem_pool

# Eager dispatch compiles every primitive on its own; one jit per shape keeps the file fast.
wrt = jax.jit(wrt_triplet, static_argnames='shift')
gem = jax.jit(gem_pool, static_argnames='eps')


# ----------------------------------------------------------------------- release, in numpy


def release_pdist(emb1, emb2):
  """loss.pdist_torch: ||a||² + ||b||² - 2 a·b, clamp(min=1e-12), sqrt."""
  m, n = emb1.shape[0], emb2.shape[0]
  emb1_pow = np.broadcast_to(np.sum(emb1**2, axis=1, keepdims=True), (m, n))
  emb2_pow = np.broadcast_to(np.sum(emb2**2, axis=1, keepdims=True), (n, m)).T
  dist_mtx = emb1_pow + emb2_pow - 2.0 * emb1 @ emb2.T
  return np.sqrt(np.maximum(dist_mtx, 1e-12))


def release_softmax_weights(dist, mask):
  max_v = np.max(dist * mask, axis=1, keepdims=True)
  diff = dist - max_v
  Z = np.sum(np.exp(diff) * mask, axis=1, keepdims=True) + 1e-6
  return np.exp(diff) * mask / Z


def release_wrt(inputs, targets):
  """loss.TripletLoss_WRT.forward (normalize_feature=False), returning the loss."""
  inputs = np.asarray(inputs, np.float64)
  dist_mat = release_pdist(inputs, inputs)
  n = dist_mat.shape[0]
  t = np.broadcast_to(targets, (n, n))
  is_pos = (t == t.T).astype(np.float64)
  is_neg = (t != t.T).astype(np.float64)
  dist_ap = dist_mat * is_pos
  dist_an = dist_mat * is_neg
  weights_ap = release_softmax_weights(dist_ap, is_pos)
  weights_an = release_softmax_weights(-dist_an, is_neg)
  furthest_positive = np.sum(dist_ap * weights_ap, axis=1)
  closest_negative = np.sum(dist_an * weights_an, axis=1)
  # nn.SoftMarginLoss()(x, y=1) = mean(log(1 + exp(-y x))).
  return float(np.mean(np.log1p(np.exp(-(closest_negative - furthest_positive)))))


def release_gemp(x_nchw, p=3.0, eps=1e-12):
  """model.GeMP.forward on an NCHW map."""
  b, c = x_nchw.shape[:2]
  x = np.asarray(x_nchw, np.float64).reshape(b, c, -1)
  return (np.mean(x**p, axis=-1) + eps) ** (1 / p)


# ----------------------------------------------------------------------------------- tests


def pk_batch(seed, P, K, D, scale=1.0):
  """[photos | sketches], identity-contiguous, as the sampler lays out a batch."""
  rng = np.random.default_rng(seed)
  labels = np.concatenate([np.repeat(np.arange(P), K)] * 2).astype(np.int32)
  return (scale * rng.normal(size=(labels.size, D))).astype(np.float32), labels


@pytest.mark.parametrize(
  'seed, P, K, D, scale',
  [(0, 4, 2, 16, 1.0), (1, 8, 4, 32, 0.5), (2, 3, 3, 64, 0.2), (3, 6, 2, 8, 2.0)],
)
def test_wrt_reference_shift_equals_release(seed, P, K, D, scale):
  features, labels = pk_batch(seed, P, K, D, scale)
  want = release_wrt(features, labels)
  got = float(wrt(features, labels, shift='reference'))
  assert got == pytest.approx(want, rel=1e-5)
  assert want > 0.05  # not a trivially tiny loss the relative tolerance would hide


def far_batch(seed):
  """Identities ~ 40 apart, each a tight cluster: every negative pair has d > 15 (checked)."""
  rng = np.random.default_rng(seed)
  P, K, D = 4, 2, 16
  centres = 10.0 * rng.normal(size=(P, D))
  labels = np.concatenate([np.repeat(np.arange(P), K)] * 2).astype(np.int32)
  features = centres[labels] + 0.3 * rng.normal(size=(labels.size, D))
  dist = release_pdist(features, features)
  assert dist[labels[:, None] != labels[None, :]].min() > 15.0
  return features, labels


def test_far_negatives_separate_the_shifts():
  # e^{-d} ≪ 1e-6 for every negative: the release's row shift of 0 leaves the negative weights
  # summing to ≪ 1, so d_n collapses towards 0 and the loss ≈ softplus(d_p) — while the set shift
  # keeps the weights summing to ≈ 1, d_n ≈ the nearest negatives' ~40 and the loss ≈ 0.
  features, labels = far_batch(7)
  want = release_wrt(features, labels)
  # In float64: at norms ~ 40 the float32 ||a||² + ||b||² − 2a·b loses ~1e-4 of the small
  # within-identity d² to cancellation (the release's float32 does too), which would hide the
  # formula behind rounding. The float32 result is checked at the looser tolerance that implies.
  with jax.enable_x64(True):
    reference = float(wrt(features, labels, shift='reference'))
    shifted_by_set = float(wrt(features, labels, shift='set'))
  assert reference == pytest.approx(want, rel=1e-5)
  assert float(wrt(np.float32(features), labels, shift='reference')) == pytest.approx(
    want, rel=1e-3
  )
  assert want > 1.0 and shifted_by_set < 1e-3
  assert reference - shifted_by_set > 1.0


@pytest.mark.parametrize('shift', ['set', 'reference'])
def test_metric_loss_honours_config_wrt_shift(shift):
  features, labels = far_batch(11)  # where the two shifts give different losses
  config = base_config()
  config.loss.metric = 'wrt'
  config.loss.wrt_shift = shift
  with jax.enable_x64(True):
    got = float(baseline.metric_loss(jnp.asarray(features), jnp.asarray(labels), config))
  if shift == 'reference':
    assert got == pytest.approx(release_wrt(features, labels), rel=1e-5)
    assert got > 1.0
  else:
    assert got < 1e-3


@pytest.mark.parametrize(
  'seed, shape', [(0, (2, 18, 9, 32)), (1, (3, 8, 4, 64)), (2, (1, 5, 7, 3))]
)
def test_gem_equals_release_gemp_on_relu_maps(seed, shape):
  rng = np.random.default_rng(seed)
  # ReLU of a shifted normal, kept away from exact zeros, as the release's layer4 outputs are
  # (post-ReLU, almost never exactly 0 after the residual add) — the clamp then never binds.
  x = np.maximum(rng.normal(0.5, 1.0, size=shape), 0.0) + rng.uniform(1e-3, 1e-2, size=shape)
  x = x.astype(np.float32)
  assert x.min() > 1e-6
  want = release_gemp(np.transpose(x, (0, 3, 1, 2)), p=3.0)  # NHWC -> the release's NCHW
  got = np.asarray(gem(x, 3.0, eps=1e-6))
  assert got.shape == want.shape == (shape[0], shape[3])
  np.testing.assert_allclose(got, want, rtol=1e-5)
  # GeM lies between the mean and the max (power mean, p = 3 > 1): a real pooling, not a no-op.
  assert np.all(got > x.mean(axis=(1, 2)) - 1e-6) and np.all(got < x.max(axis=(1, 2)) + 1e-6)
