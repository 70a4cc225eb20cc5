"""torchvision-compatible ResNet-50 v1.5 in Flax linen, NHWC, callable stage by stage.

Implements docs/design.md §3 (``sketchreid_jax.models.ResNet50``) and §4 "Backbone".

Interpretations chosen (each one is what torchvision's ``resnet50`` does):

* v1.5: the stride of a bottleneck sits on its 3×3 conv, not on the first 1×1 conv.
* Explicit PyTorch padding everywhere: ``((3,3),(3,3))`` for the 7×7 stem conv, ``((1,1),(1,1))``
  for every 3×3 conv and for the 3×3/2 stem max-pool (padded with −inf, as PyTorch pads
  ``MaxPool2d``). Flax's ``'SAME'`` pads stride-2 windows asymmetrically (more at the end), which
  would shift every feature map by one pixel against converted ImageNet weights.
* Convolutions carry no bias; BatchNorm momentum 0.9 (PyTorch's 0.1 means the same running
  average), epsilon 1e-5.
* The downsample branch (1×1 conv with the stage stride + BN) exists on the first block of every
  stage, including layer1 (64 → 256 channels) and layer4 with ``last_stride=1`` (1024 → 2048).
* Init as torchvision: conv kernels kaiming-normal, mode fan_out, gain √2 (untruncated normal);
  BN scale 1, bias 0; ``fc`` weights and bias uniform ±1/√fan_in (``nn.Linear``'s default).
  ``zero_init_last_bn=True`` sets every ``bn3`` scale to 0 (torchvision ``zero_init_residual``).
* ``width`` scales all channel counts (64 = the real network; stage outputs 4·, 8·, 16·, 32·width).
  ``last_stride`` is the stride of layer4 (1 for re-id: 18×9 at a 288×144 input; 2 = ImageNet).
* ``dtype`` is the computation dtype; parameters stay float32. Pooling and the classifier of
  ``ResNet50`` run in ``dtype`` too; re-id heads live in ``heads.py`` and compute in float32.
* Flax's BatchNorm updates ``var`` with the biased batch variance where PyTorch's running_var
  uses the unbiased one; outputs for given statistics are identical, only fine-tuned running
  variances drift by a factor n/(n−1). Accepted, not corrected.
* CPU fast paths, with the same variables and the same numbers up to float rounding: 1×1
  convolutions are ``PointwiseConv`` (matrix products, ``pointwise.py``), the stem max-pool has a
  hand-written gradient (``max_pool.py``), and the stem's bn1 takes one mask flag per image
  (``row_masked_batch_norm.py``).
* ``bn_axis_name`` is handed to every BatchNorm so batch statistics are averaged across devices
  under ``shard_map``/``pmap`` (None = per-device statistics).

Parameter names mirror torchvision keys, so a weight converter is a mechanical mapping
(``.`` → ``/``; PyTorch OIHW conv weights transpose to HWIO, Linear (out, in) to (in, out))::

    torchvision                          Flax {'params'} / {'batch_stats'}
    conv1.weight                         params/conv1/kernel
    bn1.weight, bn1.bias                 params/bn1/scale, params/bn1/bias
    bn1.running_mean, .running_var       batch_stats/bn1/mean, batch_stats/bn1/var
    layerS.B.convK.weight  (K = 1,2,3)   params/layerS/B/convK/kernel
    layerS.B.bnK.{weight,bias}           params/layerS/B/bnK/{scale,bias}
    layerS.B.bnK.running_{mean,var}      batch_stats/layerS/B/bnK/{mean,var}
    layerS.B.downsample.0.weight         params/layerS/B/downsample_conv/kernel
    layerS.B.downsample.1.*              params|batch_stats/layerS/B/downsample_bn/*
    fc.weight, fc.bias                   params/fc/kernel, params/fc/bias
    (bnX.num_batches_tracked has no counterpart: momentum is fixed.)

Building blocks for multi-stream models: ``ResNetStem`` (conv1, bn1, relu, maxpool),
``ResNetStage`` (one ``layerN``: Bottlenecks named ``'0'``, ``'1'``, …), ``Bottleneck``, the
``stage_specs`` table and ``run_stages`` (run a contiguous range of named stages).
"""

