"""The papers' multi-run protocols ("studies"): several trainings, one summary table each.

A study takes a full config (method, data, schedule) and a workdir, runs every training it needs in
its own sub-workdir (``train.train_and_evaluate``: a killed study resumes where it stopped, and a
finished run is only re-evaluated), and writes ``<name>.md``, ``<name>.csv`` and ``<name>.json``
into the workdir. ``tools/reproduce.py`` is the command line; the README's "Reproducing the papers"
maps each paper table to its command.

Studies (the registry ``STUDIES``):

* ``pku_trials`` — PKU-Sketch's protocol (CMDSL Table 4, DALNet's PKU table): ``data.pku_trials``
  random stratified splits (test ids per style: ``data.pku_test_counts``), each trained and
  evaluated on its own, then mean ± std (numpy's population std, ddof = 0) of mAP and R-1/5/10/20.
* ``market_styles`` — Market-Sketch-1K with one training: single-query per artist of
  ``data.test_styles``, single-query across them and multi-query across them (CMDSL Tables 2–3).
* ``style_grid`` — CMDSL Table 5: training artists (S1, S1,2, …) × unseen test artists (S6, S5,6,
  …), sub-tables (a) single-query training and testing, (b) multi-query training and testing,
  (c) single-query training, multi-query testing, (d) multi-query training, single-query testing.
  Multi-query training and testing are the release's ``--train_mq``/``--test_mq``: fused sketch
  sets with its Non-local block in training (``model.sketch_fusion``, ``model.fusion_nonlocal``)
  and the same fusion at test (``eval.multi_query_aggregate='stem'``, also for the single-query
  trained rows of (c), where the untrained block is the identity, as in the release); a
  multi-query row or column needs at least two artists and a cell needs disjoint artists, which
  gives exactly the paper's filled cells.
* ``attribute_noise`` — CMDSL Table 7: the config trained with 0/3/6/9 of the 27 attributes
  corrupted per identity (``data.attribute_noise``, a CMDSL key); run it once with the MM'23
  baseline's config (``configs/cmdsl.py:baseline_attr_noise0``) and once with CMDSL's.

Seeds (``run_seeds``, ``tools.reproduce --seeds=0,1,2``): any study, once per seed with
``config.seed`` set to it, in ``<workdir>/seed<k>/`` (each a complete study with its own tables, so
a killed multi-seed run resumes exactly as its sub-studies do), then ``seeds.md``/``.csv``/``.json``
in the workdir: mean ± std over the seeds of every metric of every row the study reported, rows
matched by their non-metric fields (trial, test artists, sub-table, ...). The std is numpy's
population std (ddof = 0), as ``pku_trials`` uses over trials. ``pku_trials`` also contributes a
row for its mean over trials (the number its paper table reports). ``config.seed`` drives model
init, the P×K plan and augmentation only: PKU-Sketch's splits stay those of
``data.pku_split_seed``, so every seed trains and tests on the same identities.
"""

import copy
import csv
import dataclasses
import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import ml_collections
import numpy as np

from sketchreid_jax.config_base import ConfigError, set_keys
from sketchreid_jax.evaluation import RankResult, SBIRResult

log = logging.getLogger(__name__)

# Re-id protocols report mAP and R-k, the SBIR protocol acc@K and mAP; a row keeps those it has.
REID_METRICS = ('mAP', 'R-1', 'R-5', 'R-10', 'R-20')
METRICS = (*REID_METRICS, 'acc@1', 'acc@5', 'acc@10')
SUBTABLES = {
  'a': ('single_query', 'single_query', 'mAP with single-query training and testing'),
  'b': ('multi_query', 'multi_query', 'mAP with multi-query training and testing'),
  'c': ('single_query', 'multi_query', 'mAP with single-query training and multi-query testing'),
  'd': ('multi_query', 'single_query', 'mAP with multi-query training and single-query testing'),
}


def train_run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, RankResult]:
  """One training + evaluation (resumed, or only re-evaluated when already complete)."""
  from sketchreid_jax import train  # JAX/TF import is slow: keep `--help` fast

  return train.train_and_evaluate(config, workdir)


def with_values(config: ml_collections.ConfigDict, values: Mapping[str, Any]):
  """A copy of ``config`` with dotted keys set (the original, possibly locked, is untouched)."""
  return set_keys(copy.deepcopy(config), values)


