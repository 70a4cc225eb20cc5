"""The synthetic QMUL-ShoeV2/ChairV2 generator: layout, names, determinism, sketchers' omissions."""

import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sketchreid_jax.datasets import synthetic
from sketchreid_jax.datasets import synthetic_objects as O
from sketchreid_jax.datasets.synthetic import _stream
from sketchreid_jax.tools import generate_synthetic

TINY = synthetic.PRESETS['tiny']
GENERATORS = {'qmul_shoev2': O.generate_qmul_shoev2, 'qmul_chairv2': O.generate_qmul_chairv2}
CATEGORY = {'qmul_shoev2': 'shoe', 'qmul_chairv2': 'chair'}


def _files(root: Path) -> dict[str, bytes]:
  return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob('*') if p.is_file()}


@pytest.fixture(scope='module')
def tiny(tmp_path_factory) -> dict[str, Path]:
  base = tmp_path_factory.mktemp('objects')
  for name, generate in GENERATORS.items():
    assert generate(base / name, seed=0, **TINY[name])['generated']
  return {name: base / name for name in GENERATORS}


@pytest.mark.parametrize('name', sorted(GENERATORS))
def test_layout_names_and_images(tiny, name):
  root = tiny[name]
  assert {p.name for p in root.iterdir()} == {
    'trainA',
    'trainB',
    'testA',
    'testB',
    synthetic.MARKER_NAME,
    synthetic.MANIFEST_NAME,
  }
  stems = {}
  for split in ('train', 'test'):
    photos = {p.stem for p in (root / f'{split}B').iterdir()}
    assert len(photos) == {'train': 12, 'test': 6}[split]
    by_stem: dict[str, list[int]] = {s: [] for s in photos}
    for p in (root / f'{split}A').iterdir():
      stem, k = p.stem.rsplit('_', 1)
      by_stem[stem].append(int(k))  # KeyError: a sketch without the photo of its split
    assert all(
      len(ks) == len(set(ks)) == 3 and set(ks) <= {1, 2, 3, 4, 5} for ks in by_stem.values()
    )
    stems[split] = photos
  assert not stems['train'] & stems['test']
  for stem in stems['train'] | stems['test']:
    if name == 'qmul_shoev2':
      assert re.fullmatch(r'[1-9]\d{9}', stem), stem
    else:
      assert '_' in stem and not stem.replace('_', '').isdigit(), stem
  for p in list(root.glob('*/*.png')):
    with Image.open(p) as img:
      assert (img.format, img.mode, img.size) == ('PNG', 'RGB', (64, 64)), p
  sketch = np.asarray(Image.open(next((root / 'trainA').iterdir())), np.int32)
  assert (sketch[..., 0] == sketch[..., 2]).all()  # grey in three channels
  assert (sketch > 200).mean() > 0.6 and (sketch < 100).any()  # dark lines on white
  marker = json.loads((root / synthetic.MARKER_NAME).read_text())
  assert marker['layout'] == name and marker['counts'] == {
    'trainA': 36,
    'trainB': 12,
    'testA': 18,
    'testB': 6,
  }
  assert sorted((root / synthetic.MANIFEST_NAME).read_text().split()) == sorted(
    r for r in _files(root) if r.endswith('.png')
  )


def test_same_seed_identical_bytes_other_seed_differs(tiny, tmp_path):
  for name, generate in GENERATORS.items():
    generate(tmp_path / 'again' / name, seed=0, **TINY[name])
    assert _files(tmp_path / 'again' / name) == _files(tiny[name])
    generate(tmp_path / 'other' / name, seed=1, **TINY[name])
    other, first = _files(tmp_path / 'other' / name), _files(tiny[name])
    assert set(other) != set(first)  # other names
    photos = [{v for k, v in f.items() if k.startswith('trainB/')} for f in (other, first)]
    assert not photos[0] & photos[1]  # other images


