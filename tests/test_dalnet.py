"""DALNet wiring: one step lowers the loss; each ablation computes exactly its terms; gradients
reach what the seed says and nothing else; test features come from the shared backbone; the mask
sources train (none / precomputed / u2net) and name the missing file and the command that makes
it; every preset family trains on the tiny synthetic set."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from sketchreid_jax import models, train
from sketchreid_jax.config_base import load_config
from sketchreid_jax.methods import get_method
from tests import steps
from tests.conftest import REPO, config_presets

TINY = steps.TINY_MODEL


def _tiny(preset, **extra):
  return load_config(os.path.join(REPO, f'configs/dalnet.py:{preset}'), **{**TINY, **extra})


def _batch(config, num_classes=6, seed=0):
  batch = steps.pk_batch(config, num_classes, seed)
  mask = np.ones((*batch['image'].shape[:3], 1), np.float32)
  mask[:, :, : config.data.image_size[1] // 4] = 0.0  # a background strip left of every photo
  batch['mask'] = mask
  return batch


def test_one_step_of_full_dalnet_lowers_the_loss():
  config = _tiny('pku', optim__lr=1e-3, schedule__warmup_epochs=1, data__image_size=(64, 32))
  before, after = steps.one_step_twice(config, _batch(config))
  expected = {'loss/id', 'loss/mia_id', 'loss/circle_cross', 'loss/circle_intra', 'loss/style'}
  assert expected <= set(before)
  assert all(np.isfinite(v) for v in before.values())
  assert after['loss'] < before['loss']


def _init_and_apply(config, batch, num_classes=6):
  model = get_method('dalnet').model_for(config, num_classes, None)
  x = jnp.asarray(batch['image'])
  half = x.shape[0] // 2
  variables = model.init(jax.random.key(0), x[:half], x[half:], train=False)
  kwargs = dict(label=jnp.asarray(batch['label']), mask=jnp.asarray(batch['mask']))
  return model, variables, x[:half], x[half:], kwargs


@pytest.mark.parametrize(
  'preset,terms,params',
  [
    ('ablation_baseline', {'id'}, {'photo_stream', 'sketch_stream'}),
    ('ablation_aux', {'id'}, {'aux_stream', 'dag'}),
    ('ablation_cross', {'id', 'circle_cross'}, {'aux_stream', 'dag'}),
    ('ablation_intra', {'id', 'circle_cross', 'circle_intra'}, {'aux_stream', 'dag'}),
    ('ablation_mia', {'id', 'mia_id', 'circle_cross', 'circle_intra'}, {'mia', 'mia_bnneck'}),
    ('dag_style', {'id', 'mia_id', 'circle_cross', 'circle_intra', 'style'}, {'mia', 'dag'}),
  ],
)
def test_ablations_compute_exactly_their_terms(preset, terms, params):
  config = _tiny(preset)
  batch = _batch(config)
  model, variables, photos, sketches, kwargs = _init_and_apply(config, batch)
  assert params <= set(variables['params'])
  assert ('aux_stream' in variables['params']) == config.model.use_aux
  assert ('mia' in variables['params']) == config.model.use_mia
  outputs, _ = model.apply(
    variables, photos, sketches, train=True, mutable=['batch_stats'], **kwargs
  )
  got = get_method('dalnet').losses_for(outputs, None, config)
  assert set(got) == terms
  assert all(bool(jnp.isfinite(v)) for _, v in got.values())


def test_identity_only_rows_test_on_the_bnneck_output_and_circle_rows_on_pre_bn():
  # The rule in configs/dalnet.py: a row trained by the identity loss alone retrieves with the
  # feature that loss shapes (after the BNNeck); every row with a circle term with the pre-BN
  # feature the circle terms train. Each term is clipped on its own whenever a clip is set.
  for preset in config_presets('dalnet'):
    config = _tiny(preset)
    circles = config.loss.circle_cross_weight or config.loss.circle_intra_weight
    assert config.eval.feature == ('feat' if circles else 'bn_feat'), preset
    assert config.optim.clip_per_term, preset


def _grads(config, term):
  """Gradient of one loss term w.r.t. every parameter, as {top-level module: max |g|}."""
  batch = _batch(config)
  model, variables, photos, sketches, kwargs = _init_and_apply(config, batch)

  def loss(params):
    outputs, _ = model.apply(
      {'params': params, 'batch_stats': variables['batch_stats']},
      photos,
      sketches,
      train=True,
      mutable=['batch_stats'],
      **kwargs,
    )
    return get_method('dalnet').losses_for(outputs, None, config)[term][1]

  g = jax.grad(loss)(variables['params'])
  return {k: float(max(jnp.max(jnp.abs(x)) for x in jax.tree.leaves(v))) for k, v in g.items()}


def test_style_loss_trains_only_the_dag_kernel_and_the_aux_stream():
  g = _grads(_tiny('dag_style'), 'style')
  assert g['dag'] > 0 and g['aux_stream'] > 0
  # Sketch and photo sides are stop-gradient; the shared stages and heads are not involved.
  for k in ('photo_stream', 'sketch_stream', 'layer3', 'layer4', 'bnneck', 'mia', 'gem'):
    assert g[k] == 0.0, k


def test_identity_losses_reach_the_shared_stages_and_every_stream():
  g = _grads(_tiny('dag_style'), 'id')
  for k in ('photo_stream', 'aux_stream', 'sketch_stream', 'layer3', 'layer4', 'bnneck', 'dag'):
    assert g[k] > 0, k
  g = _grads(_tiny('dag_style'), 'mia_id')
  assert g['mia'] > 0 and g['mia_bnneck'] > 0 and g['layer4'] > 0
  assert g['bnneck'] == 0.0  # the MIA outputs have their own BNNeck


def test_frozen_dag_kernel_gets_no_gradient():
  assert _grads(_tiny('dag_frozen'), 'id')['dag'] == 0.0
  assert _grads(_tiny('dag_trainable'), 'id')['dag'] > 0


def test_test_features_are_the_streams_shared_backbone_features():
  # In eval mode BatchNorm uses running statistics, so a modality's features do not depend on
  # what else is in the batch: extract() must equal the training forward's stream features.
  config = _tiny('dag_style')
  batch = _batch(config)
  model, variables, photos, sketches, kwargs = _init_and_apply(config, batch)
  outputs = model.apply(variables, photos, sketches, train=False, **kwargs)
  for modality, images, name in ((0, photos, 'photo'), (1, sketches, 'sketch')):
    got = model.apply(variables, images, modality=modality, method=model.extract)
    np.testing.assert_allclose(got['feat'], outputs['streams'][name]['feat'], rtol=2e-5, atol=1e-6)
    np.testing.assert_allclose(
      got['bn_feat'], outputs['streams'][name]['bn_feat'], rtol=2e-5, atol=1e-6
    )


def test_mask_reaches_the_aux_images():
  # The DAG sees the photo with its background set to black in pixel space: where the mask is 0
  # (the left strip) the aux image is the flat response to normalised black, 2.6 × its grey
  # value, except within one pixel of the strip's border.
  config = _tiny('dag_style')
  batch = _batch(config)
  model, variables, photos, sketches, kwargs = _init_and_apply(config, batch)
  outputs = model.apply(variables, photos, sketches, train=False, **kwargs)
  strip = config.data.image_size[1] // 4
  aux = np.asarray(outputs['aux_images'])
  mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
  black = 2.6 * float(((0.0 - mean) / std) @ np.array([0.299, 0.587, 0.114]))
  np.testing.assert_allclose(aux[:, :, : strip - 1], black, rtol=1e-5)
  assert np.abs(aux[:, :, strip + 1 :] - black).max() > 0.1


def test_style_features_are_pooled_by_the_learnable_gem():
  # The seed pools the early features with GeM (learnable p): the style anchor must equal
  # GeM_p(aux stream's map) computed by hand, and p must receive the style loss's gradient.
  config = _tiny('dag_style')
  batch = _batch(config)
  model, variables, photos, sketches, kwargs = _init_and_apply(config, batch)
  p = 2.5
  params = dict(variables['params'], style_gem={'p': jnp.full((1,), p)})
  v = {'params': params, 'batch_stats': variables['batch_stats']}
  outputs = model.apply(v, photos, sketches, train=False, **kwargs)
  aux_map = model.apply(
    v, outputs['aux_images'], train=False, method=lambda m, x, train: m.aux_stream(x, train=train)
  )
  want = np.mean(np.maximum(np.asarray(aux_map, np.float64), 1e-6) ** p, axis=(1, 2)) ** (1 / p)
  np.testing.assert_allclose(outputs['style']['anchor'], want, rtol=1e-4)
  assert _grads(config, 'style')['style_gem'] > 0


def test_intra_features_before_and_after_mia_are_of_one_kind():
  # Both sides are mean-pooled outputs of the same LayerNorm, so the "before" feature has zero
  # channel mean like the "after" one (LayerNorm's bias starts at 0): the bound that kept a
  # non-negative GeM anchor below the target, cos ≤ √(1 − cos²(v, 𝟙)), is 1 here, above
  # 1 − m = 0.75. At init the measured positive similarity reaches the target too.
  config = _tiny('dag_style', data__image_size=(64, 32))
  batch = _batch(config)
  model, variables, photos, sketches, kwargs = _init_and_apply(config, batch)
  outputs = model.apply(variables, photos, sketches, train=False, **kwargs)
  m = config.loss.circle_margin
  for k in ('photo', 'sketch'):
    pre = np.asarray(outputs['mia'][k]['pre'], np.float64)
    post = np.asarray(outputs['mia'][k]['feat'], np.float64)
    ones = np.ones(pre.shape[1]) / np.sqrt(pre.shape[1])
    cos_one = pre @ ones / np.linalg.norm(pre, axis=1)
    bound = np.sqrt(1 - cos_one**2)
    assert bound.min() > 1 - m, (k, bound.min())
    cos = np.sum(pre * post, axis=1) / np.linalg.norm(pre, axis=1) / np.linalg.norm(post, axis=1)
    assert cos.mean() > 1 - m, (k, cos.mean())
  # The stream's GeM feature, the old anchor, is bounded below the target at init.
  gem = np.asarray(outputs['streams']['photo']['feat'], np.float64)
  cos_one = gem.sum(1) / np.sqrt(gem.shape[1]) / np.linalg.norm(gem, axis=1)
  assert np.sqrt(1 - cos_one**2).max() < 1 - m


def test_intra_feature_without_mia_is_the_layernormed_shared_map():
  # Without MIA the intra-modal circle compares ln_feat: each position of the shared map
  # normalised over channels (zero mean, unit variance, no scale or bias), then averaged. Its
  # channel mean is 0, so the non-negative bound does not apply; the GeM features of one
  # modality, which the row used before, start nearly parallel.
  config = _tiny('ablation_intra', data__image_size=(64, 32))
  batch = _batch(config)
  model, variables, photos, sketches, kwargs = _init_and_apply(config, batch)
  outputs = model.apply(variables, photos, sketches, train=False, **kwargs)
  maps = model.apply(
    variables,
    photos,
    method=lambda m, x: m._shared(m.photo_stream(x, train=False), train=False),
  )
  x = np.asarray(maps, np.float64)
  mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
  want = ((x - mu) / np.sqrt(var + 1e-5)).mean((1, 2))
  got = np.asarray(outputs['streams']['photo']['ln_feat'], np.float64)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(got.sum(1), 0.0, atol=1e-4)
  full, full_vars, *_ = _init_and_apply(_tiny('dag_style', data__image_size=(64, 32)), batch)
  with_mia = full.apply(full_vars, photos, sketches, train=False, **kwargs)
  assert 'ln_feat' not in with_mia['streams']['photo']  # MIA's pre/post take its place
  gem = np.asarray(outputs['streams']['photo']['feat'], np.float64)
  gem /= np.linalg.norm(gem, axis=1, keepdims=True)
  assert (gem @ gem.T).min() > 0.5


def test_frozen_dag_kernel_is_bitwise_unchanged_by_training(tiny_pku, tfds_cache, tmp_path):
  # Weight decay and momentum move a parameter whose gradient is only stopped; the optimiser
  # mask must leave it exactly as initialised, while the trainable kernel does move.
  from sketchreid_jax import inference
  from sketchreid_jax.models.dag import edge_kernel_init

  init = np.asarray(edge_kernel_init(9.0, -0.8)).reshape(3, 3, 1, 1)
  moved = {}
  for preset in ('dag_frozen', 'dag_trainable'):
    config = _tiny(
      preset,
      train__epochs=1,
      eval__every_epochs=0,
      train__progress_bar=False,
      optim__weight_decay=0.05,
      data__root=tiny_pku,
      data__cache_dir=tfds_cache,
      data__mask_source='none',
    )
    workdir = str(tmp_path / preset)
    train.train_and_evaluate(config, workdir)
    kernel = np.asarray(
      inference.load_trained(workdir, which='latest').variables['params']['dag']['edge_kernel']
    )
    moved[preset] = np.abs(kernel - init).max()
    if preset == 'dag_frozen':
      assert kernel.dtype == init.dtype and kernel.tobytes() == init.tobytes()
  assert moved['dag_frozen'] == 0.0 and moved['dag_trainable'] > 1e-4


def test_frozen_params_are_named_only_when_frozen():
  method = get_method('dalnet')
  assert method.frozen_params(_tiny('dag_frozen')) == ('dag/edge_kernel',)
  assert method.frozen_params(_tiny('dag_trainable')) == ()
  assert method.frozen_params(_tiny('ablation_baseline', model__dag_trainable=False)) == ()


# ----------------------------------------------------------------------------- mask sources


@pytest.fixture(scope='module')
def u2netp_weights(tmp_path_factory):
  """A U²-NetP variables file with random weights (the official file cannot be downloaded)."""
  from sketchreid_jax.weights import io as weights_io

  variables = models.U2NetP().init(jax.random.key(3), jnp.zeros((1, 32, 32, 3)))
  path = tmp_path_factory.mktemp('weights') / 'u2netp.msgpack'
  weights_io.save_variables(path, variables)
  return str(path)


def test_missing_u2net_weights_name_the_file_and_the_command(tmp_path):
  config = _tiny('pku', data__mask_source='u2net', model__u2net_weights=str(tmp_path / 'x.msgpack'))
  with pytest.raises(FileNotFoundError) as e:
    get_method('dalnet').frozen_for(config)
  assert str(tmp_path / 'x.msgpack') in str(e.value)
  assert 'sketchreid_jax.tools.convert_weights --model=u2netp' in str(e.value)


def test_u2net_masks_in_the_step_reach_the_dag(u2netp_weights):
  config = _tiny(
    'pku',
    data__mask_source='u2net',
    model__u2net_weights=u2netp_weights,
    model__u2net_size=(32, 32),
  )
  method = get_method('dalnet')
  frozen = method.frozen_for(config)
  batch = {k: jnp.asarray(v) for k, v in _batch(config).items() if k != 'mask'}
  prepared = method.prepare(dict(batch), frozen, config)
  half = batch['image'].shape[0] // 2
  expected = models.predict_masks(models.U2NetP(), frozen, batch['image'][:half], size=(32, 32))
  np.testing.assert_allclose(prepared['mask'][:half], expected, atol=1e-6)
  np.testing.assert_array_equal(prepared['mask'][half:], 1.0)
  assert float(expected.min()) == 0.0 and float(expected.max()) == pytest.approx(1.0)
  # Without frozen variables (any other mask source) the batch passes through untouched.
  assert method.prepare(dict(batch), None, config) == batch


def test_precompute_masks_then_train_with_them(tiny_pku, tfds_cache, tmp_path, u2netp_weights):
  import shutil

  from sketchreid_jax.tools import precompute_masks

  root = tmp_path / 'pku'
  shutil.copytree(tiny_pku, root)
  argv = [f'--root={root}', f'--weights={u2netp_weights}', '--size', '32', '32', '--quiet']
  assert precompute_masks.main(argv) == 0
  photos = precompute_masks.list_photos(root)
  for path in photos:
    mask = root / 'masks' / 'u2netp' / (os.path.splitext(path)[0] + '.png')
    with Image.open(mask) as m, Image.open(root / path) as p:
      assert m.mode == 'L' and m.size == p.size
  first = (root / 'masks' / 'u2netp' / (os.path.splitext(photos[0])[0] + '.png')).stat().st_mtime
  assert precompute_masks.main(argv) == 0  # resumes: nothing left to compute
  assert (
    root / 'masks/u2netp' / (os.path.splitext(photos[0])[0] + '.png')
  ).stat().st_mtime == first

  config = _tiny('pku', train__epochs=1, eval__batch_size=32, train__progress_bar=False)
  config.data.root, config.data.cache_dir = str(root), tfds_cache
  assert config.data.mask_source == 'auto'  # the presets pick the masks up by themselves
  _, _, masks = train.load_data(config)
  assert masks is not None and sum(bool(m) for m in masks) > 0
  results = train.train_and_evaluate(config, str(tmp_path / 'run'))
  assert set(results) == {'single_query'} and 0 <= results['single_query'].mAP <= 1


def test_precompute_masks_without_weights_says_how_to_make_them(tiny_pku, tmp_path, capsys):
  from sketchreid_jax.tools import precompute_masks

  assert precompute_masks.main([f'--root={tiny_pku}', f'--weights={tmp_path / "no.msgpack"}']) == 1
  err = capsys.readouterr().err
  assert 'no.msgpack' in err and 'convert_weights --model=u2netp' in err


@pytest.mark.parametrize('preset', ['market_mq', 'ablation_baseline'])
def test_presets_train_without_any_weight_file(preset, tiny_market, tiny_pku, tfds_cache, tmp_path):
  config = _tiny(preset, train__epochs=1, eval__batch_size=32, train__progress_bar=False)
  config.data.root = tiny_market if config.data.dataset == 'market_sketch' else tiny_pku
  config.data.cache_dir = tfds_cache
  results = train.train_and_evaluate(config, str(tmp_path / preset))
  assert set(results) == set(config.eval.protocols)
  assert all(0 <= r.mAP <= 1 for r in results.values())


def test_cross_modal_circle_direction():
  # True: each pair is the mean of the term anchored in either modality; False: the first only.
  from sketchreid_jax.losses.circle import circle_pairwise

  config = _tiny('ablation_cross')
  batch = _batch(config)
  model, variables, photos, sketches, kwargs = _init_and_apply(config, batch)
  outputs, _ = model.apply(
    variables, photos, sketches, train=True, mutable=['batch_stats'], **kwargs
  )
  s = outputs['streams']

  def one(a, b):
    return float(circle_pairwise(s[a]['feat'], s[a]['label'], s[b]['feat'], s[b]['label']))

  pairs = (('photo', 'sketch'), ('photo', 'aux'), ('aux', 'sketch'))
  for symmetric in (False, True):
    config.loss.circle_cross_symmetric = symmetric
    want = sum(0.5 * (one(a, b) + one(b, a)) if symmetric else one(a, b) for a, b in pairs)
    weight, got = get_method('dalnet').losses_for(outputs, None, config)['circle_cross']
    assert weight == 1.0 and float(got) == pytest.approx(want, rel=1e-5)
  assert abs(one('photo', 'sketch') - one('sketch', 'photo')) > 1e-3  # the directions differ
  # circle_scale='gamma' divides the term by γ through its weight; the value is the same.
  config.loss.circle_scale = 'gamma'
  weight, again = get_method('dalnet').losses_for(outputs, None, config)['circle_cross']
  assert weight == pytest.approx(1 / config.loss.circle_gamma) and float(again) == float(got)