def style_label(styles: str) -> str:
  """Artist letters as the papers write them: 'A' -> 'S1', 'EF' -> 'S5,6', 'BCDEF' -> 'S2–6'."""
  idx = sorted(ord(s) - ord('A') + 1 for s in styles)
  if len(idx) > 2 and idx == list(range(idx[0], idx[-1] + 1)):
    return f'S{idx[0]}–{idx[-1]}'
  return 'S' + ','.join(str(i) for i in idx)


def metrics_row(result: RankResult | SBIRResult | Mapping[str, Any]) -> dict[str, float]:
  d = result.to_dict() if isinstance(result, (RankResult, SBIRResult)) else dict(result)
  return {k: float(d[k]) for k in METRICS if k in d}


def mean_std(rows: Sequence[Mapping[str, float]]) -> tuple[dict[str, float], dict[str, float]]:
  keys = [k for k in rows[0] if all(k in r for r in rows)]
  values = {k: np.asarray([r[k] for r in rows], np.float64) for k in keys}
  return (
    {k: float(v.mean()) for k, v in values.items()},
    {k: float(v.std()) for k, v in values.items()},
  )


def _percent(x: float) -> str:
  return f'{100 * x:.2f}'


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
  lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
  lines += ['| ' + ' | '.join(row) + ' |' for row in rows]
  return '\n'.join(lines) + '\n'


def write_summary(workdir: str, name: str, markdown: str, records: list[dict], meta: dict) -> dict:
  """``<name>.md`` (the table), ``<name>.csv`` (one record per line), ``<name>.json`` (both)."""
  os.makedirs(workdir, exist_ok=True)
  paths = {ext: os.path.join(workdir, f'{name}.{ext}') for ext in ('md', 'csv', 'json')}
  with open(paths['md'], 'w') as f:
    f.write(markdown)
  fields: list[str] = []
  for r in records:
    fields += [k for k in r if k not in fields]
  with open(paths['csv'], 'w', newline='') as f:
    writer = csv.DictWriter(f, fieldnames=fields)
    writer.writeheader()
    writer.writerows(records)
  with open(paths['json'], 'w') as f:
    json.dump({'records': records, **meta}, f, indent=2)
  print(markdown, flush=True)
  log.info('wrote %s', ', '.join(paths.values()))
  return {'markdown': markdown, 'records': records, 'paths': paths}


# ------------------------------------------------------------------------------------ studies


def pku_trials(config, workdir: str, options: Mapping[str, Any]) -> dict:
  del options
  if config.data.pku_trials < 1:
    raise ValueError(f'config.data.pku_trials must be >= 1, got {config.data.pku_trials}.')
  protocol = config.eval.protocols[0]
  records = []
  for trial in range(config.data.pku_trials):
    results = train_run(
      with_values(config, {'data.pku_trial': trial}), os.path.join(workdir, f'trial_{trial}')
    )
    records.append({'trial': trial, **metrics_row(results[protocol])})
  mean, std = mean_std([{k: r[k] for k in METRICS if k in r} for r in records])
  header = ['trial', *mean]
  rows = [[str(r['trial']), *(_percent(r[k]) for k in mean)] for r in records]
  rows.append(['**mean ± std**', *(f'{_percent(mean[k])} ± {_percent(std[k])}' for k in mean)])
  markdown = (
    f'PKU-Sketch, {len(records)} trials ({config.method}, protocol {protocol}, split seed '
    f'{config.data.pku_split_seed}); %, std over trials (ddof = 0)\n\n'
    + markdown_table(header, rows)
  )
  out = write_summary(workdir, 'pku_trials', markdown, records, {'mean': mean, 'std': std})
  # run_seeds reports the mean over trials (the paper's number) as a row of its own.
  return {**out, 'mean': mean, 'std': std}


def market_styles(config, workdir: str, options: Mapping[str, Any]) -> dict:
  del options
  styles = ''.join(sorted(set(config.data.test_styles)))
  specs = [f'single_query:{s}' for s in styles]
  specs += [f'single_query:{styles}', f'multi_query:{styles}']
  results = train_run(
    with_values(config, {'eval.protocols': tuple(specs), 'eval.best_protocol': ''}),
    os.path.join(workdir, 'run'),
  )
  records, rows = [], []
  for spec in specs:
    protocol, _, test = spec.partition(':')
    query = 'single-query' if protocol == 'single_query' else 'multi-query'
    record = {'test': style_label(test), 'query': query, **metrics_row(results[spec])}
    records.append(record)
    rows.append([record['test'], query, *(_percent(record[k]) for k in REID_METRICS)])
  markdown = (
    f'Market-Sketch-1K, trained on {style_label(config.data.train_styles)} '
    f'({config.method}); %\n\n' + markdown_table(['test artists', 'query', *REID_METRICS], rows)
  )
  return write_summary(workdir, 'market_styles', markdown, records, {})


