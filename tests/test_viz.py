"""viz: Grad-CAM against closed-form gradients of a model linear in its map, stage splits that
reproduce the models' own eval features, t-SNE determinism and cluster separation, CMC curves read
from results.json files, DAG previews against the DAG itself."""

import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import threadpoolctl

from sketchreid_jax import methods, viz
from sketchreid_jax.config_base import load_config
from sketchreid_jax.evaluation import report
from sketchreid_jax.methods import get_method
from sketchreid_jax.modality import PHOTO, SKETCH
from sketchreid_jax.models import DAG
from tests.conftest import REPO
from tests.variables import numpy_variables

SIZE = (64, 32)


def randn(shape, seed=0):
  return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


# --- Grad-CAM on a model whose embedding is linear in the stage map. ---


class LinearToy(nn.Module):
  """map A = 1×1 conv of the image (C channels); embedding = mean_hw(A) @ W."""

  channels: int = 4
  dim: int = 5

  def setup(self):
    self.conv = nn.Conv(self.channels, (1, 1), use_bias=False)
    self.proj = nn.Dense(self.dim, use_bias=False)

  def stem(self, x):
    return self.conv(x)

  def head(self, a):
    feat = self.proj(jnp.mean(a, axis=(1, 2)))
    return {'feat': feat, 'bn_feat': feat}


@pytest.fixture
def toy(monkeypatch):
  split = viz.StageSplit(
    stages=lambda model: ('stem',),
    default=lambda model: 'stem',
    front=lambda model, v, x, modality, stage: model.apply(v, x, method=LinearToy.stem),
    back=lambda model, v, f, stage, modality: model.apply(v, f, method=LinearToy.head),
  )
  # A method whose model is the toy: Grad-CAM finds the split through it.
  method = methods.Method(
    name='linear_toy',
    model_for=lambda config, n, axis: LinearToy(),
    losses_for=lambda outputs, batch, config: {},
    model_types=(LinearToy,),
    stage_split=split,
  )
  monkeypatch.setitem(methods.METHODS, 'linear_toy', method)
  kernel, proj = randn((1, 1, 3, 4), 1), randn((4, 5), 2)
  yield LinearToy(), {'params': {'conv': {'kernel': kernel}, 'proj': {'kernel': proj}}}


def _hand_cam(images, kernel, proj, grad_feat):
  """ReLU(Σ_c α_c A_c) / max with α_c = mean_hw ∂y/∂A = (∂y/∂feat · Wᵀ)_c / (h·w), in float64."""
  a = np.asarray(images, np.float64) @ np.asarray(kernel, np.float64)[0, 0]
  h, w = a.shape[1:3]
  alpha = grad_feat @ np.asarray(proj, np.float64).T / (h * w)
  cam = np.maximum(np.einsum('nhwc,nc->nhw', a, alpha), 0.0)
  return cam / cam.max(axis=(1, 2), keepdims=True)


def test_gradcam_equals_hand_computed_map_for_each_target(toy):
  model, variables = toy
  kernel, proj = variables['params']['conv']['kernel'], variables['params']['proj']['kernel']
  images = randn((3, 6, 5, 3), 3)
  feat = np.mean(np.asarray(images, np.float64) @ kernel[0, 0], axis=(1, 2)) @ proj
  norm = np.linalg.norm(feat, axis=1, keepdims=True)
  f_hat = feat / norm
  reference = randn((3, 5), 4)
  r_hat = reference / np.linalg.norm(reference, axis=1, keepdims=True)
  u = randn((5,), 5)
  cases = {
    # y = ‖f‖: ∂y/∂f = f/‖f‖
    'norm': (None, f_hat),
    # y = cos(f, r): ∂y/∂f = (r̂ − cos·f̂)/‖f‖
    'cosine': (reference, (r_hat - np.sum(f_hat * r_hat, 1, keepdims=True) * f_hat) / norm),
    # y = f·u: ∂y/∂f = u
    'callable': (lambda f: f @ jnp.asarray(u), np.broadcast_to(u, feat.shape)),
  }
  for name, (target, grad_feat) in cases.items():
    heat = viz.gradcam(model, variables, images, modality=PHOTO, target=target)
    expected = _hand_cam(images, kernel, proj, grad_feat)
    assert heat.shape == (3, 6, 5), name
    np.testing.assert_allclose(heat, expected, atol=1e-5, err_msg=name)
    # ReLU really clips here (a map that is all positive would not test it).
    assert (expected == 0).any(), name


