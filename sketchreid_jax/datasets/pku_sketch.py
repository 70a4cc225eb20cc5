"""PKU-Sketch: TFDS builder (manual_dir), stratified identity split, loader (docs/design.md §2, §5, §6).

Layout read (the real dataset and ``synthetic.generate_pku_sketch`` write the same)::

    <root>/sketch/<id>.jpg                      one sketch per person, e.g. 17.jpg
    <root>/photo/<id>_<cam>_<frame>.jpg         two photos per person, e.g. 1_05_356.jpg
    <root>/styleAnnotation/<S>_<count>.txt      the ids drawn in artist style S, one per line

Protocol (docs/design.md §5, CMDSL Table 1): 10 random trials, each a stratified identity split with
12/5/19/8/6 test identities in styles A..E (50 test, 150 train of the 200); query = the test
sketches, gallery = the test photos; report mean ± std over trials. ``load_pku_sketch`` returns
one trial as a ``SampleTable`` in the Market-Sketch-1K convention, so ``make_train_set`` and
``make_eval_set`` work unchanged (train/test styles 'ABCDE').

Interpretations chosen:
- The person id is the whole sketch stem / the first photo field, any number of digits (the real
  files are unpadded: ``1.jpg``, ``1_05_356.jpg``); photos must be ``<id>_<cam>_<frame>`` with
  cam >= 1, because sketches get camid 0 and ``evaluate_rank`` would otherwise drop a photo from
  "the sketch's camera". camid = the cam field as a number (synthetic: 1, 2; real: 3..6).
- Every check, and its decision, is in ``checks.CASES`` (README "Data checks"); ``survey`` finds
  all problems of the layout at once, ``checks.check_images`` those of the image files, and the
  loader refuses the dataset with one error listing them all, before anything is written.
- Style letters are A..E, case-insensitive (the real files are ``a_46.txt``); the table uses
  upper case. Every sketch id must be in exactly one style file, every style file must list at
  least one id, every listed id must have a sketch and every sketch at least one photo: each
  violation is an error naming the file. The count in a style file's name that disagrees with
  its number of ids is only a warning: the list, not the name, decides membership. Blank lines
  are ignored.
- Photos of a person without a sketch are left out of the table with one warning listing them:
  the person has no style, so the stratified split cannot place them (``photos_without_sketch``).
- Files that are not images (``.DS_Store``, ...) in sketch/ and photo/, and files that are not
  ``.txt`` in styleAnnotation/, are ignored: they carry no sample.
- Image files are fully decoded before a TFDS build (``checks.check_images``): not on a cached
  load, since the fingerprint proves the files unchanged. An unreadable file is an error, never
  skipped; RGBA, greyscale, palette and 16-bit images are kept (``decode_rgb`` converts them).
- One TFDS build holds every image (splits 'sketch' and 'photo'); the trial split is applied when
  reading, so all trials share one cache. The fingerprint also covers the style files, since
  editing them changes the stored styles.
- Split: the test ids of each style are drawn without replacement by one
  ``np.random.default_rng([seed, trial])``, styles in sorted order, each from its sorted ids.
- A style with no more ids than its requested test count (so no training id would be left, e.g.
  the tiny synthetic set) gets round(test_count · n / full_size) test ids, clipped to
  [1, n - 1], where full_size is that style's size in the dataset the counts were written for
  (CMDSL Table 1 totals by default); styles with enough ids keep their count. One warning lists
  every scaled style.
- Table rows are sorted by (split, modality, style, path) as in Market-Sketch-1K; attributes None.
"""

import dataclasses
import os
import re
import warnings
from pathlib import Path
from typing import Mapping, Sequence

from sketchreid_jax import tf_setup  # noqa: E402,F401  (hides GPUs from TF before TFDS loads it)

# isort: split

import numpy as np  # noqa: E402
import tensorflow_datasets as tfds  # noqa: E402

