"""The papers' multi-run protocols: Table 5's cell layout by hand, and each study end to end on the
tiny synthetic sets, its summary checked against the runs' own results files. ``--seeds``
(``studies.run_seeds``) runs on a fake, instant training whose numbers depend on the seed and the
run, its summary checked against numpy over each seed's own study tables."""

import csv
import json
import os
import subprocess
import sys
import zlib

import numpy as np
import pytest

from sketchreid_jax import studies, train
from sketchreid_jax.config_base import base_config, load_config
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
  # The release's --train_mq --test_mq: its Non-local block, and the fused path at test.
  assert saved['model']['fusion_nonlocal'] is True
  assert saved['eval']['multi_query_aggregate'] == 'stem'


def test_pku_trials_report_is_the_mean_and_std_of_the_trials(tiny_pku, tfds_cache, tmp_path):
  # train.epochs=0: each trial evaluates its initial model, which is all the summary needs.
  config = _config(
    'configs/baseline.py:pku', tiny_pku, tfds_cache, data__pku_trials=2, train__epochs=0
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
  assert '--seeds' in out.stdout and 'seeds.md' in out.stdout
  for table in ('Table 4', 'Table 5', 'Table 7', 'Tables 2–3'):
    assert table in out.stdout


def test_pku_test_counts_come_from_the_config(tiny_pku, tfds_cache):
  from sketchreid_jax import datasets
  from sketchreid_jax.datasets import pku_sketch

  config = _config('configs/baseline.py:pku', tiny_pku, tfds_cache)
  by_style = pku_sketch.scan_layout(tiny_pku).ids_by_style
  counts = {s: 1 + (len(ids) > 3) for s, ids in by_style.items()}  # each below its style's size
  for style, n in counts.items():
    config.data.pku_test_counts[style] = n
  table = datasets.load(config.data)
  test_ids = set(table.pid[table.split == 'query'].tolist())
  for style, ids in by_style.items():
    assert len(test_ids & set(int(i) for i in ids)) == counts[style], style


# ------------------------------------------------------------------------------ --seeds


def test_parse_seeds():
  assert studies.parse_seeds('0,1,2') == (0, 1, 2)
  assert studies.parse_seeds(' 7, 3 ,') == (7, 3)
  for bad in ('', '1,1', '-1,2', '0,x', '1.5'):
    with pytest.raises(ValueError, match='--seeds'):
      studies.parse_seeds(bad)


class FakeTraining:
  """Stands in for train_and_evaluate / evaluate_workdir: no data, no compilation. Each metric is
  a fixed pseudo-random number of (seed, run folder below the seed's, protocol), so seeds differ
  and every row of a study gets its own numbers; ``calls`` records what each run received."""

  def __init__(self, root):
    self.root = str(root)
    self.calls = []

  def results(self, config, workdir):
    rel = os.path.relpath(workdir, self.root)
    seed_dir, _, run = rel.partition(os.sep)
    out = {}
    for spec in config.eval.protocols:
      rng = np.random.default_rng([config.seed, zlib.crc32(f'{run}|{spec}'.encode())])
      out[spec] = dict(zip(studies.METRICS, np.sort(rng.uniform(0.05, 0.95, 5))))
    return seed_dir, out

  def train_run(self, config, workdir):
    seed_dir, out = self.results(config, workdir)
    self.calls.append({'seed': config.seed, 'seed_dir': seed_dir, 'workdir': workdir})
    return out


SEEDS = (0, 3, 7)
PROTOCOL_OPTIONS = {
  'pku_trials': {},
  'market_styles': {},
  'style_grid': {'grid_styles': 'ABC', 'subtables': 'ac'},
  'attribute_noise': {'noise_levels': '0,3'},
}


@pytest.fixture
def fake(tmp_path, monkeypatch):
  fake = FakeTraining(tmp_path)
  monkeypatch.setattr(studies, 'train_run', fake.train_run)
  monkeypatch.setattr(train, 'evaluate_workdir', fake.train_run)  # metrics_row reads dicts too
  return fake


def _seed_config():
  config = base_config('cmdsl')  # the attribute_noise study needs CMDSL's keys
  config.seed = 123  # the base seed: every run must get its own instead
  config.data.pku_trials = 2
  config.data.test_styles = 'AB'
  return config


@pytest.mark.parametrize('protocol', sorted(PROTOCOL_OPTIONS))
def test_seed_summary_is_numpys_mean_and_std_of_each_seeds_table(protocol, fake, tmp_path):
  config = _seed_config()
  out = studies.run_seeds(protocol, config, str(tmp_path), PROTOCOL_OPTIONS[protocol], SEEDS)
  assert config.seed == 123  # the caller's config is untouched
  assert sorted(os.listdir(tmp_path)) == sorted(
    [f'seed{s}' for s in SEEDS] + ['seeds.md', 'seeds.csv', 'seeds.json']
  )
  # Every run went to its seed's sub-folder and received that seed.
  assert fake.calls and {c['seed'] for c in fake.calls} == set(SEEDS)
  for call in fake.calls:
    assert call['seed_dir'] == f'seed{call["seed"]}'
  # Each seed is a complete study of its own (its tables written by the study, not by run_seeds).
  per_seed = {s: json.load(open(tmp_path / f'seed{s}' / f'{protocol}.json')) for s in SEEDS}
  summary = json.load(open(tmp_path / 'seeds.json'))
  assert summary['seeds'] == list(SEEDS) and summary['ddof'] == 0
  rows = summary['records']
  extra = 1 if protocol == 'pku_trials' else 0  # the mean-over-trials row
  assert len(rows) == len(per_seed[SEEDS[0]]['records']) + extra
  assert out['records'] == rows
  spread = []
  for i, row in enumerate(rows):
    for key in studies.REID_METRICS:  # these studies are re-id protocols
      if i < len(rows) - extra:
        values = np.array([per_seed[s]['records'][i][key] for s in SEEDS])
        for k, v in per_seed[SEEDS[0]]['records'][i].items():
          if k not in studies.METRICS:
            assert row[k] == v  # the row's own fields (trial, test, noise, ...)
      else:
        values = np.array([per_seed[s]['mean'][key] for s in SEEDS])
        assert row['trial'] == studies.TRIAL_MEAN_LABEL
      assert row[f'{key}_mean'] == pytest.approx(values.mean(), rel=1e-12)
      assert row[f'{key}_std'] == pytest.approx(values.std(ddof=0), rel=1e-12)
      spread.append(values.std())
    assert row['seeds'] == len(SEEDS)
  assert min(spread) > 1e-3  # the seeds really differ: the std is not trivially 0
  with open(tmp_path / 'seeds.csv', newline='') as f:
    csv_rows = list(csv.DictReader(f))
  assert [float(r['mAP_mean']) for r in csv_rows] == pytest.approx([r['mAP_mean'] for r in rows])
  md = (tmp_path / 'seeds.md').read_text()
  first = rows[0]
  assert f'{100 * first["mAP_mean"]:.2f} ± {100 * first["mAP_std"]:.2f}' in md
  assert 'ddof = 0' in md


def test_seeds_for_evaluate_read_each_seeds_workdir(fake, tmp_path):
  config = _seed_config()
  config.eval.protocols = ('single_query', 'multi_query:AB')
  out = studies.run_seeds('evaluate', config, str(tmp_path), {}, SEEDS)
  assert [c['workdir'] for c in fake.calls] == [str(tmp_path / f'seed{s}') for s in SEEDS]
  assert [r['protocol'] for r in out['records']] == ['single_query', 'multi_query:AB']
  for row in out['records']:
    for key in studies.REID_METRICS:
      values = []
      for s in SEEDS:
        seeded = studies.with_values(config, {'seed': s})
        values.append(fake.results(seeded, str(tmp_path / f'seed{s}'))[1][row['protocol']][key])
      assert row[f'{key}_mean'] == pytest.approx(np.mean(values), rel=1e-12)
      assert row[f'{key}_std'] == pytest.approx(np.std(values), rel=1e-12)


def test_killed_seed_run_resumes_and_then_summarises_all_seeds(fake, tmp_path, monkeypatch):
  config = _seed_config()
  real = fake.train_run

  def dies_on_seed_3(config, workdir):
    if config.seed == 3:
      raise KeyboardInterrupt  # as a killed run
    return real(config, workdir)

  monkeypatch.setattr(studies, 'train_run', dies_on_seed_3)
  with pytest.raises(KeyboardInterrupt):
    studies.run_seeds('market_styles', config, str(tmp_path), {}, SEEDS)
  assert (tmp_path / 'seed0' / 'market_styles.json').exists()
  assert not (tmp_path / 'seeds.json').exists()
  monkeypatch.setattr(studies, 'train_run', real)
  studies.run_seeds('market_styles', config, str(tmp_path), {}, SEEDS)
  # Same sub-folders again (train_and_evaluate resumes or only re-evaluates the finished ones).
  assert [c['seed_dir'] for c in fake.calls] == ['seed0', 'seed0', 'seed3', 'seed7']
  assert json.load(open(tmp_path / 'seeds.json'))['seeds'] == list(SEEDS)


def test_seed_rows_must_match():
  row = {'trial': 0, 'mAP': 0.5}
  with pytest.raises(ValueError, match='seed 1 reported other rows'):
    studies.summarize_seeds({0: [row], 1: [{**row, 'trial': 1}]})
  with pytest.raises(ValueError, match='distinct seeds'):
    studies.run_seeds('pku_trials', _seed_config(), '/nonexistent', {}, [1, 1])
