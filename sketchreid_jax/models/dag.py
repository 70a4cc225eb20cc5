"""DALNet's Dynamic Auxiliary Generator (DAG): a sketch-like auxiliary image from a photo.

Implements DALNet / docs/design.md §4 "DAG". For a photo x (NHWC, 3 channels) and a
foreground mask m (NHWC, 1 channel, values in [0, 1]):

    x_fg = N(m ⊙ N⁻¹(x))                      background removed in pixel space (m: frozen U²-Net)
    g    = Σ_c w_c x_fg,c                     1×1 conv RGB → 1 channel (grey)
    e    = K ∗ g                              3×3 conv, K initialised to centre 9, neighbours −0.8
    aux  = [e, e, e]                          replicated to 3 channels for a ResNet stem

K (``edge_kernel``) is the only trainable DAG parameter. The initial K sums to 9 − 8·0.8 = 2.6, so
a flat region of grey value g maps to 2.6·g and an edge is amplified (a sharpening, "edge
enhancement" prior that training then adapts toward the sketch style).

Interpretations chosen (the seed's formula images were lost):

* The 1×1 conv uses fixed ITU-R BT.601 luma weights (0.299, 0.587, 0.114) without a bias. The seed
  calls the 3×3 kernel "the only trainable and optimizable part" of the DAG, so the grey
  conversion is a constant; the seed gives no values for it, BT.601 is what ``cv2`` and
  ``PIL.Image.convert('L')`` use.
* The DAG receives the pipeline's ImageNet-normalised RGB (what the photo stem sees). N is that
  normalisation, x ↦ (x − mean) / std with x in [0, 1], and N⁻¹ its inverse: the mask multiplies
  the *pixels*, so a removed background is black, as in the seed's "filter the original image
  pixel by pixel", and the result is normalised again like every image the stems see. (Masking
  the normalised image instead would turn the background into the ImageNet mean colour, i.e. grey
  0 after normalisation, which is not what the seed's masked photo looks like.) A zero-masked
  region is therefore the constant N(0) per channel and, through the grey conversion and the edge
  kernel, a flat region of value 2.6 · Σ_c w_c N(0)_c, whatever the photo held there.
* ``mask=None`` is the ``none`` mask source (no masking). A mask is (N, H, W, 1) at the photo's
  resolution (``precomputed`` and ``u2net`` both deliver that); it is not clipped to [0, 1].
* The 3×3 conv pads by replicating the border pixel (``pad_mode='edge'``) so the output keeps the
  input size and a flat image stays flat up to the border. Zero padding (PyTorch's ``padding=1``,
  ``pad_mode='constant'``) would treat the outside as grey 0: since K sums to 2.6 but its centre is
  9, every border pixel of a flat region of value g would read 5·g (6.6·g at corners) instead of
  2.6·g, a bright frame the backbone could latch on to. ``'reflect'`` and ``'symmetric'`` are also
  accepted.
* One kernel with one input and one output channel (3, 3, 1, 1), HWIO as ``nn.Conv``; no bias (the
  seed names only the kernel values). The single edge channel is copied, not convolved three times.
* ``trainable=False`` (DALNet Table 2's frozen-DAG row) keeps the parameter, so checkpoints and
  optimiser states have the same tree, and wraps it in ``stop_gradient``. A stopped gradient
  alone does not freeze a parameter (coupled weight decay and momentum still move it), so the
  method also names it in ``Method.frozen_params``, whose parameters the optimiser never updates
  (``optim.make_optimizer``).
* Computed in float32 (the input of a ResNet stem is small and the kernel amplifies by 9); the
  output is cast back to the input dtype.
"""

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from sketchreid_jax.models.u2net import IMAGENET_MEAN, IMAGENET_STD

Dtype = Any
Array = jax.Array

PAD_MODES = ('edge', 'constant', 'reflect', 'symmetric')


