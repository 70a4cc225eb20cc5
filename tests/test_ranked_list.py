"""Ranked-list figures: the cells show the right gallery images, framed by the right colour."""

import io

import numpy as np
import pytest
from PIL import Image

from sketchreid_jax.evaluation import evaluate_rank
from sketchreid_jax.evaluation.ranked_list import (
  CORRECT_COLOR,
  WRONG_COLOR,
  ranked_list_figure,
  ranked_list_from_eval,
  top_k_matches,
)


def render(fig) -> np.ndarray:
  fig.canvas.draw()
  return np.asarray(fig.canvas.buffer_rgba())[..., :3].astype(int)


def cell(fig, label: str):
  (ax,) = [ax for ax in fig.axes if ax.get_label() == label]
  return ax


def frame_colour(pixels: np.ndarray, ax) -> np.ndarray:
  """The pixel on the middle of the axes' left edge (where its frame is drawn)."""
  box = ax.get_window_extent()
  row = pixels.shape[0] - int(round((box.y0 + box.y1) / 2))
  return pixels[row, int(round(box.x0))]


def centre_colour(pixels: np.ndarray, ax) -> np.ndarray:
  box = ax.get_window_extent()
  return pixels[
    pixels.shape[0] - int(round((box.y0 + box.y1) / 2)), int(round((box.x0 + box.x1) / 2))
  ]


def as_255(colour) -> np.ndarray:
  return np.round(np.array(colour) * 255).astype(int)


def is_neutral(pixel: np.ndarray) -> bool:
  """A thin grey frame: antialiased, so only its greyness is certain (not green, not red)."""
  return pixel[0] == pixel[1] == pixel[2] and pixel[0] < 250


def test_from_eval_shows_each_querys_top_k_framed_by_identity():
  rng = np.random.default_rng(3)
  num_q, num_g, k = 7, 12, 4
  distmat = rng.random((num_q, num_g))
  distmat[2, 5] = distmat[2, 8]  # a tie: the earlier gallery item ranks first
  q_pids = rng.integers(0, 3, num_q)
  g_pids = rng.integers(0, 3, num_g)
  # Gallery item i is a flat image of grey level 10·i + 20: the cell's centre says which it is.
  gallery = [np.full((40, 20, 3), 10 * i + 20, np.uint8) for i in range(num_g)]
  queries = [np.full((40, 20), 250, np.uint8) for _ in range(num_q)]  # greyscale sketches
  fig = ranked_list_from_eval(
    distmat, q_pids, g_pids, queries, lambda i: gallery[i], k=k, num_queries=3
  )
  pixels = render(fig)

  shown = [0, 3, 6]  # three queries evenly spaced over seven
  outcomes = []
  for row, q in enumerate(shown):
    # Naive ranking: sort by (distance, gallery position).
    ranked = sorted(range(num_g), key=lambda i: (distmat[q, i], i))[:k]
    assert is_neutral(frame_colour(pixels, cell(fig, f'query {row}')))
    for rank, i in enumerate(ranked):
      ax = cell(fig, f'gallery {row} {rank}')
      np.testing.assert_allclose(centre_colour(pixels, ax), [10 * i + 20] * 3, atol=1)
      outcomes.append(bool(g_pids[i] == q_pids[q]))
      want = CORRECT_COLOR if outcomes[-1] else WRONG_COLOR
      assert np.abs(frame_colour(pixels, ax) - as_255(want)).max() <= 3, (row, rank)
      assert ax.get_title().startswith(f'{rank + 1}  d {distmat[q, i]:.2f}')
  assert not [ax for ax in fig.axes if ax.get_label() == f'gallery 0 {k}']
  assert set(outcomes) == {True, False}  # both frame colours were checked


def test_top_k_drops_same_identity_same_camera_like_evaluate_rank():
  rng = np.random.default_rng(0)
  num_q, num_g = 30, 25
  distmat = rng.random((num_q, num_g))
  q_pids, g_pids = rng.integers(0, 4, num_q), rng.integers(0, 4, num_g)
  q_cams, g_cams = rng.integers(0, 2, num_q), rng.integers(0, 2, num_g)
  picks = top_k_matches(distmat, q_pids, g_pids, k=5, q_camids=q_cams, g_camids=g_cams)
  for q, (order, correct, dists) in enumerate(picks):
    removed = (g_pids == q_pids[q]) & (g_cams == q_cams[q])
    assert not removed[order].any()
    assert len(order) == min(5, int((~removed).sum()))
    np.testing.assert_array_equal(correct, g_pids[order] == q_pids[q])
    np.testing.assert_array_equal(dists, np.sort(distmat[q, ~removed])[: len(order)])
  result = evaluate_rank(distmat, q_pids, g_pids, q_cams, g_cams, max_rank=5)
  valid = [((g_pids == q_pids[q]) & (g_cams != q_cams[q])).any() for q in range(num_q)]
  hits = [picks[q][1][:r].any() for q in range(num_q) if valid[q] for r in (1, 5)]
  assert result.num_valid_queries == sum(valid)
  assert result.cmc[0] == pytest.approx(np.mean(hits[0::2]))
  assert result.cmc[4] == pytest.approx(np.mean(hits[1::2]))


def test_one_row_from_bytes_without_correctness_has_grey_frames():
  buffers = []
  for level in (40, 200):
    out = io.BytesIO()
    Image.fromarray(np.full((30, 15, 3), level, np.uint8)).save(out, format='PNG')
    buffers.append(out.getvalue())
  fig = ranked_list_figure(
    buffers[0], buffers, scores=[0.91234, 0.5], names=['a.png', 'b.png'], score_format='cos {:.3f}'
  )
  pixels = render(fig)
  for j, level in enumerate((40, 200)):
    ax = cell(fig, f'gallery 0 {j}')
    np.testing.assert_allclose(centre_colour(pixels, ax), [level] * 3, atol=1)
    assert is_neutral(frame_colour(pixels, ax))
  assert cell(fig, 'gallery 0 0').get_title() == '1  cos 0.912'
  assert cell(fig, 'gallery 0 1').get_xlabel() == 'b.png'

  with pytest.raises(ValueError, match='correct\\[0\\] has 1 entries for 2'):
    ranked_list_figure(buffers[0], buffers, correct=[True])
  with pytest.raises(ValueError, match='one gallery row per query'):
    ranked_list_figure([buffers[0], buffers[1]], [buffers])
