"""Dataset checks: every problem of a dataset folder at once, with one decision per case.

The readers (``market_sketch.survey``, ``pku_sketch.survey``, ``qmul.survey``),
``datasets.load`` (which training calls before its first step) and
``python -m sketchreid_jax.tools.check_data`` share this module, so what check_data reports as an
error is exactly what a load refuses, and what it reports as a warning is exactly what a load
warns about. A check never stops at the first problem: it collects ``Problem`` rows into a
``Report``; ``Report.raise_if_errors`` then refuses the dataset with one error that lists every
offending file and its fix.

Every case has one decision, in ``CASES`` (the README's "Data checks" table is this registry,
printed by ``check_data --cases``):

- error: the load is refused (``DataError``, a ValueError; ``MissingDataError``, also a
  FileNotFoundError, when a required folder is missing). Unreadable images are refused, not
  skipped: a dropped image silently changes the identities, the P×K sampling and the protocol.
- warning: the load goes on without the files named (one ``UserWarning`` per case, with the count
  and every path/identity) or with a stated correction.
- note: handled as documented (converted, resampled), reported by check_data only.

Interpretations chosen:
- An image is checked by a full PIL decode (``Image.verify`` passes a truncated JPEG) and by its
  leading bytes: ``tf.io.decode_image`` (``augment.decode_rgb``) picks its decoder from them,
  whatever the suffix says, and reads JPEG, PNG, GIF and BMP. A file PIL decodes but TF cannot
  (TIFF, WebP, ...) is an error, since training would fail on it mid-epoch.
- Conversions are what ``decode_rgb`` does (``decode_image(channels=3)``), verified by the tests:
  greyscale -> the grey value in all three channels; alpha (RGBA, grey + alpha) -> dropped, not
  composited over a background; palette -> its RGB colours; 16 bits per channel -> the high byte,
  v // 256 (TF's ``convert_image_dtype``; round(v / 257) would differ by at most one level); CMYK
  JPEG -> RGB.
- Duplicate file names: two images with the same name stem (case-insensitive, any suffix) in the
  same modality and style, in the same or another split folder. Across splits that is one image
  in training and test (a leak); within a folder it is one image stored twice. Sketches of
  different styles share names by design (``sketch/A/train/0001.jpg``, ``sketch/C/train/0001.jpg``).
- Identity problems (``pid`` set) are reported once per identity with the path of the folder
  where the missing images were expected; file problems once per file.
- Training identities and "fewer than K" follow ``sampler.make_train_set`` and ``sampler.pk_plan``:
  an identity trains when it has >= 1 training photo and >= 1 training sketch of the training
  styles; an identity with fewer than K images of a modality has them drawn with replacement.
  PKU-Sketch has no fixed training split (it changes per trial), so every identity counts.
- QMUL-ShoeV2/ChairV2 (``qmul``): an identity is one photo stem, so every training identity has
  one photo and, with K > 1, a 'fewer_than_K' note (the photo is drawn K times); ``detect_dataset``
  takes a root with any of trainA/, trainB/, testA/, testB/ for QMUL, ChairV2 when the folder name
  says 'chair' or a photo stem is not numeric, else ShoeV2 (the name only labels the report).
"""

import dataclasses
import importlib
import io
import logging
import os
import warnings
from collections import Counter
from pathlib import Path
from typing import Hashable, Iterable, Sequence

from PIL import Image, UnidentifiedImageError

log = logging.getLogger(__name__)

ERROR, WARNING, NOTE = 'error', 'warning', 'note'
SEVERITIES = (ERROR, WARNING, NOTE)


@dataclasses.dataclass(frozen=True)
class Case:
  """One kind of problem: how bad it is, what it is, what the code does and how to fix it."""

  severity: str
  case: str
  decision: str
  fix: str


