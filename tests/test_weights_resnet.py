"""Tests for weights.resnet (torchvision ResNet-50 → Flax), weights.pretrained (every stream from
one ResNet-50), create_train_state's config.model.init_checkpoint and the resnet50 entry of
tools.convert_weights (docs/design.md §3, §4 Backbone).

The torchvision layout and the reference forward below are written from torchvision's definition
of ``resnet50`` (NCHW activations, OIHW weights, eval-mode BatchNorm), independently of
``sketchreid_jax.models``. torch itself is optional: only the tests marked so need it.
"""

import importlib.util
import logging
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sketchreid_jax import train
from sketchreid_jax.config_base import load_config
from sketchreid_jax.methods import get_method
from sketchreid_jax.models import CMDSL, Baseline, DALNet, ResNet50
from sketchreid_jax.tools import convert_weights
from sketchreid_jax.weights import io as weights_io
from sketchreid_jax.weights import load_pretrained_backbone, torchvision_resnet50
from sketchreid_jax.weights import resnet as weights_resnet
from tests.conftest import REPO
from tests.variables import numpy_variables

EPS = 1e-5
RESNET50_BLOCKS = (3, 4, 6, 3)
# len(torchvision.models.resnet50().state_dict()) and its parameter count.
TORCHVISION_RESNET50_KEYS = 320
TORCHVISION_RESNET50_PARAMS = 25_557_032
HIGHEST = jax.lax.Precision.HIGHEST


# ------------------------------------------------------------ torchvision's layout, independently


def torchvision_shapes(
  blocks=RESNET50_BLOCKS, width=64, num_classes=1000, bottleneck=True, width_per_group=64
):
  """Key → shape of torchvision's ``ResNet(Bottleneck|BasicBlock, blocks)`` state dict
  (``width_per_group=128``: ``wide_resnet50_2``)."""
  shapes = {}

  def bn(name, c):
    for suffix in ('weight', 'bias', 'running_mean', 'running_var'):
      shapes[f'{name}.{suffix}'] = (c,)
    shapes[f'{name}.num_batches_tracked'] = ()

  shapes['conv1.weight'] = (width, 3, 7, 7)
  bn('bn1', width)
  inplanes = width
  for s, n in enumerate(blocks):
    planes = width * 2**s
    inner = planes * width_per_group // 64  # torchvision Bottleneck's `width`
    out = 4 * planes if bottleneck else planes
    for b in range(n):
      p = f'layer{s + 1}.{b}'
      if bottleneck:
        convs = [(inner, inplanes, 1), (inner, inner, 3), (out, inner, 1)]
      else:
        convs = [(planes, inplanes, 3), (planes, planes, 3)]
      for k, (o, i, size) in enumerate(convs, 1):
        shapes[f'{p}.conv{k}.weight'] = (o, i, size, size)
        bn(f'{p}.bn{k}', o)
      # torchvision: a downsample branch when the stride is not 1 or the channels change.
      if b == 0 and (s > 0 or inplanes != out):
        shapes[f'{p}.downsample.0.weight'] = (out, inplanes, 1, 1)
        bn(f'{p}.downsample.1', out)
      inplanes = out
  shapes['fc.weight'] = (num_classes, inplanes)
  shapes['fc.bias'] = (num_classes,)
  return shapes


def random_state_dict(width=64, num_classes=1000, seed=0):
  """Every key of torchvision's resnet50, random values, non-trivial BatchNorm statistics.

  Kernels have std √(1/fan_in) and each residual branch's last BN a small scale, so activations
  stay O(1) through the 16 blocks and the logits are O(1) (a meaningful 1e-4 tolerance).
  """
  rng = np.random.default_rng(seed)
  sd = {}
  for key, shape in torchvision_shapes(width=width, num_classes=num_classes).items():
    name, suffix = key.rsplit('.', 1)
    if suffix == 'num_batches_tracked':
      value = np.array(int(rng.integers(1, 10**6)), np.int64)
    elif suffix == 'running_var':
      value = rng.uniform(0.5, 2.0, shape)
    elif suffix == 'running_mean' or suffix == 'bias':
      value = 0.2 * rng.standard_normal(shape)
    elif len(shape) == 1:  # a BN weight
      last = name.endswith('bn3') or name.endswith('downsample.1')
      value = rng.uniform(0.2, 0.6, shape) if last else rng.uniform(0.7, 1.3, shape)
    else:  # conv (O, I, kh, kw) or Linear (out, in): fan_in = all axes but the first
      value = rng.standard_normal(shape, np.float32) / np.sqrt(np.prod(shape[1:]))
    sd[key] = np.asarray(value, np.int64 if suffix == 'num_batches_tracked' else np.float32)
  return sd


