"""Tests for the PKU-Sketch reader, its stratified identity split and layout errors (docs/design.md §5)."""

import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

from sketchreid_jax import input_pipeline
from sketchreid_jax.datasets import pku_sketch, synthetic
from sketchreid_jax.datasets.pku_sketch import CMDSL_TEST_COUNTS, load_pku_sketch, pku_split

# CMDSL Table 1, written out here rather than imported, so the test does not trust the module.
PAPER_SIZES = {'A': 46, 'B': 20, 'C': 79, 'D': 33, 'E': 22}
PAPER_TEST = {'A': 12, 'B': 5, 'C': 19, 'D': 8, 'E': 6}
# The tiny preset's 20 ids: the paper sizes scaled to 20 by largest remainder
# (4.6, 2.0, 7.9, 3.3, 2.2 -> floors 4, 2, 7, 3, 2 = 18; the two largest remainders, C and A, +1).
TINY_SIZES = {'A': 5, 'B': 2, 'C': 8, 'D': 3, 'E': 2}
# Their test counts by hand: round half up of test·n/size, clipped to [1, n-1]:
# A 12·5/46 = 1.30, B 5·2/20 = 0.50, C 19·8/79 = 1.92, D 8·3/33 = 0.73, E 6·2/22 = 0.55.
TINY_TEST = {'A': 1, 'B': 1, 'C': 2, 'D': 1, 'E': 1}


def _style_files(root: Path) -> dict[str, list[int]]:
  """Independent reading of styleAnnotation/: letter (upper) -> ids."""
  out = {}
  for file in (root / 'styleAnnotation').glob('*.txt'):
    out[file.name[0].upper()] = [int(x) for x in file.read_text().split()]
  return out


def _expected_rows(root: Path) -> dict[str, tuple[int, int, str, int]]:
  """path -> (pid, modality, style, camid), parsed from the file names with plain string ops."""
  style_of = {pid: s for s, ids in _style_files(root).items() for pid in ids}
  rows = {}
  for file in (root / 'sketch').iterdir():
    pid = int(file.name.split('.')[0])
    rows[f'sketch/{file.name}'] = (pid, 1, style_of[pid], 0)
  for file in (root / 'photo').iterdir():
    pid, cam, _frame = file.name.split('.')[0].split('_')
    rows[f'photo/{file.name}'] = (int(pid), 0, '', int(cam))
  return rows


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
  root = tmp_path_factory.mktemp('pku') / 'pku_sketch'
  synthetic.generate_pku_sketch(str(root), **synthetic.PRESETS['tiny']['pku'])
  cache = tmp_path_factory.mktemp('pku_cache')
  with pytest.warns(UserWarning, match='scaled proportionally'):
    table = load_pku_sketch(root, cache_dir=cache)
  return root, cache, table


def _cache_state(cache: Path) -> dict[str, int]:
  return {str(p.relative_to(cache)): p.stat().st_mtime_ns for p in cache.rglob('*') if p.is_file()}


def _split_quietly(ids_by_style, **kwargs):
  with warnings.catch_warnings():
    warnings.simplefilter('ignore')
    return pku_split(ids_by_style, **kwargs)


def test_rows_match_file_names(tiny):
  root, _, table = tiny
  expected = _expected_rows(root)
  assert len(expected) == 60  # 20 ids x (1 sketch + 2 photos)
  assert sorted(table.path.tolist()) == sorted(expected)
  for i, path in enumerate(table.path):
    got = (int(table.pid[i]), int(table.modality[i]), str(table.style[i]), int(table.camid[i]))
    assert got == expected[path], path
    assert table.image[i] == (root / path).read_bytes()  # raw bytes, not re-encoded
  assert table.pid.dtype == np.int32 and table.modality.dtype == np.int8
  assert table.attributes is None and table.name == 'pku_sketch'
  assert table.root == str(root.resolve())
  assert set(table.camid[table.modality == 0].tolist()) == {1, 2}
  # Rows ordered train before query, photos before sketches (the Market convention).
  key = (table.split == 'query').astype(int) * 10 + table.modality
  assert np.all(np.diff(key) >= 0)


