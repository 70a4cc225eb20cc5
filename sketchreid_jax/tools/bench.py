r"""The project's speed measurements: train step, input pipeline, ranking, memory. Prints a table and
writes JSON (with the machine it ran on).

  python -m sketchreid_jax.tools.bench --what=step,pipeline,rank --out=bench.json \
      --config=configs/cmdsl.py:market_mq [--width=64 --image_size=288,144 --P=8 --K=4]

What each part measures:
  step      one compiled training step of --config's method at --width, --image_size and a
            2·P·K batch (P identities × K photos and K sketches) on random images: compile time
            (first call, cold unless the JAX cache already holds it) and images/s over --steps
            steady-state steps (state donated, batch already on the device, no host round trip
            per step). A config with model.sketch_fusion (every multi-query preset) times the
            fused step: each of the P·K sketch slots holds a set of --set_size sketches, so the
            sketch stem sees P·K·set_size images; images/s still counts the 2·P·K samples
  pipeline  the tf.data training pipeline from the JPEG bytes of --data_root (Market-Sketch-1K
            layout; the synthetic one by default) to normalised, augmented P×K batches, with one
            tf.data thread (per core) and with all threads, as images/s
  rank      distances + evaluate_rank at Market-1501 scale by default (3,368 queries × 15,913
            gallery, 2,048-d L2-normalised random features, 751 identities, 6 cameras)
  memory    always reported: peak host RSS of this process and, on an accelerator, its peak
            device memory

--reference=torch (with step): also times the same step in PyTorch eager, in a child process of
its own (so that neither framework's threads or memory count against the other): the baseline
part of --config's method (two-stream ResNet-50 with last stride 1, GeM, BNNeck, CE + WRT, SGD
Nesterov; sketchreid_jax.torch_reference) at the same width, image size, blocks and batch. It
prints and writes the ratio torch step time / JAX step time (above 1: JAX is faster) and both
processes' peak memory. Needs torch: pip install -e '.[torch]' (on a CPU-only machine,
pip install torch --index-url https://download.pytorch.org/whl/cpu keeps it small).

Numbers depend on the machine: the JSON records the CPU count, the JAX backend and device kind.
"""

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Sequence

from sketchreid_jax import runtime
from sketchreid_jax.tools import cli

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

PARTS = ('step', 'pipeline', 'rank')


def _parser() -> argparse.ArgumentParser:
  p = cli.parser('sketchreid_jax.tools.bench', __doc__)
  p.add_argument(
    '--what', default='step,pipeline,rank', help='comma-separated parts: ' + ', '.join(PARTS)
  )
  p.add_argument('--config', default='configs/cmdsl.py:market_mq', help='config[:preset] for step')
  p.add_argument('--width', type=int, default=None, help="ResNet width (default: the config's)")
  p.add_argument('--image_size', default=None, help="H,W (default: the config's)")
  p.add_argument('--P', type=int, default=None, help='identities per batch (default: config)')
  p.add_argument('--K', type=int, default=None, help='images per identity and modality')
  p.add_argument('--dtype', default=None, help="'float32' or 'bfloat16' (default: config)")
  p.add_argument(
    '--set',
    action='append',
    default=[],
    metavar='KEY=VALUE',
    help='any other config key, e.g. --set model.sketch_fusion=False (repeatable; the value is a '
    'Python literal, else a string)',
  )
  p.add_argument('--steps', type=int, default=5, help='timed steps after the compiling one')
  p.add_argument(
    '--reference',
    choices=('none', 'torch'),
    default='none',
    help='step: also time the PyTorch eager reference (below)',
  )
  p.add_argument(
    '--set_size',
    type=int,
    default=6,
    help='fused configs: sketches per set (6 = every Market-Sketch-1K artist)',
  )
  p.add_argument(
    '--data_root',
    default='data/synthetic/market_sketch',
    help='Market-Sketch-1K layout for the pipeline part',
  )
  p.add_argument('--batches', type=int, default=20, help='timed pipeline batches')
  p.add_argument('--queries', type=int, default=3368)
  p.add_argument('--gallery', type=int, default=15913)
  p.add_argument('--dim', type=int, default=2048)
  p.add_argument('--out', default='bench.json', help="JSON output ('' = none)")
  p.add_argument(
    '--jax_cache', default='', help="JAX compilation cache dir ('' = off: cold compile)"
  )
  return p


