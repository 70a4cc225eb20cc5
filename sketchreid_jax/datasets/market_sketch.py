"""Market-Sketch-1K: TFDS builder (manual_dir) and loader into a SampleTable (docs/design.md §2, §5, §6).

Layout read (real data and the synthetic generator write the same)::

    <root>/photo/train/*.jpg          training photos (Market-1501 names)
    <root>/photo/query/*.jpg          the gallery for every test setting
    <root>/sketch/<S>/train/*.jpg     training sketches of artist style S in A..F
    <root>/sketch/<S>/query/*.jpg     query sketches of style S
    <root>/market_attribute.mat       27 attributes per identity (optional)

Interpretations chosen:
- Every check, and its decision, is in ``checks.CASES`` (README "Data checks"); ``survey`` finds
  all problems of the layout at once, ``checks.check_images`` those of the image files, and the
  loader refuses the dataset with one error listing them all, before anything is written.
- The identity is the first 4 characters of the file name and must be digits; any other image name
  is an error naming the file (no silent skip). Files that are not images (``Thumbs.db``,
  ``.DS_Store``, ...; anything not ending in .jpg/.jpeg/.png) are ignored: they carry no sample.
- Photos must follow ``<pid:04d>_c<cam>s<seq>_...``; camid = cam (>= 1). Sketches get camid 0.
  All queries are sketches from "camera 0" and the gallery holds only photos (cameras >= 1), so the
  same-pid-same-camid filter of ``evaluate_rank`` never removes anything: no camera filtering, as
  the protocol requires (docs/design.md §5).
- pid 0000 (Market-1501's distractor id) is accepted as an ordinary identity.
- A style folder may lack ``train/`` or ``query/`` (subsets), but must have at least one of them,
  and a ``train/`` or ``query/`` that exists must hold sketches (an empty one is an error, not a
  style without sketches); sketch/ must hold at least one style folder; folders in sketch/ other
  than A..F are an error.
- Every sketch identity needs a photo of the same split: a training sketch one in photo/train
  (the P×K sampler pairs each sketch with photos of its identity), a query sketch one in
  photo/query (the gallery; a query without a true match has no rank-1). The error names each
  such identity and the folder its photos were expected in. Photo identities without a sketch
  are kept: in photo/query they are the gallery's distractors (Market-1501's unsketched people);
  in photo/train ``make_train_set`` leaves them out of training with a warning.
- The same file name twice in one modality and style (e.g. in photo/train and photo/query) is an
  error (``checks.duplicate_problems``).
- Image files are fully decoded before a TFDS build (``checks.check_images``): not on a cached
  load, since the fingerprint proves the files unchanged. An unreadable file is an error, never
  skipped; RGBA, greyscale, palette and 16-bit images are kept (``decode_rgb`` converts them).
- The TFDS examples keep the original encoded bytes (``Tensor(shape=(), dtype=tf.string)``), so the
  stored JPEG is bit-identical to the file. Attributes are per identity, not per example, so they
  are read from the .mat by the loader, not stored in TFDS.
- The build cache lives in ``<cache_dir>/<fingerprint>/`` (``tfds_cache``); the fingerprint
  covers the absolute root and the sorted (relative path, size, mtime_ns) of the image files, so
  editing or regenerating the data rebuilds and two datasets never share a cache.
- Table rows are sorted by (split, modality, style, path), independent of TFDS's shuffled record
  order, so row indices (and therefore seeded sampling plans) are stable across rebuilds.
- Attribute codes are stored 0-based (code - 1), in the order of ``ATTRIBUTE_NAMES``; identities
  absent from the .mat get a row of -1; without the .mat, ``attributes`` is None (one warning).
"""

import dataclasses
import os
import re
import warnings
from pathlib import Path

from sketchreid_jax import tf_setup  # noqa: E402,F401  (hides GPUs from TF before TFDS loads it)

# isort: split

import numpy as np  # noqa: E402
import scipy.io  # noqa: E402
import tensorflow_datasets as tfds  # noqa: E402

from sketchreid_jax.datasets import checks  # noqa: E402
from sketchreid_jax.datasets.attributes import MARKET_ATTRIBUTE_NAMES  # noqa: E402
from sketchreid_jax.datasets.checks import Problem, Survey, duplicate_problems  # noqa: E402
from sketchreid_jax.datasets.table import (
  MODALITY_PHOTO,
  MODALITY_SKETCH,  # noqa: E402
  SampleTable,
)
from sketchreid_jax.datasets.tfds_cache import (  # noqa: E402  (fingerprinted cache, shared)
  LocalCodePath,
  build_and_read,
  cache_data_dir,
  image_examples,
  image_table_features,
  is_built,
)

