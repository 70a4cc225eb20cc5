"""Tests for sketchreid_jax.models.u2net, weights.u2net, weights.io and tools.convert_weights
(docs/design.md §4 U²-Net).

The official architecture is transcribed here independently (``official_shapes``: every key of the
official PyTorch state dict with its shape, written from the channel tables of xuebinqin/U-2-Net
``model/u2net.py``), and ``reference_forward`` re-implements the official forward in PyTorch's
NCHW/OIHW layout straight from such a state dict; neither is derived from the Flax module or the
converter.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sketchreid_jax.models.u2net import U2Net, U2NetP, predict_masks
from sketchreid_jax.tools import convert_weights
from sketchreid_jax.weights import io as weights_io
from sketchreid_jax.weights.u2net import u2net_from_state_dict

EPS = 1e-5
# Max |difference| allowed between the converted Flax U2NetP and the NCHW reference (float32).
EQUIVALENCE_TOL = 1e-4
MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)

# ---------------------------------------------------------------- the official architecture

# (stage, block, in_ch, mid_ch, out_ch); block 7/6/5/4 = RSU7…RSU4, 'F' = RSU4F.
OFFICIAL_U2NET = [
  ('stage1', 7, 3, 32, 64),
  ('stage2', 6, 64, 32, 128),
  ('stage3', 5, 128, 64, 256),
  ('stage4', 4, 256, 128, 512),
  ('stage5', 'F', 512, 256, 512),
  ('stage6', 'F', 512, 256, 512),
  ('stage5d', 'F', 1024, 256, 512),
  ('stage4d', 4, 1024, 128, 256),
  ('stage3d', 5, 512, 64, 128),
  ('stage2d', 6, 256, 32, 64),
  ('stage1d', 7, 128, 16, 64),
]
OFFICIAL_U2NETP = [
  ('stage1', 7, 3, 16, 64),
  ('stage2', 6, 64, 16, 64),
  ('stage3', 5, 64, 16, 64),
  ('stage4', 4, 64, 16, 64),
  ('stage5', 'F', 64, 16, 64),
  ('stage6', 'F', 64, 16, 64),
  ('stage5d', 'F', 128, 16, 64),
  ('stage4d', 4, 128, 16, 64),
  ('stage3d', 5, 128, 16, 64),
  ('stage2d', 6, 128, 16, 64),
  ('stage1d', 7, 128, 16, 64),
]
SIDE_CHANNELS = {False: (64, 64, 128, 256, 512, 512), True: (64,) * 6}
# Published sizes: U2NET 44.01 M (176.3 MB float32), U2NETP 1.13 M (4.7 MB).
OFFICIAL_MILLIONS = {False: 44.01, True: 1.131}


def rsu_depth(block) -> int:
  return 4 if block == 'F' else block


def rsu_convs(block, cin, mid, cout):
  """(name, in, out) of every REBNCONV of an official RSU block, in __init__ order."""
  depth = rsu_depth(block)
  convs = [('rebnconvin', cin, cout), ('rebnconv1', cout, mid)]
  convs += [(f'rebnconv{i}', mid, mid) for i in range(2, depth + 1)]
  convs += [(f'rebnconv{i}d', 2 * mid, mid) for i in range(depth - 1, 1, -1)]
  convs.append(('rebnconv1d', 2 * mid, cout))
  return convs


def official_shapes(small: bool) -> dict:
  """Every key of the official U2NET/U2NETP state_dict() with its PyTorch shape."""
  shapes = {}
  for stage, block, cin, mid, cout in OFFICIAL_U2NETP if small else OFFICIAL_U2NET:
    for name, i, o in rsu_convs(block, cin, mid, cout):
      p = f'{stage}.{name}'
      shapes[f'{p}.conv_s1.weight'] = (o, i, 3, 3)
      shapes[f'{p}.conv_s1.bias'] = (o,)
      for buf in ('weight', 'bias', 'running_mean', 'running_var'):
        shapes[f'{p}.bn_s1.{buf}'] = (o,)
      shapes[f'{p}.bn_s1.num_batches_tracked'] = ()
  for k, c in enumerate(SIDE_CHANNELS[small], start=1):
    shapes[f'side{k}.weight'] = (1, c, 3, 3)
    shapes[f'side{k}.bias'] = (1,)
  shapes['outconv.weight'] = (1, 6, 1, 1)
  shapes['outconv.bias'] = (1,)
  return shapes


def trainable_count(shapes: dict) -> int:
  buffers = ('running_mean', 'running_var', 'num_batches_tracked')
  return sum(int(np.prod(s)) for k, s in shapes.items() if not k.endswith(buffers))


def generated_state_dict(small: bool, seed: int = 0) -> dict:
  """Random values for every official key: BN statistics and affines away from 0/1, conv weights
  ~1/sqrt(fan_in), side/outconv ones ×2 so the maps spread over (0, 1) without saturating."""
  rng = np.random.default_rng(seed)
  sd = {}
  for key, shape in official_shapes(small).items():
    if key.endswith('num_batches_tracked'):
      value = np.array(1234, np.int64)
    elif key.endswith('running_var'):
      value = rng.uniform(0.5, 2.0, shape)
    elif key.endswith(('running_mean', 'bias')):
      value = 0.3 * rng.normal(size=shape)
    elif key.endswith('bn_s1.weight'):
      value = rng.uniform(0.5, 1.5, shape)
    else:
      value = rng.normal(size=shape) / np.sqrt(np.prod(shape[1:]))
      if key.startswith(('side', 'outconv')):
        value *= 2.0
    sd[key] = np.asarray(value, np.int64 if value.dtype == np.int64 else np.float32)
  return sd


# ---------------------------------------------------------------- parameter counts and shapes


@functools.cache
def abstract_init(small: bool, h: int, w: int):
  """(output, variables) shapes of init_with_output: one trace gives both."""
  model = U2NetP() if small else U2Net()
  x = jnp.zeros((1, h, w, 3))
  return jax.eval_shape(lambda: model.init_with_output(jax.random.key(0), x, train=False))


@pytest.mark.parametrize('small', [True, False], ids=['u2netp', 'u2net'])
def test_param_count_matches_official_transcription(small):
  want = trainable_count(official_shapes(small))
  assert round(want / 1e6, 3 if small else 2) == OFFICIAL_MILLIONS[small]
  _, variables = abstract_init(small, 320, 320)
  assert sum(x.size for x in jax.tree.leaves(variables['params'])) == want
  # One (mean, var) pair per BatchNorm, i.e. per official REBNCONV.
  n_bn = sum(k.endswith('running_mean') for k in official_shapes(small))
  assert len(jax.tree.leaves(variables['batch_stats'])) == 2 * n_bn


@pytest.mark.parametrize('small', [True, False], ids=['u2netp', 'u2net'])
@pytest.mark.parametrize('h,w', [(320, 320), (288, 144)])
def test_output_shapes(small, h, w):
  # 288×144 pools to 144×72, 72×36, 36×18, 18×9, 9×5 (ceil mode): odd sizes must work.
  out, _ = abstract_init(small, h, w)
  assert out['mask'].shape == (1, h, w, 1) and out['mask'].dtype == jnp.float32
  assert len(out['sides']) == 6
  assert all(s.shape == (1, h, w, 1) for s in out['sides'])


def test_bf16_compute_keeps_float32_params_and_outputs():
  x = jnp.zeros((1, 20, 12, 3))
  model = U2NetP(dtype=jnp.bfloat16)
  out, variables = jax.eval_shape(lambda: model.init_with_output(jax.random.key(0), x))
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(variables))
  assert out['mask'].dtype == jnp.float32 and out['mask'].shape == (1, 20, 12, 1)


def test_rejects_non_rgb_nhwc():
  x = jnp.zeros((1, 3, 32, 32))  # NCHW by mistake
  with pytest.raises(ValueError, match='NHWC RGB'):
    jax.eval_shape(lambda: U2NetP().init(jax.random.key(0), x, train=False))


# ---------------------------------------------------------------- reference forward (NCHW)


def torch_bilinear_indices(n_in: int, n_out: int):
  """PyTorch's upsample_bilinear2d (align_corners=False) source indices and weights."""
  src = np.maximum((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0.0)
  i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
  i1 = np.minimum(i0 + 1, n_in - 1)
  return i0, i1, (src - i0).astype(np.float32)


def torch_bilinear_align_corners(n_in: int, n_out: int):
  src = np.arange(n_out) * ((n_in - 1) / (n_out - 1) if n_out > 1 else 0.0)
  i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
  return i0, np.minimum(i0 + 1, n_in - 1), (src - i0).astype(np.float32)


def ref_upsample(x, h: int, w: int, indices=torch_bilinear_indices):
  """F.upsample(x, size=(h, w), mode='bilinear') on NCHW, by gathering (no resize library)."""
  i0, i1, lam = indices(x.shape[2], h)
  x = x[:, :, i0, :] * (1 - lam)[:, None] + x[:, :, i1, :] * lam[:, None]
  j0, j1, mu = indices(x.shape[3], w)
  return x[:, :, :, j0] * (1 - mu) + x[:, :, :, j1] * mu


def ref_conv(x, weight, bias, *, pad: int, dilation: int = 1):
  y = jax.lax.conv_general_dilated(
    x,
    weight,
    (1, 1),
    [(pad, pad), (pad, pad)],
    rhs_dilation=(dilation, dilation),
    dimension_numbers=('NCHW', 'OIHW', 'NCHW'),
    precision=jax.lax.Precision.HIGHEST,
  )
  return y + bias[None, :, None, None]


def ref_rebnconv(sd, prefix, x, dirate=1):
  """Official REBNCONV: Conv2d(3, padding=dirate, dilation=dirate) → BatchNorm2d(eval) → ReLU."""
  y = ref_conv(x, sd[f'{prefix}.conv_s1.weight'], sd[f'{prefix}.conv_s1.bias'], pad=dirate,
               dilation=dirate)  # fmt: skip
  c = lambda name: sd[f'{prefix}.bn_s1.{name}'][None, :, None, None]
  y = (y - c('running_mean')) / jnp.sqrt(c('running_var') + EPS) * c('weight') + c('bias')
  return jax.nn.relu(y)


def ref_pool(x):
  """MaxPool2d(2, stride=2, ceil_mode=True): the last window may hang over the edge."""
  h, w = x.shape[2:]
  pads = [(0, 0), (0, 0), (0, -h % 2), (0, -w % 2)]
  return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 1, 2, 2), (1, 1, 2, 2), pads)


