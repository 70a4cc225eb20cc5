"""Tests for the Market-Sketch-1K layout scan, TFDS build cache and loader (docs/design.md §5)."""

import concurrent.futures
import io
import os
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image

from sketchreid_jax.datasets import market_sketch
from sketchreid_jax.datasets.market_sketch import ATTRIBUTE_NAMES, load_market_sketch
from sketchreid_jax.datasets.table import SampleTable, make_table

H, W = 32, 16


def _jpeg(color, grey: bool = False) -> bytes:
  color = [int(c) for c in color]
  img = Image.new('L' if grey else 'RGB', (W, H), color[0] if grey else tuple(color))
  buf = io.BytesIO()
  img.save(buf, format='JPEG')
  return buf.getvalue()


def _write(path: Path, data: bytes) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_bytes(data)


# What the tiny layout holds: (relative path, pid, modality, style, split, camid).
LAYOUT = [
  ('photo/train/0001_c1s1_000001_01.jpg', 1, 0, '', 'train', 1),
  ('photo/train/0001_c3s2_000101_02.jpg', 1, 0, '', 'train', 3),
  ('photo/train/0002_c2s1_000201_01.jpg', 2, 0, '', 'train', 2),
  ('photo/train/0004_c6s1_000301_01.jpg', 4, 0, '', 'train', 6),
  ('photo/query/0003_c4s1_000001_01.jpg', 3, 0, '', 'query', 4),
  ('photo/query/0005_c5s3_000001_01.jpg', 5, 0, '', 'query', 5),
  ('photo/query/0000_c1s1_000001_00.jpg', 0, 0, '', 'query', 1),
  ('sketch/A/train/0001.jpg', 1, 1, 'A', 'train', 0),
  ('sketch/A/train/0002.jpg', 2, 1, 'A', 'train', 0),
  ('sketch/C/train/0001_x.jpg', 1, 1, 'C', 'train', 0),
  ('sketch/A/query/0003.jpg', 3, 1, 'A', 'query', 0),
  ('sketch/C/query/0003.jpg', 3, 1, 'C', 'query', 0),
  ('sketch/C/query/0005.jpg', 5, 1, 'C', 'query', 0),
]


def write_layout(root: Path, with_mat: bool = True) -> None:
  rng = np.random.default_rng(0)
  for i, (rel, _, modality, *_rest) in enumerate(LAYOUT):
    _write(root / rel, _jpeg(rng.integers(0, 256, 3), grey=(modality == 1 and i % 2 == 0)))
  (root / 'photo' / 'train' / 'Thumbs.db').write_bytes(b'not an image')
  if with_mat:
    # Train lists ids 1, 2; test lists 3, 5; id 4 and 0 are absent (-> rows of -1).
    def part(ids, offset):
      fields = {
        name: (np.arange(len(ids)) + j + offset) % (4 if name == 'age' else 2) + 1
        for j, name in enumerate(ATTRIBUTE_NAMES)
      }
      fields['image_index'] = np.array([f'{i:04d}' for i in ids], dtype=object)
      return fields

    scipy.io.savemat(
      root / 'market_attribute.mat',
      {'market_attribute': {'train': part([1, 2], 0), 'test': part([3, 5], 1)}},
    )


def _expected_attr(pid: int) -> np.ndarray:
  # Independent re-derivation of the codes written above, 0-based.
  where = {1: (0, 0), 2: (1, 0), 3: (0, 1), 5: (1, 1)}
  if pid not in where:
    return np.full(len(ATTRIBUTE_NAMES), -1)
  k, offset = where[pid]
  return np.array(
    [(k + j + offset) % (4 if n == 'age' else 2) for j, n in enumerate(ATTRIBUTE_NAMES)]
  )


@pytest.fixture(scope='module')
def built(tmp_path_factory):
  root = tmp_path_factory.mktemp('msk') / 'market_sketch'
  write_layout(root)
  cache = tmp_path_factory.mktemp('cache')
  table = load_market_sketch(root, cache_dir=cache)
  return root, cache, table


def _cache_state(cache: Path) -> dict[str, int]:
  return {str(p.relative_to(cache)): p.stat().st_mtime_ns for p in cache.rglob('*') if p.is_file()}


def test_table_contents(built):
  root, _, table = built
  assert isinstance(table, SampleTable)
  assert len(table) == len(LAYOUT)
  by_path = {p: i for i, p in enumerate(table.path)}
  assert set(by_path) == {row[0] for row in LAYOUT}  # Thumbs.db is not a sample
  for rel, pid, modality, style, split, camid in LAYOUT:
    i = by_path[rel]
    assert (table.pid[i], table.modality[i], table.style[i], table.split[i], table.camid[i]) == (
      pid,
      modality,
      style,
      split,
      camid,
    ), rel
    assert table.image[i] == (root / rel).read_bytes()  # raw bytes, not re-encoded
  assert table.pid.dtype == np.int32 and table.modality.dtype == np.int8
  assert table.camid.dtype == np.int32 and table.image.dtype == object
  # Rows are ordered train before query, photos before sketches.
  split_rank = (table.split == 'query').astype(int)
  key = split_rank * 10 + table.modality
  assert np.all(np.diff(key) >= 0)
  assert table.root == str(root.resolve())
  summary = table.summary()
  assert 'sketch C' in summary and '13 images' in summary


