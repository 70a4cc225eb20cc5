"""Multi-host: two processes on 127.0.0.1, joined through config.parallel, train exactly as one
process with the same devices; checkpoints save and restore from both; and the rules that decide
whether a process joins a multi-process job (parallel.initialize_distributed).

The end-to-end test starts three workers (tests/multihost_worker.py) at once: processes 0 and 1 of
a 2-process job (one CPU device each, coordinator 127.0.0.1:<free port>, cross-process collectives
through gloo), and a single process with two CPU devices (the same global device count). Each runs
2 steps of a tiny baseline model on the same global P×K batch (P=4, K=2), every process feeding its
own ``host_slice`` of the plan as train_and_evaluate does, under both launchers, then saves and
restores the state with train.py's orbax managers.
"""

import os
import socket
import subprocess
import sys
import time

import jax
import ml_collections
import numpy as np
import pytest

from sketchreid_jax import parallel
from tests.conftest import REPO

# Seconds for the three workers together (measured: 108 s wall, 105 s CPU, on 2 busy cores).
TIMEOUT = 600

# Two processes × one device vs one process × two devices: the same SPMD program on the same
# device-ordered rows; the only difference is the transport of the collectives (gloo between
# processes, in-process otherwise), and all-gathers and two-operand means are exact in float32, so
# the results are expected bitwise equal (measured: identical). The tolerances leave room for a
# last-bit difference, amplified by the second step (a 1e-2 relative change of the first update
# becomes ~0.4 of the second at this random init: gradient norms ~1e3), while any real error (a
# process reading the wrong identities, gradients not averaged across processes: O(1)) fails.
UPDATE_TOL = 1e-4  # ‖Δupdate‖ / ‖update‖ over all parameters, update = params after 2 steps − init
PARAMS_TOL = 1e-6  # ‖Δparams‖ / ‖params‖
STATS_TOL = 1e-6  # the same for the BatchNorm statistics
LOSS_TOL = 1e-6  # relative, each step's loss

LAUNCHERS = ('shard_map', 'pmap')

_CLUSTER_VARS = (
  'JAX_COORDINATOR_ADDRESS',
  *parallel._SLURM_VARS,
  parallel._OMPI_URI,
  parallel._OMPI_SIZE,
)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _rel(a: dict, b: dict, prefix: str, minus: str | None = None) -> float:
  """‖a − b‖ / ‖b‖ over the leaves under ``prefix`` (minus the ``minus`` leaves: updates)."""
  keys = [k for k in b if k.startswith(prefix)]
  assert keys and set(keys) == {k for k in a if k.startswith(prefix)}
  value = lambda d, k: d[k] - d[k.replace(prefix, minus, 1)] if minus else d[k]
  num = sum(float(np.sum((value(a, k) - value(b, k)) ** 2)) for k in keys)
  den = sum(float(np.sum(value(b, k) ** 2)) for k in keys)
  return (num / den) ** 0.5


def _run_workers(tmp_path) -> tuple[dict, float]:
  # XLA's lowest CPU optimisation level halves the compilations; numerics stay float32.
  env = {k: v for k, v in os.environ.items() if k not in _CLUSTER_VARS}
  env.update(PYTHONPATH=REPO, WORKER_XLA='--xla_backend_optimization_level=0')
  coordinator = f'127.0.0.1:{_free_port()}'
  worker = [sys.executable, '-m', 'tests.multihost_worker']
  jobs = {
    'process 0': (
      [str(tmp_path / 'p0.npz'), str(tmp_path / 'ckpt_2x1'), coordinator, '2', '0'],
      {},
    ),
    'process 1': (
      [str(tmp_path / 'p1.npz'), str(tmp_path / 'ckpt_2x1'), coordinator, '2', '1'],
      {},
    ),
    # num_processes=1: never distributed, whatever the environment says.
    'single': ([str(tmp_path / 'single.npz'), str(tmp_path / 'ckpt_1x2'), '', '1', '0'], {}),
  }
  jobs['single'][1]['WORKER_DEVICES'] = '2'
  start = time.perf_counter()
  procs, logs = {}, {}
  for name, (args, extra) in jobs.items():
    logs[name] = open(tmp_path / f'{name.replace(" ", "_")}.log', 'w+')
    procs[name] = subprocess.Popen(
      worker + args, cwd=REPO, env=dict(env, **extra), stdout=logs[name], stderr=subprocess.STDOUT
    )
  failed = None
  try:
    while any(p.poll() is None for p in procs.values()):
      failed = next((n for n, p in procs.items() if p.returncode not in (None, 0)), None)
      if failed or time.perf_counter() - start > TIMEOUT:
        break  # a process waiting for a dead peer would only hang until its own timeout
      time.sleep(0.5)
  finally:
    for p in procs.values():
      if p.poll() is None:
        p.kill()
        p.wait()
  elapsed = time.perf_counter() - start
  if failed or any(p.returncode for p in procs.values()):
    tails = []
    for name, log in logs.items():
      log.seek(0)
      tails.append(f'--- {name} (exit {procs[name].returncode}) ---\n{log.read()[-3000:]}')
    pytest.fail(
      f'a worker failed (first: {failed}) or the workers ran past {TIMEOUT} s after '
      f'{elapsed:.0f} s:\n' + '\n'.join(tails)
    )
  for log in logs.values():
    log.close()
  names = {'process 0': 'p0', 'process 1': 'p1', 'single': 'single'}
  return {n: dict(np.load(tmp_path / f'{f}.npz')) for n, f in names.items()}, elapsed