from sketchreid_jax.datasets import checks  # noqa: E402
from sketchreid_jax.datasets.checks import Problem, Survey, duplicate_problems  # noqa: E402
from sketchreid_jax.datasets.market_sketch import IMAGE_SUFFIXES  # noqa: E402
from sketchreid_jax.datasets.synthetic import PKU_STYLE_COUNTS  # noqa: E402  (Table 1 totals)
from sketchreid_jax.datasets.table import (  # noqa: E402
  MODALITY_PHOTO,
  MODALITY_SKETCH,
  SampleTable,
)
from sketchreid_jax.datasets.tfds_cache import (  # noqa: E402  (fingerprinted cache, shared)
  LocalCodePath,
  cache_data_dir,
  image_examples,
  image_table_features,
  is_built,
  prepare,
  quiet_tfds,
  read_split,
)

STYLES: tuple[str, ...] = ('A', 'B', 'C', 'D', 'E')
# CMDSL Table 1: test identities per style in every trial (50 of 200).
CMDSL_TEST_COUNTS: Mapping[str, int] = {'A': 12, 'B': 5, 'C': 19, 'D': 8, 'E': 6}
# CMDSL Table 1: identities per style (train + test), the sizes CMDSL_TEST_COUNTS were written for.
CMDSL_STYLE_SIZES: Mapping[str, int] = PKU_STYLE_COUNTS
TFDS_SPLITS: tuple[str, ...] = ('sketch', 'photo')
TRAIN_SPLIT = 'train'
TEST_SPLIT = 'query'  # the Market-Sketch-1K name of the test split, which the pipeline reads
DATASET_NAME = 'pku_sketch'
STYLE_DIR = 'styleAnnotation'

_SKETCH_RE = re.compile(r'^(\d+)$')
_PHOTO_RE = re.compile(r'^(\d+)_(\d+)_(\d+)$')
_STYLE_FILE_RE = re.compile(r'^([A-Za-z])_(\d+)\.txt$', re.IGNORECASE)


@dataclasses.dataclass(frozen=True)
class ImageRecord:
  """One image found by :func:`scan_layout` (path relative to the root, posix separators)."""

  path: str
  pid: int
  modality: int
  style: str
  camid: int


@dataclasses.dataclass(frozen=True)
class Layout:
  """What :func:`scan_layout` found: the images, the style of each id, the style files read."""

  images: list[ImageRecord]
  ids_by_style: dict[str, list[int]]
  style_files: list[str]


def _image_files(folder: Path) -> list[Path]:
  return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


_LAYOUT_FIX = (
  f'PKU-Sketch needs sketch/<id>.jpg, photo/<id>_<cam>_<frame>.jpg and '
  f'{STYLE_DIR}/<style>_<count>.txt under the dataset root'
)


