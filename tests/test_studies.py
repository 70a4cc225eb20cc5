"""The papers' multi-run protocols: Table 5's cell layout by hand, and each study end to end on the
tiny synthetic sets, its summary checked against the runs' own results files."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from sketchreid_jax import studies, train
from sketchreid_jax.config_base import load_config
from tests import steps
from tests.conftest import REPO

TINY = dict(
  steps.TINY_MODEL,
  train__epochs=1,
  train__progress_bar=False,
  eval__batch_size=32,
  schedule__warmup_epochs=1,
  schedule__milestones=(1,),
)

# CMDSL Table 5 as printed: rows S1, S1,2, S1..3, S1..4, S1..5; columns S6, S5,6, S4..6, S3..6,
# S2..6; 1 = a number, 0 = '-'. Rows the paper omits are all zero.
PAPER_TABLE5 = {
  'a': [[1, 1, 1, 1, 1], [1, 1, 1, 1, 0], [1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 0, 0, 0, 0]],
  'b': [[0, 0, 0, 0, 0], [0, 1, 1, 1, 0], [0, 1, 1, 0, 0], [0, 1, 0, 0, 0], [0, 0, 0, 0, 0]],
  'c': [[0, 1, 1, 1, 1], [0, 1, 1, 1, 0], [0, 1, 1, 0, 0], [0, 1, 0, 0, 0], [0, 0, 0, 0, 0]],
  'd': [[0, 0, 0, 0, 0], [1, 1, 1, 1, 0], [1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 0, 0, 0, 0]],
}


@pytest.mark.parametrize('sub', 'abcd')
def test_grid_cells_are_the_papers_filled_cells(sub):
  rows, cols = studies.grid_axes('ABCDEF')
  assert [studies.style_label(r) for r in rows] == ['S1', 'S1,2', 'S1–3', 'S1–4', 'S1–5']
  assert [studies.style_label(c) for c in cols] == ['S6', 'S5,6', 'S4–6', 'S3–6', 'S2–6']
  cells = set(studies.grid_cells('ABCDEF', sub))
  got = [[int((r, c) in cells) for c in cols] for r in rows]
  assert got == PAPER_TABLE5[sub]


def test_mean_std_is_numpys_population_statistics():
  rows = [{'mAP': 0.5, 'R-1': 0.25}, {'mAP': 0.7, 'R-1': 0.75}, {'mAP': 0.6, 'R-1': 0.5}]
  mean, std = studies.mean_std(rows)
  assert mean['mAP'] == pytest.approx(0.6) and mean['R-1'] == pytest.approx(0.5)
  assert std['mAP'] == pytest.approx(np.sqrt(((0.1**2) + 0 + (0.1**2)) / 3))


def _config(spec, root, cache, **extra):
  config = load_config(os.path.join(REPO, spec), **{**TINY, **extra})
  config.data.root = root
  config.data.cache_dir = cache
  return config


def _results_json(workdir):
  return json.load(open(os.path.join(workdir, 'results.json')))['results']


def test_style_grid_trains_one_model_per_row_and_fills_its_cells(tiny_market, tfds_cache, tmp_path):
  config = _config('configs/baseline.py', tiny_market, tfds_cache)
  out = studies.style_grid(config, str(tmp_path), {'grid_styles': 'ABC', 'subtables': 'ac'})
  # Rows A, AB; columns C, BC. (a): A×C, A×BC, AB×C; (c) multi-query test: A×BC only.
  got = {(r['subtable'], r['train'], r['test']): r['mAP'] for r in out['records']}
  assert set(got) == {('a', 'A', 'C'), ('a', 'A', 'BC'), ('a', 'AB', 'C'), ('c', 'A', 'BC')}
  assert sorted(os.listdir(tmp_path)) == sorted(
    ['train_A_sq', 'train_AB_sq', 'style_grid.md', 'style_grid.csv', 'style_grid.json']
  )
  for (sub, r, c), value in got.items():
    spec = f'{"multi_query" if sub == "c" else "single_query"}:{c}'
    assert _results_json(tmp_path / f'train_{r}_sq')[spec]['mAP'] == pytest.approx(value)
  md = (tmp_path / 'style_grid.md').read_text()
  assert (
    '(a) mAP with single-query training and testing' in md
    and f'{100 * got["a", "A", "C"]:.2f}' in md
  )


def test_multi_query_training_row_uses_sketch_fusion(tiny_market, tfds_cache, tmp_path):
  config = _config('configs/baseline.py', tiny_market, tfds_cache)
  out = studies.style_grid(config, str(tmp_path), {'grid_styles': 'ABCD', 'subtables': 'b'})
  assert [(r['train'], r['test']) for r in out['records']] == [('AB', 'CD')]
  saved = json.load(open(tmp_path / 'train_AB_mq' / 'config.json'))
  assert saved['model']['sketch_fusion'] is True and saved['data']['train_styles'] == 'AB'


def test_pku_trials_report_is_the_mean_and_std_of_the_trials(tiny_pku, tfds_cache, tmp_path):
  # train.epochs=0: each trial evaluates its initial model, which is all the summary needs.
  config = _config(
    'configs/baseline.py:pku_sketch', tiny_pku, tfds_cache, data__pku_trials=2, train__epochs=0
  )
  out = studies.pku_trials(config, str(tmp_path), {})
  per_trial = [_results_json(tmp_path / f'trial_{t}')['single_query'] for t in range(2)]
  for key in ('mAP', 'R-1', 'R-5', 'R-10', 'R-20'):
    values = np.array([t[key] for t in per_trial])
    summary = json.load(open(tmp_path / 'pku_trials.json'))
    assert summary['mean'][key] == pytest.approx(values.mean())
    assert summary['std'][key] == pytest.approx(values.std())
  # Different trials test different identities.
  tables = [train.load_data(studies.with_values(config, {'data.pku_trial': t}))[0] for t in (0, 1)]
  test_ids = [set(t.pid[t.split == 'query'].tolist()) for t in tables]
  assert test_ids[0] != test_ids[1]
  assert 'mean ± std' in out['markdown']


def test_market_styles_per_artist_row_equals_evaluating_that_artist_alone(
  tiny_market, tfds_cache, tmp_path
):
  config = _config('configs/baseline.py', tiny_market, tfds_cache, data__test_styles='AB')
  out = studies.market_styles(config, str(tmp_path), {})
  assert [(r['test'], r['query']) for r in out['records']] == [
    ('S1', 'single-query'),
    ('S2', 'single-query'),
    ('S1,2', 'single-query'),
    ('S1,2', 'multi-query'),
  ]
  # The same checkpoint evaluated with data.test_styles='A' (no ':A' suffix) gives row S1.
  alone = _config('configs/baseline.py', tiny_market, tfds_cache, data__test_styles='A')
  alone.eval.protocols = ('single_query',)
  before = (tmp_path / 'run' / 'results.json').read_text()
  results = train.evaluate_workdir(alone, str(tmp_path / 'run'))
  # --mode=evaluate reports go to <workdir>/evaluate; the training's reports are kept.
  assert (tmp_path / 'run' / 'results.json').read_text() == before
  assert _results_json(tmp_path / 'run' / 'evaluate')['single_query']['mAP'] == pytest.approx(
    results['single_query'].mAP
  )
  assert results['single_query'].mAP == pytest.approx(out['records'][0]['mAP'], abs=1e-6)
  # Re-ranking and the MM'23 stem aggregate run on the same checkpoint through `evaluate`.
  alone.eval.protocols = ('multi_query:AB', 'single_query:A')
  alone.eval.rerank = True
  alone.eval.rerank_k1 = 4
  alone.eval.multi_query_aggregate = 'stem'
  reranked = train.evaluate_workdir(alone, str(tmp_path / 'run'))
  assert set(reranked) == {'multi_query:AB', 'single_query:A'}
  assert all(0 <= r.mAP <= 1 for r in reranked.values())


def test_reproduce_help_lists_every_protocol():
  out = subprocess.run(
    [sys.executable, '-m', 'sketchreid_jax.tools.reproduce', '--help'],
    capture_output=True,
    text=True,
    cwd=REPO,
    timeout=120,
  )
  assert out.returncode in (0, 1), out.stderr  # absl's --help exits with 1 after printing
  for name in studies.STUDIES:
    assert name in out.stdout
  for table in ('Table 4', 'Table 5', 'Table 7', 'Tables 2–3'):
    assert table in out.stdout


def test_pku_test_counts_come_from_the_config(tiny_pku, tfds_cache):
  from sketchreid_jax import datasets
  from sketchreid_jax.datasets import pku_sketch

  config = _config('configs/baseline.py:pku_sketch', tiny_pku, tfds_cache)
  by_style = pku_sketch.scan_layout(tiny_pku).ids_by_style
  counts = {s: 1 + (len(ids) > 3) for s, ids in by_style.items()}  # each below its style's size
  for style, n in counts.items():
    config.data.pku_test_counts[style] = n
  table = datasets.load(config.data)
  test_ids = set(table.pid[table.split == 'query'].tolist())
  for style, ids in by_style.items():
    assert len(test_ids & set(int(i) for i in ids)) == counts[style], style