CASES: dict[str, Case] = {
  # Layout.
  'missing_folder': Case(
    ERROR,
    'a required folder is missing (root, photo/..., sketch/, styleAnnotation/, QMUL trainA/, '
    'trainB/, testA/, testB/)',
    'refused',
    'point the root at the dataset folder or add the folder (README "Data" gives the layout)',
  ),
  'no_images': Case(
    ERROR,
    'a photo or sketch folder holds no image',
    'refused',
    'copy the images into it',
  ),
  'unknown_folder': Case(
    ERROR,
    'a folder in sketch/ that is not a style letter',
    'refused',
    'rename it to its style letter (A..F) or move it out of sketch/',
  ),
  'empty_style': Case(
    ERROR,
    'an empty style: a style folder without sketches (or without train/ and query/), a style '
    'file listing no id',
    'refused',
    'add the sketches (ids) of that style or remove the empty folder (file)',
  ),
  'bad_name': Case(
    ERROR,
    "a file name without an identity, or not in the layout's pattern (QMUL: a sketch not named "
    '<photo stem>_<k>)',
    'refused, naming the expected pattern',
    'rename the file to the pattern or remove it',
  ),
  'bad_style_file': Case(
    ERROR,
    'PKU: a style file with a bad name or line, a second file for a style, an id in two styles',
    'refused',
    'keep one <style>_<count>.txt per style listing each id once, one per line',
  ),
  'style_count_mismatch': Case(
    WARNING,
    "PKU: the count in a style file's name differs from the ids it lists",
    'the list is used, with a warning',
    'rename the file to <style>_<number of ids>.txt',
  ),
  'id_without_style': Case(
    ERROR,
    'PKU: a sketch whose id is in no style file',
    'refused',
    'add the id to the style file of its artist',
  ),
  'style_id_without_sketch': Case(
    ERROR,
    'PKU: a style file lists an id that has no sketch',
    'refused',
    'add the sketch or remove the id from the style file',
  ),
  'duplicate_name': Case(
    ERROR,
    'duplicate file names across (or within) folders: the same name stem twice in one modality '
    'and style',
    'refused (across splits it leaks test images into training)',
    'keep one copy, in the folder of its split',
  ),
  'stem_in_both_splits': Case(
    ERROR,
    'QMUL: one photo stem (item) with files in a training folder (trainA/, trainB/) and in a test '
    'folder (testA/, testB/), compared case-insensitively',
    'refused (one item would be trained on and tested)',
    'keep all files of the item in the folders of one split',
  ),
  # Identities.
  'sketch_without_photo': Case(
    ERROR,
    'a sketch identity without a photo of its split (training sketch: no training photo; QMUL: '
    'trainA/<stem>_<k> without trainB/<stem>)',
    'refused',
    'add the photos or remove the sketches',
  ),
  'query_without_gallery': Case(
    ERROR,
    'a query identity absent from the gallery (Market: no photo in photo/query; QMUL: '
    'testA/<stem>_<k> without testB/<stem>)',
    'refused (a query without a true match has no rank)',
    'add its gallery photos to photo/query or remove its query sketches',
  ),
  'photos_without_sketch': Case(
    WARNING,
    'an identity with training photos but no sketch (of the training styles); QMUL: a photo of '
    'either split without a sketch of its split',
    'excluded from training with a counted warning listing the paths (Market: by '
    'make_train_set, the photos stay in the table; PKU: by the reader, as it cannot place the '
    'identity in a style); Market gallery identities without a sketch are distractors, by design; '
    'QMUL: left out of the table by the reader, in both splits: each photo is its own class, so '
    'without a sketch it has no training pair and no query, and the gallery stays the photos the '
    'test sketches were drawn from; a warning, not an error, so a copy that lacks a few sketches '
    "(the archive holds 6,648 of ShoeV2's 6,730) still loads",
    'add its sketches, or remove the photos to silence the warning',
  ),
  'fewer_than_K': Case(
    NOTE,
    'a training identity with fewer than K photos or sketches',
    'its images are drawn with replacement (sampler.pk_plan)',
    'nothing to fix; add images to see more distinct ones per batch',
  ),
  # Image files.
  'empty_file': Case(
    ERROR,
    'a zero-byte image file',
    'refused (never skipped)',
    're-copy it from the original dataset or remove it',
  ),
  'not_an_image': Case(
    ERROR,
    'a file named .jpg/.jpeg/.png that is not an image (text, HTML, ...)',
    'refused (never skipped)',
    're-copy it from the original dataset or remove it',
  ),
  'corrupt_image': Case(
    ERROR,
    'a truncated or corrupt image',
    'refused (never skipped)',
    're-copy it from the original dataset or remove it',
  ),
  'unsupported_format': Case(
    ERROR,
    'an image in a format the pipeline cannot decode (TIFF, WebP, ...)',
    'refused',
    'convert it to JPEG or PNG',
  ),
  'converted': Case(
    NOTE,
    'an RGBA, greyscale, palette, CMYK or 16-bit image',
    'converted to 8-bit RGB when decoded: grey replicated to 3 channels, alpha dropped (not '
    'composited), palette expanded, 16-bit v -> v // 256',
    'nothing to fix; convert the file yourself for another rule (e.g. alpha over white)',
  ),
}


