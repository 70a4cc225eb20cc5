r"""Ranks a folder of photos against one sketch with a trained model; no dataset needed.

  python -m sketchreid_jax.tools.retrieve --checkpoint=runs/demo --query=sketch.jpg \
      --gallery=photos/ [--topk=10] [--out=ranks.png] [--which=best|latest] [--id_prefix_len=4]

--checkpoint is a training workdir (what `python -m sketchreid_jax.main` writes: config.json,
train_meta.json, best/ and checkpoints/); the model, image size and feature options come from it.
The query goes through the sketch stream and every image file directly inside --gallery (.jpg,
.jpeg, .png, .bmp, .gif; not sub-folders) through the photo stream, with the evaluation's
preprocessing (resize to the training's image size, ImageNet normalisation, flip averaging if
config.eval.flip).

Output: the top --topk gallery files, best first, with their score = the COSINE SIMILARITY of the
two L2-normalised embeddings (1 = identical direction; higher is closer). The evaluation ranks by
the Euclidean distance between the same embeddings, sqrt(2 - 2·cos), which gives the same order.
--out writes the ranked list as a PNG (query, then the top-k photos); with --id_prefix_len=N the
photos whose file name starts with the same N characters as the query's are framed green, the
others red (Market-Sketch-1K names start with the 4-digit identity: --id_prefix_len=4).

Example on the synthetic stand-in after `make demo`:
  .venv/bin/python -m sketchreid_jax.tools.retrieve --checkpoint=runs/demo \
      --query=data/synthetic/market_sketch/sketch/A/query/0002.jpg \
      --gallery=data/synthetic/market_sketch/photo/query --id_prefix_len=4 --out=ranks.png
"""

import argparse
import os
from collections.abc import Sequence

import numpy as np

from sketchreid_jax import runtime
from sketchreid_jax.tools import cli

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.gif')


def _parser() -> argparse.ArgumentParser:
  p = cli.parser('sketchreid_jax.tools.retrieve', __doc__)
  cli.add_checkpoint_args(p)
  p.add_argument('--query', required=True, help='the query sketch (an image file)')
  p.add_argument('--gallery', required=True, help='folder of photos to rank')
  p.add_argument('--topk', type=int, default=10, help='how many photos to print and draw')
  p.add_argument('--out', default='', help="ranked-list PNG to write ('' = none)")
  p.add_argument(
    '--id_prefix_len',
    type=int,
    default=0,
    help='frame photos green/red by whether their name shares this many leading characters '
    "with the query's (0 = no correctness shown)",
  )
  p.add_argument('--jax_cache', default=runtime.DEFAULT_JAX_CACHE, help=runtime.JAX_CACHE_HELP)
  return p


def gallery_files(folder: str) -> tuple[list[str], list[str]]:
  """(image files, other files) directly inside ``folder``, sorted by name."""
  if not os.path.isdir(folder):
    raise FileNotFoundError(f'--gallery {folder!r} is not a folder.')
  names = sorted(n for n in os.listdir(folder) if os.path.isfile(os.path.join(folder, n)))
  images = [n for n in names if n.lower().endswith(IMAGE_EXTENSIONS)]
  if not images:
    raise ValueError(
      f'--gallery {folder!r} holds no image file ({", ".join(IMAGE_EXTENSIONS)}); point it at '
      'the folder of photos itself (sub-folders are not searched).'
    )
  return [os.path.join(folder, n) for n in images], [n for n in names if n not in images]


def rank(trained, query: str, gallery: Sequence[str]) -> tuple[list[int], list[float]]:
  """Gallery positions best first and their cosine similarities to the query (all of them)."""
  from sketchreid_jax import inference

  q = inference.embed(trained, [query], modality='sketch')[0]
  g = inference.embed(trained, list(gallery), modality='photo')
  cosine = g @ q
  order = np.argsort(-cosine, kind='stable')  # ties keep the file-name order
  return order.tolist(), cosine[order].tolist()


def main(argv: Sequence[str] | None = None) -> list[tuple[str, float]]:
  """Prints (and returns) the top-k (file name, cosine similarity); writes --out if given."""
  args = _parser().parse_args(argv)
  if args.topk < 1:
    raise SystemExit(f'--topk must be >= 1, got {args.topk}')
  if not os.path.isfile(args.query):
    raise SystemExit(f'--query {args.query!r}: no such file.')
  try:
    photos, others = gallery_files(args.gallery)
  except (FileNotFoundError, ValueError) as err:
    raise SystemExit(str(err)) from None
  import jax

  if args.jax_cache:
    jax.config.update('jax_compilation_cache_dir', args.jax_cache)
  from sketchreid_jax import inference

  try:
    trained = inference.load_trained(args.checkpoint, which=args.which)
    order, scores = rank(trained, args.query, photos)
  except (FileNotFoundError, OSError, ValueError, KeyError) as err:
    raise SystemExit(f'retrieve: {err}') from None

  top = [(os.path.basename(photos[i]), s) for i, s in zip(order[: args.topk], scores)]
  print(
    f'query {args.query}; gallery {args.gallery}: {len(photos)} images'
    + (
      f' ({len(others)} other files ignored: {", ".join(others[:5])}{" …" * (len(others) > 5)})'
      if others
      else ''
    )
  )
  print(
    f'model {trained.config.method} from {trained.checkpoint} step {trained.step}; score = '
    'cosine similarity of L2-normalised embeddings (higher = closer)'
  )
  print(f'{"rank":>4}  {"cosine":>8}  file')
  for r, (name, score) in enumerate(top, 1):
    print(f'{r:>4}  {score:>8.6f}  {name}')
  if args.out:
    _write_figure(args, [photos[i] for i in order[: args.topk]], [s for _, s in top])
  return top


def _write_figure(args, shown: list[str], scores: list[float]) -> None:
  from sketchreid_jax.evaluation.ranked_list import ranked_list_figure

  correct = None
  if args.id_prefix_len > 0:
    key = os.path.basename(args.query)[: args.id_prefix_len]
    correct = [os.path.basename(p)[: args.id_prefix_len] == key for p in shown]
  fig = ranked_list_figure(
    args.query,
    shown,
    correct=correct,
    scores=scores,
    names=shown,
    query_names=args.query,
    score_format='cos {:.4f}',
  )
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  fig.savefig(args.out, format='png')
  print(f'wrote {args.out}')


if __name__ == '__main__':
  main()
