"""Tests for sketchreid_jax.models.ffam (CMDSL Eqs. 1–5) and .cmdsl (FFAM after the stages)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sketchreid_jax.models import CMDSL, FFAM, PHOTO, SKETCH, Baseline, ffam_combine
from tests.variables import numpy_variables

WIDTH, CLASSES, N, H, W = 8, 5, 2, 64, 32
EPS = 1e-5
STAGES = ('layer1', 'layer2', 'layer3', 'layer4')


def randn(shape, seed: int = 0) -> np.ndarray:
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def styled_map(shape, seed: int) -> np.ndarray:
  """A map whose channels have their own offset and spread (a 'style'), so GAP and IN matter."""
  rng = np.random.default_rng(seed)
  n, _, _, c = shape
  scale = rng.uniform(0.3, 3.0, (n, 1, 1, c))
  shift = rng.normal(0.0, 2.0, (n, 1, 1, c))
  return (rng.normal(size=shape) * scale + shift).astype(np.float32)


def numpy_ffam(f, params, eps: float = EPS):
  """CMDSL Eqs. 1–5 transcribed in float64, the instance norm as a naive loop.

  Returns (f', m)."""
  f = np.asarray(f, np.float64)
  n, h, w, c = f.shape
  f_in = np.empty_like(f)
  for i in range(n):
    for k in range(c):
      ch = f[i, :, :, k]
      mu = ch.sum() / (h * w)
      var = ((ch - mu) ** 2).sum() / (h * w)  # biased
      f_in[i, :, :, k] = (ch - mu) / np.sqrt(var + eps)  # Eq. 1
  f_minus = f - f_in  # Eq. 2
  p = {k: {kk: np.asarray(vv, np.float64) for kk, vv in v.items()} for k, v in params.items()}
  g = f.mean(axis=(1, 2))  # global average pooling
  hidden = np.maximum(g @ p['fc1']['kernel'] + p['fc1']['bias'], 0.0)
  m = 1.0 / (1.0 + np.exp(-(hidden @ p['fc2']['kernel'] + p['fc2']['bias'])))  # Eq. 3
  f_mask = m[:, None, None, :] * f_minus  # Eq. 4
  return f_in + f_mask, m  # Eq. 5


# ------------------------------------------------------------------------------------------ FFAM


def test_ffam_matches_numpy_transcription_of_eqs_1_to_5():
  f = styled_map((3, 5, 4, 40), seed=1)
  ffam = FFAM(reduction=8)
  variables = numpy_variables(ffam, jnp.asarray(f), seed=2)
  params = variables['params']
  assert set(params) == {'fc1', 'fc2'}
  assert params['fc1']['kernel'].shape == (40, 5) and params['fc1']['bias'].shape == (5,)
  assert params['fc2']['kernel'].shape == (5, 40) and params['fc2']['bias'].shape == (40,)

  want, m = numpy_ffam(f, params)
  # A useful test needs masks that are neither all 0 nor all 1.
  assert m.min() < 0.4 and m.max() > 0.6
  got = ffam.apply(variables, jnp.asarray(f))
  assert got.shape == f.shape and got.dtype == jnp.float32
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_ffam_hidden_width_is_c_over_r_at_least_one():
  for channels, reduction, hidden in ((64, 16, 4), (40, 16, 2), (8, 16, 1)):
    shapes = jax.eval_shape(
      lambda c=channels, r=reduction: FFAM(reduction=r).init(
        jax.random.key(0), jnp.zeros((1, 2, 2, c))
      )
    )
    assert shapes['params']['fc1']['kernel'].shape == (channels, hidden)
    assert shapes['params']['fc2']['kernel'].shape == (hidden, channels)


def test_combine_mask_one_is_identity_and_mask_zero_is_instance_norm():
  f = styled_map((2, 6, 5, 7), seed=3)
  ones, zeros = jnp.ones((2, 7)), jnp.zeros((2, 7))
  np.testing.assert_allclose(ffam_combine(jnp.asarray(f), ones), f, rtol=1e-6, atol=1e-6)

  out = np.asarray(ffam_combine(jnp.asarray(f), zeros), np.float64)
  np.testing.assert_allclose(out.mean(axis=(1, 2)), 0.0, atol=1e-5)
  # Unit variance up to eps: Var[f_IN] = Var[f] / (Var[f] + eps) exactly.
  var = np.asarray(f, np.float64).var(axis=(1, 2))
  np.testing.assert_allclose(out.var(axis=(1, 2)), var / (var + EPS), rtol=1e-5)
  np.testing.assert_allclose(out.var(axis=(1, 2)), 1.0, rtol=1e-4)


def test_combine_interpolates_linearly_in_the_mask():
  f = styled_map((2, 4, 3, 5), seed=4)
  m = np.random.default_rng(5).uniform(size=(2, 5)).astype(np.float32)
  f_in = np.asarray(ffam_combine(jnp.asarray(f), jnp.zeros((2, 5))), np.float64)
  got = ffam_combine(jnp.asarray(f), jnp.asarray(m))
  want = f_in + m[:, None, None, :] * (f - f_in)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_mask_zero_removes_per_channel_style():
  """Instance norm is invariant to a per-sample, per-channel positive scale and shift (up to eps,
  which is made negligible here); with the mask open the style comes back."""
  f = styled_map((2, 6, 4, 8), seed=6)
  rng = np.random.default_rng(7)
  scale = rng.uniform(0.5, 3.0, (2, 1, 1, 8)).astype(np.float32)
  shift = rng.normal(0.0, 3.0, (2, 1, 1, 8)).astype(np.float32)
  styled = f * scale + shift
  zeros, ones = jnp.zeros((2, 8)), jnp.ones((2, 8))
  base = ffam_combine(jnp.asarray(f), zeros, eps=1e-10)
  restyled = ffam_combine(jnp.asarray(styled), zeros, eps=1e-10)
  np.testing.assert_allclose(restyled, base, rtol=1e-5, atol=1e-5)
  opened = ffam_combine(jnp.asarray(styled), ones)
  assert np.abs(np.asarray(opened) - np.asarray(ffam_combine(jnp.asarray(f), ones))).max() > 0.5


def test_gradient_is_finite_on_a_constant_map():
  """Zero variance: f_IN = 0, so f' = m ⊗ f; eps keeps 1/sqrt(Var + eps) and its gradient finite."""
  rng = np.random.default_rng(8)
  f = np.broadcast_to(rng.normal(size=(2, 1, 1, 16)), (2, 5, 3, 16)).astype(np.float32)
  ffam = FFAM(reduction=4)
  variables = numpy_variables(ffam, jnp.asarray(f), seed=9)
  out = ffam.apply(variables, jnp.asarray(f))
  _, m = numpy_ffam(f, variables['params'])
  # atol: the float32 mean of a constant channel can be one ulp off (~1e-7 here), and IN scales
  # that residue by 1/sqrt(eps) ≈ 316, as PyTorch's InstanceNorm2d does.
  np.testing.assert_allclose(out, m[:, None, None, :] * f, rtol=1e-5, atol=2e-4)

  weights = jnp.asarray(randn(f.shape, seed=10))
  loss = lambda v, x: jnp.sum(ffam.apply(v, x) * weights)
  grads = jax.grad(loss, argnums=(0, 1))(variables, jnp.asarray(f))
  leaves = jax.tree.leaves(grads)
  assert all(np.all(np.isfinite(g)) for g in leaves)
  assert np.abs(np.asarray(grads[1])).max() > 0  # not finite by being switched off


def test_low_precision_input_keeps_its_dtype_and_float32_statistics():
  """A large offset on a small spread: bfloat16 has a resolution of 0.25 at 50, so statistics in
  bfloat16 would be off by ~0.1 after normalising; float32 statistics leave only the final cast."""
  f = styled_map((2, 4, 4, 8), seed=11) + 50.0
  low_f = jnp.asarray(f, jnp.bfloat16)
  zeros = jnp.zeros((2, 8), jnp.bfloat16)
  low = ffam_combine(low_f, zeros)
  assert low.dtype == jnp.bfloat16
  # The instance norm of the bf16-rounded input, in float64.
  x = np.asarray(low_f.astype(jnp.float32), np.float64)
  mu, var = x.mean(axis=(1, 2), keepdims=True), x.var(axis=(1, 2), keepdims=True)
  want = (x - mu) / np.sqrt(var + EPS)
  # bf16 rounding of values below 4 in magnitude is at most 2^-7.
  np.testing.assert_allclose(np.asarray(low, np.float32), want, rtol=0, atol=2e-2)


def test_bad_inputs_raise_clear_errors():
  f = jnp.zeros((2, 3, 3, 4))
  with pytest.raises(ValueError, match='NHWC'):
    ffam_combine(jnp.zeros((2, 3, 4)), jnp.zeros((2, 4)))
  with pytest.raises(ValueError, match=r'\(N, C\)'):
    ffam_combine(f, jnp.zeros((2, 3)))
  with pytest.raises(ValueError, match='eps'):
    ffam_combine(f, jnp.zeros((2, 4)), eps=0.0)
  with pytest.raises(ValueError, match='reduction'):
    FFAM(reduction=0).init(jax.random.key(0), f)
  x = jnp.zeros((1, H, W, 3))
  for bad in ('layer3', ('layer5',), ('layer2', 'layer2')):
    with pytest.raises(ValueError, match='ffam_stages'):
      jax.eval_shape(
        lambda b=bad: CMDSL(num_classes=CLASSES, width=WIDTH, ffam_stages=b).init(
          jax.random.key(0), x, x, train=False
        )
      )


# ----------------------------------------------------------------------------------------- CMDSL


@pytest.fixture(scope='module')
def net():
  model = CMDSL(num_classes=CLASSES, width=WIDTH)
  photos, sketches = randn((N, H, W, 3), seed=20), randn((N, H, W, 3), seed=21)
  variables = numpy_variables(model, photos, sketches, train=False, seed=22)
  # The same shared parameters without the FFAMs: what Baseline sees.
  base_variables = {
    'params': {k: v for k, v in variables['params'].items() if not k.startswith('ffam_')},
    'batch_stats': variables['batch_stats'],
  }
  return model, variables, base_variables, jnp.asarray(photos), jnp.asarray(sketches)


@pytest.fixture(scope='module')
def eval_out(net):
  model, variables, _, photos, sketches = net
  return model.apply(variables, photos, sketches, train=False)


def test_param_tree_has_one_shared_ffam_per_listed_stage():
  x = jnp.zeros((N, H, W, 3))
  base = jax.eval_shape(
    lambda: Baseline(num_classes=CLASSES, width=WIDTH).init(jax.random.key(0), x, x, train=False)
  )

  def tree(**kwargs):
    model = CMDSL(num_classes=CLASSES, width=WIDTH, **kwargs)
    return jax.eval_shape(lambda: model.init(jax.random.key(0), x, x, train=False))

  default = tree()
  assert set(default['params']) == set(base['params']) | {f'ffam_{s}' for s in STAGES}
  # FFAM has no batch statistics.
  assert set(default['batch_stats']) == set(base['batch_stats'])
  for i, stage in enumerate(STAGES):
    channels = 4 * WIDTH * 2**i  # stage outputs 4·width·(1, 2, 4, 8)
    fc1 = default['params'][f'ffam_{stage}']['fc1']['kernel']
    assert fc1.shape == (channels, max(1, channels // 16))

  assert jax.tree.structure(tree(ffam_stages=())) == jax.tree.structure(base)
  assert set(tree(ffam_stages=('layer3',))['params']) == set(base['params']) | {'ffam_layer3'}
  assert set(tree(ffam_reduction=4)['params']['ffam_layer1']['fc1']) == {'kernel', 'bias'}
  assert tree(ffam_reduction=4)['params']['ffam_layer1']['fc1']['kernel'].shape == (32, 8)


def test_without_ffam_equals_baseline_and_with_ffam_differs(net, eval_out):
  _, _, base_variables, photos, sketches = net
  want = Baseline(num_classes=CLASSES, width=WIDTH).apply(
    base_variables, photos, sketches, train=False
  )
  plain = CMDSL(num_classes=CLASSES, width=WIDTH, ffam_stages=()).apply(
    base_variables, photos, sketches, train=False
  )
  for key in ('feat', 'bn_feat', 'logits'):
    np.testing.assert_allclose(plain[key], want[key], rtol=1e-6, atol=1e-6)
  for key in ('layer3', 'layer4'):
    np.testing.assert_allclose(plain['maps'][key], want['maps'][key], rtol=1e-6, atol=1e-6)
  assert np.abs(np.asarray(eval_out['feat']) - np.asarray(want['feat'])).max() > 1e-2


def test_forward_is_stem_then_stage_and_numpy_ffam_per_stage(net, eval_out):
  """An independent composition: Baseline's stems and single stages, the numpy FFAM after each
  stage with that stage's (shared) parameters, then Baseline's head."""
  _, variables, base_variables, photos, sketches = net
  base = Baseline(num_classes=CLASSES, width=WIDTH)

  def stems(m, p, s):
    return jnp.concatenate(
      [m.stem(p, modality=PHOTO, train=False), m.stem(s, modality=SKETCH, train=False)]
    )

  x = base.apply(base_variables, photos, sketches, method=stems)
  maps = {}
  for stage in STAGES:
    x = base.apply(base_variables, x, start=stage, stop=stage, train=False, method=Baseline.stages)
    x = jnp.asarray(numpy_ffam(x, variables['params'][f'ffam_{stage}'])[0], jnp.float32)
    maps[stage] = x
  want = base.apply(base_variables, x, train=False, method=Baseline.head)

  for key in ('layer3', 'layer4'):
    np.testing.assert_allclose(eval_out['maps'][key], maps[key], rtol=1e-4, atol=1e-4)
  for key in ('feat', 'bn_feat', 'logits'):
    np.testing.assert_allclose(eval_out[key], want[key], rtol=1e-4, atol=1e-4)


def test_extract_equals_rows_of_call_in_eval_mode(net, eval_out):
  model, variables, _, photos, sketches = net
  # Both modalities' images in one batch of the forward's size: eager ops compiled for that shape
  # are reused (a new batch size recompiles every op), and the other rows must not leak in.
  images = jnp.concatenate([photos, sketches])
  for modality, rows in ((PHOTO, slice(0, N)), (SKETCH, slice(N, 2 * N))):
    got = model.apply(variables, images, modality=modality, method=CMDSL.extract)
    assert set(got) == {'feat', 'bn_feat'}
    for key in got:
      np.testing.assert_allclose(got[key][rows], eval_out[key][rows], rtol=1e-5, atol=1e-5)


def test_layer3_maps_through_layer4_and_head_apply_the_layer4_ffam(net, eval_out):
  """The CMAlign path: stages(start='layer4') + head on the (post-FFAM) layer-3 maps reproduces
  the forward only because layer4's FFAM runs there too."""
  model, variables, base_variables, _, _ = net

  def rest(m, fmap):
    return m.head(m.stages(fmap, start='layer4', stop='layer4', train=False), train=False)

  got = model.apply(variables, eval_out['maps']['layer3'], method=rest)
  for key in ('feat', 'bn_feat', 'logits'):
    np.testing.assert_allclose(got[key], eval_out[key], rtol=1e-5, atol=1e-5)
  without = Baseline(num_classes=CLASSES, width=WIDTH).apply(
    base_variables, eval_out['maps']['layer3'], method=rest
  )
  assert np.abs(np.asarray(without['feat']) - np.asarray(eval_out['feat'])).max() > 1e-2
