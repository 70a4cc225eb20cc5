"""Run by test_multihost.py, once per process: two training steps of a tiny model, as one process of
a multi-process job on 127.0.0.1 or as a single process, fed the way ``train_and_evaluate`` feeds
them (this process's ``host_slice`` of the P×K plan, then ``device_major_permutation``), under each
launcher (WORKER_LAUNCHERS, default both) over the devices of all processes; then an orbax save and
restore through train.py's checkpoint managers. Writes the states and losses to an .npz.

  python -m tests.multihost_worker OUT.npz CKPT_DIR [COORDINATOR NUM_PROCESSES PROCESS_ID]

WORKER_DEVICES sets this process's CPU device count (default 1), WORKER_XLA extra XLA flags.
"""

import functools
import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
# CPU devices of this process: 1 unless WORKER_DEVICES says otherwise.
os.environ['XLA_FLAGS'] = (
  f'--xla_force_host_platform_device_count={os.environ.get("WORKER_DEVICES", "1")} '
  + os.environ.get('WORKER_XLA', '')
)

import jax  # noqa: E402
import numpy as np  # noqa: E402
import orbax.checkpoint as ocp  # noqa: E402

from sketchreid_jax import checkpoints, input_pipeline, parallel, runtime, train  # noqa: E402
from sketchreid_jax.config_base import load_config  # noqa: E402
from sketchreid_jax.methods import get_method  # noqa: E402
from tests.steps import TINY_STEP, pk_batch  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 2


def global_plan(P: int, K: int) -> np.ndarray:
  """The (1, P, 2, K) plan whose entries are the rows of ``pk_batch``'s [photos | sketches] batch."""
  ids = np.arange(P)[:, None] * K + np.arange(K)[None, :]
  return np.stack([ids, ids + P * K], axis=1)[None]


def flat(tree) -> dict[str, np.ndarray]:
  return {
    jax.tree_util.keystr(path, simple=True, separator='/'): np.asarray(leaf)
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
  }


def fetch(tree) -> dict[str, np.ndarray]:
  """Host copies of a replicated state tree, flattened to 'a/b/c' keys.

  With several processes the arrays are not fully addressable, but replicated ones can be fetched:
  each process holds the whole value.
  """
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    assert leaf.is_fully_replicated, (path, leaf.sharding)
  return flat(jax.device_get(tree))


def run(kind: str, config, local: dict, ckpt_dir: str) -> dict[str, np.ndarray]:
  """STEPS steps from init under launcher ``kind``, then a checkpoint round trip: the result."""
  method = get_method(config.method)
  model = method.model_for(config, 6, parallel.AXIS)
  state = train.create_train_state(config, model, 10, jax.random.key(0))
  init = jax.device_get(state.params)  # before the step donates the buffers
  launcher = parallel.make_launcher(
    functools.partial(train.train_step, model=model, method=method, config=config), kind=kind
  )
  assert (
    launcher.num_devices == jax.device_count() == jax.process_count() * jax.local_device_count()
  )
  state = launcher.put_state(state)
  losses = []
  for _ in range(STEPS):
    state, metrics = launcher.step(state, launcher.put_batch(local))
    losses.append(float(np.asarray(jax.device_get(metrics['loss'])).reshape(-1)[0]))
  final = launcher.get_state(state)  # what train_and_evaluate evaluates and saves
  result = {f'init/{k}': v for k, v in flat(init).items()}
  result.update({f'params/{k}': v for k, v in fetch(final.params).items()})
  result.update({f'batch_stats/{k}': v for k, v in fetch(final.batch_stats).items()})
  result['losses'] = np.asarray(losses)

  # train.py's checkpointing as it is: every process saves, then restores into a fresh
  # (process-local) state as train_and_evaluate does before put_state.
  latest, _ = checkpoints.managers(os.path.join(ckpt_dir, kind), config)
  latest.save(STEPS, args=ocp.args.StandardSave(checkpoints.state_to_save(final)))
  latest.wait_until_finished()
  template = train.create_train_state(config, model, 10, jax.random.key(1))
  restored = checkpoints.restore_latest(latest, template)
  assert int(restored.step) == STEPS, restored.step
  for k, v in flat(restored.params).items():
    if not np.array_equal(v, result['params/' + k]):
      raise AssertionError(f'{kind}: restored params/{k} differs from the saved value')
  return {f'{kind}/{k}': v for k, v in result.items()}


def main(out_path: str, ckpt_dir: str, coordinator: str = '', num: str = '0', pid: str = '-1'):
  config = load_config(
    os.path.join(REPO, 'configs/baseline.py'),
    **TINY_STEP,
    parallel__coordinator_address=coordinator,
    parallel__num_processes=int(num),
    parallel__process_id=int(pid),
  )
  # The entry points' set-up: jax.distributed.initialize first, then the compilation cache.
  runtime.configure(
    os.environ.get('PYTEST_JAX_CACHE', os.path.expanduser('~/.cache/sketchreid_jax/jax_tests')),
    config.parallel,
  )
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.5)
  hosts, host = jax.process_count(), jax.process_index()
  assert hosts == max(int(num), 1), (hosts, num)

  P, K = config.sampler.P, config.sampler.K
  batch = pk_batch(config, 6, seed=0)  # the global batch, identical on every process
  # As train_and_evaluate: this process's identities of the plan, then device-major order.
  rows = input_pipeline.batch_indices(input_pipeline.host_slice(global_plan(P, K), host, hosts))[0]
  perm = parallel.device_major_permutation(P // hosts, K, jax.local_device_count())
  local = {k: v[rows][perm] for k, v in batch.items()}

  result = {}
  for kind in os.environ.get('WORKER_LAUNCHERS', 'shard_map,pmap').split(','):
    result.update(run(kind, config, local, ckpt_dir))
  np.savez(out_path, **result)
  losses = {k: v.tolist() for k, v in result.items() if k.endswith('losses')}
  print(f'process {host} of {hosts}: losses {losses}; checkpoint round trips ok', flush=True)


if __name__ == '__main__':
  main(*sys.argv[1:])
