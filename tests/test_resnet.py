"""Tests for sketchreid_jax.models.resnet (docs/design.md §3 ResNet50 contract, §4 Backbone)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sketchreid_jax.models import resnet
from sketchreid_jax.models.resnet import (
  Bottleneck,
  ResNet50,
  ResNetStage,
  ResNetStem,
  stage_specs,
)
from tests.variables import numpy_variables

EPS = 1e-5
# sum(p.numel() for p in torchvision.models.resnet50().parameters())
TORCHVISION_RESNET50_PARAMS = 25_557_032


def rbg_key(seed: int) -> jax.Array:
  """Init key for real initialisations: threefry's per-shape compilation costs ~1.5 s per
  distinct shape on a small CPU, the 'rbg' implementation ~0.3 s; the initialisers are the same."""
  return jax.random.key(seed, impl='rbg')


def randn(shape, seed: int = 0) -> jax.Array:
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


def torch_out_size(size: int, kernel: int, stride: int, pad: int) -> int:
  """PyTorch Conv2d/MaxPool2d output size (floor mode)."""
  return (size + 2 * pad - kernel) // stride + 1


def expected_stage_shapes(h: int, w: int, width: int, last_stride: int) -> dict:
  """Independent shape derivation from the PyTorch formulas."""
  h, w = torch_out_size(h, 7, 2, 3), torch_out_size(w, 7, 2, 3)
  h, w = torch_out_size(h, 3, 2, 1), torch_out_size(w, 3, 2, 1)
  shapes = {'stem': (h, w, width)}
  for i, stride in enumerate((1, 2, 2, last_stride)):
    h, w = torch_out_size(h, 3, stride, 1), torch_out_size(w, 3, stride, 1)
    shapes[f'layer{i + 1}'] = (h, w, 4 * width * 2**i)
  return shapes


def all_stage_outputs(module, x, train=False):
  """Run ResNet50 stage by stage through its public methods; also the classifier when present."""
  out = {'stem': module.stem(x, train=train)}
  prev = out['stem']
  for name in resnet.STAGE_NAMES:
    prev = out[name] = module.stages(prev, start=name, stop=name, train=train)
  if module.num_classes is not None:
    out['logits'] = module(x, train=train)
  return out


@pytest.fixture(scope='module')
def small_net():
  """A width-8 ResNet50 (last stride 1, 7 classes) with numpy-filled variables, shared by tests."""
  model = ResNet50(width=8, last_stride=1, num_classes=7)
  return model, numpy_variables(model, jnp.zeros((1, 32, 32, 3)), train=False)


def test_param_count_matches_torchvision():
  model = ResNet50(width=64, last_stride=2, num_classes=1000)
  shapes = jax.eval_shape(
    lambda: model.init(jax.random.key(0), jnp.zeros((1, 224, 224, 3)), train=False)
  )
  assert sum(x.size for x in jax.tree.leaves(shapes['params'])) == TORCHVISION_RESNET50_PARAMS
  assert shapes['params']['fc']['kernel'].shape == (2048, 1000)


@pytest.mark.parametrize('last_stride,layer4_hw', [(1, (18, 9)), (2, (9, 5))])
def test_stage_shapes_full_width_288x144(last_stride, layer4_hw):
  model = ResNet50(width=64, last_stride=last_stride)
  x = jnp.zeros((1, 288, 144, 3))

  def run():
    variables = model.init(jax.random.key(0), x, train=False)
    return model.apply(variables, x, method=all_stage_outputs)

  out = jax.eval_shape(run)
  expected = expected_stage_shapes(288, 144, 64, last_stride)
  assert (
    expected['layer4'][:2] == layer4_hw
  )  # the layer4 grid of docs/design.md §4, derived independently
  for name, shape in expected.items():
    assert out[name].shape == (1,) + shape, name


@pytest.mark.parametrize('last_stride', [1, 2])
def test_real_forward_small_width(small_net, last_stride):
  width, h, w = 8, 70, 38  # not multiples of 32: exercises the floor-mode size formula
  _, variables = small_net  # last_stride changes no parameter shape
  model = ResNet50(width=width, last_stride=last_stride, num_classes=7)
  x = randn((2, h, w, 3), seed=1)
  out = jax.jit(lambda v, x: model.apply(v, x, method=all_stage_outputs))(variables, x)
  for name, shape in expected_stage_shapes(h, w, width, last_stride).items():
    assert out[name].shape == (2,) + shape, name
    assert np.all(np.isfinite(out[name]))
  # __call__ = global average pool of layer4, then fc (torchvision's forward).
  pooled = np.asarray(out['layer4'], np.float64).mean(axis=(1, 2))
  fc = variables['params']['fc']
  want = pooled @ np.asarray(fc['kernel']) + np.asarray(fc['bias'])
  np.testing.assert_allclose(out['logits'], want, rtol=1e-4, atol=1e-4)


def test_param_names_mirror_torchvision(small_net):
  _, variables = small_net
  params = variables['params']
  flat = {'/'.join(k.key for k in path) for path, _ in jax.tree_util.tree_leaves_with_path(params)}
  for key in [
    'conv1/kernel',
    'bn1/scale',
    'bn1/bias',
    'layer1/0/downsample_conv/kernel',
    'layer1/0/downsample_bn/scale',
    'layer4/2/bn3/scale',
    'layer3/5/conv2/kernel',
    'fc/kernel',
    'fc/bias',
  ]:
    assert key in flat, key
  assert 'layer1/1/downsample_conv/kernel' not in flat  # only the first block downsamples
  assert sorted(params) == ['bn1', 'conv1', 'fc', 'layer1', 'layer2', 'layer3', 'layer4']
  assert [len(params[f'layer{i}']) for i in range(1, 5)] == [3, 4, 6, 3]
  assert set(variables['batch_stats']['layer2']['0']['downsample_bn']) == {'mean', 'var'}
  # torchvision's convs are bias-free.
  assert not [k for k in flat if 'conv' in k.split('/')[-2] and k.endswith('/bias')]
  assert params['layer2']['0']['conv2']['kernel'].shape == (3, 3, 16, 16)  # HWIO


def test_stage_specs():
  specs = stage_specs(16, 1)
  assert [tuple(s) for s in specs] == [
    ('layer1', 3, 16, 1),
    ('layer2', 4, 32, 2),
    ('layer3', 6, 64, 2),
    ('layer4', 3, 128, 1),
  ]
  assert stage_specs(16, 2)[-1].stride == 2
  with pytest.raises(ValueError, match='last_stride'):
    stage_specs(16, 3)
  with pytest.raises(ValueError, match='width'):
    stage_specs(0, 1)
  with pytest.raises(ValueError, match='start'):
    resnet.stage_range('layer0', 'layer2')
  with pytest.raises(ValueError, match='comes after'):
    resnet.stage_range('layer3', 'layer2')


# ------------------------------------------------------------- PyTorch-semantics reference (NCHW)


def ref_conv(x_nchw, kernel_hwio, stride, pad):
  w_oihw = jnp.transpose(kernel_hwio, (3, 2, 0, 1))
  padding = pad if isinstance(pad, str) else [(pad, pad), (pad, pad)]
  return jax.lax.conv_general_dilated(
    x_nchw,
    w_oihw,
    (stride, stride),
    padding,
    dimension_numbers=('NCHW', 'OIHW', 'NCHW'),
    precision=jax.lax.Precision.HIGHEST,
  )


def ref_bn_eval(x_nchw, params, stats):
  c = lambda a: jnp.asarray(a)[None, :, None, None]
  return (x_nchw - c(stats['mean'])) / jnp.sqrt(c(stats['var']) + EPS) * c(params['scale']) + c(
    params['bias']
  )


def ref_maxpool(x_nchw, pad):
  return jax.lax.reduce_window(
    x_nchw,
    -jnp.inf,
    jax.lax.max,
    (1, 1, 3, 3),
    (1, 1, 2, 2),
    [(0, 0), (0, 0), (pad, pad), (pad, pad)],
  )


def to_nchw(x):
  return jnp.transpose(x, (0, 3, 1, 2))


def to_nhwc(x):
  return jnp.transpose(x, (0, 2, 3, 1))


def test_stem_matches_pytorch_semantics():
  # Even sizes: there Flax 'SAME' pads (2,3) for the 7×7/2 conv instead of PyTorch's (3,3).
  x = randn((2, 40, 24, 3), seed=0)
  stem = ResNetStem(width=8)
  variables = numpy_variables(stem, x, train=False)
  out = stem.apply(variables, x, train=False)
  p, s = variables['params'], variables['batch_stats']

  def reference(conv_pad):
    y = ref_conv(to_nchw(x), p['conv1']['kernel'], 2, conv_pad)
    y = jax.nn.relu(ref_bn_eval(y, p['bn1'], s['bn1']))
    return to_nhwc(ref_maxpool(y, 1))

  want = reference(3)
  assert out.shape == want.shape == (2, 10, 6, 8)
  assert float(jnp.max(jnp.abs(out - want))) < 1e-4
  # The comparison can fail: 'SAME' padding gives visibly different numbers.
  same = reference('SAME')
  assert same.shape == want.shape and float(jnp.max(jnp.abs(same - want))) > 1e-2


def test_stride2_bottleneck_matches_pytorch_semantics():
  x = randn((2, 10, 8, 16), seed=0)
  block = Bottleneck(features=8, strides=2, downsample=True)
  variables = numpy_variables(block, x, train=False)
  out = block.apply(variables, x, train=False)
  p, s = variables['params'], variables['batch_stats']
  xn = to_nchw(x)
  bn = lambda y, name: ref_bn_eval(y, p[name], s[name])
  y = jax.nn.relu(bn(ref_conv(xn, p['conv1']['kernel'], 1, 0), 'bn1'))
  y = jax.nn.relu(bn(ref_conv(y, p['conv2']['kernel'], 2, 1), 'bn2'))  # v1.5: stride on the 3×3
  y = bn(ref_conv(y, p['conv3']['kernel'], 1, 0), 'bn3')
  r = bn(ref_conv(xn, p['downsample_conv']['kernel'], 2, 0), 'downsample_bn')
  want = to_nhwc(jax.nn.relu(y + r))
  assert out.shape == want.shape == (2, 5, 4, 32)
  assert float(jnp.max(jnp.abs(out - want))) < 1e-4


def test_bottleneck_without_downsample_rejects_channel_change():
  with pytest.raises(ValueError, match='downsample=True'):
    jax.eval_shape(
      lambda: Bottleneck(features=8).init(jax.random.key(0), jnp.zeros((1, 4, 4, 16)), train=False)
    )


def test_resnet50_equals_composed_stem_and_stages(small_net):
  """ResNet50's top-level conv1/bn1 are exactly a ResNetStem; layerN exactly a ResNetStage."""
  model, variables = small_net
  x = randn((2, 48, 32, 3), seed=0)
  logits = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
  sub = lambda name: {c: variables[c][name] for c in ('params', 'batch_stats')}
  stem_vars = {
    'params': {k: variables['params'][k] for k in ('conv1', 'bn1')},
    'batch_stats': {'bn1': variables['batch_stats']['bn1']},
  }
  y = ResNetStem(width=8).apply(stem_vars, x, train=False)
  for spec in stage_specs(8, 1):
    stage = ResNetStage(spec.num_blocks, spec.features, spec.stride)
    y = jax.jit(lambda v, y: stage.apply(v, y, train=False))(sub(spec.name), y)
  fc = variables['params']['fc']
  want = np.asarray(y).mean(axis=(1, 2)) @ np.asarray(fc['kernel']) + np.asarray(fc['bias'])
  np.testing.assert_allclose(logits, want, rtol=1e-4, atol=1e-4)


