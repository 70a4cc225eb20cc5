"""CLI for the synthetic datasets (``datasets.synthetic``, ``datasets.synthetic_objects``).

    python -m sketchreid_jax.tools.generate_synthetic --out data/synthetic --preset demo

writes ``<out>/market_sketch`` (Market-Sketch-1K layout), ``<out>/pku_sketch`` (PKU-Sketch layout),
``<out>/qmul_shoev2`` and ``<out>/qmul_chairv2`` (QMUL-ShoeV2/ChairV2 layout), shows a progress bar
and prints the file counts per folder and the time taken. Explicit size flags override the
preset's values. Re-running with the same arguments does nothing.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from sketchreid_jax.datasets import synthetic, synthetic_objects

_EPILOG = """\
layouts written (identical to the real datasets, so the same readers work):
  <out>/market_sketch/photo/{train,query}/<pid>_c<cam>s1_<frame>_00.jpg   128x64 RGB photos
  <out>/market_sketch/sketch/<A..F>/{train,query}/<pid>.jpg                greyscale sketches
  <out>/market_sketch/market_attribute.mat                                 27 attributes per id
  <out>/pku_sketch/sketch/<id>.jpg, photo/<id>_<cam>_<frame>.jpg, styleAnnotation/<S>_<n>.txt
  <out>/qmul_shoev2/{trainA,testA}/<stem>_<k>.png, {trainB,testB}/<stem>.png    shoes, RGB PNG
  <out>/qmul_chairv2/{trainA,testA}/<stem>_<k>.png, {trainB,testB}/<stem>.png   chairs, RGB PNG

presets:
  tiny  Market 12 train + 8 test ids, PKU 20 ids; ShoeV2 and ChairV2 12 train + 6 test photos,
        3 sketches each, 64x64 (the tests; about a second)
  demo  Market 300 + 100, PKU 200; ShoeV2 200 + 100 and ChairV2 150 + 50 photos, 3 sketches
        each, 128x128 (Market + PKU and the QMUL pair each take about 12 s of CPU)
  full  Market 500 + 500 (Market-Sketch-1K scale), PKU 200; ShoeV2 1800 + 200 photos with 6648
        sketches and ChairV2 300 + 100 photos with 1275 sketches, 256x256 (the real archives)

Each folder gets a SYNTHETIC.json marker and a SYNTHETIC_FILES.txt manifest. Same arguments
again: nothing is done. Other arguments: the previous synthetic files (and only those) are
replaced. A non-empty folder without the marker is refused unless --overwrite is given; files
the generator did not write are never deleted.

examples:
  python -m sketchreid_jax.tools.generate_synthetic --out data/synthetic --preset tiny
  python -m sketchreid_jax.tools.generate_synthetic --preset full --layout market --seed 1
  python -m sketchreid_jax.tools.generate_synthetic --preset demo --styles ABC --draw_prob 0.6
"""


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
    prog='python -m sketchreid_jax.tools.generate_synthetic',
    description='Render procedurally generated people, shoes and chairs (no downloads) into the '
    'exact on-disk layouts of Market-Sketch-1K, PKU-Sketch and QMUL-ShoeV2/ChairV2, '
    'deterministically from a seed.',
    epilog=_EPILOG,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  parser.add_argument(
    '--out',
    type=Path,
    default=Path('data/synthetic'),
    help='parent folder; writes <out>/market_sketch, <out>/pku_sketch, <out>/qmul_shoev2 and '
    '<out>/qmul_chairv2 (default: %(default)s)',
  )
  parser.add_argument(
    '--preset',
    choices=sorted(synthetic.PRESETS),
    default='demo',
    help='dataset sizes (default: %(default)s); see below',
  )
  parser.add_argument(
    '--seed',
    type=int,
    default=0,
    help='random seed; same seed => byte-identical files (default: 0)',
  )
  parser.add_argument(
    '--layout',
    choices=('market', 'pku', 'qmul', 'both', 'all'),
    default='all',
    help='which dataset(s) to write: both = market and pku, qmul = ShoeV2 and ChairV2, all = '
    'every one (default: %(default)s)',
  )
  sizes = parser.add_argument_group('overrides of the preset')
  sizes.add_argument('--num_train_ids', type=int, help='Market training identities')
  sizes.add_argument('--num_test_ids', type=int, help='Market test identities')
  sizes.add_argument('--num_pku_ids', type=int, help='PKU identities (style counts scale)')
  sizes.add_argument(
    '--photos_per_camera',
    type=int,
    help='max photos per camera of a Market training identity (default 3)',
  )
  sizes.add_argument(
    '--styles', type=str, help='Market artist styles to draw, e.g. ABCDEF (default) or ABC'
  )
  sizes.add_argument(
    '--draw_prob', type=float, help='probability that an artist sketches an identity (default 0.8)'
  )
  sizes.add_argument(
    '--sketch_size',
    type=int,
    nargs=2,
    metavar=('H', 'W'),
    help='Market and PKU sketch height and width in pixels (default 256 128; the QMUL image '
    "size is the preset's)",
  )
  parser.add_argument(
    '--overwrite',
    action='store_true',
    help='allow writing into a non-empty folder that is not a previous '
    'synthetic output (its files are kept)',
  )
  parser.add_argument('--quiet', action='store_true', help='no progress bar')
  return parser


def _kwargs(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any]]:
  preset = synthetic.PRESETS[args.preset]
  market, pku = dict(preset['market']), dict(preset['pku'])
  for flag in ('num_train_ids', 'num_test_ids', 'photos_per_camera', 'draw_prob'):
    if getattr(args, flag) is not None:
      market[flag] = getattr(args, flag)
  if args.styles is not None:
    market['styles'] = tuple(args.styles.upper())
  if args.sketch_size is not None:
    market['sketch_size'] = pku['sketch_size'] = tuple(args.sketch_size)
  if args.num_pku_ids is not None:
    pku['num_ids'] = args.num_pku_ids
  return market, pku


def _print_summary(summary: dict[str, Any]) -> None:
  state = 'generated' if summary['generated'] else 'already present, nothing to do'
  print(f'{summary["layout"]}: {summary["root"]} ({state}, {summary["seconds"]:.1f} s)')
  width = max(len(k) for k in summary['counts'])
  for key, value in summary['counts'].items():
    print(f'  {key:<{width}}  {value:>6}')


def main(argv: Sequence[str] | None = None) -> int:
  args = build_parser().parse_args(argv)
  market, pku = _kwargs(args)
  preset = synthetic.PRESETS[args.preset]
  start = time.perf_counter()
  common = {'seed': args.seed, 'overwrite': args.overwrite, 'progress': not args.quiet}
  try:
    if args.layout in ('market', 'both', 'all'):
      _print_summary(
        synthetic.generate_market_sketch(args.out / 'market_sketch', **market, **common)
      )
    if args.layout in ('pku', 'both', 'all'):
      _print_summary(synthetic.generate_pku_sketch(args.out / 'pku_sketch', **pku, **common))
    if args.layout in ('qmul', 'all'):
      for name, generate in (
        ('qmul_shoev2', synthetic_objects.generate_qmul_shoev2),
        ('qmul_chairv2', synthetic_objects.generate_qmul_chairv2),
      ):
        _print_summary(generate(args.out / name, **preset[name], **common))
  except (FileExistsError, NotADirectoryError, ValueError) as err:
    print(f'error: {err}', file=sys.stderr)
    return 2
  print(f'total {time.perf_counter() - start:.1f} s')
  return 0


if __name__ == '__main__':
  sys.exit(main())
