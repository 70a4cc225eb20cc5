r"""The baseline's training step in PyTorch eager: what ``tools.bench --reference=torch`` times.

  python -m sketchreid_jax.torch_reference --width=64 --image_size=288,144 --P=4 --K=2 --steps=3

The same architecture and losses as the MM'23 baseline part of every method here, written the
way the PyTorch re-id code is: torchvision's ResNet-50 (v1.5 Bottlenecks, the stride on the 3×3
conv) with the last stride 1, a modality-specific stem (conv1, bn1, ReLU, max-pool) per modality
and shared layer1–4, GeM (p = 3), a BNNeck (BatchNorm1d without bias, bias-free classifier),
cross-entropy on the BNNeck logits plus the weighted regularised triplet (the release's
``TripletLoss_WRT``) on the pre-BN feature, SGD with Nesterov momentum 0.9 and weight decay 5e-4.
The blocks are written out here (torchvision's layer names and shapes) so that the reference needs
only ``torch``: PyPI's torchvision does not import beside every torch build.

The step runs on random images in NCHW (PyTorch's default layout) with ``torch.get_num_threads()``
threads, after one untimed warm-up step. It prints one JSON line: the mean step time, images/s,
and this process's resident memory before the first step and at its peak (its own process, so
JAX's memory is not in it).
"""

import argparse
import json
import time

import torch
import torch.nn.functional as F
from torch import nn

from sketchreid_jax.runtime import rss_mb

EXPANSION = 4
BLOCKS = (3, 4, 6, 3)


class Bottleneck(nn.Module):
  """torchvision's Bottleneck: 1×1 → 3×3 (stride) → 1×1 (×4), residual, ReLU."""

  def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: bool = False):
    super().__init__()
    self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.conv3 = nn.Conv2d(planes, planes * EXPANSION, 1, bias=False)
    self.bn3 = nn.BatchNorm2d(planes * EXPANSION)
    self.downsample = (
      nn.Sequential(
        nn.Conv2d(inplanes, planes * EXPANSION, 1, stride, bias=False),
        nn.BatchNorm2d(planes * EXPANSION),
      )
      if downsample
      else None
    )

  def forward(self, x):
    out = F.relu(self.bn1(self.conv1(x)))
    out = F.relu(self.bn2(self.conv2(out)))
    out = self.bn3(self.conv3(out))
    return F.relu(out + (self.downsample(x) if self.downsample is not None else x))


def stem(width: int) -> nn.Sequential:
  return nn.Sequential(
    nn.Conv2d(3, width, 7, 2, 3, bias=False),
    nn.BatchNorm2d(width),
    nn.ReLU(inplace=True),
    nn.MaxPool2d(3, 2, 1),
  )


class TwoStreamResNet50(nn.Module):
  """Photo and sketch stems, shared layer1–4 (last stride 1), GeM, BNNeck."""

  def __init__(self, num_classes: int, width: int = 64, blocks=BLOCKS, last_stride: int = 1):
    super().__init__()
    self.photo_stem, self.sketch_stem = stem(width), stem(width)
    layers, inplanes = [], width
    for i, (n, stride) in enumerate(zip(blocks, (1, 2, 2, last_stride))):
      planes = width * 2**i
      stage = [Bottleneck(inplanes, planes, stride, downsample=True)]
      inplanes = planes * EXPANSION
      stage += [Bottleneck(inplanes, planes) for _ in range(n - 1)]
      layers.append(nn.Sequential(*stage))
    self.layer1, self.layer2, self.layer3, self.layer4 = layers
    self.neck = nn.BatchNorm1d(inplanes)
    self.neck.bias.requires_grad_(False)
    self.classifier = nn.Linear(inplanes, num_classes, bias=False)

  def forward(self, photos, sketches):
    """``sketches`` (N, 3, H, W), or (N, M, 3, H, W) sets fused at the stem (the mean of each
    set's stem maps, as the release's multi-query training)."""
    if sketches.ndim == 5:
      n, m = sketches.shape[:2]
      maps = self.sketch_stem(sketches.flatten(0, 1))
      sketch_maps = maps.view(n, m, *maps.shape[1:]).mean(1)
    else:
      sketch_maps = self.sketch_stem(sketches)
    x = torch.cat([self.photo_stem(photos), sketch_maps])
    x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
    feat = gem(x)
    return feat, self.classifier(self.neck(feat))


