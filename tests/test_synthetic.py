"""Tests of the synthetic dataset generator on the 'tiny' preset."""

from __future__ import annotations

import dataclasses
import json
import re
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image

from sketchreid_jax.datasets import synthetic as S
from sketchreid_jax.datasets import synthetic_render as R
from sketchreid_jax.tools import generate_synthetic

# The attribute field names of the real market_attribute.mat, typed from the spec (not the code).
SPEC_FIELDS = (
  'age backpack bag handbag downblack downblue downbrown downgray downgreen downpink downpurple '
  'downwhite downyellow upblack upblue upgreen upgray uppurple upred upwhite upyellow clothes '
  'down up hair hat gender'
).split()
UP = [f for f in SPEC_FIELDS if f.startswith('up') and f != 'up']
DOWN = [f for f in SPEC_FIELDS if f.startswith('down') and f != 'down']

MARKET_PHOTO = re.compile(r'^(\d{4})_c([1-6])s1_(\d{6})_00\.jpg$')
MARKET_SKETCH = re.compile(r'^(\d{4})\.jpg$')
PKU_PHOTO = re.compile(r'^([1-9]\d*)_([12])_([1-9]\d*)\.jpg$')
PKU_SKETCH = re.compile(r'^([1-9]\d*)\.jpg$')
PKU_STYLE_FILE = re.compile(r'^([A-E])_(\d+)\.txt$')
TINY = S.PRESETS['tiny']


def _files(root: Path) -> dict[str, bytes]:
  return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob('*') if p.is_file()}


@pytest.fixture(scope='module')
def market(tmp_path_factory) -> Path:
  root = tmp_path_factory.mktemp('synth') / 'market_sketch'
  summary = S.generate_market_sketch(root, seed=0, **TINY['market'])
  assert summary['generated']
  return root


@pytest.fixture(scope='module')
def pku(tmp_path_factory) -> Path:
  root = tmp_path_factory.mktemp('synth') / 'pku_sketch'
  S.generate_pku_sketch(root, seed=0, **TINY['pku'])
  return root


# ---------------------------------------------------------------- Market-Sketch-1K layout


def _market_index(root: Path):
  photos = {split: defaultdict(lambda: defaultdict(int)) for split in ('train', 'query')}
  frames = []
  for split in ('train', 'query'):
    for p in (root / 'photo' / split).iterdir():
      m = MARKET_PHOTO.match(p.name)
      assert m, f'bad photo name {p}'
      photos[split][int(m[1])][int(m[2])] += 1
      frames.append(int(m[3]))
  sketches = {split: defaultdict(set) for split in ('train', 'query')}
  for style_dir in (root / 'sketch').iterdir():
    for split in ('train', 'query'):
      for p in (style_dir / split).iterdir():
        m = MARKET_SKETCH.match(p.name)
        assert m, f'bad sketch name {p}'
        sketches[split][int(m[1])].add(style_dir.name)
  return photos, sketches, frames


def test_market_folder_layout(market: Path):
  top = {p.name for p in market.iterdir()}
  assert top == {'photo', 'sketch', 'market_attribute.mat', S.MARKER_NAME, S.MANIFEST_NAME}
  assert {p.name for p in (market / 'photo').iterdir()} == {'train', 'query'}
  assert {p.name for p in (market / 'sketch').iterdir()} == set('ABCDEF')
  for style in 'ABCDEF':
    assert {p.name for p in (market / 'sketch' / style).iterdir()} == {'train', 'query'}
  # The manifest lists exactly the files written (besides itself and the marker).
  listed = set((market / S.MANIFEST_NAME).read_text().split())
  assert listed == set(_files(market)) - {S.MARKER_NAME, S.MANIFEST_NAME}


