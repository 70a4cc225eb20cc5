"""DALNet's precomputed foreground masks, stored beside the dataset (docs/design.md §4 "DAG", source (a)).

The U²-Net of DALNet's DAG is frozen, so running it once per photo and storing the result is
exactly equivalent to running it in every step, and far cheaper. ``tools.precompute_masks`` writes
the masks; the input pipeline reads them here and augments each with its photo.

Layout: the mask of photo ``<root>/<path>`` is the 8-bit greyscale PNG
``<root>/masks/<mask_set>/<path without extension>.png`` (255 = foreground), at the photo's own
size. ``mask_set`` names the network that made them ('u2netp' or 'u2net'), so masks of both can
live side by side.

Mask sources (``config.data.mask_source``): 'none', 'precomputed', 'u2net' (computed in the step,
see ``methods/dalnet.py``) and 'auto' = 'precomputed' when ``<root>/masks/<mask_set>`` exists,
else 'none' with a warning — so the paper presets use real masks when they have been made and
still run on a fresh synthetic set.
"""

import logging
import os

import numpy as np

from sketchreid_jax.datasets.table import MODALITY_PHOTO, SampleTable

log = logging.getLogger(__name__)

MASK_DIR = 'masks'
MASK_SOURCES = ('none', 'precomputed', 'u2net', 'auto')
MASK_SETS = ('u2netp', 'u2net')
PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'


def mask_relpath(photo_path: str, mask_set: str) -> str:
  """The mask's path relative to the dataset root, for a photo path relative to it."""
  return os.path.join(MASK_DIR, mask_set, os.path.splitext(photo_path)[0] + '.png')


def make_command(root: str, mask_set: str) -> str:
  """The command that writes the masks of ``root`` (quoted in every error about missing masks)."""
  return (
    f'python -m sketchreid_jax.tools.precompute_masks --root={root} --model={mask_set} '
    f'--weights=pretrained/{mask_set}.msgpack'
  )


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
  if value not in choices:
    raise ValueError(f'config.data.{name} must be one of {choices}, got {value!r}.')


def resolve_mask_source(data_config) -> str:
  """'auto' -> 'precomputed' or 'none' (logged); other sources are validated and returned."""
  source, mask_set = data_config.mask_source, data_config.mask_set
  _check_choice('mask_source', source, MASK_SOURCES)
  _check_choice('mask_set', mask_set, MASK_SETS)
  if source != 'auto':
    return source
  folder = os.path.join(data_config.root, MASK_DIR, mask_set)
  if os.path.isdir(folder):
    log.info('mask_source=auto: using the precomputed masks in %s', folder)
    return 'precomputed'
  log.warning(
    'mask_source=auto: no precomputed masks in %s, so DALNet runs WITHOUT foreground masks '
    "(not the paper's DAG). Make them with: %s",
    folder,
    make_command(data_config.root, mask_set),
  )
  return 'none'


def load_masks(table: SampleTable, rows: np.ndarray, mask_set: str) -> np.ndarray:
  """Encoded PNG bytes of the masks of the photo ``rows``, as a (len(table),) object array.

  Rows not asked for (and sketch rows) hold b''. Every asked-for mask must exist and be a PNG;
  otherwise FileNotFoundError/ValueError names the files and the command that makes them.
  """
  _check_choice('mask_set', mask_set, MASK_SETS)
  rows = np.unique(np.asarray(rows, np.int64))
  not_photos = rows[table.modality[rows] != MODALITY_PHOTO]
  if not_photos.size:
    raise ValueError(
      f'load_masks: rows {not_photos[:5].tolist()} are sketches; masks exist for photos only.'
    )
  out = np.full(len(table), b'', dtype=object)
  missing, broken = [], []
  for row in rows:
    path = os.path.join(table.root, mask_relpath(str(table.path[row]), mask_set))
    if not os.path.isfile(path):
      missing.append(path)
      continue
    with open(path, 'rb') as f:
      data = f.read()
    if not data.startswith(PNG_SIGNATURE):
      broken.append(path)
    out[row] = data
  if missing:
    raise FileNotFoundError(
      f'{len(missing)} of {len(rows)} precomputed masks are missing under '
      f'{os.path.join(table.root, MASK_DIR, mask_set)} (first: {missing[0]}). Make them with:\n'
      f'  {make_command(table.root, mask_set)}\n'
      'or set --config.data.mask_source=none (no masking) or =u2net (masks computed in the step).'
    )
  if broken:
    raise ValueError(
      f'{len(broken)} mask files are not PNG images (first: {broken[0]}); delete them and run:\n'
      f'  {make_command(table.root, mask_set)}'
    )
  return out