def zeros_state_dict(**kwargs):
  """Keys and shapes only (no memory): for the layout and mismatch tests."""
  return {k: np.broadcast_to(np.float32(0), s) for k, s in torchvision_shapes(**kwargs).items()}


# ------------------------------------------------------------ reference forward (NCHW, OIHW)


def reference_logits(sd, x_nchw, *, last_stride):
  """torchvision ``resnet50`` eval forward: conv1 7×7/2 pad 3, BN, ReLU, max-pool 3×3/2 pad 1;
  Bottlenecks with the stride on the 3×3 conv (v1.5); global average pool; fc."""

  def conv(x, key, stride, pad):
    return jax.lax.conv_general_dilated(
      x,
      sd[key],
      (stride, stride),
      [(pad, pad), (pad, pad)],
      dimension_numbers=('NCHW', 'OIHW', 'NCHW'),
      precision=HIGHEST,
    )

  def bn(x, name):
    c = lambda suffix: sd[f'{name}.{suffix}'][None, :, None, None]
    return (x - c('running_mean')) / jnp.sqrt(c('running_var') + EPS) * c('weight') + c('bias')

  x = jax.nn.relu(bn(conv(x_nchw, 'conv1.weight', 2, 3), 'bn1'))
  x = jax.lax.reduce_window(
    x, -jnp.inf, jax.lax.max, (1, 1, 3, 3), (1, 1, 2, 2), [(0, 0), (0, 0), (1, 1), (1, 1)]
  )
  for s, (n, stride) in enumerate(zip(RESNET50_BLOCKS, (1, 2, 2, last_stride))):
    for b in range(n):
      p, st = f'layer{s + 1}.{b}', stride if b == 0 else 1
      y = jax.nn.relu(bn(conv(x, f'{p}.conv1.weight', 1, 0), f'{p}.bn1'))
      y = jax.nn.relu(bn(conv(y, f'{p}.conv2.weight', st, 1), f'{p}.bn2'))
      y = bn(conv(y, f'{p}.conv3.weight', 1, 0), f'{p}.bn3')
      if b == 0:
        x = bn(conv(x, f'{p}.downsample.0.weight', st, 0), f'{p}.downsample.1')
      x = jax.nn.relu(y + x)
  pooled = jnp.mean(x, axis=(2, 3))
  return jnp.dot(pooled, sd['fc.weight'].T, precision=HIGHEST) + sd['fc.bias']


_reference_jit = jax.jit(reference_logits, static_argnames='last_stride')


@pytest.fixture(scope='module')
def full_sd():
  return random_state_dict(width=64, seed=0)


@pytest.fixture(scope='module')
def full_variables(full_sd):
  return torchvision_resnet50(full_sd)


# ------------------------------------------------------------ the converter


def test_layout_is_torchvision_resnet50():
  shapes = torchvision_shapes()
  assert len(shapes) == TORCHVISION_RESNET50_KEYS
  layout = weights_resnet.expected_layout(64, 1000)
  tracked = {k for k in shapes if k.endswith('num_batches_tracked')}
  assert set(layout) == set(shapes) - tracked
  for key, (_, _, shape) in layout.items():
    assert shape == shapes[key], key
  params = sum(np.prod(s) for k, s in shapes.items() if 'running' not in k and k not in tracked)
  assert params == TORCHVISION_RESNET50_PARAMS


