"""Runs the frozen U²-Net once over a dataset's photos and stores the foreground masks beside it.

    python -m sketchreid_jax.tools.precompute_masks --root=data/synthetic/pku_sketch \
        --model=u2netp --weights=pretrained/u2netp.msgpack

DALNet's DAG multiplies each training photo by its U²-Net foreground mask. The U²-Net is frozen,
so computing the masks once is exactly equivalent to computing them in every step (docs/design.md §4,
mask source 'precomputed'); the input pipeline then crops and flips each mask with its photo.
Layout and reader: ``sketchreid_jax.datasets.masks``.
"""

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from sketchreid_jax.datasets import masks as masks_lib

IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png', '.bmp')

_EPILOG = """\
what it writes:
  <root>/masks/<model>/<photo path>.png   8-bit greyscale (255 = foreground), the photo's size
for every image under <root>/photo/ (both Market-Sketch-1K and PKU-Sketch keep photos there).
Existing masks are kept (an interrupted run resumes) unless --overwrite is given.

the weights: the official u2netp.pth (4.7 MB) or u2net.pth (176 MB) from the U-2-Net authors,
converted once with
  python -m sketchreid_jax.tools.convert_weights --model=u2netp --input=u2netp.pth
Nothing is downloaded by this project.

then train with the masks:
  python -m sketchreid_jax.main --config=configs/dalnet.py:pku --workdir=runs/dalnet \\
      --config.data.root=<root> --config.data.mask_source=precomputed
"""


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
    prog='python -m sketchreid_jax.tools.precompute_masks',
    description='Precompute DALNet foreground masks with the frozen U²-Net(P).',
    epilog=_EPILOG,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  parser.add_argument('--root', type=Path, required=True, help='dataset folder (has photo/)')
  parser.add_argument(
    '--model',
    choices=masks_lib.MASK_SETS,
    default='u2netp',
    help='which U²-Net (default: %(default)s); also the mask folder name',
  )
  parser.add_argument(
    '--weights',
    type=Path,
    default=None,
    help='converted weights (.msgpack); default pretrained/<model>.msgpack',
  )
  parser.add_argument(
    '--size',
    type=int,
    nargs=2,
    metavar=('H', 'W'),
    default=(320, 320),
    help="the network's input size (official: %(default)s)",
  )
  parser.add_argument('--batch_size', type=int, default=16, help='images per forward pass')
  parser.add_argument('--overwrite', action='store_true', help='recompute existing masks')
  parser.add_argument('--quiet', action='store_true', help='no progress bar')
  return parser


def list_photos(root: Path) -> list[str]:
  """Photo paths relative to ``root``, sorted; a clear error if there are none."""
  folder = root / 'photo'
  if not folder.is_dir():
    raise FileNotFoundError(
      f'{folder} does not exist: --root must be a Market-Sketch-1K or PKU-Sketch folder with a '
      'photo/ subfolder (see data/README.md).'
    )
  paths = sorted(
    str(p.relative_to(root))
    for p in folder.rglob('*')
    if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
  )
  if not paths:
    raise FileNotFoundError(f'no images ({", ".join(IMAGE_SUFFIXES)}) under {folder}.')
  return paths


def _load(root: Path, path: str, size: tuple[int, int]) -> tuple[np.ndarray, tuple[int, int]]:
  """The photo resized to ``size``, ImageNet-normalised, and its original (W, H)."""
  from PIL import Image

  from sketchreid_jax.augment import IMAGENET_MEAN, IMAGENET_STD

  try:
    with Image.open(root / path) as im:
      im = im.convert('RGB')
      original = im.size
      im = im.resize((size[1], size[0]), Image.BILINEAR)
  except Exception as e:  # PIL raises several types for a broken file
    raise ValueError(f'cannot read {root / path}: {e}. Replace or remove the file.') from e
  x = np.asarray(im, np.float32) / 255.0
  return (x - np.asarray(IMAGENET_MEAN)) / np.asarray(IMAGENET_STD), original


def run(args: argparse.Namespace) -> int:
  import jax
  from PIL import Image
  from tqdm.auto import tqdm

  from sketchreid_jax import models
  from sketchreid_jax.weights import io as weights_io

  weights = args.weights or Path('pretrained') / f'{args.model}.msgpack'
  if not weights.is_file():
    raise FileNotFoundError(
      f'{weights} not found. Convert the official {args.model}.pth first:\n'
      f'  python -m sketchreid_jax.tools.convert_weights --model={args.model} '
      f'--input={args.model}.pth --output={weights}'
    )
  variables = weights_io.load_variables(str(weights))
  module = models.U2NetP() if args.model == 'u2netp' else models.U2Net()
  size = tuple(args.size)
  predict = jax.jit(lambda v, x: models.predict_masks(module, v, x, size=size))

  photos = list_photos(args.root)
  todo = [
    p
    for p in photos
    if args.overwrite or not (args.root / masks_lib.mask_relpath(p, args.model)).is_file()
  ]
  print(f'{len(photos)} photos under {args.root / "photo"}; {len(todo)} masks to compute')
  start = time.perf_counter()
  bar = tqdm(total=len(todo), unit='img', disable=True if args.quiet else None)
  for i in range(0, len(todo), args.batch_size):
    chunk = todo[i : i + args.batch_size]
    loaded = [_load(args.root, p, size) for p in chunk]
    batch = np.stack([x for x, _ in loaded])
    # Pad the last chunk to the batch size so one compiled program serves every chunk.
    pad = args.batch_size - len(chunk)
    if pad:
      batch = np.concatenate([batch, np.zeros((pad, *batch.shape[1:]), batch.dtype)])
    out = np.asarray(predict(variables, batch))[: len(chunk), ..., 0]
    for path, (_, original), mask in zip(chunk, loaded, out):
      target = args.root / masks_lib.mask_relpath(path, args.model)
      target.parent.mkdir(parents=True, exist_ok=True)
      image = Image.fromarray(np.round(mask * 255).astype(np.uint8), mode='L')
      tmp = target.with_suffix('.tmp.png')
      image.resize(original, Image.BILINEAR).save(tmp)
      os.replace(tmp, target)  # a killed run never leaves a half-written mask
    bar.update(len(chunk))
  bar.close()
  print(
    f'wrote {len(todo)} masks to {args.root / masks_lib.MASK_DIR / args.model} '
    f'in {time.perf_counter() - start:.1f} s'
  )
  return 0


def main(argv: Sequence[str] | None = None) -> int:
  args = build_parser().parse_args(argv)
  try:
    return run(args)
  except (FileNotFoundError, ValueError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 1


if __name__ == '__main__':
  sys.exit(main())