def up_like(src, tar):
  return ref_upsample(src, *tar.shape[2:])


def cat(*xs):
  return jnp.concatenate(xs, axis=1)


def ref_rsu(sd, p, x, depth):
  """Official RSU7/6/5/4 forward."""
  conv = lambda name, x, d=1: ref_rebnconv(sd, f'{p}.{name}', x, d)
  hxin = conv('rebnconvin', x)
  hx = [None, conv('rebnconv1', hxin)]  # hx[i] = output of rebnconv{i}
  for i in range(2, depth):
    hx.append(conv(f'rebnconv{i}', ref_pool(hx[i - 1])))
  bottom = conv(f'rebnconv{depth}', hx[depth - 1], 2)
  d = conv(f'rebnconv{depth - 1}d', cat(bottom, hx[depth - 1]))
  for i in range(depth - 2, 0, -1):
    d = conv(f'rebnconv{i}d', cat(up_like(d, hx[i]), hx[i]))
  return d + hxin


def ref_rsu4f(sd, p, x):
  conv = lambda name, x, d: ref_rebnconv(sd, f'{p}.{name}', x, d)
  hxin = conv('rebnconvin', x, 1)
  hx1 = conv('rebnconv1', hxin, 1)
  hx2 = conv('rebnconv2', hx1, 2)
  hx3 = conv('rebnconv3', hx2, 4)
  hx4 = conv('rebnconv4', hx3, 8)
  hx3d = conv('rebnconv3d', cat(hx4, hx3), 4)
  hx2d = conv('rebnconv2d', cat(hx3d, hx2), 2)
  hx1d = conv('rebnconv1d', cat(hx2d, hx1), 1)
  return hx1d + hxin