def grid_axes(styles: str) -> tuple[list[str], list[str]]:
  """Table 5's training rows (S1, S1,2, …) and test columns (S_n, S_{n-1,n}, …) of ``styles``."""
  if len(styles) < 2 or len(set(styles)) != len(styles):
    raise ValueError(f'style_grid needs at least two distinct artists, got {styles!r}.')
  n = len(styles)
  return [styles[:i] for i in range(1, n)], [styles[n - i :] for i in range(1, n)]


def grid_cells(styles: str, subtable: str) -> list[tuple[str, str]]:
  """The filled (train, test) cells of one sub-table: disjoint artists, and at least two artists
  on a multi-query side (one sketch per identity and artist: a single artist is single-query)."""
  train_mode, test_mode, _ = SUBTABLES[subtable]
  rows, cols = grid_axes(styles)
  return [
    (r, c)
    for r in rows
    for c in cols
    if not set(r) & set(c)
    and (train_mode == 'single_query' or len(r) > 1)
    and (test_mode == 'single_query' or len(c) > 1)
  ]


def style_grid(config, workdir: str, options: Mapping[str, Any]) -> dict:
  styles = options.get('grid_styles', 'ABCDEF')
  subtables = options.get('subtables', 'abcd')
  unknown = [s for s in subtables if s not in SUBTABLES]
  if unknown or not subtables:
    raise ValueError(f'--subtables takes letters of {"".join(SUBTABLES)}, got {subtables!r}.')
  # One training per (training artists, training mode), evaluated on every column it serves.
  runs: dict[tuple[str, str], list[str]] = {}
  for sub in subtables:
    train_mode, test_mode, _ = SUBTABLES[sub]
    for r, c in grid_cells(styles, sub):
      specs = runs.setdefault((r, train_mode), [])
      if f'{test_mode}:{c}' not in specs:
        specs.append(f'{test_mode}:{c}')
  results: dict[tuple[str, str], dict] = {}
  for (r, mode), specs in runs.items():
    tag = 'mq' if mode == 'multi_query' else 'sq'
    # The release's Non-local fusion block belongs to the two-stream methods (their config has it).
    fusion_block = (
      {'model.fusion_nonlocal': mode == 'multi_query'} if 'fusion_nonlocal' in config.model else {}
    )
    run_config = with_values(
      config,
      {
        **fusion_block,
        'data.train_styles': r,
        'model.sketch_fusion': mode == 'multi_query',
        'eval.multi_query_aggregate': 'stem',
        'eval.protocols': tuple(specs),
        'eval.best_protocol': '',
      },
    )
    log.info('style_grid: training on %s (%s), testing %s', r, tag, ', '.join(specs))
    results[r, mode] = train_run(run_config, os.path.join(workdir, f'train_{r}_{tag}'))
  rows_axis, cols_axis = grid_axes(styles)
  records, parts = [], []
  for sub in subtables:
    train_mode, test_mode, title = SUBTABLES[sub]
    cells = set(grid_cells(styles, sub))
    lines = []
    for r in rows_axis:
      if not any((r, c) in cells for c in cols_axis):
        continue
      line = [style_label(r)]
      for c in cols_axis:
        if (r, c) not in cells:
          line.append('-')
          continue
        m = metrics_row(results[r, train_mode][f'{test_mode}:{c}'])
        records.append({'subtable': sub, 'train': r, 'test': c, **m})
        line.append(_percent(m['mAP']))
      lines.append(line)
    parts.append(
      f'({sub}) {title}\n\n'
      + markdown_table(['Train \\ Test', *(style_label(c) for c in cols_axis)], lines)
    )
  markdown = f'Market-Sketch-1K cross-artist grid ({config.method}); mAP %\n\n' + '\n'.join(parts)
  return write_summary(workdir, 'style_grid', markdown, records, {'styles': styles})