def gem(x, p: float = 3.0, eps: float = 1e-6):
  """GeM over H×W of an NCHW map: (mean clamp(x, eps)^p)^(1/p)."""
  return x.clamp(min=eps).pow(p).mean(dim=(2, 3)).pow(1.0 / p)


def _softmax_weights(dist, mask):
  max_v = torch.max(dist * mask, dim=1, keepdim=True)[0]
  diff = dist - max_v
  z = torch.sum(torch.exp(diff) * mask, dim=1, keepdim=True) + 1e-6
  return torch.exp(diff) * mask / z


def wrt(feat, labels):
  """The release's TripletLoss_WRT (no feature normalisation)."""
  sq = feat.pow(2).sum(1, keepdim=True)
  dist = (sq + sq.t() - 2 * feat @ feat.t()).clamp(min=1e-12).sqrt()
  is_pos = labels[:, None].eq(labels[None, :]).float()
  is_neg = 1 - is_pos
  dist_ap, dist_an = dist * is_pos, dist * is_neg
  furthest_positive = torch.sum(dist_ap * _softmax_weights(dist_ap, is_pos), 1)
  closest_negative = torch.sum(dist_an * _softmax_weights(-dist_an, is_neg), 1)
  return F.soft_margin_loss(closest_negative - furthest_positive, torch.ones_like(closest_negative))


def bench(
  *,
  width: int,
  image_size,
  P: int,
  K: int,
  steps: int,
  num_classes: int = 500,
  blocks=BLOCKS,
  set_size: int = 0,
) -> dict:
  """``set_size`` > 0: every sketch slot holds a set of that many sketches (fused at the stem)."""
  torch.manual_seed(0)
  model = TwoStreamResNet50(num_classes, width, blocks).train()
  opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)
  h, w = image_size
  photos = torch.randn(P * K, 3, h, w)
  sketches = torch.randn(P * K, *((set_size,) if set_size else ()), 3, h, w)
  ids = torch.randperm(num_classes)[:P]
  labels = ids.repeat_interleave(K).repeat(2)

  def step():
    feat, logits = model(photos, sketches)
    loss = F.cross_entropy(logits, labels) + wrt(feat, labels)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return float(loss.detach())

  rss_before_mb = rss_mb('VmRSS')
  t = time.perf_counter()
  step()
  first_s = time.perf_counter() - t
  t = time.perf_counter()
  for _ in range(steps):
    step()
  step_s = (time.perf_counter() - t) / steps
  return {
    'framework': f'torch {torch.__version__} eager',
    'threads': torch.get_num_threads(),
    'width': width,
    'image_size': list(image_size),
    'batch': 2 * P * K,
    'sketch_set_size': set_size,
    'first_step_s': first_s,
    'step_s': step_s,
    'images_per_s': 2 * P * K / step_s,
    'host_rss_before_first_step_mb': rss_before_mb,
    'peak_host_rss_mb': rss_mb(),
  }


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(prog='python -m sketchreid_jax.torch_reference', description=__doc__)
  p.add_argument('--width', type=int, default=64)
  p.add_argument('--image_size', default='288,144')
  p.add_argument('--P', type=int, default=4)
  p.add_argument('--K', type=int, default=2)
  p.add_argument('--blocks', default='3,4,6,3', help='Bottlenecks per stage')
  p.add_argument('--steps', type=int, default=3)
  p.add_argument('--set_size', type=int, default=0, help='> 0: sketch sets fused at the stem')
  args = p.parse_args(argv)
  result = bench(
    width=args.width,
    image_size=tuple(int(x) for x in args.image_size.split(',')),
    P=args.P,
    K=args.K,
    steps=args.steps,
    blocks=tuple(int(x) for x in args.blocks.split(',')),
    set_size=args.set_size,
  )
  print(json.dumps(result))
  return result


if __name__ == '__main__':
  main()
