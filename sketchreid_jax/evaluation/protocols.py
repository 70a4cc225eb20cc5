"""The retrieval protocols: what is ranked against what, and how it is scored.

Embeddings come from extract.py; the distance is Euclidean between the normalised embeddings
(rank-equivalent to cosine). Protocols are a registry so that later issues add entries instead of
branches:

* ``single_query``: every test sketch of ``config.data.test_styles`` is its own query.
* ``multi_query``: the test sketches of one identity across those styles form one query, whose
  embedding is the re-normalised mean of its sketches' normalised embeddings
  (``eval.multi_query_aggregate='mean'``) or the embedding of the mean of their modality-specific
  feature maps (``'stem'``, the MM'23 code; ``extract.stem_group_features``, models/fusion.py).
* ``sbir``: fine-grained SBIR (QMUL-ShoeV2/ChairV2): every test sketch is a query, as in
  ``single_query``, each photo its own identity; scored by acc@1/5/10 (the paired photo within the
  K closest, only strictly closer photos pushing it down) and mAP (1 / (rank + 1) with the one
  match), ``evaluation/sbir.py``. Cameras play no part, and a sketch without its photo in the
  gallery is an error instead of an unmatched query.

Each protocol scores its distance matrix with its own metrics and chance levels
(``Protocol.score``): ``RankResult`` (mAP, R-k, mINP) for the re-id protocols, ``SBIRResult``
(acc@K, mAP) for ``sbir``. Flip and re-ranking act on the embeddings and the distance matrix, so
they apply to every protocol alike.

A protocol entry may name its own artists: ``'single_query:A'`` ranks style A's sketches only,
whatever ``data.test_styles`` says (CMDSL Tables 2 and 5). ``eval.rerank`` re-ranks every
protocol's distances with k-reciprocal encoding (evaluation/rerank.py).

The gallery is always every photo of the test split. Sketches carry camera id 0 and photos 1–6, so
no gallery item is removed by the same-camera rule.

Errors name the protocol entry that failed: embeddings with a NaN or an Inf
(``extract.require_finite``), an empty query set or a duplicate file name (from
``input_pipeline.make_eval_set``).
"""

import dataclasses
import os
from typing import Callable

import jax
import numpy as np

from sketchreid_jax import input_pipeline
from sketchreid_jax.evaluation import report
from sketchreid_jax.evaluation.extract import extract_features, l2_normalise, stem_group_features
from sketchreid_jax.evaluation.ranked_list import ranked_list_from_eval
from sketchreid_jax.evaluation.ranking import RankResult, evaluate_rank, pairwise_distance
from sketchreid_jax.evaluation.rerank import k_reciprocal_rerank
from sketchreid_jax.evaluation.sbir import SBIRResult, sbir_chance_levels
from sketchreid_jax.modality import PHOTO, SKETCH


def euclidean(q: np.ndarray, g: np.ndarray) -> np.ndarray:
  return pairwise_distance(q, g, 'euclidean')


