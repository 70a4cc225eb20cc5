"""Ranked-list figures: a query sketch and its top-k gallery photos, framed green when the photo
shows the query's identity and red when it does not (the papers' qualitative figures, CMDSL
Figs. 6–7).

``ranked_list_figure`` draws rows that are already chosen; ``top_k_matches`` picks them from a
distance matrix; ``ranked_list_from_eval`` does both for a protocol's distances (what the
evaluation calls to write ``ranked_list.png``).

Interpretations chosen:

* Ranking follows ``evaluation.evaluate_rank``: ascending distance, ties kept in gallery order
  (stable sort), and with cameras given, gallery items of the query's identity AND camera are
  removed before ranking. A row may therefore be shorter than k.
* Queries shown by ``ranked_list_from_eval`` when none are named: ``num_queries`` evenly spaced
  over the query list (first and last included), deterministic and not picked by outcome.
* An image is a uint8 or float ([0, 1]) array (H, W), (H, W, 3) or (H, W, 4), encoded bytes (as
  in ``SampleTable.image``) or a file path; only the images drawn are decoded.
* The frame is the axes' spines, ``border`` points wide, drawn over the image edge; cells without
  correctness (``correct=None``) get a thin grey frame. Each axes is labelled ``'query <row>'`` or
  ``'gallery <row> <rank-1>'`` (``Axes.get_label()``) so callers and tests can find a cell.
* matplotlib's object API (``Figure`` + Agg canvas), never ``pyplot``, as evaluation/report.py.
"""

import io
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

__all__ = [
  'CORRECT_COLOR',
  'WRONG_COLOR',
  'NEUTRAL_COLOR',
  'load_image',
  'ranked_list_figure',
  'ranked_list_from_eval',
  'top_k_matches',
]

CORRECT_COLOR = (0.0, 0.65, 0.0)
WRONG_COLOR = (0.85, 0.0, 0.0)
NEUTRAL_COLOR = (0.6, 0.6, 0.6)


def load_image(image: Any) -> np.ndarray:
  """An array, encoded bytes or a path -> an array matplotlib's ``imshow`` takes."""
  if isinstance(image, (bytes, bytearray, np.bytes_)):
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(bytes(image))).convert('RGB'))
  if isinstance(image, (str, os.PathLike)):
    from PIL import Image

    try:
      with Image.open(os.fspath(image)) as img:
        return np.asarray(img.convert('RGB'))
    except OSError as err:
      raise OSError(f'cannot read image {os.fspath(image)}: {err}') from None
  array = np.asarray(image)
  if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
    raise ValueError(
      f'an image must be (H, W), (H, W, 3) or (H, W, 4), encoded bytes or a path; got an array '
      f'of shape {array.shape}.'
    )
  return array


def _is_single(query) -> bool:
  """One query image (not a list of rows)?"""
  if isinstance(query, np.ndarray):
    return query.dtype != object  # an object array holds several images (encoded bytes)
  return isinstance(query, (str, bytes, bytearray, os.PathLike))


def _per_row(value, rows: int, lengths: Sequence[int], what: str):
  if value is None:
    return [None] * rows
  if len(value) != rows:
    raise ValueError(f'{what} has {len(value)} rows for {rows} queries.')
  for r, (row, n) in enumerate(zip(value, lengths)):
    if row is not None and len(row) != n:
      raise ValueError(f'{what}[{r}] has {len(row)} entries for {n} gallery images.')
  return list(value)


def ranked_list_figure(
  query,
  gallery,
  *,
  correct=None,
  scores=None,
  names=None,
  query_names=None,
  score_format: str = '{:.3f}',
  cell_height: float = 1.6,
  border: float = 4.0,
  dpi: int = 100,
  title: str | None = None,
) -> Figure:
  """Query images (left column) and their ranked gallery images, one query per row.

  One row: ``query`` an image, ``gallery`` a list of images, ``correct``/``scores``/``names`` lists
  of the same length (or None). Several rows: ``query`` a list of images and every other argument
  a list of such lists (rows may differ in length). ``correct[r][j]`` True draws a green frame,
  False a red one, None (or ``correct=None``) a thin grey one; ``scores`` are printed with
  ``score_format`` under the rank, ``names`` under the image.
  """
  if _is_single(query):
    query, gallery = [query], [gallery]
    correct, scores, names = ([v] if v is not None else None for v in (correct, scores, names))
    query_names = [query_names] if query_names is not None else None
  rows = len(query)
  if rows == 0 or len(gallery) != rows:
    raise ValueError(
      f'ranked_list_figure: {rows} queries and {len(gallery)} gallery rows; give one gallery row '
      'per query (and at least one query).'
    )
  lengths = [len(g) for g in gallery]
  correct = _per_row(correct, rows, lengths, 'correct')
  scores = _per_row(scores, rows, lengths, 'scores')
  names = _per_row(names, rows, lengths, 'names')
  if query_names is not None and len(query_names) != rows:
    raise ValueError(f'query_names has {len(query_names)} entries for {rows} queries.')
  k = max(max(lengths), 1)

  query_arrays = [load_image(q) for q in query]
  aspect = float(np.median([a.shape[1] / a.shape[0] for a in query_arrays]))
  cell_width = cell_height * aspect
  text = 0.55  # inches per row for the rank/score line above and the name below
  spacer = 0.25  # a gap between the query column and the ranked list, in cell widths
  fig = Figure(
    figsize=(
      cell_width * (k + 1 + spacer) + 0.4,
      rows * (cell_height + text) + (0.4 if title else 0.1),
    ),
    dpi=dpi,
  )
  FigureCanvasAgg(fig)
  grid = fig.add_gridspec(rows, k + 2, width_ratios=[1, spacer] + [1] * k, wspace=0.08, hspace=0.45)
  for r in range(rows):
    ax = fig.add_subplot(grid[r, 0], label=f'query {r}')
    _show(ax, query_arrays[r], None, border)
    ax.set_title('query', fontsize=8)
    if query_names is not None:
      ax.set_xlabel(_short(query_names[r], cell_width, 6), fontsize=6)
    for j, image in enumerate(gallery[r]):
      ax = fig.add_subplot(grid[r, j + 2], label=f'gallery {r} {j}')
      ok = None if correct[r] is None else correct[r][j]
      _show(ax, load_image(image), None if ok is None else bool(ok), border)
      head = f'{j + 1}'
      if scores[r] is not None:
        head += '  ' + (
          scores[r][j] if isinstance(scores[r][j], str) else score_format.format(scores[r][j])
        )
      ax.set_title(head, fontsize=7)
      if names[r] is not None:
        ax.set_xlabel(_short(names[r][j], cell_width, 6), fontsize=6)
  if title:
    fig.suptitle(title, fontsize=9)
  fig.subplots_adjust(left=0.02, right=0.98, bottom=0.06, top=0.9 if title else 0.93)
  return fig