@dataclasses.dataclass(frozen=True)
class Problem:
  """One problem: the file or folder, which case of ``CASES``, what is wrong, how to fix it.

  ``fix`` '' means the case's fix; ``pid`` is set for identity problems.
  """

  path: str
  kind: str
  detail: str
  fix: str = ''
  pid: int | None = None

  def __post_init__(self) -> None:
    if self.kind not in CASES:
      raise ValueError(f'Problem kind {self.kind!r} is not one of {sorted(CASES)}.')

  @property
  def severity(self) -> str:
    return CASES[self.kind].severity

  @property
  def advice(self) -> str:
    return self.fix or CASES[self.kind].fix


class DataError(ValueError):
  """A dataset with problems the readers refuse; the message lists them all."""


class MissingDataError(DataError, FileNotFoundError):
  """A ``DataError`` among whose problems is a missing folder."""


@dataclasses.dataclass
class Report:
  """Every problem found in one dataset folder, in the order found."""

  dataset: str
  root: str
  problems: list[Problem] = dataclasses.field(default_factory=list)

  def of(self, severity: str) -> list[Problem]:
    return [p for p in self.problems if p.severity == severity]

  @property
  def errors(self) -> list[Problem]:
    return self.of(ERROR)

  @property
  def warnings(self) -> list[Problem]:
    return self.of(WARNING)

  @property
  def notes(self) -> list[Problem]:
    return self.of(NOTE)

  def by_kind(self) -> dict[str, list[Problem]]:
    """Problems grouped by case, errors first, then warnings, then notes (``CASES`` order)."""
    order = sorted(CASES, key=lambda k: SEVERITIES.index(CASES[k].severity))
    groups = {k: [p for p in self.problems if p.kind == k] for k in order}
    return {k: v for k, v in groups.items() if v}

  def pids(self, kind: str) -> list[int]:
    """The distinct identities of ``kind``'s problems, sorted."""
    return sorted({p.pid for p in self.problems if p.kind == kind and p.pid is not None})

  def format(self, kinds: Iterable[str] | None = None, max_listed: int | None = None) -> str:
    """The problems of ``kinds`` (default all), grouped by case with counts and fixes."""
    groups = self.by_kind()
    lines = []
    for kind in kinds if kinds is not None else groups:
      lines.extend(_format_kind(kind, groups.get(kind, []), max_listed))
    return '\n'.join(lines)

  def summary(self) -> str:
    counts = Counter(p.severity for p in self.problems)
    parts = [f'{counts[s]} {s}{"s" * (counts[s] != 1)}' for s in SEVERITIES]
    return f'{self.dataset} at {self.root}: ' + ', '.join(parts)

  def raise_if_errors(self, max_listed: int | None = None) -> None:
    """Raises ``DataError`` (``MissingDataError`` for a missing folder) listing every error (or
    ``max_listed`` per case), grouped by case with its fix."""
    errors = self.errors
    if not errors:
      return
    kinds = [k for k, v in self.by_kind().items() if CASES[k].severity == ERROR]
    message = (
      f'{self.dataset} at {self.root}: {len(errors)} problem{"s" * (len(errors) > 1)} to fix '
      f'before the data can be used (`python -m sketchreid_jax.tools.check_data {self.root}` '
      f'also lists the warnings and notes):\n' + self.format(kinds, max_listed)
    )
    missing = any(p.kind == 'missing_folder' for p in errors)
    raise (MissingDataError if missing else DataError)(message)

  def warn(self, max_listed: int | None = None) -> None:
    """One UserWarning per warning case, with the count and every path (or ``max_listed``);
    the notes: one log line with their counts."""
    groups = self.by_kind()
    for kind, problems in groups.items():
      if CASES[kind].severity == WARNING:
        text = '\n'.join(_format_kind(kind, problems, max_listed))
        warnings.warn(f'{self.dataset} at {self.root}: {text}', stacklevel=2)
    notes = {k: len(v) for k, v in groups.items() if CASES[k].severity == NOTE}
    if notes:
      log.info(
        '%s at %s: handled as documented: %s (check_data lists them)',
        self.dataset,
        self.root,
        ', '.join(f'{k} {n}' for k, n in notes.items()),
      )


