"""Tests for the dataset checks (datasets/checks.py), the readers that run them and check_data.

Broken copies of the tiny synthetic datasets: every case of issue 10 item 1 is planted in one copy,
and the report must name exactly the planted paths; the load (what training runs before its
first step) must refuse with exactly the errors check_data reports.
"""

import io
import re
import shutil
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sketchreid_jax import datasets, input_pipeline
from sketchreid_jax.config_base import base_config
from sketchreid_jax.datasets import checks
from sketchreid_jax.datasets.table import make_table
from sketchreid_jax.tools import check_data

# 16-bit and 8-bit test patterns; small so every decode is instant.
H, W = 8, 4


def _png(array: np.ndarray, mode: str | None = None) -> bytes:
  buf = io.BytesIO()
  (Image.fromarray(array, mode) if mode else Image.fromarray(array)).save(buf, format='PNG')
  return buf.getvalue()


def _png16_rgb(array: np.ndarray) -> bytes:
  """A 16-bit RGB PNG written by hand (PIL cannot write one), from the PNG spec."""
  import struct
  import zlib

  h, w, _ = array.shape
  raw = b''.join(b'\0' + array[y].astype('>u2').tobytes() for y in range(h))

  def chunk(tag: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(tag + data) & 0xFFFFFFFF
    return struct.pack('>I', len(data)) + tag + data + struct.pack('>I', crc)

  header = struct.pack('>IIBBBBB', w, h, 16, 2, 0, 0, 0)
  return (
    b'\x89PNG\r\n\x1a\n'
    + chunk(b'IHDR', header)
    + chunk(b'IDAT', zlib.compress(raw))
    + chunk(b'IEND', b'')
  )


def _copy(source: str, tmp_path: Path) -> Path:
  root = tmp_path / Path(source).name
  shutil.copytree(source, root)
  return root


def _rel(paths) -> list[str]:
  return sorted(str(p) for p in paths)


# --------------------------------------------------------------------------- Market-Sketch-1K


@pytest.fixture
def broken_market(tiny_market, tmp_path):
  """A copy of the tiny Market set with one of each problem; returns (root, expected paths)."""
  root = _copy(tiny_market, tmp_path)
  photos = sorted((root / 'photo' / 'train').glob('*.jpg'))
  gallery = sorted((root / 'photo' / 'query').glob('*.jpg'))
  good = photos[2].read_bytes()
  sketch = sorted((root / 'sketch' / 'A' / 'train').glob('*.jpg'))[0].read_bytes()
  rng = np.random.default_rng(0)

  data = photos[0].read_bytes()
  photos[0].write_bytes(data[: len(data) // 2])  # truncated JPEG
  gallery[0].write_bytes(b'')  # zero-byte file
  text = sorted((root / 'sketch' / 'B' / 'train').glob('*.jpg'))[0]
  text.write_text('not a JPEG, only text\n')  # a non-image named .jpg
  tiff = sorted((root / 'sketch' / 'C' / 'query').glob('*.jpg'))[0]
  buf = io.BytesIO()
  Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8)).save(buf, format='TIFF')
  tiff.write_bytes(buf.getvalue())  # an image TF cannot decode, named .jpg
  (root / 'photo/train/abcd_c1s1_000001_00.jpg').write_bytes(good)  # no identity
  (root / 'sketch/A/train/x004.jpg').write_bytes(sketch)  # no identity
  (root / 'photo/query/0006.jpg').write_bytes(good)  # identity but not a photo name
  for name in ('0099_c1s1_009910_00.jpg', '0099_c2s1_009920_00.jpg'):  # photos, no sketch
    (root / 'photo/train' / name).write_bytes(good)
  (root / 'sketch/A/query/0098.jpg').write_bytes(sketch)  # a query absent from the gallery
  for file in (root / 'sketch' / 'E' / 'query').iterdir():  # an empty style folder
    file.unlink()
  (root / 'sketch/G').mkdir()  # not a style letter
  shutil.copy(photos[1], root / 'photo' / 'query' / photos[1].name)  # duplicate across folders
  pid = photos[3].name[:4]
  rgba = rng.integers(0, 256, (H, W, 4), dtype=np.uint8)
  grey16 = rng.integers(0, 65536, (H, W), dtype=np.uint16)
  (root / f'photo/train/{pid}_c6s1_000001_00.png').write_bytes(_png(rgba, 'RGBA'))
  (root / f'photo/train/{pid}_c6s1_000002_00.png').write_bytes(_png(grey16))

  expected = {
    'corrupt_image': [photos[0]],
    'empty_file': [gallery[0]],
    'not_an_image': [text],
    'unsupported_format': [tiff],
    'bad_name': [
      root / 'photo/train/abcd_c1s1_000001_00.jpg',
      root / 'photo/query/0006.jpg',
      root / 'sketch/A/train/x004.jpg',
    ],
    'photos_without_sketch': [
      root / 'photo/train/0099_c1s1_009910_00.jpg',
      root / 'photo/train/0099_c2s1_009920_00.jpg',
    ],
    'query_without_gallery': [root / 'photo/query'],
    'empty_style': [root / 'sketch/E/query'],
    'unknown_folder': [root / 'sketch/G'],
    'duplicate_name': [root / 'photo/train' / photos[1].name],
  }
  pngs = {
    str(root / f'photo/train/{pid}_c6s1_000001_00.png'): 'PNG RGBA: alpha dropped (not composited)',
    str(root / f'photo/train/{pid}_c6s1_000002_00.png'): (
      '16-bit greyscale PNG: high byte (v // 256) of each channel'
    ),
  }
  return root, expected, pngs


def test_market_report_lists_every_problem_at_once(broken_market):
  root, expected, pngs = broken_market
  report = checks.check_dataset(str(root))
  assert report.dataset == 'market_sketch_1k' and report.root == str(root.resolve())
  found = {k: _rel(p.path for p in v) for k, v in report.by_kind().items()}
  converted = found.pop('converted')
  assert found == {k: _rel(v) for k, v in expected.items()}
  assert report.pids('photos_without_sketch') == [99]
  assert report.pids('query_without_gallery') == [98]
  # Notes: the two PNGs with their conversion, and the sketches (greyscale JPEGs, by the generator).
  details = {p.path: p.detail for p in report.problems if p.kind == 'converted'}
  assert {k: details[k] for k in pngs} == pngs
  sketches = {str(p) for p in root.glob('sketch/*/*/*.jpg')}
  assert set(converted) - set(pngs) <= sketches
  broken = {str(expected[k][0]) for k in ('not_an_image', 'unsupported_format')}
  assert len(converted) == len(pngs) + len(sketches - broken) - 1  # x004.jpg has a bad name
  n_errors = sum(len(v) for k, v in expected.items() if k != 'photos_without_sketch')
  assert len(report.errors) == n_errors and len(report.warnings) == 2


def test_market_load_refuses_with_the_same_errors(broken_market, tmp_path):
  root, _, _ = broken_market
  report = checks.check_dataset(str(root))
  config = base_config()
  config.data.root, config.data.cache_dir = str(root), str(tmp_path / 'cache')
  with pytest.raises(checks.DataError) as err:
    datasets.load(config.data)  # what training calls before its first step
  message = str(err.value)
  listed = re.findall(r'^  (/\S+): ', message, flags=re.M)
  assert sorted(listed) == _rel(p.path for p in report.errors)
  for p in report.errors:
    assert f'{p.path}: {p.detail}' in message
  assert f'{len(report.errors)} problems to fix' in message
  assert not (tmp_path / 'cache').exists()  # refused before anything is written


def test_check_data_cli(broken_market, tiny_market, capsys):
  root, expected, _ = broken_market
  assert check_data.main([str(root), '--K', '4']) == 1
  out = capsys.readouterr().out
  for kind, paths in expected.items():
    severity = checks.CASES[kind].severity
    assert re.search(rf'^\[{severity}\] {kind}: {len(paths)}\b', out, flags=re.M), kind
    for path in paths:
      assert f'  {path.resolve()}: ' in out
  assert 'errors are fixed' in out
  assert check_data.main([tiny_market, '--notes', '1']) == 0  # notes only
  out = capsys.readouterr().out
  assert '[error]' not in out and '0 errors, 0 warnings' in out


def test_check_data_help_and_cases(capsys):
  with pytest.raises(SystemExit) as exit_info:
    check_data.main(['--help'])
  assert exit_info.value.code == 0
  text = capsys.readouterr().out
  assert 'Exit code: 1 if there is any error' in text and '--K' in text
  assert check_data.main(['--cases']) == 0
  table = capsys.readouterr().out.splitlines()
  assert len(table) == 2 + len(checks.CASES)
  assert all(
    f'`{kind}` ({case.severity})' in '\n'.join(table) for kind, case in checks.CASES.items()
  )


def test_layout_is_detected_or_refused(tiny_pku, tmp_path):
  assert checks.detect_dataset(tiny_pku) == 'pku_sketch'
  with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path))):
    checks.check_dataset(str(tmp_path))
  report = checks.check_dataset(str(tmp_path / 'none'), dataset='market_sketch')
  assert [p.path for p in report.errors] == [str((tmp_path / 'none').resolve())]
  with pytest.raises(FileNotFoundError, match='missing folder'):
    report.raise_if_errors()