def _read_style_files(
  folder: Path, problems: list[Problem]
) -> tuple[dict[str, list[int]], dict[int, Path], list[Path]]:
  """ids per style letter, the file each id came from, and the files read; every problem of the
  style files is appended to ``problems`` (a bad file or line is left out, the rest is read)."""
  ids_by_style: dict[str, list[int]] = {}
  source: dict[int, Path] = {}
  file_of_style: dict[str, Path] = {}
  files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() == '.txt')
  read: list[Path] = []
  for file in files:
    match = _STYLE_FILE_RE.match(file.name)
    if match is None or match.group(1).upper() not in STYLES:
      problems.append(
        Problem(
          str(file),
          'bad_style_file',
          f'a style file must be named <style>_<count>.txt with style one of '
          f'{", ".join(STYLES)} (either case), e.g. a_46.txt',
          fix='rename or remove this file',
        )
      )
      continue
    style, stated = match.group(1).upper(), int(match.group(2))
    if style in file_of_style:
      problems.append(
        Problem(
          str(file),
          'bad_style_file',
          f'style {style} already has {file_of_style[style]}; expected one file per style',
          fix='merge the two lists into one file',
        )
      )
      continue
    file_of_style[style] = file
    read.append(file)
    ids: list[int] = []
    for lineno, line in enumerate(file.read_text().splitlines(), start=1):
      text = line.strip()
      if not text:
        continue
      if not text.isdigit():
        problems.append(
          Problem(
            f'{file}:{lineno}',
            'bad_style_file',
            f'{text!r} is not a person id; expected one numeric id per line',
          )
        )
        continue
      pid = int(text)
      if pid in source:
        problems.append(
          Problem(
            f'{file}:{lineno}',
            'bad_style_file',
            f'person {pid} is also listed in {source[pid]}; expected every id in exactly one '
            f'style file',
            fix='remove it from the wrong one',
            pid=pid,
          )
        )
        continue
      source[pid] = file
      ids.append(pid)
    if not ids:
      problems.append(
        Problem(
          str(file),
          'empty_style',
          f'lists no person id; expected the ids drawn in style {style}, one per line',
          fix='add them or remove the file (a style needs at least 2 ids: one to test, one to '
          'train)',
        )
      )
      continue
    if len(ids) != stated:
      problems.append(
        Problem(
          str(file),
          'style_count_mismatch',
          f'the name says {stated} ids but the file lists {len(ids)}; using the list',
        )
      )
    ids_by_style[style] = ids
  if not files:
    problems.append(
      Problem(
        str(folder),
        'empty_style',
        f'no style file; expected <style>_<count>.txt files (e.g. a_46.txt) listing the ids '
        f'drawn in each style {", ".join(STYLES)}',
        fix='add the style files of the dataset',
      )
    )
  return ids_by_style, source, read