def _format_kind(kind: str, problems: Sequence[Problem], max_listed: int | None) -> list[str]:
  case = CASES[kind]
  ids = {p.pid for p in problems if p.pid is not None}
  count = f'{len(problems)}' + (
    f' ({len(ids)} identit{"y" if len(ids) == 1 else "ies"})' if ids else ''
  )
  lines = [f'[{case.severity}] {kind}: {count}; {case.case}. Decision: {case.decision}.']
  shown = problems if max_listed is None else problems[:max_listed]
  fixes = {p.advice for p in problems}
  for p in shown:
    lines.append(f'  {p.path}: {p.detail}' + (f' Fix: {p.advice}.' if len(fixes) > 1 else ''))
  if len(shown) < len(problems):
    lines.append(f'  ... and {len(problems) - len(shown)} more')
  if len(fixes) == 1:
    lines.append(f'  Fix: {fixes.pop()}.')
  return lines


def cases_markdown() -> str:
  """The decision table of ``CASES`` as markdown (the README's "Data checks" table)."""
  rows = ['| case | kind | decision |', '|---|---|---|']
  for kind, case in CASES.items():
    rows.append(f'| {case.case} | `{kind}` ({case.severity}) | {case.decision} |')
  return '\n'.join(rows)


# --------------------------------------------------------------------------- images

# Leading bytes of the formats tf.io.decode_image (augment.decode_rgb) reads; it chooses the
# decoder from these alone, whatever the suffix says.
_DECODABLE = (
  (b'\xff\xd8\xff', 'JPEG'),
  (b'\x89PNG\r\n\x1a\n', 'PNG'),
  (b'GIF87a', 'GIF'),
  (b'GIF89a', 'GIF'),
  (b'BM', 'BMP'),
)
_PNG_COLOUR = {0: 'greyscale', 2: 'RGB', 3: 'palette', 4: 'greyscale + alpha', 6: 'RGBA'}
# PIL modes decode_rgb turns into RGB, and how.
_MODE_CONVERSION = {
  '1': 'black and white, replicated to 3 channels',
  'L': 'greyscale, replicated to 3 channels',
  'LA': 'greyscale + alpha: alpha dropped, grey replicated to 3 channels',
  'P': 'palette, expanded to its RGB colours',
  'PA': 'palette + alpha: alpha dropped, palette expanded',
  'RGBA': 'RGBA: alpha dropped (not composited)',
  'CMYK': 'CMYK, converted to RGB',
  'I;16': '16-bit greyscale: high byte (v // 256), replicated to 3 channels',
  'I;16B': '16-bit greyscale: high byte (v // 256), replicated to 3 channels',
  'I': '16-bit greyscale: high byte (v // 256), replicated to 3 channels',
}