def test_cam_from_gradients_is_relu_of_mean_gradient_weighted_channels():
  fmap, grads = randn((2, 3, 4, 5), 6), randn((2, 3, 4, 5), 7)
  expected = np.zeros((2, 3, 4))
  for n in range(2):
    for c in range(5):
      expected[n] += grads[n, :, :, c].mean() * fmap[n, :, :, c]
  np.testing.assert_allclose(viz.cam_from_gradients(fmap, grads), np.maximum(expected, 0), 1e-5)


def test_gradcam_rejects_bad_targets(toy):
  model, variables = toy
  images = randn((2, 6, 5, 3))
  with pytest.raises(ValueError, match=r'shape \(5,\) or \(2, 5\)'):
    viz.gradcam(model, variables, images, modality=PHOTO, target=np.ones((3, 5)))
  with pytest.raises(ValueError, match='one score per image'):
    viz.gradcam(model, variables, images, modality=PHOTO, target=lambda f: f)


# --- The real models: stage splits, defaults, heatmaps. ---


def _model(config_file, **overrides):
  config = load_config(
    os.path.join(REPO, 'configs', config_file),
    model__width=8,
    model__blocks=(1, 1, 1, 1),
    data__image_size=SIZE,
    **overrides,
  )
  return get_method(config.method).model_for(config, 5, None)


def _with_variables(model):
  x = jnp.zeros((1, *SIZE, 3))
  return model, numpy_variables(model, x, x, train=False)


@pytest.fixture(scope='module')
def dalnet():
  return _with_variables(_model('dalnet.py'))


@pytest.fixture(scope='module')
def cmdsl():
  return _with_variables(_model('cmdsl.py', model__ffam_stages=('layer2', 'layer3')))


def test_stage_names_defaults_and_unknown_stage_error():
  baseline = _model('baseline.py')
  cmdsl_default = _model('cmdsl.py')
  cmdsl_early = _model('cmdsl.py', model__ffam_stages=('layer2', 'layer1'))
  cmdsl_none = _model('cmdsl.py', model__ffam_stages=())
  stages = ('stem', 'layer1', 'layer2', 'layer3', 'layer4')
  assert viz.valid_stages(baseline) == stages
  assert viz.default_stage(baseline) == 'layer4'
  assert viz.default_stage(cmdsl_default) == 'layer4'  # FFAM after every stage by default
  assert viz.default_stage(cmdsl_early) == 'layer2'  # the last stage that has an FFAM
  assert viz.default_stage(cmdsl_none) == 'layer4'
  with pytest.raises(ValueError, match=r"'layer5' is not a stage of Baseline; valid stages: "):
    viz.gradcam(baseline, None, np.zeros((1, *SIZE, 3)), modality=SKETCH, stage='layer5')
  with pytest.raises(TypeError, match='Method.model_types'):
    viz.gradcam(DAG(), None, np.zeros((1, *SIZE, 3)), modality=SKETCH)


@pytest.mark.parametrize(
  'name,modality,stages',
  [
    # Baseline's split (which CMDSL shares): from the stem on, and between two FFAM stages.
    ('cmdsl', SKETCH, ('stem', 'layer3')),
    # DALNet cut inside the private stream and inside the shared stages.
    ('dalnet', PHOTO, ('layer1', 'layer3')),
  ],
)
def test_stage_splits_reproduce_the_models_own_embedding(name, modality, stages, request):
  model, variables = request.getfixturevalue(name)
  split = methods.method_of_model(model).stage_split
  images = jnp.asarray(randn((2, *SIZE, 3), 8))
  expected = viz.embed(model, variables, images, modality=modality)  # model.extract

  @jax.jit
  def cut_and_rejoin(v, x):
    return [
      split.back(model, v, split.front(model, v, x, modality, s), s, modality) for s in stages
    ]

  for stage, out in zip(stages, cut_and_rejoin(variables, images)):
    feat = np.asarray(out['feat'])
    feat = feat / np.linalg.norm(feat, axis=1, keepdims=True)
    np.testing.assert_allclose(feat, expected, rtol=1e-4, atol=1e-5, err_msg=stage)


def test_gradcam_heatmaps_of_cmdsl_against_a_reference_embedding(cmdsl):
  model, variables = cmdsl
  sketches = randn((2, *SIZE, 3), 9)
  reference = viz.embed(model, variables, sketches[::-1], modality=SKETCH)
  heat = viz.gradcam(model, variables, sketches, modality=SKETCH, target=reference)
  assert heat.shape == (2, *SIZE) and heat.dtype == np.float32
  assert heat.min() >= 0.0 and np.allclose(heat.max(axis=(1, 2)), 1.0)
  fig = viz.overlay_figure(sketches, heat, titles=['a', 'b'])
  assert len(fig.axes) == 2
  np.testing.assert_allclose(fig.axes[0].images[1].get_array(), heat[0])
  np.testing.assert_allclose(fig.axes[1].images[0].get_array(), viz.display_rgb(sketches)[1])