def _short(name, width_in: float, fontsize: float) -> str:
  # An average glyph is about 0.6 em wide: what fits under a cell of width_in inches.
  limit = max(int(width_in * 72 / (0.6 * fontsize)), 4)
  name = os.path.basename(str(name))
  return name if len(name) <= limit else name[: limit - 1] + '…'


def _show(ax, image: np.ndarray, correct: bool | None, border: float) -> None:
  ax.imshow(image, cmap='gray' if image.ndim == 2 else None, interpolation='nearest')
  ax.set_xticks([])
  ax.set_yticks([])
  colour = NEUTRAL_COLOR if correct is None else (CORRECT_COLOR if correct else WRONG_COLOR)
  for spine in ax.spines.values():
    spine.set_edgecolor(colour)
    spine.set_linewidth(0.6 if correct is None else border)


# ----------------------------------------------------------------------------- from distances


def top_k_matches(
  distmat: np.ndarray,
  q_pids,
  g_pids,
  *,
  k: int,
  q_camids=None,
  g_camids=None,
  queries: Sequence[int] | None = None,
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
  """For each query row (all, or ``queries``): (gallery indices, correct flags, distances) of its
  top ``k``, ranked as ``evaluate_rank`` ranks them (module docstring)."""
  distmat = np.asarray(distmat)
  q_pids, g_pids = np.asarray(q_pids), np.asarray(g_pids)
  if distmat.shape != (len(q_pids), len(g_pids)):
    raise ValueError(
      f'distmat has shape {distmat.shape} for {len(q_pids)} queries and {len(g_pids)} gallery '
      'items.'
    )
  if (q_camids is None) != (g_camids is None):
    raise ValueError('pass both q_camids and g_camids or neither.')
  if k < 1:
    raise ValueError(f'k must be >= 1, got {k}.')
  out = []
  for q in range(len(q_pids)) if queries is None else queries:
    keep = np.ones(len(g_pids), bool)
    if q_camids is not None:
      keep = ~((g_pids == q_pids[q]) & (np.asarray(g_camids) == np.asarray(q_camids)[q]))
    candidates = np.flatnonzero(keep)
    order = candidates[np.argsort(distmat[q, candidates], kind='stable')][:k]
    out.append((order, g_pids[order] == q_pids[q], distmat[q, order]))
  return out


def _getter(images) -> Callable[[int], Any]:
  return images if callable(images) else images.__getitem__


def ranked_list_from_eval(
  distmat: np.ndarray,
  q_pids,
  g_pids,
  query_images,
  gallery_images,
  *,
  k: int = 10,
  num_queries: int = 5,
  queries: Sequence[int] | None = None,
  q_camids=None,
  g_camids=None,
  query_names=None,
  gallery_names=None,
  score_format: str = 'd {:.2f}',
  **figure_kwargs,
) -> Figure:
  """The ranked-list figure of a protocol's (queries × gallery) distances.

  ``query_images`` / ``gallery_images``: anything indexable by query / gallery position (a list,
  ``table.image[eval_set.gallery_index]``) or a callable ``i -> image``; only the images shown are
  loaded. ``queries``: the query rows to show (default ``num_queries`` evenly spaced rows).
  ``query_names`` / ``gallery_names`` (indexable, optional) label the cells. Other keywords go to
  :func:`ranked_list_figure`. Save with ``fig.savefig(path)``.
  """
  num = len(np.asarray(q_pids))
  if queries is None:
    if num_queries < 1:
      raise ValueError(f'num_queries must be >= 1, got {num_queries}.')
    queries = np.unique(np.linspace(0, num - 1, min(num_queries, num)).round().astype(int))
  picks = top_k_matches(
    distmat, q_pids, g_pids, k=k, q_camids=q_camids, g_camids=g_camids, queries=queries
  )
  load_q, load_g = _getter(query_images), _getter(gallery_images)
  return ranked_list_figure(
    [load_q(int(q)) for q in queries],
    [[load_g(int(i)) for i in order] for order, _, _ in picks],
    correct=[list(ok) for _, ok, _ in picks],
    scores=[list(d) for _, _, d in picks],
    names=None
    if gallery_names is None
    else [[gallery_names[int(i)] for i in order] for order, _, _ in picks],
    query_names=None if query_names is None else [query_names[int(q)] for q in queries],
    score_format=score_format,
    **figure_kwargs,
  )