def reference_forward(sd, x, small: bool = True):
  """Official U2NET/U2NETP forward on NCHW input; returns (d0, d1, …, d6) after the sigmoid."""
  blocks = {stage: block for stage, block, *_ in (OFFICIAL_U2NETP if small else OFFICIAL_U2NET)}

  def stage(name, x):
    block = blocks[name]
    return ref_rsu4f(sd, name, x) if block == 'F' else ref_rsu(sd, name, x, block)

  hx1 = stage('stage1', x)
  hx2 = stage('stage2', ref_pool(hx1))
  hx3 = stage('stage3', ref_pool(hx2))
  hx4 = stage('stage4', ref_pool(hx3))
  hx5 = stage('stage5', ref_pool(hx4))
  hx6 = stage('stage6', ref_pool(hx5))
  hx5d = stage('stage5d', cat(up_like(hx6, hx5), hx5))
  hx4d = stage('stage4d', cat(up_like(hx5d, hx4), hx4))
  hx3d = stage('stage3d', cat(up_like(hx4d, hx3), hx3))
  hx2d = stage('stage2d', cat(up_like(hx3d, hx2), hx2))
  hx1d = stage('stage1d', cat(up_like(hx2d, hx1), hx1))
  side = lambda k, f: ref_conv(f, sd[f'side{k}.weight'], sd[f'side{k}.bias'], pad=1)
  d1 = side(1, hx1d)
  ds = [d1] + [up_like(side(k, f), d1) for k, f in zip(range(2, 7), (hx2d, hx3d, hx4d, hx5d, hx6))]
  d0 = ref_conv(cat(*ds), sd['outconv.weight'], sd['outconv.bias'], pad=0)
  return tuple(jax.nn.sigmoid(d) for d in [d0] + ds)


