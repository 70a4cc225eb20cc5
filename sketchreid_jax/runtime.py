"""Process set-up shared by the command-line entry points (main, tools.reproduce)."""

import logging
import os

DEFAULT_JAX_CACHE = os.path.expanduser('~/.cache/sketchreid_jax/jax')
JAX_CACHE_HELP = (
  "JAX's persistent compilation cache: a resumed or repeated run skips XLA compilation. "
  "'' disables it."
)


def configure(jax_cache: str) -> None:
  """Turns on the compilation cache and INFO logging without orbax's per-save chatter."""
  import jax  # imported here so that `--help` stays fast

  if jax_cache:
    jax.config.update('jax_compilation_cache_dir', jax_cache)
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 1.0)
  logging.getLogger().setLevel(logging.INFO)
  # Orbax reports every save at INFO through absl; keep its warnings, drop the chatter.
  logging.getLogger('absl').addFilter(
    lambda record: record.levelno >= logging.WARNING or 'orbax' not in record.pathname
  )
