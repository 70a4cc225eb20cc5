"""The MM'23 release's trained model → Flax variables for our two-stream model (B(M) preset).

Implements the conversion of a checkpoint of the released code of "Beyond Domain Gap: Exploiting
Subjectivity in Sketch-Based Person Retrieval" (ACM MM'23, github.com/Lin-Kayla/
subjectivity-sketch-reid): ``train_mask1k.py`` saves ``{'net': model.state_dict(), 'cmc', 'mAP',
'epoch'}`` as ``*.t``; ``weights.io.read_state_dict`` unwraps ``'net'``. ``mm23_from_state_dict``
maps that state dict onto the variables of ``methods.get_method('cmdsl').model_for(mm23_config())``
(CMDSL without FFAM = ``models.Baseline``'s parameter tree, with the Non-local fusion block), and
``mm23_config`` is the config of ``configs/cmdsl.py:mm23_baseline`` restated inside the package (the
``configs/`` folder is not installed) with the width and depth read off the file.

Mapping (release key → ours; inside the ResNets the torchvision names, see weights/resnet.py)::

    visible_module.visible.{conv1,bn1}.*     photo_stem/{conv1,bn1}   (photo stem)
    thermal_module.thermal.{conv1,bn1}.*     sketch_stem/{conv1,bn1}  (sketch stem)
    base_resnet.base.layer1..layer4.*        layer1..layer4           (shared stages)
    nonLocal.{g.0,theta,phi}.{weight,bias}   fusion_block/{g,theta,phi}/{kernel,bias}
    nonLocal.W.0.*, nonLocal.W.1.*           fusion_block/W_conv, fusion_block/W_bn
    bottleneck.{weight,running_mean,_var}    bnneck/bn/{scale} + batch_stats bnneck/bn/{mean,var}
    classifier.weight (C, 2048)              bnneck/classifier/kernel (2048, C)

Not used at evaluation, listed in the report by prefix and dropped: the stems' own layer1–4 (each
stem is a whole torchvision-style ResNet of which only conv1/bn1 run), the base ResNet's conv1/bn1,
any ``fc``/``avgpool`` entries (the release's ResNet has none, older copies may), ``cmalign.*``
(``maskFc``, the training-only CMAlign mask), ``clip.*`` (the CLIP text encoder of training) and
every BatchNorm ``num_batches_tracked`` counter.

Interpretations chosen:

* The expected layout is read off the model the converted workdir builds (``jax.eval_shape`` of its
  init, walked by ``state_dict.torch_layout``), so the converter cannot drift from the model. Every
  expected tensor must be present with exactly its shape; a key outside the known used and unused
  sets is an error too (it means another variant of the code): nothing is left at a random init and
  nothing unknown is dropped silently.
* Width = ``visible_module.visible.conv1.weight``'s output channels (64 in the release), blocks per
  stage = the ``base_resnet.base.layerN.K.`` indices ((3, 4, 6, 3)), classes =
  ``classifier.weight``'s rows. layer4's stride (1 in the release, ``last_conv_stride=1``) leaves no
  trace in the weights: the config's ``model.last_stride`` (1) is taken.
* The release's ResNet puts a Bottleneck's stride on its 3×3 conv (``conv2``) and on the downsample
  conv, as torchvision v1.5 and ``models.resnet`` do, so its conv/BN tensors convert unchanged.
* ``bottleneck.bias`` exists in the file (BatchNorm1d always has one) but the release freezes it at
  its zero init; our BNNeck has no bias, so the bias is checked to be exactly zero and dropped. A
  non-zero bias is refused: the converted model would compute something else.
* GeM: the release computes ``(mean(x³) + 1e-12)^(1/3)``; ours clamps ``max(x, 1e-6)`` before the
  power. On post-ReLU maps the two differ far below 1e-4 on normalised embeddings; ours is kept.
* A leading ``module.`` (``nn.DataParallel``) is stripped. Values are cast to float32 (CLIP's
  half-precision tensors are dropped anyway).
"""

