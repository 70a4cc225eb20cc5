"""Tests for the P×K plan, the tf.data train/eval iterators and the eval sets (docs/design.md §4, §5)."""

import io
import warnings

import numpy as np
import pytest
from PIL import Image

from sketchreid_jax import input_pipeline as ip
from sketchreid_jax.datasets.table import make_table

H, W = 32, 16
MEAN = np.array(ip.IMAGENET_MEAN, np.float32)
STD = np.array(ip.IMAGENET_STD, np.float32)


def _encode(pixels: np.ndarray, fmt: str = 'PNG') -> bytes:
  buf = io.BytesIO()
  Image.fromarray(pixels.astype(np.uint8)).save(buf, format=fmt)
  return buf.getvalue()


def _noise(rng) -> bytes:
  return _encode(rng.integers(0, 256, (H, W, 3)))


def _normalised(rgb) -> np.ndarray:
  return (np.asarray(rgb, np.float32) / 255.0 - MEAN) / STD


# Train split: pid -> (#photos, {style: #sketches}); 6 has no sketch, 7 no photo.
TRAIN = {
  1: (3, {'A': 2, 'B': 1}),
  2: (1, {'A': 1}),
  3: (5, {'B': 2}),
  4: (2, {'A': 5}),
  5: (2, {'A': 1, 'B': 1}),
  6: (2, {}),
  7: (0, {'A': 2}),
}
# Query split: pid -> (#photos, {style: #sketches}); 12 is a distractor, 13 has no photo.
QUERY = {10: (2, {'A': 1, 'B': 1}), 11: (1, {'A': 1}), 12: (1, {}), 13: (0, {'B': 1})}


def _rows(image_fn):
  rows = []
  for split, spec in (('train', TRAIN), ('query', QUERY)):
    for pid, (n_photo, sketches) in spec.items():
      for i in range(n_photo):
        rows.append(
          dict(
            image=image_fn(0),
            pid=pid,
            modality=0,
            style='',
            split=split,
            camid=1 + i % 6,
            path=f'photo/{split}/{pid:04d}_c{1 + i % 6}_{i}.png',
          )
        )
      for style, n in sketches.items():
        for i in range(n):
          rows.append(
            dict(
              image=image_fn(1),
              pid=pid,
              modality=1,
              style=style,
              split=split,
              camid=0,
              path=f'sketch/{style}/{split}/{pid:04d}_{i}.png',
            )
          )
  return rows


@pytest.fixture(scope='module')
def table():
  rng = np.random.default_rng(0)
  attributes = {p: np.full(3, p % 2, np.int32) for p in (1, 2, 3, 4, 5, 10)}
  return make_table(
    _rows(lambda m: _noise(rng)),
    attributes=attributes,
    attribute_names=('a', 'b', 'c'),
    root='/data/msk',
    name='tiny',
  )


@pytest.fixture(scope='module')
def train_set(table):
  with warnings.catch_warnings():
    warnings.simplefilter('ignore')
    return ip.make_train_set(table, 'AB')


# --------------------------------------------------------------------------- train set


def test_train_set_identities_labels_and_warning(table):
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter('always')
    ts = ip.make_train_set(table, 'BA')
  assert len(caught) == 1 and '[7]' in str(caught[0].message) and '[6]' in str(caught[0].message)
  assert ts.train_styles == 'AB'
  np.testing.assert_array_equal(ts.pids, [1, 2, 3, 4, 5])
  for label, pid in enumerate(ts.pids):
    photos = [
      i
      for i in range(len(table))
      if table.split[i] == 'train' and table.modality[i] == 0 and table.pid[i] == pid
    ]
    sketches = [
      i
      for i in range(len(table))
      if table.split[i] == 'train' and table.modality[i] == 1 and table.pid[i] == pid
    ]
    assert sorted(ts.photo_index_by_label[label]) == photos
    assert sorted(ts.sketch_index_by_label[label]) == sketches
    assert (ts.labels[photos + sketches] == label).all()
  assert (ts.labels >= 0).sum() == ts.num_photos + ts.num_sketches == 13 + 13
  np.testing.assert_array_equal(ts.attributes[:, 0], [1, 0, 1, 0, 1])

  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter('always')
    only_a = ip.make_train_set(table, 'A')
  np.testing.assert_array_equal(only_a.pids, [1, 2, 4, 5])  # 3 has B sketches only
  assert len(caught) == 1 and '[3, 6]' in str(caught[0].message)
  assert all((table.style[r] == 'A').all() for r in only_a.sketch_index_by_label)


def test_train_set_unknown_style_errors(table):
  with pytest.raises(ValueError, match='/data/msk/sketch/C/train/'):
    ip.make_train_set(table, 'AC')


