"""Imports TensorFlow for host-side data work only, with the GPUs hidden from it.

JAX owns the accelerators; TF only reads files, decodes and augments on the CPU. Every module that
needs TF imports it from here (``from sketchreid_jax.tf_setup import tf``) so this runs first.
"""

import os
import warnings

# Keep TF's C++ INFO banner out of the user's console; an explicit user setting wins.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '1')

import tensorflow as tf  # noqa: E402

try:
  tf.config.set_visible_devices([], 'GPU')
except RuntimeError as err:  # TF already initialised its GPUs before this import.
  warnings.warn(
    f'could not hide GPUs from TensorFlow ({err}); import sketchreid_jax before running any '
    'TensorFlow op.'
  )