def survey(root: str | os.PathLike) -> Survey:
  """Every image with its parsed labels (``extra``: the ``Layout``) and every layout, naming and
  identity problem (all of them, none raised); images are not opened (``checks.check_images``).

  Photos of a person without a sketch are left out, with a 'photos_without_sketch' warning.
  """
  root = Path(root).expanduser()
  problems: list[Problem] = []
  folders = {
    'sketch': (root / 'sketch', 'the sketches (sketch/<id>.jpg)'),
    'photo': (root / 'photo', 'the photos (photo/<id>_<cam>_<frame>.jpg)'),
    STYLE_DIR: (root / STYLE_DIR, f'the artist styles ({STYLE_DIR}/<style>_<count>.txt)'),
  }
  for path, what in [(root, 'the PKU-Sketch dataset root'), *folders.values()]:
    if not path.is_dir():
      problems.append(
        Problem(str(path), 'missing_folder', f'missing folder; expected {what}', fix=_LAYOUT_FIX)
      )
      if path == root:
        break
  sketch_dir, photo_dir, style_dir = (folders[k][0] for k in ('sketch', 'photo', STYLE_DIR))
  ids_by_style, source, style_files = (
    _read_style_files(style_dir, problems) if style_dir.is_dir() else ({}, {}, [])
  )
  style_of = {pid: style for style, ids in ids_by_style.items() for pid in ids}

  sketches: dict[int, Path] = {}
  for file in _image_files(sketch_dir) if sketch_dir.is_dir() else []:
    match = _SKETCH_RE.match(file.stem)
    if match is None:
      problems.append(
        Problem(
          str(file),
          'bad_name',
          'no person id in the file name; a sketch is <id>.jpg with a numeric id (e.g. 17.jpg)',
        )
      )
      continue
    pid = int(match.group(1))
    if pid in sketches:
      problems.append(
        Problem(
          str(file),
          'duplicate_name',
          f'person {pid} already has the sketch {sketches[pid]}; expected one sketch per person',
          fix='remove one of them',
          pid=pid,
        )
      )
      continue
    if pid not in style_of and style_dir.is_dir():
      problems.append(
        Problem(
          str(file),
          'id_without_style',
          f'person {pid} is in no style file; expected its id in exactly one '
          f'{style_dir}/<style>_<count>.txt',
          pid=pid,
        )
      )
    sketches[pid] = file
  if sketch_dir.is_dir() and not sketches:
    problems.append(
      Problem(str(sketch_dir), 'no_images', 'no images (*.jpg/*.jpeg/*.png); expected <id>.jpg')
    )
  for pid, file in sorted(source.items()):
    if sketch_dir.is_dir() and pid not in sketches:
      problems.append(
        Problem(
          str(file),
          'style_id_without_sketch',
          f'lists person {pid} but {sketch_dir}/{pid}.jpg does not exist',
          pid=pid,
        )
      )

  photos: list[ImageRecord] = []
  with_photo: set[int] = set()
  for file in _image_files(photo_dir) if photo_dir.is_dir() else []:
    match = _PHOTO_RE.match(file.stem)
    if match is None or int(match.group(2)) < 1:
      problems.append(
        Problem(
          str(file),
          'bad_name',
          'a photo name is <id>_<camera>_<frame>.jpg with numeric fields and camera >= 1 '
          '(e.g. 1_05_356.jpg)',
        )
      )
      continue
    pid = int(match.group(1))
    if pid not in sketches and sketch_dir.is_dir():
      problems.append(
        Problem(
          str(file),
          'photos_without_sketch',
          f'person {pid} has no sketch {sketch_dir}/{pid}.jpg; this photo is left out',
          pid=pid,
        )
      )
      continue
    with_photo.add(pid)
    if pid in style_of:  # else its sketch's error covers it
      rel = file.relative_to(root).as_posix()
      photos.append(ImageRecord(rel, pid, MODALITY_PHOTO, '', int(match.group(2))))
  for pid, file in sorted(sketches.items()):
    if photo_dir.is_dir() and pid not in with_photo:
      problems.append(
        Problem(
          str(file),
          'sketch_without_photo',
          f'person {pid} has no photo; expected at least one {photo_dir}/{pid}_<cam>_<frame>.jpg',
          pid=pid,
        )
      )
  problems += duplicate_problems(root, photos)

  images = [
    ImageRecord(file.relative_to(root).as_posix(), pid, MODALITY_SKETCH, style_of[pid], 0)
    for pid, file in sorted(sketches.items())
    if pid in style_of
  ] + photos
  layout = Layout(
    images=images,
    ids_by_style={s: sorted(ids_by_style[s]) for s in sorted(ids_by_style)},
    style_files=[f.relative_to(root).as_posix() for f in style_files],
  )
  return Survey(images, images, problems, ('photo', 'sketch'), extra=layout)


def scan_layout(root: str | os.PathLike) -> Layout:
  """Validates the folder layout and lists every image with its parsed labels.

  Raises ``checks.DataError`` (a ValueError; ``MissingDataError``, also a FileNotFoundError, for
  a missing folder) listing every problem :func:`survey` finds, each with its path and fix, then
  warns about the rest (one warning per case of ``checks.CASES``).
  """
  found = survey(root)
  checks.enforce(DATASET_NAME, Path(root).expanduser(), found, images=False)
  return found.extra


def _scaled_count(requested: int, available: int, full_size: int) -> int:
  # Round half up (not Python's banker's rounding) so the count is obvious by hand.
  scaled = int(np.floor(requested * available / full_size + 0.5))
  return min(max(scaled, 1), available - 1)


