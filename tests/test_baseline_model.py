"""Tests for sketchreid_jax.models.heads (GeM, BNNeck) and .baseline (docs/design.md §4 Baseline)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sketchreid_jax.models import PHOTO, SKETCH, Baseline, BNNeck, GeM
from tests.variables import numpy_variables

WIDTH, CLASSES, N, H, W = 8, 5, 2, 64, 32
EPS = 1e-5


def rbg_key(seed: int) -> jax.Array:
  """Init key for real initialisations: threefry's per-shape compilation costs ~1.5 s per
  distinct shape on a small CPU, the 'rbg' implementation ~0.3 s; the initialisers are the same."""
  return jax.random.key(seed, impl='rbg')


def randn(shape, seed: int = 0) -> np.ndarray:
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def numpy_gem(x: np.ndarray, p: float, eps: float = 1e-6) -> np.ndarray:
  """Naive loop over samples, channels and positions."""
  n, h, w, c = x.shape
  out = np.zeros((n, c))
  for i in range(n):
    for k in range(c):
      acc = 0.0
      for a in range(h):
        for b in range(w):
          acc += max(float(x[i, a, b, k]), eps) ** p
      out[i, k] = (acc / (h * w)) ** (1.0 / p)
  return out


# ------------------------------------------------------------------------------------------- GeM


def test_gem_matches_naive_loop_with_clamp():
  x = randn((2, 3, 4, 5), seed=1)  # about half negative: the clamp matters
  got = GeM(p=3.0).apply({}, jnp.asarray(x))
  np.testing.assert_allclose(got, numpy_gem(x, 3.0), rtol=1e-5)


def test_gem_p1_is_average_pooling_and_large_p_approaches_max():
  x = np.abs(randn((2, 4, 4, 3), seed=2)) + 0.1
  np.testing.assert_allclose(GeM(p=1.0).apply({}, jnp.asarray(x)), x.mean(axis=(1, 2)), rtol=1e-5)
  p, hw = 60.0, 16
  big = np.asarray(GeM(p=p).apply({}, jnp.asarray(x)))
  mx = x.max(axis=(1, 2))
  # Power-mean bounds: max·(1/HW)^(1/p) <= gem <= max, and the lower bound -> max as p grows.
  assert np.all(big <= mx * (1 + 1e-5))
  assert np.all(big >= mx * (1.0 / hw) ** (1.0 / p) * (1 - 1e-5))
  assert np.all(big / mx > 0.95)


def test_gem_learnable_p_is_a_parameter_with_the_right_gradient():
  x = np.abs(randn((2, 3, 3, 4), seed=3)) + 0.2
  gem = GeM(p=3.0, learnable=True)
  params = gem.init(rbg_key(0), jnp.asarray(x))
  assert params['params']['p'].shape == (1,) and float(params['params']['p'][0]) == 3.0

  def loss(v):
    return jnp.sum(gem.apply(v, jnp.asarray(x)))

  grad = float(jax.grad(loss)(params)['params']['p'][0])
  h = 1e-3  # central difference of the naive numpy GeM
  fd = (
    numpy_gem(x.astype(np.float64), 3.0 + h).sum() - numpy_gem(x.astype(np.float64), 3.0 - h).sum()
  ) / (2 * h)
  assert abs(grad) > 1e-3
  assert abs(grad - fd) < 1e-3 * max(1.0, abs(fd))
  # A fixed p has no parameter.
  assert GeM(p=3.0).init(rbg_key(0), jnp.asarray(x)) == {}


def test_gem_stays_finite_where_x_to_the_p_underflows():
  # A learnable p grew past 6 in a from-scratch DALNet run; a dead channel (all x clamped to
  # eps = 1e-6) then has eps^p = 0 in float32 and the direct formula's gradient is NaN.
  x = np.abs(randn((2, 3, 3, 4), seed=4)) + 0.2
  x[0, :, :, 1] = -1.0  # dead: GeM = eps for every p
  x[1, :, :, 2] = 1e-5  # tiny: x^p underflows for p >= 9
  x[1, 0, 0, 2] = 3.0  # ... except one position
  gem = GeM(p=3.0, learnable=True)
  for p in (3.0, 8.0, 20.0):
    variables = {'params': {'p': jnp.asarray([p], jnp.float32)}}
    got = gem.apply(variables, jnp.asarray(x))
    np.testing.assert_allclose(got, numpy_gem(x.astype(np.float64), p), rtol=1e-5)
    gx, gv = jax.grad(lambda x_, v: jnp.sum(gem.apply(v, x_)), argnums=(0, 1))(
      jnp.asarray(x), variables
    )
    assert np.all(np.isfinite(gx)) and np.isfinite(float(gv['params']['p'][0]))
    # d GeM / d x at the dead channel is 0 (the clamp), and the p-gradient matches float64.
    assert np.all(np.asarray(gx)[0, :, :, 1] == 0)
    h = 1e-4
    fd = (
      numpy_gem(x.astype(np.float64), p + h).sum() - numpy_gem(x.astype(np.float64), p - h).sum()
    ) / (2 * h)
    assert abs(float(gv['params']['p'][0]) - fd) < 1e-3 * max(1.0, abs(fd))


def test_gem_computes_in_float32_and_rejects_bad_input():
  x = np.abs(randn((1, 2, 2, 3))) + 0.5
  out = GeM().apply({}, jnp.asarray(x, jnp.bfloat16))
  assert out.dtype == jnp.float32
  with pytest.raises(ValueError, match='NHWC'):
    GeM().apply({}, jnp.ones((2, 3)))


# ---------------------------------------------------------------------------------------- BNNeck


def test_bnneck_init_has_no_bias_and_the_reference_init():
  dim, classes = 2048, 200
  variables = BNNeck(classes).init(rbg_key(0), jnp.ones((4, dim)), train=False)
  params = variables['params']
  assert set(params['bn']) == {'scale'}  # frozen zero bias in the reference = no bias
  assert set(params['classifier']) == {'kernel'}
  scale = np.asarray(params['bn']['scale'])
  assert abs(scale.mean() - 1.0) < 0.002  # standard error 0.01/sqrt(2048) ≈ 0.0002
  assert abs(scale.std() / 0.01 - 1) < 0.1
  kernel = np.asarray(params['classifier']['kernel'])
  assert kernel.shape == (dim, classes)
  assert abs(kernel.mean()) < 1e-4 and abs(kernel.std() / 0.001 - 1) < 0.05


def test_bnneck_forward_train_and_eval_against_numpy():
  neck = BNNeck(7)
  feat = randn((6, 16), seed=4) * 2 + 1
  variables = numpy_variables(neck, jnp.asarray(feat), train=False)
  scale = np.asarray(variables['params']['bn']['scale'])
  kernel = np.asarray(variables['params']['classifier']['kernel'])
  stats = {k: np.asarray(v) for k, v in variables['batch_stats']['bn'].items()}

  bn_eval, logits = neck.apply(variables, jnp.asarray(feat), train=False)
  want = (feat - stats['mean']) / np.sqrt(stats['var'] + EPS) * scale
  np.testing.assert_allclose(bn_eval, want, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(logits, want @ kernel, rtol=1e-4, atol=1e-5)
  assert logits.dtype == jnp.float32

  (bn_train, _), updated = neck.apply(
    variables, jnp.asarray(feat), train=True, mutable=['batch_stats']
  )
  mu, var = feat.mean(0), feat.var(0)  # batch statistics (biased variance normalises)
  np.testing.assert_allclose(
    bn_train, (feat - mu) / np.sqrt(var + EPS) * scale, rtol=1e-4, atol=1e-4
  )
  np.testing.assert_allclose(
    updated['batch_stats']['bn']['mean'], 0.9 * stats['mean'] + 0.1 * mu, rtol=1e-5, atol=1e-6
  )


# -------------------------------------------------------------------------------------- Baseline


@pytest.fixture(scope='module')
def net():
  model = Baseline(num_classes=CLASSES, width=WIDTH)
  photos, sketches = randn((N, H, W, 3), seed=10), randn((N, H, W, 3), seed=11)
  variables = numpy_variables(model, photos, sketches, train=False)
  return model, variables, jnp.asarray(photos), jnp.asarray(sketches)


@pytest.fixture(scope='module')
def eval_out(net):
  model, variables, photos, sketches = net
  return model.apply(variables, photos, sketches, train=False)


def test_init_creates_every_parameter():
  model = Baseline(num_classes=CLASSES, width=WIDTH, gem_learnable=True)
  x = jnp.zeros((N, H, W, 3))
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), x, x, train=False))
  params = shapes['params']
  assert set(params) == {
    'photo_stem',
    'sketch_stem',
    'layer1',
    'layer2',
    'layer3',
    'layer4',
    'gem',
    'bnneck',
  }
  assert set(shapes['batch_stats']) == {
    'photo_stem',
    'sketch_stem',
    'layer1',
    'layer2',
    'layer3',
    'layer4',
    'bnneck',
  }
  for stem in ('photo_stem', 'sketch_stem'):
    assert set(params[stem]) == {'conv1', 'bn1'}
    assert params[stem]['conv1']['kernel'].shape == (7, 7, 3, WIDTH)
  assert params['gem']['p'].shape == (1,)
  assert params['bnneck']['classifier']['kernel'].shape == (32 * WIDTH, CLASSES)
  assert [len(params[f'layer{i}']) for i in range(1, 5)] == [3, 4, 6, 3]


def test_forward_keys_shapes_dtypes(eval_out):
  out = eval_out
  d = 32 * WIDTH
  assert set(out) == {'feat', 'bn_feat', 'logits', 'maps'}
  assert set(out['maps']) == {'layer3', 'layer4'}
  assert out['feat'].shape == out['bn_feat'].shape == (2 * N, d)
  assert out['logits'].shape == (2 * N, CLASSES) and out['logits'].dtype == jnp.float32
  # last_stride 1: layer4 keeps layer3's H/16 × W/16 grid.
  assert out['maps']['layer3'].shape == (2 * N, H // 16, W // 16, 16 * WIDTH)
  assert out['maps']['layer4'].shape == (2 * N, H // 16, W // 16, 32 * WIDTH)


def test_head_is_gem_then_bnneck(net, eval_out):
  _, variables, _, _ = net
  out = eval_out
  fmap = np.asarray(out['maps']['layer4'], np.float64)
  feat = np.maximum(fmap, 1e-6) ** 3
  feat = feat.mean(axis=(1, 2)) ** (1 / 3)
  np.testing.assert_allclose(out['feat'], feat, rtol=1e-4, atol=1e-6)
  bn = variables['batch_stats']['bnneck']['bn']
  scale = np.asarray(variables['params']['bnneck']['bn']['scale'])
  bn_feat = (feat - np.asarray(bn['mean'])) / np.sqrt(np.asarray(bn['var']) + EPS) * scale
  np.testing.assert_allclose(out['bn_feat'], bn_feat, rtol=1e-4, atol=1e-5)
  kernel = np.asarray(variables['params']['bnneck']['classifier']['kernel'])
  np.testing.assert_allclose(out['logits'], bn_feat @ kernel, rtol=1e-4, atol=1e-5)


def test_extract_equals_rows_of_call_in_eval_mode(net, eval_out):
  model, variables, photos, sketches = net
  for modality, images, rows in ((PHOTO, photos, slice(0, N)), (SKETCH, sketches, slice(N, 2 * N))):
    got = model.apply(variables, images, modality=modality, method=Baseline.extract)
    assert set(got) == {'feat', 'bn_feat'}
    for key in got:
      np.testing.assert_allclose(got[key], eval_out[key][rows], rtol=1e-5, atol=1e-5)


def test_layer3_maps_can_be_pushed_through_layer4_and_head(net, eval_out):
  """The CMAlign path: stages(start='layer4') + head on layer-3 maps reproduces the forward."""
  model, variables, _, _ = net

  def rest(m, fmap):
    return m.head(m.stages(fmap, start='layer4', stop='layer4', train=False), train=False)

  got = model.apply(variables, eval_out['maps']['layer3'], method=rest)
  for key in ('feat', 'bn_feat', 'logits'):
    np.testing.assert_allclose(got[key], eval_out[key], rtol=1e-5, atol=1e-5)


def test_stems_have_separate_parameters(net):
  model, variables, photos, sketches = net
  images = jnp.concatenate([photos, sketches])
  extract = lambda v, modality: model.apply(v, images, modality=modality, method=Baseline.extract)[
    'feat'
  ]
  before = {m: np.asarray(extract(variables, m)) for m in (PHOTO, SKETCH)}
  assert not np.allclose(before[PHOTO], before[SKETCH])  # the same images, different stems
  perturbed = jax.tree_util.tree_map_with_path(
    lambda path, leaf: (
      leaf + 0.5 if path[1].key == 'sketch_stem' and path[-1].key == 'kernel' else leaf
    ),
    variables,
  )
  after = {m: np.asarray(extract(perturbed, m)) for m in (PHOTO, SKETCH)}
  np.testing.assert_array_equal(after[PHOTO], before[PHOTO])
  assert np.abs(after[SKETCH] - before[SKETCH]).max() > 1e-3


def stem_conv_mean(images, kernel):
  """Channel means of the stem's 7×7/2 pad-3 conv, computed independently (NCHW/OIHW)."""
  y = jax.lax.conv_general_dilated(
    jnp.transpose(images, (0, 3, 1, 2)),
    jnp.transpose(kernel, (3, 2, 0, 1)),
    (2, 2),
    [(3, 3), (3, 3)],
    dimension_numbers=('NCHW', 'OIHW', 'NCHW'),
    precision=jax.lax.Precision.HIGHEST,
  )
  return np.asarray(y, np.float64).mean(axis=(0, 2, 3))