STYLES: tuple[str, ...] = ('A', 'B', 'C', 'D', 'E', 'F')
SPLITS: tuple[str, ...] = ('train', 'query')
IMAGE_SUFFIXES: tuple[str, ...] = ('.jpg', '.jpeg', '.png')
ATTRIBUTE_FILE = 'market_attribute.mat'
ATTRIBUTE_NAMES = MARKET_ATTRIBUTE_NAMES
DATASET_NAME = 'market_sketch_1k'

_PID_RE = re.compile(r'^(\d{4})')
_PHOTO_RE = re.compile(r'^(\d{4})_c(\d+)s(\d+)_')
_PHOTO_PATTERN = (
  '<pid:04d>_c<camera>s<sequence>_<frame>_<nn>.jpg with camera >= 1 (e.g. 0002_c1s1_000451_01.jpg)'
)
_SKETCH_PATTERN = '<pid:04d>[anything].jpg (e.g. 0002.jpg)'
_LAYOUT_FIX = (
  'Market-Sketch-1K needs photo/train, photo/query and sketch/<A..F>/{train,query} under the '
  'dataset root'
)
# (photo folder, sketch folder) of the training images, for messages.
_TRAIN_FOLDERS = ('photo/train', 'sketch')
# Sketch files of one identity named in a message, beyond which only the count is given.
_MAX_LISTED = 3


@dataclasses.dataclass(frozen=True)
class ImageRecord:
  """One image found by :func:`survey` (path relative to the root, posix separators)."""

  path: str
  pid: int
  modality: int
  style: str
  split: str
  camid: int


def _image_files(folder: Path) -> list[Path]:
  return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _parse(file: Path, modality: int) -> tuple[int, int] | Problem:
  """(pid, camid) from a file name, or the 'bad_name' problem naming the expected pattern."""
  has_pid = _PID_RE.match(file.name) is not None
  if modality == MODALITY_SKETCH:
    if not has_pid:
      return Problem(
        str(file), 'bad_name', f'no identity in the file name; a sketch is {_SKETCH_PATTERN}'
      )
    return int(file.name[:4]), 0
  match = _PHOTO_RE.match(file.name)
  if match is None or int(match.group(2)) < 1:
    what = 'not a Market-1501 photo name' if has_pid else 'no identity in the file name'
    return Problem(str(file), 'bad_name', f'{what}; a photo is {_PHOTO_PATTERN}')
  return int(match.group(1)), int(match.group(2))


def _listed(paths: list[str]) -> str:
  more = f', ... ({len(paths)} in all)' if len(paths) > _MAX_LISTED else ''
  return ', '.join(paths[:_MAX_LISTED]) + more


def _identity_problems(root: Path, records: list[ImageRecord]) -> list[Problem]:
  """Every sketch identity of a split has a photo of that split (see the module docstring)."""
  photo_ids = {
    split: {r.pid for r in records if r.modality == MODALITY_PHOTO and r.split == split}
    for split in SPLITS
  }
  problems = []
  for split in SPLITS:
    sketches: dict[int, list[str]] = {}
    for r in records:
      if r.modality == MODALITY_SKETCH and r.split == split:
        sketches.setdefault(r.pid, []).append(r.path)
    other = SPLITS[1 - SPLITS.index(split)]
    for pid in sorted(set(sketches) - photo_ids[split]):
      if split == 'train':
        kind, why = 'sketch_without_photo', 'the P×K sampler pairs each sketch with photos'
      else:
        kind, why = 'query_without_gallery', 'a query needs its identity in the gallery'
      hint = (
        f' Photos of {pid:04d} are in photo/{other} instead: check that its sketches belong in '
        f'sketch/<S>/{split} and not sketch/<S>/{other}.'
        if pid in photo_ids[other]
        else ''
      )
      problems.append(
        Problem(
          str(root / 'photo' / split),
          kind,
          f'no photo of identity {pid:04d}, which has {split} sketches '
          f'({_listed(sketches[pid])}); expected at least one {pid:04d}_c<camera>s<sequence>_'
          f'<frame>_<nn>.jpg in this folder ({why}).{hint}',
          pid=pid,
        )
      )
  return problems