def test_market_ids_cameras_and_frames(market: Path):
  photos, sketches, frames = _market_index(market)
  train, test = set(photos['train']), set(photos['query'])
  assert len(train) == TINY['market']['num_train_ids']
  assert len(test) == TINY['market']['num_test_ids']
  assert not train & test
  assert min(train | test) >= 2 and max(train | test) <= 9999
  assert len(frames) == len(set(frames)), 'frame numbers must be unique per file'
  for pid, cams in photos['train'].items():
    assert len(cams) >= 2 and all(1 <= n <= 3 for n in cams.values()), (pid, cams)
  for pid, cams in photos['query'].items():
    assert len(cams) >= 2 and all(n == 1 for n in cams.values()), (pid, cams)
  # Sketch identities = photo identities, split for split.
  assert set(sketches['train']) == train and set(sketches['query']) == test


def test_market_sketch_coverage(market: Path):
  _, sketches, _ = _market_index(market)
  for split in ('train', 'query'):
    for pid, styles in sketches[split].items():
      assert 'A' in styles, f'style A must draw every identity ({pid})'
      assert len(styles) >= 2, f'identity {pid} has fewer than 2 sketches'
  # With draw_prob 0.8 the other styles skip some identities (style A never does).
  counts = Counter(s for split in sketches.values() for st in split.values() for s in st)
  n_ids = sum(len(split) for split in sketches.values())
  assert counts['A'] == n_ids and min(counts[s] for s in 'BCDEF') < n_ids


def test_market_sketch_styles_rule():
  for pid in range(2, 60):
    styles = S.market_sketch_styles(pid, 0, draw_prob=0.0)
    assert 'A' in styles and len(styles) == 2  # top-up to the minimum only
    assert S.market_sketch_styles(pid, 0, draw_prob=1.0) == list('ABCDEF')
    sub = S.market_sketch_styles(
      pid, 0, styles=('B', 'C', 'D'), always_draw_style='C', draw_prob=0.5
    )
    assert 'C' in sub and set(sub) <= {'B', 'C', 'D'} and len(sub) >= 2


def test_market_image_sizes_and_modes(market: Path):
  for p in list((market / 'photo').rglob('*.jpg'))[:20]:
    with Image.open(p) as im:
      assert im.format == 'JPEG' and im.mode == 'RGB' and im.size == (64, 128)
  for p in list((market / 'sketch').rglob('*.jpg'))[:20]:
    with Image.open(p) as im:
      assert im.format == 'JPEG' and im.mode == 'L' and im.size == (128, 256)


def test_sketch_is_a_grey_line_drawing(market: Path):
  for p in sorted((market / 'sketch' / 'A' / 'train').iterdir())[:5]:
    with Image.open(p) as im:
      assert im.getbands() == ('L',)  # single channel: greyscale by construction
      a = np.asarray(im)
    assert (a > 240).mean() > 0.5, 'background should be mostly white paper'
    assert (a < 80).mean() > 0.005, 'there must be dark strokes'
  # Rendered in memory too: one channel, whatever the style.
  ident = S.sample_identity(5, 0, S.sample_archetypes(0))
  for style in 'ABCDEF':
    img = R.render_sketch(ident, R.SKETCH_STYLES[style], np.random.default_rng(0))
    assert img.mode == 'L' and img.size == (128, 256)


def test_market_attribute_mat(market: Path):
  assert S.MARKET_ATTRIBUTE_NAMES == tuple(SPEC_FIELDS) and len(SPEC_FIELDS) == 27
  mat = scipy.io.loadmat(market / 'market_attribute.mat', squeeze_me=True, struct_as_record=False)
  ma = mat['market_attribute']
  photos, _, _ = _market_index(market)
  for split, folder in (('train', 'train'), ('test', 'query')):
    s = getattr(ma, split)
    assert list(s._fieldnames) == SPEC_FIELDS + ['image_index']
    ids = [str(x) for x in s.image_index]
    assert ids == [f'{p:04d}' for p in sorted(photos[folder])]
    n = len(ids)
    for f in SPEC_FIELDS:
      v = np.asarray(getattr(s, f))
      assert v.shape == (n,)
      lo, hi = (1, 4) if f == 'age' else (1, 2)
      assert v.min() >= lo and v.max() <= hi, f
    up = np.stack([np.asarray(getattr(s, f)) for f in UP])
    down = np.stack([np.asarray(getattr(s, f)) for f in DOWN])
    assert ((up == 2).sum(0) == 1).all() and ((down == 2).sum(0) == 1).all()
  # The raw (unsqueezed) struct keeps the real file's (1, N) uint8 fields.
  raw = scipy.io.loadmat(market / 'market_attribute.mat')['market_attribute'][0, 0]
  assert raw['train'][0, 0]['age'].shape == (1, TINY['market']['num_train_ids'])
  assert raw['train'][0, 0]['age'].dtype == np.uint8