def test_real_init_follows_torchvision():
  """Real initialisers: kaiming fan_out convs, BN 1/0, zero-init of bn3 when asked, and
  nn.Linear's U(±1/sqrt(fan_in)) for fc. Only layer4 and fc of the ResNet50 are initialised
  (through ``method=``): a full init costs ~20 s of PRNG compilation on a small CPU."""
  width, classes = 8, 400
  model = ResNet50(width=width, num_classes=classes, zero_init_last_bn=True)
  layer4_in = jnp.zeros((1, 4, 4, 16 * width))
  params = model.init(rbg_key(0), layer4_in, method=lambda m, x: m.layer4(x, train=False))[
    'params'
  ]['layer4']
  # The largest kernels give tight std estimates: conv2 (3,3,64,64), downsample (1,1,128,256).
  for kernel in (params['1']['conv2']['kernel'], params['0']['downsample_conv']['kernel']):
    k = np.asarray(kernel)
    fan_out = np.prod(k.shape[:2]) * k.shape[-1]
    assert abs(k.std() / np.sqrt(2.0 / fan_out) - 1) < 0.05
    assert abs(k.mean()) < 0.05 * k.std()
  for block in params.values():
    assert np.all(block['bn3']['scale'] == 0)  # ResNet50 passed zero_init_last_bn through
    assert np.all(block['bn2']['scale'] == 1) and np.all(block['bn2']['bias'] == 0)
  fc = model.init(rbg_key(1), jnp.zeros((1, 32 * width)), method=lambda m, f: m.fc(f))['params'][
    'fc'
  ]
  bound = 1 / np.sqrt(32 * width)
  for leaf in (fc['kernel'], fc['bias']):
    assert np.abs(leaf).max() <= bound
  # The bias is drawn with the weight's fan_in (not its own size), as nn.Linear does.
  assert np.abs(fc['bias']).max() > 0.8 * bound
  assert abs(np.asarray(fc['kernel']).std() / (bound / np.sqrt(3)) - 1) < 0.05


