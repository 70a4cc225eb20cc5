"""CLI: convert an official PyTorch checkpoint to Flax variables (DESIGN.md §3, §4 Backbone and
U²-Net, §6).

    python -m sketchreid_jax.tools.convert_weights --model=resnet50 \\
        --input=resnet50-0676ba61.pth --output=pretrained/resnet50.msgpack
    python -m sketchreid_jax.tools.convert_weights --model=u2netp --input=u2netp.pth \\
        --output=pretrained/u2netp.msgpack

reads the state dict (``weights.io.read_state_dict``: .pth/.pt with torch installed, .npz,
.safetensors), converts it with the model's converter (which refuses any missing, unexpected or
mis-shaped tensor), writes msgpack (``weights.io.save_variables``) and prints the loaded
parameter groups. Nothing is downloaded. New models are one entry in ``CONVERTERS``.
"""

import argparse
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from sketchreid_jax.weights import io as weights_io
from sketchreid_jax.weights.resnet import torchvision_resnet50
from sketchreid_jax.weights.u2net import u2net_from_state_dict


class Converter(NamedTuple):
  """A model's converter: state dict (numpy by PyTorch key) → Flax variables."""

  description: str
  convert: Callable[[Mapping[str, np.ndarray]], dict[str, Any]]


# Keyed by --model; the default output is pretrained/<model>.msgpack.
CONVERTERS: dict[str, Converter] = {
  'resnet50': Converter(
    'torchvision ImageNet ResNet-50 for models.ResNet50 and config.model.init_checkpoint '
    '(resnet50-0676ba61.pth, 98 MB)',
    torchvision_resnet50,
  ),
  'u2net': Converter(
    'official U2NET for models.U2Net (u2net.pth, 176 MB)',
    lambda sd: u2net_from_state_dict(sd, small=False),
  ),
  'u2netp': Converter(
    'official U2NETP for models.U2NetP (u2netp.pth, 4.7 MB)',
    lambda sd: u2net_from_state_dict(sd, small=True),
  ),
}

_EPILOG = """\
where the files come from (nothing is downloaded by this tool):
  resnet50-0676ba61.pth (98 MB) is torchvision's ImageNet ResNet-50 (IMAGENET1K_V1), the file
  torchvision.models.resnet50(weights='IMAGENET1K_V1') downloads from
  download.pytorch.org/models/. Older torchvision releases (and the re-id reference code) fetch
  the same V1 weights as resnet50-19c8e357.pth; resnet50-11ad3fa6.pth (IMAGENET1K_V2) converts
  too. Take the copy torch cached (~/.cache/torch/hub/checkpoints/) or download it yourself, then
  point a config at the output: --config.model.init_checkpoint=pretrained/resnet50.msgpack.
  u2net.pth (176 MB) and u2netp.pth (4.7 MB) are the pretrained weights linked from the
  README of the official U-2-Net repository (github.com/xuebinqin/U-2-Net, saved_models/).
  Download them yourself and pass the file with --input.

input formats:
  .pth/.pt      needs PyTorch (the optional extra: pip install -e '.[torch]', or pip install
                torch; the CPU build is enough); a training checkpoint with a
                'state_dict' or 'model' entry is unwrapped
  .npz          numpy arrays by PyTorch key, e.g. made elsewhere with
                np.savez('resnet50.npz', **{k: v.numpy() for k, v in sd.items()})
  .safetensors  needs pip install safetensors

examples:
  python -m sketchreid_jax.tools.convert_weights --model=resnet50 --input=resnet50-0676ba61.pth
  python -m sketchreid_jax.tools.convert_weights --model=u2netp --input=u2netp.pth
  python -m sketchreid_jax.tools.convert_weights --model=u2net --input=u2net.npz \\
      --output=pretrained/u2net.msgpack
"""


def build_parser() -> argparse.ArgumentParser:
  models = '\n'.join(f'{name}: {c.description}' for name, c in CONVERTERS.items())
  parser = argparse.ArgumentParser(
    prog='python -m sketchreid_jax.tools.convert_weights',
    description='Convert an official PyTorch checkpoint to Flax variables (msgpack), checking '
    'that every tensor is present with the expected shape. Models:\n' + models,
    epilog=_EPILOG,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  parser.add_argument('--model', choices=sorted(CONVERTERS), required=True, help='which network')
  parser.add_argument(
    '--input', type=Path, required=True, help='the checkpoint (.pth/.pt, .npz, .safetensors)'
  )
  parser.add_argument(
    '--output', type=Path, help='msgpack file to write (default: pretrained/<model>.msgpack)'
  )
  return parser


def _groups(variables: Mapping[str, Any]) -> dict[str, tuple[int, int]]:
  """Top-level module → (tensors incl. BatchNorm statistics, trainable parameter count)."""
  groups: dict[str, list[int]] = {}
  for collection, tree in variables.items():
    for path, leaf in _flatten(tree):
      entry = groups.setdefault(path[0], [0, 0])
      entry[0] += 1
      if collection == 'params':
        entry[1] += int(np.size(leaf))
  return {name: (t, p) for name, (t, p) in groups.items()}


def _flatten(tree: Any, prefix: tuple[str, ...] = ()):
  if isinstance(tree, Mapping):
    for key, value in tree.items():
      yield from _flatten(value, prefix + (str(key),))
  else:
    yield prefix, tree


def _print_summary(model: str, output: Path, groups: Mapping[str, tuple[int, int]]) -> None:
  print(f'{model}: loaded {len(groups)} parameter groups, wrote {output}')
  width = max(len(name) for name in groups)
  print(f'  {"group":<{width}}  {"tensors":>7}  {"parameters":>11}')
  for name, (tensors, params) in groups.items():
    print(f'  {name:<{width}}  {tensors:>7}  {params:>11,}')
  total_t = sum(t for t, _ in groups.values())
  total_p = sum(p for _, p in groups.values())
  print(f'  {"total":<{width}}  {total_t:>7}  {total_p:>11,}')


def main(argv: Sequence[str] | None = None) -> int:
  args = build_parser().parse_args(argv)
  output = args.output or Path('pretrained') / f'{args.model}.msgpack'
  try:
    state_dict = weights_io.read_state_dict(args.input)
    variables = CONVERTERS[args.model].convert(state_dict)
    weights_io.save_variables(output, variables)
  except (FileNotFoundError, ImportError, ValueError) as err:
    print(f'error: {err}', file=sys.stderr)
    return 2
  _print_summary(args.model, output, _groups(variables))
  return 0


if __name__ == '__main__':
  sys.exit(main())