# ---------------------------------------------------------------- PKU-Sketch layout


def test_pku_layout(pku: Path):
  n = TINY['pku']['num_ids']
  assert {p.name for p in pku.iterdir()} == {
    'sketch',
    'photo',
    'styleAnnotation',
    S.MARKER_NAME,
    S.MANIFEST_NAME,
  }
  sketch_ids = [int(PKU_SKETCH.match(p.name)[1]) for p in (pku / 'sketch').iterdir()]
  assert sorted(sketch_ids) == list(range(1, n + 1))
  cams = defaultdict(list)
  for p in (pku / 'photo').iterdir():
    m = PKU_PHOTO.match(p.name)
    assert m, p.name
    cams[int(m[1])].append(int(m[2]))
    with Image.open(p) as im:
      assert im.mode == 'RGB' and im.size == (64, 128)
  assert {pid: sorted(c) for pid, c in cams.items()} == {i: [1, 2] for i in range(1, n + 1)}
  with Image.open(pku / 'sketch' / '1.jpg') as im:
    assert im.mode == 'L' and im.size == (128, 256)


def test_pku_style_files_partition_ids(pku: Path):
  n = TINY['pku']['num_ids']
  seen: dict[str, list[int]] = {}
  for p in (pku / 'styleAnnotation').iterdir():
    m = PKU_STYLE_FILE.match(p.name)
    assert m, p.name
    ids = [int(line) for line in p.read_text().split()]
    assert len(ids) == int(m[2]), f'{p.name}: count in name must equal lines'
    seen[m[1]] = ids
  assert sorted(seen) == list('ABCDE')
  all_ids = [i for ids in seen.values() for i in ids]
  assert sorted(all_ids) == list(range(1, n + 1))  # a partition: no repeats, no gaps
  # Largest remainder by hand for N = 20: quotas 4.6 2.0 7.9 3.3 2.2 -> floors 4 2 7 3 2
  # (18), the two largest remainders (C .9, A .6) get +1.
  assert {k: len(v) for k, v in seen.items()} == {'A': 5, 'B': 2, 'C': 8, 'D': 3, 'E': 2}


def test_pku_style_counts_scaling():
  assert S.pku_style_counts(200) == {'A': 46, 'B': 20, 'C': 79, 'D': 33, 'E': 22}
  # N = 7: quotas 1.61 .70 2.765 1.155 .77 -> floors 1 0 2 1 0; +1 for E, C, B.
  assert S.pku_style_counts(7) == {'A': 1, 'B': 1, 'C': 3, 'D': 1, 'E': 1}
  for n in (1, 13, 50, 333):
    assert sum(S.pku_style_counts(n).values()) == n


# ---------------------------------------------------------------- determinism and stability


def test_same_seed_identical_bytes_other_seed_differs(market: Path, pku: Path, tmp_path: Path):
  again = tmp_path / 'again'
  S.generate_market_sketch(again, seed=0, **TINY['market'])
  assert _files(again) == _files(market)

  other = tmp_path / 'other'
  S.generate_market_sketch(other, seed=1, **TINY['market'])
  a, b = _files(market), _files(other)
  assert a['market_attribute.mat'] != b['market_attribute.mat']
  common = [k for k in set(a) & set(b) if k.endswith('.jpg')]
  assert all(a[k] != b[k] for k in common)

  pku_again, pku_other = tmp_path / 'pku_again', tmp_path / 'pku_other'
  S.generate_pku_sketch(pku_again, seed=0, **TINY['pku'])
  S.generate_pku_sketch(pku_other, seed=3, **TINY['pku'])
  assert _files(pku_again) == _files(pku)
  c = _files(pku_other)
  p0 = _files(pku)
  sketches = [k for k in p0 if k.startswith('sketch/')]
  assert all(p0[k] != c[k] for k in sketches)


