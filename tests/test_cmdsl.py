"""CMDSL wiring (Eq. 13): one step of the full model lowers the loss; each ablation computes
exactly its terms; attribute noise corrupts what it says; every preset trains on the tiny set."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sketchreid_jax import train
from sketchreid_jax.config_base import load_config
from sketchreid_jax.datasets.attributes import NUM_VALUES, corrupt_attributes
from sketchreid_jax.methods import get_method
from tests import steps
from tests.conftest import REPO

TINY = steps.TINY_MODEL


def _tiny(preset, **extra):
  return load_config(os.path.join(REPO, f'configs/cmdsl.py:{preset}'), **{**TINY, **extra})


def _batch(config, num_classes=6, seed=0):
  batch = steps.pk_batch(config, num_classes, seed)
  rng = np.random.default_rng(seed + 1)
  batch['attributes'] = rng.integers(0, 2, size=(len(batch['label']), 27)).astype(np.int32)
  return batch


def test_one_step_of_full_cmdsl_lowers_the_loss():
  # At random init the un-normalised embeddings are large and the Euclidean metric terms give
  # gradient norms of ~1e3, so a first-order decrease needs a step of lr·‖g‖ ≈ 0.01.
  config = _tiny('market_mq', optim__lr=1e-5, schedule__warmup_epochs=1, data__image_size=(64, 32))
  before, after = steps.one_step_twice(config, _batch(config))
  expected = {'loss', 'loss/id', 'loss/metric', 'loss/rtcl', 'loss/cmalign_dt', 'loss/cmalign_ic'}
  assert expected <= set(before)
  assert all(np.isfinite(v) for v in before.values())
  assert after['loss'] < before['loss']


@pytest.mark.parametrize(
  'preset,terms',
  [
    ('mm23_baseline', {'id', 'metric', 'cmalign_dt'}),
    ('ablation_ffam', {'id', 'metric', 'cmalign_dt', 'cmalign_ic'}),
    ('ablation_rtcl', {'id', 'metric', 'cmalign_dt', 'cmalign_ic', 'rtcl'}),
  ],
)
def test_ablations_compute_exactly_their_terms(preset, terms):
  config = _tiny(preset)
  method = get_method('cmdsl')
  model = method.model_for(config, 6, None)
  batch = _batch(config)
  half = batch['image'].shape[0] // 2
  x = jnp.asarray(batch['image'])
  variables = model.init(jax.random.key(0), x[:half], x[half:], train=False)
  assert any(k.startswith('ffam_') for k in variables['params']) == bool(config.model.ffam_stages)
  outputs, _ = model.apply(
    variables,
    x[:half],
    x[half:],
    train=True,
    label=jnp.asarray(batch['label'][:]),
    attributes=jnp.asarray(batch['attributes']),
    mutable=['batch_stats'],
    rngs={'cmalign': jax.random.key(1)},
  )
  got = method.losses_for(outputs, {k: jnp.asarray(v) for k, v in batch.items()}, config)
  assert set(got) == terms
  assert all(bool(jnp.isfinite(v)) for _, v in got.values())


def test_attribute_noise_changes_exactly_n_valid_attributes_per_identity():
  rng = np.random.default_rng(0)
  clean = np.stack([rng.integers(0, n, size=40) for n in NUM_VALUES], axis=1)
  clean[3] = -1  # an identity missing from the .mat stays unknown
  for n in (0, 3, 9):
    noisy = corrupt_attributes(clean, n, seed=5)
    changed = (noisy != clean).sum(axis=1)
    assert changed[3] == 0 and (noisy[3] == -1).all()
    assert (np.delete(changed, 3) == n).all()
    known = np.delete(noisy, 3, axis=0)
    assert ((known >= 0) & (known < np.asarray(NUM_VALUES))).all()
  np.testing.assert_array_equal(corrupt_attributes(clean, 3, 5), corrupt_attributes(clean, 3, 5))
  with pytest.raises(ValueError, match='attribute_noise'):
    corrupt_attributes(clean, 28, 0)


@pytest.mark.parametrize('preset', ['market_mq', 'baseline_attr_noise3', 'pku'])
def test_presets_train_and_evaluate_on_tiny_synthetic(
  preset, tiny_market, tiny_pku, tfds_cache, tmp_path
):
  config = _tiny(preset, train__epochs=1, eval__batch_size=32, train__progress_bar=False)
  config.data.root = tiny_pku if preset == 'pku' else tiny_market
  config.data.cache_dir = tfds_cache
  results = train.train_and_evaluate(config, str(tmp_path / preset))
  assert set(results) == set(config.eval.protocols)
  assert all(0 <= r.mAP <= 1 for r in results.values())
