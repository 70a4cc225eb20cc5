"""The in-memory sample table every dataset reader produces (docs/design.md §2, §5).

One row per image, as parallel numpy arrays, so the input pipeline can plan batches with plain
numpy indexing and hand the still-encoded bytes to tf.data. The table is dataset-agnostic:
Market-Sketch-1K, PKU-Sketch and the synthetic layouts all produce it.

Interpretations:
- ``image`` holds the original encoded file bytes (JPEG/PNG, colour or greyscale); decoding is the
  pipeline's job so that nothing is re-encoded and memory stays at the size of the files.
- ``modality`` is ``modality.PHOTO`` (0) for photos and ``modality.SKETCH`` (1) for sketches.
- ``style`` is '' for photos and the artist letter for sketches.
- ``attributes`` is keyed by the ORIGINAL pid (not a training label), because labels depend on the
  chosen training styles while attributes do not.
"""

import dataclasses
from collections import Counter
from typing import Mapping, Sequence

import numpy as np

from sketchreid_jax.modality import PHOTO, SKETCH

# The readers' names for the ids of sketchreid_jax.modality.
MODALITY_PHOTO = PHOTO
MODALITY_SKETCH = SKETCH

# Name, required dtype kind ('O' object, 'i' signed int, 'U' str) and, for ints, the exact dtype.
_COLUMNS: tuple[tuple[str, str, type | None], ...] = (
  ('image', 'O', None),
  ('pid', 'i', np.int32),
  ('modality', 'i', np.int8),
  ('style', 'U', None),
  ('split', 'U', None),
  ('camid', 'i', np.int32),
  ('path', 'U', None),
)


@dataclasses.dataclass(frozen=True)
class SampleTable:
  """Parallel per-image arrays plus dataset-level metadata.

  Attributes:
    image: (N,) object array of raw encoded bytes.
    pid: (N,) int32 original identity.
    modality: (N,) int8, 0 = photo, 1 = sketch.
    style: (N,) str, '' for photos, artist letter for sketches.
    split: (N,) str, 'train' or 'query' (or any split name a reader uses).
    camid: (N,) int32 camera id (sketches use 0).
    path: (N,) str, file path relative to ``root``.
    attributes: pid -> (A,) int array of 0-based attribute codes (-1 = unknown), or None.
    attribute_names: names of the A attribute columns (empty when there are none).
    root: dataset root the paths are relative to.
    name: dataset name, for messages and reports.
  """

  image: np.ndarray
  pid: np.ndarray
  modality: np.ndarray
  style: np.ndarray
  split: np.ndarray
  camid: np.ndarray
  path: np.ndarray
  attributes: dict[int, np.ndarray] | None = None
  attribute_names: tuple[str, ...] = ()
  root: str = ''
  name: str = ''

  def __post_init__(self) -> None:
    n = None
    for column, kind, dtype in _COLUMNS:
      value = getattr(self, column)
      if not isinstance(value, np.ndarray) or value.ndim != 1:
        raise TypeError(
          f'SampleTable.{column} must be a 1-D numpy array, got {type(value).__name__}'
          f'{getattr(value, "shape", "")}; build the column with np.asarray(...).'
        )
      if value.dtype.kind != kind or (dtype is not None and value.dtype != dtype):
        want = np.dtype(dtype).name if dtype is not None else {'O': 'object', 'U': 'str'}[kind]
        raise TypeError(
          f'SampleTable.{column} has dtype {value.dtype}, expected {want}; '
          f'convert it with .astype(...) when building the table.'
        )
      if n is None:
        n = len(value)
      elif len(value) != n:
        raise ValueError(
          f'SampleTable columns differ in length: {column} has {len(value)} rows, '
          f"'image' has {n}; every column needs one entry per image."
        )
    if self.attributes is not None:
      widths = {np.shape(v) for v in self.attributes.values()}
      if widths and widths != {(len(self.attribute_names),)}:
        raise ValueError(
          f'SampleTable.attributes rows have shapes {sorted(widths)} but there are '
          f'{len(self.attribute_names)} attribute_names; each row needs one code per name.'
        )

  def __len__(self) -> int:
    return len(self.pid)

  def select(self, mask_or_indices: np.ndarray | Sequence[int]) -> 'SampleTable':
    """Rows picked by a boolean mask (length N) or by integer indices (any order, repeats ok)."""
    sel = np.asarray(mask_or_indices)
    if sel.dtype == bool:
      if sel.shape != (len(self),):
        raise ValueError(
          f'SampleTable.select: boolean mask has shape {sel.shape}, expected ({len(self)},).'
        )
    elif sel.size == 0:
      sel = sel.astype(np.int64)
    elif sel.dtype.kind not in 'iu':
      raise TypeError(
        f'SampleTable.select takes a boolean mask or integer indices, got dtype {sel.dtype}.'
      )
    columns = {column: getattr(self, column)[sel] for column, _, _ in _COLUMNS}
    return dataclasses.replace(self, **columns)

  def summary(self) -> str:
    """Human-readable counts of images and identities per split, modality and style."""
    lines = [
      f'{self.name or "dataset"} at {self.root or "?"}: {len(self)} images, '
      f'{len(np.unique(self.pid))} identities'
    ]
    keys = Counter(zip(self.split.tolist(), self.modality.tolist(), self.style.tolist()))
    for split, modality, style in sorted(keys):
      rows = (self.split == split) & (self.modality == modality) & (self.style == style)
      kind = 'photo' if modality == PHOTO else f'sketch {style}'
      lines.append(
        f'  {split:<6} {kind:<9} {int(rows.sum()):>7} images '
        f'{len(np.unique(self.pid[rows])):>6} ids'
      )
    if self.attributes is None:
      lines.append('  attributes: none')
    else:
      lines.append(f'  attributes: {len(self.attribute_names)} for {len(self.attributes)} ids')
    return '\n'.join(lines)