def _aggregate_groups(feats: np.ndarray, groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Mean of the normalised embeddings of each group, re-normalised; returns (unique groups, feats)."""
  ids, inverse = np.unique(groups, return_inverse=True)
  sums = np.zeros((len(ids), feats.shape[1]), np.float64)
  np.add.at(sums, inverse, feats)
  return ids, l2_normalise((sums / np.bincount(inverse)[:, None]).astype(np.float32))


@dataclasses.dataclass(frozen=True)
class Queries:
  """What a protocol ranks: one embedding per query, with its identity and camera."""

  feats: np.ndarray
  pids: np.ndarray
  camids: np.ndarray


def sketch_queries(model, variables, table, eval_set, config) -> Queries:
  """Single-query: every test sketch is a query."""
  feats = extract_features(
    model, variables, table, eval_set.query_index, modality=SKETCH, config=config
  )
  return Queries(feats, eval_set.query_pids, eval_set.query_camids)


def _mean_aggregate(model, variables, table, eval_set, config) -> np.ndarray:
  feats = extract_features(
    model, variables, table, eval_set.query_index, modality=SKETCH, config=config
  )
  return _aggregate_groups(feats, eval_set.query_groups)[1]


def _stem_aggregate(model, variables, table, eval_set, config) -> np.ndarray:
  return stem_group_features(
    model, variables, table, eval_set.query_index, eval_set.query_groups, config=config
  )


# config.eval.multi_query_aggregate -> (..., eval_set) -> (num groups, D) normalised embeddings
AGGREGATES: dict[str, Callable] = {'mean': _mean_aggregate, 'stem': _stem_aggregate}


def identity_queries(model, variables, table, eval_set, config) -> Queries:
  """Multi-query: the test sketches of one identity (across the protocol's styles) are one query."""
  if config.eval.multi_query_aggregate not in AGGREGATES:
    raise ValueError(
      f'config.eval.multi_query_aggregate={config.eval.multi_query_aggregate!r} is not '
      f'available; use one of {sorted(AGGREGATES)}'
    )
  feats = AGGREGATES[config.eval.multi_query_aggregate](model, variables, table, eval_set, config)
  return Queries(feats, eval_set.group_pids, eval_set.query_camids[eval_set.group_first()])


def distances(queries: Queries, g_feats: np.ndarray, config) -> np.ndarray:
  """Query × gallery distances; k-reciprocal re-ranked when ``config.eval.rerank``."""
  q_g = euclidean(queries.feats, g_feats)
  if not config.eval.rerank:
    return q_g
  return k_reciprocal_rerank(
    q_g,
    euclidean(queries.feats, queries.feats),
    euclidean(g_feats, g_feats),
    k1=config.eval.rerank_k1,
    k2=config.eval.rerank_k2,
    lambda_value=config.eval.rerank_lambda,
  )


def _versus_chance(name: str, result: RankResult | SBIRResult, chance: dict) -> str:
  if isinstance(result, SBIRResult):
    top1, c1, what = result.acc(1), chance['acc@1'], 'acc@1'
  else:
    top1, c1, what = result.rank(1), chance['R-1'], 'rank-1'
  return (
    f'{name}: {what} {100 * top1:.2f}% = {top1 / c1:.1f}x chance ({100 * c1:.2f}%), '
    f'mAP {100 * result.mAP:.2f}% (chance {100 * chance["mAP"]:.2f}%), '
    f'{result.num_valid_queries} queries'
  )


def reid_score(distmat: np.ndarray, queries: Queries, eval_set, config) -> tuple[RankResult, dict]:
  """Re-id metrics (CMC, mAP, mINP; same-pid same-camera gallery items removed) and their chance
  levels."""
  result = evaluate_rank(
    distmat,
    queries.pids,
    eval_set.gallery_pids,
    queries.camids,
    eval_set.gallery_camids,
    max_rank=config.eval.max_rank,
  )
  chance = report.chance_levels(
    queries.pids,
    eval_set.gallery_pids,
    q_camids=queries.camids,
    g_camids=eval_set.gallery_camids,
    max_rank=config.eval.max_rank,
  )
  return result, chance


def sbir_score(distmat: np.ndarray, queries: Queries, eval_set, config) -> tuple[SBIRResult, dict]:
  """Fine-grained SBIR metrics (acc@1/5/10, mAP; evaluation/sbir.py) and their chance levels; the
  cmc of both is acc@k for k = 1..config.eval.max_rank, which the report plots."""
  result = SBIRResult.compute(
    distmat, queries.pids, eval_set.gallery_pids, max_rank=config.eval.max_rank
  )
  chance = sbir_chance_levels(
    queries.pids, eval_set.gallery_pids, result.ks, max_rank=config.eval.max_rank
  )
  return result, chance


@dataclasses.dataclass(frozen=True)
class Protocol:
  multi_query: bool  # how make_eval_set groups the query sketches
  queries: Callable  # (model, variables, table, eval_set, config) -> Queries
  # (distmat, queries, eval_set, config) -> (result with to_dict/cmc/mAP, chance levels dict)
  score: Callable = reid_score


PROTOCOLS: dict[str, Protocol] = {
  'single_query': Protocol(False, sketch_queries),
  'multi_query': Protocol(True, identity_queries),
  'sbir': Protocol(False, sketch_queries, sbir_score),
}


def parse_protocol(spec: str, default_styles: str) -> tuple[str, str]:
  """``'single_query'`` -> (name, default styles); ``'multi_query:BC'`` -> ('multi_query', 'BC')."""
  name, _, styles = spec.partition(':')
  if name not in PROTOCOLS:
    raise ValueError(
      f'unknown protocol {spec!r} in config.eval.protocols; known: {sorted(PROTOCOLS)}, each '
      "optionally followed by ':<styles>' (e.g. 'single_query:A')"
    )
  return name, styles or default_styles


@dataclasses.dataclass(frozen=True)
class Ranking:
  """What one protocol ranked: enough to draw its ranked lists."""

  distmat: np.ndarray
  queries: Queries
  eval_set: input_pipeline.EvalSet

  def query_rows(self) -> np.ndarray:
    """The table row shown for each query: the sketch itself, or a multi-query group's first."""
    if self.eval_set.query_groups is None:
      return self.eval_set.query_index
    return self.eval_set.query_index[self.eval_set.group_first()]


def ranking_figure(ranking: Ranking, table, *, num_queries: int, k: int):
  """The papers' Figs. 6–7 for one protocol: evenly spaced queries and their top-k photos."""
  q_rows, g_rows = ranking.query_rows(), ranking.eval_set.gallery_index
  return ranked_list_from_eval(
    ranking.distmat,
    ranking.queries.pids,
    ranking.eval_set.gallery_pids,
    lambda i: table.image[q_rows[i]],
    lambda i: table.image[g_rows[i]],
    k=k,
    num_queries=num_queries,
    q_camids=ranking.queries.camids,
    g_camids=ranking.eval_set.gallery_camids,
  )


def _run_protocol(model, variables, table, config, protocol, styles, gallery_cache):
  """(result, chance levels, Ranking) of one protocol; gallery embeddings are shared via the
  cache."""
  eval_set = input_pipeline.make_eval_set(table, styles, multi_query=protocol.multi_query)
  key = tuple(eval_set.gallery_index)
  if key not in gallery_cache:
    gallery_cache[key] = extract_features(
      model, variables, table, eval_set.gallery_index, modality=PHOTO, config=config
    )
  queries = protocol.queries(model, variables, table, eval_set, config)
  distmat = distances(queries, gallery_cache[key], config)
  result, chance = protocol.score(distmat, queries, eval_set, config)
  return result, chance, Ranking(distmat, queries, eval_set)


def evaluate(
  model,
  variables,
  table,
  config,
  *,
  workdir: str | None = None,
  extra: dict | None = None,
  selection=None,
) -> dict[str, RankResult | SBIRResult]:
  """Runs every protocol of ``config.eval.protocols``; writes the reports into ``workdir`` if given.

  Results are keyed by the protocol entries as written in the config ('single_query:A', …).
  ``selection`` (``evaluation.selection.Selection``, during training) takes these results with
  ``extra['epoch']``/``['step']`` before the reports are written, so they show the selected epoch
  beside this one.
  """
  specs = {spec: parse_protocol(spec, config.data.test_styles) for spec in config.eval.protocols}
  results, chances, gallery_cache, shown = {}, {}, {}, None
  for spec, (name, styles) in specs.items():
    try:
      results[spec], chances[spec], ranking = _run_protocol(
        model, variables, table, config, PROTOCOLS[name], styles, gallery_cache
      )
      shown = shown or ranking  # the first protocol's ranked lists go into the report
    except (FloatingPointError, ValueError) as err:  # which protocol failed is half the answer
      kind = FloatingPointError if isinstance(err, FloatingPointError) else ValueError
      raise kind(f'protocol {spec!r} of config.eval.protocols: {err}') from err
  table_rows = {name: r.to_dict() for name, r in results.items()}
  table_rows.update({f'chance ({name})': c for name, c in chances.items()})
  selected = None
  if selection is not None:
    selection.update(results, epoch=extra['epoch'], step=extra['step'])
    selected = selection.best
  text = (
    report.format_table(table_rows)
    + '\n'
    + '\n'.join(_versus_chance(name, results[name], chances[name]) for name in results)
    + (
      ''
      if selected is None
      else '\n\n' + report.selected_table(selected, current_step=extra['step'])
    )
  )
  print(f'evaluation{f" ({extra})" if extra else ""}\n{text}', flush=True)
  if workdir is not None and jax.process_index() == 0:
    paths = report.write_results(
      workdir,
      results,
      chance=chances[config.eval.protocols[0]],
      extra=dict(extra or {}, chance=chances),
      selected=selected,
    )
    if config.eval.ranked_list_queries:
      fig = ranking_figure(
        shown, table, num_queries=config.eval.ranked_list_queries, k=config.eval.ranked_list_topk
      )
      paths['ranked_list'] = os.path.join(workdir, 'ranked_list.png')
      fig.savefig(paths['ranked_list'], dpi=100)
    print('wrote ' + ', '.join(str(p) for p in paths.values()), flush=True)
  return results