def attribute_noise(config, workdir: str, options: Mapping[str, Any]) -> dict:
  levels = [int(x) for x in str(options.get('noise_levels', '0,3,6,9')).split(',') if x.strip()]
  if 'attribute_noise' not in config.data:
    raise ConfigError(
      f"the attribute_noise study corrupts CMDSL's attributes, but config.method="
      f"{config.method!r} has none: use configs/cmdsl.py:baseline_attr_noise0 (the MM'23 baseline) "
      'or configs/cmdsl.py:attr_noise3 (CMDSL).'
    )
  protocol = config.eval.protocols[0]
  records = []
  for n in levels:
    results = train_run(
      with_values(config, {'data.attribute_noise': n}), os.path.join(workdir, f'noise_{n}')
    )
    records.append({'noise': n, **metrics_row(results[protocol])})
  rows = [[f'{r["noise"]}/27', _percent(r['mAP']), _percent(r['R-1'])] for r in records]
  markdown = f'Attribute noise ({config.method}, protocol {protocol}); %\n\n' + markdown_table(
    ['noise coverage', 'mAP', 'Rank-1'], rows
  )
  return write_summary(workdir, 'attribute_noise', markdown, records, {})


def sbir(config, workdir: str, options: Mapping[str, Any]) -> dict:
  """QMUL-ShoeV2/ChairV2: one training, every test sketch against every test photo."""
  del options
  if config.data.dataset not in ('qmul_shoev2', 'qmul_chairv2'):
    raise ValueError(
      f'protocol sbir needs a QMUL dataset (config.data.dataset qmul_shoev2 or qmul_chairv2), '
      f'got {config.data.dataset!r}; use configs/dalnet.py:shoev2 or configs/baseline.py:shoev2.'
    )
  results = train_run(
    with_values(config, {'eval.protocols': ('sbir',), 'eval.best_protocol': ''}),
    os.path.join(workdir, 'run'),
  )
  record = {'dataset': config.data.dataset, **metrics_row(results['sbir'])}
  metrics = [k for k in METRICS if k in record]
  markdown = (
    f'{config.data.dataset}, fine-grained SBIR ({config.method}): each test sketch queries every '
    f'test photo; %\n\n'
    + markdown_table(
      ['dataset', *metrics], [[record['dataset'], *(_percent(record[k]) for k in metrics)]]
    )
  )
  return write_summary(workdir, 'sbir', markdown, [record], {})


def evaluate_only(config, workdir: str, options: Mapping[str, Any]) -> dict:
  """A trained workdir's best (else latest) checkpoint on the config's protocols, no training."""
  del options
  from sketchreid_jax import train

  results = train.evaluate_workdir(config, workdir)
  return {'records': [{'protocol': k, **metrics_row(v)} for k, v in results.items()]}


@dataclasses.dataclass(frozen=True)
class Study:
  run: Callable[[ml_collections.ConfigDict, str, Mapping[str, Any]], dict]
  help: str


STUDIES: dict[str, Study] = {
  'pku_trials': Study(pku_trials, 'PKU-Sketch: data.pku_trials splits, mean ± std (Table 4)'),
  'market_styles': Study(
    market_styles, 'Market-Sketch-1K: SQ per artist, SQ and MQ across artists (Tables 2–3)'
  ),
  'style_grid': Study(style_grid, 'Market-Sketch-1K train × test artist grid, (a)–(d) (Table 5)'),
  'attribute_noise': Study(attribute_noise, 'the config at 0/3/6/9 corrupted attributes (Table 7)'),
  'sbir': Study(
    sbir, 'QMUL-ShoeV2/ChairV2: acc@1/5/10 and mAP of every test sketch (DALNet Table 1)'
  ),
  'evaluate': Study(
    evaluate_only, "evaluate a trained workdir on config.eval.protocols (e.g. 'single_query:A')"
  ),
}


# -------------------------------------------------------------------------------------- seeds

SEEDS_NAME = 'seeds'
# The row run_seeds adds for pku_trials' mean over trials.
TRIAL_MEAN_LABEL = 'mean over trials'


def parse_seeds(text: str) -> tuple[int, ...]:
  """'0,1,2' -> (0, 1, 2); empty, repeated, negative or non-integer seeds are a ValueError."""
  parts = [p.strip() for p in str(text).split(',') if p.strip()]
  try:
    seeds = tuple(int(p) for p in parts)
  except ValueError:
    raise ValueError(
      f'--seeds takes comma-separated integers such as 0,1,2, got {text!r}.'
    ) from None
  if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
    raise ValueError(
      f'--seeds needs distinct integers >= 0 such as 0,1,2 (config.seed of each run), got {text!r}.'
    )
  return seeds