def test_ids_and_identities_stable_when_sizes_change():
  train_a, test_a = S.market_ids(0, 12, 8)
  train_b, test_b = S.market_ids(0, 30, 8)
  assert train_b[:12] == train_a and test_b == test_a
  assert train_a == sorted(train_a) and not set(train_a) & set(test_a)
  arch = S.sample_archetypes(0)
  assert S.sample_identity(7, 0, arch) == S.sample_identity(7, 0, arch)
  assert S.sample_identity(7, 0, arch) != S.sample_identity(7, 1, S.sample_archetypes(1))


# ---------------------------------------------------------------- folder safety


def test_rerun_same_params_is_noop(market: Path):
  before = {p: p.stat().st_mtime_ns for p in market.rglob('*')}
  summary = S.generate_market_sketch(market, seed=0, **TINY['market'])
  assert summary['generated'] is False
  assert summary['counts']['photo/train'] == len(list((market / 'photo/train').iterdir()))
  assert {p: p.stat().st_mtime_ns for p in market.rglob('*')} == before


def test_refuses_foreign_folder_and_overwrite_keeps_foreign_files(tmp_path: Path):
  root = tmp_path / 'mine'
  root.mkdir()
  (root / 'notes.txt').write_text('keep me')
  with pytest.raises(FileExistsError, match='overwrite'):
    S.generate_pku_sketch(root, num_ids=3)
  assert [p.name for p in root.iterdir()] == ['notes.txt']
  S.generate_pku_sketch(root, num_ids=3, overwrite=True)
  assert (root / 'notes.txt').read_text() == 'keep me'
  assert len(list((root / 'sketch').iterdir())) == 3


def test_new_params_replace_only_our_own_files(tmp_path: Path):
  root = tmp_path / 'pku'
  S.generate_pku_sketch(root, num_ids=5)
  (root / 'photo' / 'user_added.jpg').write_bytes(b'not ours')
  summary = S.generate_pku_sketch(root, num_ids=3)
  assert summary['generated']
  assert sorted(p.name for p in (root / 'sketch').iterdir()) == ['1.jpg', '2.jpg', '3.jpg']
  photos = sorted(p.name for p in (root / 'photo').iterdir())
  assert 'user_added.jpg' in photos and len(photos) == 3 * 2 + 1
  assert json.loads((root / S.MARKER_NAME).read_text())['params']['num_ids'] == 3


def test_missing_or_interrupted_output_is_regenerated(tmp_path: Path):
  root = tmp_path / 'pku'
  S.generate_pku_sketch(root, num_ids=3)
  original = _files(root)
  (root / 'sketch' / '2.jpg').unlink()
  assert S.generate_pku_sketch(root, num_ids=3)['generated']
  assert _files(root) == original
  # An interrupted run (marker still "in_progress") is ours: it is redone, not refused.
  marker = json.loads((root / S.MARKER_NAME).read_text())
  (root / S.MARKER_NAME).write_text(json.dumps(dict(marker, status='in_progress')))
  assert S.generate_pku_sketch(root, num_ids=3)['generated']
  assert _files(root) == original


def test_bad_arguments_explain_the_fix(tmp_path: Path):
  with pytest.raises(ValueError, match='always_draw_style'):
    S.generate_market_sketch(tmp_path / 'x', styles=('B', 'C'), num_train_ids=1, num_test_ids=1)
  with pytest.raises(ValueError, match='num_train_ids'):
    S.generate_market_sketch(tmp_path / 'x', num_train_ids=0)
  with pytest.raises(ValueError, match='style_counts'):
    S.generate_pku_sketch(tmp_path / 'y', num_ids=4, style_counts={'A': 3})
  ident = S.sample_identity(3, 0, S.sample_archetypes(0))
  two_ups = dict(ident.attributes, upblack=2, upred=2)
  with pytest.raises(ValueError, match='exactly one up-colour'):
    dataclasses.replace(ident, attributes=two_ups)
  assert not (tmp_path / 'x').exists() and not (tmp_path / 'y').exists()