def test_two_processes_train_and_checkpoint_like_one_process_with_two_devices(tmp_path):
  results, elapsed = _run_workers(tmp_path)
  p0, p1, single = results['process 0'], results['process 1'], results['single']
  print(f'3 workers: {elapsed:.0f} s')
  # Every process ends with the same replicated state.
  assert p0.keys() == p1.keys() == single.keys()
  for k in p0:
    assert np.array_equal(p0[k], p1[k]), k
  for kind in LAUNCHERS:
    assert f'{kind}/losses' in p0, kind
    diff = {
      'update': _rel(p0, single, f'{kind}/params/', f'{kind}/init/'),
      'params': _rel(p0, single, f'{kind}/params/'),
      'batch_stats': _rel(p0, single, f'{kind}/batch_stats/'),
      'loss': float(np.max(np.abs(p0[f'{kind}/losses'] / single[f'{kind}/losses'] - 1))),
    }
    bitwise = all(np.array_equal(p0[k], single[k]) for k in p0 if k.startswith(kind))
    print(f'{kind}: 2 processes vs 1 process: {diff}, bitwise equal: {bitwise}')
    assert diff['update'] <= UPDATE_TOL, (kind, diff)
    assert diff['params'] <= PARAMS_TOL, (kind, diff)
    assert diff['batch_stats'] <= STATS_TOL, (kind, diff)
    assert diff['loss'] <= LOSS_TOL, (kind, diff)
    # The steps really trained: the update is not zero (or all comparisons above would be vacuous).
    init = {k.replace('/init/', '/params/'): v for k, v in single.items() if '/init/' in k}
    assert _rel(init, single, f'{kind}/params/') > 1e-3


# ----------------------------------------------------------------- who joins a multi-process job


@pytest.fixture
def init_calls(monkeypatch):
  """Records jax.distributed.initialize's arguments instead of starting a job; clean environment."""
  for var in _CLUSTER_VARS:
    monkeypatch.delenv(var, raising=False)
  calls = []
  monkeypatch.setattr(jax.distributed, 'is_initialized', lambda: False)
  monkeypatch.setattr(jax.distributed, 'initialize', lambda **kwargs: calls.append(kwargs))
  return calls


def _parallel(address='', num_processes=0, process_id=-1):
  return ml_collections.ConfigDict(
    dict(
      launcher='shard_map',
      coordinator_address=address,
      num_processes=num_processes,
      process_id=process_id,
    )
  )


def _slurm(monkeypatch, ntasks: int):
  for var, value in zip(parallel._SLURM_VARS, ('7', 'node[1-2]', str(ntasks), '1', '0')):
    monkeypatch.setenv(var, value)


def test_single_process_unless_the_config_or_the_environment_says_otherwise(
  init_calls, monkeypatch
):
  assert parallel.initialize_distributed(None) is False
  assert parallel.initialize_distributed(_parallel()) is False
  _slurm(monkeypatch, ntasks=1)  # a one-task allocation is not a multi-process job
  assert parallel.initialize_distributed(_parallel()) is False
  assert init_calls == []


def test_the_config_names_the_coordinator_and_this_process(init_calls):
  assert parallel.initialize_distributed(_parallel('host0:1234', 2, 1)) is True
  assert init_calls == [dict(coordinator_address='host0:1234', num_processes=2, process_id=1)]


def test_a_multi_task_srun_step_is_detected_by_jax(init_calls, monkeypatch):
  _slurm(monkeypatch, ntasks=2)
  assert parallel.initialize_distributed(_parallel()) is True
  assert init_calls == [dict(num_processes=None, process_id=None)]  # JAX reads SLURM_*
  # num_processes=1 keeps a process out of any job.
  assert parallel.initialize_distributed(_parallel(num_processes=1)) is False
  assert len(init_calls) == 1


def test_auto_lets_jax_detect_every_cluster_it_knows(init_calls):
  assert parallel.initialize_distributed(_parallel('auto')) is True
  assert init_calls == [{}]


def test_a_coordinator_without_this_process_s_place_is_a_clear_error(init_calls, monkeypatch):
  monkeypatch.setenv('JAX_COORDINATOR_ADDRESS', 'host0:1234')
  with pytest.raises(ValueError, match='config.parallel.num_processes'):
    parallel.initialize_distributed(_parallel())
  # JAX reads the address from the variable; the config gives the rest.
  assert parallel.initialize_distributed(_parallel(num_processes=2, process_id=0)) is True
  assert init_calls == [dict(num_processes=2, process_id=0)]


def test_p_must_split_over_processes_times_local_devices():
  parallel.check_identity_split(8, num_processes=2, local_devices=2)
  with pytest.raises(ValueError, match=r'2 process\(es\) × 2 local device\(s\).*multiple of 4'):
    parallel.check_identity_split(6, num_processes=2, local_devices=2)
  with pytest.raises(ValueError, match='per process.*processes × local devices'):
    parallel.device_major_permutation(3, 2, 2)
