"""U²-Net and U²-NetP (salient-object / foreground masks) in Flax linen, NHWC.

Implements docs/design.md §4 U²-Net: the frozen mask network of DALNet's DAG, layer for layer the
official PyTorch code (xuebinqin/U-2-Net, ``model/u2net.py``, classes REBNCONV, RSU7/6/5/4,
RSU4F, U2NET, U2NETP), so converted official weights (``sketchreid_jax.weights.u2net``) give the
same outputs.

Interpretations chosen (each one is what the official code does, or why it differs):

* REBNCONV = 3×3 conv with bias, padding = dilation = ``dilation`` → BatchNorm (momentum 0.9 =
  PyTorch's 0.1, eps 1e-5) → ReLU. Explicit symmetric padding, never ``'SAME'``.
* Max-pooling is ``MaxPool2d(2, stride=2, ceil_mode=True)``: odd sizes are padded at the bottom
  and right with −inf to an even size, so a 37-pixel side pools to 19 (PyTorch's ceil mode).
* Upsampling is the official ``_upsample_like(src, tar)`` = ``F.upsample(size=tar's H×W,
  mode='bilinear')`` with align_corners=False (half-pixel centres, source index clamped at the
  border). ``jax.image.resize(method='bilinear')`` computes exactly that when enlarging (the
  only direction used inside the network: a ceil-mode pooled map is never larger than its skip).
* The decoders concatenate (upsampled deeper, skip) on channels in the official order
  ``cat((hx_deeper, hx_skip), 1)``; the order matters for converted weights.
* Parameter names are the official module names (``stage1/rebnconvin/conv_s1``,
  ``…/bn_s1``, ``side1`` … ``side6``, ``outconv``); the converter is a mechanical mapping.
* Conv init as PyTorch's ``nn.Conv2d`` default (kernel and bias U(±1/√fan_in)); it only matters
  without converted weights.
* ``dtype`` is the computation dtype (parameters stay float32); the seven maps are returned in
  float32 (the logits are cast before the sigmoid) because masks feed float32 code.
* ``predict_masks`` follows the official inference script (``u2net_test.py``: ``RescaleT(320)``,
  ``ToTensorLab(flag=0)``, ``normPRED``) on our pipeline's ImageNet-normalised images; its own
  docstring lists the choices made there.
"""

import operator
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from sketchreid_jax.models.resnet import torch_linear_bias_init, torch_linear_kernel_init

Dtype = Any
Array = jax.Array

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
# predict_masks: an image whose every channel spans less than half a grey level is constant.
FLAT_IMAGE_RANGE = 0.5 / 255
# The official inference resolution (u2net_test.py: RescaleT(320)).
DEFAULT_SIZE: tuple[int, int] = (320, 320)

# Official stage tables: (name, RSU height (4 with dilation instead of pooling = '4F'), in, mid,
# out). ``in`` is implied by the data flow in Flax; it is kept so the table reads like the source.
U2NET_STAGES: tuple[tuple[str, str, int, int, int], ...] = (
  ('stage1', '7', 3, 32, 64),
  ('stage2', '6', 64, 32, 128),
  ('stage3', '5', 128, 64, 256),
  ('stage4', '4', 256, 128, 512),
  ('stage5', '4F', 512, 256, 512),
  ('stage6', '4F', 512, 256, 512),
  ('stage5d', '4F', 1024, 256, 512),
  ('stage4d', '4', 1024, 128, 256),
  ('stage3d', '5', 512, 64, 128),
  ('stage2d', '6', 256, 32, 64),
  ('stage1d', '7', 128, 16, 64),
)
U2NETP_STAGES: tuple[tuple[str, str, int, int, int], ...] = (
  ('stage1', '7', 3, 16, 64),
  ('stage2', '6', 64, 16, 64),
  ('stage3', '5', 64, 16, 64),
  ('stage4', '4', 64, 16, 64),
  ('stage5', '4F', 64, 16, 64),
  ('stage6', '4F', 64, 16, 64),
  ('stage5d', '4F', 128, 16, 64),
  ('stage4d', '4', 128, 16, 64),
  ('stage3d', '5', 128, 16, 64),
  ('stage2d', '6', 128, 16, 64),
  ('stage1d', '7', 128, 16, 64),
)