@pytest.mark.parametrize('last_stride', [2, 1])
def test_converted_resnet50_matches_torchvision_reference(full_sd, full_variables, last_stride):
  x = np.random.default_rng(1).standard_normal((1, 288, 144, 3), np.float32)
  model = ResNet50(width=64, last_stride=last_stride, num_classes=1000)
  got = jax.jit(lambda v, x: model.apply(v, x, train=False))(full_variables, x)
  sd = {k: jnp.asarray(v) for k, v in full_sd.items() if not k.endswith('num_batches_tracked')}
  want = _reference_jit(sd, jnp.asarray(x.transpose(0, 3, 1, 2)), last_stride=last_stride)
  got, want = np.asarray(got), np.asarray(want)
  assert got.shape == want.shape == (1, 1000)
  assert 0.1 < np.abs(want).max() < 100  # O(1) logits: the tolerance means something
  diff = float(np.abs(got - want).max())
  print(
    f'last_stride={last_stride}: max |logit diff| = {diff:.3g} (max |logit| '
    f'{np.abs(want).max():.3g})'
  )
  assert diff < 1e-4


def test_converter_layout_transposes_and_options(full_sd, full_variables):
  p, s = full_variables['params'], full_variables['batch_stats']
  np.testing.assert_array_equal(p['conv1']['kernel'], full_sd['conv1.weight'].transpose(2, 3, 1, 0))
  ds = p['layer3']['0']['downsample_conv']['kernel']
  np.testing.assert_array_equal(ds[0, 0], full_sd['layer3.0.downsample.0.weight'][:, :, 0, 0].T)
  np.testing.assert_array_equal(p['fc']['kernel'], full_sd['fc.weight'].T)
  np.testing.assert_array_equal(p['layer4']['2']['bn3']['scale'], full_sd['layer4.2.bn3.weight'])
  np.testing.assert_array_equal(
    s['layer2']['0']['downsample_bn']['var'], full_sd['layer2.0.downsample.1.running_var']
  )
  for leaf in jax.tree.leaves(full_variables):
    assert leaf.dtype == np.float32 and leaf.flags.c_contiguous
  # Without fc: the feature extractor; 'module.' prefixes (DataParallel) are stripped.
  sd = zeros_state_dict(width=8)
  del sd['fc.weight'], sd['fc.bias']
  variables = torchvision_resnet50({f'module.{k}': v for k, v in sd.items()}, width=8)
  assert 'fc' not in variables['params']
  shapes = jax.eval_shape(
    lambda: ResNet50(width=8).init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)
  )
  assert jax.tree.map(np.shape, variables) == jax.tree.map(lambda a: a.shape, dict(shapes))
  # A fine-tuned classifier of another size converts; half of fc does not.
  assert torchvision_resnet50(zeros_state_dict(width=8, num_classes=7), width=8)['params']['fc'][
    'kernel'
  ].shape == (256, 7)
  with pytest.raises(ValueError, match=r"'fc\.weight' but not 'fc\.bias'"):
    torchvision_resnet50({**sd, 'fc.weight': np.zeros((7, 256))}, width=8)


BAD_EDITS = {
  'missing': (
    lambda sd: sd.pop('layer3.5.bn2.running_var'),
    r"missing key 'layer3\.5\.bn2\.running_var' \(expected shape \(256,\)\)",
  ),
  'shape': (
    lambda sd: sd.update({'layer2.0.conv2.weight': np.zeros((128, 128, 1, 1))}),
    r"shape mismatch for 'layer2\.0\.conv2\.weight': file has \(128, 128, 1, 1\), "
    r'ResNet-50 \(width 64\) expects \(128, 128, 3, 3\)',
  ),
  'extra': (
    lambda sd: sd.update({'layer4.2.conv4.weight': np.zeros((3, 3))}),
    r"unexpected key 'layer4\.2\.conv4\.weight'",
  ),
  'stray_num_batches_tracked': (
    lambda sd: sd.update({'fc.num_batches_tracked': np.array(1)}),
    r"unexpected key 'fc\.num_batches_tracked'",
  ),
}


@pytest.mark.parametrize('case', sorted(BAD_EDITS))
def test_converter_rejects_bad_state_dicts(case):
  edit, pattern = BAD_EDITS[case]
  sd = zeros_state_dict()
  edit(sd)
  with pytest.raises(ValueError, match=pattern) as err:
    torchvision_resnet50(sd)
  assert '1 problem(s)' in str(err.value) and 'looks like' not in str(err.value)


