"""QMUL-ShoeV2 and QMUL-ChairV2 (fine-grained SBIR): TFDS builder (manual_dir) and loader.

Layout read (the distributed archives and ``synthetic_objects`` write the same)::

    <root>/trainA/<stem>_<k>.png    training sketches, several per photo (k: an integer index)
    <root>/trainB/<stem>.png        training photos, one per item
    <root>/testA/<stem>_<k>.png     test sketches: the queries
    <root>/testB/<stem>.png         test photos: the gallery

Protocol ('sbir' of the evaluation package): every test sketch queries all test photos and its
one true match is the photo of its stem; for training every photo is one class (identity).
``load_qmul`` returns a ``SampleTable`` in the Market-Sketch-1K convention, so
``sampler.make_train_set(table, 'A')`` and ``input_pipeline.make_eval_set(table, 'A',
multi_query=False)`` work unchanged. ShoeV2 and ChairV2 share the layout and this reader; the name only labels the
table.

Interpretations chosen:
- A sketch's photo is its name stem up to the LAST ``_<k>`` (k = digits): ChairV2 stems are not
  numeric and may contain underscores, so ``chair_a3f9_2_1`` is sketch 1 of ``chair_a3f9_2``. A
  sketch stem without a trailing ``_<digits>`` (or with nothing before it) is a 'bad_name' error
  naming the file. Photo stems are taken as they are. Matching a sketch to its photo is exact
  (case-sensitive), as the file system is.
- pid = the rank of the photo stem among the sorted (string order) photo stems of trainB/ and
  testB/ together, photos left out below included, so ids are unique across the splits and do not
  change when a sketch is added.
- style: QMUL does not record who drew a sketch (k only numbers the sketches of one photo), so
  every sketch gets the one style 'A' and photos ''; train and test styles are 'A'.
- split: 'train' for trainA/trainB and 'query' for testA/testB ('query' is the test split that
  ``make_eval_set`` reads: its queries are the test sketches, its gallery every test photo).
- camid: 1 for photos, 0 for sketches. ``evaluate_rank`` removes gallery items of the query's
  pid AND camid; no sketch shares a camid with a photo, so no pair is ever removed.
- Every check, and its decision, is in ``checks.CASES``; ``survey`` finds all problems of the
  layout at once, ``checks.check_images`` those of the image files, and the loader refuses the
  dataset with one error listing them all, before anything is written:
  a missing root or split folder, or one without images, is an error; a training sketch whose
  photo is not in trainB/ ('sketch_without_photo') or a test sketch whose photo is not in testB/
  ('query_without_gallery') is an error, naming the folder searched (and the other split's
  folder when the photo is there instead); a stem with files in both splits, compared
  case-insensitively, is an error ('stem_in_both_splits'); the same name stem twice in one
  folder (``x.png`` and ``x.jpg``) is a 'duplicate_name' error.
- A photo without a sketch of its split is left out of the table with a warning
  ('photos_without_sketch'), in both splits: each photo is its own class, so it has no training
  pair and no query, and the gallery stays the photos the test sketches were drawn from.
- Files that are not images (anything not .jpg/.jpeg/.png) and sub-folders of the four folders
  are ignored: they carry no sample. Other files and folders at the root are ignored too.
- Image files are fully decoded before a TFDS build (``checks.check_images``), not on a cached
  load, since the fingerprint (``tfds_cache``: root, relative paths, sizes, mtimes) proves the
  files unchanged. The TFDS examples keep the original encoded bytes.
- Table rows are sorted by (split, modality, style, path), as for Market-Sketch-1K, independent
  of TFDS's record order; attributes are None.
"""

import dataclasses
import os
import re
from pathlib import Path

from sketchreid_jax import tf_setup  # noqa: E402,F401  (hides GPUs from TF before TFDS loads it)

# isort: split

import tensorflow_datasets as tfds  # noqa: E402