# ---------------------------------------------------------------- shared real forward


def run_compiled(fn, *args):
  """jit at XLA backend optimisation level 0: the same program and numbers, but a third of the
  compile time of these ~120-conv graphs on a small CPU (about 4 s instead of 13 s)."""
  options = {'xla_backend_optimization_level': 0}
  return jax.jit(fn).lower(*args).compile(compiler_options=options)(*args)


def to_unit(images01):
  """[0, 1] RGB → the pipeline's ImageNet-normalised images."""
  return ((images01 - MEAN) / STD).astype(np.float32)


@pytest.fixture(scope='module')
def u2netp_run():
  """Converted U2NetP variables, two odd-sized 45×27 photos and the Flax outputs on their
  official preprocessing (image / its max, ImageNet mean/std), computed once."""
  sd = generated_state_dict(small=True)
  variables = u2net_from_state_dict(sd, small=True)
  rng = np.random.default_rng(1)
  photos01 = rng.uniform(0.0, 0.9, (2, 45, 27, 3)).astype(np.float32)
  photos01[:, 10:35, 8:20] *= 0.3  # a dark "person" so the maps have structure
  x = to_unit(photos01 / photos01.max(axis=(1, 2, 3), keepdims=True))
  model = U2NetP()
  out = run_compiled(lambda v, x: model.apply(v, x, train=False), variables, x)
  return {'sd': sd, 'variables': variables, 'photos01': photos01, 'x': x, 'out': out}


def test_real_forward_odd_size_in_unit_interval(u2netp_run):
  out = u2netp_run['out']
  for m in (out['mask'],) + out['sides']:
    m = np.asarray(m)
    assert m.shape == (2, 45, 27, 1) and m.dtype == np.float32
    assert np.all((m > 0) & (m < 1))
  assert np.asarray(out['mask']).std() > 1e-3  # not a constant map


