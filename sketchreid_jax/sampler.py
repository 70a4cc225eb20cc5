"""The P×K sampler: which table rows make up each training batch, as numpy plans (docs/design.md §2).

``make_train_set`` picks the training identities for the chosen sketch styles; ``pk_plan`` draws,
from (seed, epoch) alone, an epoch of batches as row indices of the table; ``host_slice`` gives each
host its identities; ``batch_indices`` lays a batch's rows out as below. Plans are numpy only (no
TensorFlow here); ``input_pipeline.train_iterator`` turns them into images.

Batch layout (what the model and the losses assume)::

    rows [0, p·K)        photos,   identity-contiguous: id_0 × K, id_1 × K, ...
    rows [p·K, 2·p·K)    sketches, same identity order:  id_0 × K, id_1 × K, ...

so ``label[i] == label[i + p·K]`` and ``modality`` is 0 then 1 (p = identities on this host).

Interpretations chosen:
- Training identities = those with >= 1 training photo AND >= 1 training sketch in the chosen
  styles (an identity without one modality cannot form a cross-modal pair); the others are
  dropped with one warning. Labels are 0..C-1 in sorted original-pid order.
- ``steps_per_epoch`` counts the photos and sketches of the training identities only.
- Sampler ``scheme='cycle'`` (ours, the default): identities are drawn by walking per-epoch
  permutations; when a batch straddles two permutations, the identities already in that batch are
  moved to the end of the new permutation, so a batch never repeats an identity and every identity
  still appears once per cycle. Per-identity images are drawn without replacement when the
  identity has >= K, with replacement otherwise. ``scheme='release'``: the MM'23 release's
  ``IdentitySampler``, P distinct identities drawn afresh for every batch and K photos and K
  sketches of each always with replacement (so an identity may be missed in an epoch and an image
  repeated in a batch). Both draw from ``np.random.default_rng([seed, epoch])``.
"""

import dataclasses
import warnings

import numpy as np

from sketchreid_jax.datasets.table import SampleTable, attribute_matrix, check_styles
from sketchreid_jax.modality import PHOTO, SKETCH

TRAIN_SPLIT = 'train'


# --------------------------------------------------------------------------- train set


@dataclasses.dataclass(frozen=True)
class TrainSet:
  """Training identities, their labels and their image rows for one choice of sketch styles.

  Attributes:
    train_styles: the sketch styles used, sorted letters ('AC').
    pids: (C,) int32 original pid of each label (sorted, so label = rank of pid).
    labels: (len(table),) int32 label of each table row, -1 for rows outside the train set.
    photo_index_by_label: C arrays of table row indices (training photos of that label).
    sketch_index_by_label: C arrays of table row indices (training sketches, chosen styles).
    attributes: (C, A) int attribute codes per label (-1 unknown), or None.
  """

  train_styles: str
  pids: np.ndarray
  labels: np.ndarray
  photo_index_by_label: list[np.ndarray]
  sketch_index_by_label: list[np.ndarray]
  attributes: np.ndarray | None

  @property
  def num_classes(self) -> int:
    return len(self.pids)

  @property
  def num_photos(self) -> int:
    return int(sum(len(r) for r in self.photo_index_by_label))

  @property
  def num_sketches(self) -> int:
    return int(sum(len(r) for r in self.sketch_index_by_label))


def _group_rows(rows: np.ndarray, row_pids: np.ndarray, pids: np.ndarray) -> list[np.ndarray]:
  """For each pid in ``pids`` (sorted), the entries of ``rows`` whose pid matches, in row order."""
  order = np.argsort(row_pids, kind='stable')
  sorted_pids = row_pids[order]
  starts = np.searchsorted(sorted_pids, pids, side='left')
  ends = np.searchsorted(sorted_pids, pids, side='right')
  return [rows[order[s:e]] for s, e in zip(starts, ends)]


def make_train_set(table: SampleTable, train_styles: str) -> TrainSet:
  """Training photos + training sketches of ``train_styles``, relabelled 0..C-1 by sorted pid."""
  styles = check_styles(table, train_styles, TRAIN_SPLIT, 'train_styles')
  in_split = table.split == TRAIN_SPLIT
  photo_rows = np.flatnonzero(in_split & (table.modality == PHOTO))
  sketch_rows = np.flatnonzero(
    in_split & (table.modality == SKETCH) & np.isin(table.style, list(styles))
  )
  photo_pids = np.unique(table.pid[photo_rows])
  sketch_pids = np.unique(table.pid[sketch_rows])
  pids = np.intersect1d(photo_pids, sketch_pids).astype(np.int32)
  sketch_only = np.setdiff1d(sketch_pids, photo_pids)
  photo_only = np.setdiff1d(photo_pids, sketch_pids)
  if len(sketch_only) or len(photo_only):
    warnings.warn(
      f'make_train_set(train_styles={styles!r}): excluding {len(sketch_only) + len(photo_only)} '
      f"identities that lack one modality in split '{TRAIN_SPLIT}': "
      f'{len(sketch_only)} with sketches but no photo {sketch_only.tolist()}, '
      f'{len(photo_only)} with photos but no sketch of these styles {photo_only.tolist()}.'
    )
  if not len(pids):
    raise ValueError(
      f'make_train_set(train_styles={styles!r}): no identity of '
      f'{table.name or "the dataset"} at {table.root} has both a training photo '
      f'and a training sketch of these styles; check the data or the styles.'
    )
  photo_rows = photo_rows[np.isin(table.pid[photo_rows], pids)]
  sketch_rows = sketch_rows[np.isin(table.pid[sketch_rows], pids)]
  labels = np.full(len(table), -1, dtype=np.int32)
  for rows in (photo_rows, sketch_rows):
    labels[rows] = np.searchsorted(pids, table.pid[rows]).astype(np.int32)
  return TrainSet(
    train_styles=styles,
    pids=pids,
    labels=labels,
    photo_index_by_label=_group_rows(photo_rows, table.pid[photo_rows], pids),
    sketch_index_by_label=_group_rows(sketch_rows, table.pid[sketch_rows], pids),
    attributes=attribute_matrix(table, pids),
  )


