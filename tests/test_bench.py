"""The benchmark command runs every part at toy sizes and writes what it measured."""

import json
import os

from sketchreid_jax.tools import bench
from tests.conftest import REPO


def test_bench_runs_every_part_and_writes_json(tiny_market, tmp_path, capsys):
  out = tmp_path / 'bench.json'
  report = bench.main(
    [
      '--what=step,pipeline,rank',
      # A fused (multi-query) preset: the step the papers' "M" rows train.
      f'--config={os.path.join(REPO, "configs/baseline.py:market_mq")}',
      '--width=8',
      '--image_size=32,16',
      '--P=2',
      '--K=2',
      '--steps=1',
      '--set_size=3',
      '--set=model.fusion_nonlocal=False',
      f'--data_root={tiny_market}',
      '--batches=2',
      '--queries=40',
      '--gallery=300',
      '--dim=16',
      f'--out={out}',
    ]
  )
  saved = json.loads(out.read_text())
  assert saved == json.loads(json.dumps(report))
  assert saved['step']['batch'] == 8 and saved['step']['images_per_s'] > 0
  assert saved['step']['sketch_fusion'] and saved['step']['images_through_stems_per_step'] == 16
  assert saved['step']['config_overrides'] == ['model.fusion_nonlocal=False']
  assert saved['step']['compile_plus_first_step_s'] > saved['step']['step_s'] > 0
  assert saved['pipeline']['images_per_s_1_thread'] > 0
  assert saved['rank']['total_s'] == saved['rank']['distance_s'] + saved['rank']['evaluate_rank_s']
  # Random features: mAP near chance (≈ positives / gallery), far from 1.
  assert 0 < saved['rank']['mAP_random'] < 0.5
  assert saved['machine']['cpu_count'] >= 1 and saved['memory']['peak_host_rss_mb'] > 0
  assert 'wrote' in capsys.readouterr().out