def test_rerun_is_a_noop_and_new_sizes_replace(tmp_path):
  root = tmp_path / 'chairs'
  args = dict(TINY['qmul_chairv2'], num_train_photos=3, num_test_photos=2)
  assert O.generate_qmul_chairv2(root, **args)['generated']
  before = _files(root)
  assert not O.generate_qmul_chairv2(root, **args)['generated']
  summary = O.generate_qmul_chairv2(root, **dict(args, num_test_photos=1))
  assert summary['generated'] and summary['counts']['testB'] == 1
  after = _files(root)
  assert len([r for r in after if r.startswith('testB/')]) == 1  # the earlier output replaced
  # A split's size changes nothing of the other split: same names, same bytes.
  train = lambda files: {k: v for k, v in files.items() if k.startswith('train')}  # noqa: E731
  assert train(after) == train(before)
  assert O.qmul_items('chair', 0, 3, 2)[0] == O.qmul_items('chair', 0, 3, 40)[0]


def test_sketch_counts_spread_the_total():
  for n, total in ((2000, 6648), (400, 1275), (10, 33)):
    plan = O.sketch_plan('shoe', 0, range(n), num_sketches=total)
    counts = np.array([len(ks) for ks in plan.values()])
    base, extra = divmod(total, n)  # ShoeV2: 3 each and 648 photos with 4; ChairV2: 75 with 4
    assert counts.sum() == total and set(counts.tolist()) <= {base, base + 1}
    assert (counts == base + 1).sum() == extra
    assert all(len(set(ks)) == len(ks) and 1 <= min(ks) and max(ks) <= 5 for ks in plan.values())
  with pytest.raises(ValueError, match='1..5'):
    O.sketch_plan('chair', 0, range(4), num_sketches=24)
  with pytest.raises(ValueError, match='num_sketches'):
    O.generate_qmul_shoev2(
      '/nonexistent/never', num_train_photos=2, num_test_photos=1, num_sketches=2
    )


def test_presets_write_both_folders_at_the_stated_sizes():
  for preset in ('tiny', 'demo', 'full'):
    assert {'qmul_shoev2', 'qmul_chairv2'} <= set(synthetic.PRESETS[preset])
  full = synthetic.PRESETS['full']
  shoes, chairs = full['qmul_shoev2'], full['qmul_chairv2']
  assert (shoes['num_train_photos'], shoes['num_test_photos'], shoes['num_sketches']) == (
    1800,
    200,
    6648,
  )
  assert (chairs['num_train_photos'], chairs['num_test_photos'], chairs['num_sketches']) == (
    300,
    100,
    1275,
  )
  assert shoes['size'] == chairs['size'] == (256, 256)


def test_cli_writes_the_qmul_folders(tmp_path, capsys):
  assert (
    generate_synthetic.main(
      ['--out', str(tmp_path), '--preset', 'tiny', '--layout', 'qmul', '--quiet']
    )
    == 0
  )
  out = capsys.readouterr().out
  assert 'qmul_shoev2' in out and 'qmul_chairv2' in out
  for name in GENERATORS:
    assert len(list((tmp_path / name / 'testA').iterdir())) == 18
  assert not (tmp_path / 'market_sketch').exists()
  with pytest.raises(SystemExit):
    generate_synthetic.main(['--help'])
  assert 'qmul_chairv2' in capsys.readouterr().out


# --------------------------------------------------------------------------- sketchers


@pytest.mark.parametrize('category', ['shoe', 'chair'])
def test_each_sketcher_omits_at_its_own_rate(category):
  n = 600
  details = O.DETAILS[category]
  rates = []
  for k, sketcher in enumerate(O.SKETCHERS, start=1):
    omitted = [O.sketch_omissions(category, 0, item, k) for item in range(n)]
    for detail in details:
      hits = sum(detail in o for o in omitted)
      p = sketcher.omit_prob
      assert abs(hits - n * p) <= 4.5 * np.sqrt(n * p * (1 - p)) + 1, (k, detail, hits)
    rates.append(np.mean([len(o) for o in omitted]) / len(details))
  assert np.all(np.diff(rates) > 0.05)  # the sketchers really differ, careful to sloppy


def _ink(img: Image.Image) -> np.ndarray:
  return 255 - np.asarray(img.convert('L'), np.int64)