def survey(root: str | os.PathLike) -> Survey:
  """Every image of the layout with its parsed labels, and every layout, naming and identity
  problem (all of them, none raised); images are not opened (``checks.check_images`` does)."""
  root = Path(root).expanduser()
  problems: list[Problem] = []
  records: list[ImageRecord] = []

  def need(path: Path, what: str) -> bool:
    if not path.is_dir():
      problems.append(
        Problem(str(path), 'missing_folder', f'missing folder; expected {what}', fix=_LAYOUT_FIX)
      )
    return path.is_dir()

  if not need(root, 'the Market-Sketch-1K dataset root'):
    return Survey([], [], problems, _TRAIN_FOLDERS)
  for split in SPLITS:
    folder = root / 'photo' / split
    if not need(folder, f'the {split} photos (photo/{split}/*.jpg)'):
      continue
    files = _image_files(folder)
    if not files:
      problems.append(
        Problem(
          str(folder), 'no_images', f'no images (*.jpg/*.jpeg/*.png); expected the {split} photos'
        )
      )
    for file in files:
      parsed = _parse(file, MODALITY_PHOTO)
      if isinstance(parsed, Problem):
        problems.append(parsed)
        continue
      rel = file.relative_to(root).as_posix()
      records.append(ImageRecord(rel, parsed[0], MODALITY_PHOTO, '', split, parsed[1]))
  sketch_dir = root / 'sketch'
  if need(sketch_dir, 'the sketches (sketch/<A..F>/{train,query}/*.jpg)'):
    folders = sorted(p for p in sketch_dir.iterdir() if p.is_dir())
    for folder in folders:
      if folder.name not in STYLES:
        problems.append(
          Problem(
            str(folder),
            'unknown_folder',
            f'unexpected folder in sketch/; style folders are named {", ".join(STYLES)}',
          )
        )
    style_dirs = [p for p in folders if p.name in STYLES]
    if not style_dirs:
      problems.append(
        Problem(
          str(sketch_dir),
          'missing_folder',
          f'no style folder; expected at least one of {", ".join(STYLES)} holding train/ '
          f'and/or query/ sketches',
          fix='add the style folders (sketch/A/train/0002.jpg, ...)',
        )
      )
    for style_dir in style_dirs:
      style = style_dir.name
      present = [s for s in SPLITS if (style_dir / s).is_dir()]
      if not present:
        problems.append(
          Problem(
            str(style_dir),
            'empty_style',
            f'style folder has neither train/ nor query/; expected sketch/{style}/train/*.jpg '
            f'and/or query/*.jpg',
          )
        )
      for split in present:
        files = _image_files(style_dir / split)
        if not files:
          problems.append(
            Problem(
              str(style_dir / split),
              'empty_style',
              f'no sketches for style {style} (no *.jpg/*.jpeg/*.png); expected '
              f'sketch/{style}/{split}/<pid>.jpg',
              fix='add the sketches or remove the empty folder',
            )
          )
        for file in files:
          parsed = _parse(file, MODALITY_SKETCH)
          if isinstance(parsed, Problem):
            problems.append(parsed)
            continue
          rel = file.relative_to(root).as_posix()
          records.append(ImageRecord(rel, parsed[0], MODALITY_SKETCH, style, split, 0))
  problems += _identity_problems(root, records)
  problems += duplicate_problems(root, records)
  train = [r for r in records if r.split == 'train']
  return Survey(records, train, problems, _TRAIN_FOLDERS)


def scan_layout(root: str | os.PathLike) -> list[ImageRecord]:
  """Validates the folder layout and lists every image with its parsed labels.

  Raises ``checks.DataError`` (a ValueError; ``MissingDataError``, also a FileNotFoundError, for
  a missing folder) listing every problem :func:`survey` finds, each with its path and fix.
  Image contents are checked by the loader before a TFDS build (``checks.check_images``).
  """
  found = survey(root)
  checks.enforce(DATASET_NAME, Path(root).expanduser(), found, images=False)
  return found.records