def pku_split(
  ids_by_style: Mapping[str, Sequence[int]],
  *,
  test_counts: Mapping[str, int],
  seed: int,
  trial: int,
  full_sizes: Mapping[str, int] = CMDSL_STYLE_SIZES,
) -> tuple[np.ndarray, np.ndarray]:
  """The stratified identity split of one trial: sorted int32 (train_ids, test_ids).

  For each style s (sorted), ``test_counts[s]`` ids are drawn without replacement from the
  sorted ids of s by ``np.random.default_rng([seed, trial])``; the rest of s are training ids.
  A style with ``n_s <= test_counts[s]`` ids instead gets
  ``clip(round(test_counts[s] · n_s / full_sizes[s]), 1, n_s - 1)`` test ids (with a warning).

  Args:
    ids_by_style: style letter -> the person ids drawn in that style (each id in one style).
    test_counts: style letter -> test ids per trial (>= 1), same letters as ``ids_by_style``.
    seed: split seed (>= 0); with ``trial`` it fixes the split.
    trial: trial index (>= 0), 0..9 in the protocol.
    full_sizes: style -> the style size ``test_counts`` were written for (only for scaling).
  """
  for name, value in (('seed', seed), ('trial', trial)):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
      raise ValueError(f'pku_split: {name} must be an integer >= 0, got {value!r}.')
  if set(test_counts) != set(ids_by_style):
    raise ValueError(
      f'pku_split: test_counts has styles {sorted(test_counts)} but the dataset has '
      f'{sorted(ids_by_style)}; give one test count per style of the dataset.'
    )
  seen: dict[int, str] = {}
  for style in sorted(ids_by_style):
    for pid in ids_by_style[style]:
      if int(pid) in seen:
        raise ValueError(
          f'pku_split: person {pid} is in style {seen[int(pid)]} and in style {style}; '
          f'every id must belong to exactly one style.'
        )
      seen[int(pid)] = style
  rng = np.random.default_rng([seed, trial])
  train, test, scaled = [], [], []
  for style in sorted(ids_by_style):
    pool = np.sort(np.asarray(ids_by_style[style], dtype=np.int64))
    requested = test_counts[style]
    if isinstance(requested, bool) or not isinstance(requested, (int, np.integer)) or requested < 1:
      raise ValueError(
        f'pku_split: test_counts[{style!r}] = {requested!r}; expected an integer >= 1.'
      )
    if len(pool) < 2:
      raise ValueError(
        f'pku_split: style {style} has {len(pool)} id(s); at least 2 are needed so that one '
        f'is tested and one trained. Add identities of this style or merge it into another.'
      )
    count = int(requested)
    if len(pool) <= count:
      if style not in full_sizes or full_sizes[style] < 1:
        raise ValueError(
          f'pku_split: style {style} has {len(pool)} ids, not more than test_counts[{style!r}]'
          f' = {count}, and full_sizes has no size >= 1 for it to scale by; lower the count.'
        )
      count = _scaled_count(count, len(pool), full_sizes[style])
      scaled.append(f'{style} {requested}->{count} of {len(pool)}')
    chosen = rng.choice(pool, size=count, replace=False)
    test.append(chosen)
    train.append(np.setdiff1d(pool, chosen))
  if scaled:
    warnings.warn(
      f'pku_split: fewer ids per style than test_counts asks for; test counts scaled '
      f'proportionally (test count x ids / full size, at least 1 test and 1 train id per '
      f'style): {", ".join(scaled)}.'
    )
  return (
    np.sort(np.concatenate(train)).astype(np.int32),
    np.sort(np.concatenate(test)).astype(np.int32),
  )


