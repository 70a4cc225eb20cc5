"""Plots and analyses for notebooks (docs/design.md §1 ``viz/``): Grad-CAM, t-SNE, CMC comparisons, DAG
previews and ranked lists. Every figure is a matplotlib ``Figure`` on the Agg canvas (no
``pyplot``), so importing this package never changes a notebook's backend.

``viz.gradcam`` is the Grad-CAM function (the module's own names, its stage-split registry
included, are re-exported here). The ranked lists are the figure the evaluation draws
into ``ranked_list.png`` (``evaluation.ranked_list``), re-exported here.
"""

from sketchreid_jax.evaluation.ranked_list import (
  ranked_list_figure,
  ranked_list_from_eval,
  top_k_matches,
)
from sketchreid_jax.viz.cmc import load_cmc, plot_cmc_runs
from sketchreid_jax.viz.dag_preview import auxiliary_images, dag_preview_figure
from sketchreid_jax.viz.gradcam import (
  StageSplit,
  cam_from_gradients,
  default_stage,
  display_rgb,
  embed,
  gradcam,
  overlay_figure,
  valid_stages,
)
from sketchreid_jax.viz.tsne import modality_embeddings, tsne_figure, tsne_points

__all__ = [
  'StageSplit',
  'auxiliary_images',
  'cam_from_gradients',
  'dag_preview_figure',
  'default_stage',
  'display_rgb',
  'embed',
  'gradcam',
  'load_cmc',
  'modality_embeddings',
  'overlay_figure',
  'plot_cmc_runs',
  'ranked_list_figure',
  'ranked_list_from_eval',
  'top_k_matches',
  'tsne_figure',
  'tsne_points',
  'valid_stages',
]
