"""Precomputed DALNet masks: the layout, the reader's errors, 'auto' resolution, and the pipeline
cropping and flipping each mask exactly like its photo (docs/design.md §4 "DAG", source (a))."""

import logging
import os
import warnings

import ml_collections
import numpy as np
import pytest
from PIL import Image

from sketchreid_jax import input_pipeline as ip
from sketchreid_jax.datasets import masks as masks_lib
from sketchreid_jax.datasets.table import make_table
from tests.test_input_pipeline import MEAN, STD, _encode, _rows

H, W = 32, 16


@pytest.fixture(scope='module')
def dataset(tmp_path_factory):
  """A table of random PNG photos whose mask is the photo's own red channel, written to disk."""
  root = tmp_path_factory.mktemp('masked')
  rng = np.random.default_rng(0)
  rows = _rows(lambda m: None)
  for row in rows:
    pixels = rng.integers(0, 256, (H, W, 3)).astype(np.uint8)
    row['image'] = _encode(pixels)
    if row['modality'] == 0:
      target = root / masks_lib.mask_relpath(row['path'], 'u2netp')
      target.parent.mkdir(parents=True, exist_ok=True)
      Image.fromarray(pixels[..., 0], mode='L').save(target)
  table = make_table(rows, root=str(root), name='masked')
  with warnings.catch_warnings():
    warnings.simplefilter('ignore')
    train_set = ip.make_train_set(table, 'AB')
  return table, train_set


def _photo_rows(train_set):
  return np.concatenate(train_set.photo_index_by_label)


def test_mask_path_layout():
  assert masks_lib.mask_relpath('photo/train/0001_c1s1_01.jpg', 'u2net') == os.path.join(
    'masks', 'u2net', 'photo', 'train', '0001_c1s1_01.png'
  )


def test_pipeline_crops_and_flips_each_mask_with_its_photo(dataset):
  table, train_set = dataset
  masks = masks_lib.load_masks(table, _photo_rows(train_set), 'u2netp')
  plan = ip.pk_plan(train_set, P=2, K=2, epoch=0, seed=0)[:3]
  kw = dict(plan=plan, image_size=(24, 12), pad=3, flip=True, seed=1, epoch=0)
  flipped = 0
  for b in ip.train_iterator(table, train_set, masks=masks, **kw):
    half = len(b['image']) // 2
    red = (b['image'][..., 0] * STD[0] + MEAN[0])[:half]
    # The mask is the red channel, so after the shared resize/pad/crop/flip they must agree.
    np.testing.assert_allclose(b['mask'][:half, ..., 0], red, atol=2e-5)
    np.testing.assert_array_equal(b['mask'][half:], 1.0)  # sketch rows: no masking
    flipped += 1
  assert flipped == 3
  # Adding masks does not change the images (same seeds, same augmentation).
  for with_masks, without in zip(
    ip.train_iterator(table, train_set, masks=masks, **kw),
    ip.train_iterator(table, train_set, **kw),
  ):
    np.testing.assert_array_equal(with_masks['image'], without['image'])
    assert 'mask' not in without


def test_missing_masks_name_the_file_and_the_command(dataset, tmp_path):
  table, train_set = dataset
  rows = _photo_rows(train_set)
  gone = os.path.join(table.root, masks_lib.mask_relpath(str(table.path[rows[0]]), 'u2netp'))
  os.rename(gone, gone + '.bak')
  try:
    with pytest.raises(FileNotFoundError) as e:
      masks_lib.load_masks(table, rows, 'u2netp')
  finally:
    os.rename(gone + '.bak', gone)
  assert gone in str(e.value) and 'precompute_masks' in str(e.value)
  assert '1 of' in str(e.value)


def test_broken_mask_and_sketch_rows_are_refused(dataset):
  table, train_set = dataset
  rows = _photo_rows(train_set)
  path = os.path.join(table.root, masks_lib.mask_relpath(str(table.path[rows[1]]), 'u2netp'))
  original = open(path, 'rb').read()
  with open(path, 'wb') as f:
    f.write(b'not a png')
  try:
    with pytest.raises(ValueError, match='not PNG'):
      masks_lib.load_masks(table, rows, 'u2netp')
  finally:
    with open(path, 'wb') as f:
      f.write(original)
  sketch = np.flatnonzero(table.modality == 1)[:1]
  with pytest.raises(ValueError, match='sketches'):
    masks_lib.load_masks(table, sketch, 'u2netp')


def test_auto_resolves_to_precomputed_only_when_the_masks_exist(dataset, tmp_path, caplog):
  table, _ = dataset
  cfg = ml_collections.ConfigDict(dict(root=table.root, mask_source='auto', mask_set='u2netp'))
  assert masks_lib.resolve_mask_source(cfg) == 'precomputed'
  cfg.mask_set = 'u2net'  # no masks/u2net folder
  with caplog.at_level(logging.WARNING):
    assert masks_lib.resolve_mask_source(cfg) == 'none'
  assert 'WITHOUT foreground masks' in caplog.text and 'precompute_masks' in caplog.text
  cfg.mask_source = 'precomputed'
  assert masks_lib.resolve_mask_source(cfg) == 'precomputed'
  cfg.mask_source = 'grabcut'
  with pytest.raises(ValueError, match='mask_source'):
    masks_lib.resolve_mask_source(cfg)
