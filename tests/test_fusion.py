"""Multi-query fusion as released: the Non-local block against a numpy transcription of the
release's, the set mean, the fused model paths against their parts, and the fused training batch
(every sketch slot = its identity's whole augmented set)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sketchreid_jax import models
from sketchreid_jax.models.fusion import mean_of_sets
from sketchreid_jax.models.nonlocal_block import NonLocal


def _release_non_local(x_nchw, p):
  """numpy transcription of the release's ``Non_local.forward`` (model.py), BN in eval mode."""
  b, c, h, w = x_nchw.shape
  conv = lambda x, k, bias: np.einsum('oc,bchw->bohw', k, x) + bias[None, :, None, None]
  g_x = conv(x_nchw, p['g_w'], p['g_b']).reshape(b, 1, -1).transpose(0, 2, 1)
  theta_x = conv(x_nchw, p['t_w'], p['t_b']).reshape(b, 1, -1).transpose(0, 2, 1)
  phi_x = conv(x_nchw, p['p_w'], p['p_b']).reshape(b, 1, -1)
  f = theta_x @ phi_x  # the full HW × HW affinity, as released
  f_div_c = f / f.shape[-1]
  y = (f_div_c @ g_x).transpose(0, 2, 1).reshape(b, 1, h, w)
  w_y = conv(y, p['W_w'], p['W_b'])
  bn = (w_y - p['mean'][None, :, None, None]) / np.sqrt(p['var'][None, :, None, None] + 1e-5)
  return bn * p['gamma'][None, :, None, None] + p['beta'][None, :, None, None] + x_nchw


def test_non_local_equals_the_released_block_and_starts_as_the_identity():
  rng = np.random.default_rng(0)
  c = 6
  x = rng.normal(size=(3, 5, 4, c)).astype(np.float32)
  block = NonLocal()
  variables = block.init(jax.random.key(0), jnp.asarray(x), train=False)
  np.testing.assert_array_equal(np.asarray(block.apply(variables, x, train=False)), x)
  p = {
    'g_w': rng.normal(size=(1, c)),
    'g_b': rng.normal(size=1),
    't_w': rng.normal(size=(1, c)),
    't_b': rng.normal(size=1),
    'p_w': rng.normal(size=(1, c)),
    'p_b': rng.normal(size=1),
    'W_w': rng.normal(size=(c, 1)),
    'W_b': rng.normal(size=c),
    'gamma': rng.normal(size=c),
    'beta': rng.normal(size=c),
    'mean': rng.normal(size=c),
    'var': rng.uniform(0.5, 2.0, size=c),
  }
  f32 = lambda a: jnp.asarray(a, jnp.float32)
  conv = lambda w, b: {'kernel': f32(w.T[None, None]), 'bias': f32(b)}
  variables = {
    'params': {
      'g': conv(p['g_w'], p['g_b']),
      'theta': conv(p['t_w'], p['t_b']),
      'phi': conv(p['p_w'], p['p_b']),
      'W_conv': conv(p['W_w'], p['W_b']),
      'W_bn': {'scale': f32(p['gamma']), 'bias': f32(p['beta'])},
    },
    'batch_stats': {'W_bn': {'mean': f32(p['mean']), 'var': f32(p['var'])}},
  }
  got = np.asarray(block.apply(variables, x, train=False))
  expected = _release_non_local(x.transpose(0, 3, 1, 2).astype(np.float64), p).transpose(0, 2, 3, 1)
  np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_mean_of_sets_averages_the_valid_members_only():
  rng = np.random.default_rng(1)
  maps = rng.normal(size=(3, 4, 2, 2, 5)).astype(np.float32)
  valid = np.array([[1, 1, 1, 1], [1, 0, 1, 0], [1, 0, 0, 0]], bool)
  got = np.asarray(mean_of_sets(jnp.asarray(maps), jnp.asarray(valid)))
  for n in range(3):
    np.testing.assert_allclose(got[n], maps[n][valid[n]].mean(0), rtol=1e-6, atol=1e-6)


def _init(model, shape):
  x = jnp.zeros(shape)
  return model.init(jax.random.key(0), x, x, train=False)


