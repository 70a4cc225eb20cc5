"""Deprecated: the ranked-list figure moved to ``sketchreid_jax.evaluation.ranked_list``.

The evaluation draws ``ranked_list.png`` itself and must not depend on ``viz``, so the figure lives
with the evaluation; this module re-exports it so that old imports keep working.
"""

from sketchreid_jax.evaluation.ranked_list import (  # noqa: F401
  CORRECT_COLOR,
  NEUTRAL_COLOR,
  WRONG_COLOR,
  load_image,
  ranked_list_figure,
  ranked_list_from_eval,
  top_k_matches,
)