@pytest.mark.parametrize('n_in,n_out', [(1, 5), (3, 7), (12, 23), (5, 16), (23, 45), (6, 6)])
def test_jax_resize_bilinear_is_torch_align_corners_false(n_in, n_out):
  x = np.random.default_rng(0).normal(size=(1, n_in, n_in + 1, 2)).astype(np.float32)
  resize = jax.jit(lambda x: jax.image.resize(x, (1, n_out, n_out + 1, 2), method='bilinear'))
  got = np.asarray(resize(x))
  want = ref_upsample(x.transpose(0, 3, 1, 2), n_out, n_out + 1).transpose(0, 2, 3, 1)  # numpy
  np.testing.assert_allclose(got, want, atol=1e-5)  # float32 rounding of the weights only
  if 1 < n_in < n_out:  # the comparison can fail: align_corners=True differs visibly
    corners = ref_upsample(
      x.transpose(0, 3, 1, 2), n_out, n_out + 1, torch_bilinear_align_corners
    ).transpose(0, 2, 3, 1)
    assert np.max(np.abs(corners - got)) > 1e-2


def test_converted_u2netp_matches_reference_forward(u2netp_run):
  sd = {k: jnp.asarray(v) for k, v in u2netp_run['sd'].items() if v.dtype == np.float32}
  x_nchw = jnp.transpose(u2netp_run['x'], (0, 3, 1, 2))
  ref = run_compiled(reference_forward, sd, x_nchw)
  out = u2netp_run['out']
  got = (out['mask'],) + out['sides']
  diffs = [float(jnp.max(jnp.abs(jnp.transpose(r, (0, 2, 3, 1)) - g))) for r, g in zip(ref, got)]
  print(f'U2NetP vs NCHW reference: max |diff| fused {diffs[0]:.2e}, sides {max(diffs[1:]):.2e}')
  assert diffs[0] < EQUIVALENCE_TOL
  assert max(diffs[1:]) < EQUIVALENCE_TOL
  assert float(jnp.std(ref[0])) > 1e-3  # a meaningful comparison: the map is not constant


# ---------------------------------------------------------------- predict_masks


class MeanStub(nn.Module):
  """Stands in for U²-Net so predict_masks' pre/post-processing is checked exactly and cheaply:
  mask = sigmoid(a · channel mean of the network input)."""

  @nn.compact
  def __call__(self, x, *, train=False):
    if train:
      raise AssertionError('predict_masks must run the network with train=False')
    a = self.param('a', nn.initializers.constant(2.0), ())
    return {'mask': jax.nn.sigmoid(a * jnp.mean(x, axis=-1, keepdims=True)), 'sides': ()}


def official_preprocess(images):
  """Our normalised images → [0, 1] → image / its max (ToTensorLab flag 0) → ImageNet norm."""
  x = np.clip(np.asarray(images, np.float64) * STD + MEAN, 0.0, 1.0)
  return (x / x.max(axis=(1, 2, 3), keepdims=True) - MEAN) / STD


def norm_pred(d):
  """Official normPRED: (d - min) / (max - min) per map."""
  lo, hi = d.min(axis=(1, 2, 3), keepdims=True), d.max(axis=(1, 2, 3), keepdims=True)
  return (d - lo) / (hi - lo)


def test_predict_masks_is_official_preprocessing_and_normpred():
  rng = np.random.default_rng(0)
  a01, b01 = rng.uniform(0.05, 0.9, (2, 45, 27, 3))
  # /max makes the network blind to global brightness: a darker copy gives the same mask.
  images = to_unit(np.stack([a01, 0.5 * a01, b01]))
  stub = MeanStub()
  variables = stub.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
  predict = jax.jit(functools.partial(predict_masks, stub), static_argnames='size')
  masks = np.asarray(predict(variables, images, size=(45, 27)))  # same size: resizes are no-ops
  net_out = 1 / (1 + np.exp(-2.0 * official_preprocess(images).mean(axis=-1, keepdims=True)))
  assert masks.shape == (3, 45, 27, 1) and masks.dtype == np.float32
  np.testing.assert_allclose(masks, norm_pred(net_out), atol=1e-5)
  np.testing.assert_allclose(masks[0], masks[1], atol=1e-5)
  # Resizing to the network size and back keeps (N, H, W, 1) and every map spans [0, 1].
  resized = np.asarray(predict(variables, images, size=(20, 12)))
  assert resized.shape == (3, 45, 27, 1)
  np.testing.assert_allclose(resized.min(axis=(1, 2, 3)), 0.0, atol=1e-6)
  np.testing.assert_allclose(resized.max(axis=(1, 2, 3)), 1.0, atol=1e-6)
  assert np.abs(resized - masks).max() > 1e-3  # the 20×12 detour really happened
  # Frozen: no gradient reaches the images.
  grad = jax.jit(jax.grad(lambda im: predict_masks(stub, variables, im, size=(45, 27)).sum()))
  assert np.all(np.asarray(grad(images)) == 0)