class MarketSketch1K(LocalCodePath, tfds.core.GeneratorBasedBuilder):
  """Market-Sketch-1K photos and sketches as raw encoded bytes with identity/style/camera labels."""

  name = DATASET_NAME
  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release: raw bytes, pid, modality, style, camid, path.'}
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
    Request Market-Sketch-1K from its authors (ACM MM 2023, "Beyond Domain Gap: Exploiting
    Subjectivity in Sketch-Based Person Retrieval") and unpack it so that the manual_dir (the
    dataset root, e.g. data/market_sketch_1k) holds photo/train, photo/query,
    sketch/<A..F>/train, sketch/<A..F>/query and, optionally, market_attribute.mat (from
    Market-1501 attributes). Point --config.data.root (or tfds manual_dir) at that folder.
    """

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
      description='Sketch-based person re-identification: hand-drawn sketches in six artist '
      'styles (A-F) and Market-1501 photos.',
      features=image_table_features(styles='A..F', cameras='1..6'),
      supervised_keys=None,
      homepage='https://github.com/Lin-Kayla/subjectivity-sketch-reid',
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    root = Path(dl_manager.manual_dir)
    records = survey(root).records  # the loader enforced the checks; this only re-lists
    return {
      split: self._generate_examples(root, [r for r in records if r.split == split])
      for split in SPLITS
    }

  def _generate_examples(self, root: Path, records: list[ImageRecord]):
    return image_examples(root, records)


def read_attributes(path: str | os.PathLike, pids: np.ndarray) -> dict[int, np.ndarray]:
  """Attribute rows (0-based codes, ``ATTRIBUTE_NAMES`` order) for every pid in ``pids``.

  Identities absent from the .mat get a row of -1.
  """
  path = Path(path)
  try:
    mat = scipy.io.loadmat(path, squeeze_me=True, struct_as_record=False)
  except Exception as err:  # scipy raises several types for a corrupt file
    raise ValueError(
      f'{path}: cannot be read as a MATLAB file ({err}); expected the '
      f'Market-1501 market_attribute.mat.'
    ) from err
  if 'market_attribute' not in mat:
    raise ValueError(
      f"{path}: no variable 'market_attribute'; expected the Market-1501 "
      f'attribute file with train/test structs.'
    )
  known: dict[int, np.ndarray] = {}
  for part in ('train', 'test'):
    struct = getattr(mat['market_attribute'], part, None)
    if struct is None:
      raise ValueError(
        f"{path}: market_attribute has no '{part}' struct; expected fields 'train' and 'test'."
      )
    if not hasattr(struct, 'image_index'):
      raise ValueError(f"{path}: market_attribute.{part} has no 'image_index' field.")
    ids = np.atleast_1d(struct.image_index)
    columns = []
    for name in ATTRIBUTE_NAMES:
      if not hasattr(struct, name):
        raise ValueError(
          f'{path}: market_attribute.{part} lacks the attribute field '
          f"'{name}'; expected all of {', '.join(ATTRIBUTE_NAMES)}."
        )
      codes = np.atleast_1d(getattr(struct, name)).astype(np.int64)
      if codes.shape != ids.shape:
        raise ValueError(
          f'{path}: market_attribute.{part}.{name} has {codes.size} '
          f'entries but image_index has {ids.size}.'
        )
      if codes.size and codes.min() < 1:
        raise ValueError(
          f'{path}: market_attribute.{part}.{name} has code {codes.min()}; '
          f'codes are 1-based (binary 1/2, age 1..4).'
        )
      columns.append(codes - 1)
    rows = (
      np.stack(columns, axis=1).astype(np.int32)
      if ids.size
      else np.zeros((0, len(ATTRIBUTE_NAMES)), np.int32)
    )
    for raw_id, row in zip(ids, rows):
      text = str(raw_id).strip()
      if not text.isdigit():
        raise ValueError(
          f'{path}: market_attribute.{part}.image_index entry {raw_id!r} is not a numeric identity.'
        )
      pid = int(text)
      if pid in known and not np.array_equal(known[pid], row):
        raise ValueError(
          f'{path}: identity {text} appears in train and test with different attributes.'
        )
      known[pid] = row
  missing = np.full((len(ATTRIBUTE_NAMES),), -1, dtype=np.int32)
  return {int(p): known.get(int(p), missing).copy() for p in np.unique(pids)}


def load_market_sketch(
  root: str | os.PathLike, *, cache_dir: str | os.PathLike | None = None, read_batch: int = 1024
) -> SampleTable:
  """Checks ``root``, builds (once per fingerprint) the TFDS dataset and reads it into a table.

  Every problem of the layout, the names, the identities and (before a build) the image files is
  found first and reported at once (``checks.DataError``), before anything is written; warnings
  and notes follow ``checks.CASES``.

  Args:
    root: the dataset root (the TFDS manual_dir).
    cache_dir: where TFDS builds go, one sub-folder per fingerprint; default
      ``~/.cache/sketchreid_jax/tfds``.
    read_batch: examples per tf.data batch while reading (only affects reading speed).
  """
  root = Path(root).expanduser().resolve()
  found = survey(root)
  records = found.records
  data_dir = cache_data_dir(cache_dir, root, [r.path for r in records])
  # Before anything is written; a build of this fingerprint had its images checked already.
  checks.enforce(DATASET_NAME, root, found, images=not is_built(data_dir, MarketSketch1K))
  table_columns = build_and_read(
    MarketSketch1K, root, data_dir, num_images=len(records), splits=SPLITS, read_batch=read_batch
  )

  mat_path = root / ATTRIBUTE_FILE
  if mat_path.is_file():
    attributes = read_attributes(mat_path, table_columns['pid'])
  else:
    warnings.warn(
      f"{mat_path} not found: attributes are None (only the 'attribute' CMAlign "
      f"mask needs them). Put Market-1501's market_attribute.mat there to enable them."
    )
    attributes = None
  return SampleTable(
    **table_columns,
    attributes=attributes,
    attribute_names=ATTRIBUTE_NAMES,
    root=str(root),
    name=DATASET_NAME,
  )
