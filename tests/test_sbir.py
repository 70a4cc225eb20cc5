"""The fine-grained SBIR protocol: acc@K and mAP against naive loops, chance levels against
enumeration, errors, the report and model selection, and ``evaluate()`` end to end."""

import io
import itertools
import json
import math
import re
import warnings

import flax.linen as nn
import numpy as np
import pytest
from PIL import Image

from sketchreid_jax import input_pipeline
from sketchreid_jax.config_base import base_config
from sketchreid_jax.datasets.table import make_table
from sketchreid_jax.evaluation import (
  SBIRResult,
  evaluate_rank,
  format_table,
  sbir,
  sbir_accuracy,
  sbir_chance_levels,
  sbir_map,
  write_results,
)
from sketchreid_jax.evaluation import protocols as evaluate
from sketchreid_jax.evaluation.selection import Selection, parse_best_metric


def naive(distmat, q_ids, g_ids, ks=(1, 5, 10)):
  """Per-query loop: (acc@K dict, mAP) with ties in the query's favour."""
  ranks, aps = [], []
  for row, qid in zip(np.asarray(distmat, np.float64), q_ids):
    same = np.asarray(g_ids) == qid
    pos, neg = np.sort(row[same]), row[~same]
    ranks.append(int(np.sum(neg < pos[0])))
    aps.append(np.mean([j / (np.sum(neg < p) + j) for j, p in enumerate(pos, start=1)]))
  ranks = np.asarray(ranks)
  return {f'acc@{k}': float(np.mean(ranks < k)) for k in ks}, float(np.mean(aps))


# --------------------------------------------------------------------------- metrics


@pytest.mark.parametrize('multi', [False, True])
def test_accuracy_and_map_match_a_naive_loop_with_ties(multi):
  rng = np.random.default_rng(3 + multi)
  num_g = 14
  # Photos are their own identities (QMUL), or some identities have up to three photos.
  g_ids = rng.integers(0, 6, num_g) if multi else rng.permutation(num_g) + 100
  q_ids = rng.choice(np.unique(g_ids), 40)
  distmat = rng.integers(0, 4, (40, num_g)).astype(np.float32)  # small integers: many ties
  acc, mean_ap = naive(distmat, q_ids, g_ids, ks=(1, 2, 5, 10, 30))
  assert sbir_accuracy(distmat, q_ids, g_ids, ks=(1, 2, 5, 10, 30)) == acc
  assert sbir_map(distmat, q_ids, g_ids) == pytest.approx(mean_ap, abs=1e-12)
  assert sbir_accuracy(distmat, q_ids, g_ids).keys() == {'acc@1', 'acc@5', 'acc@10'}
  assert all(type(v) is float for v in acc.values())
  assert 0 < acc['acc@1'] < acc['acc@5'] < 1  # the case is not degenerate


@pytest.mark.parametrize('multi', [False, True])
def test_without_ties_it_is_the_reid_cmc_and_map(multi):
  rng = np.random.default_rng(7)
  g_ids = rng.integers(0, 5, 20) if multi else np.arange(20)
  q_ids = rng.choice(np.unique(g_ids), 30)
  distmat = rng.random((30, 20))
  reid = evaluate_rank(distmat, q_ids, g_ids, max_rank=10)
  result = SBIRResult.compute(distmat, q_ids, g_ids, max_rank=10)
  np.testing.assert_allclose(result.cmc, reid.cmc, atol=1e-12)
  assert result.mAP == pytest.approx(reid.mAP, abs=1e-12)


def test_hand_derived_three_by_three():
  # Query 0: its photo is the closest (rank 0). Query 1: photo 2 ties with its photo 1 at
  # distance 1, and a tie does not push it down (rank 0). Query 2: photo 1 (0) is strictly closer
  # than its photo 2 (2), photo 0 (3) is not (rank 1).
  distmat = np.array([[1, 2, 3], [2, 1, 1], [3, 0, 2]], np.float64)
  ids = [0, 1, 2]
  assert sbir_accuracy(distmat, ids, ids, ks=(1, 2, 5)) == {
    'acc@1': 2 / 3,
    'acc@2': 1.0,
    'acc@5': 1.0,
  }
  assert sbir_map(distmat, ids, ids) == pytest.approx((1 + 1 + 1 / 2) / 3)
  np.testing.assert_array_equal(sbir.sbir_ranks(distmat, ids, ids), [0, 0, 1])
  # Every photo tied with the paired one: still acc@1 = 1.
  assert sbir_accuracy(np.ones((2, 3)), [5, 6], [5, 6, 7]) == {
    'acc@1': 1.0,
    'acc@5': 1.0,
    'acc@10': 1.0,
  }