# --- t-SNE. ---


def _clusters(n_ids=3, per=5, dim=16, seed=0):
  rng = np.random.default_rng(seed)
  centres = rng.normal(size=(n_ids, dim))
  pids = np.repeat(np.arange(n_ids), per)
  feats = {m: centres[pids] + 0.05 * rng.normal(size=(len(pids), dim)) for m in ('photo', 'sketch')}
  return feats, {m: pids for m in feats}


def test_tsne_points_shapes_determinism_and_separation():
  feats, pids = _clusters()
  # One OpenMP thread: Barnes-Hut's threads spin-wait for each other on a busy 2-core machine
  # (seconds instead of 0.1 s for 30 points); the result does not depend on it. The limit only
  # reaches OpenMP runtimes already loaded, hence the import.
  import sklearn.manifold  # noqa: F401

  with threadpoolctl.threadpool_limits(1, user_api='openmp'):
    points = viz.tsne_points(feats, seed=3, perplexity=5.0)
    again = viz.tsne_points(feats, seed=3, perplexity=5.0)
    with pytest.warns(UserWarning, match='perplexity 30.0 lowered'):
      small = viz.tsne_points({'a': feats['photo'][:7]}, seed=0)
  assert {k: v.shape for k, v in points.items()} == {'photo': (15, 2), 'sketch': (15, 2)}
  for k in points:
    np.testing.assert_array_equal(points[k], again[k])
  xy = np.concatenate([points['photo'], points['sketch']])
  labels = np.concatenate([pids['photo'], pids['sketch']])
  d = np.linalg.norm(xy[:, None] - xy[None], axis=-1)
  np.fill_diagonal(d, np.inf)
  purity = np.mean(labels[d.argmin(axis=1)] == labels)
  assert purity == 1.0
  assert small['a'].shape == (7, 2)


def test_tsne_figure_colours_by_identity_and_marks_modality():
  feats, pids = _clusters(n_ids=3, per=2)
  points = {k: v[:, :2] for k, v in feats.items()}
  fig = viz.tsne_figure(points, pids)
  ax = fig.axes[0]
  photo, sketch = ax.collections
  np.testing.assert_allclose(photo.get_offsets(), points['photo'])
  # Same identity, same colour, in both modalities; different identities differ.
  np.testing.assert_allclose(photo.get_facecolors(), sketch.get_facecolors())
  colours = photo.get_facecolors()
  assert not np.allclose(colours[0], colours[2])
  assert [t.get_text() for t in ax.get_legend().get_texts()] == ['photo', 'sketch']
  with pytest.raises(ValueError, match='same modalities'):
    viz.tsne_figure(points, {'photo': pids['photo']})


def test_aux_embedding_is_the_dag_image_through_the_aux_stream(dalnet):
  model, variables = dalnet
  photos = randn((2, *SIZE, 3), 11)
  masks = np.ones((2, *SIZE, 1), np.float32)
  masks[:, :, :8] = 0.0
  emb = viz.modality_embeddings(model, variables, photos=photos, masks=masks)
  assert sorted(emb) == ['aux', 'photo']
  np.testing.assert_allclose(emb['photo'], viz.embed(model, variables, photos, modality=PHOTO))
  # With the photo stream's weights in the aux stream, the aux embedding of a photo is the photo
  # embedding of its DAG image.
  same = jax.tree_util.tree_map(lambda x: x, variables)
  for col in same:
    same[col]['aux_stream'] = same[col]['photo_stream']
  aux_images = viz.auxiliary_images(photos, masks, model=model, variables=variables)
  emb = viz.modality_embeddings(model, same, photos=photos, masks=masks)
  expected = viz.embed(model, variables, aux_images, modality=PHOTO)
  np.testing.assert_allclose(emb['aux'], expected, rtol=1e-4, atol=1e-5)


# --- CMC curves of several runs. ---


def _write_results(path, curves, chances):
  payload = {
    'results': {p: {'mAP': 0.5, 'R-1': float(c[0]), 'cmc': list(c)} for p, c in curves.items()},
    'chance': {'mAP': 0.1, 'cmc': list(chances[next(iter(curves))])},
    'extra': {'step': 3, 'chance': {p: {'cmc': list(c)} for p, c in chances.items()}},
  }
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps(payload))


def _lines(fig):
  return {line.get_label(): line.get_ydata() for line in fig.axes[0].get_lines()}


