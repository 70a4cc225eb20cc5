"""Tests for sketchreid_jax.models.mia (DALNet's BAM, ACA and MIA)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sketchreid_jax.models.mia import ACA, BAM, MIA
from tests.variables import numpy_variables

N, H, W = 2, 3, 2
EPS = 1e-5


def randn(shape, seed: int = 0) -> np.ndarray:
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def as64(params):
  return jax.tree.map(lambda v: np.asarray(v, np.float64), params)


def numpy_bam(x, aux, params):
  """BAM in float64: S = σ(fc2(ReLU(fc1([x, aux])))), x' = x + S ⊙ x. Returns (x', S)."""
  x, aux, p = np.asarray(x, np.float64), np.asarray(aux, np.float64), as64(params)
  n, h, w, c = x.shape
  pair = np.concatenate([x.reshape(n, h * w, c), aux.reshape(n, h * w, c)], axis=-1)
  hidden = np.maximum(pair @ p['fc1']['kernel'] + p['fc1']['bias'], 0.0)
  s = 1.0 / (1.0 + np.exp(-(hidden @ p['fc2']['kernel'] + p['fc2']['bias'])))
  s = s.reshape(n, h, w, c)
  return x + s * x, s


def softmax_rows(z):
  e = np.exp(z - z.max(axis=-1, keepdims=True))
  return e / e.sum(axis=-1, keepdims=True)


def numpy_aca(x, aux, params, eps: float = EPS):
  """ACA in float64, one sample at a time: LayerNorm(X + A_xa (A_ax X)) over channels."""
  x, aux, p = np.asarray(x, np.float64), np.asarray(aux, np.float64), as64(params)
  n, h, w, c = x.shape
  out = np.empty_like(x)
  for i in range(n):
    q = x[i].reshape(h * w, c)
    k = aux[i].reshape(-1, c)
    a_xa = softmax_rows(q @ k.T / np.sqrt(c))
    a_ax = softmax_rows(k @ q.T / np.sqrt(c))
    z = q + a_xa @ (a_ax @ q)
    mu = z.mean(axis=-1, keepdims=True)
    var = ((z - mu) ** 2).mean(axis=-1, keepdims=True)
    y = (z - mu) / np.sqrt(var + eps) * p['norm']['scale'] + p['norm']['bias']
    out[i] = y.reshape(h, w, c)
  return out


# ------------------------------------------------------------------------------------------- BAM


def test_bam_zero_output_layer_gives_half_gate():
  c = 8
  x, aux = randn((N, H, W, c), seed=1), randn((N, H, W, c), seed=2)
  bam = BAM(reduction=4)
  variables = numpy_variables(bam, jnp.asarray(x), jnp.asarray(aux), seed=3)
  params = dict(variables['params'])
  params['fc2'] = jax.tree.map(jnp.zeros_like, params['fc2'])
  aligned, s = bam.apply({'params': params}, jnp.asarray(x), jnp.asarray(aux))
  np.testing.assert_array_equal(s, 0.5)
  np.testing.assert_allclose(aligned, 1.5 * x, rtol=1e-6, atol=1e-6)


def test_bam_matches_numpy_transcription():
  c = 12
  x, aux = randn((N, H, W, c), seed=4), randn((N, H, W, c), seed=5)
  bam = BAM(reduction=4)
  variables = numpy_variables(bam, jnp.asarray(x), jnp.asarray(aux), seed=6)
  params = variables['params']
  assert set(params) == {'fc1', 'fc2'}
  assert params['fc1']['kernel'].shape == (2 * c, 3) and params['fc1']['bias'].shape == (3,)
  assert params['fc2']['kernel'].shape == (3, c) and params['fc2']['bias'].shape == (c,)
  want, want_s = numpy_bam(x, aux, params)
  # A useful test needs gates spread over (0, 1).
  assert want_s.min() < 0.3 and want_s.max() > 0.7
  got, s = bam.apply(variables, jnp.asarray(x), jnp.asarray(aux))
  assert got.shape == x.shape and s.shape == x.shape
  np.testing.assert_allclose(s, want_s, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  # The order of the concatenation matters: [x, aux] ≠ [aux, x].
  swapped, _ = numpy_bam(x, x, params)
  assert np.abs(swapped - want).max() > 1e-2


def test_bam_bad_reduction_and_shapes_raise():
  x = jnp.zeros((N, H, W, 8))
  with pytest.raises(ValueError, match='reduction'):
    BAM(reduction=16).init(jax.random.key(0), x, x)
  with pytest.raises(ValueError, match='reduction'):
    BAM(reduction=0).init(jax.random.key(0), x, x)
  with pytest.raises(ValueError, match='same shape'):
    BAM(reduction=4).init(jax.random.key(0), x, jnp.zeros((N, H, W + 1, 8)))
  with pytest.raises(ValueError, match='NHWC'):
    BAM(reduction=4).init(jax.random.key(0), jnp.zeros((N, 8)), jnp.zeros((N, 8)))


# ------------------------------------------------------------------------------------------- ACA


@pytest.fixture(scope='module')
def aca_case():
  c = 5
  x, aux = randn((N, H, W, c), seed=10), randn((N, H, W, c), seed=11)
  aca = ACA()
  variables = numpy_variables(aca, jnp.asarray(x), jnp.asarray(aux), seed=12)
  return aca, variables, x, aux


def test_aca_matches_numpy_transcription(aca_case):
  aca, variables, x, aux = aca_case
  params = variables['params']
  assert set(params) == {'norm'} and set(params['norm']) == {'scale', 'bias'}
  assert params['norm']['scale'].shape == (5,)
  # Random affine, so a LayerNorm that ignored its parameters would fail.
  assert np.abs(np.asarray(params['norm']['scale']) - 1).max() > 0.1
  got = aca.apply(variables, jnp.asarray(x), jnp.asarray(aux))
  assert got.shape == x.shape and got.dtype == jnp.float32
  np.testing.assert_allclose(got, numpy_aca(x, aux, params), rtol=1e-5, atol=1e-5)


def test_aca_is_invariant_to_aux_positions_and_equivariant_to_target_positions(aca_case):
  """A_xa A_ax sums over the auxiliary's positions; permuting the target's positions permutes
  the rows of A_xa and the columns of A_ax alike."""
  aca, variables, x, aux = aca_case
  n, h, w, c = x.shape
  rng = np.random.default_rng(13)
  base = np.asarray(aca.apply(variables, jnp.asarray(x), jnp.asarray(aux)))

  perm = rng.permutation(h * w)
  aux_perm = aux.reshape(n, h * w, c)[:, perm].reshape(aux.shape)
  got = aca.apply(variables, jnp.asarray(x), jnp.asarray(aux_perm))
  np.testing.assert_allclose(got, base, rtol=1e-5, atol=1e-5)
  # Invariant without being blind to aux.
  other = aca.apply(variables, jnp.asarray(x), jnp.asarray(randn(aux.shape, seed=14)))
  assert np.abs(np.asarray(other) - base).max() > 1e-2

  x_perm = x.reshape(n, h * w, c)[:, perm].reshape(x.shape)
  got = np.asarray(aca.apply(variables, jnp.asarray(x_perm), jnp.asarray(aux)))
  want = base.reshape(n, h * w, c)[:, perm].reshape(x.shape)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_aca_accepts_another_aux_size_and_keeps_low_precision_dtype(aca_case):
  aca, variables, x, _ = aca_case
  aux = randn((N, 4, 3, 5), seed=15)
  got = aca.apply(variables, jnp.asarray(x), jnp.asarray(aux))
  np.testing.assert_allclose(got, numpy_aca(x, aux, variables['params']), rtol=1e-5, atol=1e-5)
  low = aca.apply(variables, jnp.asarray(x, jnp.bfloat16), jnp.asarray(aux, jnp.bfloat16))
  assert low.dtype == jnp.bfloat16 and low.shape == x.shape
  with pytest.raises(ValueError, match='channels'):
    aca.apply(variables, jnp.asarray(x), jnp.zeros((N, H, W, 4)))


# ------------------------------------------------------------------------------------------- MIA


def test_mia_matches_composition_of_numpy_bam_and_aca():
  c = 8
  photo, aux, sketch = (randn((N, H, W, c), seed=s) for s in (20, 21, 22))
  mia = MIA(reduction=2)
  variables = numpy_variables(mia, jnp.asarray(photo), jnp.asarray(aux), jnp.asarray(sketch))
  params = variables['params']
  assert set(params) == {'bam_photo', 'bam_sketch', 'aca_photo', 'aca_sketch'}
  assert params['bam_photo']['fc1']['kernel'].shape == (2 * c, c // 2)
  assert set(params['aca_photo']) == {'norm'}

  p_aligned, _ = numpy_bam(photo, aux, params['bam_photo'])
  s_aligned, s_sketch = numpy_bam(sketch, aux, params['bam_sketch'])
  a_aligned = aux + s_sketch * aux
  want_photo = numpy_aca(p_aligned, a_aligned, params['aca_photo'])
  want_sketch = numpy_aca(s_aligned, a_aligned, params['aca_sketch'])

  photo_hat, sketch_hat = mia.apply(
    variables, jnp.asarray(photo), jnp.asarray(aux), jnp.asarray(sketch)
  )
  assert photo_hat.shape == sketch_hat.shape == (N, H, W, c)
  np.testing.assert_allclose(photo_hat, want_photo, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(sketch_hat, want_sketch, rtol=1e-5, atol=1e-5)

  # The photo branch sees the sketch through A' = A + S_s ⊙ A.
  other_sketch = jnp.asarray(randn(sketch.shape, seed=23))
  photo_other, _ = mia.apply(variables, jnp.asarray(photo), jnp.asarray(aux), other_sketch)
  assert np.abs(np.asarray(photo_other) - np.asarray(photo_hat)).max() > 1e-3


def test_mia_shape_mismatch_raises():
  x = jnp.zeros((N, H, W, 8))
  for bad in ((x, x, jnp.zeros((N, H, W, 4))), (x, jnp.zeros((N + 1, H, W, 8)), x)):
    with pytest.raises(ValueError, match='same shape'):
      jax.eval_shape(lambda b=bad: MIA(reduction=2).init(jax.random.key(0), *b))