def _literal(text: str):
  import ast

  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def _config(args):
  from sketchreid_jax.config_base import load_config, set_keys

  config = load_config(args.config)
  for item in args.set:
    key, sep, value = item.partition('=')
    if not sep:
      raise SystemExit(f'--set {item!r}: write KEY=VALUE, e.g. --set model.sketch_fusion=False')
    set_keys(config, {key: _literal(value)}, where='--set')
  if args.width:
    config.model.width = args.width
  if args.image_size:
    config.data.image_size = tuple(int(x) for x in args.image_size.split(','))
  if args.P:
    config.sampler.P = args.P
  if args.K:
    config.sampler.K = args.K
  if args.dtype:
    config.model.dtype = args.dtype
  return config


def bench_step(args) -> dict:
  import functools

  import jax
  import numpy as np

  from sketchreid_jax import parallel, train
  from sketchreid_jax.methods import get_method

  config = _config(args)
  method = get_method(config.method)
  num_classes = 500
  model = method.model_for(config, num_classes, parallel.AXIS)
  state = train.create_train_state(config, model, 100, jax.random.key(0))
  launcher = parallel.make_launcher(
    functools.partial(train.train_step, model=model, method=method, config=config),
    kind=config.parallel.launcher,
  )
  P, K = config.sampler.P, config.sampler.K
  h, w = config.data.image_size
  rng = np.random.default_rng(0)
  ids = rng.choice(num_classes, P, replace=False)
  batch = {
    'image': rng.normal(size=(2 * P * K, h, w, 3)).astype(np.float32),
    'label': np.concatenate([np.repeat(ids, K)] * 2).astype(np.int32),
    'modality': np.repeat([0, 1], P * K).astype(np.int32),
    'attributes': rng.integers(0, 2, size=(2 * P * K, 27)).astype(np.int32),
    'mask': np.ones((2 * P * K, h, w, 1), np.float32),
  }
  batch = {
    k: v
    for k, v in batch.items()
    if k in ('image', 'label', 'modality') or k in method.model_inputs
  }
  fused = bool(config.model.sketch_fusion)
  if fused:  # photos only in 'image'; a full set in every sketch slot
    batch['image'] = batch['image'][: P * K]
    batch['sketch_set'] = rng.normal(size=(P * K, args.set_size, h, w, 3)).astype(np.float32)
    batch['sketch_valid'] = np.ones((P * K, args.set_size), bool)
  rss_before_mb = runtime.rss_mb('VmRSS')
  perm = parallel.device_major_permutation(P, K, launcher.num_devices)
  device_batch = launcher.put_batch(parallel.device_order(batch, perm))
  state = launcher.put_state(state)
  t = time.perf_counter()
  state, metrics = launcher.step(state, device_batch)
  jax.block_until_ready(metrics)
  compile_s = time.perf_counter() - t
  t = time.perf_counter()
  for _ in range(args.steps):
    state, metrics = launcher.step(state, device_batch)
  jax.block_until_ready(metrics)
  step_s = (time.perf_counter() - t) / args.steps
  return {
    'config': args.config,
    'method': config.method,
    'width': config.model.width,
    'image_size': list(config.data.image_size),
    'batch': 2 * P * K,
    'config_overrides': list(args.set),
    'sketch_fusion': fused,
    'images_through_stems_per_step': P * K * (1 + (args.set_size if fused else 1)),
    'dtype': config.model.dtype,
    'devices': launcher.num_devices,
    'blocks': list(config.model.blocks),
    'compile_plus_first_step_s': compile_s,
    'step_s': step_s,
    'images_per_s': 2 * P * K / step_s,
    'host_rss_before_first_step_mb': rss_before_mb,
    'peak_host_rss_mb': runtime.rss_mb(),
  }