def test_fused_forward_embeds_each_sets_mean_stem_through_the_non_local_block():
  """In eval mode each fused sketch row is ``extract_fused`` of its set's mean stem map (padding
  ignored), and the photo rows are those of the unfused model."""
  shape = (3, 32, 16, 3)
  fused = models.Baseline(num_classes=5, width=8, sketch_fusion=True, fusion_nonlocal=True)
  plain = models.Baseline(num_classes=5, width=8, fusion_nonlocal=True)
  variables = _init(fused, shape)
  # Make the Non-local block do something (it starts as the identity).
  rng = np.random.default_rng(2)
  variables = jax.tree.map(lambda v: v, variables)
  block = variables['params']['fusion_block']
  block['W_bn'] = {
    k: jnp.asarray(rng.normal(size=v.shape), v.dtype) for k, v in block['W_bn'].items()
  }
  photos = jnp.asarray(rng.normal(size=shape).astype(np.float32))
  sets = jnp.asarray(rng.normal(size=(3, 4, 32, 16, 3)).astype(np.float32))
  valid = jnp.asarray([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]], bool)
  out = fused.apply(variables, photos, sets, sketch_valid=valid, train=False)
  ref = plain.apply(variables, photos, photos, train=False)
  np.testing.assert_allclose(out['feat'][:3], ref['feat'][:3], rtol=1e-5, atol=1e-5)
  for n in range(3):
    members = sets[n][np.asarray(valid[n])]
    stems = plain.apply(variables, members, modality=1, method=plain.extract_stem)
    mean = jnp.mean(stems, axis=0, keepdims=True)
    expected = plain.apply(variables, mean, method=plain.extract_fused)['feat'][0]
    np.testing.assert_allclose(out['feat'][3 + n], expected, rtol=1e-4, atol=1e-5)
    # ... and not the plain (Non-local-free) embedding of the mean.
    without = plain.apply(variables, mean, method=plain.extract_from_stem)['feat'][0]
    assert not np.allclose(expected, without, rtol=1e-3, atol=1e-4)


def test_padded_members_do_not_enter_the_stem_batch_statistics():
  model = models.Baseline(num_classes=5, width=8, sketch_fusion=True)
  variables = _init(model, (2, 32, 16, 3))
  rng = np.random.default_rng(3)
  photos = jnp.asarray(rng.normal(size=(2, 32, 16, 3)).astype(np.float32))
  sets = rng.normal(size=(2, 3, 32, 16, 3)).astype(np.float32)
  valid = jnp.asarray([[1, 1, 0], [1, 0, 0]], bool)

  def stats(padding_value):
    s = sets.copy()
    s[~np.asarray(valid)] = padding_value
    _, mutated = model.apply(
      variables, photos, jnp.asarray(s), sketch_valid=valid, train=True, mutable=['batch_stats']
    )
    return mutated['batch_stats']['sketch_stem']['bn1']['mean']

  np.testing.assert_allclose(np.asarray(stats(0.0)), np.asarray(stats(100.0)), rtol=1e-5, atol=1e-6)


def test_dalnet_refuses_fused_training_in_one_line():
  from sketchreid_jax.config_base import ConfigError, base_config
  from sketchreid_jax.validate import validate

  config = base_config('dalnet')
  config.model.sketch_fusion = True
  with pytest.raises(ConfigError, match='sketch_fusion'):
    validate(config, None, training=False)


def test_fused_training_batch_holds_each_identitys_whole_augmented_set(tiny_market, tfds_cache):
  from sketchreid_jax import datasets, input_pipeline
  from sketchreid_jax.config_base import base_config

  config = base_config()
  config.data.root, config.data.cache_dir = tiny_market, tfds_cache
  table = datasets.load(config.data)
  train_set = input_pipeline.make_train_set(table, 'ABC')
  P, K, size = 2, 3, (32, 16)
  plan = input_pipeline.pk_plan(train_set, P=P, K=K, epoch=0, seed=0, fused=True)
  common = dict(plan=plan, image_size=size, pad=2, flip=True, seed=0, epoch=0, prefetch=1)
  fused = next(input_pipeline.train_iterator(table, train_set, sketch_sets=True, **common))
  plain = next(input_pipeline.train_iterator(table, train_set, **common))
  n = P * K
  sets = train_set.sketch_index_by_label
  largest = max(len(r) for r in sets)
  assert fused['image'].shape == (n, *size, 3)
  assert fused['sketch_set'].shape == (n, largest, *size, 3)
  np.testing.assert_array_equal(fused['label'], plain['label'])
  np.testing.assert_array_equal(fused['modality'], plain['modality'])
  # The photos are the plain batch's photos, augmented identically.
  np.testing.assert_array_equal(fused['image'], plain['image'][:n])
  # Without augmentation, every member is that sketch's own (resized, normalised) image.
  still = dict(common, pad=0, flip=False)
  exact = next(input_pipeline.train_iterator(table, train_set, sketch_sets=True, **still))
  for slot in range(n):
    label = fused['label'][n + slot]
    rows = sets[label]
    assert fused['sketch_valid'][slot].sum() == len(rows)
    assert not fused['sketch_set'][slot][~fused['sketch_valid'][slot]].any()  # zero padding
    expected = np.concatenate(
      [
        b['image'][b['valid']]
        for b in input_pipeline.eval_iterator(table, rows, image_size=size, batch_size=len(rows))
      ]
    )
    np.testing.assert_allclose(exact['sketch_set'][slot][: len(rows)], expected, atol=1e-5)
  # Slots of one identity hold the same set, augmented differently.
  first, second = fused['sketch_set'][0], fused['sketch_set'][1]
  assert fused['label'][n] == fused['label'][n + 1]
  assert not np.allclose(first[0], second[0])