# --------------------------------------------------------------------------- P×K plan


def steps_per_epoch(train_set: TrainSet, P: int, K: int, *, fused: bool = False) -> int:
  """⌊max(#photos, #sketch samples) / (P·K)⌋ + 1 batches per epoch, the release's count.

  A sketch sample is one sketch, or with ``fused`` one identity's set (the release's multi-query
  training set holds one entry per identity).
  """
  sketches = train_set.num_classes if fused else train_set.num_sketches
  return max(train_set.num_photos, sketches) // (P * K) + 1


def _identity_schedule(
  rng: np.random.Generator, num_classes: int, steps: int, P: int
) -> np.ndarray:
  """(steps, P) labels: per-epoch permutations walked in order, no repeat within a batch."""
  out = np.empty((steps, P), dtype=np.int64)
  queue = rng.permutation(num_classes)
  pos = 0
  for step in range(steps):
    for slot in range(P):
      if pos == num_classes:
        fresh = rng.permutation(num_classes)
        in_batch = np.isin(fresh, out[step, :slot])
        # Identities already in this batch wait until the end of the new cycle.
        queue = np.concatenate([fresh[~in_batch], fresh[in_batch]])
        pos = 0
      out[step, slot] = queue[pos]
      pos += 1
  return out


def _draw(rng: np.random.Generator, rows: np.ndarray, K: int) -> np.ndarray:
  if len(rows) >= K:
    return rows[rng.permutation(len(rows))[:K]]
  return rows[rng.integers(0, len(rows), size=K)]


def _release_schedule(rng: np.random.Generator, num_classes: int, steps: int, P: int):
  """(steps, P) labels: P distinct identities drawn afresh for every batch (the release)."""
  return np.stack([rng.choice(num_classes, P, replace=False) for _ in range(steps)])


def _draw_with_replacement(rng: np.random.Generator, rows: np.ndarray, K: int) -> np.ndarray:
  return rows[rng.integers(0, len(rows), size=K)]


# config.sampler.scheme -> (identity schedule, per-identity draw); the module docstring compares them
SCHEMES = {
  'cycle': (_identity_schedule, lambda rng, rows, K: _draw(rng, rows, K)),
  'release': (_release_schedule, _draw_with_replacement),
}


def pk_plan(
  train_set: TrainSet,
  *,
  P: int,
  K: int,
  epoch: int,
  seed: int,
  scheme: str = 'cycle',
  fused: bool = False,
) -> np.ndarray:
  """(steps, P, 2, K) table row indices: [:, :, 0] photos, [:, :, 1] sketches of each identity.

  Deterministic in (seed, epoch): ``np.random.default_rng([seed, epoch])``. ``scheme`` is
  ``config.sampler.scheme``; ``fused`` counts the epoch's steps as ``steps_per_epoch`` does.
  """
  if scheme not in SCHEMES:
    raise ValueError(f'pk_plan: scheme must be one of {sorted(SCHEMES)}, got {scheme!r}.')
  if P < 1 or K < 1:
    raise ValueError(f'pk_plan: P and K must be >= 1, got P={P}, K={K}.')
  if train_set.num_classes < P:
    raise ValueError(
      f'pk_plan: P={P} identities per batch but the train set (styles '
      f'{train_set.train_styles!r}) has only {train_set.num_classes}; lower '
      f'config P to at most {train_set.num_classes} or train on more styles.'
    )
  schedule, draw = SCHEMES[scheme]
  rng = np.random.default_rng([seed, epoch])
  steps = steps_per_epoch(train_set, P, K, fused=fused)
  ids = schedule(rng, train_set.num_classes, steps, P)
  plan = np.empty((steps, P, 2, K), dtype=np.int32)
  for step in range(steps):
    for slot, label in enumerate(ids[step]):
      plan[step, slot, 0] = draw(rng, train_set.photo_index_by_label[label], K)
      plan[step, slot, 1] = draw(rng, train_set.sketch_index_by_label[label], K)
  return plan


def host_slice(plan: np.ndarray, process_index: int, process_count: int) -> np.ndarray:
  """This host's contiguous P/process_count identities of every batch: (steps, P/n, 2, K)."""
  P = plan.shape[1]
  if process_count < 1 or not 0 <= process_index < process_count:
    raise ValueError(
      f'host_slice: need 0 <= process_index < process_count, got '
      f'{process_index} and {process_count}.'
    )
  if P % process_count:
    raise ValueError(
      f'host_slice: P={P} identities per batch do not split over '
      f'{process_count} hosts; set P to a multiple of the host count.'
    )
  per_host = P // process_count
  return plan[:, process_index * per_host : (process_index + 1) * per_host]


def batch_indices(step_plan: np.ndarray) -> np.ndarray:
  """(..., p, 2, K) -> (..., 2·p·K): [photos of id_0..id_p-1 | sketches of id_0..id_p-1]."""
  step_plan = np.asarray(step_plan)
  if step_plan.ndim < 3 or step_plan.shape[-2] != 2:
    raise ValueError(f'batch_indices expects (..., p, 2, K), got shape {step_plan.shape}.')
  lead = step_plan.shape[:-3]
  photos = step_plan[..., 0, :].reshape(*lead, -1)
  sketches = step_plan[..., 1, :].reshape(*lead, -1)
  return np.concatenate([photos, sketches], axis=-1)
