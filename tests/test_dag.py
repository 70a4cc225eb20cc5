"""Tests for sketchreid_jax.models.dag (DALNet's Dynamic Auxiliary Generator)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sketchreid_jax.models.dag import DAG, edge_kernel_init, grey
from tests.variables import numpy_variables

N, H, W = 2, 6, 7
LUMA = np.array([0.299, 0.587, 0.114])
MEAN = np.array([0.485, 0.456, 0.406])  # ImageNet, as input_pipeline.normalize
STD = np.array([0.229, 0.224, 0.225])


def randn(shape, seed: int = 0) -> np.ndarray:
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def init_variables(model, images):
  return model.init(jax.random.key(0), jnp.asarray(images))


def numpy_dag(images, kernel, mask=None, pad='edge'):
  """A naive 3×3 loop in float64: out-of-range taps read the nearest pixel (edge) or 0."""
  x = np.asarray(images, np.float64)
  if mask is not None:  # in pixel space: un-normalise, multiply, normalise again
    x = ((x * STD + MEAN) * np.asarray(mask, np.float64) - MEAN) / STD
  g = x @ LUMA
  k = np.asarray(kernel, np.float64).reshape(3, 3)
  n, h, w = g.shape
  out = np.zeros_like(g)
  for b in range(n):
    for i in range(h):
      for j in range(w):
        for di in (-1, 0, 1):
          for dj in (-1, 0, 1):
            ii, jj = i + di, j + dj
            if pad == 'edge':
              v = g[b, min(max(ii, 0), h - 1), min(max(jj, 0), w - 1)]
            else:
              v = g[b, ii, jj] if 0 <= ii < h and 0 <= jj < w else 0.0
            out[b, i, j] += k[di + 1, dj + 1] * v
  return out


def test_initial_kernel_is_centre_9_neighbours_minus_0_8_and_the_only_parameter():
  variables = init_variables(DAG(), np.zeros((1, 4, 4, 3), np.float32))
  assert set(variables) == {'params'}
  assert set(variables['params']) == {'edge_kernel'}
  kernel = np.asarray(variables['params']['edge_kernel'])
  assert kernel.shape == (3, 3, 1, 1) and kernel.dtype == np.float32
  want = np.full((3, 3), np.float32(-0.8))
  want[1, 1] = 9.0
  np.testing.assert_array_equal(kernel[:, :, 0, 0], want)
  np.testing.assert_array_equal(edge_kernel_init(9.0, -0.8), want)
  custom = init_variables(DAG(center=5.0, neighbour=-0.5), np.zeros((1, 4, 4, 3), np.float32))
  assert custom['params']['edge_kernel'][1, 1, 0, 0] == 5.0
  assert custom['params']['edge_kernel'][0, 2, 0, 0] == -0.5


def test_grey_is_the_bt601_weighted_sum():
  x = randn((2, 3, 4, 3), seed=1)
  got = grey(jnp.asarray(x), (0.299, 0.587, 0.114))
  assert got.shape == (2, 3, 4, 1)
  want = 0.299 * x[..., 0] + 0.587 * x[..., 1] + 0.114 * x[..., 2]
  np.testing.assert_allclose(got[..., 0], want, rtol=1e-6, atol=1e-6)


def test_flat_image_maps_to_2_6_grey_everywhere_including_borders():
  rgb = np.array([0.7, -1.3, 2.1], np.float32)
  images = np.broadcast_to(rgb, (N, H, W, 3)).astype(np.float32)
  g = float(LUMA @ rgb)
  model = DAG()
  out = np.asarray(model.apply(init_variables(model, images), jnp.asarray(images)))
  assert out.shape == (N, H, W, 3) and out.dtype == np.float32
  # 9 − 8·0.8 = 2.6: the kernel's sum.
  np.testing.assert_allclose(out, 2.6 * g, rtol=1e-5, atol=1e-6)

  # Zero padding reads 0 outside: an edge pixel has 5 neighbours inside, a corner 3.
  zero = DAG(pad_mode='constant')
  out = np.asarray(zero.apply(init_variables(zero, images), jnp.asarray(images)))[..., 0]
  np.testing.assert_allclose(out[:, 1:-1, 1:-1], 2.6 * g, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(out[:, 0, 1:-1], (9 - 0.8 * 5) * g, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(out[:, 1:-1, -1], (9 - 0.8 * 5) * g, rtol=1e-5, atol=1e-6)
  for i, j in ((0, 0), (0, -1), (-1, 0), (-1, -1)):
    np.testing.assert_allclose(out[:, i, j], (9 - 0.8 * 3) * g, rtol=1e-5, atol=1e-6)


def test_vertical_step_edge_responses():
  """Grey a on columns < K, b on columns >= K. A pixel one column left of the edge sees 5 a's
  (left column and above/below) and 3 b's; edge padding makes every row alike."""
  k = 3
  left, right = np.array([0.4, 0.9, -0.2], np.float32), np.array([-1.0, -0.3, 1.5], np.float32)
  a, b = float(LUMA @ left), float(LUMA @ right)
  images = np.empty((N, H, W, 3), np.float32)
  images[:, :, :k] = left
  images[:, :, k:] = right
  model = DAG()
  out = np.asarray(model.apply(init_variables(model, images), jnp.asarray(images)))
  want = np.empty((N, H, W))
  want[:, :, : k - 1] = 2.6 * a
  want[:, :, k - 1] = 9 * a - 0.8 * (5 * a + 3 * b)
  want[:, :, k] = 9 * b - 0.8 * (5 * b + 3 * a)
  want[:, :, k + 1 :] = 2.6 * b
  for c in range(3):
    np.testing.assert_allclose(out[..., c], want, rtol=1e-5, atol=1e-5)