def seed_workdir(workdir: str, seed: int) -> str:
  return os.path.join(workdir, f'seed{seed}')


def seed_rows(out: Mapping[str, Any]) -> list[dict]:
  """One study result's rows: its records, plus pku_trials' mean over trials when it has one."""
  rows = [dict(r) for r in out['records']]
  if isinstance(out.get('mean'), Mapping):
    first = rows[0] if rows else {'trial': None}
    label = {k: TRIAL_MEAN_LABEL for k in first if k not in METRICS}
    rows.append({**label, **{k: float(v) for k, v in out['mean'].items()}})
  return rows


def summarize_seeds(per_seed: Mapping[int, Sequence[Mapping[str, Any]]]) -> list[dict]:
  """Mean and population std (ddof = 0) over seeds of every metric of every row.

  ``per_seed`` maps each seed to its rows (``seed_rows``); rows are matched by their non-metric
  fields and must be the same, in the same order, for every seed (the same study and options).
  Each output record holds those fields, ``seeds`` (the count) and ``<metric>_mean``,
  ``<metric>_std`` for each metric every seed reported.
  """
  seeds = list(per_seed)
  if not seeds:
    raise ValueError('summarize_seeds: no seeds to summarise.')

  def key(row):
    return tuple((k, v) for k, v in row.items() if k not in METRICS)

  keys = [key(r) for r in per_seed[seeds[0]]]
  for seed in seeds[1:]:
    if [key(r) for r in per_seed[seed]] != keys:
      raise ValueError(
        f'seed {seed} reported other rows than seed {seeds[0]} ({len(per_seed[seed])} vs '
        f'{len(keys)}); run every seed with the same protocol and options, or delete the '
        f'stale {seed_workdir("<workdir>", seed)} sub-folder.'
      )
  records = []
  for i, row_key in enumerate(keys):
    mean, std = mean_std([{k: v for k, v in per_seed[s][i].items() if k in METRICS} for s in seeds])
    record = {**dict(row_key), 'seeds': len(seeds)}
    for k in mean:
      record[f'{k}_mean'] = mean[k]
      record[f'{k}_std'] = std[k]
    records.append(record)
  return records


def run_seeds(
  protocol: str,
  config: ml_collections.ConfigDict,
  workdir: str,
  options: Mapping[str, Any],
  seeds: Sequence[int],
) -> dict:
  """``STUDIES[protocol]`` once per seed in ``<workdir>/seed<k>/``, then the table over seeds."""
  if protocol not in STUDIES:
    raise ValueError(f'unknown protocol {protocol!r}; known: {sorted(STUDIES)}')
  seeds = [int(s) for s in seeds]
  if not seeds or len(set(seeds)) != len(seeds):
    raise ValueError(f'run_seeds needs distinct seeds, got {seeds}; e.g. --seeds=0,1,2.')
  per_seed: dict[int, list[dict]] = {}
  for seed in seeds:
    log.info('%s: seed %d of %s', protocol, seed, seeds)
    out = STUDIES[protocol].run(
      with_values(config, {'seed': seed}), seed_workdir(workdir, seed), options
    )
    per_seed[seed] = seed_rows(out)
  records = summarize_seeds(per_seed)
  if not records:
    raise ValueError(f'{protocol} reported no rows for seeds {seeds}; nothing to summarise.')
  metrics = [k for k in METRICS if f'{k}_mean' in records[0]]
  fields = [k for k in records[0] if k != 'seeds' and not k.endswith(('_mean', '_std'))]
  rows = [
    [
      *(str(r[k]) for k in fields),
      *(
        f'{_percent(r[f"{k}_mean"])} ± {_percent(r[f"{k}_std"])}' if f'{k}_mean' in r else '-'
        for k in metrics
      ),
    ]
    for r in records
  ]
  markdown = (
    f'{protocol} over seeds {",".join(map(str, seeds))} ({config.method}); %, mean ± std over '
    f'the {len(seeds)} seeds (population std, ddof = 0)\n\n'
    + markdown_table([*fields, *metrics], rows)
  )
  meta = {
    'protocol': protocol,
    'seeds': seeds,
    'ddof': 0,
    'per_seed': {str(s): per_seed[s] for s in seeds},
  }
  return write_summary(workdir, SEEDS_NAME, markdown, records, meta)
