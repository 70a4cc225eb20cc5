"""QMUL-ShoeV2/ChairV2 reader, its data checks, and the pipeline on its table (tiny trees)."""

import io
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sketchreid_jax import datasets, input_pipeline
from sketchreid_jax.config_base import base_config
from sketchreid_jax.datasets import checks, qmul, synthetic, synthetic_objects
from sketchreid_jax.evaluation import evaluate_rank
from sketchreid_jax.tools import check_data

SPLIT_OF = {'trainA': 'train', 'trainB': 'train', 'testA': 'query', 'testB': 'query'}


@pytest.fixture(scope='module')
def trees(tmp_path_factory):
  """The tiny synthetic ShoeV2 and ChairV2 roots and their tables (one TFDS cache)."""
  base = tmp_path_factory.mktemp('qmul')
  cache = tmp_path_factory.mktemp('qmul_cache')
  out = {}
  for name, generate in (
    ('qmul_shoev2', synthetic_objects.generate_qmul_shoev2),
    ('qmul_chairv2', synthetic_objects.generate_qmul_chairv2),
  ):
    root = base / name
    generate(root, **synthetic.PRESETS['tiny'][name])
    out[name] = (root, qmul.load_qmul(root, name=name, cache_dir=cache))
  return out


def _expected_rows(root: Path) -> dict[str, tuple[int, int, str, str, int]]:
  """path -> (pid, modality, style, split, camid) from the file names, with plain string ops."""
  photos = {p.stem for folder in ('trainB', 'testB') for p in (root / folder).iterdir()}
  pid = {stem: i for i, stem in enumerate(sorted(photos))}
  rows = {}
  for folder, split in SPLIT_OF.items():
    for p in (root / folder).iterdir():
      if folder.endswith('B'):
        rows[f'{folder}/{p.name}'] = (pid[p.stem], 0, '', split, 1)
      else:
        rows[f'{folder}/{p.name}'] = (pid[p.stem.rsplit('_', 1)[0]], 1, 'A', split, 0)
  return rows


@pytest.mark.parametrize('name', ['qmul_shoev2', 'qmul_chairv2'])
def test_rows_match_file_names(trees, name):
  root, table = trees[name]
  expected = _expected_rows(root)
  assert len(expected) == 12 + 36 + 6 + 18  # tiny: 12 + 6 photos, 3 sketches each
  assert sorted(table.path.tolist()) == sorted(expected)
  for i, path in enumerate(table.path):
    got = (
      int(table.pid[i]),
      int(table.modality[i]),
      str(table.style[i]),
      str(table.split[i]),
      int(table.camid[i]),
    )
    assert got == expected[path], path
    assert table.image[i] == (root / path).read_bytes()  # raw bytes, not re-encoded
  counts = {
    (s, m): int(((table.split == s) & (table.modality == m)).sum())
    for s in ('train', 'query')
    for m in (0, 1)
  }
  assert counts == {('train', 0): 12, ('train', 1): 36, ('query', 0): 6, ('query', 1): 18}
  assert table.name == name and table.attributes is None and table.root == str(root.resolve())
  key = (table.split == 'query').astype(int) * 10 + table.modality  # train first, photos first
  assert np.all(np.diff(key) >= 0)
  # Every sketch carries the pid of the photo with its stem.
  photo_pid = {
    Path(p).stem: int(q) for p, q, m in zip(table.path, table.pid, table.modality) if not m
  }
  for p, q, m in zip(table.path, table.pid, table.modality):
    if m:
      assert q == photo_pid[Path(p).stem.rsplit('_', 1)[0]], p


def test_chair_stems_keep_their_underscores(trees):
  _, table = trees['qmul_chairv2']
  photo = table.modality == 0
  pid_of = {Path(p).stem: int(q) for p, q in zip(table.path[photo], table.pid[photo])}
  assert all('_' in s and not s.isdigit() for s in pid_of)
  tricky = [s for s in pid_of if re.search(r'_\d+$', s)]  # a stem that itself ends in _<digits>
  assert tricky, sorted(pid_of)
  for stem in tricky:
    sketches = [Path(p).stem for p in table.path[(table.pid == pid_of[stem]) & ~photo]]
    assert len(sketches) == 3 and all(re.fullmatch(re.escape(stem) + r'_\d', s) for s in sketches)
  shoe_stems = [Path(p).stem for p in trees['qmul_shoev2'][1].path]
  assert all(re.fullmatch(r'\d{10}(_\d)?', s) for s in shoe_stems)