def _decodable_format(data: bytes) -> str | None:
  return next((name for magic, name in _DECODABLE if data.startswith(magic)), None)


def inspect_image(data: bytes) -> tuple[str, str] | None:
  """(kind, detail) of what ``data`` needs (an error or a 'converted' note), or None if it is an
  8-bit RGB image that ``augment.decode_rgb`` reads as it is."""
  if not data:
    return 'empty_file', 'unreadable image (the file is empty)'
  fmt = _decodable_format(data)
  try:
    with Image.open(io.BytesIO(data)) as img:
      img.load()  # a full decode: verify() passes a JPEG that was cut short
      mode, pil_format = img.mode, img.format
  except UnidentifiedImageError:  # its message names an anonymous BytesIO, not the file
    if fmt is None:
      head = data[:16].decode('ascii', 'replace').strip()
      return 'not_an_image', f'unreadable image (not an image: the file starts with {head!r})'
    return 'corrupt_image', f'unreadable image ({fmt} header but PIL cannot read the rest)'
  except Exception as err:  # noqa: BLE001  (PIL raises several types for a corrupt file)
    return 'corrupt_image', f'unreadable image ({type(err).__name__}: {err})'
  if fmt is None:
    return (
      'unsupported_format',
      f'a {pil_format} image, which tf.io.decode_image (the input pipeline) cannot decode',
    )
  if fmt == 'PNG' and len(data) >= 26 and data[24] == 16:  # IHDR bit depth; PIL hides RGB 16
    colour = _PNG_COLOUR.get(data[25], f'colour type {data[25]}')
    return 'converted', f'16-bit {colour} PNG: high byte (v // 256) of each channel'
  if mode in _MODE_CONVERSION:
    return 'converted', f'{pil_format} {_MODE_CONVERSION[mode]}'
  if mode != 'RGB':
    return 'unsupported_format', f'{pil_format} in PIL mode {mode}, not convertible to RGB here'
  return None


def image_problem(data: bytes) -> str | None:
  """Why ``data`` cannot be used as an image (the detail of an error), or None if it can."""
  found = inspect_image(data)
  if found is None or CASES[found[0]].severity != ERROR:
    return None
  return found[1]


def check_images(root: str | os.PathLike, rel_paths: Iterable[str]) -> list[Problem]:
  """An error or a 'converted' note for every image file (relative to ``root``) that needs one."""
  root = Path(root)
  problems = []
  for rel in rel_paths:
    path = root / rel
    try:
      data = path.read_bytes()
    except OSError as err:
      problems.append(
        Problem(str(path), 'corrupt_image', f'unreadable file ({err.strerror or err})')
      )
      continue
    found = inspect_image(data)
    if found is not None:
      problems.append(Problem(str(path), *found))
  return problems


# --------------------------------------------------------------------------- shared checks


def duplicate_groups(paths: Sequence[str], groups: Sequence[Hashable]) -> list[list[int]]:
  """Index lists (sorted by path) of entries whose file-name stem, case-insensitive, repeats
  within the same group (the module docstring's "duplicate file names")."""
  seen: dict[tuple, list[int]] = {}
  for i, (path, group) in enumerate(zip(paths, groups)):
    stem = os.path.splitext(os.path.basename(str(path)))[0].lower()
    seen.setdefault((group, stem), []).append(i)
  dupes = [sorted(ids, key=lambda i: str(paths[i])) for ids in seen.values() if len(ids) > 1]
  return sorted(dupes, key=lambda ids: str(paths[ids[0]]))


def duplicate_problems(root: Path, records: Sequence) -> list[Problem]:
  """'duplicate_name' errors for records (``path``, ``modality``, ``style``) sharing a name."""
  paths = [r.path for r in records]
  problems = []
  for ids in duplicate_groups(paths, [(r.modality, r.style) for r in records]):
    first = paths[ids[0]]
    for i in ids[1:]:
      problems.append(
        Problem(
          str(root / paths[i]),
          'duplicate_name',
          f'same file name as {first}; one image would be read twice'
          + (' (once for training, once for testing)' if _splits_differ(first, paths[i]) else ''),
          pid=records[i].pid,
        )
      )
  return problems