def test_attributes(built):
  _, _, table = built
  assert table.attribute_names == ATTRIBUTE_NAMES and len(ATTRIBUTE_NAMES) == 27
  assert set(table.attributes) == {0, 1, 2, 3, 4, 5}
  for pid, row in table.attributes.items():
    np.testing.assert_array_equal(row, _expected_attr(pid), err_msg=f'pid {pid}')


def test_cache_reused_then_rebuilt_on_change(built, tmp_path):
  root, cache, first = built
  before = _cache_state(cache)
  fingerprints = {p.name for p in cache.iterdir()}
  assert len(fingerprints) == 1
  again = load_market_sketch(root, cache_dir=cache)
  assert _cache_state(cache) == before  # nothing written: no rebuild
  np.testing.assert_array_equal(again.path, first.path)

  # Edit one file in a copy of the layout (the original is shared by other tests).
  copy = tmp_path / 'copy'
  write_layout(copy)
  load_market_sketch(copy, cache_dir=cache)
  assert len({p.name for p in cache.iterdir()}) == 2  # another root never collides
  edited = copy / LAYOUT[0][0]
  edited.write_bytes(_jpeg((1, 2, 3)) + b'\0')
  table = load_market_sketch(copy, cache_dir=cache)
  assert len({p.name for p in cache.iterdir()}) == 3
  i = int(np.flatnonzero(table.path == LAYOUT[0][0])[0])
  assert table.image[i] == edited.read_bytes()


def test_two_loads_of_new_data_at_once_both_succeed(tmp_path):
  # Two trainings started together on data nobody has built yet: the second waits for the
  # first's build instead of failing in TFDS's rename of its 'incomplete.*' folder.
  root, cache = tmp_path / 'd', tmp_path / 'cache'
  write_layout(root)
  with concurrent.futures.ThreadPoolExecutor(2) as pool:
    tables = list(pool.map(lambda _: load_market_sketch(root, cache_dir=cache), range(2)))
  np.testing.assert_array_equal(tables[0].path, tables[1].path)
  assert len(tables[0].path) == len(LAYOUT)


def test_missing_mat_warns_and_gives_none(tmp_path):
  root = tmp_path / 'd'
  write_layout(root, with_mat=False)
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter('always')
    table = load_market_sketch(root, cache_dir=tmp_path / 'cache')
  assert table.attributes is None
  assert sum('market_attribute.mat' in str(w.message) for w in caught) == 1


@pytest.mark.parametrize('remove', ['photo/query', 'photo/train', 'sketch'])
def test_missing_folder_errors(tmp_path, remove):
  root = tmp_path / 'd'
  write_layout(root, with_mat=False)
  for p in sorted((root / remove).rglob('*'), reverse=True):
    p.unlink() if p.is_file() else p.rmdir()
  (root / remove).rmdir()
  with pytest.raises(FileNotFoundError, match=re.escape(str(root / remove))):
    market_sketch.scan_layout(root)


def test_no_style_folder_error(tmp_path):
  root = tmp_path / 'd'
  write_layout(root, with_mat=False)
  for style in ('A', 'C'):
    for p in sorted((root / 'sketch' / style).rglob('*'), reverse=True):
      p.unlink() if p.is_file() else p.rmdir()
    (root / 'sketch' / style).rmdir()
  with pytest.raises(FileNotFoundError, match='no style folder'):
    market_sketch.scan_layout(root)


@pytest.mark.parametrize(
  'bad', ['sketch/A/query/abcd.jpg', 'photo/train/x001_c1s1_000001_01.jpg', 'photo/query/0007.jpg']
)
def test_bad_file_name_errors(tmp_path, bad):
  root = tmp_path / 'd'
  write_layout(root, with_mat=False)
  _write(root / bad, _jpeg((0, 0, 0)))
  with pytest.raises(ValueError, match=os.path.basename(bad)):
    load_market_sketch(root, cache_dir=tmp_path / 'cache')
  assert not (tmp_path / 'cache').exists()  # validation happens before any build


def test_table_select_and_validation():
  rows = [
    dict(
      image=b'x',
      pid=i,
      modality=i % 2,
      style='A' if i % 2 else '',
      split='train',
      camid=0 if i % 2 else 1,
      path=f'{i}.jpg',
    )
    for i in range(5)
  ]
  table = make_table(rows, name='t')
  sub = table.select(table.modality == 1)
  np.testing.assert_array_equal(sub.pid, [1, 3])
  np.testing.assert_array_equal(table.select([4, 0, 4]).path, ['4.jpg', '0.jpg', '4.jpg'])
  with pytest.raises(ValueError, match='mask has shape'):
    table.select(np.ones(3, bool))
  with pytest.raises(ValueError, match='differ in length'):
    SampleTable(
      image=table.image,
      pid=table.pid[:2],
      modality=table.modality,
      style=table.style,
      split=table.split,
      camid=table.camid,
      path=table.path,
    )