class RampStub(nn.Module):
  """A network whose map is not constant on a constant input, as U²-Net's is (zero padding makes
  borders differ): sigmoid(channel mean + a ramp across the columns)."""

  @nn.compact
  def __call__(self, x, *, train=False):
    ramp = jnp.linspace(0.0, 1e-3, x.shape[2])[None, None, :, None]
    return {'mask': jax.nn.sigmoid(jnp.mean(x, axis=-1, keepdims=True) + ramp), 'sides': ()}


def test_predict_masks_of_a_constant_image_is_zero():
  """No pixel of a constant image stands out: its mask is all zeros (not NaN, and not the
  network's border effects stretched to [0, 1]), on every jax version; one pixel two grey levels
  brighter is an image again."""
  stub = RampStub()
  variables = stub.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
  predict = jax.jit(functools.partial(predict_masks, stub), static_argnames='size')
  colours = np.array([[0, 0, 0], [0.5, 0.5, 0.5], [0.2, 0.6, 0.9], [1, 1, 1]])
  constant = np.broadcast_to(colours[:, None, None, :], (4, 45, 27, 3)).copy()
  for size in ((45, 27), (20, 12)):
    masks = np.asarray(predict(variables, to_unit(constant), size=size))
    assert masks.shape == (4, 45, 27, 1) and np.all(masks == 0)
  dotted = constant.copy()
  dotted[:, 20, 13] += np.where(colours < 0.5, 2 / 255, -2 / 255)
  masks = np.asarray(predict(variables, to_unit(dotted), size=(45, 27)))
  np.testing.assert_allclose(masks.min(axis=(1, 2, 3)), 0.0, atol=1e-6)
  np.testing.assert_allclose(masks.max(axis=(1, 2, 3)), 1.0, atol=1e-6)


def test_predict_masks_resizes_to_320_and_back():
  _, variables = abstract_init(True, 320, 320)
  images = jnp.zeros((2, 288, 144, 3))
  masks = jax.eval_shape(lambda v, im: predict_masks(U2NetP(), v, im), variables, images)
  assert masks.shape == (2, 288, 144, 1) and masks.dtype == jnp.float32
  with pytest.raises(ValueError, match='size'):
    predict_masks(U2NetP(), variables, images, size=(320,))
  with pytest.raises(ValueError, match='NHWC'):
    predict_masks(U2NetP(), variables, jnp.zeros((2, 3, 288, 144)))


# ---------------------------------------------------------------- converter


