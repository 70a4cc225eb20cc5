"""The Flexible Feature Aggregation Module (FFAM) of CMDSL on NHWC maps.

Implements CMDSL seed §3.1, Eqs. 1–5 (docs/design.md §4 "FFAM"). For a map f (per sample, C×H×W):

    f_IN   = (f − E[f]) / sqrt(Var[f] + eps)        (1)  E, Var per sample per channel over H×W
    f⁻     = f − f_IN                                (2)  the style residual IN removed
    m      = σ(L2 ReLU(L1 g(f)))                     (3)  g = global average pooling, m ∈ [0, 1]^C
    f_mask = m ⊗ f⁻                                  (4)
    f'     = f_IN ⊕ f_mask = f_IN + m ⊗ (f − f_IN)   (5)

``ffam_combine`` is Eqs. 1, 2, 4, 5 for a given mask; ``FFAM`` computes the mask (Eq. 3) and
applies it.

Interpretations chosen (the seed leaves these open):

* Instance norm has no affine parameters (Eq. 1 has none), uses the biased variance (what
  ``InstanceNorm2d`` normalises with) and puts eps inside the square root (as written), default
  1e-5 (PyTorch's default). The statistics and the combination are computed in float32 whatever
  the input dtype, because the variance of bfloat16 activations loses most of its mantissa; the
  output is cast back to the input dtype so the next ResNet stage computes in its own dtype.
* Eq. 5 is evaluated as (1 − m) ⊗ f_IN + m ⊗ f, algebraically identical to f_IN + m ⊗ (f − f_IN)
  but exact at the ends of the mask's range: m = 1 returns f and m = 0 returns f_IN without a
  cancellation error.
* g(·) "global pooling" is average pooling (SE-Net's squeeze, which the seed cites), taken over
  the raw map f, not over f_IN or f⁻.
* L1: C → C/r and L2: C/r → C are Dense layers with bias (SE-Net), ``fc1``/``fc2``; C/r is floor
  division with at least one hidden unit, so narrow test networks still work. Init as PyTorch's
  ``nn.Linear`` default (U(±1/√fan_in) for kernel and bias), the SE-Net reference's framework.
  The mask MLP computes in ``dtype`` with float32 parameters; GAP is taken in float32.
* The mask is not stop-gradient'ed: the seed trains L1, L2 end to end.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from sketchreid_jax.models.resnet import torch_linear_bias_init, torch_linear_kernel_init

Dtype = Any
Array = jax.Array


def _check_map(f: Array, where: str) -> None:
  if f.ndim != 4:
    raise ValueError(
      f'{where}: expected an NHWC feature map (N, H, W, C), got shape {tuple(f.shape)}.'
    )


def _check_eps(eps: float, where: str) -> None:
  if not eps > 0:
    raise ValueError(
      f'{where}: eps must be > 0 (it keeps instance norm finite on a constant channel), got {eps}.'
    )


def ffam_combine(f: Array, m: Array, *, eps: float = 1e-5) -> Array:
  """f' = f_IN + m ⊗ (f − f_IN) (CMDSL Eqs. 1, 2, 4, 5).

  f_IN = (f − mean_{hw} f) / sqrt(mean_{hw} (f − mean_{hw} f)² + eps), per sample and channel.

  Args:
    f: NHWC map (N, H, W, C).
    m: channel mask (N, C), values in [0, 1] (not checked: it is traced under jit).
    eps: added to the variance inside the square root.

  Returns:
    f' with the shape and dtype of ``f``; computed in float32.
  """
  _check_map(f, 'ffam_combine')
  _check_eps(eps, 'ffam_combine')
  if m.shape != (f.shape[0], f.shape[-1]):
    raise ValueError(
      f'ffam_combine: the mask must be (N, C) = {(f.shape[0], f.shape[-1])} for a map of shape '
      f'{tuple(f.shape)}, got {tuple(m.shape)}; compute one weight per sample and channel.'
    )
  x = f.astype(jnp.float32)
  mean = jnp.mean(x, axis=(1, 2), keepdims=True)
  centred = x - mean
  # Two-pass variance: E[x²] − E[x]² cancels catastrophically on large, nearly constant channels.
  var = jnp.mean(jnp.square(centred), axis=(1, 2), keepdims=True)
  f_in = centred * jax.lax.rsqrt(var + eps)
  w = m.astype(jnp.float32)[:, None, None, :]
  return ((1.0 - w) * f_in + w * x).astype(f.dtype)


class FFAM(nn.Module):
  """CMDSL's FFAM: channel mask m = σ(fc2(ReLU(fc1(GAP(f))))) (Eq. 3), then ``ffam_combine``.

  ``__call__(f) -> f'``: NHWC in, NHWC out (same shape and dtype). No batch statistics, so there
  is no ``train`` argument.
  """

  reduction: int = 16
  eps: float = 1e-5
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, f: Array) -> Array:
    _check_map(f, 'FFAM')
    r = self.reduction
    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
      raise ValueError(
        f'FFAM: reduction must be a positive int (the SE ratio r; 16 in CMDSL), '
        f'got {self.reduction!r}.'
      )
    channels = f.shape[-1]
    hidden = max(1, channels // r)
    g = jnp.mean(f.astype(jnp.float32), axis=(1, 2))
    h = nn.Dense(
      hidden,
      dtype=self.dtype,
      kernel_init=torch_linear_kernel_init(),
      bias_init=torch_linear_bias_init(channels),
      name='fc1',
    )(g)
    m = nn.Dense(
      channels,
      dtype=self.dtype,
      kernel_init=torch_linear_kernel_init(),
      bias_init=torch_linear_bias_init(hidden),
      name='fc2',
    )(nn.relu(h))
    return ffam_combine(f, nn.sigmoid(m), eps=self.eps)