@pytest.mark.parametrize(
  'name, kwargs, first',
  [
    ('ResNet-101', dict(blocks=(3, 4, 23, 3)), r"unexpected key 'layer3\.6\.conv1\.weight'"),
    ('ResNet-152', dict(blocks=(3, 8, 36, 3)), r"unexpected key 'layer2\.4\.conv1\.weight'"),
    ('ResNet-18', dict(blocks=(2, 2, 2, 2), bottleneck=False), r"missing key 'layer1\.0\.conv3"),
  ],
)
def test_converter_names_other_depths(name, kwargs, first):
  with pytest.raises(ValueError, match=first) as err:
    torchvision_resnet50(zeros_state_dict(**kwargs))
  text = str(err.value)
  assert f'looks like a torchvision {name} state dict' in text
  assert text.count('\n  ') <= 11 and '… and' in text  # the first ten problems, then a count


def test_converter_names_wide_resnet():
  sd = zeros_state_dict(width_per_group=128)
  assert sd['layer1.0.conv3.weight'].shape == (256, 128, 1, 1)
  with pytest.raises(ValueError, match=r"shape mismatch for 'layer1\.0\.bn1\.bias'") as err:
    torchvision_resnet50(sd)
  assert 'looks like a torchvision wide_resnet50_2 state dict' in str(err.value)


# ------------------------------------------------------------ every stream from one ResNet-50


@pytest.fixture(scope='module')
def narrow_resnet():
  return torchvision_resnet50(random_state_dict(width=8, seed=2), width=8)


def _get(tree, path):
  for part in path.split('/'):
    tree = tree[part]
  return tree


MODELS = {
  'baseline': (
    lambda: Baseline(num_classes=5, width=8),
    {'photo_stem', 'sketch_stem', 'layer1', 'layer2', 'layer3', 'layer4'},
    {'bnneck'},
  ),
  'cmdsl': (
    lambda: CMDSL(num_classes=5, width=8),
    {'photo_stem', 'sketch_stem', 'layer1', 'layer2', 'layer3', 'layer4'},
    {'bnneck', 'ffam_layer1', 'ffam_layer2', 'ffam_layer3', 'ffam_layer4'},
  ),
  'dalnet': (
    lambda: DALNet(num_classes=5, width=8),
    {'photo_stream', 'aux_stream', 'sketch_stream', 'layer3', 'layer4'},
    {'gem', 'style_gem', 'bnneck', 'dag', 'mia', 'mia_bnneck'},
  ),
  'dalnet_two_stream_3_private': (
    lambda: DALNet(num_classes=5, width=8, use_aux=False, use_mia=False, num_private_stages=3),
    {'photo_stream', 'sketch_stream', 'layer4'},
    {'gem', 'bnneck'},
  ),
}


def _model_variables(model):
  x = jnp.zeros((2, 64, 32, 3))
  return jax.tree.map(jnp.asarray, numpy_variables(model, x, x, train=False, seed=4))


@pytest.mark.parametrize('name', sorted(MODELS))
def test_every_stream_gets_its_own_copy_and_heads_stay_fresh(name, narrow_resnet):
  make, want_loaded, want_fresh = MODELS[name]
  model = make()
  variables = _model_variables(model)
  before = jax.tree.map(np.array, variables)
  out, report = load_pretrained_backbone(variables, narrow_resnet, model)

  jax.tree.map(np.testing.assert_array_equal, variables, before)  # the input is not modified
  assert jax.tree.structure(out) == jax.tree.structure(variables)
  init_map = model.resnet50_init_map()
  for target, source in init_map.items():
    for collection in ('params', 'batch_stats'):
      if source == 'conv1' and collection == 'batch_stats':
        continue  # a conv has no statistics
      got, want = _get(out[collection], target), _get(narrow_resnet[collection], source)
      assert jax.tree.structure(got) == jax.tree.structure(want)
      jax.tree.map(np.testing.assert_array_equal, got, want)
  # Each modality-specific part owns its buffers (the train step donates its state).
  pointers = [leaf.unsafe_buffer_pointer() for leaf in jax.tree.leaves(out)]
  assert len(set(pointers)) == len(pointers)
  stems = [t for t, s in init_map.items() if s == 'conv1']
  assert len(stems) == (3 if 'aux_stream' in want_loaded else 2)
  # The heads keep their fresh init, and the report says which is which.
  for top in want_fresh:
    for collection in ('params', 'batch_stats'):
      if top in variables.get(collection, {}):
        jax.tree.map(np.testing.assert_array_equal, out[collection][top], before[collection][top])
  assert set(report.loaded) == want_loaded
  assert set(report.fresh) == want_fresh
  assert report.unused == ('fc',)
  for top, count in report.loaded.items():  # every loaded collection is loaded whole
    assert count == sum(np.size(v) for v in jax.tree.leaves(out['params'][top])), top
  if 'photo_stem' in want_loaded:
    assert report.loaded['photo_stem'] == 7 * 7 * 3 * 8 + 2 * 8  # conv1 + bn1 scale, bias
  text = str(report)
  for top in want_loaded | want_fresh:
    assert top in text
  assert 'not used from the checkpoint: fc' in text


