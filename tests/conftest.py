"""Shared fixtures: a tiny synthetic Market-Sketch-1K folder generated once per test session."""

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import pytest  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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