def bench_torch_reference(args, step: dict) -> dict:
  """The PyTorch eager step at ``step``'s sizes, run by sketchreid_jax.torch_reference in a child
  process; adds the ratio torch step time / JAX step time."""
  import importlib.util
  import subprocess

  if importlib.util.find_spec('torch') is None:
    return {
      'skipped': "torch is not installed: pip install -e '.[torch]' to get the PyTorch figure"
    }
  config = _config(args)
  P, K = config.sampler.P, config.sampler.K
  h, w = step['image_size']
  cmd = [
    sys.executable,
    '-m',
    'sketchreid_jax.torch_reference',
    f'--width={step["width"]}',
    f'--image_size={h},{w}',
    f'--P={P}',
    f'--K={K}',
    f'--steps={args.steps}',
    f'--blocks={",".join(map(str, step["blocks"]))}',
    f'--set_size={args.set_size if step["sketch_fusion"] else 0}',
  ]
  done = subprocess.run(cmd, capture_output=True, text=True)
  if done.returncode:
    raise SystemExit(f'bench: the torch reference failed: {done.stderr.strip()[-500:]}')
  torch_result = json.loads(done.stdout.strip().splitlines()[-1])
  torch_result['scope'] = (
    'the baseline part of the method (two-stream ResNet-50, GeM, BNNeck, CE + WRT, SGD) at the '
    'same width, image size, blocks and batch'
  )
  torch_result['torch_step_s_over_jax_step_s'] = torch_result['step_s'] / step['step_s']
  left_out = []
  if config.method != 'baseline':
    left_out.append(f"{config.method}'s own modules and losses")
  if step['sketch_fusion'] and config.model.get('fusion_nonlocal'):
    left_out.append('the Non-local block on the fused sketch maps')
  torch_result['left_out'] = left_out
  return torch_result