def test_two_photos_of_one_identity_hand_derived():
  # Query id 0 has photos at distances 2 and 5; non-matches at 1, 2 (a tie) and 4.
  # Optimistic order: 1, [2 match], 2, 4, [5 match]: ranks 2 and 5 -> AP = (1/2 + 2/5) / 2.
  distmat = np.array([[1, 2, 2, 4, 5]], np.float64)
  g_ids = [9, 0, 8, 7, 0]
  assert sbir_accuracy(distmat, [0], g_ids, ks=(1, 2)) == {'acc@1': 0.0, 'acc@2': 1.0}
  assert sbir_map(distmat, [0], g_ids) == pytest.approx((1 / 2 + 2 / 5) / 2)


def test_blocks_give_the_same_answer(monkeypatch):
  rng = np.random.default_rng(5)
  for g_ids in (np.arange(9), rng.integers(0, 3, 9)):
    q_ids = rng.choice(np.unique(g_ids), 25)
    distmat = rng.integers(0, 3, (25, 9)).astype(np.float64)
    whole = SBIRResult.compute(distmat, q_ids, g_ids)
    monkeypatch.setattr(sbir, '_BLOCK_ELEMENTS', 20)  # blocks of 2 (or 1) queries
    blocked = SBIRResult.compute(distmat, q_ids, g_ids)
    monkeypatch.undo()
    np.testing.assert_array_equal(blocked.ranks, whole.ranks)
    assert blocked.mAP == whole.mAP


def test_result_to_dict_and_cmc():
  distmat = np.array([[1, 2, 3], [2, 1, 1], [3, 0, 2]], np.float64)
  result = SBIRResult.compute(distmat, [0, 1, 2], [0, 1, 2], max_rank=4)
  assert result.to_dict() == {
    'acc@1': 2 / 3,
    'acc@5': 1.0,
    'acc@10': 1.0,
    'mAP': pytest.approx(5 / 6),
    'num_valid_queries': 3,
  }
  np.testing.assert_allclose(result.cmc, [2 / 3, 1, 1, 1])
  assert tuple(result.to_dict()) == (*sbir.METRICS, 'num_valid_queries')


# --------------------------------------------------------------------------- chance


@pytest.mark.parametrize('g_ids', [[0, 1, 2, 3, 4], [0, 0, 1, 2, 2]])
def test_chance_levels_equal_the_average_over_all_rankings(g_ids):
  perms = np.array(list(itertools.permutations(range(5))), np.float64)  # all 120 rankings
  q_ids = np.array([0, 2, 1])
  rows = np.repeat(perms, len(q_ids), axis=0)
  result = SBIRResult.compute(rows, np.tile(q_ids, len(perms)), g_ids, max_rank=5)
  chance = sbir_chance_levels(q_ids, g_ids, ks=(1, 2, 3), max_rank=5)
  for k in (1, 2, 3):
    assert chance[f'acc@{k}'] == pytest.approx(result.acc(k), abs=1e-12)
  assert chance['mAP'] == pytest.approx(result.mAP, abs=1e-12)
  np.testing.assert_allclose(chance['cmc'], result.cmc, atol=1e-12)
  assert chance['num_valid_queries'] == 3


def test_chance_one_match_closed_forms():
  big_g = 200  # QMUL-ShoeV2's test photos
  chance = sbir_chance_levels(np.arange(big_g), np.arange(big_g))
  harmonic = math.fsum(1 / r for r in range(1, big_g + 1))
  assert chance['acc@1'] == pytest.approx(1 / big_g)
  assert chance['acc@10'] == pytest.approx(10 / big_g)
  assert chance['mAP'] == pytest.approx(harmonic / big_g)
  assert sbir_chance_levels([0], [0, 1, 2])['acc@5'] == 1.0  # K >= G