def edge_kernel_init(center: float, neighbour: float, dtype: Dtype = jnp.float32) -> Array:
  """The 3×3 edge kernel: ``center`` in the middle, ``neighbour`` at the eight other taps."""
  kernel = jnp.full((3, 3), neighbour, dtype)
  return kernel.at[1, 1].set(center)


def mask_pixels(images: Array, mask: Array) -> Array:
  """N(m ⊙ N⁻¹(x)): ImageNet-normalised RGB with the background (m = 0) set to black, float32."""
  mean = jnp.asarray(IMAGENET_MEAN, jnp.float32)
  std = jnp.asarray(IMAGENET_STD, jnp.float32)
  pixels = images.astype(jnp.float32) * std + mean
  return (pixels * mask.astype(jnp.float32) - mean) / std


def grey(images: Array, weights: Sequence[float]) -> Array:
  """The 1×1 conv RGB → grey: (..., 3) -> (..., 1), Σ_c weights[c] · images[..., c], in float32."""
  if images.ndim < 1 or images.shape[-1] != 3:
    raise ValueError(
      f'grey: expected RGB images with 3 channels last, got shape {tuple(images.shape)}.'
    )
  if len(weights) != 3:
    raise ValueError(f'grey: expected one weight per RGB channel (3), got {tuple(weights)!r}.')
  w = jnp.asarray(weights, jnp.float32)
  # An elementwise sum rather than a matmul: exact float32 on every backend (no TF32 dot).
  return jnp.sum(images.astype(jnp.float32) * w, axis=-1, keepdims=True)


class DAG(nn.Module):
  """``__call__(images, mask=None) -> aux``: (N, H, W, 3) photos -> (N, H, W, 3) edge maps.

  ``images`` are the pipeline's ImageNet-normalised RGB; ``mask`` is (N, H, W, 1) in [0, 1] or
  ``None`` (no masking). The three output channels are identical.
  """

  center: float = 9.0
  neighbour: float = -0.8
  grey_weights: tuple[float, float, float] = (0.299, 0.587, 0.114)
  trainable: bool = True
  pad_mode: str = 'edge'

  @nn.compact
  def __call__(self, images: Array, mask: Array | None = None) -> Array:
    if images.ndim != 4 or images.shape[-1] != 3:
      raise ValueError(
        f'DAG: expected NHWC RGB photos (N, H, W, 3), got shape {tuple(images.shape)}.'
      )
    if self.pad_mode not in PAD_MODES:
      raise ValueError(
        f'DAG: pad_mode must be one of {PAD_MODES} (jnp.pad modes; edge keeps flat borders '
        f'flat), got {self.pad_mode!r}.'
      )
    x = images.astype(jnp.float32)
    if mask is not None:
      if mask.shape != (*images.shape[:3], 1):
        raise ValueError(
          f'DAG: the foreground mask must be (N, H, W, 1) = {(*images.shape[:3], 1)} for photos '
          f'of shape {tuple(images.shape)}, got {tuple(mask.shape)}.'
        )
      x = mask_pixels(x, mask)
    g = grey(x, self.grey_weights)

    kernel = self.param(
      'edge_kernel',
      lambda key, shape, dtype: edge_kernel_init(self.center, self.neighbour, dtype).reshape(shape),
      (3, 3, 1, 1),
      jnp.float32,
    )
    if not self.trainable:
      kernel = jax.lax.stop_gradient(kernel)

    padded = jnp.pad(g, ((0, 0), (1, 1), (1, 1), (0, 0)), mode=self.pad_mode)
    edges = jax.lax.conv_general_dilated(
      padded,
      kernel,
      window_strides=(1, 1),
      padding='VALID',
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
      # The kernel amplifies by 9: keep full float32 (no TF32 / bf16 passes on accelerators).
      precision=jax.lax.Precision.HIGHEST,
    )
    return jnp.broadcast_to(edges, images.shape).astype(images.dtype)
