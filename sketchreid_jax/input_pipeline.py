"""Input pipeline: tf.data iterators over a sample table, and the evaluation sets (docs/design.md §2, §5).

``train_iterator`` turns a P×K plan (sampler.py, which also describes the batch layout) into
decoded, augmented batches (augment.py: the chain, its stateless per-example seeds), so a restart
reproduces the same batches. ``eval_iterator`` decodes, resizes and normalises the rows of an
``EvalSet`` (``make_eval_set``) in order.

Interpretations chosen:
- Fused sketch sets (multi-query training, models/fusion.py): with ``sketch_sets=True`` every
  sketch slot of the plan becomes the slot identity's whole set of training sketches, each member
  augmented with its own seed, padded to the largest set with zero images marked invalid. The
  plan itself is unchanged (its sketch draws only name the identity), so resumption is as usual.
- Eval: query = test sketches (split 'query') of the chosen styles; gallery = every photo of split
  'query' (distractors included). Multi-query groups all query sketches of one identity.
- Eval batches are padded to ``batch_size`` with zero images, ``index`` -1 and ``valid`` False.

The sampler's and the augmentation's names (``pk_plan``, ``make_train_set``, ``decode_rgb``, …) and
the table's ``available_styles`` are re-exported here, where they used to live.
"""

import dataclasses
import warnings
from typing import Iterator, Sequence

from sketchreid_jax.tf_setup import tf  # noqa: E402  (hides GPUs from TF first)

# isort: split

import numpy as np  # noqa: E402

from sketchreid_jax.augment import (  # noqa: E402,F401  (re-exported)
  IMAGENET_MEAN,
  IMAGENET_STD,
  PIXEL_MAX,
  decode_mask,
  decode_rgb,
  example_seed,
  geometric_augment,
  normalize,
  random_erase,
)
from sketchreid_jax.datasets.table import (  # noqa: E402,F401  (available_styles re-exported)
  SampleTable,
  available_styles,
  check_styles,
)
from sketchreid_jax.modality import PHOTO, SKETCH  # noqa: E402
from sketchreid_jax.sampler import (  # noqa: E402,F401  (re-exported)
  SCHEMES,
  TRAIN_SPLIT,
  TrainSet,
  batch_indices,
  host_slice,
  make_train_set,
  pk_plan,
  steps_per_epoch,
)

TEST_SPLIT = 'query'


# --------------------------------------------------------------------------- iterators


def _image_bank(
  table: SampleTable, rows: np.ndarray, column: np.ndarray | None = None
) -> tuple[tf.Tensor, np.ndarray]:
  """The encoded bytes of the distinct ``rows`` as one string tensor + each row's position in it.

  ``column`` (default ``table.image``) is any per-row bytes column, e.g. precomputed masks.
  Only the rows this epoch needs are held, and they come from memory: no file is read again.
  """
  column = table.image if column is None else column
  unique, local = np.unique(rows, return_inverse=True)
  return tf.constant(column[unique].tolist(), dtype=tf.string), local.reshape(rows.shape)


def _check_rows(table: SampleTable, rows: np.ndarray, argument: str) -> None:
  if rows.size and (rows.min() < 0 or rows.max() >= len(table)):
    raise ValueError(
      f'{argument}: row indices must lie in [0, {len(table)}) for this table, '
      f'got range [{rows.min()}, {rows.max()}]; was it built from another table?'
    )


def _finish(
  ds: tf.data.Dataset, batch_size: int, prefetch: int, threads: int = 0
) -> tf.data.Dataset:
  options = tf.data.Options()
  options.deterministic = True  # parallel map must keep the planned order
  if threads:
    # On a small CPU host the accelerator step is XLA on the same cores: bounding tf.data's
    # threads keeps it from contending with the step it only has to keep fed.
    options.threading.private_threadpool_size = threads
  return ds.batch(batch_size, drop_remainder=True).prefetch(prefetch).with_options(options)


