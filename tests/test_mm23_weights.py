"""Tests for weights.mm23 (the MM'23 release's trained model → our variables), the mm23 entry of
tools.convert_weights (a workdir) and inference.embed(..., fuse=True).

The release's key set and its evaluation forward below are transcribed from its own code
(github.com/Lin-Kayla/subjectivity-sketch-reid: model.py, resnet.py, test_mask1k.py), in NCHW with
OIHW weights, independently of ``sketchreid_jax.models``: the visible/thermal stem (conv1, bn1,
ReLU, max-pool 3×3/2 padded with -inf), the release's Bottleneck (stride on conv2 and on the
downsample conv; layer4 stride 1), ``Non_local`` with its full HW × HW affinity, GeMP
``(mean(x³) + 1e-12)^(1/3)`` and ``F.normalize``. torch is not needed: the state dict is random
numpy arrays carrying every key of ``model(...).state_dict()`` at width 8 with the real depth
(3, 4, 6, 3), saved as .npz.
"""

import contextlib
import dataclasses
import io
import json
import os
import re
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sketchreid_jax import inference
from sketchreid_jax.config_base import load_config
from sketchreid_jax.tools import convert_weights
from sketchreid_jax.weights import io as weights_io
from sketchreid_jax.weights import mm23
from tests.conftest import REPO

WIDTH = 8
BLOCKS = (3, 4, 6, 3)
NUM_CLASSES = 7
IMAGE_SIZE = (64, 32)  # (H, W): stem maps 16×8, layer4 maps 4×2
EPS = 1e-5
HIGHEST = jax.lax.Precision.HIGHEST
MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)
# A few keys of the CLIP ViT-B/32 that the release keeps inside its model (shapes shrunk where big).
CLIP_KEYS = {
  'clip.positional_embedding': (77, 512),
  'clip.text_projection': (512, 512),
  'clip.logit_scale': (),
  'clip.visual.class_embedding': (768,),
  'clip.visual.conv1.weight': (768, 3, 4, 4),
  'clip.transformer.resblocks.0.attn.in_proj_weight': (1536, 512),
  'clip.transformer.resblocks.0.ln_1.weight': (512,),
  'clip.ln_final.bias': (512,),
}


# ------------------------------------------------------------ the release's keys, independently


def release_shapes(width=WIDTH, blocks=BLOCKS, num_classes=NUM_CLASSES):
  """Key → shape of the release's ``model(class_num).state_dict()`` (resnet.py's ResNet has no
  fc/avgpool parameters: its ``resnet50`` builds conv1, bn1 and layer1–4 only)."""
  shapes = {}

  def bn(name, c):
    for suffix in ('weight', 'bias', 'running_mean', 'running_var'):
      shapes[f'{name}.{suffix}'] = (c,)
    shapes[f'{name}.num_batches_tracked'] = ()

  def resnet(prefix):
    shapes[f'{prefix}.conv1.weight'] = (width, 3, 7, 7)
    bn(f'{prefix}.bn1', width)
    inplanes = width
    for s, n in enumerate(blocks):
      planes = width * 2**s
      for b in range(n):
        p = f'{prefix}.layer{s + 1}.{b}'
        for k, (o, i, size) in enumerate(
          [(planes, inplanes, 1), (planes, planes, 3), (4 * planes, planes, 1)], 1
        ):
          shapes[f'{p}.conv{k}.weight'] = (o, i, size, size)
          bn(f'{p}.bn{k}', o)
        if b == 0:  # _make_layer: stride != 1 or inplanes != 4·planes, true for every stage
          shapes[f'{p}.downsample.0.weight'] = (4 * planes, inplanes, 1, 1)
          bn(f'{p}.downsample.1', 4 * planes)
        inplanes = 4 * planes
    return inplanes

  resnet('visible_module.visible')
  resnet('thermal_module.thermal')
  pool_dim = resnet('base_resnet.base')
  for conv in ('g.0', 'theta', 'phi'):  # Non_local(64) at the release's width: C → 1
    shapes[f'nonLocal.{conv}.weight'] = (1, width, 1, 1)
    shapes[f'nonLocal.{conv}.bias'] = (1,)
  shapes['nonLocal.W.0.weight'] = (width, 1, 1, 1)
  shapes['nonLocal.W.0.bias'] = (width,)
  bn('nonLocal.W.1', width)
  bn('bottleneck', pool_dim)
  shapes['classifier.weight'] = (num_classes, pool_dim)
  shapes['cmalign.maskFc.weight'] = (18 * 9, 512)
  shapes.update(CLIP_KEYS)
  return shapes


