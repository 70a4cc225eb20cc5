"""Shared fixtures: a tiny synthetic Market-Sketch-1K folder generated once per test session."""

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import jax  # noqa: E402
import pytest  # noqa: E402

# Identical programs (the same model compiled by several tests or by a resumed run) compile once.
jax.config.update(
  'jax_compilation_cache_dir',
  os.path.join(
    os.environ.get('PYTEST_JAX_CACHE', os.path.expanduser('~/.cache/sketchreid_jax/jax_tests'))
  ),
)
jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.5)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def config_presets(name: str) -> dict:
  """The PRESETS table of configs/<name>.py."""
  import importlib.util

  spec = importlib.util.spec_from_file_location(f'_presets_{name}', f'{REPO}/configs/{name}.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.PRESETS


@pytest.fixture(scope='session')
def tiny_market(tmp_path_factory):
  """Root of a tiny synthetic Market-Sketch-1K layout (the generator's 'tiny' preset)."""
  from sketchreid_jax.datasets import synthetic

  root = tmp_path_factory.mktemp('synthetic') / 'market_sketch'
  synthetic.generate_market_sketch(str(root), **synthetic.PRESETS['tiny']['market'])
  return str(root)


@pytest.fixture(scope='session')
def tfds_cache(tmp_path_factory):
  return str(tmp_path_factory.mktemp('tfds_cache'))


@pytest.fixture(scope='session')
def tiny_pku(tmp_path_factory):
  """Root of a tiny synthetic PKU-Sketch layout (the generator's 'tiny' preset)."""
  from sketchreid_jax.datasets import synthetic

  root = tmp_path_factory.mktemp('synthetic_pku') / 'pku_sketch'
  synthetic.generate_pku_sketch(str(root), **synthetic.PRESETS['tiny']['pku'])
  return str(root)


@pytest.fixture(scope='session')
def tiny_shoev2(tmp_path_factory):
  """Root of a tiny synthetic QMUL-ShoeV2 layout (the generator's 'tiny' preset)."""
  from sketchreid_jax.datasets import synthetic, synthetic_objects

  root = tmp_path_factory.mktemp('synthetic_qmul') / 'qmul_shoev2'
  synthetic_objects.generate_qmul_shoev2(str(root), **synthetic.PRESETS['tiny']['qmul_shoev2'])
  return str(root)