def available_styles(table: SampleTable, split: str) -> str:
  """The sketch styles that have at least one image in ``split``, sorted, as one string."""
  mask = (table.split == split) & (table.modality == SKETCH)
  return ''.join(sorted(set(table.style[mask].tolist())))


def check_styles(table: SampleTable, styles: str, split: str, argument: str) -> str:
  """``styles`` as sorted distinct letters, or a ValueError naming the ones without a sketch in
  ``split`` and those available; ``argument`` names the option in the message ('train_styles')."""
  if not isinstance(styles, str) or not styles:
    raise ValueError(
      f"{argument} must be a non-empty string of style letters such as 'A' or "
      f"'ABCDEF', got {styles!r}."
    )
  wanted = ''.join(sorted(set(styles)))
  have = available_styles(table, split)
  missing = [s for s in wanted if s not in have]
  if missing:
    folders = ', '.join(f'{table.root}/sketch/{s}/{split}/' for s in missing)
    raise ValueError(
      f'{argument}={styles!r}: no sketches of style(s) {"".join(missing)} in split '
      f"'{split}' of {table.name or 'the dataset'} (Market-Sketch-1K layout: searched "
      f'{folders}; PKU-Sketch lists styles in styleAnnotation/; QMUL-ShoeV2/ChairV2 record no '
      f"sketcher, so all their sketches are style 'A'). Styles available in '{split}': "
      f'{have or "none"}; choose among those.'
    )
  return wanted


def attribute_matrix(table: SampleTable, pids: np.ndarray) -> np.ndarray | None:
  """(len(pids), A) int array of the attribute rows of ``pids`` (-1 rows for unknown ids)."""
  if table.attributes is None:
    return None
  unknown = np.full((len(table.attribute_names),), -1, dtype=np.int32)
  rows = [np.asarray(table.attributes.get(int(p), unknown), dtype=np.int32) for p in pids]
  return np.stack(rows) if rows else np.zeros((0, len(table.attribute_names)), np.int32)


def make_table(rows: Sequence[Mapping[str, object]], **meta) -> SampleTable:
  """Builds a table from per-image dicts with the column names (handy for readers and tests)."""
  columns: dict[str, np.ndarray] = {}
  for column, kind, dtype in _COLUMNS:
    values = [row[column] for row in rows]
    if kind == 'O':
      arr = np.empty(len(values), dtype=object)
      arr[:] = values
    elif kind == 'U':
      arr = np.asarray(values, dtype=str) if values else np.zeros((0,), dtype='<U1')
    else:
      arr = np.asarray(values, dtype=dtype)
    columns[column] = arr
  return SampleTable(**columns, **meta)