from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from sketchreid_jax.models.max_pool import max_pool_3x3_s2
from sketchreid_jax.models.pointwise import PointwiseConv
from sketchreid_jax.models.row_masked_batch_norm import RowMaskedBatchNorm

Dtype = Any
Array = jax.Array

STAGE_NAMES: tuple[str, ...] = ('layer1', 'layer2', 'layer3', 'layer4')
RESNET50_BLOCKS: tuple[int, ...] = (3, 4, 6, 3)
BOTTLENECK_EXPANSION = 4

# torchvision: kaiming_normal_(mode="fan_out", nonlinearity="relu") -> std = sqrt(2 / fan_out).
# Flax HWIO kernels: out axis -1, the receptive field (H, W) multiplies in, as in PyTorch.
conv_kernel_init = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')


def torch_linear_kernel_init() -> Callable[..., Array]:
  """nn.Linear's default weight init: kaiming_uniform(a=√5) = U(±1/√fan_in)."""
  return nn.initializers.variance_scaling(1.0 / 3.0, 'fan_in', 'uniform')


def torch_linear_bias_init(fan_in: int) -> Callable[..., Array]:
  """nn.Linear's default bias init: U(±1/√fan_in), fan_in of the weight (not of the bias)."""
  bound = 1.0 / float(fan_in) ** 0.5

  def init(key: Array, shape: Sequence[int], dtype: Dtype = jnp.float32) -> Array:
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


class StageSpec(NamedTuple):
  """One ``layerN``: ``features`` is the bottleneck width; the stage outputs 4·features."""

  name: str
  num_blocks: int
  features: int
  stride: int


def _check_width(width: int, where: str) -> None:
  if not isinstance(width, int) or isinstance(width, bool) or width <= 0:
    raise ValueError(f'{where}: width must be a positive int (64 = ResNet-50), got {width!r}.')


def stage_specs(
  width: int = 64, last_stride: int = 1, blocks: Sequence[int] = RESNET50_BLOCKS
) -> tuple[StageSpec, ...]:
  """(name, num_blocks, features, stride) for layer1..layer4 of ResNet-50.

  features = width·(1, 2, 4, 8) is the bottleneck width; each stage outputs 4·features channels.
  Strides (1, 2, 2, last_stride). ``blocks``: Bottlenecks per stage, (3, 4, 6, 3) for ResNet-50;
  fewer make the same architecture shallower (the test suite's tiny models use (1, 1, 1, 1)).
  """
  _check_width(width, 'stage_specs')
  blocks = tuple(blocks)
  if len(blocks) != 4 or not all(isinstance(b, int) and b >= 1 for b in blocks):
    raise ValueError(
      f'stage_specs: blocks must be 4 positive ints (Bottlenecks in layer1..layer4; ResNet-50 is '
      f'{RESNET50_BLOCKS}), got {blocks!r}.'
    )
  if last_stride not in (1, 2):
    raise ValueError(
      f'stage_specs: last_stride must be 1 (re-id, layer4 keeps 18×9 at 288×144) or 2 '
      f'(ImageNet ResNet-50), got {last_stride!r}.'
    )
  strides = (1, 2, 2, last_stride)
  return tuple(
    StageSpec(name, n, width * 2**i, stride)
    for i, (name, n, stride) in enumerate(zip(STAGE_NAMES, blocks, strides))
  )


def stage_range(start: str, stop: str) -> tuple[str, ...]:
  """The stage names from ``start`` to ``stop`` inclusive, validated."""
  for arg, value in (('start', start), ('stop', stop)):
    if value not in STAGE_NAMES:
      raise ValueError(f'{arg}={value!r} is not a stage name; use one of {STAGE_NAMES}.')
  i, j = STAGE_NAMES.index(start), STAGE_NAMES.index(stop)
  if i > j:
    raise ValueError(
      f'start={start!r} comes after stop={stop!r}; stages run in order {STAGE_NAMES}.'
    )
  return STAGE_NAMES[i : j + 1]


