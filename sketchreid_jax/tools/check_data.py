r"""Checks a dataset folder and prints every problem at once, grouped by case, with counts and fixes.

  python -m sketchreid_jax.tools.check_data data/market_sketch_1k [--dataset market_sketch] [--K 4]
  python -m sketchreid_jax.tools.check_data data/pku_sketch --dataset pku_sketch
  python -m sketchreid_jax.tools.check_data --root=data/ShoeV2    # QMUL-ShoeV2 or -ChairV2
  python -m sketchreid_jax.tools.check_data --cases      # the decision of every case, as a table

What it checks (the same checks ``datasets.load`` runs before training, sketchreid_jax/datasets/
checks.py): the folder layout, every file name (identity, camera, style), the identities
(a sketch without a photo, a query absent from the gallery, photos without a sketch, fewer
than K images, a QMUL item in both splits), duplicate file names across folders, and every image
file (a full decode: zero-byte, truncated, corrupt, not an image, a format the pipeline cannot
read; RGBA, greyscale, palette and 16-bit images are reported as converted).

Each problem is an error (training refuses the dataset), a warning (training goes on without the
files named) or a note (handled as documented). Errors and warnings are listed in full; notes
show --notes paths each. Exit code: 1 if there is any error, 0 otherwise (warnings and notes
only, or nothing).
"""

import argparse
import os
import sys
from collections.abc import Sequence

from sketchreid_jax.tools import cli

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')


def _parser() -> argparse.ArgumentParser:
  p = cli.parser('sketchreid_jax.tools.check_data', __doc__)
  p.add_argument(
    'root', nargs='?', help='the dataset folder (Market-Sketch-1K, PKU-Sketch, QMUL-ShoeV2/ChairV2)'
  )
  p.add_argument('--root', dest='root_flag', metavar='ROOT', help='the same as the positional root')
  p.add_argument(
    '--dataset',
    choices=('market_sketch', 'pku_sketch', 'qmul_shoev2', 'qmul_chairv2'),
    default=None,
    help='the layout (default: detected, styleAnnotation/ = pku_sketch, trainA/ trainB/ testA/ '
    'testB/ = qmul_chairv2 if the folder name says chair or a photo stem is not numeric, else '
    'qmul_shoev2; photo/ = market_sketch)',
  )
  p.add_argument(
    '--K', type=int, default=4, help='photos and sketches per identity in a batch (config K)'
  )
  p.add_argument(
    '--train_styles',
    default=None,
    help='sketch styles that train, e.g. ABCDEF (default: every style of the dataset)',
  )
  p.add_argument('--no_images', action='store_true', help='skip opening the image files (fast)')
  p.add_argument('--notes', type=int, default=5, help='paths listed per kind of note')
  p.add_argument('--cases', action='store_true', help='print every case and its decision')
  return p


def main(argv: Sequence[str] | None = None) -> int:
  args = _parser().parse_args(argv)
  from sketchreid_jax.datasets import checks

  if args.cases:
    print(checks.cases_markdown())
    return 0
  if args.root is not None and args.root_flag is not None and args.root != args.root_flag:
    _parser().error(
      f'two dataset folders given ({args.root} and --root={args.root_flag}); give one'
    )
  args.root = args.root or args.root_flag
  if args.root is None:
    _parser().error('give the dataset folder (or --cases)')
  if args.K < 1:
    _parser().error(f'--K must be >= 1, got {args.K}')
  try:
    report = checks.check_dataset(
      args.root,
      dataset=args.dataset,
      K=args.K,
      train_styles=args.train_styles,
      images=not args.no_images,
    )
  except checks.DataError as err:  # the layout cannot even be told
    print(err, file=sys.stderr)
    return 1
  for kind in report.by_kind():
    limit = args.notes if checks.CASES[kind].severity == checks.NOTE else None
    print(report.format([kind], max_listed=limit), end='\n\n')
  print(report.summary())
  if report.errors:
    print('The dataset is refused until the errors are fixed (README "Data checks").')
  return 1 if report.errors else 0


if __name__ == '__main__':
  sys.exit(main())