def release_state_dict(seed=0, **kwargs):
  """Every release key, random values that keep activations O(1) through the 16 Bottlenecks."""
  rng = np.random.default_rng(seed)
  sd = {}
  for key, shape in release_shapes(**kwargs).items():
    name, suffix = key.rsplit('.', 1)
    if suffix == 'num_batches_tracked':
      sd[key] = np.array(int(rng.integers(1, 10**6)), np.int64)
      continue
    if key == 'bottleneck.bias':
      value = np.zeros(shape)  # frozen at its zero init in the release
    elif key.startswith('clip.') and len(shape) < 2:
      value = rng.standard_normal(shape)
    elif suffix == 'running_var':
      value = rng.uniform(0.5, 2.0, shape)
    elif suffix in ('running_mean', 'bias'):
      value = 0.2 * rng.standard_normal(shape)
    elif len(shape) == 1:  # a BatchNorm weight; the residual branches' last ones small
      last = name.endswith(('bn3', 'downsample.1'))
      value = rng.uniform(0.2, 0.6, shape) if last else rng.uniform(0.7, 1.3, shape)
    else:  # conv (O, I, kh, kw) or Linear (out, in): std √(1 / fan_in)
      value = rng.standard_normal(shape) / np.sqrt(np.prod(shape[1:]))
    sd[key] = np.asarray(value, np.float32)
  # The Non-local block must not be the identity (its W.1 starts at weight 0, bias 0).
  sd['nonLocal.W.1.weight'] = rng.uniform(0.5, 1.0, (WIDTH,)).astype(np.float32)
  sd['nonLocal.W.1.bias'] = (0.3 * rng.standard_normal(WIDTH)).astype(np.float32)
  used = {k: jnp.asarray(v) for k, v in sd.items() if not k.endswith('num_batches_tracked')}
  stats = _batch_statistics(used, nchw(images(8, seed + 100)), nchw(images(8, seed + 200)))
  for name, (mean, var) in stats.items():
    sd[f'{name}.running_mean'] = np.asarray(mean, np.float32)
    sd[f'{name}.running_var'] = np.asarray(var, np.float32) * rng.uniform(0.8, 1.25, var.shape)
  return sd


# ------------------------------------------------------------ the release's eval forward (NCHW)


def _conv(x, w, stride=1, pad=0, bias=None):
  y = jax.lax.conv_general_dilated(
    x,
    w,
    (stride, stride),
    [(pad, pad), (pad, pad)],
    dimension_numbers=('NCHW', 'OIHW', 'NCHW'),
    precision=HIGHEST,
  )
  return y if bias is None else y + bias[None, :, None, None]


def _bn(sd, x, name, stats=None):
  """Eval-mode BatchNorm2d; with ``stats`` (a dict), the batch's statistics instead, recorded."""
  c = lambda suffix: sd[f'{name}.{suffix}'][None, :, None, None]
  if stats is None:
    mean, var = c('running_mean'), c('running_var')
  else:
    mean, var = jnp.mean(x, axis=(0, 2, 3)), jnp.var(x, axis=(0, 2, 3))
    stats[name] = (mean, var)
    mean, var = mean[None, :, None, None], var[None, :, None, None]
  return (x - mean) / jnp.sqrt(var + EPS) * c('weight') + c('bias')


def release_stem(sd, x, prefix, stats=None):
  """visible_module / thermal_module: conv1, bn1, relu, maxpool (3, 2, padding 1)."""
  x = _bn(sd, _conv(x, sd[f'{prefix}.conv1.weight'], 2, 3), f'{prefix}.bn1', stats)
  window = ((1, 1, 3, 3), (1, 1, 2, 2), [(0, 0), (0, 0), (1, 1), (1, 1)])
  return jax.lax.reduce_window(jax.nn.relu(x), -jnp.inf, jax.lax.max, *window)