def test_real_init_stem_and_default_bn3():
  stem_params = ResNetStem(width=16).init(rbg_key(0), jnp.zeros((1, 16, 16, 3)), train=False)[
    'params'
  ]
  k = np.asarray(stem_params['conv1']['kernel'])  # (7, 7, 3, 16): fan_out = 7·7·16
  assert abs(k.std() / np.sqrt(2.0 / (7 * 7 * 16)) - 1) < 0.1
  assert np.all(stem_params['bn1']['scale'] == 1) and np.all(stem_params['bn1']['bias'] == 0)
  block = Bottleneck(features=4).init(rbg_key(0), jnp.zeros((1, 2, 2, 16)), train=False)['params']
  assert np.all(block['bn3']['scale'] == 1)  # zero_init_last_bn defaults to False


def test_bf16_compute_keeps_float32_params():
  model = ResNet50(width=8, dtype=jnp.bfloat16)
  x = jnp.ones((1, 32, 32, 3))
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(variables))
  out = jax.eval_shape(lambda v: model.apply(v, x, train=False), variables)
  assert out.dtype == jnp.bfloat16


def test_bn_axis_name_synchronises_batch_statistics():
  """Two simulated devices (vmap with a named axis) must update BN stats as one big batch."""
  x = randn((4, 16, 16, 3), seed=0) + 1.0
  plain, synced = ResNetStem(width=8), ResNetStem(width=8, bn_axis_name='data')
  variables = numpy_variables(plain, x, train=False)
  _, want = plain.apply(variables, x, train=True, mutable=['batch_stats'])

  def per_device(xs):
    return synced.apply(variables, xs, train=True, mutable=['batch_stats'])[1]

  got = jax.vmap(per_device, axis_name='data')(x.reshape(2, 2, 16, 16, 3))
  for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got)):
    np.testing.assert_allclose(b[0], a, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(b[1], a, rtol=1e-5, atol=1e-6)
  # Without the axis name each half would give different statistics.
  half = plain.apply(variables, x[:2], train=True, mutable=['batch_stats'])[1]
  assert not np.allclose(jax.tree.leaves(half)[0], jax.tree.leaves(want)[0], atol=1e-4)


def test_blocks_set_the_depth_of_each_stage_of_every_model():
  from sketchreid_jax import models
  from sketchreid_jax.models.dalnet import DALNet
  from sketchreid_jax.models.resnet import STAGE_NAMES

  blocks = (1, 2, 1, 3)
  assert [s.num_blocks for s in stage_specs(8, 1, blocks)] == list(blocks)
  for bad in ((1, 1, 1), (0, 1, 1, 1), (1, 1, 1, 1.5)):
    with pytest.raises(ValueError, match='blocks must be 4 positive ints'):
      stage_specs(8, 1, bad)
  photos = jnp.zeros((2, 32, 16, 3))
  shapes = jax.eval_shape(
    lambda: models.Baseline(num_classes=3, width=8, blocks=blocks).init(
      jax.random.key(0), photos, photos, train=False
    )
  )['params']
  assert [len(shapes[name]) for name in STAGE_NAMES] == list(blocks)
  # DALNet: the private stages in each stream, the rest shared, each with its own depth.
  shapes = jax.eval_shape(
    lambda: DALNet(num_classes=3, width=8, blocks=blocks, num_private_stages=2).init(
      jax.random.key(0), photos, photos, train=False
    )
  )['params']
  assert [len(shapes['photo_stream'][n]) for n in STAGE_NAMES[:2]] == list(blocks[:2])
  assert [len(shapes[n]) for n in STAGE_NAMES[2:]] == list(blocks[2:])
