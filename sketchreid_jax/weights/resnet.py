"""torchvision ResNet-50 state dicts → Flax variables for ``models.ResNet50``.

Implements docs/design.md §3 ``sketchreid_jax.weights.torchvision_resnet50(state_dict)`` and the weight
half of §4 "Backbone": the ImageNet weights of torchvision's ``resnet50`` (``resnet50-0676ba61.pth``,
IMAGENET1K_V1, or ``resnet50-11ad3fa6.pth``, IMAGENET1K_V2; ``resnet50-19c8e357.pth`` is the older
name of V1). Nothing is downloaded here: the user supplies the file, read with
``weights.io.read_state_dict``.

Mapping (``models.resnet`` names its modules after torchvision, see its docstring)::

    torchvision key                      Flax
    conv1.weight (O, I, kh, kw)          params/conv1/kernel (HWIO)
    bn1.weight, bn1.bias                 params/bn1/scale, params/bn1/bias
    bn1.running_mean, .running_var       batch_stats/bn1/mean, batch_stats/bn1/var
    layerS.B.convK.weight                params/layerS/B/convK/kernel
    layerS.B.bnK.*                       params|batch_stats/layerS/B/bnK/*
    layerS.B.downsample.0.weight         params/layerS/B/downsample_conv/kernel
    layerS.B.downsample.1.*              params|batch_stats/layerS/B/downsample_bn/*
    fc.weight (out, in), fc.bias         params/fc/kernel (in, out), params/fc/bias

Interpretations chosen:

* The expected layout is read off ``models.ResNet50`` itself (``jax.eval_shape`` of its init), so
  the converter cannot drift from the model. Every expected tensor must be present with exactly
  the expected shape and nothing else may be present, otherwise ValueError lists the first
  problems; nothing is ever left at a random init.
* ``fc`` is optional: a state dict without ``fc.weight``/``fc.bias`` converts to the feature
  extractor (``num_classes=None``); with them, ``num_classes`` is read off ``fc.bias`` (1000 for
  ImageNet; a fine-tuned classifier of another size is accepted). One of the two alone is an error.
* ``num_batches_tracked`` buffers of BatchNorm layers are ignored (Flax's momentum is fixed); one
  that belongs to no BatchNorm layer counts as unexpected.
* A leading ``module.`` (``nn.DataParallel`` checkpoints) is stripped from every key that has it.
* Other torchvision depths are refused and named: the blocks per stage are counted from the keys
  (ResNet-101 = 3-4-23-3, ResNet-152 = 3-8-36-3; ResNet-18/34 have no ``conv3``); a
  ``wide_resnet50_2`` file has ResNet-50's keys with twice the bottleneck width and fails on shapes.
* ``width`` (64 = the real network) is a keyword for narrow test models; the CLI always uses 64.
* Returns plain nested dicts of C-contiguous float32 numpy arrays (half/double inputs are cast).
"""

import functools
import re
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sketchreid_jax.models.resnet import RESNET50_BLOCKS, ResNet50
from sketchreid_jax.weights.state_dict import (
  layout_problems,
  strip_prefix,
  torch_layout,
  variables_from_layout,
)

_MAX_LISTED = 10

# Flax module name → torchvision module name where they differ (the downsample Sequential).
_MODULE_NAMES = {'downsample_conv': 'downsample.0', 'downsample_bn': 'downsample.1'}
# torchvision depth → blocks per stage (Bottleneck for 50+, BasicBlock for 18/34).
_KNOWN_DEPTHS = {
  'ResNet-18': (2, 2, 2, 2),
  'ResNet-34': (3, 4, 6, 3),
  'ResNet-50': RESNET50_BLOCKS,
  'ResNet-101': (3, 4, 23, 3),
  'ResNet-152': (3, 8, 36, 3),
}