# --------------------------------------------------------------------------- errors


def test_errors():
  ok = np.zeros((2, 3))
  with pytest.raises(ValueError, match=r'^sbir_accuracy: distmat must be a non-empty 2-D'):
    sbir_accuracy(np.zeros(3), [0], [0, 1, 2])
  with pytest.raises(ValueError, match=r'query_ids must be 1-D, one id per distmat row \(2\)'):
    sbir_accuracy(ok, [0, 1, 2], [0, 1, 2])
  with pytest.raises(ValueError, match=r'gallery_ids must be 1-D, one id per distmat column'):
    sbir_accuracy(ok, [0, 1], [[0, 1, 2]])
  message = '4 of 5 queries (ids 7, 9) have no gallery item of their id'
  with pytest.raises(ValueError, match=re.escape(message)):
    sbir_accuracy(np.zeros((5, 3)), [7, 9, 0, 9, 7], [0, 1, 2])
  many = np.arange(10, 20)
  with pytest.raises(ValueError, match=re.escape('(ids 10, 11, 12, 13, 14, ...)')):
    sbir_map(np.zeros((10, 3)), many, [0, 1, 2])
  for bad in (np.nan, np.inf, -np.inf):
    distmat = ok.copy()
    distmat[1, 2] = bad
    with pytest.raises(ValueError, match=r'1 non-finite value\(s\) \(first at query 1, gallery 2'):
      sbir_accuracy(distmat, [0, 1], [0, 1, 2])
  for ks in ((0,), (1, -5), (), (1.5,), (True,)):
    with pytest.raises(ValueError, match=r'ks must be a non-empty sequence of positive ints'):
      sbir_accuracy(ok, [0, 1], [0, 1, 2], ks=ks)
  with pytest.raises(ValueError, match='max_rank must be a positive int'):
    SBIRResult.compute(ok, [0, 1], [0, 1, 2], max_rank=0)
  with pytest.raises(ValueError, match='have no gallery item'):
    sbir_chance_levels([3], [0, 1])


# --------------------------------------------------------------------------- report, selection


def test_report_files_keep_fractions_and_mixed_tables(tmp_path):
  rng = np.random.default_rng(0)
  distmat = rng.random((6, 4))
  q_ids, g_ids = np.array([0, 1, 2, 3, 0, 1]), np.arange(4)
  result = SBIRResult.compute(distmat, q_ids, g_ids, max_rank=5)
  chance = sbir_chance_levels(q_ids, g_ids, max_rank=5)
  reid = evaluate_rank(distmat, q_ids, g_ids, max_rank=20)
  paths = write_results(tmp_path, {'sbir': result, 'single_query': reid}, chance=chance)
  loaded = json.loads(open(paths['json']).read())
  assert loaded['results']['sbir'] == {
    **result.to_dict(),
    'cmc': pytest.approx(result.cmc.tolist()),
  }
  assert loaded['chance']['acc@1'] == pytest.approx(0.25)
  md = open(paths['md']).read()
  assert '| protocol | acc@1 | acc@5 | acc@10 | mAP | R-1 | R-5 | R-10 | R-20 | mINP |' in md
  assert f'| sbir | {100 * result.acc(1):.2f} | 100.00 | 100.00 | {100 * result.mAP:.2f} |' in md
  assert '| single_query |' in md and '| chance | 25.00 | 100.00 | 100.00 |' in md
  # Only SBIR rows: only its columns; explicit columns are still strict.
  assert (
    format_table({'sbir': result}).splitlines()[0] == '| protocol | acc@1 | acc@5 | acc@10 | mAP |'
  )
  with pytest.raises(KeyError, match='R-1'):
    format_table({'sbir': result}, columns=('R-1',))