def test_steps_per_epoch(train_set):
  photos, sketches = 13, 13  # counted by hand from TRAIN for ids 1..5
  for P, K in ((2, 2), (3, 4), (5, 1)):
    assert ip.steps_per_epoch(train_set, P, K) == max(photos, sketches) // (P * K) + 1


# --------------------------------------------------------------------------- plan


def test_plan_rows_and_identities(table, train_set):
  P, K = 3, 2
  plan = ip.pk_plan(train_set, P=P, K=K, epoch=0, seed=1)
  steps = ip.steps_per_epoch(train_set, P, K)
  assert plan.shape == (steps, P, 2, K)
  counts = np.zeros(train_set.num_classes, int)
  for step in plan:
    pids = []
    for ident in step:
      photos, sketches = ident
      pid = table.pid[photos[0]]
      pids.append(pid)
      assert (table.pid[photos] == pid).all() and (table.pid[sketches] == pid).all()
      assert (table.modality[photos] == 0).all() and (table.modality[sketches] == 1).all()
      assert (table.split[ident.ravel()] == 'train').all()
      label = int(np.searchsorted(train_set.pids, pid))
      counts[label] += 1
      for drawn, pool in (
        (photos, train_set.photo_index_by_label[label]),
        (sketches, train_set.sketch_index_by_label[label]),
      ):
        if len(pool) >= K:
          assert len(set(drawn.tolist())) == K  # without replacement
    assert len(set(pids)) == P  # distinct identities in a batch
  assert counts.max() - counts.min() <= 1  # permutation cycling balances identities


def test_plan_distinct_identities_across_cycles(train_set):
  # P close to C forces many batches to straddle two permutations.
  for seed in range(20):
    plan = ip.pk_plan(train_set, P=4, K=1, epoch=seed % 3, seed=seed)
    for step in plan:
      assert len(set(step[:, 0, 0].tolist())) == 4


def test_plan_determinism(train_set):
  a = ip.pk_plan(train_set, P=2, K=2, epoch=3, seed=7)
  np.testing.assert_array_equal(a, ip.pk_plan(train_set, P=2, K=2, epoch=3, seed=7))
  assert not np.array_equal(a, ip.pk_plan(train_set, P=2, K=2, epoch=4, seed=7))
  assert not np.array_equal(a, ip.pk_plan(train_set, P=2, K=2, epoch=3, seed=8))
  with pytest.raises(ValueError, match='P=6'):
    ip.pk_plan(train_set, P=6, K=2, epoch=0, seed=0)


def test_host_slice_partitions(table, train_set):
  plan = ip.pk_plan(train_set, P=4, K=2, epoch=0, seed=0)
  parts = [ip.host_slice(plan, i, 2) for i in range(2)]
  np.testing.assert_array_equal(np.concatenate(parts, axis=1), plan)
  for step in range(len(plan)):
    ids = [set(table.pid[p[step, :, 0, 0]].tolist()) for p in parts]
    assert not ids[0] & ids[1] and len(ids[0] | ids[1]) == 4
  with pytest.raises(ValueError, match='P=4'):
    ip.host_slice(plan, 0, 3)


def test_batch_indices_layout(train_set):
  plan = ip.pk_plan(train_set, P=2, K=3, epoch=0, seed=0)
  for step in plan:
    naive = [step[i, 0, k] for i in range(2) for k in range(3)]
    naive += [step[i, 1, k] for i in range(2) for k in range(3)]
    np.testing.assert_array_equal(ip.batch_indices(step), naive)
  np.testing.assert_array_equal(
    ip.batch_indices(plan), np.stack([ip.batch_indices(s) for s in plan])
  )


# --------------------------------------------------------------------------- train iterator


def test_train_batches_shapes_labels(table, train_set):
  P, K = 2, 2
  plan = ip.pk_plan(train_set, P=P, K=K, epoch=0, seed=0)
  batches = list(
    ip.train_iterator(table, train_set, plan=plan, image_size=(24, 12), pad=2, seed=0, epoch=0)
  )
  assert len(batches) == len(plan)
  for step, b in zip(plan, batches):
    assert b['image'].shape == (2 * P * K, 24, 12, 3) and b['image'].dtype == np.float32
    assert b['label'].dtype == b['modality'].dtype == b['index'].dtype == np.int32
    np.testing.assert_array_equal(b['index'], ip.batch_indices(step))
    np.testing.assert_array_equal(b['modality'], [0] * P * K + [1] * P * K)
    np.testing.assert_array_equal(
      b['label'], np.searchsorted(train_set.pids, table.pid[b['index']])
    )
    np.testing.assert_array_equal(b['label'][: P * K], b['label'][P * K :])


