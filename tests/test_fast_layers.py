"""The CPU fast paths of the backbone compute what the layers they replace compute.

``PointwiseConv`` (models/pointwise.py) stands in for a 1×1 ``nn.Conv``; ``max_pool_3x3_s2``
(models/max_pool.py) carries a hand-written gradient. Both are checked against the plain XLA
operations and, for the pooling's tie rule, against a naive loop.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sketchreid_jax.models.max_pool import max_pool_3x3_s2
from sketchreid_jax.models.pointwise import PointwiseConv
from sketchreid_jax.models.resnet import conv_kernel_init


def _randn(shape, seed=0):
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


@pytest.mark.parametrize('use_bias', [False, True])
def test_pointwise_init_is_nn_conv_init(use_bias):
  x = jnp.zeros((1, 3, 3, 6))
  kw = dict(use_bias=use_bias, kernel_init=conv_kernel_init, bias_init=nn.initializers.normal(1.0))
  ours = PointwiseConv(10, **kw).init(jax.random.key(3), x)
  theirs = nn.Conv(10, (1, 1), padding=0, **kw).init(jax.random.key(3), x)
  assert jax.tree.structure(ours) == jax.tree.structure(theirs)
  for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs)):
    assert a.shape == b.shape and a.dtype == b.dtype
    np.testing.assert_array_equal(a, b)
  assert ours['params']['kernel'].shape == (1, 1, 6, 10)


@pytest.mark.parametrize('stride,hw', [(1, (7, 5)), (2, (7, 5)), (2, (8, 6))])
def test_pointwise_values_and_gradients_equal_the_convolution(stride, hw):
  x = _randn((3, *hw, 6), seed=1)
  conv = nn.Conv(4, (1, 1), strides=(stride, stride), padding=0)
  variables = conv.init(jax.random.key(0), x)
  variables = jax.tree.map(lambda v: v + _randn(v.shape, seed=2), variables)  # a non-zero bias
  ours = PointwiseConv(4, strides=stride)
  cot = _randn(conv.apply(variables, x).shape, seed=3)

  def loss(module):
    return lambda v, x: jnp.vdot(module.apply(v, x), cot)

  want_y, got_y = conv.apply(variables, x), ours.apply(variables, x)
  assert got_y.shape == want_y.shape == (3, -(-hw[0] // stride), -(-hw[1] // stride), 4)
  np.testing.assert_allclose(got_y, want_y, rtol=1e-5, atol=1e-5)
  want_g = jax.grad(loss(conv), argnums=(0, 1))(variables, x)
  got_g = jax.grad(loss(ours), argnums=(0, 1))(variables, x)
  for a, b in zip(jax.tree.leaves(got_g), jax.tree.leaves(want_g)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
  # With stride 2 the odd rows and columns take no part: their input gradient is exactly 0.
  if stride == 2:
    assert float(jnp.abs(got_g[1][:, 1::2]).max()) == 0.0
    assert float(jnp.abs(got_g[1][:, ::2, ::2]).min()) > 0.0


def test_pointwise_computes_in_dtype_with_float32_params():
  x = _randn((2, 4, 4, 8))
  module = PointwiseConv(5, use_bias=False, dtype=jnp.bfloat16)
  variables = module.init(jax.random.key(0), x)
  assert variables['params']['kernel'].dtype == jnp.float32
  y = module.apply(variables, x)
  assert y.dtype == jnp.bfloat16
  want = jnp.einsum('nhwc,cd->nhwd', x, variables['params']['kernel'][0, 0])
  np.testing.assert_allclose(y.astype(jnp.float32), want, rtol=3e-2, atol=3e-2)


def test_pointwise_rejects_a_non_nhwc_input():
  with pytest.raises(ValueError, match='NHWC'):
    PointwiseConv(4).init(jax.random.key(0), jnp.zeros((3, 6)))


def _xla_pool(x):
  """The operation the hand-written gradient replaces: a padded max reduce_window."""
  return jax.lax.reduce_window(
    x, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, 2, 2, 1), ((0, 0), (1, 1), (1, 1), (0, 0))
  )


def _naive_pool_grad(x, g):
  """Loop transcription of MaxPool2d's backward: each output's gradient goes to the first
  maximum of its window in row-major order (padding never wins)."""
  x, g = np.asarray(x, np.float64), np.asarray(g, np.float64)
  n, h, w, c = x.shape
  dx = np.zeros_like(x)
  for b in range(n):
    for i in range(g.shape[1]):
      for j in range(g.shape[2]):
        for ch in range(c):
          best, at = -np.inf, None
          for di in range(3):
            for dj in range(3):
              r, s = 2 * i - 1 + di, 2 * j - 1 + dj
              if 0 <= r < h and 0 <= s < w and x[b, r, s, ch] > best:
                best, at = x[b, r, s, ch], (r, s)
          dx[b, at[0], at[1], ch] += g[b, i, j, ch]
  return dx


@pytest.mark.parametrize('shape', [(2, 9, 7, 3), (1, 8, 6, 2)])
def test_max_pool_gradient_follows_the_first_maximum_rule(shape):
  # Small integers: many ties, and every gradient sum is exact in float32.
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.integers(-1, 2, size=shape), jnp.float32)
  x = jax.nn.relu(x)  # zeros everywhere, as after the stem's ReLU
  y, vjp = jax.vjp(max_pool_3x3_s2, x)
  g = jnp.asarray(rng.integers(1, 5, size=y.shape), jnp.float32)
  np.testing.assert_array_equal(y, _xla_pool(x))
  (dx,) = vjp(g)
  want = _naive_pool_grad(x, g)
  np.testing.assert_array_equal(np.asarray(dx, np.float64), want)
  # Ties exist, and XLA's own gradient keeps the same rule.
  assert np.sum(np.asarray(x) == 0) > x.size // 3
  np.testing.assert_array_equal(jax.vjp(_xla_pool, x)[1](g)[0], dx)
  # A rule that splits ties (the gradient of a chain of jnp.maximum) gives other numbers.
  split = jax.vjp(lambda t: _chain_of_maxima(t, y.shape[1:3]), x)[1](g)[0]
  assert not np.array_equal(np.asarray(split), np.asarray(dx))


def _chain_of_maxima(x, out_hw):
  xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-jnp.inf)
  ho, wo = out_hw
  views = [
    xp[:, i : i + 2 * ho - 1 : 2, j : j + 2 * wo - 1 : 2] for i in range(3) for j in range(3)
  ]
  out = views[0]
  for v in views[1:]:
    out = jnp.maximum(out, v)
  return out


@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16])
def test_max_pool_gradient_equals_autodiff_on_real_valued_maps(dtype):
  x = _randn((3, 17, 10, 5), seed=4).astype(dtype)
  y, vjp = jax.vjp(max_pool_3x3_s2, x)
  g = _randn(y.shape, seed=5).astype(dtype)
  want_y, want_vjp = jax.vjp(_xla_pool, x)
  np.testing.assert_array_equal(y, want_y)
  (dx,), (want,) = vjp(g), want_vjp(g)
  assert dx.dtype == dtype and dx.shape == x.shape
  # Overlapping windows sum in another order: the last bit may differ, nothing more
  # (bfloat16 keeps 8 significant bits, so one ulp of a sum near 5 is 0.03).
  rtol = 1e-6 if dtype == jnp.float32 else 2**-7
  np.testing.assert_allclose(
    np.asarray(dx, np.float32), np.asarray(want, np.float32), rtol=rtol, atol=rtol
  )
  assert float(jnp.abs(want.astype(jnp.float32)).max()) > 1.0


def test_max_pool_jits_and_vmaps():
  x = _randn((2, 4, 12, 10, 3), seed=6)
  f = jax.jit(jax.vmap(jax.grad(lambda t: jnp.sum(max_pool_3x3_s2(t) ** 2))))
  want = jax.vmap(jax.grad(lambda t: jnp.sum(_xla_pool(t) ** 2)))(x)
  np.testing.assert_allclose(f(x), want, atol=1e-5)


def _bn_pair(**kw):
  from sketchreid_jax.models.row_masked_batch_norm import RowMaskedBatchNorm

  common = dict(momentum=0.9, epsilon=1e-5, **kw)
  return RowMaskedBatchNorm(**common), nn.BatchNorm(**common)


def _flax_mask(mask, shape):
  return None if mask is None else jnp.broadcast_to(mask[:, None, None, None], shape)


@pytest.mark.parametrize('masked', [False, True])
def test_row_masked_batch_norm_trains_as_flax_batch_norm(masked):
  x = _randn((6, 5, 4, 3), seed=7) * 3.0 + 1.5
  mask = jnp.array([True, False, True, True, False, True]) if masked else None
  ours, flax_bn = _bn_pair(use_running_average=False)
  v_ours, v_flax = ours.init(jax.random.key(0), x, mask), flax_bn.init(jax.random.key(0), x)
  assert jax.tree.structure(v_ours) == jax.tree.structure(v_flax)
  for a, b in zip(jax.tree.leaves(v_ours), jax.tree.leaves(v_flax)):
    np.testing.assert_array_equal(a, b)
  v = jax.tree.map(lambda t: t + _randn(t.shape, seed=8) * 0.1, v_flax)  # non-trivial values
  cot = _randn(x.shape, seed=9)

  def run(module, m):
    def f(params, x):
      y, new = module.apply({**v, 'params': params}, x, mask=m, mutable=['batch_stats'])
      return jnp.vdot(y, cot), (y, new['batch_stats'])

    return jax.value_and_grad(f, argnums=(0, 1), has_aux=True)(v['params'], x)

  (_, (y1, s1)), g1 = run(ours, mask)
  (_, (y2, s2)), g2 = run(flax_bn, _flax_mask(mask, x.shape))
  for a, b in zip(jax.tree.leaves((y1, s1, g1)), jax.tree.leaves((y2, s2, g2))):
    np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-5)
  if masked:
    # The masked rows really are left out: statistics over the kept rows alone are different.
    kept = x[np.asarray(mask)]
    np.testing.assert_allclose(
      s1['mean'], 0.9 * v['batch_stats']['mean'] + 0.1 * kept.mean((0, 1, 2)), rtol=1e-5, atol=1e-6
    )
    assert float(jnp.abs(kept.mean((0, 1, 2)) - x.mean((0, 1, 2))).max()) > 1e-2


def test_row_masked_batch_norm_ignores_non_finite_padding_rows():
  x = _randn((4, 3, 3, 2), seed=10)
  x = x.at[1].set(jnp.nan).at[3].set(jnp.inf)
  mask = jnp.array([True, False, True, False])
  ours, _ = _bn_pair(use_running_average=False)
  v = ours.init(jax.random.key(0), x, mask)
  y, new = ours.apply(v, x, mask, mutable=['batch_stats'])
  assert bool(jnp.all(jnp.isfinite(y[np.asarray(mask)])))
  assert bool(jnp.all(jnp.isfinite(new['batch_stats']['var'])))


def test_row_masked_batch_norm_evaluates_and_synchronises_as_flax():
  x = _randn((2, 4, 3, 3, 5), seed=11)  # 2 devices × 4 rows
  mask = jnp.array([[True, True, False, True], [True, False, True, True]])
  ours, flax_bn = _bn_pair(use_running_average=False, axis_name='d')
  v = flax_bn.init(jax.random.key(0), x[0])
  f_ours = jax.vmap(lambda x, m: ours.apply(v, x, m, mutable=['batch_stats']), axis_name='d')
  f_flax = jax.vmap(
    lambda x, m: flax_bn.apply(v, x, mask=_flax_mask(m, x.shape), mutable=['batch_stats']),
    axis_name='d',
  )
  for a, b in zip(jax.tree.leaves(f_ours(x, mask)), jax.tree.leaves(f_flax(x, mask))):
    np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-5)
  ours_eval, flax_eval = _bn_pair(use_running_average=True, dtype=jnp.bfloat16)
  v = jax.tree.map(lambda t: t + 0.5, v)
  y1, y2 = ours_eval.apply(v, x[0]), flax_eval.apply(v, x[0])
  assert y1.dtype == y2.dtype == jnp.bfloat16
  np.testing.assert_array_equal(y1, y2)


def test_row_masked_batch_norm_wants_one_flag_per_row():
  ours, _ = _bn_pair()
  with pytest.raises(ValueError, match='one flag per row'):
    ours.init(jax.random.key(0), jnp.zeros((3, 2, 2, 4)), jnp.ones((3, 2, 2, 4), bool))