# PyTorch's nn.Conv2d default init is the same kaiming_uniform(a=√5) as nn.Linear's.
_conv_kernel_init = torch_linear_kernel_init()


def _torch_conv(
  features: int, kernel: int, *, in_features: int, dilation: int, name: str, dtype: Dtype
) -> nn.Conv:
  pad = dilation * (kernel // 2)
  return nn.Conv(
    features,
    (kernel, kernel),
    padding=((pad, pad), (pad, pad)),
    kernel_dilation=(dilation, dilation),
    use_bias=True,
    dtype=dtype,
    kernel_init=_conv_kernel_init,
    bias_init=torch_linear_bias_init(in_features * kernel * kernel),
    name=name,
  )


def max_pool_ceil(x: Array) -> Array:
  """``MaxPool2d(2, stride=2, ceil_mode=True)`` on NHWC: odd sides padded with −inf."""
  pad_h, pad_w = x.shape[1] % 2, x.shape[2] % 2
  return nn.max_pool(x, (2, 2), strides=(2, 2), padding=((0, pad_h), (0, pad_w)))


def upsample_like(src: Array, tar: Array) -> Array:
  """The official ``_upsample_like``: bilinear (align_corners=False) resize to tar's H×W."""
  if src.shape[1:3] == tar.shape[1:3]:
    return src
  shape = (src.shape[0], tar.shape[1], tar.shape[2], src.shape[3])
  return jax.image.resize(src, shape, method='bilinear').astype(src.dtype)


def _cat(deeper: Array, skip: Array) -> Array:
  return jnp.concatenate([deeper, skip], axis=-1)


class REBNCONV(nn.Module):
  """Official REBNCONV: conv 3×3 (bias, padding = dilation) → BatchNorm → ReLU."""

  features: int
  dilation: int = 1
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, *, train: bool) -> Array:
    x = _torch_conv(
      self.features,
      3,
      in_features=x.shape[-1],
      dilation=self.dilation,
      name='conv_s1',
      dtype=self.dtype,
    )(x)
    x = nn.BatchNorm(
      use_running_average=not train,
      momentum=0.9,
      epsilon=1e-5,
      dtype=self.dtype,
      name='bn_s1',
    )(x)
    return nn.relu(x)


class RSU(nn.Module):
  """Official RSU-L (``RSU7``, ``RSU6``, ``RSU5``, ``RSU4`` for height L = 7, 6, 5, 4).

  rebnconvin (out) → rebnconv1 … rebnconv{L−1} (mid) with a ceil-mode 2×2 pool after each but
  the last → rebnconv{L} (mid, dilation 2, same size) → decoder rebnconv{L−1}d … rebnconv2d (mid),
  rebnconv1d (out), each on cat(upsampled deeper, skip) → + the rebnconvin output.
  """

  height: int
  mid_features: int
  out_features: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, *, train: bool) -> Array:
    if self.height not in (4, 5, 6, 7):
      raise ValueError(
        f'RSU: height must be 4, 5, 6 or 7 (the official RSU4…RSU7), got {self.height!r}; '
        f'use RSU4F for the dilated, pooling-free block.'
      )
    conv = lambda features, name, dilation=1: REBNCONV(
      features, dilation, dtype=self.dtype, name=name
    )
    depth = self.height
    hxin = conv(self.out_features, 'rebnconvin')(x, train=train)
    skips = []  # hx1 … hx{L-1}
    hx = hxin
    for i in range(1, depth):
      if i > 1:
        hx = max_pool_ceil(hx)
      hx = conv(self.mid_features, f'rebnconv{i}')(hx, train=train)
      skips.append(hx)
    # The bottom conv sees the last encoder output at the same size: no pool, no upsampling.
    hx = conv(self.mid_features, f'rebnconv{depth}', 2)(hx, train=train)
    for i in range(depth - 1, 0, -1):
      skip = skips[i - 1]
      features = self.out_features if i == 1 else self.mid_features
      hx = conv(features, f'rebnconv{i}d')(_cat(upsample_like(hx, skip), skip), train=train)
    return hx + hxin