def test_split_is_stratified_disjoint_and_covering(tiny):
  root, _, table = tiny
  by_style = _style_files(root)
  assert {s: len(ids) for s, ids in by_style.items()} == TINY_SIZES
  for pid in np.unique(table.pid):
    assert len(set(table.split[table.pid == pid].tolist())) == 1, pid  # sketch + photos together
  test_ids = set(table.pid[table.split == 'query'].tolist())
  train_ids = set(table.pid[table.split == 'train'].tolist())
  assert not test_ids & train_ids
  assert test_ids | train_ids == set(range(1, 21))
  assert {s: len(test_ids & set(ids)) for s, ids in by_style.items()} == TINY_TEST


def test_split_reproducible_and_differs_across_trials(tiny):
  root, cache, table = tiny
  by_style = _style_files(root)
  args = dict(test_counts=dict(PAPER_TEST), seed=0)
  trials = [_split_quietly(by_style, trial=t, **args) for t in range(5)]
  again = _split_quietly(by_style, trial=3, **args)
  np.testing.assert_array_equal(again[0], trials[3][0])
  np.testing.assert_array_equal(again[1], trials[3][1])
  tests = [tuple(test.tolist()) for _, test in trials]
  assert len(set(tests)) == len(tests)  # every trial draws another split
  other_seed = _split_quietly(by_style, trial=0, test_counts=dict(PAPER_TEST), seed=1)[1]
  assert tuple(other_seed.tolist()) != tests[0]
  assert set(table.pid[table.split == 'query'].tolist()) == set(tests[0])

  before = _cache_state(cache)
  with pytest.warns(UserWarning, match='scaled proportionally'):
    second = load_pku_sketch(root, cache_dir=cache, trial=1)
  assert _cache_state(cache) == before  # every trial reads the same build
  assert set(second.pid[second.split == 'query'].tolist()) == set(tests[1])


def test_paper_counts_on_a_full_size_dataset():
  rng = np.random.default_rng(7)
  ids = rng.permutation(np.arange(1, 201))
  by_style, at = {}, 0
  for style, size in PAPER_SIZES.items():
    by_style[style] = ids[at : at + size].tolist()
    at += size
  assert dict(CMDSL_TEST_COUNTS) == PAPER_TEST
  with warnings.catch_warnings():
    warnings.simplefilter('error')  # nothing to scale at the real size
    train, test = pku_split(by_style, test_counts=PAPER_TEST, seed=0, trial=0)
  assert len(train) == 150 and len(test) == 50
  assert set(train.tolist()) | set(test.tolist()) == set(range(1, 201))
  assert not set(train.tolist()) & set(test.tolist())
  assert {s: len(set(test.tolist()) & set(m)) for s, m in by_style.items()} == PAPER_TEST


def test_split_draws_uniformly_without_replacement():
  by_style = {'B': list(range(100, 120))}
  hits = np.zeros(20)
  trials = 2000
  for trial in range(trials):
    train, test = pku_split(by_style, test_counts={'B': 5}, seed=3, trial=trial)
    assert len(set(test.tolist())) == 5 and len(train) == 15
    hits[test - 100] += 1
  # Each id is tested with probability 5/20; 0.05 is about 5 binomial standard deviations.
  np.testing.assert_allclose(hits / trials, 0.25, atol=0.05)


@pytest.mark.parametrize(
  'by_style,counts,kwargs,message',
  [
    ({'A': [1, 2, 3], 'B': [3, 4]}, {'A': 1, 'B': 1}, {}, 'person 3 is in style A and in style B'),
    ({'A': [1, 2], 'B': [3]}, {'A': 1, 'B': 1}, {}, 'style B has 1 id'),
    ({'A': [1, 2]}, {'A': 1, 'B': 1}, {}, 'test_counts has styles'),
    ({'A': [1, 2, 3]}, {'A': 0}, {}, 'expected an integer >= 1'),
    ({'A': [1, 2, 3]}, {'A': 1}, {'trial': -1}, 'trial must be an integer >= 0'),
  ],
)
def test_split_errors(by_style, counts, kwargs, message):
  kwargs = {'seed': 0, 'trial': 0, **kwargs}
  with pytest.raises(ValueError, match=re.escape(message)):
    pku_split(by_style, test_counts=counts, **kwargs)


