"""Every method preset's training step at its real size (width-64 ResNet-50, the paper's image
size and P×K) traces: shapes, channel counts and loss terms all fit together. ``jax.eval_shape``
runs no arithmetic, so this checks the full-size programs in seconds on a CPU; running them is
for an accelerator (or ``python -m sketchreid_jax.main --config=...`` with patience). Presets
that differ only in data or evaluation settings trace the same program and are checked once."""

import functools
import glob
import os

import jax
import jax.numpy as jnp
import pytest

from sketchreid_jax import parallel, train
from sketchreid_jax.config_base import load_config
from sketchreid_jax.methods import get_method
from tests.conftest import REPO
from tests.test_configs import _presets

NUM_CLASSES = 10


def _program(path, preset):
  """What decides the step's program: presets differing only in data or evaluation share it."""
  c = load_config(f'{path}:{preset}')
  return (c.method, c.model.to_json(), c.loss.to_json(), c.sampler.to_json(), c.data.image_size)


def _cases():
  seen, cases = set(), []
  for path in sorted(glob.glob(os.path.join(REPO, 'configs', '*.py'))):
    if os.path.basename(path) not in ('cmdsl.py', 'dalnet.py'):
      continue
    for preset in _presets(path):
      key = _program(path, preset)
      if key not in seen:
        seen.add(key)
        cases.append((path, preset))
  return cases


CASES = _cases()


@pytest.mark.parametrize('path,preset', CASES, ids=[f'{os.path.basename(p)}:{s}' for p, s in CASES])
def test_full_size_step_traces(path, preset):
  config = load_config(f'{path}:{preset}')
  assert config.model.width == 64
  method = get_method(config.method)
  model = method.model_for(config, NUM_CLASSES, parallel.AXIS)
  state = jax.eval_shape(
    lambda: train.create_train_state(config, model, 10, jax.random.key(0), frozen=None)
  )
  P, K = config.sampler.P, config.sampler.K
  h, w = config.data.image_size
  b = 2 * P * K
  batch = {
    'image': jax.ShapeDtypeStruct((b, h, w, 3), jnp.float32),
    'label': jax.ShapeDtypeStruct((b,), jnp.int32),
    'modality': jax.ShapeDtypeStruct((b,), jnp.int32),
    'attributes': jax.ShapeDtypeStruct((b, 27), jnp.int32),
    'mask': jax.ShapeDtypeStruct((b, h, w, 1), jnp.float32),
  }
  launcher = parallel.make_launcher(
    functools.partial(train.train_step, model=model, method=method, config=config)
  )
  new_state, metrics = jax.eval_shape(launcher.step, state, batch)
  assert jax.tree.map(lambda x: x.shape, new_state.params) == jax.tree.map(
    lambda x: x.shape, state.params
  )
  assert metrics['loss'].shape == () and 'loss/id' in metrics
