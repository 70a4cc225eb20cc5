"""Interrupted training: a SIGKILL mid-epoch, a corrupt or partial newest checkpoint.

The property: a run killed at any point and restarted with the same command ends with exactly the
parameters, optimiser state and BatchNorm statistics of a run that was never interrupted (bitwise:
on a CPU the same compiled program on the same inputs gives the same bits, and everything a step
depends on is restored or a function of seed, epoch and step). The uninterrupted run trains in the
test's own process (the same config the command line builds); the killed and the restarted `main`
processes read the step it compiled from the session's JAX compilation cache.
"""

import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from sketchreid_jax import checkpoints, train
from sketchreid_jax.config_base import load_config
from tests.conftest import REPO

EVERY = 2  # checkpoint_every_steps: the kill waits for a checkpoint past step 1
OVERRIDES = {
  'train.checkpoint_every_steps': EVERY,
  'train.epochs': 1,
  'train.progress_bar': False,
  'eval.every_epochs': 0,
  'eval.protocols': ('single_query:A',),  # the cheapest evaluation of the tiny data
}


def _command(workdir, root, cache):
  flags = [f'--config.{k}={v!r}' if isinstance(v, tuple) else f'--config.{k}={v}' for k, v in
           OVERRIDES.items()]  # fmt: skip
  return [
    sys.executable,
    '-m',
    'sketchreid_jax.main',
    '--config=configs/demo.py:tiny',
    f'--workdir={workdir}',
    f'--config.data.root={root}',
    f'--config.data.cache_dir={cache}',
    f'--jax_cache={jax.config.jax_compilation_cache_dir}',
    *flags,
  ]


def _config(root, cache):
  """The config the command above builds, for in-process runs of the same training."""
  config = load_config(os.path.join(REPO, 'configs/demo.py:tiny'))
  config.data.root, config.data.cache_dir = root, cache
  for key, value in OVERRIDES.items():
    section, leaf = key.split('.')
    config[section][leaf] = value
  return config


def _steps(workdir) -> list[int]:
  """Finalised steps of ``checkpoints/`` (orbax writes into a temporary name, then renames)."""
  directory = os.path.join(workdir, 'checkpoints')
  names = os.listdir(directory) if os.path.isdir(directory) else []
  return sorted(int(n) for n in names if n.isdigit())


def _restore(workdir, step):
  path = os.path.join(workdir, 'checkpoints', str(step), 'default')
  return jax.device_get(ocp.StandardCheckpointer().restore(path))


def _assert_same_state(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y, err_msg=jax.tree_util.keystr(path))


def _run(command, log_path):
  with open(log_path, 'w') as log:
    done = subprocess.run(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, timeout=300)
  text = open(log_path).read()
  assert done.returncode == 0, text[-3000:]
  return text


@pytest.fixture(scope='module')
def reference(tiny_market, tfds_cache, tmp_path_factory):
  """An uninterrupted run of the same training, in this process (it compiles the step into the
  shared cache): (workdir, its final step, its final state)."""
  workdir = str(tmp_path_factory.mktemp('resume') / 'uninterrupted')
  train.train_and_evaluate(_config(tiny_market, tfds_cache), workdir)
  final = _steps(workdir)[-1]
  return workdir, final, _restore(workdir, final)


