"""Evaluation: ranking metrics (re-id ``evaluate_rank``, fine-grained SBIR ``sbir_accuracy``) and
result reports."""

from sketchreid_jax.evaluation.ranking import RankResult
from sketchreid_jax.evaluation.ranking import evaluate_rank
from sketchreid_jax.evaluation.ranking import pairwise_distance
from sketchreid_jax.evaluation.rerank import k_reciprocal_rerank
from sketchreid_jax.evaluation.report import chance_levels
from sketchreid_jax.evaluation.report import format_table
from sketchreid_jax.evaluation.report import plot_cmc
from sketchreid_jax.evaluation.report import write_results
from sketchreid_jax.evaluation.sbir import SBIRResult
from sketchreid_jax.evaluation.sbir import sbir_accuracy
from sketchreid_jax.evaluation.sbir import sbir_chance_levels
from sketchreid_jax.evaluation.sbir import sbir_map
from sketchreid_jax.evaluation.sbir import sbir_ranks