def test_train_mode_updates_batch_stats_and_eval_mode_does_not(net):
  model, variables, photos, sketches = net
  _, unchanged = model.apply(variables, photos, sketches, train=False, mutable=['batch_stats'])
  for a, b in zip(jax.tree.leaves(unchanged), jax.tree.leaves(variables['batch_stats'])):
    np.testing.assert_array_equal(a, b)

  _, updated = model.apply(variables, photos, sketches, train=True, mutable=['batch_stats'])
  new, old, params = updated['batch_stats'], variables['batch_stats'], variables['params']
  assert all(not np.allclose(a, b) for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(old)))
  # Each stem's BN sees only its own half: running mean = 0.9·old + 0.1·(batch mean of its conv).
  for stem, images in (('photo_stem', photos), ('sketch_stem', sketches)):
    want = 0.9 * np.asarray(old[stem]['bn1']['mean']) + 0.1 * stem_conv_mean(
      images, params[stem]['conv1']['kernel']
    )
    np.testing.assert_allclose(new[stem]['bn1']['mean'], want, rtol=1e-4, atol=1e-5)

  # The shared layer1 sees the concatenation of both stems' (train-mode) outputs.
  def stems(m, p, s):
    return jnp.concatenate(
      [m.stem(p, modality=PHOTO, train=True), m.stem(s, modality=SKETCH, train=True)]
    )

  x, _ = model.apply(variables, photos, sketches, method=stems, mutable=['batch_stats'])
  k = np.asarray(params['layer1']['0']['conv1']['kernel'])[0, 0]  # 1×1 conv = matmul
  batch_mean = (np.asarray(x, np.float64) @ k).mean(axis=(0, 1, 2))
  want = 0.9 * np.asarray(old['layer1']['0']['bn1']['mean']) + 0.1 * batch_mean
  np.testing.assert_allclose(new['layer1']['0']['bn1']['mean'], want, rtol=1e-4, atol=1e-5)


def test_bf16_backbone_float32_heads():
  model = Baseline(num_classes=CLASSES, width=WIDTH, dtype=jnp.bfloat16)
  x = jnp.zeros((N, H, W, 3))
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x, x, train=False))
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(variables))
  out = jax.eval_shape(lambda v: model.apply(v, x, x, train=False), variables)
  assert out['maps']['layer4'].dtype == jnp.bfloat16
  assert out['feat'].dtype == out['bn_feat'].dtype == out['logits'].dtype == jnp.float32


def test_bad_inputs_raise_clear_errors(net):
  model, variables, photos, sketches = net
  with pytest.raises(ValueError, match='same shape'):
    model.apply(variables, photos, sketches[:1], train=False)
  with pytest.raises(ValueError, match='modality'):
    model.apply(variables, photos, modality=2, method=Baseline.extract)
  with pytest.raises(ValueError, match='stop'):
    model.apply(
      variables, photos, start='layer1', stop='layer5', train=False, method=Baseline.stages
    )
