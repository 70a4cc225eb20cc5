"""Evaluation: feature extraction (extract.py), the retrieval protocols (protocols.py), ranking
metrics (re-id ``evaluate_rank``, fine-grained SBIR ``sbir_accuracy``), k-reciprocal re-ranking,
result reports and the ranked-list figure.

Nothing here imports ``sketchreid_jax.viz``: the plots for notebooks build on the evaluation, not
the other way round (tests/test_layering.py).

The names of extract.py and protocols.py are loaded on first use (module ``__getattr__``): both
import TensorFlow through the input pipeline, and the numpy-only parts (ranking, sbir, rerank,
report) must stay cheap to import for tools and notebooks that only score distance matrices.
"""

import importlib

from sketchreid_jax.evaluation.ranked_list import (
  ranked_list_figure,
  ranked_list_from_eval,
  top_k_matches,
)
from sketchreid_jax.evaluation.ranking import RankResult, evaluate_rank, pairwise_distance
from sketchreid_jax.evaluation.report import chance_levels, format_table, plot_cmc, write_results
from sketchreid_jax.evaluation.rerank import k_reciprocal_rerank
from sketchreid_jax.evaluation.sbir import (
  SBIRResult,
  sbir_accuracy,
  sbir_chance_levels,
  sbir_map,
  sbir_ranks,
)

# name -> the submodule that defines it, imported on first access
_LAZY = {
  **dict.fromkeys(
    (
      'extract_features',
      'extract_fn',
      'l2_normalise',
      'require_finite',
      'stem_group_features',
    ),
    'extract',
  ),
  **dict.fromkeys(
    (
      'AGGREGATES',
      'PROTOCOLS',
      'Protocol',
      'Queries',
      'Ranking',
      'distances',
      'euclidean',
      'evaluate',
      'identity_queries',
      'parse_protocol',
      'ranking_figure',
      'reid_score',
      'sbir_score',
      'sketch_queries',
    ),
    'protocols',
  ),
}

__all__ = [
  'RankResult',
  'SBIRResult',
  'chance_levels',
  'evaluate_rank',
  'format_table',
  'k_reciprocal_rerank',
  'pairwise_distance',
  'plot_cmc',
  'ranked_list_figure',
  'ranked_list_from_eval',
  'sbir_accuracy',
  'sbir_chance_levels',
  'sbir_map',
  'sbir_ranks',
  'top_k_matches',
  'write_results',
  *sorted(_LAZY),
]


def __getattr__(name: str):
  if name not in _LAZY:
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
  value = getattr(importlib.import_module(f'{__name__}.{_LAZY[name]}'), name)
  globals()[name] = value  # later lookups skip this function
  return value


def __dir__():
  return sorted(set(globals()) | set(_LAZY))