import dataclasses
import functools
import re
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sketchreid_jax.config_base import base_config, set_keys
from sketchreid_jax.methods import get_method
from sketchreid_jax.weights.state_dict import (
  layout_problems,
  strip_prefix,
  torch_layout,
  variables_from_layout,
)

RELEASE_URL = 'https://github.com/Lin-Kayla/subjectivity-sketch-reid'
_MAX_LISTED = 10

PHOTO_STEM = 'visible_module.visible'
SKETCH_STEM = 'thermal_module.thermal'
BASE = 'base_resnet.base'
WIDTH_KEY = f'{PHOTO_STEM}.conv1.weight'
CLASSIFIER_KEY = 'classifier.weight'
NECK_BIAS_KEY = 'bottleneck.bias'

# configs/cmdsl.py:mm23_baseline as dotted overrides of base_config(): every key the preset changes
# (its docstring gives the reasons), plus the evaluation keys spelled out although they are
# base_config's. tests/test_mm23_weights.py compares the whole config with the preset.
MM23_CONFIG: dict[str, Any] = {
  'method': 'cmdsl',
  'data.image_size': (288, 144),
  'data.resize_antialias': True,  # the release resizes with PIL's antialiasing filter on load
  'sampler.scheme': 'release',
  'model.last_stride': 1,
  'model.ffam_stages': (),
  'model.sketch_fusion': True,
  'model.fusion_nonlocal': True,
  'optim.head_modules': (
    'gem',
    'bnneck',
    'ffam_layer1',
    'ffam_layer2',
    'ffam_layer3',
    'ffam_layer4',
  ),
  'loss.wrt_shift': 'reference',
  'loss.rtcl_weight': 0.0,
  'loss.cmalign_ic_weight': 0.0,
  'loss.cmalign_dt_weight': 0.5,
  'loss.cmalign_mask': 'attribute',
  'train.epochs': 81,
  'eval.every_epochs': 2,
  'eval.offset_epochs': 1,
  'eval.best_metric': 'R-1',
  'eval.protocols': ('multi_query', 'single_query'),
  'eval.multi_query_aggregate': 'stem',
  'eval.feature': 'feat',  # the release ranks with F.normalize of the pre-BN GeM feature
  'eval.flip': False,
}

# Our top-level module → the release's module prefix (stages go under the base ResNet).
_PREFIXES = {'photo_stem': PHOTO_STEM, 'sketch_stem': SKETCH_STEM, 'fusion_block': 'nonLocal'}
# Inside the Non-local block and the head: our module name → the release's sub-module name.
_SUBMODULES = {
  'fusion_block': {'g': 'g.0', 'theta': 'theta', 'phi': 'phi', 'W_conv': 'W.0', 'W_bn': 'W.1'},
  'bnneck': {'bn': 'bottleneck', 'classifier': 'classifier'},
}
# Flax module name → torchvision module name where they differ (the downsample Sequential).
_TORCHVISION_NAMES = {'downsample_conv': 'downsample.0', 'downsample_bn': 'downsample.1'}
_STEMS = rf'({re.escape(PHOTO_STEM)}|{re.escape(SKETCH_STEM)})'
# Release keys that evaluation never reads, matched in order: (pattern, group for the report).
_UNUSED = (
  # Each stem is a whole ResNet of which only conv1/bn1 run.
  (re.compile(rf'^{_STEMS}\.(?!conv1\.|bn1\.)([^.]+)'), r'\1.\2.*'),
  # The shared ResNet runs layer1-4 only (its conv1/bn1 are never called).
  (re.compile(rf'^({re.escape(BASE)})\.(?!layer[1-4]\.)([^.]+)'), r'\1.\2.*'),
  (re.compile(r'^(clip|cmalign)\.'), r'\1.*'),
)
_COUNTERS = 'num_batches_tracked (BatchNorm counters)'