class RSU4F(nn.Module):
  """Official RSU4F: no pooling; dilations 1, 2, 4, 8 on the way down, then 4, 2, 1."""

  mid_features: int
  out_features: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, *, train: bool) -> Array:
    conv = lambda features, name, dilation: REBNCONV(
      features, dilation, dtype=self.dtype, name=name
    )
    mid = self.mid_features
    hxin = conv(self.out_features, 'rebnconvin', 1)(x, train=train)
    hx1 = conv(mid, 'rebnconv1', 1)(hxin, train=train)
    hx2 = conv(mid, 'rebnconv2', 2)(hx1, train=train)
    hx3 = conv(mid, 'rebnconv3', 4)(hx2, train=train)
    hx4 = conv(mid, 'rebnconv4', 8)(hx3, train=train)
    hx3d = conv(mid, 'rebnconv3d', 4)(_cat(hx4, hx3), train=train)
    hx2d = conv(mid, 'rebnconv2d', 2)(_cat(hx3d, hx2), train=train)
    hx1d = conv(self.out_features, 'rebnconv1d', 1)(_cat(hx2d, hx1), train=train)
    return hx1d + hxin


def _stage(spec: tuple[str, str, int, int, int], dtype: Dtype) -> nn.Module:
  name, kind, _, mid, out = spec
  if kind == '4F':
    return RSU4F(mid, out, dtype=dtype, name=name)
  return RSU(int(kind), mid, out, dtype=dtype, name=name)


class _U2NetBase(nn.Module):
  """The official U2NET/U2NETP forward; subclasses pick the stage table."""

  dtype: Dtype = jnp.float32

  stages_table = U2NET_STAGES  # class attribute, not a dataclass field

  @nn.compact
  def __call__(self, x: Array, *, train: bool = False) -> dict[str, Any]:
    where = type(self).__name__
    if x.ndim != 4 or x.shape[-1] != 3:
      raise ValueError(
        f'{where}: expected an NHWC RGB batch (N, H, W, 3), got shape {tuple(x.shape)}; '
        f'transpose NCHW input with x.transpose(0, 2, 3, 1).'
      )
    stages = {spec[0]: _stage(spec, self.dtype) for spec in self.stages_table}
    x = x.astype(self.dtype)

    # Encoder: stage1 … stage6, a ceil-mode pool (pool12 … pool56) before stages 2 … 6.
    encoded = []
    hx = x
    for i in range(1, 7):
      if i > 1:
        hx = max_pool_ceil(hx)
      hx = stages[f'stage{i}'](hx, train=train)
      encoded.append(hx)  # hx1 … hx6

    # Decoder: stage5d … stage1d on cat(upsampled deeper, skip).
    decoded = {6: encoded[5]}
    hx = encoded[5]
    for i in range(5, 0, -1):
      skip = encoded[i - 1]
      hx = stages[f'stage{i}d'](_cat(upsample_like(hx, skip), skip), train=train)
      decoded[i] = hx

    # Side outputs: side1 on hx1d, …, side5 on hx5d, side6 on hx6; all upsampled to d1's size.
    sides = []
    for i in range(1, 7):
      feature = decoded[i]
      side = _torch_conv(
        1, 3, in_features=feature.shape[-1], dilation=1, name=f'side{i}', dtype=self.dtype
      )(feature)
      sides.append(side if i == 1 else upsample_like(side, sides[0]))
    fused = _torch_conv(1, 1, in_features=len(sides), dilation=1, name='outconv', dtype=self.dtype)(
      jnp.concatenate(sides, axis=-1)
    )
    sigmoid = lambda logits: jax.nn.sigmoid(logits.astype(jnp.float32))
    return {'mask': sigmoid(fused), 'sides': tuple(sigmoid(s) for s in sides)}


class U2Net(_U2NetBase):
  """Official U2NET (44.0 M parameters, ``u2net.pth``). ``__call__(x, *, train=False)`` on an NHWC
  batch returns ``{'mask': fused sigmoid map (N, H, W, 1), 'sides': six sigmoid side maps at
  full size (side1 … side6)}``."""

  stages_table = U2NET_STAGES


class U2NetP(_U2NetBase):
  """Official U2NETP, the small U²-Net (1.13 M parameters, ``u2netp.pth``); same outputs as
  ``U2Net``."""

  stages_table = U2NETP_STAGES


