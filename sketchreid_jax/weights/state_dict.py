"""State-dict helpers shared by the converters: key clean-up, tree walking and the one comparison
of a PyTorch state dict against the layout a Flax model expects."""

from collections.abc import Mapping
from typing import Any

import numpy as np

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