@dataclasses.dataclass(frozen=True)
class MM23Report:
  """What ``mm23_from_state_dict`` found: the architecture, and the tensors it used or dropped."""

  width: int
  blocks: tuple[int, ...]
  num_classes: int
  used: int  # tensors converted (bottleneck.bias, checked to be zero, included)
  unused: dict[str, int]  # group (key prefix + '.*') → tensors dropped

  def lines(self) -> list[str]:
    """Human-readable summary, one fact per line."""
    out = [
      f"MM'23 release model: width {self.width}, blocks {'-'.join(map(str, self.blocks))}, "
      f'{self.num_classes} identities; {self.used} tensors converted, '
      f'{sum(self.unused.values())} unused by evaluation and dropped:'
    ]
    width = max((len(k) for k in self.unused), default=0)
    out += [f'  {group:<{width}}  {count:>5}' for group, count in self.unused.items()]
    return out


def mm23_config(*, width: int = 64, blocks: tuple[int, ...] = (3, 4, 6, 3)):
  """``base_config('cmdsl')`` set to the released B(M) model (``MM23_CONFIG``) at this width and
  depth."""
  config = base_config(MM23_CONFIG['method'])
  set_keys(config, MM23_CONFIG, where='weights.mm23.MM23_CONFIG')
  return set_keys(config, {'model.width': width, 'model.blocks': tuple(blocks)})


def _release_key(key: str) -> str:
  """Our torch-style key (``torch_layout``) → the release's key."""
  top, _, rest = key.partition('.')
  if top in _SUBMODULES:
    sub, _, leaf = rest.partition('.')
    names = _SUBMODULES[top]
    if sub not in names:
      raise RuntimeError(
        f'weights/mm23.py does not know the module {top}/{sub}; add it to _SUBMODULES.'
      )
    prefix = _PREFIXES.get(top)
    return '.'.join(p for p in (prefix, names[sub], leaf) if p)
  if top in _PREFIXES:
    return f'{_PREFIXES[top]}.{rest}'
  if re.fullmatch(r'layer[1-4]', top):
    return f'{BASE}.{key}'
  raise RuntimeError(
    f'weights/mm23.py has no release name for the model part {top!r}; the model gained a module '
    f'the release does not have (check mm23_config).'
  )


@functools.lru_cache(maxsize=8)
def expected_layout(
  width: int, blocks: tuple[int, ...], num_classes: int
) -> dict[str, tuple[str, tuple[str, ...], tuple[int, ...]]]:
  """Release key → (Flax collection, Flax path, PyTorch shape) for the converted workdir's model."""
  config = mm23_config(width=width, blocks=blocks)
  model = get_method(config.method).model_for(config, num_classes, None)
  # Shapes do not depend on the input size; a small one keeps tracing cheap (stem map 8×8).
  dummy = jnp.zeros((1, 32, 32, 3))
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), dummy, dummy, train=False))
  shapes = {'params': shapes['params'], 'batch_stats': shapes.get('batch_stats', {})}
  ours = torch_layout(shapes, lambda part: _TORCHVISION_NAMES.get(part, part))
  return {_release_key(key): entry for key, entry in ours.items()}


def _not_release_hint(state_dict: Mapping[str, Any]) -> str:
  if 'conv1.weight' in state_dict and any(k.startswith('layer1.') for k in state_dict):
    return (
      ' It looks like a torchvision ResNet-50: convert it with --model=resnet50 and use it as '
      'config.model.init_checkpoint.'
    )
  if any(k.startswith(('photo_stem', 'sketch_stem')) for k in state_dict):
    return ' It looks like Flax variables of this project already, not a release checkpoint.'
  return (
    f" Pass the 'net' entry of a checkpoint saved by the release's train_mask1k.py ({RELEASE_URL})."
  )