def test_train_and_eval_sets(tiny):
  _, _, table = tiny
  test_ids = np.unique(table.pid[table.split == 'query'])
  train_set = input_pipeline.make_train_set(table, 'ABCDE')
  assert train_set.num_classes == 20 - len(test_ids) == 14
  assert not set(train_set.pids.tolist()) & set(test_ids.tolist())
  assert all(len(r) == 2 for r in train_set.photo_index_by_label)
  assert all(len(r) == 1 for r in train_set.sketch_index_by_label)

  eval_set = input_pipeline.make_eval_set(table, 'ABCDE', multi_query=False)
  np.testing.assert_array_equal(np.sort(eval_set.query_pids), test_ids)  # 1 sketch per test id
  assert np.all(table.modality[eval_set.query_index] == 1) and np.all(eval_set.query_camids == 0)
  assert len(eval_set.gallery_index) == 2 * len(test_ids)
  for pid in test_ids:
    cams = eval_set.gallery_camids[eval_set.gallery_pids == pid]
    assert sorted(cams.tolist()) == [1, 2], pid


def _copy(tiny, tmp_path: Path) -> Path:
  root = tmp_path / 'pku'
  shutil.copytree(tiny[0], root)
  return root


def _rewrite_style(root: Path, letter: str, ids: list[int]) -> Path:
  """Replaces the style file of ``letter`` by one listing ``ids`` (count in the name kept right)."""
  for old in (root / 'styleAnnotation').glob(f'{letter}_*.txt'):
    old.unlink()
  path = root / 'styleAnnotation' / f'{letter}_{len(ids)}.txt'
  path.write_text(''.join(f'{i}\n' for i in ids))
  return path


@pytest.mark.parametrize('folder', ['sketch', 'photo', 'styleAnnotation'])
def test_missing_folder_errors(tiny, tmp_path, folder):
  root = _copy(tiny, tmp_path)
  shutil.rmtree(root / folder)
  with pytest.raises(FileNotFoundError, match=re.escape(str(root / folder))):
    pku_sketch.scan_layout(root)


def test_sketch_without_photos_errors(tiny, tmp_path):
  root = _copy(tiny, tmp_path)
  for photo in (root / 'photo').glob('7_*.jpg'):
    photo.unlink()
  sketch = root / 'sketch' / '7.jpg'
  with pytest.raises(ValueError, match=re.escape(f'{sketch}: person 7 has no photo')):
    pku_sketch.scan_layout(root)


def test_id_in_no_style_errors(tiny, tmp_path):
  root = _copy(tiny, tmp_path)
  letter, ids = next((s, ids) for s, ids in _style_files(root).items() if len(ids) > 2)
  _rewrite_style(root, letter, ids[1:])
  sketch = root / 'sketch' / f'{ids[0]}.jpg'
  with pytest.raises(ValueError, match=re.escape(f'{sketch}: person {ids[0]} is in no style file')):
    pku_sketch.scan_layout(root)


def test_id_in_two_styles_errors(tiny, tmp_path):
  root = _copy(tiny, tmp_path)
  by_style = _style_files(root)
  moved = by_style['A'][0]
  first = next((root / 'styleAnnotation').glob('A_*.txt'))
  second = _rewrite_style(root, 'B', by_style['B'] + [moved])
  # A is read before B, so the error is reported at B's line naming A's file.
  with pytest.raises(ValueError, match=re.escape(str(second))) as err:
    pku_sketch.scan_layout(root)
  assert str(first) in str(err.value) and f'person {moved}' in str(err.value)


def test_style_lists_unknown_id_errors(tiny, tmp_path):
  root = _copy(tiny, tmp_path)
  path = _rewrite_style(root, 'E', _style_files(root)['E'] + [999])
  with pytest.raises(ValueError, match=re.escape(f'{path}: lists person 999')):
    pku_sketch.scan_layout(root)


