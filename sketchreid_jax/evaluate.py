"""Deprecated: the evaluation moved into the ``sketchreid_jax.evaluation`` package.

* feature extraction (``extract_features``, ``stem_group_features``, ``l2_normalise``,
  ``require_finite``, and ``_extract_fn``, now the public ``extract_fn``):
  ``sketchreid_jax.evaluation.extract``;
* the protocols (``evaluate``, ``PROTOCOLS``, ``parse_protocol``, ``Queries``, ``distances``,
  ``reid_score``, ``sbir_score``, ``Ranking``, …): ``sketchreid_jax.evaluation.protocols``, where
  ``ranked_list_figure(ranking, table, ...)`` is now ``ranking_figure`` (the name
  ``evaluation.ranked_list_figure`` is the figure of ``evaluation/ranked_list.py``);
* the modality ids ``PHOTO`` and ``SKETCH``: ``sketchreid_jax.modality``.

This module only re-exports those names so that old imports keep working; import from the new
modules instead.
"""

from sketchreid_jax.evaluation.extract import (  # noqa: F401
  ROLE,
  extract_features,
  extract_fn,
  l2_normalise,
  require_finite,
  stem_group_features,
)
from sketchreid_jax.evaluation.protocols import (  # noqa: F401
  AGGREGATES,
  PROTOCOLS,
  Protocol,
  Queries,
  Ranking,
  distances,
  euclidean,
  evaluate,
  identity_queries,
  parse_protocol,
  reid_score,
  sbir_score,
  sketch_queries,
)
from sketchreid_jax.evaluation.protocols import ranking_figure as ranked_list_figure  # noqa: F401
from sketchreid_jax.evaluation.ranking import RankResult  # noqa: F401
from sketchreid_jax.evaluation.sbir import SBIRResult  # noqa: F401
from sketchreid_jax.modality import PHOTO, SKETCH  # noqa: F401

# The same cached function, so old and new callers share its compilations.
_extract_fn = extract_fn