def infer_architecture(state_dict: Mapping[str, Any]) -> tuple[int, tuple[int, ...], int]:
  """(width, blocks per stage, classes) of a release state dict (prefix already stripped)."""
  for key in (WIDTH_KEY, CLASSIFIER_KEY):
    if key not in state_dict:
      raise ValueError(
        f"the state dict has no {key!r}, so it is not the MM'23 release's model."
        + _not_release_hint(state_dict)
      )
  conv1, classifier = np.shape(state_dict[WIDTH_KEY]), np.shape(state_dict[CLASSIFIER_KEY])
  if len(conv1) != 4 or conv1[1:] != (3, 7, 7):
    raise ValueError(f'{WIDTH_KEY!r} has shape {conv1}; a ResNet stem conv is (width, 3, 7, 7).')
  if len(classifier) != 2 or classifier[0] < 1:
    raise ValueError(f'{CLASSIFIER_KEY!r} has shape {classifier}; expected (identities, features).')
  blocks = []
  for stage in range(1, 5):
    pattern = re.compile(rf'^{re.escape(BASE)}\.layer{stage}\.(\d+)\.')
    found = {int(m.group(1)) for key in state_dict if (m := pattern.match(key))}
    if not found:
      raise ValueError(
        f"the state dict has no '{BASE}.layer{stage}.*' keys (the shared ResNet stage), so it is "
        "not the MM'23 release's model." + _not_release_hint(state_dict)
      )
    blocks.append(max(found) + 1)
  return int(conv1[0]), tuple(blocks), int(classifier[0])


def _unused_group(key: str) -> str | None:
  for pattern, group in _UNUSED:
    if m := pattern.match(key):
      return m.expand(group)
  return None


def _problem_message(problems: list[str], width, blocks, num_classes) -> str:
  listed = '\n  '.join(problems[:_MAX_LISTED])
  if len(problems) > _MAX_LISTED:
    listed += f'\n  … and {len(problems) - _MAX_LISTED} more'
  return (
    f"the state dict does not match the MM'23 release's model (width {width}, blocks "
    f'{"-".join(map(str, blocks))}, {num_classes} identities) ({len(problems)} problem(s)):'
    f'\n  {listed}'
  )


def mm23_from_state_dict(state_dict: Mapping[str, Any]) -> tuple[dict[str, Any], MM23Report]:
  """Convert the release's ``model.state_dict()`` (numpy arrays by key) to Flax variables
  ``{'params': …, 'batch_stats': …}`` for ``get_method('cmdsl').model_for(mm23_config(width=,
  blocks=), num_classes)``; returns them with a :class:`MM23Report`. ValueError on any missing,
  mis-shaped or unknown tensor, or a non-zero ``bottleneck.bias``."""
  state_dict = strip_prefix(state_dict)
  width, blocks, num_classes = infer_architecture(state_dict)
  layout = expected_layout(width, blocks, num_classes)
  bn_modules = {key.rsplit('.', 1)[0] for key in layout if key.endswith('.running_mean')}
  checked, unused = {}, {}
  for key, value in state_dict.items():
    if key == NECK_BIAS_KEY or key in layout:
      group = None
    elif key.endswith('.num_batches_tracked') and key.rsplit('.', 1)[0] in bn_modules:
      group = _COUNTERS
    else:
      group = _unused_group(key)
    if group is None:
      checked[key] = value  # used, or unknown: layout_problems reports the unknown ones
    else:
      unused[group] = unused.get(group, 0) + 1
  neck_bias = checked.pop(NECK_BIAS_KEY, None)
  problems = layout_problems(checked, layout, "the MM'23 model")
  neck_shape = layout['bottleneck.weight'][2]
  if neck_bias is None:
    problems.insert(0, f'missing key {NECK_BIAS_KEY!r} (expected shape {neck_shape})')
  elif tuple(np.shape(neck_bias)) != neck_shape:
    problems.insert(
      0,
      f'shape mismatch for {NECK_BIAS_KEY!r}: file has {tuple(np.shape(neck_bias))}, '
      f"the MM'23 model expects {neck_shape}",
    )
  if problems:
    raise ValueError(_problem_message(problems, width, blocks, num_classes))
  bias = np.asarray(neck_bias, np.float64)
  if np.any(bias != 0):
    raise ValueError(
      f'{NECK_BIAS_KEY!r} is not zero (max |bias| {np.abs(bias).max():.3g}): the release freezes '
      'the BNNeck bias at 0 and our BNNeck has none, so this checkpoint cannot be converted '
      'exactly; it was trained with a learnable neck bias by modified code.'
    )
  variables = variables_from_layout(state_dict, layout)
  report = MM23Report(
    width=width,
    blocks=blocks,
    num_classes=num_classes,
    used=len(layout) + 1,
    unused=dict(sorted(unused.items())),
  )
  return variables, report
