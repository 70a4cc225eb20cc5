"""Initialising the re-id models from a converted ImageNet ResNet-50 (``config.model.init_checkpoint``).

Implements the "every stream starts from ImageNet" part of docs/design.md §4 "Backbone", "Baseline" and
"Three streams": the torchvision ResNet-50, converted once by ``tools.convert_weights
--model=resnet50`` (``weights.resnet.torchvision_resnet50``), is copied into every stream of a
Baseline, CMDSL or DALNet variable tree.

Design: each model declares what comes from where in a ``resnet50_init_map()`` method next to its
own ``setup`` (path in the model's variables → path in ``models.ResNet50``'s, applied to 'params'
and 'batch_stats' alike; CMDSL inherits Baseline's). ``load_pretrained_backbone`` is the one
generic function that applies such a map; nothing here knows the model classes.

Interpretations chosen:

* Every modality-specific part gets its own copy (distinct arrays), as the reference code builds
  one torchvision model per stream; copies are never shared buffers (the train step donates its
  state, and a buffer cannot be donated twice).
* All or nothing: every mapped subtree must match the checkpoint's exactly (same modules, same
  tensors, same shapes), otherwise ValueError lists the first problems and nothing is loaded. A
  width mismatch (a width-64 checkpoint for a width-8 model) is reported first, naming
  ``config.model.width``.
* Whatever the map does not name keeps its fresh init (the heads: GeM, BNNeck, classifier, FFAM,
  DAG, MIA); the report lists loaded and fresh top-level collections with parameter counts, and the
  checkpoint parts nothing used (ImageNet's ``fc``).
* Leaves keep the dtype of the model's variables (float32 parameters and statistics).
"""

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np

from sketchreid_jax.weights import io as weights_io

INIT_MAP_METHOD = 'resnet50_init_map'
COLLECTIONS: tuple[str, ...] = ('params', 'batch_stats')
_MAX_LISTED = 10
_CONVERT = (
  'python -m sketchreid_jax.tools.convert_weights --model=resnet50 '
  '--input=resnet50-0676ba61.pth --output={path}'
)


@dataclasses.dataclass(frozen=True)
class BackboneReport:
  """What ``load_pretrained_backbone`` did, per top-level collection of the model.

  ``loaded``/``fresh``: top-level name → number of trainable parameters copied from the
  checkpoint / left at their fresh init (a collection that is partly loaded appears in both).
  ``batch_stats_loaded``: number of BatchNorm statistic tensors copied. ``unused``: top-level
  parts of the checkpoint no model path took (ImageNet's ``fc``).
  """

  model: str
  loaded: dict[str, int]
  fresh: dict[str, int]
  batch_stats_loaded: int
  unused: tuple[str, ...]

  def __str__(self) -> str:
    names = list(self.loaded) + list(self.fresh) or ['-']
    width = max(len(n) for n in names)
    lines = [
      f'{self.model}: {sum(self.loaded.values()):,} parameters (and {self.batch_stats_loaded} '
      f'BatchNorm statistic tensors) loaded from the ImageNet ResNet-50, '
      f'{sum(self.fresh.values()):,} initialised fresh'
    ]
    lines += [f'  loaded  {n:<{width}}  {c:>11,}' for n, c in self.loaded.items()]
    lines += [f'  fresh   {n:<{width}}  {c:>11,}' for n, c in self.fresh.items()]
    if self.unused:
      lines.append(f'  not used from the checkpoint: {", ".join(self.unused)}')
    return '\n'.join(lines)


def read_backbone_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
  """``weights.io.load_variables`` for ``config.model.init_checkpoint``; a missing file names the
  conversion command."""
  if not os.path.isfile(path):
    raise FileNotFoundError(
      f'config.model.init_checkpoint={str(path)!r} does not exist. Convert the torchvision '
      f'ImageNet weights first: {_CONVERT.format(path=path)} (README "Pretrained weights"), or '
      f"set --config.model.init_checkpoint='' to train from scratch."
    )
  return weights_io.load_variables(path)


def _get(tree: Any, path: tuple[str, ...]) -> Any:
  for part in path:
    if not isinstance(tree, Mapping) or part not in tree:
      return None
    tree = tree[part]
  return tree


