"""A trained model without its dataset: load a training workdir, embed images (docs/design.md §2, "evaluate").

``load_trained(workdir)`` rebuilds what ``train.train_and_evaluate`` wrote — ``config.json``,
``train_meta.json`` and the orbax checkpoints in ``best/`` or ``checkpoints/`` — into a
:class:`Trained` (config, Flax model, variables, method). ``embed(trained, images, modality=...)``
turns image files or uint8 arrays into the embeddings the evaluation ranks with.

Interpretations chosen:

* The config is ``config_base.base_config(method)`` updated key by key from ``config.json``, so
  every value keeps the type the code expects (JSON lists become the config's tuples). Workdirs
  written before each method owned its keys hold every method's keys: those of another method
  (which this run never read) are dropped. Any other unknown key means the workdir was written by
  another version of the code: an error names the key and the file rather than guessing.
* ``which='best'`` loads the checkpoint with the best mAP (``best/``) and falls back, with a
  warning, to the latest one when no evaluation has run yet (as ``train.evaluate_workdir`` does);
  ``which='latest'`` loads ``checkpoints/``. Only ``params`` and ``batch_stats`` are read (a partial
  orbax restore into the model's own tree structure), never the optimiser state, and the model's
  shapes come from ``jax.eval_shape``, so nothing is initialised and no ImageNet file
  (``model.init_checkpoint``) is needed.
* Preprocessing is the evaluation's, by construction: the images become a one-column
  ``SampleTable`` of encoded bytes (a file's own bytes; an array is PNG-encoded, losslessly),
  PIL-Lanczos-resized first when ``data.resize_antialias`` (as ``datasets.load`` does for the
  evaluation), and go through ``evaluation.extract.extract_features`` —
  ``input_pipeline.eval_iterator`` (bilinear resize to ``data.image_size``, ImageNet
  normalisation), ``eval.feature``, ``eval.flip``, L2 normalisation.
* Batches are ``min(eval.batch_size, number of images)`` so one query sketch is not padded to a
  full evaluation batch.
* ``embed(..., modality='sketch', fuse=True)`` embeds all the images as ONE multi-query query, the
  MM'23 release's ``--test_mq`` path, through the evaluation's own ``'stem'`` aggregate
  (``evaluation.extract.stem_group_features`` with one group): the mean of their sketch-stem maps
  goes through ``model.extract_fused`` (the Non-local block if the model has one, then the shared
  stages and head), then ``eval.feature``; with ``eval.flip`` the mirrored sketches are fused and
  embedded separately and the two features averaged, then L2 normalised. It returns shape (1, D),
  one row like every other query, so fused and unfused queries stack; photos have no fused path
  (an error).
* A workdir written by ``tools.convert_weights --model=mm23`` has its weights in ``checkpoints/``
  only (no evaluation chose a best step); ``which='best'`` falls back to it without the warning.
"""

import copy
import dataclasses
import json
import logging
import os
from typing import Any, Sequence

from sketchreid_jax.tf_setup import tf  # noqa: E402  (hides GPUs from TF before JAX starts)

# isort: split

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
import orbax.checkpoint as ocp  # noqa: E402

from sketchreid_jax.config_base import base_config, set_keys  # noqa: E402
from sketchreid_jax.datasets import resize  # noqa: E402
from sketchreid_jax.datasets.table import make_table  # noqa: E402
from sketchreid_jax.evaluation.extract import (  # noqa: E402
  extract_features,
  extract_fn,
  stem_group_features,
)
from sketchreid_jax.methods import Method, get_method  # noqa: E402
from sketchreid_jax.modality import PHOTO, SKETCH  # noqa: E402

log = logging.getLogger(__name__)

# What ``modality=`` accepts: the names, or the evaluation's ints.
MODALITIES = {'photo': PHOTO, 'sketch': SKETCH, PHOTO: PHOTO, SKETCH: SKETCH}
# checkpoint kind -> sub-folder of the workdir (checkpoints.managers)
CHECKPOINT_DIRS = {'best': 'best', 'latest': 'checkpoints'}


