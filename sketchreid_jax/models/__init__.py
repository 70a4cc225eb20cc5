"""Flax linen modules, one idea per file (DESIGN.md §1, §3).

Exports the backbone (resnet.py), the re-id heads (heads.py), the MM'23 baseline (baseline.py),
CMDSL's FFAM (ffam.py) and the CMDSL backbone (cmdsl.py).
"""

from sketchreid_jax.models.baseline import PHOTO, SKETCH, Baseline
from sketchreid_jax.models.cmdsl import CMDSL
from sketchreid_jax.models.ffam import FFAM, ffam_combine
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
  'CMDSL',
  'FFAM',
  'GeM',
  'ResNet50',
  'ResNetStage',
  'ResNetStem',
  'StageSpec',
  'ffam_combine',
  'gem_pool',
  'run_stages',
  'stage_specs',
]
