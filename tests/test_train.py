"""Training pieces against hand-derived values, and one whole train → evaluate → resume run."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from sketchreid_jax import checkpoints, optim, parallel, train
from sketchreid_jax.config_base import load_config
from tests.conftest import REPO


def test_lr_schedule_matches_the_epoch_rule():
  c = load_config(os.path.join(REPO, 'configs/baseline.py'))
  spe = 7
  f = optim.lr_schedule(c, spe, 0.1)
  expected = {0: 0.01, 4: 0.05, 9: 0.1, 10: 0.1, 19: 0.1, 20: 0.01, 49: 0.01, 50: 0.001, 79: 0.001}
  for epoch, lr in expected.items():
    for step in (epoch * spe, epoch * spe + spe - 1):
      assert float(f(step)) == pytest.approx(lr, rel=1e-6), (epoch, step)


@pytest.mark.parametrize('devices', [1, 2, 4])
def test_device_major_permutation_gives_each_device_its_own_photos_then_sketches(devices):
  P, K = 4, 3
  # Row r of the host batch: identity r // K for photos, (r - P*K) // K for sketches.
  ident = np.concatenate([np.repeat(np.arange(P), K), np.repeat(np.arange(P), K)])
  modality = np.concatenate([np.zeros(P * K), np.ones(P * K)])
  perm = parallel.device_major_permutation(P, K, devices)
  assert sorted(perm) == list(range(2 * P * K))
  for d, chunk in enumerate(np.split(perm, devices)):
    half = len(chunk) // 2
    assert (modality[chunk[:half]] == 0).all() and (modality[chunk[half:]] == 1).all()
    ids = set(ident[chunk])
    assert ids == set(range(d * P // devices, (d + 1) * P // devices))
    np.testing.assert_array_equal(ident[chunk[:half]], ident[chunk[half:]])


@pytest.mark.parametrize('devices', [1, 2, 4])
def test_device_order_gives_each_device_the_sets_of_its_own_identities(devices):
  """A fused batch: 2·P·K labels, but P·K photos and P·K sketch sets (one per slot)."""
  P, K, M = 4, 3, 5
  labels = np.concatenate([np.repeat(np.arange(P), K)] * 2)
  slot_ids = np.repeat(np.arange(P), K)
  batch = {
    'label': labels,
    'image': slot_ids.astype(np.float32),  # a photo tagged with its identity
    'sketch_set': np.repeat(slot_ids[:, None], M, axis=1).astype(np.float32),
  }
  ordered = parallel.device_order(batch, parallel.device_major_permutation(P, K, devices))
  for label, photo, sets in zip(
    np.split(ordered['label'], devices),
    np.split(ordered['image'], devices),
    np.split(ordered['sketch_set'], devices),
  ):
    half = len(label) // 2
    # The device's photos, its sketch sets and its labels name the same identities, in order.
    np.testing.assert_array_equal(photo, label[:half])
    np.testing.assert_array_equal(sets[:, 0], label[half:])


def test_permutation_refuses_uneven_split():
  with pytest.raises(ValueError, match='multiple of the device count'):
    parallel.device_major_permutation(5, 2, 2)


def test_train_evaluate_and_resume_on_tiny_synthetic(
  tiny_market, tfds_cache, tmp_path, capsys, monkeypatch
):
  config = load_config(os.path.join(REPO, 'configs/demo.py:tiny'))
  config.data.root = tiny_market
  config.data.cache_dir = tfds_cache
  config.train.progress_bar = False
  workdir = str(tmp_path / 'run')
  evaluations = []  # (epoch, step, results) of every evaluation the training runs
  real_evaluate = train.protocols.evaluate

  def recording(*args, **kwargs):
    out = real_evaluate(*args, **kwargs)
    if 'epoch' in kwargs['extra']:  # not --mode=evaluate's
      evaluations.append((kwargs['extra']['epoch'], kwargs['extra']['step'], out))
    return out

  monkeypatch.setattr(train.protocols, 'evaluate', recording)

  results = train.train_and_evaluate(config, workdir)
  assert set(results) == {'single_query', 'multi_query'}
  for r in results.values():
    assert 0.0 <= r.mAP <= 1.0 and 0.0 <= r.rank(1) <= 1.0 and r.num_valid_queries > 0
  for name in (
    'results.json',
    'results.csv',
    'results.md',
    'cmc.png',
    'ranked_list.png',
    'config.json',
    'train_meta.json',
  ):
    assert os.path.exists(os.path.join(workdir, name)), name
  meta = json.load(open(os.path.join(workdir, 'train_meta.json')))
  spe = meta['steps_per_epoch']
  latest = os.listdir(os.path.join(workdir, 'checkpoints'))
  assert str(2 * spe) in latest
  assert len(os.listdir(os.path.join(workdir, 'best'))) >= 1
  out = capsys.readouterr().out
  assert 'chance' in out
  # The report's figures are announced with their paths.
  assert os.path.join(workdir, 'ranked_list.png') in out and os.path.join(workdir, 'cmc.png') in out
  with Image.open(os.path.join(workdir, 'ranked_list.png')) as im:
    # 4 query rows × (query + 10 photos): a wide figure, not an empty canvas.
    assert (
      im.size[0] > im.size[1] > 100
      and len(np.unique(np.asarray(im.convert('RGB')).reshape(-1, 3), axis=0)) > 50
    )

  # Resume: one more epoch continues from the saved step instead of starting over.
  config.train.epochs = 3
  train.train_and_evaluate(config, workdir)
  assert str(3 * spe) in os.listdir(os.path.join(workdir, 'checkpoints'))

  # Honest selection: the reports hold the last epoch's numbers and, labelled, the epoch whose
  # mAP on the first protocol was best (the first of equals), continued across the resume.
  assert [e for e, _, _ in evaluations] == [1, 2, 3]
  maps = [r['single_query'].mAP for _, _, r in evaluations]
  best = int(np.argmax(maps))
  report = json.load(open(os.path.join(workdir, 'results.json')))
  assert report['extra']['epoch'] == 3
  assert report['results']['single_query']['mAP'] == pytest.approx(maps[-1])
  selected = report['selected']
  assert (selected['epoch'], selected['metric'], selected['protocol']) == (
    best + 1,
    'mAP',
    'single_query',
  )
  assert selected['value'] == pytest.approx(maps[best])
  assert selected['results']['single_query']['mAP'] == pytest.approx(maps[best])
  assert selected['label'] == 'best on the test set, as the reference code selects'
  md = open(os.path.join(workdir, 'results.md')).read()
  assert f'Selected epoch {best + 1}' in md and selected['label'] in md
  assert os.listdir(os.path.join(workdir, 'best')) == [str(evaluations[best][1])]
  params_after = train.evaluate_workdir(config, workdir)
  assert set(params_after) == {'single_query', 'multi_query'}


def test_grad_clip_norm_bounds_the_update_to_lr_times_the_clip():
  """Plain SGD (no momentum, no decay, one group) moves params by lr · g · min(1, c/‖g‖)."""
  import jax.numpy as jnp

  c = load_config(os.path.join(REPO, 'configs/baseline.py'))
  c.optim.momentum, c.optim.nesterov, c.optim.weight_decay = 0.0, False, 0.0
  c.optim.backbone_lr_mult, c.schedule.warmup_epochs = 1.0, 1
  params = {'layer1': {'w': jnp.zeros(4)}, 'bnneck': {'b': jnp.zeros(1)}}
  grads = {
    'layer1': {'w': jnp.array([3.0, 4.0, 0.0, 0.0])},
    'bnneck': {'b': jnp.zeros(1)},
  }  # ‖g‖ = 5
  for clip, expected_norm in ((0.0, 0.1 * 5.0), (2.0, 0.1 * 2.0), (10.0, 0.1 * 5.0)):
    c.optim.grad_clip_norm = clip
    tx = optim.make_optimizer(c, 1, params)
    updates, _ = tx.update(grads, tx.init(params), params)
    assert float(jnp.linalg.norm(updates['layer1']['w'])) == pytest.approx(expected_norm, rel=1e-5)
  c.optim.grad_clip_norm = -1.0
  with pytest.raises(ValueError, match='grad_clip_norm'):
    optim.make_optimizer(c, 1, params)


def test_clip_exempt_modules_are_neither_counted_nor_scaled():
  """With optim.clip_exempt the exempt module moves by lr · g, the rest by lr · g · c/‖g_rest‖."""
  import jax.numpy as jnp

  c = load_config(os.path.join(REPO, 'configs/baseline.py'))
  c.optim.momentum, c.optim.nesterov, c.optim.weight_decay = 0.0, False, 0.0
  c.optim.backbone_lr_mult, c.schedule.warmup_epochs = 1.0, 1
  c.optim.grad_clip_norm, c.optim.clip_exempt = 1.0, ('bnneck',)
  params = {'layer1': {'w': jnp.zeros(4)}, 'bnneck': {'b': jnp.zeros(2)}}
  grads = {
    'layer1': {'w': jnp.array([30.0, 40.0, 0.0, 0.0])},
    'bnneck': {'b': jnp.array([3.0, 4.0])},
  }
  tx = optim.make_optimizer(c, 1, params)
  updates, _ = tx.update(grads, tx.init(params), params)
  lr = c.optim.lr
  np.testing.assert_allclose(updates['bnneck']['b'], -lr * np.array([3.0, 4.0]), rtol=1e-6)
  np.testing.assert_allclose(
    updates['layer1']['w'], -lr * np.array([30.0, 40.0, 0, 0]) / 50.0, rtol=1e-6
  )
  c.optim.clip_exempt = ('nothing_here',)
  with pytest.raises(ValueError, match='clip_exempt'):
    optim.make_optimizer(c, 1, params)


def test_clip_per_term_clips_each_term_on_its_own():
  """optim.clip_per_term: term t contributes g_t · min(1, c/‖g_t without exempt modules‖)."""
  import jax
  import jax.numpy as jnp

  c = load_config(os.path.join(REPO, 'configs/baseline.py'))
  c.optim.grad_clip_norm, c.optim.clip_per_term, c.optim.clip_exempt = 1.0, True, ('bnneck',)
  params = {'layer1': {'w': jnp.array([1.0, 2.0])}, 'bnneck': {'b': jnp.array([0.5])}}

  def forward(p):
    return {'x': p['layer1']['w'], 'y': p['bnneck']['b'], 'label': jnp.int32(3)}, {'s': 1}

  def terms_fn(out):
    # a: gradient (30, 40) on w, ‖·‖ = 50 → scaled by 1/50; b (weight 2): (4, 8) on w,
    # ‖·‖ = √80 → scaled by 1/√80, and 2·y on b = 2, exempt, unscaled.
    return {
      'a': (1.0, 30.0 * out['x'][0] + 40.0 * out['x'][1]),
      'b': (2.0, jnp.sum(out['x'] ** 2) + out['y'][0]),
    }

  grads, batch_stats, metrics = jax.vmap(
    lambda _: optim.per_term_clipped_grads(forward, params, terms_fn, c.optim),
    axis_name=parallel.AXIS,
  )(jnp.zeros(1))
  g_a, g_b = np.array([30.0, 40.0]) / 50.0, np.array([4.0, 8.0]) / np.sqrt(80.0)
  np.testing.assert_allclose(grads['layer1']['w'][0], g_a + g_b, rtol=1e-6)
  np.testing.assert_allclose(grads['bnneck']['b'][0], [2.0], rtol=1e-6)
  assert batch_stats == {'s': 1}
  np.testing.assert_allclose(metrics['grad_norm/a'][0], 50.0, rtol=1e-6)
  np.testing.assert_allclose(metrics['grad_norm/b'][0], np.sqrt(80.0), rtol=1e-6)
  np.testing.assert_allclose(metrics['loss'][0], 30 + 80 + 2 * (5 + 0.5), rtol=1e-6)
  raw = np.array([30.0 + 4.0, 40.0 + 8.0, 2.0])
  np.testing.assert_allclose(metrics['grad_norm'][0], np.linalg.norm(raw), rtol=1e-6)
  # Over devices the clip acts on the device mean: (60, 0) and (0, 80) average to (30, 40),
  # ‖·‖ = 50, so (0.6, 0.8); clipping each device first would give (0.5, 0.5).
  two, _, _ = jax.vmap(
    lambda d: optim.per_term_clipped_grads(
      forward,
      params,
      lambda out: {'a': (1.0, 60 * (1 - d) * out['x'][0] + 80 * d * out['x'][1])},
      c.optim,
    ),
    axis_name=parallel.AXIS,
  )(jnp.array([0.0, 1.0]))
  np.testing.assert_allclose(two['layer1']['w'], [[0.6, 0.8]] * 2, rtol=1e-6)
  # The optimiser then applies no second, global clip: plain SGD moves w by lr · g.
  c.optim.momentum, c.optim.nesterov, c.optim.weight_decay = 0.0, False, 0.0
  c.optim.backbone_lr_mult, c.schedule.warmup_epochs = 1.0, 1
  tx = optim.make_optimizer(c, 1, params)
  big = {'layer1': {'w': jnp.array([30.0, 40.0])}, 'bnneck': {'b': jnp.zeros(1)}}
  updates, _ = tx.update(big, tx.init(params), params)
  np.testing.assert_allclose(
    updates['layer1']['w'], -c.optim.lr * np.array([30.0, 40.0]), rtol=1e-6
  )


def test_frozen_parameters_get_no_update_of_any_kind():
  """A frozen path keeps its value under weight decay and momentum, even with a gradient."""
  import jax.numpy as jnp

  c = load_config(os.path.join(REPO, 'configs/baseline.py'))
  c.optim.weight_decay = 0.1
  params = {'layer1': {'w': jnp.ones(3), 'v': jnp.ones(2)}, 'bnneck': {'b': jnp.ones(1)}}
  labels = optim.param_groups(params, ('bnneck',), ('layer1/v',))
  assert labels == {'layer1': {'w': 'backbone', 'v': 'frozen'}, 'bnneck': {'b': 'head'}}
  with pytest.raises(ValueError, match='not in the model'):
    optim.param_groups(params, ('bnneck',), ('layer9',))


def test_best_follows_a_changed_selection_metric_on_resume(tmp_path):
  import optax
  import orbax.checkpoint as ocp

  config = load_config(os.path.join(REPO, 'configs/demo.py:tiny'))
  state = train.TrainState.create(
    apply_fn=None, params={'w': np.ones(2, np.float32)}, tx=optax.sgd(0.1), batch_stats={}
  )
  item = ocp.args.StandardSave(checkpoints.state_to_save(state))
  _, best = checkpoints.managers(str(tmp_path), config)
  best.save(10, args=item, metrics={'mAP': 0.9}, force=True)
  best.wait_until_finished()
  config.eval.best_metric = 'R-1'
  _, best = checkpoints.managers(str(tmp_path), config)
  best.save(20, args=item, metrics={'R-1': 0.1}, force=True)
  best.wait_until_finished()
  assert best.all_steps() == [20]