def test_selection_by_sbir_metrics(tmp_path):
  assert parse_best_metric('sbir/acc@1', 'single_query') == ('sbir', 'acc@1')
  assert parse_best_metric('acc@10', 'sbir:A') == ('sbir:A', 'acc@10')
  assert parse_best_metric('R-1', 'single_query') == ('single_query', 'R-1')
  assert parse_best_metric('single_query:A/mAP', 'sbir') == ('single_query:A', 'mAP')
  message = (
    "config.eval.best_metric='sbir/R-1': 'R-1' is not a metric of protocol 'sbir'; choose one of "
    "'acc@1', 'acc@5', 'acc@10', 'mAP'"
  )
  with pytest.raises(ValueError, match=re.escape(message)):
    Selection(str(tmp_path / 's.json'), protocol='single_query', metric='sbir/R-1')
  with pytest.raises(ValueError, match=re.escape("choose one of 'mAP', 'R-1'")):
    parse_best_metric('acc@1', 'single_query')

  ids = np.arange(4)
  worse = SBIRResult.compute(np.ones((4, 4)) - 0.5 * np.eye(4)[::-1], ids, ids)  # all rank 3
  better = SBIRResult.compute(np.ones((4, 4)) - 0.5 * np.eye(4), ids, ids)  # all rank 0
  path = str(tmp_path / 'selection.json')
  selection = Selection(path, protocol='single_query', metric='sbir/acc@1')
  assert selection.metric == 'sbir/acc@1'  # the best checkpoint's metric key, as configured
  assert selection.update({'sbir': worse}, epoch=1, step=10)
  assert selection.update({'sbir': better}, epoch=2, step=20)
  assert not selection.update({'sbir': worse}, epoch=3, step=30)
  assert selection.best['protocol'] == 'sbir' and selection.best['metric'] == 'acc@1'
  assert (selection.best['epoch'], selection.best['value']) == (2, 1.0)
  assert Selection(path, protocol='x', metric='sbir/acc@1').best['epoch'] == 2  # resumed
  with pytest.raises(ValueError, match=r"selects on protocol 'sbir', which is not among"):
    selection.update({'single_query': worse}, epoch=4, step=40)


# --------------------------------------------------------------------------- evaluate()

H, W = 16, 8


class MeanColour(nn.Module):
  """Embedding = the mean normalised colour of an image: distinct colours, distinct embeddings."""

  def __call__(self, images, modality=0, train=False):
    return self.extract(images, modality, train)

  def extract(self, images, modality=0, train=False):
    return {'feat': images.mean(axis=(1, 2))}


def _png(rgb) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(np.broadcast_to(np.asarray(rgb, np.uint8), (H, W, 3)).copy()).save(buf, 'PNG')
  return buf.getvalue()


def _row(pid, modality, colour, split='query', style='', index=0):
  folder = f'sketch/{style}' if modality else 'photo'
  return dict(
    image=_png(colour),
    pid=pid,
    modality=modality,
    style=style,
    split=split,
    camid=0 if modality else 1,
    path=f'{folder}/{split}/{pid:04d}_{index}.png',
  )


def _fg_sbir_table(extra_rows=()):
  """A QMUL-like table: 6 test photos, each its own identity, and 10 style-'A' test sketches of
  noisy photo colours (some closer to another photo), plus a training pair."""
  rng = np.random.default_rng(11)
  colours = rng.integers(30, 226, (6, 3))
  sketch_pids = np.array([0, 0, 1, 2, 2, 3, 4, 5, 5, 1])
  noisy = np.clip(colours[sketch_pids] + rng.integers(-45, 46, (10, 3)), 0, 255)
  rows = [_row(100, 0, (9, 9, 9), 'train'), _row(100, 1, (9, 9, 9), 'train', 'A')]
  rows += [_row(pid, 0, c) for pid, c in enumerate(colours)]
  rows += [
    _row(pid, 1, c, style='A', index=i) for i, (pid, c) in enumerate(zip(sketch_pids, noisy))
  ]
  table = make_table(rows + list(extra_rows), root='/data/qmul', name='tiny_fg')
  return table, colours, noisy, sketch_pids


def _embed(colours):
  mean, std = np.array(input_pipeline.IMAGENET_MEAN), np.array(input_pipeline.IMAGENET_STD)
  feats = (np.asarray(colours, np.float64) / 255.0 - mean) / std
  return feats / np.linalg.norm(feats, axis=1, keepdims=True)