def _flat(tree: Any, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
  if not isinstance(tree, Mapping):
    return {prefix: tree}
  out = {}
  for key, value in tree.items():
    out.update(_flat(value, prefix + (str(key),)))
  return out


def _copy_dicts(tree: Any) -> Any:
  """The nested dict structure copied (FrozenDicts become dicts); leaves are shared."""
  if isinstance(tree, Mapping):
    return {key: _copy_dicts(value) for key, value in tree.items()}
  return tree


def _copied(source: Any, like: Any) -> Any:
  """``source``'s arrays as new device arrays in ``like``'s dtypes (``jnp.array`` copies, so
  every stream owns its buffers)."""
  if isinstance(source, Mapping):
    return {key: _copied(value, like[key]) for key, value in source.items()}
  return jnp.array(source, dtype=like.dtype)


def _init_map(model: Any) -> dict[tuple[str, ...], tuple[str, ...]]:
  method = getattr(model, INIT_MAP_METHOD, None)
  if method is None:
    raise TypeError(
      f'{type(model).__name__} declares no {INIT_MAP_METHOD}() (which of its variables come from '
      f'the ImageNet ResNet-50), so config.model.init_checkpoint cannot be applied to it.'
    )
  return {tuple(t.split('/')): tuple(s.split('/')) for t, s in method().items()}


def _check_checkpoint(resnet: Mapping[str, Any], model: Any) -> None:
  kernel = _get(resnet, ('params', 'conv1', 'kernel'))
  if kernel is None or np.ndim(kernel) != 4:
    top = sorted(resnet.get('params', {})) if isinstance(resnet, Mapping) else []
    raise ValueError(
      f'the checkpoint is not a converted ResNet-50 (no params/conv1/kernel; top level '
      f"params: {top[:8]}); convert torchvision's resnet50 weights with "
      f'`python -m sketchreid_jax.tools.convert_weights --model=resnet50`.'
    )
  width = int(np.shape(kernel)[-1])
  model_width = getattr(model, 'width', None)
  if model_width is not None and width != model_width:
    raise ValueError(
      f'the checkpoint is a width-{width} ResNet-50 (conv1 has {width} filters; torchvision '
      f'resnet50 has 64) but the {type(model).__name__} is built with width {model_width} '
      f'(config.model.width). Set config.model.width={width} to use these weights, or '
      f"config.model.init_checkpoint='' to train from scratch."
    )


def _problems(variables, resnet, init_map) -> list[str]:
  problems = []
  for target, source in init_map.items():
    t_name, s_name = '/'.join(target), '/'.join(source)
    present = False
    for collection in COLLECTIONS:
      t = _get(variables.get(collection, {}), target)
      s = _get(resnet.get(collection, {}), source)
      present |= t is not None
      if t is None and s is None:
        continue
      if t is None:
        problems.append(f"the model has no {collection}/{t_name} for the checkpoint's {s_name}")
        continue
      if s is None:
        problems.append(f"the checkpoint has no {collection}/{s_name} for the model's {t_name}")
        continue
      t_flat, s_flat = _flat(t), _flat(s)
      for key in t_flat.keys() - s_flat.keys():
        problems.append(f'missing in the checkpoint: {collection}/{"/".join(source + key)}')
      for key in s_flat.keys() - t_flat.keys():
        problems.append(
          f'the checkpoint has {collection}/{"/".join(source + key)}, the model has no '
          f'{collection}/{"/".join(target + key)}'
        )
      for key in sorted(t_flat.keys() & s_flat.keys()):
        t_shape, s_shape = tuple(np.shape(t_flat[key])), tuple(np.shape(s_flat[key]))
        if t_shape != s_shape:
          problems.append(
            f'shape mismatch: {collection}/{"/".join(target + key)} is {t_shape} in the model, '
            f'{s_shape} in the checkpoint ({collection}/{"/".join(source + key)})'
          )
    if not present:
      problems.append(f'{INIT_MAP_METHOD}() names {t_name}, which the model does not have')
  return problems


def _param_counts(params: Mapping[str, Any]) -> dict[str, int]:
  return {top: sum(int(np.size(v)) for v in _flat(tree).values()) for top, tree in params.items()}


def load_pretrained_backbone(
  variables: Mapping[str, Any], resnet_variables: Mapping[str, Any], model: Any
) -> tuple[dict[str, Any], BackboneReport]:
  """Copy a converted ResNet-50 (``{'params', 'batch_stats'}`` of ``models.ResNet50``) into every
  stream of ``model``'s ``variables`` following ``model.resnet50_init_map()``.

  Returns ``(new variables, report)``; ``variables`` is not modified. Raises ValueError listing the
  first problems when the checkpoint does not fit (nothing is loaded then).
  """
  init_map = _init_map(model)
  _check_checkpoint(resnet_variables, model)
  problems = _problems(variables, resnet_variables, init_map)
  if problems:
    listed = '\n  '.join(problems[:_MAX_LISTED])
    if len(problems) > _MAX_LISTED:
      listed += f'\n  … and {len(problems) - _MAX_LISTED} more'
    raise ValueError(
      f'the ResNet-50 checkpoint does not fit {type(model).__name__} '
      f'({len(problems)} problem(s)):\n  {listed}'
    )
  out = _copy_dicts(variables)
  total = _param_counts(out.get('params', {}))
  loaded: dict[str, int] = {}
  stats = 0
  for target, source in init_map.items():
    for collection in COLLECTIONS:
      src = _get(resnet_variables.get(collection, {}), source)
      if src is None:
        continue
      parent = out[collection]
      for part in target[:-1]:
        parent = parent[part]
      old = _flat(parent[target[-1]])
      parent[target[-1]] = _copied(src, parent[target[-1]])
      if collection == 'params':
        loaded[target[0]] = loaded.get(target[0], 0) + sum(int(np.size(v)) for v in old.values())
      else:
        stats += len(old)
  fresh = {top: n - loaded.get(top, 0) for top, n in total.items() if n - loaded.get(top, 0)}
  used = {source[0] for source in init_map.values()}
  unused = tuple(sorted(set(resnet_variables.get('params', {})) - used))
  report = BackboneReport(type(model).__name__, loaded, fresh, stats, unused)
  return out, report
