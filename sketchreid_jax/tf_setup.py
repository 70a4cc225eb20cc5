"""Imports TensorFlow for host-side data work only, with the GPUs hidden from it, and quietly.

JAX owns the accelerators; TF only reads files, decodes and augments on the CPU. Every module that
needs TF imports it from here (``from sketchreid_jax.tf_setup import tf``) so this runs first.

Importing TensorFlow writes start-up notices straight to the process's stderr from C++, before its
log settings apply (``TF_CPP_MIN_LOG_LEVEL`` does not reach them): absl's "All log messages before
absl::InitializeLog()" line and the oneDNN notice, once for each of TF's two libraries, and the
CPU-instruction notice. None of them says anything about this run, so the import runs with stderr
(file descriptor 2) going to a temporary file and every other line is written back afterwards.
``SKETCHREID_NATIVE_LOGS=1`` turns the filter off.
"""

import contextlib
import os
import re
import sys
import tempfile
import warnings

# Keep TF's C++ INFO banner out of the user's console; an explicit user setting wins.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '1')

START_UP_NOISE = tuple(
  re.compile(p)
  for p in (
    r'All log messages before absl::InitializeLog\(\) is called are written to STDERR',
    r'oneDNN custom operations are on',
    r'This TensorFlow binary is optimized to use available CPU instructions',
    r'^To enable the following instructions: .* rebuild TensorFlow',
  )
)


@contextlib.contextmanager
def native_stderr_without(noise=START_UP_NOISE):
  """Runs the block with fd 2 captured; then writes back each captured line no pattern matches."""
  if os.environ.get('SKETCHREID_NATIVE_LOGS'):
    yield
    return
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile() as captured:
    os.dup2(captured.fileno(), 2)
    try:
      yield
    finally:
      sys.stderr.flush()
      os.dup2(saved, 2)
      os.close(saved)
      captured.seek(0)
      kept = [
        line
        for line in captured.read().decode(errors='replace').splitlines(keepends=True)
        if not any(p.search(line) for p in noise)
      ]
      sys.stderr.write(''.join(kept))
      sys.stderr.flush()


with native_stderr_without():
  import tensorflow as tf  # noqa: E402

try:
  tf.config.set_visible_devices([], 'GPU')
except RuntimeError as err:  # TF already initialised its GPUs before this import.
  warnings.warn(
    f'could not hide GPUs from TensorFlow ({err}); import sketchreid_jax before running any '
    'TensorFlow op.'
  )
