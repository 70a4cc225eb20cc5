"""Multi-query fusion: the group mean by hand, and the models' fused paths against their parts."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sketchreid_jax import models
from sketchreid_jax.models.fusion import fuse_groups


def test_fuse_groups_is_the_block_mean_broadcast():
  x = np.random.default_rng(0).normal(size=(6, 2, 3, 4)).astype(np.float32)
  out = np.asarray(fuse_groups(jnp.asarray(x), 3))
  for g in range(2):
    expected = x[3 * g : 3 * g + 3].mean(0)
    for i in range(3):
      np.testing.assert_allclose(out[3 * g + i], expected, rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(np.asarray(fuse_groups(jnp.asarray(x), 1)), x)


def test_fuse_groups_refuses_a_batch_that_does_not_split():
  with pytest.raises(ValueError, match='config.sampler.K'):
    fuse_groups(jnp.zeros((5, 2)), 2)
  one = jnp.ones((1, 2))  # init's shape probe passes through
  np.testing.assert_array_equal(np.asarray(fuse_groups(one, 2)), np.ones((1, 2)))


def _init(model, shape):
  x = jnp.zeros(shape)
  return model.init(jax.random.key(0), x, x, train=False)


@pytest.mark.parametrize(
  'make',
  [
    lambda fusion: models.Baseline(num_classes=5, width=8, sketch_fusion=fusion),
    lambda fusion: models.DALNet(num_classes=5, width=8, sketch_fusion=fusion, use_mia=False),
  ],
  ids=['baseline', 'dalnet'],
)
def test_fused_training_forward_equals_extract_from_the_mean_stem(make):
  """In eval mode (fixed BN statistics) each sketch row of a fused model is the embedding of its
  identity's mean early map, and the photo rows are those of the unfused model."""
  shape = (4, 32, 16, 3)
  fused, plain = make(2), make(0)
  variables = _init(plain, shape)
  rng = np.random.default_rng(1)
  photos = jnp.asarray(rng.normal(size=shape).astype(np.float32))
  sketches = jnp.asarray(rng.normal(size=shape).astype(np.float32))
  out = fused.apply(variables, photos, sketches, train=False)
  ref = plain.apply(variables, photos, sketches, train=False)
  feats = out['feat'] if 'feat' in out else out['streams']['sketch']['feat']
  ref_photo = ref['feat'][:4] if 'feat' in ref else ref['streams']['photo']['feat']
  out_photo = out['feat'][:4] if 'feat' in out else out['streams']['photo']['feat']
  sketch_feats = feats[4:] if 'feat' in out else feats
  np.testing.assert_allclose(out_photo, ref_photo, rtol=1e-5, atol=1e-5)
  stems = plain.apply(variables, sketches, modality=1, method=plain.extract_stem)
  for g in range(2):
    mean = jnp.mean(stems[2 * g : 2 * g + 2], axis=0, keepdims=True)
    expected = plain.apply(variables, mean, method=plain.extract_from_stem)['feat'][0]
    for i in range(2):
      np.testing.assert_allclose(sketch_feats[2 * g + i], expected, rtol=1e-4, atol=1e-5)
  # Distinct identities stay distinct.
  assert not np.allclose(sketch_feats[0], sketch_feats[2])


def test_stem_aggregate_embeds_each_identitys_mean_stem_map(tiny_market, tfds_cache):
  from sketchreid_jax import datasets, evaluate, input_pipeline
  from sketchreid_jax.config_base import base_config

  config = base_config()
  config.data.root, config.data.cache_dir = tiny_market, tfds_cache
  config.data.image_size = (32, 16)
  config.eval.batch_size = 7  # groups straddle batches
  table = datasets.load(config.data)
  eval_set = input_pipeline.make_eval_set(table, 'ABC', multi_query=True)
  model = models.Baseline(num_classes=5, width=8)
  variables = _init(model, (1, 32, 16, 3))
  got = evaluate.stem_group_features(
    model, variables, table, eval_set.query_index, eval_set.query_groups, config=config
  )
  images = np.concatenate(
    [
      b['image'][b['valid']]
      for b in input_pipeline.eval_iterator(
        table, eval_set.query_index, image_size=(32, 16), batch_size=64
      )
    ]
  )
  stems = np.asarray(model.apply(variables, images, modality=1, method=model.extract_stem))
  assert got.shape == (len(eval_set.group_pids), 8 * 32)
  for g in range(len(eval_set.group_pids)):
    mean = stems[eval_set.query_groups == g].mean(0, keepdims=True)
    feat = np.asarray(model.apply(variables, mean, method=model.extract_from_stem)['feat'][0])
    np.testing.assert_allclose(got[g], feat / np.linalg.norm(feat), rtol=1e-4, atol=1e-5)