@pytest.mark.parametrize(
  'bad',
  [
    'sketch/abc.jpg',
    'sketch/7_1.jpg',
    'photo/x_1_2.jpg',
    'photo/3.jpg',
    'photo/3_0_5.jpg',  # camera 0 is the sketches' camera
    'styleAnnotation/notes.txt',
    'styleAnnotation/f_1.txt',
    'styleAnnotation/a_2.txt',  # a second file for style A
  ],
)
def test_bad_file_errors(tiny, tmp_path, bad):
  root = _copy(tiny, tmp_path)
  source = next((root / 'sketch').glob('*.jpg'))
  target = root / bad
  if bad.endswith('.txt'):
    target.write_text('1\n2\n')
  else:
    target.write_bytes(source.read_bytes())
  with pytest.raises(ValueError, match=re.escape(str(target))):
    load_pku_sketch(root, cache_dir=tmp_path / 'cache')
  assert not (tmp_path / 'cache').exists()  # validation happens before any build


def test_lower_case_style_files_and_count_mismatch(tiny, tmp_path):
  root = _copy(tiny, tmp_path)
  original = pku_sketch.scan_layout(root).ids_by_style
  for file in (root / 'styleAnnotation').glob('*.txt'):
    file.rename(file.with_name(file.name.lower()))
  assert pku_sketch.scan_layout(root).ids_by_style == original
  wrong = root / 'styleAnnotation' / 'c_99.txt'
  next((root / 'styleAnnotation').glob('c_*.txt')).rename(wrong)
  with pytest.warns(UserWarning, match=re.escape(f'{wrong}: the name says 99 ids')):
    assert pku_sketch.scan_layout(root).ids_by_style == original


def test_empty_style_file_errors(tiny, tmp_path):
  root = _copy(tiny, tmp_path)
  path = _rewrite_style(root, 'B', [])
  with pytest.raises(ValueError, match=re.escape(f'{path}: lists no person id')) as err:
    load_pku_sketch(root, cache_dir=tmp_path / 'cache')
  assert 'expected the ids drawn in style B, one per line' in str(err.value)
  assert not (tmp_path / 'cache').exists()  # validation happens before any build


def test_id_with_photos_but_no_sketch_errors(tiny, tmp_path):
  root = _copy(tiny, tmp_path)
  (root / 'sketch' / '7.jpg').unlink()
  assert list((root / 'photo').glob('7_*.jpg'))  # its photos stay
  listing = next(
    p for p in (root / 'styleAnnotation').glob('*.txt') if '7' in p.read_text().split()
  )
  message = f'{listing}: lists person 7 but {root / "sketch"}/7.jpg does not exist'
  with pytest.raises(ValueError, match=re.escape(message)):
    pku_sketch.scan_layout(root)


def test_photos_without_sketch_are_left_out_with_a_warning(tiny, tmp_path):
  root = _copy(tiny, tmp_path)
  _, _, full = tiny
  source = next((root / 'photo').glob('7_1_*.jpg')).read_bytes()
  stray = [root / 'photo' / '999_1_5.jpg', root / 'photo' / '999_2_6.jpg']
  for path in stray:
    path.write_bytes(source)
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter('always')
    table = load_pku_sketch(root, cache_dir=tmp_path / 'cache')
  (warning,) = [w for w in caught if 'photos_without_sketch' in str(w.message)]
  text = str(warning.message)
  assert 'photos_without_sketch: 2 (1 identity)' in text
  for path in stray:
    assert f'{path.resolve()}: person 999 has no sketch' in text
  assert 999 not in table.pid.tolist()
  assert sorted(table.path.tolist()) == sorted(full.path.tolist())


@pytest.mark.parametrize('pattern', ['sketch/7.jpg', 'photo/7_2_*.jpg'])
def test_unreadable_image_errors(tiny, tmp_path, pattern):
  root = _copy(tiny, tmp_path)
  target = next(root.glob(pattern))
  data = target.read_bytes()
  target.write_bytes(data[: len(data) // 2])
  with warnings.catch_warnings():
    warnings.simplefilter('ignore')  # the tiny set's scaled test counts
    with pytest.raises(ValueError, match=re.escape(f'{target.resolve()}: unreadable image')) as e:
      load_pku_sketch(root, cache_dir=tmp_path / 'cache')
  assert '1 problem to fix' in str(e.value)
  assert 'Fix: re-copy it from the original dataset or remove it' in str(e.value)
  assert not (tmp_path / 'cache').exists()  # checked before any build