def _config(protocols, **eval_values):
  config = base_config()
  config.data.image_size = (H, W)
  config.data.test_styles = 'A'
  config.eval.batch_size = 4
  config.eval.protocols = protocols
  config.eval.ranked_list_topk = 4
  for key, value in eval_values.items():
    config.eval[key] = value
  return config


def test_evaluate_sbir_end_to_end(tmp_path, capsys):
  table, colours, noisy, sketch_pids = _fg_sbir_table()
  q, g = _embed(noisy), _embed(colours)
  distmat = np.sqrt(((q[:, None] - g[None]) ** 2).sum(-1))
  expected = sbir_accuracy(distmat, sketch_pids, np.arange(6))
  assert 0 < expected['acc@1'] < 1  # some sketches are closer to another photo
  # The ranking has a clear margin, so float32 extraction cannot reorder it.
  paired = distmat[np.arange(10), sketch_pids]
  assert np.abs(distmat - paired[:, None]).min(where=distmat != paired[:, None], initial=1) > 1e-3

  selection = Selection(str(tmp_path / 'selection.json'), protocol='sbir', metric='sbir/acc@1')
  config = _config(('sbir', 'single_query'))
  results = evaluate.evaluate(
    MeanColour(),
    {},
    table,
    config,
    workdir=str(tmp_path),
    extra={'epoch': 1, 'step': 5},
    selection=selection,
  )
  assert isinstance(results['sbir'], SBIRResult)
  loaded = json.loads((tmp_path / 'results.json').read_text())
  sbir_json = loaded['results']['sbir']
  assert {k: sbir_json[k] for k in expected} == expected
  assert sbir_json['mAP'] == pytest.approx(sbir_map(distmat, sketch_pids, np.arange(6)))
  assert sbir_json['num_valid_queries'] == 10 and len(sbir_json['cmc']) == config.eval.max_rank
  assert loaded['chance']['acc@1'] == pytest.approx(1 / 6)  # the first protocol's
  assert loaded['extra']['chance']['sbir']['mAP'] == pytest.approx(
    sum(1 / r for r in range(1, 7)) / 6
  )
  assert loaded['results']['single_query']['R-1'] == pytest.approx(expected['acc@1'])  # no ties
  assert (
    loaded['selected']['metric'] == 'acc@1' and loaded['selected']['value'] == expected['acc@1']
  )
  assert (tmp_path / 'cmc.png').exists() and (tmp_path / 'ranked_list.png').exists()
  out = capsys.readouterr().out
  mean_ap = sbir_json['mAP']
  line = (
    f'sbir: acc@1 {100 * expected["acc@1"]:.2f}% = {6 * expected["acc@1"]:.1f}x chance (16.67%), '
    f'mAP {100 * mean_ap:.2f}% (chance 40.83%), 10 queries'
  )
  assert line in out
  assert '| sbir |' in (tmp_path / 'results.md').read_text()


def test_evaluate_sbir_with_flip_and_rerank():
  table, _, _, sketch_pids = _fg_sbir_table()
  config = _config(('sbir:A',), flip=True, rerank=True, rerank_k1=3, rerank_k2=2)
  with warnings.catch_warnings():
    warnings.simplefilter('ignore')
    result = evaluate.evaluate(MeanColour(), {}, table, config)['sbir:A']
  assert isinstance(result, SBIRResult) and result.num_valid_queries == len(sketch_pids)
  assert 0 <= result.acc(1) <= result.acc(5) <= 1 and 0 < result.mAP <= 1


def test_evaluate_sbir_refuses_a_sketch_without_its_photo():
  table = _fg_sbir_table([_row(7, 1, (1, 2, 3), style='A', index=99)])[0]
  message = (
    "protocol 'sbir' of config.eval.protocols: SBIRResult: 1 of 11 queries (ids 7) have no "
    'gallery item of their id'
  )
  with warnings.catch_warnings():
    warnings.simplefilter('ignore')  # make_eval_set warns about the unmatched identity first
    with pytest.raises(ValueError, match=re.escape(message)):
      evaluate.evaluate(MeanColour(), {}, table, _config(('sbir',)))
