"""The Non-local block that the MM'23 release applies to a fused multi-query sketch map.

The release (``Non_local(64)`` in its ``model.py``) is an embedded-dot-product non-local block
with a single inter channel and no softmax, on NCHW maps:

    g(x), θ(x), φ(x)   1×1 convolutions C → c' (c' = 1; bias on)
    f                  = θ(x)ᵀ φ(x) / N             (HW × HW, N = HW: "affinity / N")
    y                  = f · g(x)                    (HW × c')
    z                  = BN(W(y)) + x                (W: 1×1 conv c' → C with bias; BN's weight and
                                                      bias start at 0, so z = x at initialisation)

Interpretations chosen:

* We compute y as θ (φᵀ g) / N instead of (θ φᵀ) g / N. The two are equal in exact arithmetic
  (matrix products associate) and differ only by float rounding, while the first needs an HW × HW
  affinity per sample (2592² floats = 27 MB at a 288×144 input, about 0.9 GB for the 32 fused maps
  of a batch) and the second a c' × c' one.
* The 1×1 convolutions are ``PointwiseConv``: ``nn.Conv``'s parameters, computed as matrix
  products (faster gradients on CPU, ``pointwise.py``).
* The maps are NHWC; the parameter names mirror the release's (``g``, ``theta``, ``phi``,
  ``W_conv`` = ``W.0``, ``W_bn`` = ``W.1``), so ``weights.mm23`` converts them one to one.
* The BatchNorm follows the backbone's conventions (momentum 0.9 in Flax = PyTorch's 0.1, eps 1e-5,
  synchronised over ``bn_axis_name``).
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from sketchreid_jax.models.pointwise import PointwiseConv
from sketchreid_jax.models.resnet import _batch_norm

Array = jax.Array


class NonLocal(nn.Module):
  """z = BN(W(θ (φᵀ g) / HW)) + x on an NHWC map; the identity at initialisation."""

  inter_channels: int = 1
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  bn_axis_name: str | None = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, *, train: bool) -> Array:
    if x.ndim != 4:
      raise ValueError(f'NonLocal: expected an NHWC map (4 dims), got shape {tuple(x.shape)}.')
    n, h, w, c = x.shape
    conv = lambda features, name: PointwiseConv(features, dtype=self.dtype, name=name)
    flat = lambda t: t.reshape(n, h * w, -1)
    g, theta, phi = (flat(conv(self.inter_channels, k)(x)) for k in ('g', 'theta', 'phi'))
    y = theta @ (jnp.swapaxes(phi, 1, 2) @ g) / (h * w)
    y = conv(c, 'W_conv')(y.reshape(n, h, w, self.inter_channels))
    # Weight and bias start at 0 (the bias is zero-initialised by default), as in the release.
    y = _batch_norm(
      'W_bn',
      train=train,
      momentum=self.bn_momentum,
      epsilon=self.bn_epsilon,
      dtype=self.dtype,
      axis_name=self.bn_axis_name,
      zero_scale=True,
    )(y)
    return y + x
