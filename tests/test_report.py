"""Chance levels against exhaustive enumeration and Monte-Carlo; report files on disk."""

import csv
import itertools
import json
import math

import numpy as np
import pytest
from PIL import Image

from sketchreid_jax.evaluation import (
  chance_levels,
  evaluate_rank,
  format_table,
  plot_cmc,
  write_results,
)


def test_chance_levels_equal_average_over_all_permutations():
  # Gallery of 5: every ordering is enumerated, so the average is the exact expectation.
  g_pids = np.array([0, 0, 0, 1, 2])
  q_pids = np.array([0, 1, 2, 2, 0])  # m = 3, 1, 1, 1, 3 positives
  perms = np.array(list(itertools.permutations(range(5))), dtype=np.float64)  # 120 rankings
  num_q = len(q_pids)
  distmat = np.repeat(perms, num_q, axis=0)  # each row: distances = a permutation of ranks
  result = evaluate_rank(distmat, np.tile(q_pids, len(perms)), g_pids, max_rank=5)
  chance = chance_levels(q_pids, g_pids, ranks=(1, 2, 3), max_rank=5)
  assert chance['mAP'] == pytest.approx(result.mAP, abs=1e-12)
  assert chance['mINP'] == pytest.approx(result.mINP, abs=1e-12)
  np.testing.assert_allclose(chance['cmc'], result.cmc, atol=1e-12)
  assert chance['R-2'] == pytest.approx(result.cmc[1], abs=1e-12)
  assert chance['num_valid_queries'] == num_q


def test_chance_single_positive_closed_forms():
  # One positive among G: R-k = k/G, E[AP] = E[INP] = E[1/rank] = H_G / G.
  big_g = 40
  chance = chance_levels([0], np.arange(big_g), ranks=(1, 5))
  harmonic = sum(1 / r for r in range(1, big_g + 1))
  assert chance['R-1'] == pytest.approx(1 / big_g)
  assert chance['R-5'] == pytest.approx(5 / big_g)
  assert chance['mAP'] == pytest.approx(harmonic / big_g)
  assert chance['mINP'] == pytest.approx(harmonic / big_g)


def test_chance_levels_match_monte_carlo_with_camera_filtering():
  rng = np.random.default_rng(0)
  num_ids, num_g, num_q = 6, 60, 10
  g_pids, g_cams = rng.integers(0, num_ids, num_g), rng.integers(0, 2, num_g)
  q_pids, q_cams = rng.integers(0, num_ids, num_q), rng.integers(0, 2, num_q)
  reps = 4000
  # Each replicated query row gets its own random ranking: 40,000 independent random rankings.
  distmat = rng.random((num_q * reps, num_g))
  mc = evaluate_rank(
    distmat, np.tile(q_pids, reps), g_pids, np.tile(q_cams, reps), g_cams, max_rank=20
  )
  chance = chance_levels(
    q_pids, g_pids, ranks=(1, 5, 10, 20), q_camids=q_cams, g_camids=g_cams, max_rank=20
  )
  n = mc.num_valid_queries
  assert n == chance['num_valid_queries'] * reps
  for k in (1, 5, 10, 20):
    p = chance[f'R-{k}']
    # 5 binomial standard errors (+ a floor for p near 0 or 1): fails by chance ~1e-6.
    assert abs(mc.rank(k) - p) < 5 * math.sqrt(p * (1 - p) / n) + 1e-4, k
  # AP and INP lie in [0, 1], so their standard deviation is at most 0.5: 5·0.5/√n ≈ 0.0125.
  assert abs(mc.mAP - chance['mAP']) < 5 * 0.5 / math.sqrt(n)
  assert abs(mc.mINP - chance['mINP']) < 5 * 0.5 / math.sqrt(n)
  np.testing.assert_allclose(mc.cmc, chance['cmc'], atol=0.02)


def test_format_table_percentages_and_chance_row():
  table = format_table(
    {'single-query': {'mAP': 0.5, 'R-1': 0.123456}},
    columns=('mAP', 'R-1'),
    chance={'mAP': 0.01, 'R-1': 0.002},
  )
  lines = table.strip().splitlines()
  assert lines[0] == '| protocol | mAP | R-1 |'
  assert lines[2] == '| single-query | 50.00 | 12.35 |'
  assert lines[3] == '| chance | 1.00 | 0.20 |'
  with pytest.raises(KeyError, match='R-5'):
    format_table({'x': {'mAP': 0.5}}, columns=('mAP', 'R-5'))


def _two_results():
  rng = np.random.default_rng(1)
  q_pids, g_pids = rng.integers(0, 5, 12), rng.integers(0, 5, 40)
  dist_a, dist_b = rng.random((12, 40)), rng.random((12, 40))
  # A better-than-chance protocol: positives pulled closer.
  dist_b = dist_b - 0.5 * (q_pids[:, None] == g_pids[None, :])
  return (
    q_pids,
    g_pids,
    {
      'random': evaluate_rank(dist_a, q_pids, g_pids),
      'better': evaluate_rank(dist_b, q_pids, g_pids),
    },
  )