class PKUSketch(LocalCodePath, tfds.core.GeneratorBasedBuilder):
  """PKU-Sketch sketches and photos as raw encoded bytes with identity/style/camera labels."""

  name = DATASET_NAME
  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release: raw bytes, pid, modality, style, camid, path.'}
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
    Request PKU-Sketch from its authors (Pang et al., "Cross-Domain Adversarial Feature Learning
    for Sketch Re-identification", ACM MM 2018) and unpack it so that the manual_dir (the
    dataset root, e.g. data/pku_sketch) holds sketch/, photo/ and styleAnnotation/. Point
    --config.data.root (or tfds manual_dir) at that folder.
    """

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
      description='Sketch-based person re-identification: 200 persons, one sketch each in one '
      'of five artist styles (A-E) and two photos from two cameras.',
      features=image_table_features(styles='A..E', cameras='1, 2'),
      supervised_keys=None,
      homepage='https://www.pkuml.org/resources/pkusketchreid-dataset.html',
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    root = Path(dl_manager.manual_dir)
    images = survey(root).records  # the loader checked everything; this only re-lists
    modality = {'sketch': MODALITY_SKETCH, 'photo': MODALITY_PHOTO}
    return {
      split: self._generate_examples(root, [r for r in images if r.modality == modality[split]])
      for split in TFDS_SPLITS
    }

  def _generate_examples(self, root: Path, records: list[ImageRecord]):
    return image_examples(root, records)


def load_pku_sketch(
  root: str | os.PathLike,
  *,
  cache_dir: str | os.PathLike | None = None,
  trial: int = 0,
  split_seed: int = 0,
  test_counts: Mapping[str, int] | None = None,
  read_batch: int = 1024,
) -> SampleTable:
  """Checks ``root``, builds (once per fingerprint) the TFDS dataset, returns one trial's table.

  Every problem of the layout, the style files, the names and (before a build) the image files
  is found first and reported at once (``checks.DataError``), before anything is written;
  warnings and notes follow ``checks.CASES``.

  Rows of training ids have split 'train' (their sketch and photos), rows of test ids split
  'query' (sketch = query, photos = gallery), as in Market-Sketch-1K.

  Args:
    root: the dataset root (the TFDS manual_dir).
    cache_dir: where TFDS builds go, one sub-folder per fingerprint; default
      ``~/.cache/sketchreid_jax/tfds``.
    trial: which random split (0..9 in the protocol).
    split_seed: seed of the splits; (split_seed, trial) fixes the split.
    test_counts: test ids per style; None = CMDSL Table 1 (A 12, B 5, C 19, D 8, E 6).
    read_batch: examples per tf.data batch while reading (only affects reading speed).
  """
  root = Path(root).expanduser().resolve()
  found = survey(root)
  layout = found.extra
  data_dir = cache_data_dir(cache_dir, root, [r.path for r in layout.images] + layout.style_files)
  # Before anything is written; a build of this fingerprint had its images checked already.
  checks.enforce(DATASET_NAME, root, found, images=not is_built(data_dir, PKUSketch))
  # Split before building so that a bad split argument fails without writing a cache.
  _, test_ids = pku_split(
    layout.ids_by_style,
    test_counts=dict(CMDSL_TEST_COUNTS if test_counts is None else test_counts),
    seed=split_seed,
    trial=trial,
  )
  with quiet_tfds():
    builder = prepare(PKUSketch, root, data_dir)
    parts = [read_split(builder, split, read_batch) for split in TFDS_SPLITS]
  columns = {k: [v for part in parts for v in part[k]] for k in parts[0]}
  if len(columns['pid']) != len(layout.images):
    raise RuntimeError(
      f'{data_dir}: the TFDS build holds {len(columns["pid"])} images but '
      f'{root} has {len(layout.images)}; delete {data_dir} and load again.'
    )
  pid = np.asarray(columns['pid'], np.int32)
  image = np.empty(len(pid), dtype=object)
  image[:] = columns['image']
  table_columns = dict(
    image=image,
    pid=pid,
    modality=np.asarray(columns['modality'], np.int8),
    style=np.asarray(columns['style'], str),
    split=np.where(np.isin(pid, test_ids), TEST_SPLIT, TRAIN_SPLIT),
    camid=np.asarray(columns['camid'], np.int32),
    path=np.asarray(columns['path'], str),
  )
  # Same row order as Market-Sketch-1K: stable across rebuilds and TFDS's record order.
  split_rank = (table_columns['split'] == TEST_SPLIT).astype(np.int64)
  order = np.lexsort(
    (table_columns['path'], table_columns['style'], table_columns['modality'], split_rank)
  )
  return SampleTable(
    **{k: v[order] for k, v in table_columns.items()},
    attributes=None,
    attribute_names=(),
    root=str(root),
    name=DATASET_NAME,
  )