def test_last_index_rule_on_a_hand_made_tree(tmp_path):
  # 'a_b' and 'a_b_2' are two photos: a_b_2_1 belongs to a_b_2, a_b_1 to a_b, a_b_2_13 to a_b_2.
  files = {
    'trainB/a_b.png': 1,
    'trainB/a_b_2.png': 2,
    'trainA/a_b_1.png': 3,
    'trainA/a_b_2_1.png': 4,
    'trainA/a_b_2_13.png': 5,
    'testB/c.png': 6,
    'testA/c_7.png': 7,
  }
  root = _tree(tmp_path / 'root', files)
  assert qmul.photo_stem('a_b_2_13') == 'a_b_2' and qmul.photo_stem('a_b') is None
  assert qmul.photo_stem('2429245009') is None and qmul.photo_stem('_3') is None
  table = qmul.load_qmul(root, name='qmul_chairv2', cache_dir=tmp_path / 'cache')
  pid = dict(zip(table.path.tolist(), table.pid.tolist()))
  # Sorted stems a_b < a_b_2 < c.
  assert pid == {
    'trainB/a_b.png': 0,
    'trainB/a_b_2.png': 1,
    'trainA/a_b_1.png': 0,
    'trainA/a_b_2_1.png': 1,
    'trainA/a_b_2_13.png': 1,
    'testB/c.png': 2,
    'testA/c_7.png': 2,
  }


def test_train_eval_sets_and_pk_plan(trees):
  root, table = trees['qmul_chairv2']
  train = input_pipeline.make_train_set(table, 'A')
  photos = sorted(p.stem for p in (root / 'trainB').iterdir())
  assert train.num_classes == len(photos) == 12
  for label in range(train.num_classes):
    (photo,) = train.photo_index_by_label[label]  # one photo per class
    stem = Path(table.path[photo]).stem
    sketches = sorted(Path(table.path[r]).stem for r in train.sketch_index_by_label[label])
    assert sketches == sorted(p.stem for p in (root / 'trainA').glob(f'{stem}_*.png'))
    assert set(table.pid[train.sketch_index_by_label[label]]) == {table.pid[photo]}

  evals = input_pipeline.make_eval_set(table, 'A', multi_query=False)
  assert len(evals.query_index) == len(list((root / 'testA').iterdir())) == 18
  assert len(evals.gallery_index) == len(list((root / 'testB').iterdir())) == 6
  assert sorted(table.path[evals.gallery_index]) == sorted(
    f'testB/{p.name}' for p in (root / 'testB').iterdir()
  )
  # One true match per query; camids never remove it: a perfect distance gives rank-1 = 1.
  match = evals.query_pids[:, None] == evals.gallery_pids[None, :]
  assert (match.sum(axis=1) == 1).all()
  result = evaluate_rank(
    np.where(match, 0.0, 1.0), evals.query_pids, evals.gallery_pids,
    evals.query_camids, evals.gallery_camids, max_rank=5,
  )  # fmt: skip
  assert result.num_valid_queries == 18 and result.rank(1) == 1.0 and result.mAP == 1.0

  for K in (3, 4):  # 3 sketches per photo: without replacement at K = 3, with it at K = 4
    plan = input_pipeline.pk_plan(train, P=4, K=K, epoch=0, seed=0)
    assert plan.shape[1:] == (4, 2, K)
    for step in plan:
      assert len({int(table.pid[s[0, 0]]) for s in step}) == 4  # P distinct photos
      for slot in step:
        photo_rows, sketch_rows = slot
        assert len(set(photo_rows.tolist())) == 1  # the one photo, K times
        assert (table.modality[photo_rows] == 0).all() and (table.modality[sketch_rows] == 1).all()
        assert set(table.pid[sketch_rows]) == {table.pid[photo_rows[0]]}
        if K == 3:
          assert len(set(sketch_rows.tolist())) == 3


