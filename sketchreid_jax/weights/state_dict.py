"""State-dict helpers shared by the converters: key clean-up, tree walking and the one comparison
of a PyTorch state dict against the layout a Flax model expects."""

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

# Flax leaf name → PyTorch suffix, per kind of layer (conv/dense vs BatchNorm).
WEIGHT_NAMES = {'kernel': 'weight', 'bias': 'bias'}
BN_PARAM_NAMES = {'scale': 'weight', 'bias': 'bias'}
BN_STAT_NAMES = {'mean': 'running_mean', 'var': 'running_var'}

# torch.nn.DataParallel / DistributedDataParallel prefix every key with this.
DATA_PARALLEL_PREFIX = 'module.'


def leaves(tree: Mapping[str, Any], prefix: tuple[str, ...] = ()):
  """(path, leaf) of every leaf of a nested mapping, depth first."""
  for key, value in tree.items():
    if isinstance(value, Mapping):
      yield from leaves(value, prefix + (key,))
    else:
      yield prefix + (key,), value


def strip_prefix(state_dict: Mapping[str, Any]) -> dict[str, Any]:
  """The state dict without DataParallel's 'module.' prefix (refusing a key given both ways)."""
  out = {}
  for key, value in state_dict.items():
    if not isinstance(key, str):
      raise TypeError(f'state dict keys must be strings (PyTorch parameter names), got {key!r}.')
    key = key.removeprefix(DATA_PARALLEL_PREFIX)
    if key in out:
      raise ValueError(
        f'state dict has {key!r} both with and without the {DATA_PARALLEL_PREFIX!r} prefix; '
        f'keep one copy.'
      )
    out[key] = value
  return out


def layout_problems(
  state_dict: Mapping[str, Any], layout: Mapping[str, tuple[str, Any, tuple]], model: str
) -> list[str]:
  """Every missing, mis-shaped or unexpected key of ``state_dict`` against ``layout`` (PyTorch key
  → (collection, Flax path, PyTorch shape)); BatchNorm's num_batches_tracked is expected."""
  bn_prefixes = {key.rsplit('.', 1)[0] for key in layout if key.endswith('.running_mean')}
  problems = []
  for key, (_, _, shape) in layout.items():
    if key not in state_dict:
      problems.append(f'missing key {key!r} (expected shape {shape})')
    elif tuple(np.shape(state_dict[key])) != shape:
      problems.append(
        f'shape mismatch for {key!r}: file has {tuple(np.shape(state_dict[key]))}, '
        f'{model} expects {shape}'
      )
  for key in state_dict:
    if key in layout:
      continue
    if key.endswith('.num_batches_tracked') and key.rsplit('.', 1)[0] in bn_prefixes:
      continue
    problems.append(f'unexpected key {key!r} (shape {tuple(np.shape(state_dict[key]))})')
  return problems


def torch_layout(
  variables: Mapping[str, Any], rename: Callable[[str], str] = lambda part: part
) -> dict[str, tuple[str, tuple[str, ...], tuple[int, ...]]]:
  """PyTorch key → (Flax collection, Flax path, PyTorch shape) for Flax variables (arrays or
  shape structs) made of conv, dense and BatchNorm layers; ``rename`` maps a Flax module name to
  PyTorch's. Conv kernels HWIO → OIHW, dense kernels (in, out) → (out, in)."""

  def key(path: tuple[str, ...], names: Mapping[str, str]) -> str:
    *parent, name = path
    return '.'.join([rename(p) for p in parent] + [names[name]])

  params = variables['params']
  layout = {}
  for path, leaf in leaves(params):
    siblings = params
    for part in path[:-1]:
      siblings = siblings[part]
    names = WEIGHT_NAMES if 'kernel' in siblings else BN_PARAM_NAMES
    shape = tuple(leaf.shape)
    if path[-1] == 'kernel':
      shape = (shape[3], shape[2], shape[0], shape[1]) if len(shape) == 4 else shape[::-1]
    layout[key(path, names)] = ('params', path, shape)
  for path, leaf in leaves(variables.get('batch_stats', {})):
    layout[key(path, BN_STAT_NAMES)] = ('batch_stats', path, tuple(leaf.shape))
  return layout


def variables_from_layout(state_dict: Mapping[str, Any], layout: Mapping[str, Any]) -> dict:
  """Flax ``{'params', 'batch_stats'}`` from a checked state dict: ``layout[key] = (collection,
  path, shape)``; kernels go OIHW → HWIO (convolutions) and (out, in) → (in, out) (dense)."""
  variables: dict[str, Any] = {'params': {}, 'batch_stats': {}}
  for key, (collection, path, _) in layout.items():
    value = np.asarray(state_dict[key], dtype=np.float32)
    if path[-1] == 'kernel':
      value = value.transpose(2, 3, 1, 0) if value.ndim == 4 else value.T
    node = variables[collection]
    for part in path[:-1]:
      node = node.setdefault(part, {})
    node[path[-1]] = np.ascontiguousarray(value)
  return variables
