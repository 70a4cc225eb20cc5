"""Dataset readers by name (``config.data.dataset``), each returning a ``SampleTable``.

Real and synthetic data share the on-disk layouts (data/README.md), so one reader serves both. Each
reader runs the checks of ``datasets.checks`` first and refuses (or warns) exactly as
``check_dataset`` / ``python -m sketchreid_jax.tools.check_data`` report.

``load`` is where every consumer (training, evaluation, tools) gets its table, so options that
change the images for all of them apply here: ``data.resize_antialias`` (the MM'23 release's PIL
Lanczos resize on load, ``datasets/resize.py``).
"""

import os
from typing import Callable

from sketchreid_jax.datasets.checks import DataError, Report, check_dataset


def _market_sketch(data_config):
  from sketchreid_jax.datasets import market_sketch  # TF/TFDS import is slow: load on use

  return market_sketch.load_market_sketch(data_config.root, cache_dir=data_config.cache_dir or None)


def _pku_sketch(data_config):
  from sketchreid_jax.datasets import pku_sketch  # TF/TFDS import is slow: load on use

  return pku_sketch.load_pku_sketch(
    data_config.root,
    cache_dir=data_config.cache_dir or None,
    trial=data_config.pku_trial,
    split_seed=data_config.pku_split_seed,
    test_counts=data_config.pku_test_counts.to_dict(),
  )


def _qmul(name: str) -> Callable:
  """The QMUL reader for ``name`` (ShoeV2 and ChairV2 share it; the name labels the table)."""

  def read(data_config):
    from sketchreid_jax.datasets import qmul  # TF/TFDS import is slow: load on use

    return qmul.load_qmul(data_config.root, name=name, cache_dir=data_config.cache_dir or None)

  return read


DATASETS: dict[str, Callable] = {
  'market_sketch': _market_sketch,
  'pku_sketch': _pku_sketch,
  'qmul_shoev2': _qmul('qmul_shoev2'),
  'qmul_chairv2': _qmul('qmul_chairv2'),
}


def load(data_config):
  """Reads ``data_config.dataset`` from ``data_config.root`` into a SampleTable.

  With ``data_config.resize_antialias`` its images are PIL-Lanczos-resized to
  ``data_config.image_size`` and stored as PNG (``resize.resize_table``).
  """
  if data_config.dataset not in DATASETS:
    raise ValueError(
      f'unknown config.data.dataset {data_config.dataset!r}; known: {sorted(DATASETS)}'
    )
  if not os.path.isdir(data_config.root):
    raise FileNotFoundError(
      f'dataset folder {data_config.root!r} does not exist. Generate the synthetic stand-in with '
      f'`python -m sketchreid_jax.tools.generate_synthetic --out data/synthetic --preset demo`, or '
      f'point --config.data.root at a real {data_config.dataset} folder (see data/README.md).'
    )
  table = DATASETS[data_config.dataset](data_config)
  # .get: tools that build a partial data config (older saved configs) mean "off".
  if data_config.get('resize_antialias', False):
    from sketchreid_jax.datasets import resize

    table = resize.resize_table(table, tuple(data_config.image_size))
  return table
