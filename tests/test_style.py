"""Style refinement loss (DALNet) against a float64 log-softmax, hand values and shape checks."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sketchreid_jax.losses.style import style_refinement

N, M, D = 5, 7, 8

# Eager dispatch compiles every primitive on its own; one jit per shape keeps the file fast.
style = jax.jit(style_refinement)


def features(seed: int):
  rng = np.random.default_rng(seed)
  scale = rng.uniform(0.2, 5.0, size=(N, 1))  # norms ≠ 1: the loss must normalise
  return (
    scale * rng.normal(size=(N, D)),
    rng.normal(size=(N, D)),
    rng.normal(size=(M, D)),
    rng.normal(size=(N, M, D)),
  )


def naive_style(anchor, positive, negatives, temperature):
  """−log softmax(logits)[0] per anchor from float64 cosines, one anchor at a time."""

  def cos(u, v):
    return float(u @ v / (np.linalg.norm(u) * np.linalg.norm(v)))

  losses = []
  for i in range(len(anchor)):
    negs = negatives if negatives.ndim == 2 else negatives[i]
    logits = np.array([cos(anchor[i], positive[i])] + [cos(anchor[i], n) for n in negs])
    logits /= temperature
    log_softmax = logits - np.logaddexp.reduce(logits)
    losses.append(-log_softmax[0])
  return float(np.mean(losses))


@pytest.mark.parametrize('temperature', [0.07, 0.5])
@pytest.mark.parametrize('per_anchor', [False, True])
def test_matches_float64_log_softmax(per_anchor, temperature):
  anchor, positive, shared, own = features(0)
  negatives = own if per_anchor else shared
  want = naive_style(anchor, positive, negatives, temperature)
  got = style(*(np.float32(x) for x in (anchor, positive, negatives)), temperature=temperature)
  assert got.dtype == jnp.float32
  assert float(got) == pytest.approx(want, rel=1e-5)
  with jax.enable_x64(True):
    assert float(style(anchor, positive, negatives, temperature=temperature)) == pytest.approx(
      want, rel=1e-10
    )
  assert want > 0.5  # random features: the loss is far from its floor


def test_shared_negatives_equal_repeated_per_anchor():
  anchor, positive, shared, own = features(1)
  a, p, n = np.float32(anchor), np.float32(positive), np.float32(shared)
  tiled = np.broadcast_to(n, (N, M, D))
  assert float(style(a, p, n)) == pytest.approx(float(style(a, p, tiled)), rel=1e-6)
  assert abs(float(style(a, p, n)) - float(style(a, p, np.float32(own)))) > 1e-2


@pytest.mark.parametrize('temperature', [0.07, 0.5, 1.0])
def test_orthogonal_negatives_hand_value(temperature):
  # positive = anchor → cos 1; negatives orthogonal to every anchor → cos 0. Each anchor's
  # logits are [1/τ, 0, …, 0], so L = −log(e^{1/τ} / (e^{1/τ} + M)) = log(1 + M e^{−1/τ}).
  anchor = np.zeros((3, 6), np.float32)
  anchor[:, :2] = [[1.0, 2.0], [-3.0, 0.5], [0.0, 4.0]]
  negatives = np.zeros((4, 6), np.float32)
  negatives[:, 2:] = 2.0 * np.eye(4) + 0.5
  want = -math.log(math.exp(1 / temperature) / (math.exp(1 / temperature) + 4))
  got = float(style(anchor, anchor * 3.0, negatives, temperature=temperature))
  assert got == pytest.approx(want, rel=1e-5)


def test_temperature_scales_logits():
  anchor, positive, shared, _ = features(2)
  a, p, n = np.float32(anchor), np.float32(positive), np.float32(shared)
  # Halving τ doubles every logit: the same as the float64 reference with 1/τ doubled.
  for temperature in (0.1, 0.05):
    want = naive_style(anchor, positive, shared, temperature)
    assert float(style(a, p, n, temperature=temperature)) == pytest.approx(want, rel=1e-5)
  # A separable case (positive at cos 1, per-anchor negatives at cos 0) falls as τ shrinks,
  # along log(1 + M e^{−1/τ}).
  sharp = [float(style(a, a, _orth(a), temperature=t)) for t in (1.0, 0.5, 0.1)]
  assert sharp[0] > sharp[1] > sharp[2] > 0
  for t, got in zip((1.0, 0.5, 0.1), sharp):
    assert got == pytest.approx(math.log1p(M * math.exp(-1 / t)), rel=1e-5)


def _orth(a):
  """(N, M, D) negatives orthogonal to each anchor row (Gram–Schmidt against that row)."""
  rng = np.random.default_rng(3)
  n = rng.normal(size=(N, M, D)).astype(np.float32)
  unit = a / np.linalg.norm(a, axis=1, keepdims=True)
  return n - np.einsum('nmd,nd->nm', n, unit)[:, :, None] * unit[:, None, :]


def test_no_stop_gradient_and_finite_gradients():
  anchor, positive, shared, own = features(4)
  grad = jax.jit(jax.grad(style_refinement, argnums=(0, 1, 2)))
  for negatives in (shared, own):
    grads = grad(np.float32(anchor), np.float32(positive), np.float32(negatives))
    for g in grads:
      assert np.isfinite(g).all() and np.abs(g).sum() > 1e-3  # every input is trained
  anchor[0] = 0.0
  positive[1] = 0.0
  shared[2] = 0.0
  grads = grad(np.float32(anchor), np.float32(positive), np.float32(shared))
  assert all(np.isfinite(g).all() for g in grads)


@pytest.mark.parametrize(
  'shapes, temperature, match',
  [
    (((N, D), (N + 1, D), (M, D)), 0.07, 'anchor and positive'),
    (((N * D,), (N * D,), (M, D)), 0.07, 'anchor and positive'),
    (((N, D), (N, D), (M, D + 1)), 0.07, 'negatives must be'),
    (((N, D), (N, D), (N + 1, M, D)), 0.07, 'negatives must be'),
    (((N, D), (N, D), (M,)), 0.07, 'negatives must be'),
    (((N, D), (N, D), (0, D)), 0.07, 'at least one negative'),
    (((N, D), (N, D), (M, D)), 0.0, 'temperature'),
  ],
)
def test_bad_input_raises(shapes, temperature, match):
  arrays = [np.ones(s, np.float32) for s in shapes]
  with pytest.raises(ValueError, match=match):
    style_refinement(*arrays, temperature=temperature)