def test_load_through_the_registry_and_name(trees, tmp_path):
  root, _ = trees['qmul_shoev2']
  config = base_config().data
  config.dataset, config.root, config.cache_dir = 'qmul_shoev2', str(root), str(tmp_path)
  assert datasets.load(config).name == 'qmul_shoev2'
  with pytest.raises(ValueError, match='qmul_shoev2, qmul_chairv2'):
    qmul.load_qmul(root, name='shoes')


# --------------------------------------------------------------------------- checks


def _png(value: int) -> bytes:
  buf = io.BytesIO()
  Image.new('RGB', (8, 8), (value * 13 % 256, value * 7 % 256, 90)).save(buf, format='PNG')
  return buf.getvalue()


def _tree(root: Path, files: dict[str, int | bytes]) -> Path:
  for folder in SPLIT_OF:
    (root / folder).mkdir(parents=True, exist_ok=True)
  for rel, content in files.items():
    (root / rel).write_bytes(content if isinstance(content, bytes) else _png(content))
  return root


GOOD = {
  'trainB/10.png': 1,
  'trainA/10_1.png': 2,
  'trainA/10_2.png': 3,
  'trainB/11.png': 4,
  'trainA/11_1.png': 5,
  'testB/20.png': 6,
  'testA/20_1.png': 7,
  'testB/21.png': 8,
  'testA/21_3.png': 9,
}

# name -> (changes to GOOD: rel -> content or None to delete, folders to remove, kind, path).
CASES = {
  'sketch_without_photo': ({'trainB/11.png': None}, (), 'sketch_without_photo', 'trainB'),
  'query_without_gallery': ({'testB/21.png': None}, (), 'query_without_gallery', 'testB'),
  'train_photo_without_sketch': (
    {'trainB/12.png': 10},
    (),
    'photos_without_sketch',
    'trainB/12.png',
  ),
  'test_photo_without_sketch': ({'testB/22.png': 10}, (), 'photos_without_sketch', 'testB/22.png'),
  'sketch_without_index': ({'trainA/10.png': 10}, (), 'bad_name', 'trainA/10.png'),
  'sketch_with_empty_stem': ({'testA/_4.png': 10}, (), 'bad_name', 'testA/_4.png'),
  'stem_in_both_splits': (
    {'testB/10.png': 10, 'testA/10_3.png': 11},
    (),
    'stem_in_both_splits',
    'testA/10_3.png',
  ),
  'stem_in_both_splits_by_case': (
    {'testA/ab_1.png': 10, 'testB/ab.png': 11, 'trainB/AB.png': 12, 'trainA/AB_1.png': 13},
    (),
    'stem_in_both_splits',
    'testA/ab_1.png',
  ),  # fmt: skip
  'missing_folder': (
    {'testA/20_1.png': None, 'testA/21_3.png': None},
    ('testA',),
    'missing_folder',
    'testA',
  ),
  'no_images': ({'testB/20.png': None, 'testB/21.png': None}, (), 'no_images', 'testB'),
  'duplicate_in_a_folder': ({'trainB/10.jpg': 12}, (), 'duplicate_name', 'trainB/10.png'),
  'truncated_png': ({'trainB/11.png': _png(4)[:30]}, (), 'corrupt_image', 'trainB/11.png'),
  'empty_file': ({'testA/20_1.png': b''}, (), 'empty_file', 'testA/20_1.png'),
}


def _broken(root: Path, case: str) -> tuple[Path, str, Path]:
  changes, removed, kind, rel = CASES[case]
  files = dict(GOOD)
  files.update({k: v for k, v in changes.items() if v is not None})
  for k, v in changes.items():
    if v is None:
      del files[k]
  _tree(root, files)
  for folder in removed:
    (root / folder).rmdir()
  return root, kind, (root / rel).resolve()


def test_the_good_tree_is_clean(tmp_path):
  report = checks.check_dataset(_tree(tmp_path / 'good', GOOD), dataset='qmul_shoev2', K=1)
  assert report.problems == []


