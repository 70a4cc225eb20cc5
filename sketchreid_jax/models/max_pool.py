"""torchvision's stem pooling, MaxPool2d(3, stride=2, padding=1), with a hand-written gradient.

Forward: PyTorch pads with −inf, so padding never wins the max. The padding is a separate −inf pad
before a 'VALID' pool (the same maximum over the same elements) because the ONNX exporter
(jax2onnx) maps ``nn.max_pool`` to ONNX MaxPool only for 'SAME' or 'VALID' padding, and its
lowering of a padded ``lax.reduce_window`` is a 4-D pool that onnxruntime cannot run.

Backward: autodiff of a max ``reduce_window`` is a ``select_and_scatter``, which XLA:CPU expands
into a variadic reduce-window carrying four int32 iota arrays of the padded input's size (four
times the stem's activation memory) and runs at about 600 ms for the 48 sketch images of a
batch-16 multi-query step on the 2-core CPU. Here the forward pass also records, per output, which
of the 9 window positions held the first maximum (row-major window order, int8), and the backward
pass sends each output's gradient to that position with 9 strided pads: about 130 ms there.

The gradient is the same as autodiff's: ``select_and_scatter`` with the ``ge`` selector also keeps
the first maximum in row-major window order, so ties (common after a ReLU) go to the same element.
Where windows overlap, an input element sums gradients from up to 4 outputs in a different order
than XLA does, which changes the last bit of those sums and nothing else
(tests/test_fast_layers.py).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

Array = jax.Array

_WINDOW = 3
_STRIDE = 2


def _pad(x: Array) -> Array:
  return jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-jnp.inf)


def _pool(x: Array) -> Array:
  return nn.max_pool(
    _pad(x), window_shape=(_WINDOW, _WINDOW), strides=(_STRIDE, _STRIDE), padding='VALID'
  )


def _window_views(x: Array, out_hw: tuple[int, int]) -> list[Array]:
  """The 9 strided views of the −inf-padded input, one per window position, row-major."""
  xp = _pad(x)
  ho, wo = out_hw
  return [
    xp[:, i : i + _STRIDE * (ho - 1) + 1 : _STRIDE, j : j + _STRIDE * (wo - 1) + 1 : _STRIDE, :]
    for i in range(_WINDOW)
    for j in range(_WINDOW)
  ]


@jax.custom_vjp
def max_pool_3x3_s2(x: Array) -> Array:
  """MaxPool2d(3, stride=2, padding=1) on NHWC (padding = −inf)."""
  return _pool(x)


def _forward(x: Array) -> tuple[Array, tuple[Array, tuple[int, ...]]]:
  out = _pool(x)
  first = jnp.full(out.shape, _WINDOW * _WINDOW - 1, jnp.int8)
  # Walking the positions backwards leaves the first (lowest) position that equals the max.
  for k, view in reversed(list(enumerate(_window_views(x, out.shape[1:3])))):
    first = jnp.where(view == out, jnp.int8(k), first)
  return out, (first, x.shape)


def _backward(residuals: tuple[Array, tuple[int, ...]], g: Array) -> tuple[Array]:
  first, (_, h, w, _) = residuals
  ho, wo = g.shape[1:3]
  zero = jnp.zeros((), g.dtype)
  dx = None
  for k in range(_WINDOW * _WINDOW):
    i, j = divmod(k, _WINDOW)
    # Transpose of the strided view: interior padding puts each value back at its position.
    part = lax.pad(
      jnp.where(first == k, g, zero),
      zero,
      (
        (0, 0, 0),
        (i, h + 2 - (i + _STRIDE * (ho - 1) + 1), _STRIDE - 1),
        (j, w + 2 - (j + _STRIDE * (wo - 1) + 1), _STRIDE - 1),
        (0, 0, 0),
      ),
    )
    dx = part if dx is None else dx + part
  return (dx[:, 1 : h + 1, 1 : w + 1, :],)


max_pool_3x3_s2.defvjp(_forward, _backward)