def _splits_differ(a: str, b: str) -> bool:
  return os.path.dirname(a) != os.path.dirname(b)


def _training_identities(records: Sequence, styles: str | None):
  """pid -> (photo records, sketch records) of the training styles (all styles when None)."""
  by_pid: dict[int, tuple[list, list]] = {}
  for r in records:
    if r.modality == 1 and styles is not None and r.style not in styles:
      continue
    by_pid.setdefault(r.pid, ([], []))[r.modality].append(r)
  return by_pid


def photos_without_sketch(
  root: Path, train_records: Sequence, styles: str | None, sketch_folder: str
) -> list[Problem]:
  """'photos_without_sketch' warnings, one per photo of an identity that has no sketch (of
  ``styles``) among ``train_records``: the photos make_train_set leaves out."""
  problems = []
  which = f' of style{"s" * (len(styles) > 1)} {styles}' if styles else ''
  for pid, (photos, sketches) in sorted(_training_identities(train_records, styles).items()):
    if photos and not sketches:
      for r in photos:
        problems.append(
          Problem(
            str(root / r.path),
            'photos_without_sketch',
            f'identity {pid} has {len(photos)} training photo{"s" * (len(photos) != 1)} but '
            f'no sketch{which} in '
            f'{root / sketch_folder}; excluded from training',
            pid=pid,
          )
        )
  return problems


def fewer_than_k(
  root: Path, train_records: Sequence, styles: str | None, K: int, folders: tuple[str, str]
) -> list[Problem]:
  """'fewer_than_K' notes, one per (training identity, modality) with fewer than K images."""
  problems = []
  for pid, groups in sorted(_training_identities(train_records, styles).items()):
    if not all(groups):
      continue  # not a training identity (see photos_without_sketch)
    for modality, (names, folder) in enumerate(
      zip((('photo', 'photos'), ('sketch', 'sketches')), folders)
    ):
      n = len(groups[modality])
      if n < K:
        problems.append(
          Problem(
            str(root / folder),
            'fewer_than_K',
            f'identity {pid} has {n} training {names[n != 1]}, fewer than K={K}; '
            f'drawn with replacement',
            pid=pid,
          )
        )
  return problems


# --------------------------------------------------------------------------- whole dataset


@dataclasses.dataclass(frozen=True)
class Survey:
  """What a reader's ``survey(root)`` found without opening an image.

  Attributes:
    records: every image the reader would load (``path`` relative to ``root``, ``pid``,
      ``modality``, ``style``).
    train_records: those that can be training images (Market: split 'train'; PKU: all).
    problems: the layout, naming and identity problems found.
    folders: (photo folder, sketch folder) of the training images, for messages.
    extra: reader-specific results (PKU: its ``Layout``).
  """

  records: list
  train_records: list
  problems: list[Problem]
  folders: tuple[str, str]
  extra: object = None


# config.data.dataset -> the reader module with DATASET_NAME, STYLES and survey(root) -> Survey.
# A module serving several names (QMUL) lists them in DATASET_NAMES; its reports carry the name.
READERS: dict[str, str] = {
  'market_sketch': 'sketchreid_jax.datasets.market_sketch',
  'pku_sketch': 'sketchreid_jax.datasets.pku_sketch',
  'qmul_shoev2': 'sketchreid_jax.datasets.qmul',
  'qmul_chairv2': 'sketchreid_jax.datasets.qmul',
}
QMUL_FOLDERS = ('trainA', 'trainB', 'testA', 'testB')
_SUFFIXES = ('.jpg', '.jpeg', '.png')  # the image files every reader takes (others are ignored)


