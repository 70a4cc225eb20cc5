"""Model variables filled by numpy, shared by the model tests.

A real ``model.init`` of the two-stream ResNet costs many seconds of PRNG compilation on a small
CPU; these have the same shapes (from ``jax.eval_shape``), non-trivial BatchNorm statistics and
affines so eval-mode BatchNorm is really exercised, and kernels with std 1/sqrt(fan_in) so
activations stay O(1) through 50 layers (and FFAM masks stay away from 0 and 1).
"""

import jax
import jax.numpy as jnp
import numpy as np


def numpy_variables(model, *args, seed: int = 0, **kwargs):
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), *args, **kwargs))
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = path[-1].key
    if name == 'var':
      value = rng.uniform(0.5, 2.0, leaf.shape)
    elif name in ('mean', 'bias'):
      value = 0.3 * rng.normal(size=leaf.shape)
    elif name == 'scale':
      value = rng.uniform(0.5, 1.5, leaf.shape)
    elif name == 'p':  # a learnable GeM exponent
      value = np.full(leaf.shape, 3.0)
    else:  # conv/dense kernels: fan_in = all axes but the last (HWIO / (in, out))
      value = rng.normal(size=leaf.shape) / np.sqrt(np.prod(leaf.shape[:-1]))
    return jnp.asarray(value, leaf.dtype)

  return jax.tree_util.tree_map_with_path(fill, shapes)