def bench_pipeline(args) -> dict:
  import numpy as np

  from sketchreid_jax import datasets, input_pipeline, sampler
  from sketchreid_jax.config_base import base_config
  from sketchreid_jax.datasets.table import available_styles

  config = _config(args)
  data = base_config().data
  data.root = args.data_root
  table = datasets.load(data)
  train_set = sampler.make_train_set(table, available_styles(table, 'train'))
  P, K = config.sampler.P, config.sampler.K
  plan = sampler.pk_plan(train_set, P=P, K=K, epoch=0, seed=0)
  out = {'image_size': list(config.data.image_size), 'batch': 2 * P * K}
  for threads, name in ((1, 'images_per_s_1_thread'), (0, 'images_per_s_all_threads')):
    it = input_pipeline.train_iterator(
      table,
      train_set,
      plan=np.concatenate([plan] * (1 + args.batches // len(plan))),
      image_size=tuple(config.data.image_size),
      pad=config.data.pad,
      flip=True,
      random_erasing=0.5,
      seed=0,
      epoch=0,
      threads=threads,
    )
    next(it)  # warm-up: graph tracing and the first prefetch
    t = time.perf_counter()
    for _ in range(args.batches):
      next(it)
    out[name] = args.batches * 2 * P * K / (time.perf_counter() - t)
  return out


def bench_rank(args) -> dict:
  import numpy as np

  from sketchreid_jax.evaluation import evaluate_rank, pairwise_distance

  rng = np.random.default_rng(0)
  q = rng.normal(size=(args.queries, args.dim)).astype(np.float32)
  g = rng.normal(size=(args.gallery, args.dim)).astype(np.float32)
  q /= np.linalg.norm(q, axis=1, keepdims=True)
  g /= np.linalg.norm(g, axis=1, keepdims=True)
  q_pids = rng.integers(0, 751, args.queries)
  g_pids = np.concatenate(
    [
      q_pids[rng.integers(0, args.queries, args.gallery // 2)],
      rng.integers(0, 751, args.gallery - args.gallery // 2),
    ]
  )
  q_cams, g_cams = rng.integers(0, 6, args.queries), rng.integers(0, 6, args.gallery)
  t = time.perf_counter()
  dist = pairwise_distance(q, g)
  dist_s = time.perf_counter() - t
  t = time.perf_counter()
  result = evaluate_rank(dist, q_pids, g_pids, q_cams, g_cams)
  rank_s = time.perf_counter() - t
  return {
    'queries': args.queries,
    'gallery': args.gallery,
    'dim': args.dim,
    'distance_s': dist_s,
    'evaluate_rank_s': rank_s,
    'total_s': dist_s + rank_s,
    'mAP_random': result.mAP,
  }


def machine() -> dict:
  import jax

  device = jax.devices()[0]
  return {
    'platform': platform.platform(),
    'processor': platform.processor(),
    'cpu_count': os.cpu_count(),
    'python': sys.version.split()[0],
    'jax': jax.__version__,
    'backend': jax.default_backend(),
    'device_kind': device.device_kind,
    'device_count': jax.device_count(),
  }


def memory() -> dict:
  import jax

  out = {'peak_host_rss_mb': runtime.rss_mb()}
  stats = jax.devices()[0].memory_stats() or {}
  if 'peak_bytes_in_use' in stats:
    out['peak_device_mb'] = stats['peak_bytes_in_use'] / 2**20
  return out


BENCHES = {'step': bench_step, 'pipeline': bench_pipeline, 'rank': bench_rank}


def main(argv: Sequence[str] | None = None) -> dict:
  args = _parser().parse_args(argv)
  parts = [p.strip() for p in args.what.split(',') if p.strip()]
  unknown = [p for p in parts if p not in BENCHES]
  if unknown:
    raise SystemExit(f'--what: unknown part(s) {unknown}; choose from {", ".join(PARTS)}')
  if args.reference == 'torch' and 'step' not in parts:
    raise SystemExit('--reference=torch compares the training step: add step to --what')
  import jax

  if args.jax_cache:
    jax.config.update('jax_compilation_cache_dir', args.jax_cache)
  report = {'machine': machine()}
  for part in parts:
    print(f'bench: {part} ...', flush=True)
    report[part] = BENCHES[part](args)
    print(json.dumps(report[part], indent=2), flush=True)
  if args.reference == 'torch':
    print('bench: torch reference ...', flush=True)
    ref = report['torch_reference'] = bench_torch_reference(args, report['step'])
    print(json.dumps(ref, indent=2), flush=True)
    if 'skipped' in ref:
      print(f'bench: no PyTorch figure: {ref["skipped"]}')
    else:
      step = report['step']
      print(
        f'bench: step at batch {step["batch"]}: jax {step["step_s"]:.3f} s, torch eager '
        f'{ref["step_s"]:.3f} s: jax runs at {ref["torch_step_s_over_jax_step_s"]:.2f}x '
        f"PyTorch's speed; peak host memory {step['peak_host_rss_mb']:.0f} MB (jax process) vs "
        f'{ref["peak_host_rss_mb"]:.0f} MB (torch process), of which the step added '
        f'{step["peak_host_rss_mb"] - step["host_rss_before_first_step_mb"]:.0f} MB vs '
        f'{ref["peak_host_rss_mb"] - ref["host_rss_before_first_step_mb"]:.0f} MB'
      )
      if ref['left_out']:
        print(f'bench: the torch step leaves out {" and ".join(ref["left_out"])}')
  report['memory'] = memory()
  print(json.dumps({'machine': report['machine'], 'memory': report['memory']}, indent=2))
  if args.out:
    with open(args.out, 'w') as f:
      json.dump(report, f, indent=2)
    print(f'wrote {args.out}')
  return report


if __name__ == '__main__':
  main()