# --------------------------------------------------------------------------- conversions


def test_png_conversions_through_the_reader_and_decode(tiny_market, tmp_path):
  """RGBA, greyscale and 16-bit PNGs survive the TFDS build and decode_rgb gives 8-bit RGB."""
  root = _copy(tiny_market, tmp_path)
  rng = np.random.default_rng(1)
  rgba = rng.integers(0, 256, (H, W, 4), dtype=np.uint8)
  grey = rng.integers(0, 256, (H, W), dtype=np.uint8)
  grey16 = rng.integers(0, 65536, (H, W), dtype=np.uint16)
  rgb16 = rng.integers(0, 65536, (H, W, 3), dtype=np.uint16)
  photos = sorted((root / 'photo' / 'train').glob('*.jpg'))[:4]
  files = {}
  for photo, (name, data) in zip(
    photos,
    [
      ('rgba', _png(rgba, 'RGBA')),
      ('grey', _png(grey, 'L')),
      ('grey16', _png(grey16)),
      ('rgb16', _png16_rgb(rgb16)),
    ],
  ):
    photo.unlink()  # the PNG replaces the JPEG (the same stem twice would be a duplicate)
    photo.with_suffix('.png').write_bytes(data)
    files[name] = photo.with_suffix('.png').relative_to(root).as_posix()
  # What decode_rgb must give, computed here without TF: alpha dropped, grey replicated,
  # 16 bits -> the high byte (v // 256; TF's convert_image_dtype; round(v / 257) differs by <= 1).
  want = {
    'rgba': rgba[..., :3],
    'grey': np.repeat(grey[..., None], 3, axis=-1),
    'grey16': np.repeat((grey16 // 256)[..., None], 3, axis=-1).astype(np.uint8),
    'rgb16': (rgb16 // 256).astype(np.uint8),
  }
  report = checks.check_dataset(str(root), images=True)
  assert report.errors == [] and report.warnings == []
  notes = {_rel_to(p.path, root): p.detail for p in report.notes if p.kind == 'converted'}
  assert {notes[files[n]] for n in want} == {
    'PNG RGBA: alpha dropped (not composited)',
    'PNG greyscale, replicated to 3 channels',
    '16-bit greyscale PNG: high byte (v // 256) of each channel',
    '16-bit RGB PNG: high byte (v // 256) of each channel',
  }
  config = base_config()
  config.data.root, config.data.cache_dir = str(root), str(tmp_path / 'cache')
  table = datasets.load(config.data)
  for name, rel in files.items():
    (row,) = np.flatnonzero(table.path == rel)
    assert table.image[row] == (root / rel).read_bytes()  # stored as they are
    got = input_pipeline.decode_rgb(table.image[row]).numpy()
    np.testing.assert_array_equal(got, want[name].astype(np.float32), err_msg=name)
  assert abs(want['rgb16'].astype(int) - np.round(rgb16 / 257)).max() <= 1


def _rel_to(path: str, root: Path) -> str:
  return Path(path).relative_to(root.resolve()).as_posix()


# --------------------------------------------------------------------------- identities


def test_fewer_than_k_matches_the_file_names(tiny_market):
  K = 6
  root = Path(tiny_market)
  photos = Counter(p.name[:4] for p in (root / 'photo' / 'train').glob('*.jpg'))
  sketches = Counter(p.name[:4] for p in root.glob('sketch/*/train/*.jpg'))
  want = sorted(
    (int(pid), modality)
    for pid in photos.keys() & sketches.keys()
    for modality, n in ((0, photos[pid]), (1, sketches[pid]))
    if n < K
  )
  assert want  # the tiny set has some
  report = checks.check_dataset(tiny_market, K=K, images=False)
  folders = {str(root.resolve() / 'photo' / 'train'): 0, str(root.resolve() / 'sketch'): 1}
  got = sorted((p.pid, folders[p.path]) for p in report.problems if p.kind == 'fewer_than_K')
  assert got == want
  assert report.errors == [] and report.warnings == []


def test_fewer_than_k_is_drawn_with_replacement():
  """The decision 'resampled with replacement' is what pk_plan does (input_pipeline._draw)."""
  rows = []
  for pid, n_photo, n_sketch in ((1, 1, 5), (2, 6, 2), (3, 4, 4)):
    for i in range(n_photo):
      rows.append(dict(image=b'', pid=pid, modality=0, style='', split='train', camid=1,
                       path=f'photo/train/{pid:04d}_c1s1_{i:06d}_00.jpg'))  # fmt: skip
    for i in range(n_sketch):
      rows.append(dict(image=b'', pid=pid, modality=1, style='A', split='train', camid=0,
                       path=f'sketch/A/train/{pid:04d}_{i}.jpg'))  # fmt: skip
  table = make_table(rows)
  train_set = input_pipeline.make_train_set(table, 'A')
  assert train_set.pids.tolist() == [1, 2, 3]  # none is dropped for having fewer than K
  (step,) = input_pipeline.pk_plan(train_set, P=3, K=4, epoch=0, seed=0)
  drawn_pids = set()
  for slot in step:
    for modality, drawn in enumerate(slot):
      pid = int(table.pid[drawn[0]])
      drawn_pids.add(pid)
      pool = np.flatnonzero((table.pid == pid) & (table.modality == modality))
      assert set(drawn.tolist()) <= set(pool.tolist()) and len(drawn) == 4
      if len(pool) >= 4:
        assert len(set(drawn.tolist())) == 4  # enough images: K distinct ones
      else:  # fewer: every draw from the identity's own images, so some repeat
        assert len(set(drawn.tolist())) <= len(pool)
  assert drawn_pids == {1, 2, 3}


def test_photos_without_sketch_match_make_train_set(tiny_market, tfds_cache):
  """check_data's warning for the config's training styles = make_train_set's warning."""
  config = base_config()
  config.data.root, config.data.cache_dir, config.data.train_styles = tiny_market, tfds_cache, 'B'
  report = checks.check_dataset(config.data, images=False)
  table = datasets.load(config.data)
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter('always')
    input_pipeline.make_train_set(table, 'B')
  (message,) = [str(w.message) for w in caught]
  listed = re.search(r'with photos but no sketch of these styles \[([\d, ]*)\]', message).group(1)
  assert report.pids('photos_without_sketch') == [int(p) for p in listed.split(', ')]
  trained = set(table.pid[(table.split == 'train') & (table.style == 'B')].tolist())
  photo_ids = set(table.pid[(table.split == 'train') & (table.modality == 0)].tolist())
  assert report.pids('photos_without_sketch') == sorted(photo_ids - trained)
  photo_paths = {
    str(Path(table.root) / p)
    for p, pid, m in zip(table.path, table.pid, table.modality)
    if m == 0 and pid in photo_ids - trained and p.startswith('photo/train/')
  }
  assert {p.path for p in report.warnings} == photo_paths


# --------------------------------------------------------------------------- PKU-Sketch


def test_pku_report_and_load_agree(tiny_pku, tmp_path):
  root = _copy(tiny_pku, tmp_path)
  style_file = sorted((root / 'styleAnnotation').glob('*.txt'))[-1]
  listed = style_file.read_text().split()
  style_file.write_text('')  # an empty style: its ids now have no style either
  sketches = sorted(
    (p for p in (root / 'sketch').glob('*.jpg') if p.stem not in listed), key=lambda p: int(p.stem)
  )
  sketches[0].write_bytes(b'')  # zero-byte
  (root / 'sketch' / 'x1.jpg').write_bytes(sketches[1].read_bytes())  # no identity
  photo = next((root / 'photo').glob(f'{sketches[2].stem}_1_*.jpg'))
  stray = [root / 'photo' / '900_1_1.jpg', root / 'photo' / '900_2_2.jpg']
  for path in stray:  # photos of a person with no sketch
    path.write_bytes(photo.read_bytes())
  photo.with_suffix('.png').write_bytes(_png(np.zeros((H, W), np.uint16)))  # duplicate name
  expected = {
    'empty_file': [sketches[0]],
    'bad_name': [root / 'sketch' / 'x1.jpg'],
    'photos_without_sketch': stray,
    'duplicate_name': [photo.with_suffix('.png')],
    'empty_style': [style_file],
    'id_without_style': [root / 'sketch' / f'{i}.jpg' for i in listed],
  }
  report = checks.check_dataset(str(root), K=1)
  found = {k: _rel(p.path for p in v) for k, v in report.by_kind().items() if k != 'converted'}
  assert found == {k: _rel(v) for k, v in expected.items()}
  assert report.pids('photos_without_sketch') == [900]
  config = base_config()
  config.data.dataset = 'pku_sketch'
  config.data.root, config.data.cache_dir = str(root), str(tmp_path / 'cache')
  with pytest.raises(checks.DataError) as err:
    datasets.load(config.data)
  listed_paths = re.findall(r'^  (/\S+): ', str(err.value), flags=re.M)
  assert sorted(listed_paths) == _rel(p.path for p in report.errors)
  assert not (tmp_path / 'cache').exists()
