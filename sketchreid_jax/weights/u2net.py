"""Official U²-Net / U²-NetP PyTorch state dicts → Flax variables for ``models.u2net``.

Implements the U²-Net half of docs/design.md §4 U²-Net's "official weight files" (u2net.pth, 176 MB;
u2netp.pth, 4.7 MB, from the official xuebinqin/U-2-Net repository; nothing is downloaded here,
the user supplies the file, read with ``weights.io.read_state_dict``).

Mapping (the Flax modules carry the official names, so it is mechanical; ``.`` → ``/``)::

    PyTorch key (<conv> = <stage>.<rebnconv>)   Flax
    <conv>.conv_s1.weight (O, I, kh, kw)        params/<stage>/<rebnconv>/conv_s1/kernel (HWIO)
    <conv>.conv_s1.bias                         params/<stage>/<rebnconv>/conv_s1/bias
    <conv>.bn_s1.weight, .bias                  params/…/bn_s1/scale, params/…/bn_s1/bias
    <conv>.bn_s1.running_mean, .running_var     batch_stats/…/bn_s1/mean, batch_stats/…/bn_s1/var
    sideK.weight, .bias (K = 1…6); outconv.*    params/sideK/kernel, bias; params/outconv/…

Interpretations chosen:

* The expected layout is read off the Flax module itself (``jax.eval_shape`` of its init), so the
  converter cannot drift from the model; every expected tensor must be present with exactly the
  expected shape and nothing else may be present, otherwise ValueError lists the first problems.
  Nothing is ever left at a random init.
* ``num_batches_tracked`` buffers of BatchNorm layers are ignored (Flax's momentum is fixed); one
  that belongs to no BatchNorm layer counts as unexpected.
* A leading ``module.`` (``nn.DataParallel`` checkpoints) is stripped from every key that has it.
* When the file does not fit the requested variant but fits the other one exactly, the error says
  so (u2net.pth given for U²-NetP, or the reverse).
* Returns plain nested dicts of C-contiguous float32 numpy arrays (half/double inputs are cast).
"""

import functools
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sketchreid_jax.models.u2net import U2Net, U2NetP
from sketchreid_jax.weights.state_dict import layout_problems, strip_prefix, torch_layout

_MAX_LISTED = 10


def variant_name(small: bool) -> str:
  return 'U2NETP (u2netp.pth)' if small else 'U2NET (u2net.pth)'


@functools.lru_cache(maxsize=2)
def expected_layout(small: bool) -> dict[str, tuple[str, tuple[str, ...], tuple[int, ...]]]:
  """PyTorch key → (Flax collection, Flax path, PyTorch shape) for U2NetP (small) or U2Net."""
  module = U2NetP() if small else U2Net()
  # Parameter shapes do not depend on the input size; a small input keeps tracing cheap.
  shapes = jax.eval_shape(
    lambda: module.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)), train=False)
  )
  return torch_layout(shapes)


def _problems(state_dict: Mapping[str, Any], small: bool) -> list[str]:
  return layout_problems(state_dict, expected_layout(small), variant_name(small))


def u2net_from_state_dict(state_dict: Mapping[str, Any], *, small: bool) -> dict[str, Any]:
  """Convert an official U²-Net state dict (numpy arrays by PyTorch key) to Flax variables
  ``{'params': …, 'batch_stats': …}`` for ``U2NetP`` (``small=True``) or ``U2Net``."""
  state_dict = strip_prefix(state_dict)
  problems = _problems(state_dict, small)
  if problems:
    listed = '\n  '.join(problems[:_MAX_LISTED])
    more = len(problems) - _MAX_LISTED
    if more > 0:
      listed += f'\n  … and {more} more'
    hint = ''
    if not _problems(state_dict, not small):
      hint = (
        f'\nThis looks like a {variant_name(not small)} state dict: convert it with '
        f'small={not small} (CLI: --model={"u2netp" if not small else "u2net"}).'
      )
    raise ValueError(
      f'the state dict does not match the official {variant_name(small)} layout '
      f'({len(problems)} problem(s)):\n  {listed}{hint}'
    )
  variables: dict[str, Any] = {'params': {}, 'batch_stats': {}}
  for key, (collection, path, _) in expected_layout(small).items():
    value = np.asarray(state_dict[key], dtype=np.float32)
    if path[-1] == 'kernel':  # OIHW → HWIO
      value = value.transpose(2, 3, 1, 0)
    node = variables[collection]
    for part in path[:-1]:
      node = node.setdefault(part, {})
    node[path[-1]] = np.ascontiguousarray(value)
  return variables