def run_stages(
  stages: Mapping[str, Callable[..., Array]], x: Array, *, start: str, stop: str, train: bool
) -> Array:
  """Apply the named stages ``start``..``stop`` (inclusive) in order."""
  for name in stage_range(start, stop):
    x = stages[name](x, train=train)
  return x


def _batch_norm(
  name: str,
  *,
  train: bool,
  momentum: float,
  epsilon: float,
  dtype: Dtype,
  axis_name: str | None,
  zero_scale: bool = False,
) -> nn.BatchNorm:
  return nn.BatchNorm(
    use_running_average=not train,
    momentum=momentum,
    epsilon=epsilon,
    dtype=dtype,
    axis_name=axis_name,
    scale_init=nn.initializers.zeros if zero_scale else nn.initializers.ones,
    name=name,
  )


def _conv(features: int, kernel: int, stride: int, pad: int, name: str, dtype: Dtype) -> nn.Module:
  if kernel == 1 and pad == 0:
    # Same parameters and values as nn.Conv's 1×1; faster gradients on CPU (see pointwise.py).
    return PointwiseConv(
      features,
      strides=stride,
      use_bias=False,
      dtype=dtype,
      kernel_init=conv_kernel_init,
      name=name,
    )
  return nn.Conv(
    features,
    (kernel, kernel),
    strides=(stride, stride),
    padding=((pad, pad), (pad, pad)),
    use_bias=False,
    dtype=dtype,
    kernel_init=conv_kernel_init,
    name=name,
  )


def _check_nhwc(x: Array, where: str) -> None:
  if x.ndim != 4:
    raise ValueError(f'{where}: expected an NHWC batch (4 dims), got shape {tuple(x.shape)}.')


class Bottleneck(nn.Module):
  """torchvision ``Bottleneck`` (v1.5): 1×1 → 3×3 (stride) → 1×1 (×expansion), residual, ReLU."""

  features: int
  strides: int = 1
  downsample: bool = False
  expansion: int = BOTTLENECK_EXPANSION
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  bn_axis_name: str | None = None
  zero_init_last_bn: bool = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, *, train: bool) -> Array:
    _check_nhwc(x, 'Bottleneck')
    out_features = self.features * self.expansion
    if not self.downsample and (self.strides != 1 or x.shape[-1] != out_features):
      raise ValueError(
        f'Bottleneck: input has {x.shape[-1]} channels and strides={self.strides}, but the '
        f'block outputs {out_features} channels without a downsample branch; pass '
        f'downsample=True (torchvision adds it when the stride or channel count changes).'
      )
    bn = lambda name, zero=False: _batch_norm(
      name,
      train=train,
      momentum=self.bn_momentum,
      epsilon=self.bn_epsilon,
      dtype=self.dtype,
      axis_name=self.bn_axis_name,
      zero_scale=zero,
    )

    residual = x
    y = _conv(self.features, 1, 1, 0, 'conv1', self.dtype)(x)
    y = nn.relu(bn('bn1')(y))
    y = _conv(self.features, 3, self.strides, 1, 'conv2', self.dtype)(y)
    y = nn.relu(bn('bn2')(y))
    y = _conv(out_features, 1, 1, 0, 'conv3', self.dtype)(y)
    y = bn('bn3', self.zero_init_last_bn)(y)
    if self.downsample:
      residual = _conv(out_features, 1, self.strides, 0, 'downsample_conv', self.dtype)(x)
      residual = bn('downsample_bn')(residual)
    return nn.relu(y + residual)


class ResNetStage(nn.Module):
  """One torchvision ``layerN``: ``num_blocks`` Bottlenecks named '0', '1', …; the first strides
  and carries the downsample branch."""

  num_blocks: int
  features: int
  strides: int = 1
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  bn_axis_name: str | None = None
  zero_init_last_bn: bool = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, *, train: bool) -> Array:
    if self.num_blocks < 1:
      raise ValueError(f'ResNetStage: num_blocks must be >= 1, got {self.num_blocks}.')
    for i in range(self.num_blocks):
      x = Bottleneck(
        self.features,
        strides=self.strides if i == 0 else 1,
        downsample=i == 0,
        bn_momentum=self.bn_momentum,
        bn_epsilon=self.bn_epsilon,
        bn_axis_name=self.bn_axis_name,
        zero_init_last_bn=self.zero_init_last_bn,
        dtype=self.dtype,
        name=str(i),
      )(x, train=train)
    return x


