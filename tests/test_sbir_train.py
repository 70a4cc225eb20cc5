"""The fine-grained SBIR presets end to end: a tiny synthetic QMUL-ShoeV2 layout passes
check_data, trains (each photo a class) and evaluates under the 'sbir' protocol, with acc@K in
results.json equal to sbir_accuracy on the same embeddings; tools.reproduce runs the protocol."""

import json
import os

import numpy as np
import pytest

from sketchreid_jax import datasets, input_pipeline, train
from sketchreid_jax.config_base import load_config
from sketchreid_jax.evaluation import sbir_accuracy
from tests import steps
from tests.conftest import REPO


def _config(spec, root, cache, **extra):
  overrides = {
    **steps.TINY_MODEL,
    'data__image_size': (32, 32),
    'train__epochs': 1,
    'eval__batch_size': 32,
    'train__progress_bar': False,
    'data__root': root,
    'data__cache_dir': cache,
    **extra,
  }
  return load_config(os.path.join(REPO, spec), **overrides)


def test_shoev2_layout_passes_check_data(tiny_shoev2, capsys):
  from sketchreid_jax.tools import check_data

  assert check_data.main([tiny_shoev2]) == 0
  assert 'qmul' in capsys.readouterr().out.lower()


def test_training_batches_hold_k_sketches_of_one_photo_and_that_photo_k_times(
  tiny_shoev2, tfds_cache
):
  config = _config('configs/dalnet.py:shoev2', tiny_shoev2, tfds_cache)
  table = datasets.load(config.data)
  train_set = input_pipeline.make_train_set(table, config.data.train_styles)
  photos = table.modality == 0
  assert train_set.num_classes == int(np.sum(photos & (table.split == 'train')))
  plan = input_pipeline.pk_plan(train_set, P=config.sampler.P, K=config.sampler.K, epoch=0, seed=0)
  rows = input_pipeline.batch_indices(plan[0])
  k, half = config.sampler.K, len(rows) // 2
  for i in range(config.sampler.P):
    photo_rows = rows[i * k : (i + 1) * k]
    sketch_rows = rows[half + i * k : half + (i + 1) * k]
    assert len(set(photo_rows.tolist())) == 1  # the class's one photo, augmented K times
    assert set(table.pid[sketch_rows].tolist()) == {table.pid[photo_rows[0]]}
    assert (table.modality[sketch_rows] == 1).all()


def test_dalnet_shoev2_trains_and_reports_acc_at_k(tiny_shoev2, tfds_cache, tmp_path):
  # (The baseline's SBIR preset trains in test_reproduce_runs_the_sbir_protocol.)
  config = _config('configs/dalnet.py:shoev2', tiny_shoev2, tfds_cache)
  workdir = str(tmp_path / 'run')
  results = train.train_and_evaluate(config, workdir)
  with open(os.path.join(workdir, 'results.json')) as f:
    saved = json.load(f)['results']['sbir']
  assert {'acc@1', 'acc@5', 'acc@10', 'mAP'} <= set(saved)
  # The same numbers from the saved checkpoint's embeddings, ranked independently.
  from sketchreid_jax import evaluation as evaluate
  from sketchreid_jax import inference

  trained = inference.load_trained(workdir, which='latest')
  table = datasets.load(trained.config.data)
  eval_set = input_pipeline.make_eval_set(table, 'A', multi_query=False)
  feats = {
    m: evaluate.extract_features(
      trained.model, trained.variables, table, idx, modality=m, config=trained.config
    )
    for m, idx in ((0, eval_set.gallery_index), (1, eval_set.query_index))
  }
  distmat = evaluate.euclidean(feats[1], feats[0])
  want = sbir_accuracy(distmat, eval_set.query_pids, eval_set.gallery_pids)
  for key, value in want.items():
    assert saved[key] == pytest.approx(value, abs=1e-9)
  assert results['sbir'].acc(1) == pytest.approx(want['acc@1'])


def test_reproduce_runs_the_sbir_protocol(tiny_shoev2, tfds_cache, tmp_path):
  from sketchreid_jax import studies

  config = _config('configs/baseline.py:shoev2', tiny_shoev2, tfds_cache)
  out = studies.STUDIES['sbir'].run(config, str(tmp_path), {})
  assert os.path.isfile(tmp_path / 'sbir.md')
  record = out['records'][0]
  assert record['dataset'] == 'qmul_shoev2' and 0 <= record['acc@1'] <= record['acc@10'] <= 1
  with pytest.raises(ValueError, match='QMUL dataset'):
    studies.STUDIES['sbir'].run(_config('configs/baseline.py', 'x', tfds_cache), str(tmp_path), {})
