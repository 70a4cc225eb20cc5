"""Shared by the method tests: a random P×K batch in the [photos | sketches] layout and one
compiled training step run twice on it (before/after metrics)."""

import functools

import jax
import numpy as np

from sketchreid_jax import parallel, train
from sketchreid_jax.methods import get_method

# The smallest model and batch the tests compile: ResNet-50 at width 8 with one Bottleneck per stage,
# 32×16 images, P×K = 4×2 (overrides for load_config).
TINY_MODEL = dict(
  model__width=8,
  model__blocks=(1, 1, 1, 1),
  data__image_size=(32, 16),
  sampler__P=4,
  sampler__K=2,
)
# The parallel tests' training step: the tiny model with a small, short warm-up.
TINY_STEP = dict(TINY_MODEL, optim__lr=0.01, schedule__warmup_epochs=1)


def pk_batch(config, num_classes=6, seed=0):
  """Random images; P distinct labels, K photos then K sketches each, as the sampler lays out."""
  rng = np.random.default_rng(seed)
  P, K = config.sampler.P, config.sampler.K
  h, w = config.data.image_size
  ids = rng.choice(num_classes, P, replace=False)
  return {
    'image': rng.normal(size=(2 * P * K, h, w, 3)).astype(np.float32),
    'label': np.concatenate([np.repeat(ids, K), np.repeat(ids, K)]).astype(np.int32),
    'modality': np.repeat([0, 1], P * K).astype(np.int32),
  }


def one_step_twice(config, batch, num_classes=6):
  """Metrics of a step from init, and of the same step (same rng) from the updated state."""
  method = get_method(config.method)
  model = method.model_for(config, num_classes, parallel.AXIS)
  state = train.create_train_state(config, model, 10, jax.random.key(0))
  launcher = parallel.make_launcher(
    functools.partial(train.train_step, model=model, method=method, config=config)
  )
  state = launcher.put_state(state)
  device_batch = launcher.put_batch(batch)
  state, before = launcher.step(state, device_batch)
  # The step folds the step number into its rng: set it back so only the parameters differ.
  state = state.replace(step=state.step * 0)
  _, after = launcher.step(state, device_batch)
  return jax.device_get(before), jax.device_get(after)
