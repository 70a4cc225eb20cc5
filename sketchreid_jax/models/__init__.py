"""Flax linen modules, one idea per file (docs/design.md §1, §3).

Exports the backbone (resnet.py), the re-id heads (heads.py), the MM'23 baseline (baseline.py),
CMDSL's FFAM (ffam.py) and backbone (cmdsl.py), and DALNet's parts: the auxiliary generator
(dag.py), U²-Net(P) (u2net.py), Modality Interactive Attention (mia.py) and the model (dalnet.py).
"""

from sketchreid_jax.modality import PHOTO, SKETCH
from sketchreid_jax.models.baseline import Baseline
from sketchreid_jax.models.cmdsl import CMDSL
from sketchreid_jax.models.dag import DAG
from sketchreid_jax.models.dalnet import DALNet
from sketchreid_jax.models.ffam import FFAM, ffam_combine
from sketchreid_jax.models.heads import BNNeck, GeM, gem_pool
from sketchreid_jax.models.mia import ACA, BAM, MIA
from sketchreid_jax.models.resnet import (
  Bottleneck,
  ResNet50,
  ResNetStage,
  ResNetStem,
  StageSpec,
  run_stages,
  stage_specs,
)
from sketchreid_jax.models.u2net import U2Net, U2NetP, predict_masks

__all__ = [
  'ACA',
  'BAM',
  'DAG',
  'DALNet',
  'MIA',
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
  'U2Net',
  'U2NetP',
  'ffam_combine',
  'gem_pool',
  'predict_masks',
  'run_stages',
  'stage_specs',
]