@dataclasses.dataclass(frozen=True)
class Trained:
  """A restored training: apply ``model`` to ``variables`` ({'params', 'batch_stats'})."""

  config: ml_collections.ConfigDict
  model: Any  # flax.linen.Module built without a BatchNorm axis (evaluation)
  variables: dict
  method: Method
  workdir: str
  step: int
  checkpoint: str  # the folder the variables came from
  meta: dict  # train_meta.json


def config_from_json(path: str) -> ml_collections.ConfigDict:
  """``base_config(method)`` updated from a ``config.json`` written by ``train._write_meta``."""
  with open(path) as f:
    values = json.load(f)
  config = base_config(values.get('method', 'baseline'))
  flat = _flatten_into(config, values, '')
  others = _other_methods_keys(config)
  flat = {k: v for k, v in flat.items() if k not in others}
  try:
    return set_keys(config, flat, where=path)
  except KeyError as err:
    raise KeyError(
      f'{err.args[0]}: {path} was written by another version of sketchreid_jax; remove that key '
      'from the file or use the version that trained it.'
    ) from None


def _other_methods_keys(config) -> set[str]:
  """Keys that only other built-in methods define (old config.json files hold them all)."""
  from sketchreid_jax.methods import builtin_names

  mine = set(_flatten_into(config, config.to_dict(), ''))
  keys = set()
  for name in builtin_names():
    other = base_config(name)
    keys |= set(_flatten_into(other, other.to_dict(), ''))
  return keys - mine


def _flatten_into(node, values: dict, prefix: str) -> dict:
  """Dotted keys of ``values``, descending wherever ``node`` has a sub-config."""
  flat = {}
  for key, value in values.items():
    child = node.get(key) if isinstance(node, ml_collections.ConfigDict) else None
    if isinstance(value, dict) and isinstance(child, ml_collections.ConfigDict):
      flat.update(_flatten_into(child, value, f'{prefix}{key}.'))
    else:
      flat[f'{prefix}{key}'] = value
  return flat


def _read_meta(workdir: str) -> dict:
  path = os.path.join(workdir, 'train_meta.json')
  if not os.path.exists(path):
    raise FileNotFoundError(
      f'{path} not found: {workdir!r} is not a training workdir (train one with '
      '`python -m sketchreid_jax.main --config=... --workdir=...`, or pass the workdir of a '
      'finished run).'
    )
  with open(path) as f:
    return json.load(f)


def _latest_step(directory: str) -> int | None:
  if not os.path.isdir(directory):
    return None
  manager = ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(create=False))
  return manager.latest_step()


def _checkpoint_dir(workdir: str, which: str, *, converted: bool = False) -> tuple[str, int]:
  if which not in CHECKPOINT_DIRS:
    raise ValueError(f'which={which!r}; use one of {sorted(CHECKPOINT_DIRS)}')
  directory = os.path.join(os.path.abspath(workdir), CHECKPOINT_DIRS[which])
  step = _latest_step(directory)
  if step is None and which == 'best':
    latest = os.path.join(os.path.abspath(workdir), CHECKPOINT_DIRS['latest'])
    step = _latest_step(latest)
    if step is not None:
      if not converted:  # a converted workdir has only checkpoints/ by design
        log.warning('%s holds no checkpoint (no evaluation ran yet); using %s', directory, latest)
      directory = latest
  if step is None:
    tried = ' or '.join(
      os.path.join(workdir, CHECKPOINT_DIRS[k])
      for k in (('best', 'latest') if which == 'best' else (which,))
    )
    raise FileNotFoundError(
      f'no checkpoint in {tried}: the training in {workdir!r} has not finished an epoch yet '
      '(resume it with the same main command).'
    )
  return directory, step


def _variable_shapes(model, config) -> dict:
  h, w = config.data.image_size
  dummy = jax.ShapeDtypeStruct((1, h, w, 3), jnp.float32)
  # The same call as train.create_train_state, traced for shapes only.
  shapes = jax.eval_shape(
    lambda p, s: model.init(jax.random.key(0), p, s, train=False), dummy, dummy
  )
  return {'params': shapes['params'], 'batch_stats': shapes.get('batch_stats', {})}


