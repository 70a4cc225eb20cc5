"""Process set-up shared by the command-line entry points (main, tools.reproduce)."""

import logging
import os

DEFAULT_JAX_CACHE = os.path.expanduser('~/.cache/sketchreid_jax/jax')
JAX_CACHE_HELP = (
  "JAX's persistent compilation cache: a resumed or repeated run skips XLA compilation. "
  "'' disables it."
)


def configure(jax_cache: str, parallel_config=None) -> None:
  """Joins a multi-process job if ``parallel_config`` (``config.parallel``) or the environment asks
  for one, then turns on the compilation cache and INFO logging without orbax's per-save chatter.

  Call it before anything touches JAX's devices: ``jax.distributed.initialize`` must come first.
  """
  import jax  # imported here so that `--help` stays fast

  from sketchreid_jax import parallel

  logging.getLogger().setLevel(logging.INFO)
  parallel.initialize_distributed(parallel_config)
  if jax_cache:
    jax.config.update('jax_compilation_cache_dir', jax_cache)
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 1.0)
  # Orbax reports every save at INFO through absl; keep its warnings, drop the chatter.
  logging.getLogger('absl').addFilter(
    lambda record: record.levelno >= logging.WARNING or 'orbax' not in record.pathname
  )
  quiet_start()


def quiet_start() -> None:
  """Drops the start-up lines that say nothing about the run (TF's own are filtered in
  ``tf_setup``): jax's INFO line for each platform it probes and does not find (libtpu on every
  machine without a TPU; a missing CUDA plugin is a WARNING and stays), and matplotlib's one-time
  "building the font cache" notice. What is left is one line of ours naming the devices
  (``train``)."""
  logging.getLogger('jax._src.xla_bridge').addFilter(
    lambda record: (
      record.levelno >= logging.WARNING or 'Unable to initialize backend' not in record.getMessage()
    )
  )
  logging.getLogger('matplotlib.font_manager').addFilter(
    lambda record: 'building the font cache' not in record.getMessage()
  )


def rss_mb(field: str = 'VmHWM') -> float:
  """This process's resident memory in MiB from /proc/self/status: ``VmHWM`` its peak (unlike
  getrusage's ru_maxrss, not inherited from the parent across exec, so a child process reports
  only its own), ``VmRSS`` the current."""
  with open('/proc/self/status') as f:
    line = next(ln for ln in f if ln.startswith(f'{field}:'))
  return int(line.split()[1]) / 1024