@functools.lru_cache(maxsize=8)
def expected_layout(
  width: int = 64, num_classes: int | None = 1000
) -> dict[str, tuple[str, tuple[str, ...], tuple[int, ...]]]:
  """torchvision key → (Flax collection, Flax path, torchvision shape) for ``ResNet50(width,
  num_classes=num_classes)``; ``num_classes=None`` = no ``fc``."""
  module = ResNet50(width=width, num_classes=num_classes)
  # Parameter shapes do not depend on the input size; a small input keeps tracing cheap.
  shapes = jax.eval_shape(
    lambda: module.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False)
  )
  return torch_layout(shapes, lambda part: _MODULE_NAMES.get(part, part))


def _num_classes(state_dict: Mapping[str, Any]) -> int | None:
  has_weight, has_bias = 'fc.weight' in state_dict, 'fc.bias' in state_dict
  if not (has_weight or has_bias):
    return None
  if has_weight != has_bias:
    present, absent = ('fc.weight', 'fc.bias') if has_weight else ('fc.bias', 'fc.weight')
    raise ValueError(
      f'the state dict has {present!r} but not {absent!r}; a torchvision classifier has both '
      f'(drop both to convert the feature extractor only).'
    )
  bias_shape = np.shape(state_dict['fc.bias'])
  if len(bias_shape) != 1 or bias_shape[0] < 1:
    raise ValueError(f"'fc.bias' must be a vector of class biases, got shape {bias_shape}.")
  return int(bias_shape[0])


def _depth_hint(state_dict: Mapping[str, Any]) -> str:
  """Names the torchvision depth the keys belong to when it is not ResNet-50."""
  blocks = []
  for stage in range(1, 5):
    found = {
      int(m.group(1)) for key in state_dict if (m := re.match(rf'layer{stage}\.(\d+)\.', key))
    }
    blocks.append(max(found) + 1 if found else 0)
  bottleneck = any(re.match(r'layer\d\.\d+\.conv3\.', key) for key in state_dict)
  blocks = tuple(blocks)
  conv1, inner = state_dict.get('conv1.weight'), state_dict.get('layer1.0.conv1.weight')
  if blocks == RESNET50_BLOCKS and bottleneck and conv1 is not None and inner is not None:
    if np.shape(inner)[0] == 2 * np.shape(conv1)[0]:
      return (
        '\nThis looks like a torchvision wide_resnet50_2 state dict (bottlenecks twice as wide); '
        'models.ResNet50 needs resnet50 weights (e.g. resnet50-0676ba61.pth).'
      )
  for name, known in _KNOWN_DEPTHS.items():
    if blocks == known and (name in ('ResNet-18', 'ResNet-34')) != bottleneck:
      if name == 'ResNet-50':
        return ''
      return (
        f'\nThis looks like a torchvision {name} state dict (blocks per stage '
        f'{"-".join(map(str, blocks))}, ResNet-50 has {"-".join(map(str, RESNET50_BLOCKS))}); '
        f'models.ResNet50 needs resnet50 weights (e.g. resnet50-0676ba61.pth).'
      )
  return ''


def _problems(state_dict: Mapping[str, Any], width: int, num_classes: int | None) -> list[str]:
  layout = expected_layout(width, num_classes)
  return layout_problems(state_dict, layout, f'ResNet-50 (width {width})')


def torchvision_resnet50(state_dict: Mapping[str, Any], *, width: int = 64) -> dict[str, Any]:
  """Convert a torchvision ``resnet50`` state dict (numpy arrays by key) to Flax variables
  ``{'params': …, 'batch_stats': …}`` for ``models.ResNet50(width=width, num_classes=C)``, where
  C is the size of ``fc`` (1000 for ImageNet) or None when the state dict has no ``fc``."""
  state_dict = strip_prefix(state_dict)
  num_classes = _num_classes(state_dict)
  problems = _problems(state_dict, width, num_classes)
  if problems:
    listed = '\n  '.join(problems[:_MAX_LISTED])
    more = len(problems) - _MAX_LISTED
    if more > 0:
      listed += f'\n  … and {more} more'
    raise ValueError(
      f'the state dict does not match torchvision resnet50 (width {width}) '
      f'({len(problems)} problem(s)):\n  {listed}{_depth_hint(state_dict)}'
    )
  return variables_from_layout(state_dict, expected_layout(width, num_classes))
