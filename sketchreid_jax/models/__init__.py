"""Flax linen modules, one idea per file (DESIGN.md §1, §3).

Exports the backbone (resnet.py), the re-id heads (heads.py) and the MM'23 baseline (baseline.py).
"""

from sketchreid_jax.models.baseline import PHOTO, SKETCH, Baseline
from sketchreid_jax.models.heads import BNNeck, GeM, gem_pool
from sketchreid_jax.models.resnet import (
  Bottleneck,
  ResNet50,
  ResNetStage,
  ResNetStem,
  StageSpec,
  run_stages,
  stage_specs,
)

__all__ = [
  'PHOTO',
  'SKETCH',
  'BNNeck',
  'Baseline',
  'Bottleneck',
  'GeM',
  'ResNet50',
  'ResNetStage',
  'ResNetStem',
  'StageSpec',
  'gem_pool',
  'run_stages',
  'stage_specs',
]