def test_sigkill_mid_epoch_then_same_command_gives_the_same_final_state(
  reference, tiny_market, tfds_cache, tmp_path
):
  ref_dir, final, ref_state = reference
  assert final > 2 * EVERY  # one epoch of several checkpoints: the kill lands inside it
  workdir = str(tmp_path / 'killed')
  command = _command(workdir, tiny_market, tfds_cache)

  with open(tmp_path / 'killed.log', 'w') as log:
    proc = subprocess.Popen(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 240
    while proc.poll() is None and time.monotonic() < deadline:
      if any(s > 1 for s in _steps(workdir)):
        proc.send_signal(signal.SIGKILL)
        break
      time.sleep(0.01)
    assert proc.wait(timeout=60) == -signal.SIGKILL, open(tmp_path / 'killed.log').read()[-3000:]
  assert final not in _steps(workdir), 'the run finished before it was killed'

  text = _run(command, str(tmp_path / 'restarted.log'))
  resumed = [int(s) for s in re.findall(r'resumed from \S+ at step (\d+)', text)]
  assert len(resumed) == 1 and 1 < resumed[0] < final, (resumed, text[-2000:])
  assert _steps(workdir)[-1] == final
  # The restart removed what the kill left of a save in progress (orbax's temporary folders).
  assert all(name.isdigit() for name in os.listdir(os.path.join(workdir, 'checkpoints')))
  _assert_same_state(_restore(workdir, final), ref_state)


def _corrupt(step_dir):
  """Truncates every array data file of an orbax step folder (as a full disk would leave it);
  returns their paths relative to the step folder."""
  data = [
    os.path.relpath(os.path.join(d, f), step_dir)
    for d, _, files in os.walk(step_dir)
    for f in files
    if os.path.basename(d) == 'd'
  ]
  assert data
  for path in data:
    with open(os.path.join(step_dir, path), 'r+b') as f:
      f.truncate(3)
  return data


# orbax's failed read leaves a tensorstore callback aimed at its closed event loop.
@pytest.mark.filterwarnings('ignore::pytest.PytestUnraisableExceptionWarning')
def test_corrupt_newest_checkpoint_is_moved_aside_and_training_resumes_before_it(
  reference, tiny_market, tfds_cache, tmp_path, caplog
):
  ref_dir, final, ref_state = reference
  workdir = str(tmp_path / 'corrupt')
  shutil.copytree(ref_dir, workdir)
  previous = _steps(workdir)[-2]
  bad_files = _corrupt(os.path.join(workdir, 'checkpoints', str(final)))

  with caplog.at_level(logging.WARNING):
    train.train_and_evaluate(_config(tiny_market, tfds_cache), workdir)

  moved = os.path.join(workdir, 'checkpoints', f'corrupt-{final}')
  warning = [r.getMessage() for r in caplog.records if 'cannot be restored' in r.getMessage()]
  assert len(warning) == 1 and f'step {final}' in warning[0] and moved in warning[0], warning
  assert f'resuming from step {previous}' in warning[0]
  # Nothing deleted: the bad files are where the warning says.
  for path in bad_files:
    assert os.path.getsize(os.path.join(moved, path)) == 3
  # The step was trained again from the previous one and lands on the uninterrupted state.
  assert _steps(workdir)[-1] == final
  _assert_same_state(_restore(workdir, final), ref_state)


def _toy_state(scale):
  params = {'w': np.full((3,), scale, np.float32)}
  return train.TrainState.create(apply_fn=None, params=params, tx=optax.sgd(0.1), batch_stats={})


def test_partial_newest_step_falls_back_and_a_changed_config_moves_nothing(tmp_path, caplog):
  manager, _ = checkpoints.managers(str(tmp_path), None)
  for step in (1, 2, 3):
    manager.save(step, args=ocp.args.StandardSave(checkpoints.state_to_save(_toy_state(step))))
  manager.wait_until_finished()
  shutil.rmtree(tmp_path / 'checkpoints' / '3' / 'default')  # a copy that stopped half-way

  manager, _ = checkpoints.managers(str(tmp_path), None)
  with caplog.at_level(logging.WARNING):
    state = checkpoints.restore_latest(manager, _toy_state(0))
  np.testing.assert_array_equal(state.params['w'], np.full((3,), 2, np.float32))
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['1', '2', 'corrupt-3']
  assert 'step 3' in caplog.text and 'resuming from step 2' in caplog.text
  assert manager.latest_step() == 2

  # Every step fails against another model: an error, and every folder stays where it was.
  other = train.TrainState.create(
    apply_fn=None, params={'v': np.zeros((5,), np.float32)}, tx=optax.sgd(0.1), batch_stats={}
  )
  with pytest.raises(checkpoints.CheckpointError, match=r'step 2: .*step 1: .*nothing was moved'):
    checkpoints.restore_latest(manager, other)
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['1', '2', 'corrupt-3']