class ResNetStem(nn.Module):
  """conv1 (7×7/2, pad 3) → bn1 → ReLU → max-pool 3×3/2 (pad 1 with −inf)."""

  width: int = 64
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  bn_axis_name: str | None = None
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, *, train: bool, mask: Array | None = None) -> Array:
    """``mask`` (N,) bool: only those rows enter bn1's batch statistics (all rows if None)."""
    _check_nhwc(x, 'ResNetStem')
    _check_width(self.width, 'ResNetStem')
    x = _conv(self.width, 7, 2, 3, 'conv1', self.dtype)(x)
    # nn.BatchNorm's computation with a per-image mask for the statistics (see the module).
    x = RowMaskedBatchNorm(
      use_running_average=not train,
      momentum=self.bn_momentum,
      epsilon=self.bn_epsilon,
      dtype=self.dtype,
      axis_name=self.bn_axis_name,
      name='bn1',
    )(x, mask)
    x = nn.relu(x)
    return max_pool_3x3_s2(x)


class ResNet50(nn.Module):
  """torchvision ResNet-50 v1.5. ``__call__`` returns the global-average-pooled feature
  (N, 32·width) when ``num_classes`` is None, else the logits (N, num_classes).

  Stage by stage: ``stem(x, train=)``, ``stages(x, start=, stop=, train=)`` (through
  ``model.apply(..., method=...)``), or compose ``ResNetStem``/``ResNetStage`` directly.
  """

  width: int = 64
  last_stride: int = 1
  num_classes: int | None = None
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  bn_axis_name: str | None = None
  zero_init_last_bn: bool = False
  dtype: Dtype = jnp.float32

  def setup(self) -> None:
    if self.num_classes is not None and (
      not isinstance(self.num_classes, int) or self.num_classes < 1
    ):
      raise ValueError(
        f'ResNet50: num_classes must be None or a positive int, got {self.num_classes!r}.'
      )
    bn_kwargs = dict(
      bn_momentum=self.bn_momentum,
      bn_epsilon=self.bn_epsilon,
      bn_axis_name=self.bn_axis_name,
      dtype=self.dtype,
    )
    self.stem_module = ResNetStem(width=self.width, **bn_kwargs)
    # Share scopes so the stem's conv1/bn1 sit at the top level, as torchvision names them.
    nn.share_scope(self, self.stem_module)
    specs = stage_specs(self.width, self.last_stride)
    layers = [
      ResNetStage(
        s.num_blocks, s.features, s.stride, zero_init_last_bn=self.zero_init_last_bn, **bn_kwargs
      )
      for s in specs
    ]
    self.layer1, self.layer2, self.layer3, self.layer4 = layers
    if self.num_classes is not None:
      fan_in = specs[-1].features * BOTTLENECK_EXPANSION
      self.fc = nn.Dense(
        self.num_classes,
        dtype=self.dtype,
        kernel_init=torch_linear_kernel_init(),
        bias_init=torch_linear_bias_init(fan_in),
      )

  def stem(self, x: Array, *, train: bool) -> Array:
    return self.stem_module(x, train=train)

  def stages(self, x: Array, *, start: str = 'layer1', stop: str = 'layer4', train: bool) -> Array:
    named = {
      'layer1': self.layer1,
      'layer2': self.layer2,
      'layer3': self.layer3,
      'layer4': self.layer4,
    }
    return run_stages(named, x, start=start, stop=stop, train=train)

  def __call__(self, x: Array, *, train: bool) -> Array:
    x = self.stages(self.stem(x, train=train), train=train)
    x = jnp.mean(x, axis=(1, 2))
    if self.num_classes is not None:
      x = self.fc(x)
    return x