def enforce(dataset: str, root: Path, survey: Survey, *, images: bool) -> None:
  """What a reader does before it builds or loads: raise ``DataError`` listing every error of
  ``survey`` (and of its image files when ``images``), then warn about the warnings."""
  report = Report(dataset, str(root), list(survey.problems))
  if images:
    report.problems += check_images(root, [r.path for r in survey.records])
  report.raise_if_errors()
  report.warn()


def detect_dataset(root: str | os.PathLike) -> str:
  """'pku_sketch' if ``root`` has styleAnnotation/, 'qmul_chairv2' or 'qmul_shoev2' if it has
  any of trainA/, trainB/, testA/, testB/ (see the module docstring for which), 'market_sketch'
  if it has photo/train or photo/query; otherwise an error asking for the name."""
  root = Path(root)
  if (root / 'styleAnnotation').is_dir():
    return 'pku_sketch'
  present = [root / f for f in QMUL_FOLDERS if (root / f).is_dir()]
  if present:
    return 'qmul_chairv2' if _looks_like_chairs(root, present) else 'qmul_shoev2'
  if (root / 'photo' / 'train').is_dir() or (root / 'photo' / 'query').is_dir():
    return 'market_sketch'
  raise MissingDataError(
    f'{root}: neither a Market-Sketch-1K folder (photo/train, photo/query, sketch/<A..F>/), a '
    f'PKU-Sketch folder (sketch/, photo/, styleAnnotation/) nor a QMUL-ShoeV2/ChairV2 folder '
    f'(trainA/, trainB/, testA/, testB/); check the path, or name the layout '
    f'(--dataset {"|".join(READERS)}) to see what is missing.'
  )


def _looks_like_chairs(root: Path, folders: Sequence[Path]) -> bool:
  """ChairV2 if the root's name says so, else if any photo stem is not numeric (ShoeV2's are)."""
  name = root.resolve().name.lower()
  if 'chair' in name or 'shoe' in name:
    return 'chair' in name
  photos = [f for f in folders if f.name.endswith('B')]
  images = (p for folder in photos for p in folder.iterdir() if p.suffix.lower() in _SUFFIXES)
  return any(not p.stem.isdigit() for p in images)


def reader(dataset: str):
  if dataset not in READERS:
    raise ValueError(f'unknown dataset {dataset!r}; known: {sorted(READERS)}')
  return importlib.import_module(READERS[dataset])  # TF/TFDS import is slow: load on use


def check_dataset(
  source,
  *,
  dataset: str | None = None,
  K: int | None = None,
  train_styles: str | None = None,
  images: bool = True,
) -> Report:
  """Every problem of a dataset folder: layout, names, identities, images (all at once).

  Args:
    source: the dataset root, or a data config (``config.data``: ``root``, ``dataset``,
      ``train_styles``).
    dataset: a key of ``READERS``; default the config's, else detected from the layout.
    K: images per identity and modality of a batch (``config.sampler.K``); None = no K check.
    train_styles: sketch styles that train (default the config's, else every style).
    images: also open every image (a full decode; seconds per thousand images).
  """
  if isinstance(source, (str, os.PathLike)):
    root = source
  else:
    root = source.root
    dataset = dataset or source.dataset
    train_styles = train_styles or source.get('train_styles', None)
  root = Path(root).expanduser().resolve()
  dataset = dataset or detect_dataset(root)
  module = reader(dataset)
  survey = module.survey(root)
  name = dataset if dataset in getattr(module, 'DATASET_NAMES', ()) else module.DATASET_NAME
  report = Report(name, str(root), list(survey.problems))
  if images:
    report.problems += check_images(root, [r.path for r in survey.records])
  if train_styles is not None:
    train_styles = ''.join(sorted(set(train_styles) & set(module.STYLES))) or None
  report.problems += photos_without_sketch(
    root, survey.train_records, train_styles, survey.folders[1]
  )
  if K is not None:
    report.problems += fewer_than_k(root, survey.train_records, train_styles, K, survey.folders)
  return report