def release_base(sd, x, stats=None):
  """base_resnet: layer1..layer4 of resnet.py, last_conv_stride=1, Bottleneck stride on conv2."""
  bn = lambda y, name: _bn(sd, y, name, stats)
  for s, (n, stride) in enumerate(zip(BLOCKS, (1, 2, 2, 1))):
    for b in range(n):
      p, st = f'base_resnet.base.layer{s + 1}.{b}', stride if b == 0 else 1
      y = jax.nn.relu(bn(_conv(x, sd[f'{p}.conv1.weight']), f'{p}.bn1'))
      y = jax.nn.relu(bn(_conv(y, sd[f'{p}.conv2.weight'], st, 1), f'{p}.bn2'))
      y = bn(_conv(y, sd[f'{p}.conv3.weight']), f'{p}.bn3')
      if b == 0:
        x = bn(_conv(x, sd[f'{p}.downsample.0.weight'], st), f'{p}.downsample.1')
      x = jax.nn.relu(y + x)
  return x


def release_non_local(sd, x, stats=None):
  """model.py's Non_local.forward: f = θᵀφ (HW × HW) / N, y = f g, z = BN(W(y)) + x."""
  b, _, h, w = x.shape
  conv = lambda name: _conv(x, sd[f'nonLocal.{name}.weight'], bias=sd[f'nonLocal.{name}.bias'])
  g_x = conv('g.0').reshape(b, 1, -1).transpose(0, 2, 1)
  theta_x = conv('theta').reshape(b, 1, -1).transpose(0, 2, 1)
  phi_x = conv('phi').reshape(b, 1, -1)
  f = jnp.matmul(theta_x, phi_x, precision=HIGHEST)
  y = jnp.matmul(f / f.shape[-1], g_x, precision=HIGHEST).transpose(0, 2, 1).reshape(b, 1, h, w)
  w_y = _conv(y, sd['nonLocal.W.0.weight'], bias=sd['nonLocal.W.0.bias'])
  return _bn(sd, w_y, 'nonLocal.W.1', stats) + x


def release_embed(sd, stem_maps):
  """base_resnet → GeMP (p 3, eps 1e-12 inside) → F.normalize: ``feat4_p_norm``."""
  x = release_base(sd, stem_maps)
  pooled = (jnp.mean(x.reshape(*x.shape[:2], -1) ** 3, axis=-1) + 1e-12) ** (1 / 3)
  return pooled / jnp.maximum(jnp.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)


@jax.jit
def release_eval(sd, photos, sketches):
  """(photo embeddings, single-sketch embeddings, the fused multi-query embedding of all the
  sketches as one identity, the same without the Non-local block) as test_mask1k.py computes
  them with ``net(x, x, None, style, modal)['feat4_p_norm']``."""
  photo_maps = release_stem(sd, photos, 'visible_module.visible')
  sketch_maps = release_stem(sd, sketches, 'thermal_module.thermal')
  fused = jnp.mean(sketch_maps, axis=0, keepdims=True)  # torch.mean(thermal_module(i[:k]), 0)
  # Eval-mode BatchNorm is per sample: one pass through the shared stages serves all four.
  maps = [photo_maps, sketch_maps, release_non_local(sd, fused), fused]
  out = release_embed(sd, jnp.concatenate(maps))
  return tuple(jnp.split(out, np.cumsum([len(m) for m in maps])[:-1]))


@jax.jit
def _batch_statistics(sd, photos, sketches):
  """Every used BatchNorm's statistics on a calibration batch, layer after layer, as training
  leaves them: the stems on their own modality, the Non-local block on the fused map, the shared
  stages on both modalities and the fused map. (Random running statistics would leave a large
  image-independent offset in every layer, and embeddings that hardly depend on the image.)"""
  stats = {}
  photo_maps = release_stem(sd, photos, 'visible_module.visible', stats)
  sketch_maps = release_stem(sd, sketches, 'thermal_module.thermal', stats)
  fused = release_non_local(sd, jnp.mean(sketch_maps, axis=0, keepdims=True), stats)
  release_base(sd, jnp.concatenate([photo_maps, sketch_maps, fused]), stats)
  return stats


