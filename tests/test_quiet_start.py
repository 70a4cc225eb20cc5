"""A run's start shows the project's output, not TF/XLA/matplotlib start-up notices (tf_setup,
runtime.quiet_start), and the filter keeps every line it has no pattern for."""

import os
import subprocess
import sys

import pytest

from sketchreid_jax import tf_setup

# What an entry point does before its first line of output: the process set-up, the modules the
# training and the export import (clu, jax2tf and TFDS each import TensorFlow), the devices, and a
# matplotlib figure with an empty font cache.
START = """
from sketchreid_jax import runtime
runtime.configure('')
import sketchreid_jax.train, sketchreid_jax.inference, sketchreid_jax.datasets
from sketchreid_jax.export import to_saved_model
import jax
jax.devices()
import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt
plt.figure().text(0, 0, 'x')
print('started')
"""

NOISE = ('libtpu', 'font cache', 'InitializeLog', 'oneDNN', 'cpu_feature_guard')


def start(tmp_path, **env) -> subprocess.CompletedProcess:
  env = {**os.environ, 'MPLCONFIGDIR': str(tmp_path / 'mpl'), **env}
  env.pop('TF_CPP_MIN_LOG_LEVEL', None)  # the entry points' own default, not the caller's
  return subprocess.run(
    [sys.executable, '-c', START], capture_output=True, text=True, env=env, timeout=300
  )


def test_start_up_is_quiet(tmp_path):
  done = start(tmp_path)
  assert done.returncode == 0, done.stderr[-2000:]
  assert done.stdout.strip() == 'started'
  assert not [line for line in done.stderr.splitlines() if any(n in line for n in NOISE)], (
    done.stderr
  )


def test_the_filter_removes_only_what_it_names(tmp_path):
  loud = start(tmp_path, SKETCHREID_NATIVE_LOGS='1')
  assert loud.returncode == 0, loud.stderr[-2000:]
  # Not vacuous: unfiltered, TensorFlow's import does print its notices on this machine.
  assert 'oneDNN' in loud.stderr or 'InitializeLog' in loud.stderr, loud.stderr


def test_native_stderr_filter_writes_back_other_lines(capfd):
  with tf_setup.native_stderr_without():
    os.write(2, b'oneDNN custom operations are on. You may see ...\n')
    os.write(2, b'E0000 something went wrong in C++\n')
    print('python-level line', file=sys.stderr)
  # (Under pytest, sys.stderr is not fd 2, so the two kept lines may come in either order.)
  err = capfd.readouterr().err
  assert sorted(err.splitlines()) == ['E0000 something went wrong in C++', 'python-level line']


def test_native_stderr_is_restored_after_an_exception(capfd):
  with pytest.raises(ImportError):
    with tf_setup.native_stderr_without():
      os.write(2, b'kept before the error\n')
      raise ImportError('no such module')
  os.write(2, b'after\n')
  assert capfd.readouterr().err.splitlines() == ['kept before the error', 'after']