def test_converter_maps_every_official_tensor():
  sd = generated_state_dict(small=True, seed=3)
  variables = u2net_from_state_dict(sd, small=True)
  _, shapes = abstract_init(True, 320, 320)
  assert jax.tree.structure(variables) == jax.tree.structure(
    jax.tree.map(lambda _: 0, dict(shapes))
  )
  for got, want in zip(jax.tree.leaves(variables), jax.tree.leaves(dict(shapes))):
    assert got.shape == want.shape and got.dtype == np.float32
  p, s = variables['params'], variables['batch_stats']
  conv = p['stage4d']['rebnconv2d']['conv_s1']
  w = sd['stage4d.rebnconv2d.conv_s1.weight']  # (O, I, kh, kw)
  np.testing.assert_array_equal(conv['kernel'][2, 0, 5, 7], w[7, 5, 2, 0])
  np.testing.assert_array_equal(conv['kernel'], w.transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(conv['bias'], sd['stage4d.rebnconv2d.conv_s1.bias'])
  bn = 'stage5.rebnconv3.bn_s1'
  np.testing.assert_array_equal(p['stage5']['rebnconv3']['bn_s1']['scale'], sd[f'{bn}.weight'])
  np.testing.assert_array_equal(p['stage5']['rebnconv3']['bn_s1']['bias'], sd[f'{bn}.bias'])
  np.testing.assert_array_equal(s['stage5']['rebnconv3']['bn_s1']['mean'], sd[f'{bn}.running_mean'])
  np.testing.assert_array_equal(s['stage5']['rebnconv3']['bn_s1']['var'], sd[f'{bn}.running_var'])
  assert p['side3']['kernel'].shape == (3, 3, 64, 1)
  np.testing.assert_array_equal(
    p['outconv']['kernel'][0, 0, :, 0], sd['outconv.weight'][0, :, 0, 0]
  )
  # DataParallel checkpoints: a 'module.' prefix is stripped.
  prefixed = u2net_from_state_dict({f'module.{k}': v for k, v in sd.items()}, small=True)
  jax.tree.map(np.testing.assert_array_equal, prefixed, variables)


def test_converter_u2net_keys_and_shapes():
  shapes = official_shapes(small=False)
  zero = np.float32(0)
  sd = {k: np.broadcast_to(zero, s) for k, s in shapes.items()}  # no 176 MB of random numbers
  variables = u2net_from_state_dict(sd, small=False)
  _, want = abstract_init(False, 320, 320)
  got_shapes = jax.tree.map(lambda a: a.shape, variables)
  assert got_shapes == jax.tree.map(lambda a: a.shape, dict(want))
  assert variables['params']['stage5d']['rebnconvin']['conv_s1']['kernel'].shape == (
    3,
    3,
    1024,
    512,
  )
  # The U2NET file handed to U2NETP fails and says what it is (same keys, other shapes).
  with pytest.raises(ValueError, match=r'stage1\.rebnconv1\.conv_s1\.weight') as err:
    u2net_from_state_dict(sd, small=True)
  assert 'looks like a U2NET (u2net.pth)' in str(err.value)
  assert 'small=False' in str(err.value)


BAD_EDITS = {
  'missing': (
    lambda sd: sd.pop('stage3.rebnconv2.bn_s1.running_var'),
    r"missing key 'stage3\.rebnconv2\.bn_s1\.running_var'",
  ),
  'extra': (
    lambda sd: sd.update({'stage1.extra.weight': np.zeros(3)}),
    r"unexpected key 'stage1\.extra\.weight'",
  ),
  'shape': (
    lambda sd: sd.update({'side3.weight': np.zeros((1, 32, 3, 3))}),
    r"shape mismatch for 'side3\.weight'",
  ),
  'stray_num_batches_tracked': (
    lambda sd: sd.update({'side1.num_batches_tracked': np.array(1)}),
    r"unexpected key 'side1\.num_batches_tracked'",
  ),
}


@pytest.mark.parametrize('case', sorted(BAD_EDITS))
def test_converter_rejects_bad_state_dicts(case):
  edit, pattern = BAD_EDITS[case]
  sd = generated_state_dict(small=True)
  edit(sd)
  with pytest.raises(ValueError, match=pattern) as err:
    u2net_from_state_dict(sd, small=True)
  assert 'looks like' not in str(err.value)  # fits neither variant


# ---------------------------------------------------------------- io


def test_read_state_dict_npz_and_variables_round_trip(tmp_path):
  sd = generated_state_dict(small=True)
  np.savez(tmp_path / 'u2netp.npz', **sd)
  back = weights_io.read_state_dict(tmp_path / 'u2netp.npz')
  assert back.keys() == sd.keys()
  for k in sd:
    np.testing.assert_array_equal(back[k], sd[k])
  variables = u2net_from_state_dict(back, small=True)
  path = weights_io.save_variables(tmp_path / 'deep' / 'dir' / 'u2netp.msgpack', variables)
  loaded = weights_io.load_variables(path)
  assert jax.tree.structure(loaded) == jax.tree.structure(variables)
  jax.tree.map(np.testing.assert_array_equal, loaded, variables)
  assert not list(path.parent.glob('*.tmp'))


def test_read_state_dict_errors(tmp_path):
  (tmp_path / 'weights.ckpt').write_bytes(b'x')
  with pytest.raises(
    ValueError, match=r"unknown suffix '\.ckpt'.*\.npz.*\.safetensors.*\.pth.*\.pt"
  ):
    weights_io.read_state_dict(tmp_path / 'weights.ckpt')
  missing = tmp_path / 'nowhere' / 'u2netp.npz'
  with pytest.raises(FileNotFoundError, match='nowhere'):
    weights_io.read_state_dict(missing)
  with pytest.raises(FileNotFoundError, match='convert_weights'):
    weights_io.load_variables(tmp_path / 'none.msgpack')
  (tmp_path / 'bad.msgpack').write_bytes(b'\xc1not msgpack')
  with pytest.raises(ValueError, match='bad.msgpack'):
    weights_io.load_variables(tmp_path / 'bad.msgpack')


def test_read_state_dict_pth_without_torch(tmp_path):
  try:
    import torch  # noqa: F401
  except ImportError:
    pass
  else:
    pytest.skip('torch is installed: the optional-extra error cannot be triggered')
  (tmp_path / 'u2netp.pth').write_bytes(b'not read')
  with pytest.raises(ImportError, match=r'optional extra.*pip install torch.*\.npz/\.safetensors'):
    weights_io.read_state_dict(tmp_path / 'u2netp.pth')


def test_read_state_dict_safetensors_needs_the_package(tmp_path):
  try:
    import safetensors.numpy as stn
  except ImportError:
    (tmp_path / 'u2netp.safetensors').write_bytes(b'not read')
    with pytest.raises(ImportError, match='pip install safetensors'):
      weights_io.read_state_dict(tmp_path / 'u2netp.safetensors')
    return
  sd = {k: v for k, v in generated_state_dict(small=True).items()}
  stn.save_file(sd, str(tmp_path / 'u2netp.safetensors'))
  back = weights_io.read_state_dict(tmp_path / 'u2netp.safetensors')
  assert back.keys() == sd.keys()


# ---------------------------------------------------------------- CLI


def test_cli_converts_npz_to_msgpack(tmp_path, capsys, monkeypatch):
  sd = generated_state_dict(small=True, seed=5)
  np.savez(tmp_path / 'u2netp.npz', **sd)
  monkeypatch.chdir(tmp_path)  # the default output is relative: pretrained/<model>.msgpack
  assert convert_weights.main(['--model=u2netp', f'--input={tmp_path / "u2netp.npz"}']) == 0
  printed = capsys.readouterr().out
  assert 'pretrained/u2netp.msgpack' in printed
  assert 'stage1d' in printed and 'outconv' in printed
  assert f'{trainable_count(official_shapes(True)):,}' in printed  # the total parameter count
  loaded = weights_io.load_variables(tmp_path / 'pretrained' / 'u2netp.msgpack')
  jax.tree.map(np.testing.assert_array_equal, loaded, u2net_from_state_dict(sd, small=True))
  # The wrong --model fails with exit code 2 and says which variant the file is.
  code = convert_weights.main(
    ['--model=u2net', f'--input={tmp_path / "u2netp.npz"}', f'--output={tmp_path / "x.msgpack"}']
  )
  assert code == 2 and 'looks like a U2NETP' in capsys.readouterr().err
  assert not (tmp_path / 'x.msgpack').exists()


def test_cli_help_says_where_weights_come_from(capsys):
  with pytest.raises(SystemExit) as exit_info:
    convert_weights.main(['--help'])
  assert exit_info.value.code == 0
  text = capsys.readouterr().out
  for fact in ('u2net.pth (176 MB)', 'u2netp.pth (4.7 MB)', 'U-2-Net', 'nothing is downloaded'):
    assert fact in text, fact
  assert set(convert_weights.CONVERTERS) >= {'u2net', 'u2netp'}