@pytest.mark.parametrize('case', sorted(CASES))
def test_each_case_reports_its_problem(tmp_path, case):
  root, kind, path = _broken(tmp_path / 'root', case)
  report = checks.check_dataset(root, dataset='qmul_shoev2', K=1)
  found = [p for p in report.problems if p.kind == kind]
  assert [p.path for p in found][:1] == [str(path)], report.format()
  if kind == 'duplicate_name':  # which of the two copies is named depends on the order only
    assert {p.path for p in found} <= {str(path), str(path.with_suffix('.jpg'))}
  severity = checks.CASES[kind].severity
  if severity == checks.ERROR:
    with pytest.raises(checks.DataError) as err:
      qmul.load_qmul(root, cache_dir=tmp_path / 'cache')
    assert f'{path}: ' in str(err.value)
    assert not (tmp_path / 'cache').exists()  # refused before anything is written
    if kind == 'missing_folder':
      assert isinstance(err.value, FileNotFoundError)
  else:  # a photo without a sketch: left out of the table, with the warning
    with pytest.warns(UserWarning, match='photos_without_sketch'):
      table = qmul.load_qmul(root, cache_dir=tmp_path / 'cache')
    rel = path.relative_to(root.resolve()).as_posix()
    assert rel not in table.path and len(table) == len(GOOD)


def test_problem_details_name_the_file_and_the_fix(tmp_path):
  root, _, _ = _broken(tmp_path / 'a', 'sketch_without_photo')
  (problem,) = checks.check_dataset(root, dataset='qmul_shoev2').errors
  assert 'no photo 11.png' in problem.detail and 'trainA/11_1.png' in problem.detail
  # The photo in the other split's folder is named as the likely mistake.
  root = _tree(tmp_path / 'b', {**GOOD, 'testB/30.png': 20, 'trainA/30_1.png': 21})
  errors = checks.check_dataset(root, dataset='qmul_shoev2').errors
  assert {p.kind for p in errors} == {'sketch_without_photo', 'stem_in_both_splits'}
  hint = next(p for p in errors if p.kind == 'sketch_without_photo').detail
  assert 'in testB/ instead' in hint
  root, _, path = _broken(tmp_path / 'c', 'sketch_without_index')
  (problem,) = checks.check_dataset(root, dataset='qmul_shoev2').errors
  assert problem.path == str(path) and '<photo stem>_<k>.png' in problem.detail


def test_detect_dataset_and_cli(trees, tmp_path, capsys):
  assert checks.detect_dataset(trees['qmul_shoev2'][0]) == 'qmul_shoev2'
  assert checks.detect_dataset(trees['qmul_chairv2'][0]) == 'qmul_chairv2'
  # Neither word in the folder name: numeric photo stems are ShoeV2, others ChairV2.
  assert checks.detect_dataset(_tree(tmp_path / 'x', GOOD)) == 'qmul_shoev2'
  assert checks.detect_dataset(_tree(tmp_path / 'y', {'trainB/a_1.png': 1})) == 'qmul_chairv2'
  (tmp_path / 'z' / 'trainA').mkdir(parents=True)
  assert checks.detect_dataset(tmp_path / 'z').startswith('qmul_')
  report = checks.check_dataset(tmp_path / 'z')
  assert sorted(Path(p.path).name for p in report.errors if p.kind == 'missing_folder') == [
    'testA',
    'testB',
    'trainB',
  ]

  root = str(trees['qmul_chairv2'][0])
  assert check_data.main([f'--root={root}', '--K', '4', '--no_images']) == 0
  out = capsys.readouterr().out
  assert f'qmul_chairv2 at {Path(root).resolve()}: 0 errors, 0 warnings' in out
  broken, kind, path = _broken(tmp_path / 'broken', 'query_without_gallery')
  assert check_data.main([str(broken), '--dataset', 'qmul_chairv2']) == 1
  out = capsys.readouterr().out
  assert re.search(rf'^\[error\] {kind}: 1\b', out, flags=re.M) and f'  {path}: ' in out
  assert 'qmul_chairv2 at' in out
  with pytest.raises(SystemExit):
    check_data.main([root, '--root', str(broken)])


def test_cases_table_lists_the_qmul_cases():
  table = checks.cases_markdown()
  assert '`stem_in_both_splits` (error)' in table
  assert 'QMUL' in checks.CASES['photos_without_sketch'].decision
  assert set(checks.READERS) >= {'qmul_shoev2', 'qmul_chairv2'}
  assert set(datasets.DATASETS) >= {'qmul_shoev2', 'qmul_chairv2'}
