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