from sketchreid_jax.datasets import checks  # noqa: E402
from sketchreid_jax.datasets.checks import Problem, Survey, duplicate_problems  # noqa: E402
from sketchreid_jax.datasets.market_sketch import IMAGE_SUFFIXES  # noqa: E402
from sketchreid_jax.datasets.table import (  # noqa: E402
  MODALITY_PHOTO,
  MODALITY_SKETCH,
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

DATASET_NAMES: tuple[str, ...] = ('qmul_shoev2', 'qmul_chairv2')
DATASET_NAME = 'qmul'  # the TFDS builder's name, shared by both datasets
STYLES: tuple[str, ...] = ('A',)
SKETCH_STYLE = 'A'
TRAIN_SPLIT = 'train'
TEST_SPLIT = 'query'  # the test split input_pipeline.make_eval_set reads
SPLITS: tuple[str, ...] = (TRAIN_SPLIT, TEST_SPLIT)
# split -> (sketch folder, photo folder)
FOLDERS: dict[str, tuple[str, str]] = {
  TRAIN_SPLIT: ('trainA', 'trainB'),
  TEST_SPLIT: ('testA', 'testB'),
}
PHOTO_CAMID = 1
SKETCH_CAMID = 0

_SKETCH_RE = re.compile(r'^(.+)_(\d+)$')
_LAYOUT_FIX = (
  'QMUL-ShoeV2/ChairV2 needs trainA/ (training sketches <stem>_<k>.png), trainB/ (training '
  'photos <stem>.png), testA/ and testB/ under the dataset root'
)
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
  stem: str


def photo_stem(sketch_stem: str) -> str | None:
  """The photo stem of a sketch stem (everything before the last ``_<digits>``), or None."""
  match = _SKETCH_RE.match(sketch_stem)
  return None if match is None else match.group(1)


def _image_files(folder: Path) -> list[Path]:
  return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _listed(paths: list[str]) -> str:
  more = f', ... ({len(paths)} in all)' if len(paths) > _MAX_LISTED else ''
  return ', '.join(paths[:_MAX_LISTED]) + more


def survey(root: str | os.PathLike) -> Survey:
  """Every image the loader would read, with its labels, and every layout, naming and identity
  problem (all of them, none raised); images are not opened (``checks.check_images`` does).

  Photos without a sketch of their split are left out, with a 'photos_without_sketch' warning.
  """
  root = Path(root).expanduser()
  problems: list[Problem] = []
  folders = (FOLDERS[TRAIN_SPLIT][1], FOLDERS[TRAIN_SPLIT][0])
  if not root.is_dir():
    problems.append(
      Problem(
        str(root),
        'missing_folder',
        'missing folder; expected the QMUL-ShoeV2/ChairV2 dataset root',
        fix=_LAYOUT_FIX,
      )
    )
    return Survey([], [], problems, folders)

  def files(split: str, modality: int) -> list[Path]:
    name = FOLDERS[split][0 if modality == MODALITY_SKETCH else 1]
    folder = root / name
    what = 'sketches <stem>_<k>.png' if modality == MODALITY_SKETCH else 'photos <stem>.png'
    kind = 'training' if split == TRAIN_SPLIT else 'test'
    if not folder.is_dir():
      problems.append(
        Problem(
          str(folder),
          'missing_folder',
          f'missing folder; expected the {kind} {what} ({name}/)',
          fix=_LAYOUT_FIX,
        )
      )
      return []
    found = _image_files(folder)
    if not found:
      problems.append(
        Problem(
          str(folder), 'no_images', f'no images (*.png/*.jpg/*.jpeg); expected the {kind} {what}'
        )
      )
    return found

  # split -> photo stem -> files (a stem twice in one folder is reported as a duplicate below).
  photos: dict[str, dict[str, list[Path]]] = {s: {} for s in SPLITS}
  sketches: dict[str, dict[str, list[Path]]] = {s: {} for s in SPLITS}
  for split in SPLITS:
    for file in files(split, MODALITY_PHOTO):
      photos[split].setdefault(file.stem, []).append(file)
    for file in files(split, MODALITY_SKETCH):
      stem = photo_stem(file.stem)
      if stem is None:
        problems.append(
          Problem(
            str(file),
            'bad_name',
            'no sketch index in the file name; a sketch is <photo stem>_<k>.png with k an integer '
            '(e.g. 2429245009_1.png, chair_a3f9_2.png)',
          )
        )
        continue
      sketches[split].setdefault(stem, []).append(file)
  rel = lambda p: p.relative_to(root).as_posix()  # noqa: E731
  stems = sorted(set(photos[TRAIN_SPLIT]) | set(photos[TEST_SPLIT]))
  pid_of = {stem: i for i, stem in enumerate(stems)}

  # casefold(stem) -> (stems, paths) per split: one item's files in both splits is a leak.
  by_split: dict[str, dict[str, tuple[set[str], list[str]]]] = {s: {} for s in SPLITS}
  for split in SPLITS:
    for group in (photos[split], sketches[split]):
      for stem, paths in group.items():
        entry = by_split[split].setdefault(stem.casefold(), (set(), []))
        entry[0].add(stem)
        entry[1].extend(rel(p) for p in paths)
  for key in sorted(set(by_split[TRAIN_SPLIT]) & set(by_split[TEST_SPLIT])):
    (train_stems, train_paths), (test_stems, test_paths) = (by_split[s][key] for s in SPLITS)
    known = sorted(pid_of[s] for s in train_stems | test_stems if s in pid_of)
    problems.append(
      Problem(
        str(root / sorted(test_paths)[0]),
        'stem_in_both_splits',
        f'item {"/".join(sorted(train_stems | test_stems))} has training files '
        f'({_listed(sorted(train_paths))}) and test files ({_listed(sorted(test_paths))}); one '
        f'item would be trained on and tested',
        pid=known[0] if known else None,
      )
    )

  records: list[ImageRecord] = []
  for split in SPLITS:
    sketch_dir, photo_dir = FOLDERS[split]
    other = SPLITS[1 - SPLITS.index(split)]
    for stem in sorted(set(sketches[split]) - set(photos[split])):
      if split == TRAIN_SPLIT:
        kind, why = 'sketch_without_photo', 'each training sketch is paired with its photo'
      else:
        kind, why = 'query_without_gallery', 'a query needs its photo in the gallery'
      hint = (
        f' Its photo is in {FOLDERS[other][1]}/ instead: move the sketches to '
        f'{FOLDERS[other][0]}/ or the photo here.'
        if stem in photos[other]
        else ''
      )
      paths = [rel(p) for p in sketches[split][stem]]
      problems.append(
        Problem(
          str(root / photo_dir),
          kind,
          f'no photo {stem}.png for the {sketch_dir}/ sketch{"es" * (len(paths) > 1)} '
          f'{_listed(paths)}; expected it in this folder ({why}).{hint}',
          pid=pid_of.get(stem),
        )
      )
    for stem, paths in sorted(photos[split].items()):
      if stem not in sketches[split]:
        for p in paths:
          problems.append(
            Problem(
              str(p),
              'photos_without_sketch',
              f'photo {stem!r} has no sketch {sketch_dir}/{stem}_<k>.png; left out of the table',
              fix=f'add its sketches to {sketch_dir}/, or remove the photo to silence the warning',
              pid=pid_of[stem],
            )
          )
        continue
      for p in paths:
        records.append(
          ImageRecord(rel(p), pid_of[stem], MODALITY_PHOTO, '', split, PHOTO_CAMID, stem)
        )
      for p in sketches[split][stem]:
        records.append(
          ImageRecord(
            rel(p), pid_of[stem], MODALITY_SKETCH, SKETCH_STYLE, split, SKETCH_CAMID, stem
          )
        )
  # Per folder: across splits the same stem is already a 'stem_in_both_splits' error.
  for folder in (name for pair in FOLDERS.values() for name in pair):
    problems += duplicate_problems(root, [r for r in records if r.path.startswith(folder + '/')])
  records.sort(key=lambda r: r.path)
  train = [r for r in records if r.split == TRAIN_SPLIT]
  return Survey(records, train, problems, folders)


def scan_layout(root: str | os.PathLike) -> list[ImageRecord]:
  """Validates the folder layout and lists every image with its parsed labels.

  Raises ``checks.DataError`` (a ValueError; ``MissingDataError``, also a FileNotFoundError, for
  a missing folder) listing every problem :func:`survey` finds, then warns about the rest.
  """
  found = survey(root)
  checks.enforce(DATASET_NAME, Path(root).expanduser(), found, images=False)
  return found.records


class QMULSketch(LocalCodePath, tfds.core.GeneratorBasedBuilder):
  """QMUL-ShoeV2/ChairV2 photos and sketches as raw encoded bytes with item labels."""

  name = DATASET_NAME
  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release: raw bytes, pid, modality, style, camid, path.'}
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
    Download QMUL-ShoeV2 or QMUL-ChairV2 (Yu et al., "Sketch Me That Shoe", CVPR 2016; the
    SketchX lab's fine-grained SBIR datasets) and unpack it so that the manual_dir (the dataset
    root, e.g. data/ShoeV2) holds trainA/, trainB/, testA/ and testB/. Point
    --config.data.root (or tfds manual_dir) at that folder.
    """

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
      description='Fine-grained sketch-based image retrieval: several free-hand sketches per '
      'product photo (shoes or chairs); one class per photo.',
      features=image_table_features(styles='A (unrecorded sketcher)', cameras='1'),
      supervised_keys=None,
      homepage='https://sketchx.eecs.qmul.ac.uk/downloads/',
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


def load_qmul(
  root: str | os.PathLike,
  *,
  name: str = 'qmul_shoev2',
  cache_dir: str | os.PathLike | None = None,
  read_batch: int = 1024,
) -> SampleTable:
  """Checks ``root``, builds (once per fingerprint) the TFDS dataset and reads it into a table.

  Every problem of the layout, the names, the items and (before a build) the image files is found
  first and reported at once (``checks.DataError``), before anything is written; warnings follow
  ``checks.CASES``.

  Args:
    root: the dataset root (the TFDS manual_dir) holding trainA/, trainB/, testA/, testB/.
    name: 'qmul_shoev2' or 'qmul_chairv2'; only labels the table and its messages.
    cache_dir: where TFDS builds go, one sub-folder per fingerprint; default
      ``~/.cache/sketchreid_jax/tfds``.
    read_batch: examples per tf.data batch while reading (only affects reading speed).
  """
  if name not in DATASET_NAMES:
    raise ValueError(f'load_qmul: name={name!r}; use one of {", ".join(DATASET_NAMES)}.')
  root = Path(root).expanduser().resolve()
  found = survey(root)
  records = found.records
  data_dir = cache_data_dir(cache_dir, root, [r.path for r in records])
  # Before anything is written; a build of this fingerprint had its images checked already.
  checks.enforce(name, root, found, images=not is_built(data_dir, QMULSketch))
  table_columns = build_and_read(
    QMULSketch, root, data_dir, num_images=len(records), splits=SPLITS, read_batch=read_batch
  )
  return SampleTable(
    **table_columns,
    attributes=None,
    attribute_names=(),
    root=str(root),
    name=name,
  )