@pytest.mark.parametrize('category', ['shoe', 'chair'])
def test_an_omission_only_removes_ink_and_the_rate_shows_in_the_pixels(category):
  """Render each sketch as the generator does and again with nothing left out (same stream): the
  two are identical unless a detail the item has was left out, and then the drawn one has less ink
  everywhere; how often that happens per sketcher follows its omit_prob."""
  tag = O.CATEGORIES[category]
  sample = O.sample_shoe if category == 'shoe' else O.sample_chair
  to_parts = O.shoe_parts if category == 'shoe' else O.chair_parts
  n = 40
  for k, sketcher in enumerate(O.SKETCHERS, start=1):
    seen, expected = 0, 0.0
    for item in range(n):
      parts = to_parts(sample(_stream(0, tag, O._SPEC, item)))  # the generator's design stream
      has = {p.detail for p in parts} - {''}

      def draw(leave_out):
        rng = _stream(0, tag, O._SKETCH, item, k)  # the generator's sketch stream
        decided = O.draw_omissions(sketcher, O.DETAILS[category], rng)
        chosen = decided if leave_out is None else leave_out
        return decided, _ink(
          O.render_object_sketch(parts, sketcher, rng, size=(96, 96), omitted=chosen)
        )

      decided, drawn = draw(None)
      _, full = draw(frozenset())
      assert decided == O.sketch_omissions(category, 0, item, k)
      assert (drawn <= full).all(), (k, item, decided)
      if decided & has:
        seen += int(drawn.sum() < full.sum())
      else:
        np.testing.assert_array_equal(drawn, full)
      expected += 1.0 - (1.0 - sketcher.omit_prob) ** len(has)
    sd = np.sqrt(max(expected * (1 - expected / n), 1.0))
    assert abs(seen - expected) <= 4.5 * sd + 1, (k, seen, expected)


def test_the_written_sketches_are_the_generator_drawings(tiny):
  """Decode a few written files and compare with a fresh render from the documented streams."""
  root = tiny['qmul_chairv2']
  train, _ = O.qmul_items('chair', 0, 12, 6)
  for item, stem in train[:3]:
    parts = O.chair_parts(O.sample_chair(_stream(0, O.CATEGORIES['chair'], O._SPEC, item)))
    for path in sorted((root / 'trainA').glob(f'{stem}_*.png')):
      k = int(path.stem.rsplit('_', 1)[1])
      rng = _stream(0, O.CATEGORIES['chair'], O._SKETCH, item, k)
      omitted = O.draw_omissions(O.SKETCHERS[k - 1], O.CHAIR_DETAILS, rng)
      img = O.render_object_sketch(parts, O.SKETCHERS[k - 1], rng, size=(64, 64), omitted=omitted)
      buf = io.BytesIO()
      img.save(buf, format='PNG')
      assert buf.getvalue() == path.read_bytes(), path


def test_items_share_the_shape_and_differ_in_parts():
  """Fine-grained: every item has the category's form parts; designs vary part by part."""
  for category, sample, to_parts, fields in (
    ('shoe', O.sample_shoe, O.shoe_parts, ('silhouette', 'heel', 'toe', 'eyelets', 'stripes')),
    ('chair', O.sample_chair, O.chair_parts, ('legs', 'back', 'arms', 'seat_shape', 'cushion')),
  ):
    specs = [sample(_stream(0, O.CATEGORIES[category], O._SPEC, i)) for i in range(150)]
    for field in fields:
      assert len({getattr(s, field) for s in specs}) >= 2, (category, field)
    assert len({repr(s) for s in specs}) == len(specs)
    for s in specs[:30]:
      parts = to_parts(s)
      form = [p for p in parts if not p.detail]
      assert len(form) >= 2 and {p.detail for p in parts} <= {''} | set(O.DETAILS[category])
      pts = np.concatenate([p.points for p in parts])
      assert pts.min() >= -1e-9 and pts.max() <= 1 + 1e-9  # normalised into the unit square
      assert np.isclose(max(pts.max(axis=0) - pts.min(axis=0)), 1.0)