def test_release_sampler_draws_identities_afresh_and_images_with_replacement(
  tiny_market, tfds_cache
):
  from sketchreid_jax import datasets, input_pipeline
  from sketchreid_jax.config_base import base_config

  config = base_config()
  config.data.root, config.data.cache_dir = tiny_market, tfds_cache
  train_set = input_pipeline.make_train_set(datasets.load(config.data), 'ABC')
  P, K = 3, 4
  plan = input_pipeline.pk_plan(train_set, P=P, K=K, epoch=2, seed=5, scheme='release')
  # The release's IdentitySampler transcribed on the same generator (numpy's Generator, not the
  # release's global RandomState, so the distribution is the release's, not its exact draws; all
  # batches' identities are drawn first).
  rng = np.random.default_rng([5, 2])
  steps = input_pipeline.steps_per_epoch(train_set, P, K)
  assert plan.shape == (steps, P, 2, K)
  ids = [rng.choice(train_set.num_classes, P, replace=False) for _ in range(steps)]
  for step in range(steps):
    assert len(set(ids[step])) == P
    for slot, label in enumerate(ids[step]):
      photos = train_set.photo_index_by_label[label]
      sketches = train_set.sketch_index_by_label[label]
      np.testing.assert_array_equal(plan[step, slot, 0], photos[rng.integers(0, len(photos), K)])
      np.testing.assert_array_equal(
        plan[step, slot, 1], sketches[rng.integers(0, len(sketches), K)]
      )
  # The fused epoch counts one sketch sample per identity, as the release's multi-query set.
  fused_steps = input_pipeline.steps_per_epoch(train_set, P, K, fused=True)
  assert fused_steps == max(train_set.num_photos, train_set.num_classes) // (P * K) + 1


def test_the_release_evaluates_after_epochs_3_5_to_81():
  from sketchreid_jax.config_base import base_config
  from sketchreid_jax.train import eval_due

  config = base_config()
  config.train.epochs, config.eval.every_epochs, config.eval.offset_epochs = 81, 2, 1
  assert [e for e in range(1, 82) if eval_due(config, e)] == list(range(3, 82, 2))
  config.eval.offset_epochs = 0
  config.train.epochs = 25
  assert [e for e in range(1, 26) if eval_due(config, e)] == [
    2,
    4,
    6,
    8,
    10,
    12,
    14,
    16,
    18,
    20,
    22,
    24,
    25,
  ]


def test_stem_aggregate_embeds_each_identitys_mean_stem_map(tiny_market, tfds_cache):
  from sketchreid_jax import datasets, input_pipeline
  from sketchreid_jax.config_base import base_config
  from sketchreid_jax.evaluation import extract as evaluate

  config = base_config()
  config.data.root, config.data.cache_dir = tiny_market, tfds_cache
  config.data.image_size = (32, 16)
  config.eval.batch_size = 7  # groups straddle batches
  table = datasets.load(config.data)
  eval_set = input_pipeline.make_eval_set(table, 'ABC', multi_query=True)
  model = models.Baseline(num_classes=5, width=8, fusion_nonlocal=True)
  variables = _init(model, (1, 32, 16, 3))
  rng = np.random.default_rng(4)
  block = variables['params']['fusion_block']
  block['W_bn'] = {
    k: jnp.asarray(rng.normal(size=v.shape), v.dtype) for k, v in block['W_bn'].items()
  }
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
    feat = np.asarray(model.apply(variables, mean, method=model.extract_fused)['feat'][0])
    np.testing.assert_allclose(got[g], feat / np.linalg.norm(feat), rtol=1e-4, atol=1e-5)