def train_iterator(
  table: SampleTable,
  train_set: TrainSet,
  *,
  plan: np.ndarray,
  image_size: tuple[int, int],
  pad: int = 10,
  flip: bool = True,
  random_erasing: float = 0.0,
  seed: int,
  epoch: int,
  start_step: int = 0,
  prefetch: int = 2,
  process_index: int = 0,
  erasing_area: tuple[float, float] = (0.02, 0.4),
  erasing_aspect: tuple[float, float] = (0.3, 3.3),
  erasing_attempts: int = 10,
  threads: int = 0,
  masks: np.ndarray | None = None,
  sketch_sets: bool = False,
) -> Iterator[dict[str, np.ndarray]]:
  """Augmented batches for steps ``start_step..`` of ``plan`` (this host's (steps, p, 2, K) plan).

  Yields ``{'image': float32 (B, H, W, 3), 'label': int32 (B,), 'modality': int32 (B,),
  'index': int32 (B,)}`` with B = 2·p·K in the [photos | sketches] layout (sampler.py).
  ``process_index`` only decorrelates the augmentation of different hosts.

  ``masks`` ((len(table),) PNG bytes per photo row, from ``datasets.masks.load_masks``) adds
  ``'mask': float32 (B, H, W, 1)`` in [0, 1]: each photo's mask resized, cropped and flipped with
  it (not erased: random erasing is a photometric change of the image); sketch rows get ones.

  ``sketch_sets`` (multi-query training) replaces each sketch slot by its identity's whole set of
  training sketches: ``'image'`` then holds the p·K photos only, ``'sketch_set'`` is float32
  (p·K, M, H, W, 3) with M the largest set, and ``'sketch_valid'`` bool (p·K, M) marks the real
  members (padding is zero images). ``label``, ``modality`` and ``index`` keep the 2·p·K layout.
  """
  plan = np.asarray(plan)
  if plan.ndim != 4 or plan.shape[2] != 2:
    raise ValueError(
      f'train_iterator: plan must have shape (steps, p, 2, K) as returned by '
      f'pk_plan/host_slice, got {plan.shape}.'
    )
  steps = plan.shape[0]
  if not 0 <= start_step <= steps:
    raise ValueError(
      f'train_iterator: start_step={start_step} outside [0, {steps}] for a plan of {steps} steps.'
    )
  rows = batch_indices(plan[start_step:]).astype(np.int64)  # (steps - start_step, B)
  _check_rows(table, rows, 'train_iterator plan')
  batch = rows.shape[1]
  labels = train_set.labels[rows]
  if (labels < 0).any():
    raise ValueError(
      'train_iterator: the plan holds rows outside the train set; build the plan '
      'with pk_plan from this train_set.'
    )
  modality = table.modality[rows].astype(np.int32)
  expected = np.repeat([PHOTO, SKETCH], batch // 2)
  if not (modality == expected).all():
    raise ValueError(
      'train_iterator: plan rows do not follow [photos | sketches]; pass the '
      'plan from pk_plan/host_slice unchanged.'
    )
  examples, valid, set_valid = rows, np.ones(rows.shape, bool), None
  if sketch_sets:
    if masks is not None:
      raise ValueError(
        'train_iterator: sketch_sets and masks do not combine (DALNet has no fusion).'
      )
    examples, valid, set_valid = _set_examples(rows, labels, train_set)
  bank, local = _image_bank(table, examples)
  if masks is not None:
    if len(masks) != len(table):
      raise ValueError(
        f'train_iterator: masks has {len(masks)} entries for a table of {len(table)} rows; '
        'build it with datasets.masks.load_masks(table, ...).'
      )
    photo_rows = rows[:, : batch // 2]
    if not all(masks[r] for r in np.unique(photo_rows)):
      raise ValueError(
        'train_iterator: masks lacks some photo rows of this plan; load_masks must be given '
        'every training photo row.'
      )
    mask_bank, _ = _image_bank(table, rows, masks)
  width = examples.shape[1]
  step_ids = np.repeat(np.arange(start_step, steps, dtype=np.int64)[:, None], width, axis=1)
  positions = np.broadcast_to(np.arange(width, dtype=np.int64), examples.shape)
  slices = {
    'local': local,
    'index': rows.astype(np.int32),
    'label': labels.astype(np.int32),
    'modality': modality,
    'step': step_ids,
    'position': positions,
  }
  if sketch_sets:  # one example per photo and per set member; the 2·p·K columns are added back
    example_modality = np.repeat([PHOTO, SKETCH], [batch // 2, width - batch // 2])
    slices = dict(
      slices,
      index=examples.astype(np.int32),
      label=np.zeros(examples.shape, np.int32),
      modality=np.broadcast_to(example_modality.astype(np.int32), examples.shape),
      valid=valid,
    )
  slices = {k: np.ascontiguousarray(v).reshape(-1) for k, v in slices.items()}

  def load(example: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    key = example_seed(seed, epoch, example['step'], process_index, example['position'])
    geometry_seed, erase_seed = tf.unstack(tf.random.experimental.stateless_split(key, 2))
    image = decode_rgb(tf.gather(bank, example['local']))
    if masks is not None:
      is_photo = tf.equal(example['modality'], PHOTO)
      mask = tf.cond(
        is_photo,
        lambda: decode_mask(tf.gather(mask_bank, example['local'])),
        lambda: tf.ones_like(image[..., :1]),
      )
      mask = tf.ensure_shape(mask, [None, None, 1])
      # A mask written at another size than its photo still lines up after the resize below.
      mask = tf.image.resize(mask, tf.shape(image)[:2], method='bilinear')
      stack = geometric_augment(
        tf.concat([image, mask], axis=-1),
        geometry_seed,
        image_size=image_size,
        pad=pad,
        flip=flip,
      )
      image, mask = stack[..., :3], stack[..., 3:]
      mask = tf.where(is_photo, mask, tf.ones_like(mask))  # padding must not mask a sketch
    else:
      image = geometric_augment(image, geometry_seed, image_size=image_size, pad=pad, flip=flip)
    image = normalize(image)
    image = random_erase(
      image,
      erase_seed,
      probability=random_erasing,
      area=erasing_area,
      aspect=erasing_aspect,
      attempts=erasing_attempts,
    )
    out = {
      'image': image,
      'label': example['label'],
      'modality': example['modality'],
      'index': example['index'],
    }
    if masks is not None:
      out['mask'] = mask
    return out

  def load_member(example: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    height, width = image_size
    padding = lambda: {'image': tf.zeros((height, width, 3), tf.float32)}
    return tf.cond(example['valid'], lambda: {'image': load(example)['image']}, padding)

  ds = tf.data.Dataset.from_tensor_slices(slices)
  ds = ds.map(load_member if sketch_sets else load, num_parallel_calls=tf.data.AUTOTUNE)
  batches = _finish(ds, width, prefetch, threads).as_numpy_iterator()
  if not sketch_sets:
    yield from batches
    return
  half = batch // 2
  for i, out in enumerate(batches):
    images = out['image']
    yield {
      'image': images[:half],
      'sketch_set': images[half:].reshape(half, set_valid.shape[-1], *images.shape[1:]),
      'sketch_valid': set_valid[i],
      'label': labels[i].astype(np.int32),
      'modality': modality[i],
      'index': rows[i].astype(np.int32),
    }


def sketch_set_table(train_set: TrainSet) -> tuple[np.ndarray, np.ndarray]:
  """(C, M) table rows of each label's training sketches and (C, M) validity; a short set is padded
  by repeating its own rows (marked invalid, so they load as zero images)."""
  sets = train_set.sketch_index_by_label
  size = max(len(r) for r in sets)
  padded = np.stack([np.resize(r, size) for r in sets]).astype(np.int64)
  valid = np.arange(size)[None, :] < np.array([len(r) for r in sets])[:, None]
  return padded, valid


def _set_examples(rows: np.ndarray, labels: np.ndarray, train_set: TrainSet):
  """Per step: [p·K photo rows | each sketch slot's set, M rows a slot], their validity, and the
  (steps, p·K, M) validity of the sets."""
  half = rows.shape[1] // 2
  padded, valid = sketch_set_table(train_set)
  slot_labels = labels[:, half:]
  steps = rows.shape[0]
  set_rows, set_valid = padded[slot_labels], valid[slot_labels]  # (steps, p·K, M)
  examples = np.concatenate([rows[:, :half], set_rows.reshape(steps, -1)], axis=1)
  member_valid = np.concatenate([np.ones((steps, half), bool), set_valid.reshape(steps, -1)], 1)
  return examples, member_valid, set_valid


def eval_iterator(
  table: SampleTable,
  indices: np.ndarray | Sequence[int],
  *,
  image_size: tuple[int, int],
  batch_size: int,
  prefetch: int = 2,
) -> Iterator[dict[str, np.ndarray]]:
  """Resized, normalised images of ``indices`` in order, in batches of exactly ``batch_size``.

  Yields ``{'image': float32 (batch_size, H, W, 3), 'index': int32, 'valid': bool}``; the last
  batch is padded with zero images, index -1 and valid False, so shapes stay static for jit.
  """
  rows = np.asarray(indices, dtype=np.int64).reshape(-1)
  if rows.size == 0:
    raise ValueError('eval_iterator: no indices to evaluate; check the EvalSet it came from.')
  if batch_size < 1:
    raise ValueError(f'eval_iterator: batch_size must be >= 1, got {batch_size}.')
  _check_rows(table, rows, 'eval_iterator indices')
  bank, local = _image_bank(table, rows)
  padding = -len(rows) % batch_size
  slices = {
    'local': np.concatenate([local, np.zeros(padding, np.int64)]),
    'index': np.concatenate([rows, -np.ones(padding, np.int64)]).astype(np.int32),
    'valid': np.concatenate([np.ones(len(rows), bool), np.zeros(padding, bool)]),
  }
  height, width = image_size

  def load(example: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    def real() -> tf.Tensor:
      image = decode_rgb(tf.gather(bank, example['local']))
      return normalize(tf.image.resize(image, (height, width), method='bilinear'))

    image = tf.cond(example['valid'], real, lambda: tf.zeros((height, width, 3), tf.float32))
    return {'image': image, 'index': example['index'], 'valid': example['valid']}

  ds = tf.data.Dataset.from_tensor_slices(slices).map(load, num_parallel_calls=tf.data.AUTOTUNE)
  yield from _finish(ds, batch_size, prefetch).as_numpy_iterator()


# --------------------------------------------------------------------------- eval set


@dataclasses.dataclass(frozen=True)
class EvalSet:
  """Query sketches and gallery photos of one test setting (row indices into the table).

  ``query_groups``/``group_pids`` are set for multi-query only: ``query_groups[i]`` is the group
  of query row i and ``group_pids[g]`` the identity of group g.
  """

  test_styles: str
  multi_query: bool
  query_index: np.ndarray
  query_pids: np.ndarray
  query_camids: np.ndarray
  query_styles: np.ndarray
  gallery_index: np.ndarray
  gallery_pids: np.ndarray
  gallery_camids: np.ndarray
  query_groups: np.ndarray | None = None
  group_pids: np.ndarray | None = None

  @property
  def num_queries(self) -> int:
    """Queries as the protocol counts them: groups for multi-query, sketches otherwise."""
    return len(self.group_pids) if self.multi_query else len(self.query_index)

  def group_first(self) -> np.ndarray:
    """Multi-query: the position in ``query_index`` of each group's first sketch (groups are
    numbered 0..n-1 by ``make_eval_set``)."""
    return np.unique(self.query_groups, return_index=True)[1]


def make_eval_set(table: SampleTable, test_styles: str, *, multi_query: bool) -> EvalSet:
  """Test sketches of ``test_styles`` vs every photo of split 'query' (docs/design.md §5).

  Refuses an empty query set (a style without test sketches; the error names the styles and
  those available) and duplicate file names among the rows it would rank (the same name stem in
  one modality and style, e.g. a gallery photo also in training: ``checks.duplicate_groups``).
  """
  from sketchreid_jax.datasets.checks import duplicate_groups

  styles = check_styles(table, test_styles, TEST_SPLIT, 'test_styles')
  in_split = table.split == TEST_SPLIT
  query = np.flatnonzero(in_split & (table.modality == SKETCH) & np.isin(table.style, list(styles)))
  gallery = np.flatnonzero(in_split & (table.modality == PHOTO))
  if not len(gallery):
    raise ValueError(
      f'make_eval_set: {table.name or "the dataset"} at {table.root} has no '
      f"photo in split '{TEST_SPLIT}' (Market-Sketch-1K: {table.root}/photo/query/)."
    )
  keys = list(zip(table.modality.tolist(), table.style.tolist()))
  ranked = np.zeros(len(table), bool)
  ranked[query] = ranked[gallery] = True
  dupes = [ids for ids in duplicate_groups(table.path, keys) if ranked[ids].any()]
  if dupes:
    listed = '; '.join(' = '.join(table.path[ids]) for ids in dupes)
    raise ValueError(
      f'make_eval_set(test_styles={styles!r}): {len(dupes)} file name(s) of '
      f'{table.name or "the dataset"} at {table.root} occur more than once in one modality and '
      f'style, so one image would be ranked twice or was also trained on: {listed}. Keep one '
      f'copy, in the folder of its split (`python -m sketchreid_jax.tools.check_data '
      f'{table.root or "<root>"}` lists every such file).'
    )
  unmatched = np.setdiff1d(table.pid[query], table.pid[gallery])
  if len(unmatched):
    warnings.warn(
      f'make_eval_set(test_styles={styles!r}): {len(unmatched)} query identities '
      f'have no gallery photo and will count as unmatched: {unmatched.tolist()}.'
    )
  groups = group_pids = None
  if multi_query:
    group_pids, groups = np.unique(table.pid[query], return_inverse=True)
    groups = groups.astype(np.int32)
  return EvalSet(
    test_styles=styles,
    multi_query=multi_query,
    query_index=query,
    query_pids=table.pid[query],
    query_camids=table.camid[query],
    query_styles=table.style[query],
    gallery_index=gallery,
    gallery_pids=table.pid[gallery],
    gallery_camids=table.camid[gallery],
    query_groups=groups,
    group_pids=group_pids,
  )


def train_batches(
  config,
  table: SampleTable,
  train_set: TrainSet,
  plan: np.ndarray,
  *,
  epoch: int,
  start_step: int = 0,
  masks=None,
  process_index: int = 0,
) -> Iterator[dict[str, np.ndarray]]:
  """:func:`train_iterator` with its settings read from ``config`` (its data and seed)."""
  d = config.data
  return train_iterator(
    table,
    train_set,
    plan=plan,
    image_size=tuple(d.image_size),
    pad=d.pad,
    flip=d.flip,
    random_erasing=d.random_erasing,
    seed=config.seed,
    epoch=epoch,
    start_step=start_step,
    prefetch=d.prefetch,
    threads=d.threads,
    process_index=process_index,
    masks=masks,
    sketch_sets=bool(config.model.sketch_fusion),
  )
