"""The benchmark command runs every part at toy sizes and writes what it measured."""

import importlib.util
import json
import os

import pytest

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


def tiny_step_args(out, *extra):
  return [
    '--what=step',
    f'--config={os.path.join(REPO, "configs/baseline.py:market_mq")}',
    '--width=8',
    '--image_size=32,16',
    '--P=2',
    '--K=2',
    '--steps=1',
    '--set_size=3',
    '--set=model.blocks=(1, 1, 1, 1)',
    f'--out={out}',
    *extra,
  ]


def test_reference_torch_without_torch_says_how_to_get_it(tmp_path, capsys, monkeypatch):
  real = importlib.util.find_spec
  monkeypatch.setattr(
    importlib.util, 'find_spec', lambda name, *a: None if name == 'torch' else real(name, *a)
  )
  report = bench.main(tiny_step_args(tmp_path / 'b.json', '--reference=torch'))
  assert "pip install -e '.[torch]'" in report['torch_reference']['skipped']
  assert 'no PyTorch figure' in capsys.readouterr().out
  with pytest.raises(SystemExit, match='add step to --what'):
    bench.main(['--what=rank', '--reference=torch', '--queries=4', '--gallery=9', '--out='])


def test_reference_torch_times_the_same_step_and_writes_the_ratio(tmp_path, capsys):
  pytest.importorskip('torch', reason='torch (the optional [torch] extra) is not installed')
  out = tmp_path / 'b.json'
  report = bench.main(tiny_step_args(out, '--reference=torch'))
  step, ref = report['step'], report['torch_reference']
  assert json.loads(out.read_text())['torch_reference'] == json.loads(json.dumps(ref))
  assert ref['batch'] == step['batch'] == 8 and ref['sketch_set_size'] == 3
  assert ref['width'] == 8 and ref['image_size'] == [32, 16]
  assert ref['torch_step_s_over_jax_step_s'] == ref['step_s'] / step['step_s']
  assert ref['left_out'] == ['the Non-local block on the fused sketch maps']
  assert 0 < ref['peak_host_rss_mb'] < step['peak_host_rss_mb']  # its own process, no JAX or TF
  assert 0 < ref['host_rss_before_first_step_mb'] < ref['peak_host_rss_mb']
  printed = capsys.readouterr().out
  assert "x PyTorch's speed" in printed and 'leaves out the Non-local block' in printed


def test_torch_reference_is_the_flax_baseline_in_torch():
  """The same architecture (parameter count per stage) and the same losses as the JAX baseline."""
  torch = pytest.importorskip('torch', reason='torch (the optional [torch] extra) is not installed')
  import jax
  import jax.numpy as jnp
  import numpy as np

  from sketchreid_jax import losses, models, torch_reference
  from sketchreid_jax.models.heads import gem_pool

  ref = torch_reference.TwoStreamResNet50(num_classes=10, width=8, blocks=(1, 2, 1, 1))
  flax_model = models.Baseline(num_classes=10, width=8, blocks=(1, 2, 1, 1))
  shapes = jax.eval_shape(
    lambda: flax_model.init(
      jax.random.key(0), jnp.zeros((2, 32, 16, 3)), jnp.zeros((2, 32, 16, 3)), train=False
    )
  )
  count = lambda tree: sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))
  for stage in ('photo_stem', 'sketch_stem', 'layer1', 'layer2', 'layer3', 'layer4'):
    want = count(shapes['params'][stage])
    assert sum(p.numel() for p in getattr(ref, stage).parameters()) == want, stage
  assert ref.neck.weight.numel() + ref.classifier.weight.numel() == count(
    shapes['params']['bnneck']
  )
  # Last stride 1: layer4 keeps layer3's 2×1 map of a 32×16 input.
  out = ref.layer4(ref.layer3(ref.layer2(ref.layer1(ref.photo_stem(torch.randn(1, 3, 32, 16))))))
  assert out.shape == (1, 256, 2, 1)

  rng = np.random.default_rng(0)
  feat = rng.normal(size=(8, 16)).astype(np.float32)
  labels = np.repeat([3, 1, 4, 1 + 5], 2)
  got = float(torch_reference.wrt(torch.from_numpy(feat), torch.from_numpy(labels)))
  want = float(losses.wrt_triplet(jnp.asarray(feat), jnp.asarray(labels), shift='reference'))
  assert abs(got - want) < 1e-5
  maps = np.maximum(rng.normal(size=(2, 5, 3, 4)), 0).astype(np.float32)  # NHWC, ReLU'd
  got = torch_reference.gem(torch.from_numpy(maps).permute(0, 3, 1, 2)).numpy()
  np.testing.assert_allclose(got, np.asarray(gem_pool(jnp.asarray(maps), 3.0, eps=1e-6)), rtol=1e-5)
