"""Reading reference checkpoints and storing converted Flax variables.

Implements the file side of docs/design.md §4 U²-Net's "official weight files" (and of §3's
torchvision converter): ``read_state_dict`` turns a checkpoint into ``{key: np.ndarray}`` for the
converters in this package; ``save_variables``/``load_variables`` store their output with
``flax.serialization`` msgpack.

Interpretations chosen:

* ``.npz`` needs only numpy and ``.safetensors`` the optional ``safetensors`` package; ``.pth`` /
  ``.pt`` need PyTorch, an optional extra that this project never requires: without it the error
  says how to install it or to convert the file to .npz/.safetensors on a machine that has it.
* A ``.pth`` holding a training checkpoint (a dict with a ``'state_dict'``, ``'model'`` or
  ``'net'`` entry, the last being the MM'23 release's ``{'net', 'cmc', 'mAP', 'epoch'}``) is
  unwrapped to that entry; any remaining value that is not a tensor is an error rather than being
  dropped silently. ``.t`` (the release's checkpoint suffix) is read like ``.pth``.
* PyTorch ≥ 2.6 loads with ``weights_only=True`` and refuses the numpy arrays the release saves
  beside ``'net'``; that failure names the one-line re-save that makes a loadable file, instead of
  this code unpickling arbitrary objects itself.
* ``.npz`` files are read with ``allow_pickle=False``: a state dict is arrays only.
* ``save_variables`` writes through a temporary file and a rename, so an interrupted write never
  leaves a truncated file where a valid one is expected.
"""

import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import flax.serialization
import jax
import numpy as np

SUPPORTED_SUFFIXES: tuple[str, ...] = ('.npz', '.safetensors', '.pth', '.pt', '.t')
# Entries of a training checkpoint that hold the state dict (the last: the MM'23 release's).
CHECKPOINT_ENTRIES: tuple[str, ...] = ('state_dict', 'model', 'net')


def _to_numpy(key: str, value: Any) -> np.ndarray:
  if hasattr(value, 'detach'):  # a torch.Tensor; .float() because numpy has no bfloat16
    value = value.detach().cpu()
    if value.is_floating_point():
      value = value.float()
    return value.numpy()
  if isinstance(value, np.ndarray | np.generic | int | float):
    return np.asarray(value)
  raise ValueError(
    f'state dict entry {key!r} is a {type(value).__name__}, not a tensor; pass a file holding '
    f'only a state dict (model.state_dict()).'
  )


def _read_torch(path: Path) -> dict[str, np.ndarray]:
  try:
    import torch  # an optional extra: imported only for .pth/.pt
  except ImportError as err:
    raise ImportError(
      f'reading {path} needs PyTorch, an optional extra of sketchreid_jax: `pip install torch` '
      f'(the CPU build is enough), or convert the file to .npz/.safetensors on a machine that '
      f'has torch, e.g. np.savez(out, **{{k: v.numpy() for k, v in '
      f"torch.load(path, map_location='cpu').items()}})."
    ) from err
  try:
    obj = torch.load(str(path), map_location='cpu')
  except pickle.UnpicklingError as err:
    # torch >= 2.6 (weights_only=True) refuses the release's numpy 'cmc'/'mAP' beside 'net'.
    raise ValueError(
      f'torch.load refuses {path} ({str(err).strip().splitlines()[0][:160]}); if you trust the '
      f'file, re-save its state dict and convert that: python -c "import torch; '
      f"c = torch.load('{path}', map_location='cpu', weights_only=False); "
      f"torch.save(c.get('net', c), '{path.with_name(path.stem + '_net.pth')}')\"."
    ) from err
  if isinstance(obj, Mapping):
    for entry in CHECKPOINT_ENTRIES:
      if isinstance(obj.get(entry), Mapping):
        obj = obj[entry]
        break
  if not isinstance(obj, Mapping):
    raise ValueError(
      f'{path} holds a {type(obj).__name__}, not a state dict; save model.state_dict() instead '
      f'of the whole model.'
    )
  return {str(k): _to_numpy(str(k), v) for k, v in obj.items()}


def read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """``{key: np.ndarray}`` from a .npz, .safetensors or (with torch installed) .pth/.pt/.t file."""
  path = Path(path)
  suffix = path.suffix.lower()
  if suffix not in SUPPORTED_SUFFIXES:
    raise ValueError(
      f'cannot read {path}: unknown suffix {path.suffix!r}; supported: '
      f'{", ".join(SUPPORTED_SUFFIXES)}.'
    )
  if not path.is_file():
    raise FileNotFoundError(f'state dict file not found: {path}')
  if suffix == '.npz':
    with np.load(path, allow_pickle=False) as data:
      return {key: data[key] for key in data.files}
  if suffix == '.safetensors':
    try:
      from safetensors.numpy import load_file  # an optional extra
    except ImportError as err:
      raise ImportError(
        f'reading {path} needs the safetensors package: `pip install safetensors`.'
      ) from err
    return dict(load_file(str(path)))
  return _read_torch(path)


def save_variables(path: str | os.PathLike, variables: Mapping[str, Any]) -> Path:
  """Write a Flax variables dict (``{'params': …, 'batch_stats': …}``) as msgpack; returns the
  path. Parent folders are created."""
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  state = jax.tree.map(np.asarray, flax.serialization.to_state_dict(variables))
  tmp = path.with_name(path.name + '.tmp')
  tmp.write_bytes(flax.serialization.msgpack_serialize(state))
  os.replace(tmp, path)
  return path


def load_variables(path: str | os.PathLike) -> dict[str, Any]:
  """Read variables written by ``save_variables`` (nested dicts of numpy arrays)."""
  path = Path(path)
  how = (
    'convert the official weights first, e.g. `python -m sketchreid_jax.tools.convert_weights '
    '--model=u2netp --input=u2netp.pth --output=pretrained/u2netp.msgpack`'
  )
  if not path.is_file():
    raise FileNotFoundError(f'variables file not found: {path}; {how}.')
  try:
    state = flax.serialization.msgpack_restore(path.read_bytes())
  except Exception as err:
    raise ValueError(
      f'{path} is not a msgpack file written by save_variables ({err}); {how}.'
    ) from err
  if not isinstance(state, Mapping):
    raise ValueError(f'{path} does not hold a variables dict; {how}.')
  return state