def load_trained(workdir: str, *, which: str = 'best') -> Trained:
  """The model of a training workdir, restored from its ``best`` or ``latest`` checkpoint."""
  meta = _read_meta(workdir)
  config_path = os.path.join(workdir, 'config.json')
  if not os.path.exists(config_path):
    raise FileNotFoundError(f'{config_path} not found; the workdir {workdir!r} is incomplete.')
  config = config_from_json(config_path)
  method = get_method(config.method)
  model = method.model_for(config, meta['num_classes'], None)
  directory, step = _checkpoint_dir(workdir, which, converted='converted_from' in meta)
  template = _variable_shapes(model, config)
  manager = ocp.CheckpointManager(
    directory,
    options=ocp.CheckpointManagerOptions(create=False),
    item_handlers=ocp.PyTreeCheckpointHandler(),
  )
  try:
    variables = manager.restore(
      step,
      args=ocp.args.PyTreeRestore(
        template,
        restore_args=jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), template),
        partial_restore=True,
      ),
    )
  except (ValueError, KeyError, FileNotFoundError) as err:
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    raise ValueError(
      f'{directory}/{step} does not restore into the {config.method} model that {config_path} '
      f'describes ({first[:300]}); was config.json edited, or the checkpoint copied from another '
      'run?'
    ) from err
  # Orbax restores the saved shapes whatever the template says: compare them here.
  wrong = [
    f'{jax.tree_util.keystr(path)} {np.shape(got)} vs {want.shape}'
    for (path, got), want in zip(
      jax.tree_util.tree_leaves_with_path(variables), jax.tree.leaves(template)
    )
    if np.shape(got) != want.shape
  ]
  if wrong:
    raise ValueError(
      f'{directory}/{step} does not fit the {config.method} model that {config_path} describes: '
      f'{len(wrong)} arrays differ in shape (saved vs model), e.g. {wrong[0]}; was config.json '
      'edited, or the checkpoint copied from another run?'
    )
  log.info('loaded %s step %d (%s)', directory, step, config.method)
  return Trained(config, model, variables, method, workdir, int(step), directory, meta)


# ----------------------------------------------------------------------------- embeddings


def _encoded(image, position: int) -> tuple[bytes, str]:
  """(encoded bytes, name for messages) of a path or an (H, W[, 3]) uint8 array."""
  if isinstance(image, (str, os.PathLike)):
    path = os.fspath(image)
    try:
      with open(path, 'rb') as f:
        return f.read(), path
    except OSError as err:
      raise OSError(f'cannot read image {path}: {err.strerror or err}') from None
  array = np.asarray(image)
  if array.ndim == 2:
    array = array[:, :, None]
  if array.dtype != np.uint8 or array.ndim != 3 or array.shape[-1] not in (1, 3):
    raise ValueError(
      f'image #{position}: expected a file path or a uint8 (H, W, 3) / (H, W) array, got '
      f'{array.dtype} {np.shape(image)}; convert floats in [0, 1] with '
      '(255 * x).round().astype(np.uint8).'
    )
  return tf.io.encode_png(array).numpy(), f'image #{position}'


def _first_undecodable(encoded: Sequence[bytes], names: Sequence[str]) -> str | None:
  for data, name in zip(encoded, names):
    try:
      tf.io.decode_image(data, channels=3, expand_animations=False)
    except (tf.errors.InvalidArgumentError, ValueError):
      return name
  return None


def images_table(images: Sequence):
  """A ``SampleTable`` holding only the encoded bytes of ``images`` (paths or uint8 arrays)."""
  encoded, names = zip(*(_encoded(image, i) for i, image in enumerate(images)))
  rows = [
    {
      'image': data,
      'pid': -1,
      'modality': 0,
      'style': '',
      'split': '',
      'camid': -1,
      'path': name,
    }
    for data, name in zip(encoded, names)
  ]
  return make_table(rows, name='images')