def _single_image_table(pixels: np.ndarray, fmt: str = 'PNG', grey_sketch: bool = False):
  rows = _rows(
    lambda m: _encode(
      pixels if not (grey_sketch and m) else pixels[..., 0], 'JPEG' if grey_sketch and m else fmt
    )
  )
  t = make_table(rows, root='/x', name='const')
  with warnings.catch_warnings():
    warnings.simplefilter('ignore')
    return t, ip.make_train_set(t, 'AB')


def test_constant_colour_normalisation():
  colour = np.array([200, 100, 50])
  t, ts = _single_image_table(np.broadcast_to(colour, (H, W, 3)))
  plan = ip.pk_plan(ts, P=2, K=2, epoch=0, seed=0)[:1]
  (b,) = ip.train_iterator(
    t, ts, plan=plan, image_size=(20, 10), pad=0, flip=False, seed=0, epoch=0
  )
  expected = (colour / 255.0 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
  np.testing.assert_allclose(b['image'], np.broadcast_to(expected, b['image'].shape), atol=1e-5)


def test_pad_crop_keeps_a_shifted_window():
  colour = np.array([200, 100, 50])
  t, ts = _single_image_table(np.broadcast_to(colour, (H, W, 3)))
  plan = ip.pk_plan(ts, P=2, K=2, epoch=0, seed=0)[:2]
  pad = 3
  shifted = 0
  for b in ip.train_iterator(
    t, ts, plan=plan, image_size=(H, W), pad=pad, flip=False, seed=0, epoch=0
  ):
    for img in b['image']:
      inside = np.isclose(img, _normalised(colour), atol=1e-4).all(-1)
      black = np.isclose(img, _normalised([0, 0, 0]), atol=1e-4).all(-1)
      assert (inside | black).all()
      rows, cols = np.flatnonzero(inside.any(1)), np.flatnonzero(inside.any(0))
      # The image is one rectangle, cut by at most `pad` pixels per axis.
      assert inside[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1].all()
      assert H - len(rows) <= pad and W - len(cols) <= pad
      shifted += (len(rows) < H) or (len(cols) < W)
  assert shifted > 0


def test_flip_really_flips():
  pixels = np.zeros((H, W, 3), np.uint8)
  pixels[:, : W // 4] = (255, 0, 0)
  pixels[:, W // 4 :] = (0, 0, 255)
  t, ts = _single_image_table(pixels)
  original, mirrored = _normalised(pixels), _normalised(pixels[:, ::-1])
  plan = ip.pk_plan(ts, P=2, K=2, epoch=0, seed=0)[:2]
  seen = {'original': 0, 'mirrored': 0}
  for b in ip.train_iterator(
    t, ts, plan=plan, image_size=(H, W), pad=0, flip=True, seed=0, epoch=0
  ):
    for img in b['image']:
      if np.allclose(img, original, atol=1e-4):
        seen['original'] += 1
      else:
        np.testing.assert_allclose(img, mirrored, atol=1e-4)
        seen['mirrored'] += 1
  assert seen['original'] > 0 and seen['mirrored'] > 0
  (b,) = ip.train_iterator(
    t, ts, plan=plan[:1], image_size=(H, W), pad=0, flip=False, seed=0, epoch=0
  )
  np.testing.assert_allclose(b['image'], np.broadcast_to(original, b['image'].shape), atol=1e-4)


def test_restart_reproduces_batches(table, train_set):
  plan = ip.pk_plan(train_set, P=2, K=2, epoch=1, seed=5)
  kw = dict(plan=plan, image_size=(24, 12), pad=3, flip=True, random_erasing=0.5, seed=5, epoch=1)
  full = list(ip.train_iterator(table, train_set, **kw))
  again = list(ip.train_iterator(table, train_set, **kw))
  resumed = list(ip.train_iterator(table, train_set, start_step=2, **kw))
  assert len(resumed) == len(full) - 2
  for a, b in zip(full, again):
    np.testing.assert_array_equal(a['image'], b['image'])
  for a, b in zip(full[2:], resumed):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])
  other = next(ip.train_iterator(table, train_set, **{**kw, 'seed': 6}))
  assert not np.array_equal(other['image'], full[0]['image'])


def test_greyscale_sketch_gives_three_equal_channels():
  pixels = np.random.default_rng(1).integers(0, 256, (H, W, 3)).astype(np.uint8)
  t, ts = _single_image_table(pixels, grey_sketch=True)
  plan = ip.pk_plan(ts, P=2, K=2, epoch=0, seed=0)[:1]
  (b,) = ip.train_iterator(t, ts, plan=plan, image_size=(H, W), pad=2, seed=0, epoch=0)
  sketches = b['image'][b['modality'] == 1] * STD + MEAN
  np.testing.assert_allclose(sketches[..., 0], sketches[..., 1], atol=1e-5)
  np.testing.assert_allclose(sketches[..., 0], sketches[..., 2], atol=1e-5)
  photos = b['image'][b['modality'] == 0] * STD + MEAN
  assert np.abs(photos[..., 0] - photos[..., 1]).max() > 0.1  # colour photos stay colour


def test_random_erasing_erases_one_rectangle():
  colour = np.array([200, 100, 50])
  t, ts = _single_image_table(np.broadcast_to(colour, (H, W, 3)))
  plan = ip.pk_plan(ts, P=2, K=2, epoch=0, seed=0)[:1]
  kw = dict(plan=plan, image_size=(H, W), pad=0, flip=False, seed=0, epoch=0)
  (b,) = ip.train_iterator(t, ts, random_erasing=1.0, **kw)
  erased_any = 0
  for img in b['image']:
    zero = (img == 0).all(-1)
    if zero.any():
      erased_any += 1
      rows, cols = np.flatnonzero(zero.any(1)), np.flatnonzero(zero.any(0))
      assert zero[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1].all()
      assert zero.sum() == len(rows) * len(cols)
      # area drawn in [0.02, 0.4]·H·W; rounding h and w moves it by < h + w + 1 pixels
      assert (
        0.02 * H * W - (len(rows) + len(cols) + 1)
        <= zero.sum()
        <= 0.4 * H * W + len(rows) + len(cols) + 1
      )
    assert np.allclose(img[~zero], _normalised(colour), atol=1e-4)
  assert erased_any >= len(b['image']) // 2
  (b0,) = ip.train_iterator(t, ts, random_erasing=0.0, **kw)
  assert not (b0['image'] == 0).all(-1).any()


# --------------------------------------------------------------------------- eval


def test_eval_set_single_and_multi_query(table):
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter('always')
    single = ip.make_eval_set(table, 'AB', multi_query=False)
  assert len(caught) == 1 and '[13]' in str(caught[0].message)
  expected_q = [
    i for i in range(len(table)) if table.split[i] == 'query' and table.modality[i] == 1
  ]
  expected_g = [
    i for i in range(len(table)) if table.split[i] == 'query' and table.modality[i] == 0
  ]
  np.testing.assert_array_equal(single.query_index, expected_q)
  np.testing.assert_array_equal(single.gallery_index, expected_g)  # distractor 12 included
  assert 12 in single.gallery_pids.tolist()
  np.testing.assert_array_equal(single.query_pids, table.pid[expected_q])
  assert (single.query_camids == 0).all() and (single.gallery_camids >= 1).all()
  assert single.query_groups is None and single.num_queries == 4

  with warnings.catch_warnings():
    warnings.simplefilter('ignore')
    multi = ip.make_eval_set(table, 'AB', multi_query=True)
    only_a = ip.make_eval_set(table, 'A', multi_query=False)
  np.testing.assert_array_equal(multi.group_pids, [10, 11, 13])
  for g, pid in enumerate(multi.group_pids):
    members = multi.query_index[multi.query_groups == g]
    assert (table.pid[members] == pid).all()
    assert len(members) == sum(table.pid[i] == pid for i in expected_q)
  assert multi.num_queries == 3
  np.testing.assert_array_equal(only_a.query_pids, [10, 11])
  assert (only_a.query_styles == 'A').all()


def test_eval_set_missing_style_errors(table):
  with pytest.raises(ValueError, match=r'style\(s\) CD .*/data/msk/sketch/C/query/'):
    ip.make_eval_set(table, 'CD', multi_query=False)


def test_eval_iterator_padding():
  colour = np.array([10, 200, 90])
  t, _ = _single_image_table(np.broadcast_to(colour, (H, W, 3)))
  idx = np.array([4, 0, 7, 7, 2])
  batches = list(ip.eval_iterator(t, idx, image_size=(16, 8), batch_size=4))
  assert len(batches) == 2
  valid = np.concatenate([b['valid'] for b in batches])
  index = np.concatenate([b['index'] for b in batches])
  images = np.concatenate([b['image'] for b in batches])
  assert images.shape == (8, 16, 8, 3)
  np.testing.assert_array_equal(valid, [True] * 5 + [False] * 3)
  np.testing.assert_array_equal(index[valid], idx)
  assert (index[~valid] == -1).all() and (images[~valid] == 0).all()
  np.testing.assert_allclose(
    images[valid], np.broadcast_to(_normalised(colour), (5, 16, 8, 3)), atol=1e-5
  )