def test_zero_mask_removes_the_background_in_pixel_space():
  images = randn((N, H, W, 3), seed=2)
  model = DAG()
  variables = init_variables(model, images)
  # A zero mask leaves black pixels: normalised black, grey-converted, through a kernel summing
  # to 9 − 8·0.8 = 2.6 (a flat image stays flat with edge padding).
  black = ((0.0 - MEAN) / STD) @ LUMA
  out = model.apply(variables, jnp.asarray(images), jnp.zeros((N, H, W, 1)))
  np.testing.assert_allclose(out, 2.6 * black, rtol=1e-5)

  mask = np.random.default_rng(3).uniform(size=(N, H, W, 1)).astype(np.float32)
  got = model.apply(variables, jnp.asarray(images), jnp.asarray(mask))
  in_pixels = ((images * STD + MEAN) * mask - MEAN) / STD  # the photo the seed masks, normalised
  unmasked = model.apply(variables, jnp.asarray(in_pixels, jnp.float32))
  np.testing.assert_allclose(got, unmasked, rtol=1e-5, atol=1e-5)
  # Not the old convention (the normalised image times the mask, background = mean colour).
  wrong = model.apply(variables, jnp.asarray(images * mask))
  assert np.abs(np.asarray(got) - np.asarray(wrong)).max() > 1


def test_output_channels_are_identical():
  images = randn((N, H, W, 3), seed=4)
  model = DAG()
  out = np.asarray(model.apply(init_variables(model, images), jnp.asarray(images)))
  assert out.shape == (N, H, W, 3)
  assert out[..., 0].std() > 0.1  # not identical by being constant
  np.testing.assert_array_equal(out[..., 1], out[..., 0])
  np.testing.assert_array_equal(out[..., 2], out[..., 0])


@pytest.mark.parametrize('pad', ['edge', 'constant'])
def test_matches_naive_numpy_loop_with_a_random_kernel_and_mask(pad):
  images = randn((N, H, W, 3), seed=5)
  mask = np.random.default_rng(6).uniform(size=(N, H, W, 1)).astype(np.float32)
  model = DAG(pad_mode=pad)
  variables = numpy_variables(model, jnp.asarray(images), seed=7)
  kernel = np.asarray(variables['params']['edge_kernel'])
  # A kernel without the initial symmetry, so a flipped or transposed conv would fail.
  assert np.abs(kernel - kernel[::-1]).max() > 0.1 and np.abs(kernel - kernel.T).max() > 0.1
  want = numpy_dag(images, kernel, mask, pad=pad)
  got = np.asarray(model.apply(variables, jnp.asarray(images), jnp.asarray(mask)))
  for c in range(3):
    np.testing.assert_allclose(got[..., c], want, rtol=1e-5, atol=1e-5)


def test_kernel_gradient_is_nonzero_when_trainable_and_zero_when_frozen():
  images = jnp.asarray(randn((N, H, W, 3), seed=8))
  weights = jnp.asarray(randn((N, H, W, 3), seed=9))
  live, frozen = DAG(), DAG(trainable=False)
  variables = init_variables(live, images)
  assert jax.tree.structure(variables) == jax.tree.structure(init_variables(frozen, images))

  def grad(model):
    def loss(v):
      return jnp.sum(model.apply(v, images) * weights)

    return np.asarray(jax.grad(loss)(variables)['params']['edge_kernel'])

  g = grad(live)
  assert np.all(np.abs(g) > 1e-3)  # every tap receives a gradient
  np.testing.assert_array_equal(grad(frozen), 0.0)
  # Freezing changes the gradient, not the forward.
  np.testing.assert_array_equal(frozen.apply(variables, images), live.apply(variables, images))


def test_bad_inputs_raise_clear_errors():
  model = DAG()
  good = jnp.zeros((1, 4, 4, 3))
  variables = init_variables(model, good)
  with pytest.raises(ValueError, match=r'\(N, H, W, 3\)'):
    model.apply(variables, jnp.zeros((1, 4, 4, 1)))
  with pytest.raises(ValueError, match=r'\(N, H, W, 3\)'):
    model.apply(variables, jnp.zeros((4, 4, 3)))
  with pytest.raises(ValueError, match='mask'):
    model.apply(variables, good, jnp.zeros((1, 4, 4)))
  with pytest.raises(ValueError, match='mask'):
    model.apply(variables, good, jnp.zeros((1, 4, 5, 1)))
  with pytest.raises(ValueError, match='pad_mode'):
    DAG(pad_mode='wrap').apply(variables, good)
  with pytest.raises(ValueError, match='3 channels'):
    grey(jnp.zeros((2, 2, 4)), (0.299, 0.587, 0.114))
