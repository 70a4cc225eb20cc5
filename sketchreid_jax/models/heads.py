"""Re-id heads: generalised-mean pooling (GeM) and the BNNeck.

Implements docs/design.md §4 "Baseline" (GeM p = 3, BNNeck) and the learnable-p GeM of "Three streams"
(DALNet).

GeM over the H×W positions of an NHWC map (Radenović et al.):

    gem(x)_c = ( (1 / HW) Σ_{h,w} max(x_{hwc}, eps)^p )^(1/p)

p = 1 is average pooling; p → ∞ approaches max pooling.

Interpretations chosen:

* The power is computed in float32 whatever the input dtype: x^3 of bfloat16 activations loses
  most of its mantissa and the 1/p root amplifies it. The output is float32 (heads compute in
  float32, docs/design.md §4).
* Learnable p is a parameter named ``p`` of shape (1,) initialised to ``p``. We do not clamp it
  during training (the paper gives no bound); only the initial value is checked to be > 0.
* BNNeck: BatchNorm1d over the feature with a frozen zero bias in the reference; ``use_bias=False``
  is the same function and cannot drift under weight decay. Scale init N(1, 0.01²); classifier a
  bias-free Dense with N(0, 0.001²) init. Returns (bn_feat, logits), logits float32.
* Flax's BatchNorm updates the running variance with the biased batch variance; PyTorch's
  BatchNorm1d uses the unbiased one (factor n/(n−1), ~1.6 % at a 64-sample batch). We keep Flax's
  behaviour; normalisation in train mode is identical (both use the biased variance).
"""

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any
Array = jax.Array


def normal_around(mean: float, stddev: float) -> Callable[..., Array]:
  """Initializer drawing N(mean, stddev²)."""

  def init(key: Array, shape: Sequence[int], dtype: Dtype = jnp.float32) -> Array:
    return mean + stddev * jax.random.normal(key, shape, dtype)

  return init


def gem_pool(x: Array, p: Array | float, *, eps: float) -> Array:
  """GeM of an NHWC map over H×W: (mean_{hw} clamp(x, eps)^p)^(1/p), computed in float32.

  Evaluated as m · (mean_{hw} (x/m)^p)^(1/p) with m the channel's maximum (held constant for
  the gradient, which is exact because the expression does not depend on m). Written directly,
  x^p underflows for a learnable p: a dead channel (every x clamped to eps = 1e-6) gives
  eps^p = 0 in float32 once p > 6.3, and the backward pass of 0^(1/p) is inf · 0 = NaN. Here the
  mean is at least 1/HW (the maximum contributes 1), so it never underflows.
  """
  x = jnp.maximum(x.astype(jnp.float32), eps)
  p = jnp.asarray(p, jnp.float32)
  m = jax.lax.stop_gradient(jnp.max(x, axis=(1, 2), keepdims=True))
  return m[:, 0, 0] * jnp.mean((x / m) ** p, axis=(1, 2)) ** (1.0 / p)


class GeM(nn.Module):
  """Generalised-mean pooling NHWC (N, H, W, C) -> (N, C) float32."""

  p: float = 3.0
  learnable: bool = False
  eps: float = 1e-6
  # A floor on a learnable p (0 = none); the value used is max(p, p_min).
  p_min: float = 0.0

  @nn.compact
  def __call__(self, x: Array) -> Array:
    if x.ndim != 4:
      raise ValueError(f'GeM: expected an NHWC map (4 dims), got shape {tuple(x.shape)}.')
    if self.eps <= 0:
      raise ValueError(f'GeM: eps must be > 0 (it keeps x^(1/p) differentiable), got {self.eps}.')
    if self.p <= 0:
      raise ValueError(
        f'GeM: p must be > 0 (1 = average pooling, 3 = the re-id default), got {self.p}.'
      )
    p = (
      self.param('p', nn.initializers.constant(self.p), (1,), jnp.float32)
      if self.learnable
      else self.p
    )
    if self.learnable and self.p_min > 0:
      p = jnp.maximum(p, self.p_min)
    return gem_pool(x, p, eps=self.eps)


class BNNeck(nn.Module):
  """BatchNorm1d (no bias) over the feature, then a bias-free linear classifier.

  ``__call__(feat, *, train) -> (bn_feat, logits)``; logits are float32.
  """

  num_classes: int
  bn_axis_name: str | None = None
  dtype: Dtype = jnp.float32
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  scale_init_std: float = 0.01
  classifier_init_std: float = 0.001

  @nn.compact
  def __call__(self, feat: Array, *, train: bool) -> tuple[Array, Array]:
    if not isinstance(self.num_classes, int) or self.num_classes < 1:
      raise ValueError(
        f'BNNeck: num_classes must be a positive int (the number of training '
        f'identities), got {self.num_classes!r}.'
      )
    if feat.ndim != 2:
      raise ValueError(
        f'BNNeck: expected pooled features (N, D), got shape {tuple(feat.shape)}; '
        f'pool the feature map first (GeM).'
      )
    bn_feat = nn.BatchNorm(
      use_running_average=not train,
      momentum=self.bn_momentum,
      epsilon=self.bn_epsilon,
      dtype=self.dtype,
      axis_name=self.bn_axis_name,
      use_bias=False,
      scale_init=normal_around(1.0, self.scale_init_std),
      name='bn',
    )(feat)
    logits = nn.Dense(
      self.num_classes,
      use_bias=False,
      dtype=self.dtype,
      kernel_init=nn.initializers.normal(self.classifier_init_std),
      name='classifier',
    )(bn_feat)
    return bn_feat, logits.astype(jnp.float32)