def test_write_results_files_round_trip(tmp_path):
  q_pids, g_pids, results = _two_results()
  chance = chance_levels(q_pids, g_pids)
  paths = write_results(
    tmp_path / 'run', results, chance=chance, extra={'config': 'demo', 'step': np.int64(7)}
  )
  assert sorted(paths) == ['csv', 'json', 'md', 'png']

  loaded = json.loads(open(paths['json']).read())
  for name, res in results.items():
    assert loaded['results'][name]['mAP'] == res.mAP
    assert loaded['results'][name]['R-1'] == res.rank(1)
    np.testing.assert_array_equal(loaded['results'][name]['cmc'], res.cmc)
  assert loaded['chance']['R-1'] == chance['R-1']
  assert loaded['extra'] == {'config': 'demo', 'step': 7}

  with open(paths['csv'], newline='') as f:
    rows = list(csv.DictReader(f))
  assert [r['protocol'] for r in rows] == ['random', 'better']
  assert float(rows[1]['mAP']) == pytest.approx(results['better'].mAP)
  assert int(rows[0]['num_valid_queries']) == results['random'].num_valid_queries

  md = open(paths['md']).read()
  assert f'{100 * results["better"].mAP:.2f}' in md and '| chance |' in md

  with Image.open(paths['png']) as img:
    pixels = np.asarray(img.convert('L'), dtype=np.float64)
  assert pixels.shape[0] > 100 and pixels.shape[1] > 100
  assert pixels.std() > 5.0  # not a blank canvas
  assert (pixels < 128).mean() > 0.005  # lines and text were drawn


def test_write_results_accepts_metric_dicts_and_rejects_missing_cmc(tmp_path):
  _, _, results = _two_results()
  as_dict = {**results['better'].to_dict(), 'cmc': results['better'].cmc}
  paths = write_results(tmp_path, {'dict': as_dict})
  assert json.loads(open(paths['json']).read())['results']['dict']['mAP'] == results['better'].mAP
  with pytest.raises(ValueError, match='no CMC curve'):
    write_results(tmp_path / 'bad', {'no-curve': results['better'].to_dict()})
  assert not (tmp_path / 'bad').exists()  # nothing half-written
  with pytest.raises(TypeError, match='not JSON-serialisable'):
    write_results(tmp_path / 'bad2', results, extra={'obj': object()})
  assert not (tmp_path / 'bad2').exists()


def test_plot_cmc_writes_png(tmp_path):
  path = plot_cmc(
    {'a': np.linspace(0.2, 1.0, 10)},
    tmp_path / 'c.png',
    chance=np.linspace(0.01, 0.1, 10),
    title='t',
  )
  with Image.open(path) as img:
    assert img.format == 'PNG'
  with pytest.raises(ValueError, match='empty'):
    plot_cmc({}, tmp_path / 'd.png')


def test_selection_keeps_the_first_strict_best_and_the_reports_show_it_beside_the_last(tmp_path):
  from sketchreid_jax.evaluation.selection import SELECTED_LABEL, Selection

  _, _, results = _two_results()
  worse = {'p': results['random']}
  better = {'p': results['better']}
  assert results['better'].rank(1) > results['random'].rank(1)
  path = str(tmp_path / 'selection.json')
  selection = Selection(path, protocol='p', metric='R-1')
  assert selection.update(worse, epoch=3, step=30)
  assert selection.update(better, epoch=5, step=50)
  assert not selection.update(better, epoch=7, step=70)  # a tie keeps the earlier epoch
  assert not selection.update(worse, epoch=9, step=90)
  assert (selection.best['epoch'], selection.best['value']) == (5, results['better'].rank(1))
  # A resumed run continues the same selection; another rule starts afresh.
  assert Selection(path, protocol='p', metric='R-1').best['epoch'] == 5
  assert Selection(path, protocol='p', metric='mAP').best is None

  paths = write_results(tmp_path / 'run', worse, selected=selection.best)
  loaded = json.loads(open(paths['json']).read())
  assert loaded['results']['p']['mAP'] == results['random'].mAP  # the last evaluation
  assert loaded['selected']['epoch'] == 5 and loaded['selected']['label'] == SELECTED_LABEL
  assert loaded['selected']['results']['p']['mAP'] == results['better'].mAP
  md = open(paths['md']).read()
  assert md.index(f'{100 * results["random"].mAP:.2f}') < md.index('Selected epoch 5')
  assert SELECTED_LABEL in md and f'{100 * results["better"].mAP:.2f}' in md
  with open(paths['csv'], newline='') as f:
    rows = list(csv.DictReader(f))
  assert [r['protocol'] for r in rows] == ['p', 'p [selected epoch 5]']
  assert float(rows[1]['mAP']) == pytest.approx(results['better'].mAP)
  # When the selection is this very evaluation, one line says so instead of a second table.
  paths = write_results(tmp_path / 'same', better, selected=selection.best, extra={'step': 50})
  md = open(paths['md']).read()
  assert 'Selected epoch 5 (step 50)' in md and 'the evaluation above' in md
  assert md.count('| protocol |') == 1
