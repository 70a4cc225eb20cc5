"""CLI: convert an official PyTorch checkpoint to Flax variables or to a ready workdir (the README's
*Pretrained weights*).

    python -m sketchreid_jax.tools.convert_weights --model=resnet50 \\
        --input=resnet50-0676ba61.pth --output=pretrained/resnet50.msgpack
    python -m sketchreid_jax.tools.convert_weights --model=u2netp --input=u2netp.pth \\
        --output=pretrained/u2netp.msgpack
    python -m sketchreid_jax.tools.convert_weights --model=mm23 --input=mm23_best.t \\
        --output=runs/mm23_release

reads the state dict (``weights.io.read_state_dict``: .pth/.pt/.t with torch installed, .npz,
.safetensors), converts it with the model's converter (which refuses any missing, unexpected or
mis-shaped tensor) and writes it. ``resnet50``/``u2net``/``u2netp`` write a msgpack file
(``weights.io.save_variables``) and print the loaded parameter groups. ``mm23`` (the MM'23
release's trained model, ``weights.mm23``) writes a workdir that ``main --mode=evaluate``,
``tools.reproduce --protocol=evaluate``, ``tools.retrieve``, ``tools.export`` and
``inference.load_trained`` read like a finished training:

* ``config.json``: ``weights.mm23.mm23_config`` (= ``configs/cmdsl.py:mm23_baseline``: CMDSL without
  FFAM/RTCL, multi-query sketch fusion with the Non-local block, 'stem' multi-query evaluation) at
  the width and depth read off the file.
* ``train_meta.json``: ``num_classes`` from the classifier; ``label_to_pid`` is 0..C-1 because the
  file does not record which identity each classifier row belongs to (nothing in this project reads
  it for evaluation); ``converted_from`` marks the folder as a conversion.
* ``checkpoints/0``: an orbax checkpoint of ``params`` and ``batch_stats`` only, in the layout
  ``train.py`` writes (one ``'default'`` item); ``inference.load_trained`` restores exactly those.
  There is no optimiser state: the folder is for evaluation, not a run to resume. Do not train
  into it (``train.py`` rewrites config.json and train_meta.json when it starts); train with a new
  --workdir.

Interpretations chosen (mm23): the output folder must be absent, empty or a previous mm23
conversion; anything else is refused, so nothing the user made is overwritten. A previous
conversion has its three entries replaced and everything else in it (e.g. ``evaluate/`` reports)
kept. The workdir is assembled in a sibling temporary folder and moved into place, so a failed run
leaves no half-written folder.
New models are one entry in ``CONVERTERS``.
"""

import argparse
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from sketchreid_jax.weights import io as weights_io
from sketchreid_jax.weights.resnet import torchvision_resnet50
from sketchreid_jax.weights.u2net import u2net_from_state_dict

MSGPACK, WORKDIR = 'msgpack', 'workdir'
CHECKPOINT_DIR = 'checkpoints'  # inference.CHECKPOINT_DIRS['latest'] (inference imports TF)
# The entries of a converted workdir (replaced by a new conversion into the same folder).
WORKDIR_ENTRIES = ('config.json', 'train_meta.json', CHECKPOINT_DIR)


class Converter(NamedTuple):
  """A model's converter: state dict (numpy by PyTorch key) → Flax variables (msgpack) or
  (variables, report) written as a workdir."""

  description: str
  convert: Callable[[Mapping[str, np.ndarray]], Any]
  output: str = MSGPACK


def _mm23(state_dict: Mapping[str, np.ndarray]):
  from sketchreid_jax.weights.mm23 import mm23_from_state_dict  # builds models: imported on use

  return mm23_from_state_dict(state_dict)


