"""Input pipeline: numpy P×K batch plans, tf.data decode/augment, eval sets (DESIGN §2, §4, §5).

Train side. ``make_train_set`` picks the training identities for the chosen sketch styles;
``pk_plan`` draws, from (seed, epoch) alone, an epoch of batches as row indices of the table;
``host_slice`` gives each host its identities; ``train_iterator`` decodes and augments with
stateless random ops seeded per example, so a restart reproduces the same batches.

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
- Fused sketch sets (multi-query training, models/fusion.py): with ``sketch_sets=True`` every
  sketch slot of the plan becomes the slot identity's whole set of training sketches, each member
  augmented with its own seed, padded to the largest set with zero images marked invalid. The
  plan itself is unchanged (its sketch draws only name the identity), so resumption is as usual.
- Augmentation order (DESIGN §4): bilinear resize to image_size -> zero-pad ``pad`` pixels (black
  in pixel space, as torchvision's Pad before Normalize) -> random crop back -> random horizontal
  flip (p = 0.5) -> ImageNet normalisation -> random erasing. Erased pixels are set to 0 in
  normalised space, i.e. the ImageNet mean colour; the aspect ratio is drawn uniformly in the range
  (as the re-ID baselines do), with a fixed number of attempts; no valid attempt = no erasing.
- The per-example augmentation seed is folded from (seed, epoch, step, process_index, position in
  the host batch), so two hosts never share draws and a resumed run (``start_step``) reproduces
  the same images exactly.
- Geometric augmentation is ``geometric_augment`` on an (H, W, C) stack of any C, so a mask
  channel appended to the image is resized, cropped and flipped with it (DALNet's precomputed
  masks).
- Eval: query = test sketches (split 'query') of the chosen styles; gallery = every photo of split
  'query' (distractors included). Multi-query groups all query sketches of one identity.
- Eval batches are padded to ``batch_size`` with zero images, ``index`` -1 and ``valid`` False.
"""

import dataclasses
import warnings
from typing import Iterator, Sequence

from sketchreid_jax.tf_setup import tf  # noqa: E402  (hides GPUs from TF first)

import numpy as np  # noqa: E402

from sketchreid_jax.datasets.table import (
  MODALITY_PHOTO,
  MODALITY_SKETCH,  # noqa: E402
  SampleTable,
  attribute_matrix,
)

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
PIXEL_MAX = 255.0

TRAIN_SPLIT = "train"
TEST_SPLIT = "query"


# --------------------------------------------------------------------------- styles


def available_styles(table: SampleTable, split: str) -> str:
  """The sketch styles that have at least one image in ``split``, sorted, as one string."""
  mask = (table.split == split) & (table.modality == MODALITY_SKETCH)
  return "".join(sorted(set(table.style[mask].tolist())))


def _check_styles(table: SampleTable, styles: str, split: str, argument: str) -> str:
  if not isinstance(styles, str) or not styles:
    raise ValueError(
      f"{argument} must be a non-empty string of style letters such as 'A' or "
      f"'ABCDEF', got {styles!r}."
    )
  wanted = "".join(sorted(set(styles)))
  have = available_styles(table, split)
  missing = [s for s in wanted if s not in have]
  if missing:
    folders = ", ".join(f"{table.root}/sketch/{s}/{split}/" for s in missing)
    raise ValueError(
      f"{argument}={styles!r}: no sketches of style(s) {''.join(missing)} in split "
      f"'{split}' of {table.name or 'the dataset'} (Market-Sketch-1K layout: searched "
      f"{folders}; PKU-Sketch lists styles in styleAnnotation/; QMUL-ShoeV2/ChairV2 record no "
      f"sketcher, so all their sketches are style 'A'). Styles available in '{split}': "
      f"{have or 'none'}; choose among those."
    )
  return wanted


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
  order = np.argsort(row_pids, kind="stable")
  sorted_pids = row_pids[order]
  starts = np.searchsorted(sorted_pids, pids, side="left")
  ends = np.searchsorted(sorted_pids, pids, side="right")
  return [rows[order[s:e]] for s, e in zip(starts, ends)]