def test_width_mismatch_and_wrong_checkpoints_fail_clearly(narrow_resnet):
  model = Baseline(num_classes=5, width=16)
  variables = _model_variables(model)
  with pytest.raises(ValueError, match=r'width-8 ResNet-50.*width 16 \(config\.model\.width\)'):
    load_pretrained_backbone(variables, narrow_resnet, model)
  model = Baseline(num_classes=5, width=8)
  variables = _model_variables(model)
  u2net_like = {'params': {'stage1': {}, 'outconv': {}}, 'batch_stats': {}}
  with pytest.raises(ValueError, match=r'not a converted ResNet-50.*--model=resnet50'):
    load_pretrained_backbone(variables, u2net_like, model)
  broken = jax.tree.map(lambda a: a, narrow_resnet)
  del broken['batch_stats']['layer2']['1']['bn2']['var']
  broken['params']['layer4']['0']['conv2']['kernel'] = np.zeros((1, 1, 64, 64), np.float32)
  with pytest.raises(ValueError, match='2 problem') as err:
    load_pretrained_backbone(variables, broken, model)
  assert 'missing in the checkpoint: batch_stats/layer2/1/bn2/var' in str(err.value)
  assert 'shape mismatch: params/layer4/0/conv2/kernel is (3, 3, 64, 64)' in str(err.value)
  with pytest.raises(TypeError, match='resnet50_init_map'):
    load_pretrained_backbone(variables, narrow_resnet, ResNet50(width=8))


# ------------------------------------------------------------ create_train_state


def test_create_train_state_loads_init_checkpoint(narrow_resnet, tmp_path, caplog):
  # ResNet-50 weights: the full depth, not the tiny preset's one Bottleneck per stage.
  config = load_config(os.path.join(REPO, 'configs/demo.py:tiny'), model__blocks=(3, 4, 6, 3))
  assert config.model.width == 8
  model = get_method(config.method).model_for(config, 5, None)
  # 'rbg' keys: the same initialisers, far less PRNG compilation than threefry on a small CPU.
  config.model.init_checkpoint = str(tmp_path / 'missing.msgpack')
  with pytest.raises(
    FileNotFoundError, match=r'missing\.msgpack.*convert_weights --model=resnet50'
  ):
    train.create_train_state(config, model, 3, jax.random.key(0, impl='rbg'))

  path = weights_io.save_variables(tmp_path / 'resnet50.msgpack', narrow_resnet)
  config.model.init_checkpoint = str(path)
  with caplog.at_level(logging.INFO, logger='sketchreid_jax.train'):
    state = train.create_train_state(config, model, 3, jax.random.key(0, impl='rbg'))
  saved = weights_io.load_variables(path)
  np.testing.assert_array_equal(
    state.params['layer1']['0']['conv1']['kernel'],
    saved['params']['layer1']['0']['conv1']['kernel'],
  )
  np.testing.assert_array_equal(
    state.params['sketch_stem']['conv1']['kernel'], saved['params']['conv1']['kernel']
  )
  np.testing.assert_array_equal(
    state.batch_stats['layer4']['2']['bn3']['mean'],
    saved['batch_stats']['layer4']['2']['bn3']['mean'],
  )
  assert 'resnet50.msgpack' in caplog.text and 'fresh   bnneck' in caplog.text


# ------------------------------------------------------------ CLI