# Keyed by --model; the default output of a msgpack converter is pretrained/<model>.msgpack.
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
  'mm23': Converter(
    "the MM'23 release's trained B(M) model (a train_mask1k.py checkpoint, *.t) as an evaluable "
    'workdir (--output=DIR, required)',
    _mm23,
    WORKDIR,
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
  --model=mm23 takes a checkpoint written by train_mask1k.py of the MM'23 release
  (github.com/Lin-Kayla/subjectivity-sketch-reid): torch.save({'net': net.state_dict(), 'cmc',
  'mAP', 'epoch'}, '<suffix>_best.t'). Its stems, shared ResNet, Non-local block, BNNeck and
  classifier are converted; CLIP, CMAlign's maskFc and the stems' unused layers are listed and
  dropped. --output is the workdir to create (absent, empty, or a previous mm23 conversion).
  Its label_to_pid is 0..C-1: the checkpoint does not say which identity a classifier row is.

input formats:
  .pth/.pt/.t   needs PyTorch (the optional extra: pip install -e '.[torch]', or pip install
                torch; the CPU build is enough); a training checkpoint with a
                'state_dict', 'model' or 'net' entry is unwrapped
  .npz          numpy arrays by PyTorch key, e.g. made elsewhere with
                np.savez('resnet50.npz', **{k: v.numpy() for k, v in sd.items()}); for the
                MM'23 release: sd = torch.load('x_best.t', weights_only=False)['net']
  .safetensors  needs pip install safetensors

examples:
  python -m sketchreid_jax.tools.convert_weights --model=resnet50 --input=resnet50-0676ba61.pth
  python -m sketchreid_jax.tools.convert_weights --model=u2netp --input=u2netp.pth
  python -m sketchreid_jax.tools.convert_weights --model=u2net --input=u2net.npz \\
      --output=pretrained/u2net.msgpack
  python -m sketchreid_jax.tools.convert_weights --model=mm23 --input=mm23_best.npz \\
      --output=runs/mm23_release
  python -m sketchreid_jax.main --mode=evaluate --config=configs/cmdsl.py:mm23_baseline \\
      --workdir=runs/mm23_release --config.data.root=/path/to/Market-Sketch-1K
"""


def build_parser() -> argparse.ArgumentParser:
  models = '\n'.join(f'{name}: {c.description}' for name, c in CONVERTERS.items())
  parser = argparse.ArgumentParser(
    prog='python -m sketchreid_jax.tools.convert_weights',
    description='Convert an official PyTorch checkpoint to Flax variables (msgpack) or, for a '
    'trained re-id model, to an evaluable workdir, checking that every tensor is present with the '
    'expected shape. Models:\n' + models,
    epilog=_EPILOG,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  parser.add_argument('--model', choices=sorted(CONVERTERS), required=True, help='which network')
  parser.add_argument(
    '--input', type=Path, required=True, help='the checkpoint (.pth/.pt/.t, .npz, .safetensors)'
  )
  parser.add_argument(
    '--output',
    type=Path,
    help='msgpack file to write (default: pretrained/<model>.msgpack); for mm23 the workdir '
    'folder to create (required)',
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


# ----------------------------------------------------------------------------- workdir (mm23)


def _previous_conversion(directory: Path) -> bool:
  """Whether ``directory`` holds a workdir this tool wrote (its train_meta.json says so)."""
  try:
    with open(directory / 'train_meta.json') as f:
      return isinstance(json.load(f).get('converted_from'), Mapping)
  except (OSError, ValueError, AttributeError):
    return False


def _check_output_dir(output: Path) -> list[str]:
  """The entries of ``output`` that a conversion keeps; ValueError if it may not be written."""
  if not output.exists():
    return []
  if not output.is_dir():
    raise ValueError(f'--output={output} is a file; give a folder for the converted workdir.')
  entries = sorted(os.listdir(output))
  if not entries:
    return []
  if not _previous_conversion(output):
    raise ValueError(
      f'--output={output} is not empty and is not a previous conversion ({len(entries)} entries, '
      f'e.g. {entries[0]!r}); choose a new folder, nothing was written.'
    )
  if 'best' in entries:
    # load_trained reads best/ before checkpoints/: the new weights would be shadowed.
    raise ValueError(
      f'{output}/best exists (a training ran in this converted folder); choose a new folder, '
      'nothing was written.'
    )
  return [e for e in entries if e not in WORKDIR_ENTRIES]


def _save_checkpoint(directory: Path, variables: Mapping[str, Any]) -> None:
  import orbax.checkpoint as ocp  # slow to import; only the mm23 path needs it

  # The handler and single 'default' item of checkpoints.managers; step 0.
  manager = ocp.CheckpointManager(
    os.fspath(directory.absolute()),
    options=ocp.CheckpointManagerOptions(create=True),
    item_handlers=ocp.StandardCheckpointHandler(),
  )
  manager.save(0, args=ocp.args.StandardSave(dict(variables)))
  manager.wait_until_finished()
  manager.close()


def write_workdir(output: Path, variables, report, source: Path) -> list[str]:
  """Write the converted MM'23 model as a workdir at ``output``; returns the entries kept."""
  from sketchreid_jax.weights.mm23 import RELEASE_URL, mm23_config

  kept = _check_output_dir(output)
  config = mm23_config(width=report.width, blocks=report.blocks)
  meta = {
    'num_classes': report.num_classes,
    # The release's checkpoint does not record the identity of each classifier row.
    'label_to_pid': list(range(report.num_classes)),
    'label_to_pid_note': 'unknown: 0..C-1 stands in (the checkpoint does not record the pids)',
    'converted_from': {
      'model': 'mm23',
      'input': os.fspath(source.absolute()),
      'release': RELEASE_URL,
      'width': report.width,
      'blocks': list(report.blocks),
    },
  }
  output.parent.mkdir(parents=True, exist_ok=True)
  staging = Path(tempfile.mkdtemp(dir=output.parent, prefix=f'.{output.name}.converting-'))
  umask = os.umask(0)
  os.umask(umask)
  # mkdtemp makes the folder private (0700); the workdir gets the permissions mkdir would give.
  os.chmod(staging, 0o777 & ~umask)
  try:
    (staging / 'config.json').write_text(config.to_json_best_effort(indent=2))
    (staging / 'train_meta.json').write_text(json.dumps(meta, indent=2))
    _save_checkpoint(staging / CHECKPOINT_DIR, variables)
    if not output.exists() or not os.listdir(output):
      if output.exists():
        output.rmdir()
      os.replace(staging, output)
      return kept
    for entry in WORKDIR_ENTRIES:  # a previous conversion: replace its own entries only
      target = output / entry
      if target.is_dir():
        shutil.rmtree(target)
      os.replace(staging / entry, target)
    staging.rmdir()
    return kept
  finally:
    if staging.exists():
      shutil.rmtree(staging, ignore_errors=True)


def _print_workdir_summary(output: Path, report, variables, kept: list[str]) -> None:
  print(f'mm23: wrote the workdir {output} (config.json, train_meta.json, {CHECKPOINT_DIR}/0)')
  for line in report.lines():
    print(line)
  groups = _groups(variables)
  total = sum(p for _, p in groups.values())
  print(f'  converted: {", ".join(groups)} ({total:,} parameters)')
  print(f'  label_to_pid: 0..{report.num_classes - 1} (the checkpoint does not record the pids)')
  if kept:
    print(f'  kept from the previous conversion: {", ".join(kept)} (reports of the old weights)')
  print(
    f'evaluate it: python -m sketchreid_jax.main --mode=evaluate '
    f'--config=configs/cmdsl.py:mm23_baseline --workdir={output} '
    '--config.data.root=/path/to/Market-Sketch-1K'
  )


def main(argv: Sequence[str] | None = None) -> int:
  args = build_parser().parse_args(argv)
  converter = CONVERTERS[args.model]
  if converter.output == WORKDIR and args.output is None:
    print(f'error: --model={args.model} needs --output=DIR, the workdir to write.', file=sys.stderr)
    return 2
  output = args.output or Path('pretrained') / f'{args.model}.msgpack'
  try:
    if converter.output == WORKDIR:
      _check_output_dir(output)  # before the (slow) conversion; checked again when writing
    state_dict = weights_io.read_state_dict(args.input)
    converted = converter.convert(state_dict)
    if converter.output == WORKDIR:
      variables, report = converted
      kept = write_workdir(output, variables, report, args.input)
    else:
      variables = converted
      weights_io.save_variables(output, variables)
  except (FileNotFoundError, ImportError, ValueError) as err:
    print(f'error: {err}', file=sys.stderr)
    return 2
  if converter.output == WORKDIR:
    _print_workdir_summary(output, report, variables, kept)
  else:
    _print_summary(args.model, output, _groups(variables))
  return 0


if __name__ == '__main__':
  sys.exit(main())