def test_plot_cmc_runs_reads_workdirs_files_and_arrays(tmp_path):
  sq, mq = np.array([0.2, 0.5, 0.9]), np.array([0.3, 0.6, 1.0])
  chance_sq, chance_mq = np.array([0.01, 0.02, 0.03]), np.array([0.05, 0.1, 0.15])
  _write_results(
    tmp_path / 'a' / 'results.json', {'sq': sq, 'mq': mq}, {'sq': chance_sq, 'mq': chance_mq}
  )
  _write_results(tmp_path / 'b.json', {'sq': sq[::-1]}, {'sq': chance_sq})
  array = np.array([0.4, 0.4, 0.8])
  runs = {'a': tmp_path / 'a', 'b': str(tmp_path / 'b.json'), 'c': array}

  lines = _lines(viz.plot_cmc_runs(runs))
  assert set(lines) == {'a: sq', 'a: mq', 'b', 'c', 'chance (a: sq)', 'chance (a: mq)'}
  np.testing.assert_allclose(lines['a: mq'], 100 * mq)
  np.testing.assert_allclose(lines['b'], 100 * sq[::-1])
  np.testing.assert_allclose(lines['c'], 100 * array)
  np.testing.assert_allclose(lines['chance (a: mq)'], 100 * chance_mq)

  lines = _lines(viz.plot_cmc_runs(runs, protocol='sq', max_rank=2))
  assert set(lines) == {'a', 'b', 'c', 'chance'}  # b's chance curve is a's: drawn once
  np.testing.assert_allclose(lines['a'], 100 * sq[:2])
  np.testing.assert_allclose(lines['chance'], 100 * chance_sq[:2])
  assert set(_lines(viz.plot_cmc_runs(runs, protocol='sq', chance=False))) == {'a', 'b', 'c'}

  with pytest.raises(KeyError, match=r"no protocol 'mq'; it has \['sq'\]"):
    viz.plot_cmc_runs({'b': tmp_path / 'b.json'}, protocol='mq')
  with pytest.raises(FileNotFoundError, match='missing.*results.json'):
    viz.plot_cmc_runs({'x': tmp_path / 'missing'})


def test_plot_cmc_runs_reads_what_write_results_writes(tmp_path):
  metrics = dict.fromkeys(report.DEFAULT_COLUMNS, 0.5)
  results = {'single_query': {**metrics, 'cmc': np.array([0.25, 0.75])}}
  chance = {**metrics, 'cmc': np.array([0.1, 0.2])}
  report.write_results(tmp_path, results, chance=chance)
  curves, chances = viz.load_cmc(tmp_path)
  np.testing.assert_allclose(curves['single_query'], [0.25, 0.75])
  np.testing.assert_allclose(chances['single_query'], [0.1, 0.2])  # top-level = first protocol
  lines = _lines(viz.plot_cmc_runs({'run': tmp_path}))
  np.testing.assert_allclose(lines['run'], [25.0, 75.0])


# --- DAG previews. ---


def test_auxiliary_images_and_preview_match_the_dag(dalnet):
  photos = randn((3, 8, 6, 3), 13)
  masks = (randn((3, 8, 6, 1), 14) > 0).astype(np.float32)
  dag = DAG()
  direct = dag.apply(dag.init(jax.random.key(0), jnp.asarray(photos)), photos, masks)
  aux = viz.auxiliary_images(photos, masks)
  assert aux.shape == (3, 8, 6, 3)
  np.testing.assert_allclose(aux, direct, atol=1e-6)

  model, variables = dalnet
  kernel = randn((3, 3, 1, 1), 15)
  trained = jax.tree_util.tree_map(lambda x: x, variables)  # a copy whose DAG kernel was "trained"
  trained['params']['dag'] = {'edge_kernel': kernel}
  learnt = viz.auxiliary_images(photos, masks, model=model, variables=trained)
  np.testing.assert_allclose(
    learnt, dag.apply({'params': {'edge_kernel': kernel}}, photos, masks), atol=1e-5
  )

  fig = viz.dag_preview_figure(photos, masks=masks, model=model, variables=trained)
  assert len(fig.axes) == 9  # photo, mask and auxiliary rows of 3
  np.testing.assert_allclose(fig.axes[0].images[0].get_array(), viz.display_rgb(photos)[0])
  np.testing.assert_allclose(fig.axes[4].images[0].get_array(), masks[1, ..., 0])
  np.testing.assert_allclose(fig.axes[8].images[0].get_array(), learnt[2, ..., 0])
  assert [fig.axes[i].get_ylabel() for i in (0, 3, 6)] == ['photo', 'mask', 'auxiliary']
  with pytest.raises(ValueError, match='Baseline has no DAG'):
    viz.auxiliary_images(photos, model=_model('baseline.py'), variables={'params': {}})