def test_cli_converts_resnet50_npz(full_sd, full_variables, tmp_path, capsys, monkeypatch):
  np.savez(tmp_path / 'resnet50.npz', **full_sd)
  monkeypatch.chdir(tmp_path)  # the default output is relative: pretrained/resnet50.msgpack
  assert convert_weights.main(['--model=resnet50', f'--input={tmp_path / "resnet50.npz"}']) == 0
  printed = capsys.readouterr().out
  assert 'pretrained/resnet50.msgpack' in printed
  assert 'layer4' in printed and f'{TORCHVISION_RESNET50_PARAMS:,}' in printed
  loaded = weights_io.load_variables(tmp_path / 'pretrained' / 'resnet50.msgpack')
  assert jax.tree.structure(loaded) == jax.tree.structure(full_variables)
  jax.tree.map(np.testing.assert_array_equal, loaded, full_variables)
  # A file that is not a ResNet-50: exit code 2, the first mismatches, nothing written.
  np.savez(tmp_path / 'other.npz', **{'conv1.weight': np.zeros((64, 3, 7, 7), np.float32)})
  code = convert_weights.main(
    ['--model=resnet50', f'--input={tmp_path / "other.npz"}', f'--output={tmp_path / "x.msgpack"}']
  )
  assert code == 2 and "missing key 'bn1.weight'" in capsys.readouterr().err
  assert not (tmp_path / 'x.msgpack').exists()


def test_cli_help_says_where_resnet50_comes_from(capsys):
  with pytest.raises(SystemExit) as exit_info:
    convert_weights.main(['--help'])
  assert exit_info.value.code == 0
  text = capsys.readouterr().out
  for fact in (
    'resnet50-0676ba61.pth',
    'resnet50-19c8e357.pth',
    'download.pytorch.org',
    'needs PyTorch',
    'init_checkpoint',
    'nothing is downloaded',
  ):
    assert fact in text, fact
  assert convert_weights.CONVERTERS['resnet50'].convert is torchvision_resnet50


def test_cli_converts_a_torch_saved_state_dict(full_sd, full_variables, tmp_path, capsys):
  torch = pytest.importorskip(
    'torch', reason='torch (the optional [torch] extra) is not installed: the .pth path is untested'
  )
  state = {k: torch.from_numpy(np.array(v)) for k, v in full_sd.items()}
  torch.save(state, tmp_path / 'resnet50-0676ba61.pth')
  out = tmp_path / 'resnet50.msgpack'
  argv = ['--model=resnet50', f'--input={tmp_path / "resnet50-0676ba61.pth"}', f'--output={out}']
  assert convert_weights.main(argv) == 0, capsys.readouterr().err
  jax.tree.map(np.testing.assert_array_equal, weights_io.load_variables(out), full_variables)


# torchvision's own forward, in a subprocess: importing torchvision pulls in torch._dynamo and
# triton, whose native libraries can crash a process that has already loaded jaxlib/TensorFlow.
_TORCHVISION_FORWARD = """
import sys
import numpy as np
import torch
import torchvision
net = torchvision.models.resnet50()
net.load_state_dict({k: torch.from_numpy(v) for k, v in np.load(sys.argv[1]).items()})
net.eval()
with torch.no_grad():
  np.save(sys.argv[3], net(torch.from_numpy(np.load(sys.argv[2]))).numpy())
"""


def test_torchvision_forward_equals_converted(full_sd, full_variables, tmp_path):
  if importlib.util.find_spec('torchvision') is None:
    pytest.skip(
      'torchvision is not installed: the converted net is checked against the reference '
      'forward above only'
    )
  x = np.random.default_rng(3).standard_normal((1, 288, 144, 3), np.float32)
  np.savez(tmp_path / 'sd.npz', **full_sd)
  np.save(tmp_path / 'x.npy', x.transpose(0, 3, 1, 2))
  subprocess.run(
    [
      sys.executable,
      '-c',
      _TORCHVISION_FORWARD,
      *(str(tmp_path / n) for n in ('sd.npz', 'x.npy', 'y.npy')),
    ],
    check=True,
    timeout=600,
  )
  want = np.load(tmp_path / 'y.npy')
  got = ResNet50(width=64, last_stride=2, num_classes=1000).apply(full_variables, x, train=False)
  diff = float(np.abs(np.asarray(got) - want).max())
  print(f'torchvision resnet50 vs converted: max |logit diff| = {diff:.3g}')
  assert diff < 1e-4