def _check_size(size: Sequence[int]) -> tuple[int, int]:
  error = ValueError(
    f'predict_masks: size must be (height, width) in positive ints, e.g. (320, 320), got {size!r}.'
  )
  try:
    # operator.index accepts numpy ints (from configs) but not floats or bools.
    height, width = (operator.index(s) for s in size if not isinstance(s, bool))
  except (TypeError, ValueError):
    raise error from None
  if min(height, width) < 1:
    raise error
  return height, width


def predict_masks(
  module: nn.Module,
  variables: Any,
  images: Array,
  *,
  size: Sequence[int] = DEFAULT_SIZE,
  eps: float = 1e-8,
) -> Array:
  """Foreground masks (N, H, W, 1) in [0, 1], float32, for ImageNet-normalised NHWC RGB images.

  The official inference preprocessing (``u2net_test.py``) applied to our pipeline's images
  ``(x/255 − mean)/std``: de-normalise to [0, 1] RGB (clipped, so random-erasing noise cannot
  become the image maximum); divide each image by its own maximum over all pixels and channels
  (``ToTensorLab(flag=0)``: image/np.max(image); a black image is divided by ``eps`` instead of
  0); re-normalise with the ImageNet mean/std; bilinear resize to ``size`` (the official
  ``RescaleT(320)``); run ``module`` with train=False; take the fused map; bilinear resize back
  to the input H×W; min–max normalise each map (``normPRED``; a constant map becomes 0 thanks to
  ``eps``).

  A constant image (every channel's range below half a grey level, ``FLAT_IMAGE_RANGE``) gets
  the all-zero mask: nothing in it stands out. The official code divides a black image by 0
  (NaN), and for any other constant image it stretches the network's border effects to [0, 1]
  twice over (/max, then normPRED), so its output is float rounding made visible: the ImageNet
  de-normalisation of a black image leaves values of about 1e-7, which ``eps`` hid under one
  XLA version and /max turned into a full-scale image under the next.

  Choices: both resizes are ``jax.image.resize`` bilinear with its default antialiasing, which
  on shrinking averages like skimage's ``resize`` (official preprocessing) and PIL's bilinear
  resize (official saving) do; /max comes before the resize (the official code resizes first,
  but then the image maximum differs only by interpolation); normPRED comes after resizing back
  (the official code normalises the 320×320 map, then PIL resizes the 8-bit image), so every
  returned map spans exactly [0, 1]. Traceable (no Python branching on values) and wrapped in
  ``jax.lax.stop_gradient``: the network is frozen.
  """
  height, width = _check_size(size)
  if images.ndim != 4 or images.shape[-1] != 3:
    raise ValueError(
      f'predict_masks: expected ImageNet-normalised NHWC RGB images (N, H, W, 3), got shape '
      f'{tuple(images.shape)}.'
    )
  n, h, w, _ = images.shape
  mean = jnp.asarray(IMAGENET_MEAN, jnp.float32)
  std = jnp.asarray(IMAGENET_STD, jnp.float32)
  x = jnp.clip(images.astype(jnp.float32) * std + mean, 0.0, 1.0)
  channel_range = jnp.max(x, axis=(1, 2)) - jnp.min(x, axis=(1, 2))  # (N, 3)
  flat = jnp.max(channel_range, axis=-1) < FLAT_IMAGE_RANGE
  x = x / jnp.maximum(jnp.max(x, axis=(1, 2, 3), keepdims=True), eps)
  x = (x - mean) / std
  x = jax.image.resize(x, (n, height, width, 3), method='bilinear')
  fused = module.apply(variables, x, train=False)['mask'].astype(jnp.float32)
  mask = jax.image.resize(fused, (n, h, w, 1), method='bilinear')
  lo = jnp.min(mask, axis=(1, 2, 3), keepdims=True)
  hi = jnp.max(mask, axis=(1, 2, 3), keepdims=True)
  mask = (mask - lo) / jnp.maximum(hi - lo, eps)
  mask = jnp.where(flat[:, None, None, None], 0.0, mask)
  return jax.lax.stop_gradient(mask)
