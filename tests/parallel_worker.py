"""Run by test_parallel.py in a fresh process with 4 simulated CPU devices (the device count is fixed
when JAX starts): one train step of a tiny model on 1, 2 and 4 devices under both launchers, printed
as the largest differences from the 1-device shard_map step."""

import functools
import json
import os
import sys

os.environ['XLA_FLAGS'] = '--xla_force_host_platform_device_count=4 ' + os.environ.get(
  'WORKER_XLA', ''
)
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import jax  # noqa: E402
import numpy as np  # noqa: E402

jax.config.update(
  'jax_compilation_cache_dir',
  os.environ.get('PYTEST_JAX_CACHE', os.path.expanduser('~/.cache/sketchreid_jax/jax_tests')),
)
jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.5)

from sketchreid_jax import parallel, train  # noqa: E402
from sketchreid_jax.config_base import load_config  # noqa: E402
from sketchreid_jax.methods import get_method  # noqa: E402
from tests.steps import TINY_STEP, pk_batch  # noqa: E402


def run(config, batch, devices: int, kind: str):
  method = get_method(config.method)
  model = method.model_for(config, 6, parallel.AXIS)
  state = train.create_train_state(config, model, 10, jax.random.key(0))
  init = jax.device_get(state.params)
  mesh = parallel.make_mesh(jax.devices()[:devices])
  launcher = parallel.make_launcher(
    functools.partial(train.train_step, model=model, method=method, config=config),
    kind=kind,
    mesh=mesh,
  )
  perm = parallel.device_major_permutation(config.sampler.P, config.sampler.K, devices)
  state, metrics = launcher.step(
    launcher.put_state(state), launcher.put_batch({k: v[perm] for k, v in batch.items()})
  )
  state = jax.device_get(launcher.get_state(state))
  metrics = jax.device_get(metrics)
  if kind == 'pmap':
    metrics = jax.tree.map(lambda x: x[0], metrics)
  delta = jax.tree.map(lambda a, b: np.asarray(a) - np.asarray(b), state.params, init)
  return float(metrics['loss']), delta, state.batch_stats


def rel_diff(a, b) -> float:
  """‖a − b‖ / ‖b‖ over every leaf of the two trees (one global norm, as optax's)."""
  diff = sum(
    float(np.sum((np.asarray(x) - np.asarray(y)) ** 2))
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))
  )
  ref = sum(float(np.sum(np.asarray(y) ** 2)) for y in jax.tree.leaves(b))
  return (diff / ref) ** 0.5


def main(spec: str):
  config = load_config(spec, **TINY_STEP)
  batch = pk_batch(config, 6, seed=0)
  ref_loss, ref_delta, ref_stats = run(config, batch, 1, 'shard_map')
  out = {'loss': ref_loss, 'runs': {}}
  # pmap on one device is the same program as the reference; 2 and 4 devices are the claim.
  for kind, devices in (('shard_map', 2), ('shard_map', 4), ('pmap', 2), ('pmap', 4)):
    loss, delta, stats = run(config, batch, devices, kind)
    out['runs'][f'{kind}/{devices}'] = {
      'loss': abs(loss - ref_loss) / abs(ref_loss),
      'update': rel_diff(delta, ref_delta),
      'batch_stats': rel_diff(stats, ref_stats),
    }
  print('RESULT ' + json.dumps(out))


if __name__ == '__main__':
  main(sys.argv[1])