def _undecodable_error(table, names) -> ValueError | None:
  """The error naming the first of ``table``'s images that cannot be decoded, if one cannot."""
  bad = _first_undecodable(table.image, names)
  if bad is None:
    return None
  return ValueError(
    f'cannot decode {bad}: not a JPEG, PNG, BMP or GIF image (or a truncated file); '
    'remove it or convert it.'
  )


def _as_evaluated(table, config, names):
  """``table`` as ``datasets.load`` hands it to the evaluation: with ``data.resize_antialias``
  every image PIL-Lanczos-resized to ``data.image_size`` on load (datasets/resize.py)."""
  if not config.data.get('resize_antialias', False):
    return table
  try:
    return resize.resize_table(table, tuple(config.data.image_size), progress=False)
  except ValueError:
    error = _undecodable_error(table, names)
    if error is None:
      raise
    raise error from None


def embed(trained: Trained, images: Sequence, *, modality, fuse: bool = False) -> np.ndarray:
  """L2-normalised embeddings, computed exactly as the evaluation does: (len(images), D), or with
  ``fuse`` (1, D) for all the images as one multi-query query.

  ``images``: a sequence of file paths and/or uint8 (H, W, 3) or (H, W) arrays of any size, or a
  uint8 (N, H, W, 3) array.
  ``modality``: 'photo' / 'sketch' (or 0 / 1): which stream embeds them.
  ``fuse``: sketches only; one identity's sketches fused at the stem (mean of their sketch-stem
  maps → ``model.extract_fused``), the MM'23 multi-query embedding
  (``eval.multi_query_aggregate='stem'``).
  """
  if modality not in MODALITIES:
    raise ValueError(f'modality={modality!r}; use one of {sorted(map(str, MODALITIES))}')
  if fuse and MODALITIES[modality] != SKETCH:
    raise ValueError(
      f"embed: fuse=True fuses one identity's sketches into one query; modality={modality!r} "
      "has no fused path, use modality='sketch' or fuse=False."
    )
  if fuse and not hasattr(trained.model, 'extract_fused'):
    raise ValueError(
      f'embed: fuse=True needs a two-stream model with stem fusion (baseline, cmdsl); the '
      f'{trained.config.method} model of {trained.workdir} has none, use fuse=False.'
    )
  if isinstance(images, np.ndarray) and images.ndim != 4:
    raise ValueError(
      f'embed: an array of images must be (N, H, W, 3), got {images.shape}; wrap one image in a '
      'list.'
    )
  images = list(images)
  if not images:
    raise ValueError('embed: no images given.')
  table = images_table(images)
  config = copy.deepcopy(trained.config)
  config.eval.batch_size = min(config.eval.batch_size, len(table))
  table = _as_evaluated(table, config, table.path)
  rows = np.arange(len(table))
  try:
    if fuse:  # the evaluation's 'stem' multi-query aggregate, all the images one group
      return stem_group_features(
        trained.model, trained.variables, table, rows, np.zeros(len(rows), int), config=config
      )
    return extract_features(
      trained.model,
      trained.variables,
      table,
      rows,
      modality=MODALITIES[modality],
      config=config,
    )
  except tf.errors.InvalidArgumentError:
    error = _undecodable_error(table, table.path)
    if error is None:
      raise
    raise error from None


def embedding_fn(trained: Trained, modality):
  """JAX ``(variables, normalised float32 (N, H, W, 3)) -> (N, D)`` L2-normalised embeddings.

  What :func:`embed` computes after the input pipeline (the evaluation's extractor, with
  ``eval.feature`` and ``eval.flip``), as one traceable function, e.g. for ``jax2tf``.
  """
  if modality not in MODALITIES:
    raise ValueError(f'modality={modality!r}; use one of {sorted(map(str, MODALITIES))}')
  extract = extract_fn(
    trained.model, MODALITIES[modality], trained.config.eval.feature, bool(trained.config.eval.flip)
  )

  def fn(variables, images):
    feat = extract(variables, images)
    return feat / jnp.maximum(jnp.linalg.norm(feat, axis=-1, keepdims=True), 1e-12)

  return fn
