"""Feature extraction: the embeddings every protocol ranks (protocols.py) and inference returns.

Embeddings are the pre-BN GeM features by default (``config.eval.feature``), optionally averaged
with the mirror image's (``config.eval.flip``), then L2-normalised. Images come through
``input_pipeline.eval_iterator`` (bilinear resize to ``config.data.image_size``, ImageNet
normalisation), in batches of ``config.eval.batch_size``; ``extract_fn`` is the compiled extractor
itself, shared with ``inference.embedding_fn`` and ``viz.gradcam``.

``stem_group_features`` is the MM'23 multi-query embedding (``eval.multi_query_aggregate='stem'``,
models/fusion.py): each group's sketches are averaged as stem feature maps, not as embeddings, and
the mean map goes through the rest of the model.

Embeddings with a NaN or an Inf are an error (``require_finite``) naming how many rows, of which
role and modality, the first image paths, and what to check.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from sketchreid_jax import input_pipeline
from sketchreid_jax.modality import PHOTO, SKETCH

# What the rows of each modality are in every protocol, for messages.
ROLE = {PHOTO: 'gallery photo', SKETCH: 'query sketch'}
# Image paths named in the error about non-finite embeddings, beyond which only the count is given.
_MAX_LISTED = 5


def l2_normalise(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), eps)


def require_finite(feats: np.ndarray, what: str, paths: np.ndarray | None = None) -> None:
  """FloatingPointError naming how many of the (N, D) ``feats`` rows hold a NaN or an Inf, what
  they are (``what``, e.g. 'gallery photo'), the first few ``paths`` and what to do."""
  bad = ~np.isfinite(feats).reshape(len(feats), -1).all(axis=1)
  if not bad.any():
    return
  listed = ''
  if paths is not None:
    names = [str(p) for p in np.asarray(paths)[bad][:_MAX_LISTED]]
    listed = f' ({", ".join(names)}{", ..." if bad.sum() > _MAX_LISTED else ""})'
  raise FloatingPointError(
    f'{int(bad.sum())} of {len(feats)} {what} embeddings contain NaN or Inf{listed}. The model '
    f'produces non-finite features: training diverged (look for NaN in the training loss) or the '
    f'checkpoint is damaged; check the checkpoint, evaluate an earlier one, or retrain with a '
    f'lower config.optim.lr.'
  )


@functools.lru_cache(maxsize=8)
def extract_fn(model, modality: int, feature: str, flip: bool):
  """Jitted ``(variables, normalised (N, H, W, 3) images) -> (N, D) float32`` raw (not yet
  normalised) ``feature`` of ``modality``, averaged with the mirror images' when ``flip``."""

  def fn(variables, images):
    out = model.apply(variables, images, modality=modality, train=False, method=model.extract)
    feat = out[feature].astype(jnp.float32)
    if flip:
      mirrored = model.apply(
        variables, images[:, :, ::-1], modality=modality, train=False, method=model.extract
      )
      feat = (feat + mirrored[feature].astype(jnp.float32)) / 2
    return feat

  return jax.jit(fn)


def extract_features(
  model, variables, table, indices: np.ndarray, *, modality: int, config
) -> np.ndarray:
  """L2-normalised embeddings (len(indices), D) of the table rows ``indices``."""
  fn = extract_fn(model, modality, config.eval.feature, bool(config.eval.flip))
  chunks = []
  for batch in input_pipeline.eval_iterator(
    table, indices, image_size=tuple(config.data.image_size), batch_size=config.eval.batch_size
  ):
    feat = np.asarray(fn(variables, jnp.asarray(batch['image'])))
    chunks.append(feat[np.asarray(batch['valid'])])
  feats = np.concatenate(chunks) if chunks else np.zeros((0, 0), np.float32)
  require_finite(feats, ROLE[modality], table.path[np.asarray(indices)])
  return l2_normalise(feats)


@functools.lru_cache(maxsize=8)
def _stem_fns(model, flip: bool):
  def stem(variables, images):
    maps = model.apply(
      variables, images, modality=SKETCH, train=False, method=model.extract_stem
    ).astype(jnp.float32)
    if flip:  # both orientations travel together: (2, batch, h, w, c)
      mirrored = model.apply(
        variables, images[:, :, ::-1], modality=SKETCH, train=False, method=model.extract_stem
      ).astype(jnp.float32)
      return jnp.stack([maps, mirrored])
    return maps[None]

  def embed(variables, maps):
    return model.apply(variables, maps, train=False, method=model.extract_fused)

  return jax.jit(stem), jax.jit(embed)


def stem_group_features(
  model, variables, table, indices: np.ndarray, groups: np.ndarray, *, config
) -> np.ndarray:
  """MM'23 multi-query embeddings: each group's mean sketch stem map through the model's
  ``extract_fused`` (the release's Non-local block where the model has it, then the shared rest).

  ``groups[i]`` (0..G-1) is the group of row ``indices[i]``; returns (G, D), L2-normalised. With
  ``config.eval.flip`` the mirrored sketches' maps are fused and embedded separately and the two
  embeddings averaged, as ``extract_features`` does for single images.
  """
  stem, embed = _stem_fns(model, bool(config.eval.flip))
  groups = np.asarray(groups)
  num_groups = int(groups.max()) + 1
  sums = counts = None
  offset = 0
  for batch in input_pipeline.eval_iterator(
    table, indices, image_size=tuple(config.data.image_size), batch_size=config.eval.batch_size
  ):
    maps = np.asarray(stem(variables, jnp.asarray(batch['image'])))[:, np.asarray(batch['valid'])]
    rows = groups[offset : offset + maps.shape[1]]
    offset += maps.shape[1]
    if sums is None:
      sums = np.zeros((maps.shape[0], num_groups, *maps.shape[2:]), np.float64)
      counts = np.zeros(num_groups, np.int64)
    for view in range(maps.shape[0]):
      np.add.at(sums[view], rows, maps[view])
    np.add.at(counts, rows, 1)
  means = (sums / counts[None, :, None, None, None]).astype(np.float32)
  feats = 0.0
  for view in means:
    chunks = [
      np.asarray(
        embed(variables, jnp.asarray(view[i : i + config.eval.batch_size]))[config.eval.feature]
      )
      for i in range(0, num_groups, config.eval.batch_size)
    ]
    feats = feats + np.concatenate(chunks).astype(np.float32)
  feats = feats / len(means)
  require_finite(feats, 'multi-query (stem-fused) query sketch group')
  return l2_normalise(feats)
