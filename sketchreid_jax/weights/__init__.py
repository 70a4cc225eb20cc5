"""Converters from the reference checkpoints (docs/design.md §1, §3): torchvision ResNet-50 and the
official U²-Net(P), plus reading/writing state dicts and Flax variables (``io``) and copying a
converted ResNet-50 into every stream of a re-id model (``pretrained``)."""

from sketchreid_jax.weights.pretrained import (
  BackboneReport,
  load_pretrained_backbone,
  read_backbone_checkpoint,
)
from sketchreid_jax.weights.resnet import torchvision_resnet50
from sketchreid_jax.weights.u2net import u2net_from_state_dict

__all__ = [
  'BackboneReport',
  'load_pretrained_backbone',
  'read_backbone_checkpoint',
  'torchvision_resnet50',
  'u2net_from_state_dict',
]
