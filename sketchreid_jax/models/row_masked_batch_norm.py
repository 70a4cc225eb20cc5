"""BatchNorm over an NHWC batch whose statistics leave some rows (images) out.

The stem of a fused multi-query batch sees padded sketch sets (``models/fusion.py``): the padding
images must not enter bn1's batch statistics. ``nn.BatchNorm(mask=...)`` takes an element mask of
the input's shape; XLA:CPU then materialises the masked input and its square, and counts the mask
element by element: for the 48 sketches of a batch-16 multi-query step that was about 0.4 s of the
2-core CPU's thread time per step, for a mask that is constant over each image. Here the mask is
one flag per row: each image's sums over (H, W) are taken first, the flags weight those (N, C)
sums, and the count is ``sum(mask)·H·W``.

Everything else is ``nn.BatchNorm``'s (flax.linen, ``use_fast_variance``): the same variables
(``params``: scale, bias; ``batch_stats``: mean, var) with the same initialisers, statistics in
float32 as E[x²] − E[x]² clipped at 0, one ``pmean`` of the stacked (mean, mean of squares) over
``axis_name`` (not while initialising), the running averages left alone while initialising, and
the output ``(x − mean)·(rsqrt(var + ε)·scale) + bias`` in ``dtype``. Without a mask it is the
same computation as ``nn.BatchNorm``; with one, the sums run in another order (float rounding).
tests/test_fast_layers.py holds it against ``nn.BatchNorm`` with the broadcast mask.
"""

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

Array = jax.Array


class RowMaskedBatchNorm(nn.Module):
  """``nn.BatchNorm`` on NHWC (features last) with an optional (N,) row mask for the statistics."""

  use_running_average: bool = False
  momentum: float = 0.99
  epsilon: float = 1e-5
  dtype: Any = None
  axis_name: str | None = None
  scale_init: Callable[..., Array] = nn.initializers.ones
  bias_init: Callable[..., Array] = nn.initializers.zeros

  @nn.compact
  def __call__(self, x: Array, mask: Array | None = None) -> Array:
    if x.ndim != 4:
      raise ValueError(f'RowMaskedBatchNorm: expected NHWC (4 dims), got shape {tuple(x.shape)}.')
    if mask is not None and mask.shape != x.shape[:1]:
      raise ValueError(
        f'RowMaskedBatchNorm: mask must be one flag per row, shape {x.shape[:1]}, got '
        f'{tuple(mask.shape)}.'
      )
    features = (x.shape[-1],)
    ra_mean = self.variable('batch_stats', 'mean', jnp.zeros, features, jnp.float32)
    ra_var = self.variable('batch_stats', 'var', jnp.ones, features, jnp.float32)
    scale = self.param('scale', self.scale_init, features, jnp.float32)
    bias = self.param('bias', self.bias_init, features, jnp.float32)

    if self.use_running_average:
      mean, var = ra_mean.value, ra_var.value
    else:
      mean, var = self._statistics(x, mask)
      if not self.is_initializing():
        ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
        ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var

    y = x - mean
    y *= lax.rsqrt(var + self.epsilon) * scale
    y += bias
    return jnp.asarray(y, nn.dtypes.canonicalize_dtype(x, scale, bias, dtype=self.dtype))

  def _statistics(self, x: Array, mask: Array | None) -> tuple[Array, Array]:
    x = x.astype(jnp.promote_types(self.dtype or x.dtype, jnp.float32))
    if mask is None:
      moments = jnp.stack([x.mean((0, 1, 2)), (x * x).mean((0, 1, 2))])
    else:
      per_row = jnp.stack([x.sum((1, 2)), (x * x).sum((1, 2))])  # (2, N, C)
      # A select, not a product with the flags: a non-finite padding row must not leak in.
      total = jnp.sum(jnp.where(mask[None, :, None], per_row, 0.0), axis=1)
      moments = total / (jnp.sum(mask.astype(x.dtype)) * (x.shape[1] * x.shape[2]))
    if self.axis_name is not None and not self.is_initializing():
      moments = lax.pmean(moments, self.axis_name)
    mean, mean_sq = moments[0], moments[1]
    return mean, jnp.maximum(0.0, mean_sq - mean * mean)