# ---------------------------------------------------------------- the people


def test_many_people_share_all_attributes():
  arch = S.sample_archetypes(0)
  vectors = Counter(tuple(S.sample_identity(p, 0, arch).attributes.values()) for p in range(2, 202))
  shared = sum(v for v in vectors.values() if v > 1)
  assert shared / 200 > 0.5, 'most identities must be distinguishable only by details'


def _mean_front_photo(ident: R.Identity, seed: int, n: int) -> np.ndarray:
  # A neutral camera on a plain background: what differs is the person (and the pose).
  params = R.PhotoParams(
    clutter=(0, 0),
    shift=0.0,
    noise_std=0.0,
    blur_radius=(0.0, 0.0),
    person_height=(0.88, 0.88),
    baseline=(0.97, 0.97),
    illumination=(1.0, 1.0),
  )
  cam = R.Camera(gain=(1.0, 1.0, 1.0), brightness=1.0, background=(128.0, 128.0, 128.0))
  rng = np.random.default_rng(seed)
  return np.mean(
    [
      np.asarray(R.render_photo(ident, cam, rng, view='front', params=params), dtype=np.float64)
      for _ in range(n)
    ],
    axis=0,
  )


def test_identical_attributes_still_look_different():
  arch = S.sample_archetypes(0)
  for a, b in ((2, 3), (4, 5), (6, 7), (8, 9)):
    ida = S.sample_identity(a, 0, arch)
    idb = dataclasses.replace(S.sample_identity(b, 0, arch), attributes=ida.attributes)
    a1, a2 = _mean_front_photo(ida, 1, 8), _mean_front_photo(ida, 2, 8)
    b1 = _mean_front_photo(idb, 3, 8)
    between, within = np.abs(a1 - b1).mean(), np.abs(a1 - a2).mean()
    # Same attributes, different details: the gap must clearly exceed pose-only variation.
    assert between > 2.0 * within and between > 3.0, (a, b, between, within)


def test_clip_convex_against_hand_values():
  sq = np.array([[0, 0], [1, 0], [1, 1], [0, 1]], dtype=float)

  def area(p):
    x, y = p[:, 0], p[:, 1]
    return 0.5 * abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))

  assert area(R.clip_convex(sq + 0.5, sq)) == pytest.approx(0.25)
  assert area(R.clip_convex(sq + 0.5, sq[::-1])) == pytest.approx(0.25)  # either orientation
  tri = np.array([[-1.0, 0.5], [2.0, 0.5], [0.5, 2.0]])  # cuts the square's top half
  # Inside the square the triangle covers all of y in [0.5, 1]: a 1 x 0.5 rectangle.
  assert area(R.clip_convex(tri, sq)) == pytest.approx(0.5)
  assert len(R.clip_convex(sq + 5.0, sq)) == 0


# ---------------------------------------------------------------- CLI


def test_cli_help_and_run(tmp_path: Path, capsys):
  with pytest.raises(SystemExit) as exc:
    generate_synthetic.main(['--help'])
  assert exc.value.code == 0
  text = capsys.readouterr().out
  assert 'market_sketch' in text and '--preset' in text and '--overwrite' in text
  rc = generate_synthetic.main(
    ['--out', str(tmp_path), '--preset', 'tiny', '--layout', 'pku', '--num_pku_ids', '4', '--quiet']
  )
  assert rc == 0
  out = capsys.readouterr().out
  assert 'pku_sketch' in out and 'total' in out
  assert len(list((tmp_path / 'pku_sketch' / 'sketch').iterdir())) == 4
  (tmp_path / 'foreign').mkdir()
  (tmp_path / 'foreign' / 'market_sketch').mkdir()
  (tmp_path / 'foreign' / 'market_sketch' / 'x').write_text('')
  rc = generate_synthetic.main(
    ['--out', str(tmp_path / 'foreign'), '--preset', 'tiny', '--layout', 'market', '--quiet']
  )
  assert rc == 2 and '--overwrite' in capsys.readouterr().err