def _empty(folder: Path) -> None:
  for p in folder.iterdir():
    p.unlink()


@pytest.mark.parametrize('folder', ['sketch/E/train', 'sketch/A/query'])
def test_style_folder_without_sketches_errors(tmp_path, folder):
  root = tmp_path / 'd'
  write_layout(root, with_mat=False)
  (root / folder).mkdir(parents=True, exist_ok=True)
  _empty(root / folder)  # A/query held 0003.jpg; E/train is new
  (root / folder / 'Thumbs.db').write_bytes(b'not an image')
  style, split = folder.split('/')[1:]
  with pytest.raises(
    ValueError, match=re.escape(f'{root / folder}: no sketches for style {style}')
  ):
    load_market_sketch(root, cache_dir=tmp_path / 'cache')
  with pytest.raises(ValueError, match=re.escape(f'expected sketch/{style}/{split}/<pid>.jpg')):
    market_sketch.scan_layout(root)
  assert not (tmp_path / 'cache').exists()  # validation happens before any build


@pytest.mark.parametrize(
  'sketches,split',
  [
    # A training sketch whose identity has no training photo (nothing for P×K to pair it with).
    (['sketch/A/train/0007.jpg'], 'train'),
    # Query sketches whose identities have no gallery photo: every one is named.
    ([f'sketch/C/query/{p:04d}.jpg' for p in range(10, 17)], 'query'),
  ],
)
def test_sketch_identity_without_photo_errors(tmp_path, sketches, split):
  root = tmp_path / 'd'
  write_layout(root, with_mat=False)
  for rel in sketches:
    _write(root / rel, _jpeg((9, 9, 9), grey=True))
  with pytest.raises(ValueError, match=re.escape(f'{root / "photo" / split}: ')) as err:
    load_market_sketch(root, cache_dir=tmp_path / 'cache')
  message = str(err.value)
  assert f'{len(sketches)} problem' in message and 'expected at least one' in message
  for rel in sketches:
    pid = Path(rel).stem
    assert f'no photo of identity {pid}, which has {split} sketches ({rel})' in message
  assert not (tmp_path / 'cache').exists()  # validation happens before any build


def test_sketch_in_the_wrong_split_is_explained(tmp_path):
  root = tmp_path / 'd'
  write_layout(root, with_mat=False)
  _write(root / 'sketch/A/query/0001.jpg', _jpeg((9, 9, 9)))  # 0001's photos are in photo/train
  with pytest.raises(ValueError, match=re.escape(f'{root / "photo" / "query"}: ')) as err:
    market_sketch.scan_layout(root)
  assert 'Photos of 0001 are in photo/train instead' in str(err.value)


def _noise_jpeg() -> bytes:
  """A JPEG whose second half is entropy-coded data, so cutting it keeps a valid header."""
  pixels = np.random.default_rng(1).integers(0, 256, (64, 32, 3), dtype=np.uint8)
  buf = io.BytesIO()
  Image.fromarray(pixels).save(buf, format='JPEG')
  return buf.getvalue()


def test_truncated_jpeg_passes_verify_but_not_the_check():
  from sketchreid_jax.datasets.checks import image_problem

  data = _noise_jpeg()
  assert image_problem(data) is None
  cut = data[: len(data) // 2]
  with Image.open(io.BytesIO(cut)) as img:
    img.verify()  # the cheap check misses it ...
  assert 'truncated' in image_problem(cut)  # ... a full decode does not
  assert image_problem(b'') == 'unreadable image (the file is empty)'


@pytest.mark.parametrize('damage', ['truncated', 'random bytes'])
def test_unreadable_image_errors(tmp_path, damage):
  root = tmp_path / 'd'
  write_layout(root)
  bad = ['sketch/C/query/0005.jpg', 'photo/query/0003_c4s1_000001_01.jpg']
  originals = {rel: (root / rel).read_bytes() for rel in bad}
  good = _noise_jpeg()
  for rel in bad:
    junk = np.random.default_rng(2).bytes(300)
    (root / rel).write_bytes(good[: len(good) // 2] if damage == 'truncated' else junk)
  with pytest.raises(
    ValueError, match=re.escape(f'{root.resolve() / bad[1]}: unreadable image')
  ) as e:
    load_market_sketch(root, cache_dir=tmp_path / 'cache')
  message = str(e.value)
  assert f'{root.resolve() / bad[0]}: unreadable image' in message  # both, at once
  assert '2 problems to fix' in message
  assert 'Fix: re-copy it from the original dataset or remove it' in message
  assert not (tmp_path / 'cache').exists()  # checked before any build
  for rel, data in originals.items():
    (root / rel).write_bytes(data)
  assert len(load_market_sketch(root, cache_dir=tmp_path / 'cache')) == len(LAYOUT)


def test_synthetic_layout_passes_the_checks(tiny_market):
  records = market_sketch.scan_layout(tiny_market)
  assert {r.modality for r in records} == {0, 1}
