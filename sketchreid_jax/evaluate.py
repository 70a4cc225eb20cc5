"""Evaluation: feature extraction and the retrieval protocols (DESIGN §2, §5).

Embeddings are the pre-BN GeM features by default (``config.eval.feature``), optionally averaged with
the mirror image's (``config.eval.flip``), then L2-normalised; the distance is Euclidean between
normalised embeddings (rank-equivalent to cosine). Protocols are a registry so that later issues add
entries instead of branches:

* ``single_query``: every test sketch of ``config.data.test_styles`` is its own query.
* ``multi_query``: the test sketches of one identity across those styles form one query, whose
  embedding is the re-normalised mean of its sketches' normalised embeddings.

The gallery is always every photo of the test split. Sketches carry camera id 0 and photos 1–6, so
no gallery item is removed by the same-camera rule (DESIGN §5).
"""

import functools
import logging
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from sketchreid_jax import input_pipeline
from sketchreid_jax.evaluation import RankResult, evaluate_rank
from sketchreid_jax.evaluation import report

log = logging.getLogger(__name__)

PHOTO, SKETCH = 0, 1


def l2_normalise(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), eps)


@functools.lru_cache(maxsize=8)
def _extract_fn(model, modality: int, feature: str, flip: bool):
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
  fn = _extract_fn(model, modality, config.eval.feature, bool(config.eval.flip))
  chunks = []
  for batch in input_pipeline.eval_iterator(
    table, indices, image_size=tuple(config.data.image_size), batch_size=config.eval.batch_size
  ):
    feat = np.asarray(fn(variables, jnp.asarray(batch['image'])))
    chunks.append(feat[np.asarray(batch['valid'])])
  feats = np.concatenate(chunks) if chunks else np.zeros((0, 0), np.float32)
  if not np.all(np.isfinite(feats)):
    raise FloatingPointError(
      'non-finite embeddings: the model produced NaN/Inf features; the '
      'checkpoint is probably diverged (see the training loss).'
    )
  return l2_normalise(feats)


def euclidean(q: np.ndarray, g: np.ndarray) -> np.ndarray:
  d = (q * q).sum(1)[:, None] + (g * g).sum(1)[None, :] - 2.0 * q @ g.T
  return np.sqrt(np.maximum(d, 0.0))


def _aggregate_groups(feats: np.ndarray, groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Mean of the normalised embeddings of each group, re-normalised; returns (unique groups, feats)."""
  ids, inverse = np.unique(groups, return_inverse=True)
  sums = np.zeros((len(ids), feats.shape[1]), np.float64)
  np.add.at(sums, inverse, feats)
  return ids, l2_normalise((sums / np.bincount(inverse)[:, None]).astype(np.float32))


def single_query(eval_set, q_feats, g_feats, config) -> tuple[RankResult, tuple]:
  distmat = euclidean(q_feats, g_feats)
  return evaluate_rank(
    distmat,
    eval_set.query_pids,
    eval_set.gallery_pids,
    eval_set.query_camids,
    eval_set.gallery_camids,
    max_rank=config.eval.max_rank,
  ), (eval_set.query_pids, eval_set.query_camids)


def multi_query(eval_set, q_feats, g_feats, config) -> tuple[RankResult, tuple]:
  if config.eval.multi_query_aggregate != 'mean':
    raise ValueError(
      f'config.eval.multi_query_aggregate={config.eval.multi_query_aggregate!r} is '
      "not available; use 'mean'"
    )
  groups, feats = _aggregate_groups(q_feats, eval_set.query_groups)
  first = np.array([np.flatnonzero(eval_set.query_groups == g)[0] for g in groups])
  q_pids, q_camids = eval_set.query_pids[first], eval_set.query_camids[first]
  distmat = euclidean(feats, g_feats)
  return evaluate_rank(
    distmat,
    q_pids,
    eval_set.gallery_pids,
    q_camids,
    eval_set.gallery_camids,
    max_rank=config.eval.max_rank,
  ), (q_pids, q_camids)


def _versus_chance(name: str, result: RankResult, chance: dict) -> str:
  r1, c1 = result.rank(1), chance['R-1']
  return (
    f'{name}: rank-1 {100 * r1:.2f}% = {r1 / c1:.1f}x chance ({100 * c1:.2f}%), '
    f'mAP {100 * result.mAP:.2f}% (chance {100 * chance["mAP"]:.2f}%), '
    f'{result.num_valid_queries} queries'
  )


# protocol name -> (multi_query flag for the eval set, scoring function)
PROTOCOLS: dict[str, tuple[bool, Callable]] = {
  'single_query': (False, single_query),
  'multi_query': (True, multi_query),
}


def evaluate(
  model, variables, table, config, *, workdir: str | None = None, extra: dict | None = None
) -> dict[str, RankResult]:
  """Runs every protocol of ``config.eval.protocols``; writes the reports into ``workdir`` if given."""
  unknown = [p for p in config.eval.protocols if p not in PROTOCOLS]
  if unknown:
    raise ValueError(f'unknown config.eval.protocols {unknown}; known: {sorted(PROTOCOLS)}')
  results, chances, gallery_cache = {}, {}, {}
  for name in config.eval.protocols:
    multi, score = PROTOCOLS[name]
    eval_set = input_pipeline.make_eval_set(table, config.data.test_styles, multi_query=multi)
    key = tuple(eval_set.gallery_index)
    if key not in gallery_cache:
      gallery_cache[key] = extract_features(
        model, variables, table, eval_set.gallery_index, modality=PHOTO, config=config
      )
    q_feats = extract_features(
      model, variables, table, eval_set.query_index, modality=SKETCH, config=config
    )
    results[name], (q_pids, q_camids) = score(eval_set, q_feats, gallery_cache[key], config)
    chances[name] = report.chance_levels(
      q_pids,
      eval_set.gallery_pids,
      q_camids=q_camids,
      g_camids=eval_set.gallery_camids,
      max_rank=config.eval.max_rank,
    )
  table_rows = {name: r.to_dict() for name, r in results.items()}
  table_rows.update({f'chance ({name})': c for name, c in chances.items()})
  text = (
    report.format_table(table_rows)
    + '\n'
    + '\n'.join(_versus_chance(name, results[name], chances[name]) for name in results)
  )
  print(f'evaluation{f" ({extra})" if extra else ""}\n{text}', flush=True)
  if workdir is not None and jax.process_index() == 0:
    paths = report.write_results(
      workdir,
      results,
      chance=chances[config.eval.protocols[0]],
      extra=dict(extra or {}, chance=chances),
    )
    log.info('wrote %s', ', '.join(str(p) for p in paths.values()))
  return results