def images(n, seed):
  """uint8 (n, H, W, 3) images with coarse structure and a per-image colour cast (i.i.d. pixel
  noise averages out in the pooled feature; these differ in what the network keeps)."""
  rng = np.random.default_rng(seed)
  h, w = IMAGE_SIZE
  coarse = rng.uniform(-80, 80, (n, 8, 4, 3)) + rng.uniform(60, 200, (n, 1, 1, 3))
  x = np.kron(coarse, np.ones((1, h // 8, w // 4, 1))) + rng.normal(0, 15, (n, h, w, 3))
  return np.clip(x, 0, 255).astype(np.uint8)


def nchw(images_uint8):
  """The evaluation's preprocessing at the model's own size: ImageNet normalisation, NCHW."""
  x = (images_uint8.astype(np.float32) / 255.0 - MEAN) / STD
  return jnp.asarray(x.transpose(0, 3, 1, 2))


# ------------------------------------------------------------ fixtures


@pytest.fixture(scope='module')
def release_sd():
  return release_state_dict()


@pytest.fixture(scope='module')
def converted(release_sd, tmp_path_factory):
  """(workdir, CLI stdout): the release state dict as .npz through the CLI into a workdir."""
  folder = tmp_path_factory.mktemp('mm23')
  np.savez(folder / 'mm23_best.npz', **release_sd)
  workdir = folder / 'workdir'
  argv = ['--model=mm23', f'--input={folder / "mm23_best.npz"}', f'--output={workdir}']
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    assert convert_weights.main(argv) == 0
  # The release evaluates at 288×144; a small size keeps the test fast (shapes do not depend on
  # it, so editing config.json is all it takes).
  config_path = workdir / 'config.json'
  config = json.loads(config_path.read_text())
  config['data']['image_size'] = list(IMAGE_SIZE)
  config_path.write_text(json.dumps(config))
  return workdir, out.getvalue()


@pytest.fixture(scope='module')
def trained(converted):
  return inference.load_trained(str(converted[0]))


# ------------------------------------------------------------ end to end against the release


def test_converted_workdir_embeds_as_the_release(release_sd, trained):
  """Photo, single-sketch and fused multi-query embeddings equal the release's within 1e-4."""
  photos, sketches = images(2, 1), images(3, 2)
  got_photo = inference.embed(trained, photos, modality='photo')
  got_sketch = inference.embed(trained, sketches, modality='sketch')
  got_fused = inference.embed(trained, sketches, modality='sketch', fuse=True)

  sd = {k: jnp.asarray(v) for k, v in release_sd.items() if not k.endswith('num_batches_tracked')}
  want = [np.asarray(w) for w in release_eval(sd, nchw(photos), nchw(sketches))]
  want_photo, want_sketch, want_fused, want_fused_plain = want
  assert got_photo.shape == (2, 32 * WIDTH) and got_sketch.shape == (3, 32 * WIDTH)
  assert got_fused.shape == (1, 32 * WIDTH)
  for name, got, ref in (
    ('photo', got_photo, want_photo),
    ('sketch', got_sketch, want_sketch),
    ('fused', got_fused, want_fused),
  ):
    diff = float(np.abs(got - ref).max())
    print(f'{name}: max |embedding diff| = {diff:.2g}')
    assert diff < 1e-4, name
  # The checks mean something: the streams differ, and the Non-local block changes the result.
  assert np.abs(want_photo[0] - want_photo[1]).max() > 1e-2
  assert np.abs(want_fused - want_fused_plain).max() > 1e-2
  assert np.abs(want_fused - want_sketch.mean(0)).max() > 1e-3


def test_training_into_a_converted_workdir_is_refused(converted):
  from sketchreid_jax.config_base import ConfigError
  from sketchreid_jax.validate import validate

  workdir, _ = converted
  config = inference.config_from_json(str(workdir / 'config.json'))
  before = (workdir / 'config.json').read_text()
  with pytest.raises(ConfigError, match='--mode=evaluate'):
    validate(config, str(workdir), num_devices=1, num_processes=1)
  validate(config, str(workdir), training=False)  # evaluating it is fine
  assert (workdir / 'config.json').read_text() == before


def test_workdir_contents(converted):
  workdir, printed = converted
  assert sorted(os.listdir(workdir)) == ['checkpoints', 'config.json', 'train_meta.json']
  meta = json.loads((workdir / 'train_meta.json').read_text())
  assert meta['num_classes'] == NUM_CLASSES
  assert meta['label_to_pid'] == list(range(NUM_CLASSES))
  assert meta['converted_from']['model'] == 'mm23'
  config = inference.config_from_json(str(workdir / 'config.json'))
  assert config.method == 'cmdsl' and config.model.width == WIDTH
  assert tuple(config.model.blocks) == BLOCKS and tuple(config.model.ffam_stages) == ()
  assert config.model.sketch_fusion and config.model.fusion_nonlocal
  assert config.eval.multi_query_aggregate == 'stem' and config.eval.feature == 'feat'
  # The CLI says what it dropped, by prefix, and how to evaluate the result.
  for fact in (
    r'width 8, blocks 3-4-6-3, 7 identities',
    rf'clip\.\* +{len(CLIP_KEYS)}\n',
    r'cmalign\.\* +1\n',
    r'visible_module\.visible\.layer4\.\* +\d+\n',
    r'base_resnet\.base\.bn1\.\* +5\n',
    r'num_batches_tracked',
    r'--mode=evaluate',
    r'label_to_pid: 0\.\.6',
  ):
    assert re.search(fact, printed), fact


def test_load_trained_restores_every_tensor(release_sd, trained):
  p, s = trained.variables['params'], trained.variables['batch_stats']
  np.testing.assert_array_equal(
    p['bnneck']['classifier']['kernel'], release_sd['classifier.weight'].T
  )
  np.testing.assert_array_equal(p['bnneck']['bn']['scale'], release_sd['bottleneck.weight'])
  np.testing.assert_array_equal(s['bnneck']['bn']['var'], release_sd['bottleneck.running_var'])
  np.testing.assert_array_equal(
    p['fusion_block']['g']['kernel'], release_sd['nonLocal.g.0.weight'].transpose(2, 3, 1, 0)
  )
  np.testing.assert_array_equal(
    p['fusion_block']['W_bn']['scale'], release_sd['nonLocal.W.1.weight']
  )
  np.testing.assert_array_equal(
    p['sketch_stem']['conv1']['kernel'],
    release_sd['thermal_module.thermal.conv1.weight'].transpose(2, 3, 1, 0),
  )
  np.testing.assert_array_equal(
    s['layer4']['0']['downsample_bn']['mean'],
    release_sd['base_resnet.base.layer4.0.downsample.1.running_mean'],
  )
  assert trained.step == 0 and trained.checkpoint.endswith('checkpoints')
  num_leaves = len(jax.tree.leaves(trained.variables))
  assert num_leaves == len(mm23.expected_layout(WIDTH, BLOCKS, NUM_CLASSES))


def test_fused_flip_averages_both_orientations(trained):
  """eval.flip: the sketches and their mirror images are fused and embedded separately and the
  features averaged, so mirroring every input leaves the fused embedding unchanged."""
  config = trained.config.copy_and_resolve_references()
  config.eval.flip = True
  flipped = dataclasses.replace(trained, config=config)
  sketches = images(3, 2)
  both = inference.embed(flipped, sketches, modality='sketch', fuse=True)
  mirrored = inference.embed(flipped, sketches[:, :, ::-1], modality='sketch', fuse=True)
  plain = inference.embed(trained, sketches, modality='sketch', fuse=True)
  assert both.shape == (1, 32 * WIDTH)
  np.testing.assert_allclose(both, mirrored, atol=1e-5)
  assert np.abs(both - plain).max() > 1e-3


def test_embed_resizes_as_the_evaluation(trained):
  """data.resize_antialias (on in the preset): embed PIL-Lanczos-resizes on load, as
  datasets.load does for the evaluation, instead of the pipeline's bilinear resize."""
  from PIL import Image

  assert trained.config.data.resize_antialias
  h, w = IMAGE_SIZE
  large = np.kron(images(2, 3), np.ones((1, 2, 2, 1), np.uint8))  # (2, 2H, 2W, 3)
  lanczos = np.stack(
    [np.asarray(Image.fromarray(x).resize((w, h), Image.Resampling.LANCZOS)) for x in large]
  )
  got = inference.embed(trained, large, modality='photo')
  np.testing.assert_allclose(got, inference.embed(trained, lanczos, modality='photo'), atol=1e-6)
  config = trained.config.copy_and_resolve_references()
  config.data.resize_antialias = False
  bilinear = inference.embed(dataclasses.replace(trained, config=config), large, modality='photo')
  assert np.abs(got - bilinear).max() > 1e-4


def test_fuse_is_for_sketches_only(trained):
  image = np.zeros((*IMAGE_SIZE, 3), np.uint8)
  with pytest.raises(ValueError, match="fuse=True.*modality='photo'"):
    inference.embed(trained, [image], modality='photo', fuse=True)


# ------------------------------------------------------------ the converter's checks


def test_report_lists_unused_keys_by_prefix(release_sd):
  variables, report = mm23.mm23_from_state_dict(release_sd)
  assert (report.width, report.blocks, report.num_classes) == (WIDTH, BLOCKS, NUM_CLASSES)
  shapes = release_shapes()
  per_stem = sum(1 for k in shapes if k.startswith('visible_module.visible.layer'))
  unused = report.unused
  assert unused['clip.*'] == len(CLIP_KEYS) and unused['cmalign.*'] == 1
  assert sum(unused[f'visible_module.visible.layer{i}.*'] for i in range(1, 5)) == per_stem
  assert sum(unused[f'thermal_module.thermal.layer{i}.*'] for i in range(1, 5)) == per_stem
  assert unused['base_resnet.base.conv1.*'] == 1 and unused['base_resnet.base.bn1.*'] == 5
  # Every key is either converted or reported, none twice.
  assert report.used + sum(unused.values()) == len(shapes)
  assert 'fusion_block' in variables['params'] and 'fusion_block' in variables['batch_stats']
  # DataParallel's prefix and stray fc entries of older ResNet copies are accepted.
  more = {f'module.{k}': v for k, v in release_sd.items()}
  more['module.base_resnet.base.fc.weight'] = np.zeros((3, 32 * WIDTH), np.float32)
  assert mm23.mm23_from_state_dict(more)[1].unused['base_resnet.base.fc.*'] == 1


def test_missing_and_misshapen_keys_are_named(release_sd):
  sd = dict(release_sd)
  del sd['base_resnet.base.layer3.2.conv2.weight']
  sd['nonLocal.W.0.weight'] = np.zeros((WIDTH, 2, 1, 1), np.float32)
  with pytest.raises(ValueError) as err:
    mm23.mm23_from_state_dict(sd)
  text = str(err.value)
  missing = "missing key 'base_resnet.base.layer3.2.conv2.weight' (expected shape (32, 32, 3, 3))"
  assert missing in text
  assert "shape mismatch for 'nonLocal.W.0.weight': file has (8, 2, 1, 1)" in text
  assert 'expects (8, 1, 1, 1)' in text and '2 problem(s)' in text


def test_unknown_key_and_wrong_kind_of_file(release_sd):
  sd = dict(release_sd, **{'nonLocal.extra.weight': np.zeros(3, np.float32)})
  with pytest.raises(ValueError, match=r"unexpected key 'nonLocal\.extra\.weight'"):
    mm23.mm23_from_state_dict(sd)
  torchvision = {'conv1.weight': np.zeros((64, 3, 7, 7)), 'layer1.0.conv1.weight': np.zeros(1)}
  with pytest.raises(ValueError, match=r"no 'visible_module\.visible\.conv1\.weight'.*resnet50"):
    mm23.mm23_from_state_dict(torchvision)


def test_nonzero_neck_bias_is_refused(release_sd):
  sd = dict(release_sd)
  sd['bottleneck.bias'] = np.full_like(sd['bottleneck.bias'], 0.01)
  with pytest.raises(ValueError, match=r"'bottleneck\.bias' is not zero.*our BNNeck has none"):
    mm23.mm23_from_state_dict(sd)


def test_safetensors_input(release_sd, tmp_path):
  safetensors = pytest.importorskip(
    'safetensors.numpy', reason='the optional safetensors package is not installed'
  )
  path = tmp_path / 'mm23.safetensors'
  safetensors.save_file({k: np.ascontiguousarray(v) for k, v in release_sd.items()}, str(path))
  variables, _ = mm23.mm23_from_state_dict(weights_io.read_state_dict(path))
  reference, _ = mm23.mm23_from_state_dict(release_sd)
  jax.tree.map(np.testing.assert_array_equal, variables, reference)


def test_release_checkpoint_is_unwrapped_from_net(release_sd, tmp_path, monkeypatch):
  """train_mask1k.py saves {'net': state_dict, 'cmc', 'mAP', 'epoch'} as *.t (torch stubbed)."""
  path = tmp_path / 'sysu_best.t'
  path.write_bytes(b'stub')
  checkpoint = {'net': release_sd, 'cmc': np.ones(20), 'mAP': np.float64(0.5), 'epoch': 41}
  fake_torch = types.SimpleNamespace(load=lambda *a, **k: checkpoint)
  monkeypatch.setitem(sys.modules, 'torch', fake_torch)
  sd = weights_io.read_state_dict(path)
  assert set(sd) == set(release_sd)


# ------------------------------------------------------------ the CLI's output folder


def test_cli_refuses_a_folder_it_did_not_write(tmp_path, capsys):
  target = tmp_path / 'mine'
  target.mkdir()
  (target / 'notes.txt').write_text('keep me')
  code = convert_weights.main(
    ['--model=mm23', f'--input={tmp_path / "absent.npz"}', f'--output={target}']
  )
  assert code == 2 and 'is not empty and is not a previous conversion' in capsys.readouterr().err
  assert os.listdir(target) == ['notes.txt'] and (target / 'notes.txt').read_text() == 'keep me'
  code = convert_weights.main(['--model=mm23', f'--input={tmp_path / "absent.npz"}'])
  assert code == 2 and 'needs --output=DIR' in capsys.readouterr().err


def test_cli_replaces_a_previous_conversion(release_sd, tmp_path, capsys):
  workdir = tmp_path / 'again'
  convert = lambda name: convert_weights.main(
    ['--model=mm23', f'--input={tmp_path / name}', f'--output={workdir}']
  )
  sd = dict(release_sd)
  np.savez(tmp_path / 'a.npz', **sd)
  assert convert('a.npz') == 0
  (workdir / 'evaluate').mkdir()  # what a user's evaluation leaves behind is kept
  sd['classifier.weight'] = sd['classifier.weight'] * 2
  np.savez(tmp_path / 'b.npz', **sd)
  assert convert('b.npz') == 0
  assert 'kept from the previous conversion: evaluate' in capsys.readouterr().out
  entries = ['checkpoints', 'config.json', 'evaluate', 'train_meta.json']
  assert sorted(os.listdir(workdir)) == entries
  umask = os.umask(0)
  os.umask(umask)
  assert os.stat(workdir).st_mode & 0o777 == 0o777 & ~umask  # mkdir's mode, not mkdtemp's 0700
  assert not [e for e in os.listdir(tmp_path) if 'converting' in e]  # no staging folder left
  loaded = inference.load_trained(str(workdir))
  np.testing.assert_array_equal(
    loaded.variables['params']['bnneck']['classifier']['kernel'], sd['classifier.weight'].T
  )


def test_help_describes_mm23(capsys):
  with pytest.raises(SystemExit) as exit_info:
    convert_weights.main(['--help'])
  assert exit_info.value.code == 0
  text = capsys.readouterr().out
  for fact in ('mm23', 'Lin-Kayla/subjectivity-sketch-reid', "'net'", '.t', 'label_to_pid'):
    assert fact in text, fact


# ------------------------------------------------------------ the preset it restates


def _flat(tree, prefix=''):
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(_flat(value, f'{prefix}{key}.'))
    else:
      out[f'{prefix}{key}'] = tuple(value) if isinstance(value, list) else value
  return out


def test_config_restates_the_mm23_baseline_preset():
  """weights.mm23.mm23_config() is configs/cmdsl.py:mm23_baseline, key for key."""
  preset = _flat(load_config(os.path.join(REPO, 'configs/cmdsl.py:mm23_baseline')).to_dict())
  ours = _flat(mm23.mm23_config().to_dict())
  assert set(ours) == set(preset)
  differ = {k: (ours[k], preset[k]) for k in ours if ours[k] != preset[k]}
  assert not differ, f'update weights/mm23.py MM23_CONFIG; (ours, preset): {differ}'