def make_train_set(table: SampleTable, train_styles: str) -> TrainSet:
  """Training photos + training sketches of ``train_styles``, relabelled 0..C-1 by sorted pid."""
  styles = _check_styles(table, train_styles, TRAIN_SPLIT, "train_styles")
  in_split = table.split == TRAIN_SPLIT
  photo_rows = np.flatnonzero(in_split & (table.modality == MODALITY_PHOTO))
  sketch_rows = np.flatnonzero(
    in_split & (table.modality == MODALITY_SKETCH) & np.isin(table.style, list(styles))
  )
  photo_pids = np.unique(table.pid[photo_rows])
  sketch_pids = np.unique(table.pid[sketch_rows])
  pids = np.intersect1d(photo_pids, sketch_pids).astype(np.int32)
  sketch_only = np.setdiff1d(sketch_pids, photo_pids)
  photo_only = np.setdiff1d(photo_pids, sketch_pids)
  if len(sketch_only) or len(photo_only):
    warnings.warn(
      f"make_train_set(train_styles={styles!r}): excluding {len(sketch_only) + len(photo_only)} "
      f"identities that lack one modality in split '{TRAIN_SPLIT}': "
      f"{len(sketch_only)} with sketches but no photo {sketch_only.tolist()}, "
      f"{len(photo_only)} with photos but no sketch of these styles {photo_only.tolist()}."
    )
  if not len(pids):
    raise ValueError(
      f"make_train_set(train_styles={styles!r}): no identity of "
      f"{table.name or 'the dataset'} at {table.root} has both a training photo "
      f"and a training sketch of these styles; check the data or the styles."
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
    raise ValueError(f"pk_plan: scheme must be one of {sorted(SCHEMES)}, got {scheme!r}.")
  if P < 1 or K < 1:
    raise ValueError(f"pk_plan: P and K must be >= 1, got P={P}, K={K}.")
  if train_set.num_classes < P:
    raise ValueError(
      f"pk_plan: P={P} identities per batch but the train set (styles "
      f"{train_set.train_styles!r}) has only {train_set.num_classes}; lower "
      f"config P to at most {train_set.num_classes} or train on more styles."
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
      f"host_slice: need 0 <= process_index < process_count, got "
      f"{process_index} and {process_count}."
    )
  if P % process_count:
    raise ValueError(
      f"host_slice: P={P} identities per batch do not split over "
      f"{process_count} hosts; set P to a multiple of the host count."
    )
  per_host = P // process_count
  return plan[:, process_index * per_host : (process_index + 1) * per_host]


def batch_indices(step_plan: np.ndarray) -> np.ndarray:
  """(..., p, 2, K) -> (..., 2·p·K): [photos of id_0..id_p-1 | sketches of id_0..id_p-1]."""
  step_plan = np.asarray(step_plan)
  if step_plan.ndim < 3 or step_plan.shape[-2] != 2:
    raise ValueError(f"batch_indices expects (..., p, 2, K), got shape {step_plan.shape}.")
  lead = step_plan.shape[:-3]
  photos = step_plan[..., 0, :].reshape(*lead, -1)
  sketches = step_plan[..., 1, :].reshape(*lead, -1)
  return np.concatenate([photos, sketches], axis=-1)


# --------------------------------------------------------------------------- augmentation


def decode_rgb(encoded: tf.Tensor) -> tf.Tensor:
  """Encoded JPEG/PNG/BMP/GIF bytes -> float32 (h, w, 3) in [0, 255]; greyscale is replicated."""
  image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
  return tf.cast(image, tf.float32)


def normalize(rgb: tf.Tensor) -> tf.Tensor:
  """[0, 255] RGB -> (x / 255 - mean) / std with the ImageNet statistics."""
  mean = tf.constant(IMAGENET_MEAN, tf.float32)
  std = tf.constant(IMAGENET_STD, tf.float32)
  return (rgb / PIXEL_MAX - mean) / std


def geometric_augment(
  stack: tf.Tensor, seed: tf.Tensor, *, image_size: tuple[int, int], pad: int, flip: bool
) -> tf.Tensor:
  """Resize (bilinear) + zero-pad + random crop + random h-flip of an (h, w, C) stack, any C.

  Every channel gets the same crop and flip, so a mask appended as an extra channel stays
  aligned with the image. ``seed`` is a stateless (2,) seed.
  """
  crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
  height, width = image_size
  channels = stack.shape[-1] if stack.shape[-1] is not None else tf.shape(stack)[-1]
  stack = tf.image.resize(stack, (height, width), method="bilinear")
  if pad > 0:
    stack = tf.pad(stack, [[pad, pad], [pad, pad], [0, 0]])
    stack = tf.image.stateless_random_crop(stack, [height, width, channels], crop_seed)
    # Later ops (random erasing) need the static size the crop's size tensor hides.
    stack = tf.ensure_shape(stack, [height, width, stack.shape[-1]])
  if flip:
    stack = tf.image.stateless_random_flip_left_right(stack, flip_seed)
  return stack


def random_erase(
  image: tf.Tensor,
  seed: tf.Tensor,
  *,
  probability: float,
  area: tuple[float, float] = (0.02, 0.4),
  aspect: tuple[float, float] = (0.3, 3.3),
  attempts: int = 10,
) -> tf.Tensor:
  """Random erasing (Zhong et al.) on a normalised (H, W, C) image; erased pixels become 0.

  With probability ``probability``: target area ~ U(area)·H·W, aspect ~ U(aspect),
  h = round(√(area·aspect)), w = round(√(area/aspect)); the first of ``attempts`` draws with
  h < H and w < W is erased at a uniform position; if none fits nothing is erased.
  """
  if probability <= 0.0:
    return image
  height, width = image.shape[0], image.shape[1]
  s_apply, s_area, s_aspect, s_pos = tf.unstack(tf.random.experimental.stateless_split(seed, 4))
  apply = tf.random.stateless_uniform([], s_apply) < probability
  target = tf.random.stateless_uniform([attempts], s_area, area[0], area[1]) * (height * width)
  ratio = tf.random.stateless_uniform([attempts], s_aspect, aspect[0], aspect[1])
  h = tf.cast(tf.round(tf.sqrt(target * ratio)), tf.int32)
  w = tf.cast(tf.round(tf.sqrt(target / ratio)), tf.int32)
  fits = (h < height) & (w < width)
  first = tf.argmax(tf.cast(fits, tf.int32), output_type=tf.int32)
  h, w = h[first], w[first]
  u = tf.random.stateless_uniform([2], s_pos)
  top = tf.cast(tf.floor(u[0] * tf.cast(height - h + 1, tf.float32)), tf.int32)
  left = tf.cast(tf.floor(u[1] * tf.cast(width - w + 1, tf.float32)), tf.int32)
  rows = tf.range(height)[:, None]
  cols = tf.range(width)[None, :]
  box = (rows >= top) & (rows < top + h) & (cols >= left) & (cols < left + w)
  box = box & apply & tf.reduce_any(fits)
  return tf.where(box[:, :, None], tf.zeros_like(image), image)


def example_seed(
  seed: int, epoch: int, step: tf.Tensor, process_index: int, position: tf.Tensor
) -> tf.Tensor:
  """Stateless (2,) seed folded from (seed, epoch, step, process_index, position in batch)."""
  key = tf.constant([seed, epoch], tf.int64)
  for data in (step, tf.constant(process_index, tf.int64), position):
    key = tf.random.experimental.stateless_fold_in(key, tf.cast(data, tf.int64))
  return key


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


def decode_mask(encoded: tf.Tensor) -> tf.Tensor:
  """Encoded greyscale PNG bytes -> float32 (h, w, 1) in [0, 1]."""
  mask = tf.io.decode_png(encoded, channels=1)
  return tf.cast(mask, tf.float32) / PIXEL_MAX


def _check_rows(table: SampleTable, rows: np.ndarray, argument: str) -> None:
  if rows.size and (rows.min() < 0 or rows.max() >= len(table)):
    raise ValueError(
      f"{argument}: row indices must lie in [0, {len(table)}) for this table, "
      f"got range [{rows.min()}, {rows.max()}]; was it built from another table?"
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
  'index': int32 (B,)}`` with B = 2·p·K in the [photos | sketches] layout of the module doc.
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
      f"train_iterator: plan must have shape (steps, p, 2, K) as returned by "
      f"pk_plan/host_slice, got {plan.shape}."
    )
  steps = plan.shape[0]
  if not 0 <= start_step <= steps:
    raise ValueError(
      f"train_iterator: start_step={start_step} outside [0, {steps}] for a plan of {steps} steps."
    )
  rows = batch_indices(plan[start_step:]).astype(np.int64)  # (steps - start_step, B)
  _check_rows(table, rows, "train_iterator plan")
  batch = rows.shape[1]
  labels = train_set.labels[rows]
  if (labels < 0).any():
    raise ValueError(
      "train_iterator: the plan holds rows outside the train set; build the plan "
      "with pk_plan from this train_set."
    )
  modality = table.modality[rows].astype(np.int32)
  expected = np.repeat([MODALITY_PHOTO, MODALITY_SKETCH], batch // 2)
  if not (modality == expected).all():
    raise ValueError(
      "train_iterator: plan rows do not follow [photos | sketches]; pass the "
      "plan from pk_plan/host_slice unchanged."
    )
  examples, valid, set_valid = rows, np.ones(rows.shape, bool), None
  if sketch_sets:
    if masks is not None:
      raise ValueError(
        "train_iterator: sketch_sets and masks do not combine (DALNet has no fusion)."
      )
    examples, valid, set_valid = _set_examples(rows, labels, train_set)
  bank, local = _image_bank(table, examples)
  if masks is not None:
    if len(masks) != len(table):
      raise ValueError(
        f"train_iterator: masks has {len(masks)} entries for a table of {len(table)} rows; "
        "build it with datasets.masks.load_masks(table, ...)."
      )
    photo_rows = rows[:, : batch // 2]
    if not all(masks[r] for r in np.unique(photo_rows)):
      raise ValueError(
        "train_iterator: masks lacks some photo rows of this plan; load_masks must be given "
        "every training photo row."
      )
    mask_bank, _ = _image_bank(table, rows, masks)
  width = examples.shape[1]
  step_ids = np.repeat(np.arange(start_step, steps, dtype=np.int64)[:, None], width, axis=1)
  positions = np.broadcast_to(np.arange(width, dtype=np.int64), examples.shape)
  slices = {
    "local": local,
    "index": rows.astype(np.int32),
    "label": labels.astype(np.int32),
    "modality": modality,
    "step": step_ids,
    "position": positions,
  }
  if sketch_sets:  # one example per photo and per set member; the 2·p·K columns are added back
    example_modality = np.repeat(
      [MODALITY_PHOTO, MODALITY_SKETCH], [batch // 2, width - batch // 2]
    )
    slices = dict(
      slices,
      index=examples.astype(np.int32),
      label=np.zeros(examples.shape, np.int32),
      modality=np.broadcast_to(example_modality.astype(np.int32), examples.shape),
      valid=valid,
    )
  slices = {k: np.ascontiguousarray(v).reshape(-1) for k, v in slices.items()}

  def load(example: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    key = example_seed(seed, epoch, example["step"], process_index, example["position"])
    geometry_seed, erase_seed = tf.unstack(tf.random.experimental.stateless_split(key, 2))
    image = decode_rgb(tf.gather(bank, example["local"]))
    if masks is not None:
      is_photo = tf.equal(example["modality"], MODALITY_PHOTO)
      mask = tf.cond(
        is_photo,
        lambda: decode_mask(tf.gather(mask_bank, example["local"])),
        lambda: tf.ones_like(image[..., :1]),
      )
      mask = tf.ensure_shape(mask, [None, None, 1])
      # A mask written at another size than its photo still lines up after the resize below.
      mask = tf.image.resize(mask, tf.shape(image)[:2], method="bilinear")
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
      "image": image,
      "label": example["label"],
      "modality": example["modality"],
      "index": example["index"],
    }
    if masks is not None:
      out["mask"] = mask
    return out

  def load_member(example: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    height, width = image_size
    padding = lambda: {"image": tf.zeros((height, width, 3), tf.float32)}
    return tf.cond(example["valid"], lambda: {"image": load(example)["image"]}, padding)

  ds = tf.data.Dataset.from_tensor_slices(slices)
  ds = ds.map(load_member if sketch_sets else load, num_parallel_calls=tf.data.AUTOTUNE)
  batches = _finish(ds, width, prefetch, threads).as_numpy_iterator()
  if not sketch_sets:
    yield from batches
    return
  half = batch // 2
  for i, out in enumerate(batches):
    images = out["image"]
    yield {
      "image": images[:half],
      "sketch_set": images[half:].reshape(half, set_valid.shape[-1], *images.shape[1:]),
      "sketch_valid": set_valid[i],
      "label": labels[i].astype(np.int32),
      "modality": modality[i],
      "index": rows[i].astype(np.int32),
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
    raise ValueError("eval_iterator: no indices to evaluate; check the EvalSet it came from.")
  if batch_size < 1:
    raise ValueError(f"eval_iterator: batch_size must be >= 1, got {batch_size}.")
  _check_rows(table, rows, "eval_iterator indices")
  bank, local = _image_bank(table, rows)
  padding = -len(rows) % batch_size
  slices = {
    "local": np.concatenate([local, np.zeros(padding, np.int64)]),
    "index": np.concatenate([rows, -np.ones(padding, np.int64)]).astype(np.int32),
    "valid": np.concatenate([np.ones(len(rows), bool), np.zeros(padding, bool)]),
  }
  height, width = image_size

  def load(example: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    def real() -> tf.Tensor:
      image = decode_rgb(tf.gather(bank, example["local"]))
      return normalize(tf.image.resize(image, (height, width), method="bilinear"))

    image = tf.cond(example["valid"], real, lambda: tf.zeros((height, width, 3), tf.float32))
    return {"image": image, "index": example["index"], "valid": example["valid"]}

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
  """Test sketches of ``test_styles`` vs every photo of split 'query' (DESIGN §5).

  Refuses an empty query set (a style without test sketches; the error names the styles and
  those available) and duplicate file names among the rows it would rank (the same name stem in
  one modality and style, e.g. a gallery photo also in training: ``checks.duplicate_groups``).
  """
  from sketchreid_jax.datasets.checks import duplicate_groups

  styles = _check_styles(table, test_styles, TEST_SPLIT, "test_styles")
  in_split = table.split == TEST_SPLIT
  query = np.flatnonzero(
    in_split & (table.modality == MODALITY_SKETCH) & np.isin(table.style, list(styles))
  )
  gallery = np.flatnonzero(in_split & (table.modality == MODALITY_PHOTO))
  if not len(gallery):
    raise ValueError(
      f"make_eval_set: {table.name or 'the dataset'} at {table.root} has no "
      f"photo in split '{TEST_SPLIT}' (Market-Sketch-1K: {table.root}/photo/query/)."
    )
  keys = list(zip(table.modality.tolist(), table.style.tolist()))
  ranked = np.zeros(len(table), bool)
  ranked[query] = ranked[gallery] = True
  dupes = [ids for ids in duplicate_groups(table.path, keys) if ranked[ids].any()]
  if dupes:
    listed = "; ".join(" = ".join(table.path[ids]) for ids in dupes)
    raise ValueError(
      f"make_eval_set(test_styles={styles!r}): {len(dupes)} file name(s) of "
      f"{table.name or 'the dataset'} at {table.root} occur more than once in one modality and "
      f"style, so one image would be ranked twice or was also trained on: {listed}. Keep one "
      f"copy, in the folder of its split (`python -m sketchreid_jax.tools.check_data "
      f"{table.root or '<root>'}` lists every such file)."
    )
  unmatched = np.setdiff1d(table.pid[query], table.pid[gallery])
  if len(unmatched):
    warnings.warn(
      f"make_eval_set(test_styles={styles!r}): {len(unmatched)} query identities "
      f"have no gallery photo and will count as unmatched: {unmatched.tolist()}."
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
  config, table: SampleTable, train_set: TrainSet, plan: np.ndarray, *, epoch: int,
  start_step: int = 0, masks=None, process_index: int = 0,
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
