"""Result reports: Markdown tables, chance levels, CMC plots and the files written to a workdir.

The "tables and plots in the workdir" end of an evaluation, for the metrics of ``evaluate_rank``
(re-identification) and of the fine-grained SBIR protocol (``sbir.SBIRResult``).

Interpretations chosen:

* Metrics are stored as fractions in [0, 1] (JSON, CSV) and shown as percentages with two decimals
  (Markdown table, plot axis), for both result kinds: re-id (``RankResult``: mAP, R-k, mINP) and
  SBIR (``SBIRResult``: acc@K, mAP).
* **Table columns** follow the rows' kind unless ``columns`` is given: ``DEFAULT_COLUMNS`` for
  re-id rows, ``SBIR_COLUMNS`` for SBIR rows (a row with an ``acc@K`` key and no ``R-k`` key).
  Rows of both kinds (e.g. ``eval.protocols=('single_query', 'sbir')``) share one table with
  both sets of columns; a cell of a metric the row's kind does not have shows "—", while a
  missing metric of its own kind is still an error.
* **Chance levels are exact**, not Monte-Carlo. For a query with m positives among G candidates
  (after the same-pid same-camera removal, if cameras are given) and a uniformly random ranking:

    - P(hit within k) = 1 − C(G−m, k) / C(G, k) = 1 − Π_{i<k} (G−m−i)/(G−i).
    - E[AP] = (m−1)/(G−1) + (G−m)/(G−1) · H_G / G, with H_G the G-th harmonic number.
      Derivation: AP = (1/m) Σ_i rel_i · (Σ_{j≤i} rel_j) / i, and for a random permutation
      E[rel_i] = m/G and E[rel_i rel_j] = m(m−1)/(G(G−1)) (i ≠ j), so
      E[AP] = (1/G) Σ_{i=1..G} (1 + (i−1)(m−1)/(G−1)) / i. (G = 1 gives 1.)
    - E[INP] = Σ_{r=m..G} (m/r) · C(r−1, m−1) / C(G, m), the last positive being at rank r.

  Queries without a positive are skipped, as in ``evaluate_rank``; the levels are averaged over the
  remaining queries.
* Plots use matplotlib's object API (``Figure`` + the Agg canvas) rather than ``pyplot``, so
  nothing changes the global backend of a notebook that imports this module.
* ``write_results`` requires a CMC curve for every protocol (a ``RankResult``, an ``SBIRResult``
  whose curve is acc@k for k = 1..max_rank, or a dict with a ``'cmc'`` array) because it always
  draws ``cmc.png``; a missing curve is an error, not a gap in the plot. The workdir is a local
  path (created if missing).
"""

import csv
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from scipy.special import gammaln

from sketchreid_jax.evaluation.ranking import RankResult
from sketchreid_jax.evaluation.sbir import METRICS as SBIR_COLUMNS
from sketchreid_jax.evaluation.sbir import SBIRResult

__all__ = ['chance_levels', 'format_table', 'plot_cmc', 'write_results']

DEFAULT_COLUMNS: tuple[str, ...] = ('mAP', 'R-1', 'R-5', 'R-10', 'R-20', 'mINP')
DEFAULT_RANKS: tuple[int, ...] = (1, 5, 10, 20)
# A cell of a metric that the row's kind of protocol does not compute.
ABSENT = '—'


def _metrics_of(name: str, result: RankResult | SBIRResult | Mapping[str, Any]) -> dict[str, Any]:
  if isinstance(result, (RankResult, SBIRResult)):
    return result.to_dict()
  if isinstance(result, Mapping):
    return dict(result)
  raise TypeError(
    f'results[{name!r}] must be a RankResult, an SBIRResult or a dict of metrics, got '
    f'{type(result).__name__}.'
  )


def _kind_columns(metrics: Mapping[str, Any]) -> tuple[str, ...]:
  """The default columns of a row: SBIR's for acc@K metrics without R-k ones, else re-id's."""
  sbir = any(k.startswith('acc@') for k in metrics) and not any(k.startswith('R-') for k in metrics)
  return SBIR_COLUMNS if sbir else DEFAULT_COLUMNS


def format_table(
  rows: Mapping[str, Mapping[str, float] | RankResult | SBIRResult],
  columns: Sequence[str] | None = None,
  chance: Mapping[str, float] | None = None,
) -> str:
  """Markdown table, one row per protocol, metrics (fractions) shown as percentages (2 decimals).

  ``columns=None`` picks them by the rows' kind (module docstring); explicit ``columns`` must
  exist in every row. ``chance`` (same keys, e.g. from :func:`chance_levels`) adds a final row
  named "chance".
  """
  table_rows = [(name, _metrics_of(name, row)) for name, row in rows.items()]
  if chance is not None:
    table_rows.append(('chance', dict(chance)))
  if not table_rows:
    raise ValueError("format_table: rows is empty; pass at least one protocol's metrics.")
  if columns is None:
    own = [_kind_columns(metrics) for _, metrics in table_rows]
    columns = list(dict.fromkeys(c for kind in sorted(set(own), key=own.index) for c in kind))
  else:
    own = [tuple(columns)] * len(table_rows)
  lines = ['| protocol | ' + ' | '.join(columns) + ' |', '|---|' + '---:|' * len(columns)]
  for (name, metrics), kind in zip(table_rows, own):
    missing = [c for c in kind if c not in metrics]
    if missing:
      raise KeyError(
        f'format_table: row {name!r} has no {missing} (it has {sorted(metrics)}); compute those '
        'metrics or pass columns= without them.'
      )
    cells = (f'{100.0 * float(metrics[c]):.2f}' if c in kind else ABSENT for c in columns)
    lines.append(f'| {name} | ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines) + '\n'


def _log_comb(n: np.ndarray | int, k: np.ndarray | int) -> np.ndarray:
  return (
    gammaln(np.asarray(n) + 1.0)
    - gammaln(np.asarray(k) + 1.0)
    - gammaln(np.asarray(n) - np.asarray(k) + 1.0)
  )


def chance_levels(
  q_pids,
  g_pids,
  ranks: Sequence[int] = DEFAULT_RANKS,
  *,
  q_camids=None,
  g_camids=None,
  max_rank: int = 50,
) -> dict[str, Any]:
  """Exact expected metrics of a uniformly random ranking for this query/gallery split.

  Returns ``{'mAP', 'mINP', 'R-k' for k in ranks, 'num_valid_queries', 'cmc'}``: floats in [0, 1],
  ``cmc`` the expected CMC curve (length ``max_rank``) for plotting. Cameras, if given, remove
  same-pid same-camera gallery items exactly as ``evaluate_rank`` does. Formulas: module docstring.
  """
  q_pids = np.asarray(q_pids)
  g_pids = np.asarray(g_pids)
  if q_pids.ndim != 1 or g_pids.ndim != 1 or g_pids.size == 0:
    raise ValueError(
      f'chance_levels: q_pids and g_pids must be 1-D and the gallery non-empty, got shapes '
      f'{q_pids.shape} and {g_pids.shape}.'
    )
  if (q_camids is None) != (g_camids is None):
    raise ValueError('chance_levels: pass both q_camids and g_camids or neither.')
  if any(int(k) < 1 for k in ranks) or max_rank < 1:
    raise ValueError(f'chance_levels: ranks {tuple(ranks)} and max_rank {max_rank} must be >= 1.')
  same_pid = q_pids[:, None] == g_pids[None, :]
  if q_camids is not None:
    q_camids = np.asarray(q_camids)
    g_camids = np.asarray(g_camids)
    if q_camids.shape != q_pids.shape or g_camids.shape != g_pids.shape:
      raise ValueError(
        f"chance_levels: camids must match the pids' shapes, got q {q_camids.shape} vs "
        f'{q_pids.shape} and g {g_camids.shape} vs {g_pids.shape}.'
      )
    removed = same_pid & (q_camids[:, None] == g_camids[None, :])
  else:
    removed = np.zeros_like(same_pid)
  num_pos = (same_pid & ~removed).sum(axis=1)
  num_cand = g_pids.size - removed.sum(axis=1)
  valid = num_pos > 0
  if not valid.any():
    raise ValueError(
      'chance_levels: no query has a matching gallery item; check that q_pids and g_pids use '
      'the same identity labels.'
    )
  # Queries only differ through (G, m), and there are few distinct pairs.
  pairs, counts = np.unique(
    np.stack([num_cand[valid], num_pos[valid]], axis=1), axis=0, return_counts=True
  )
  big_g = pairs[:, 0].astype(np.float64)[:, None]
  m = pairs[:, 1].astype(np.float64)[:, None]
  weights = counts / counts.sum()

  horizon = max(max_rank, max(ranks))
  i = np.arange(horizon, dtype=np.float64)[None, :]
  safe_den = np.where(big_g - i > 0, big_g - i, 1.0)
  # Past G − m the miss probability is exactly 0 (every remaining slot is a positive).
  miss_factor = np.where(big_g - i > 0, np.maximum(big_g - m - i, 0.0) / safe_den, 0.0)
  cmc = weights @ (1.0 - np.cumprod(miss_factor, axis=1))

  g1, m1 = big_g[:, 0], m[:, 0]
  harmonic = np.array([math.fsum(1.0 / np.arange(1, int(n) + 1)) for n in g1])
  with np.errstate(divide='ignore', invalid='ignore'):
    expected_ap = np.where(g1 > 1, (m1 - 1) / (g1 - 1) + (g1 - m1) / (g1 - 1) * harmonic / g1, 1.0)
  expected_inp = np.empty_like(g1)
  for idx, (n, k) in enumerate(zip(pairs[:, 0], pairs[:, 1])):
    r = np.arange(k, n + 1, dtype=np.float64)
    log_p_last = _log_comb(r - 1, k - 1) - _log_comb(n, k)
    expected_inp[idx] = float(np.sum(k / r * np.exp(log_p_last)))

  out: dict[str, Any] = {'mAP': float(weights @ expected_ap), 'mINP': float(weights @ expected_inp)}
  for k in ranks:
    out[f'R-{k}'] = float(cmc[int(k) - 1])
  out['num_valid_queries'] = int(valid.sum())
  out['cmc'] = cmc[:max_rank]
  return out


def plot_cmc(
  curves: Mapping[str, np.ndarray],
  path: str | os.PathLike,
  *,
  chance: np.ndarray | None = None,
  title: str | None = None,
) -> str:
  """CMC curves (fractions, ranks 1..len) of several protocols in one PNG; chance dashed."""
  if not curves:
    raise ValueError('plot_cmc: curves is empty; pass {protocol name: cmc array}.')
  fig = Figure(figsize=(6.0, 4.5))
  FigureCanvasAgg(fig)
  ax = fig.add_subplot(1, 1, 1)
  for name, curve in curves.items():
    curve = np.asarray(curve, dtype=np.float64)
    if curve.ndim != 1 or curve.size == 0:
      raise ValueError(
        f'plot_cmc: curve {name!r} must be a non-empty 1-D array, got shape {curve.shape}.'
      )
    ax.plot(np.arange(1, curve.size + 1), 100.0 * curve, marker='.', label=name)
  if chance is not None:
    chance = np.asarray(chance, dtype=np.float64)
    ax.plot(
      np.arange(1, chance.size + 1), 100.0 * chance, linestyle='--', color='gray', label='chance'
    )
  style_cmc_axes(ax, title)
  fig.tight_layout()
  fig.savefig(os.fspath(path), format='png')
  return os.fspath(path)


def style_cmc_axes(ax, title: str | None = None) -> None:
  """The axes of every CMC plot (one run here, several in ``viz.cmc``): labels, range, legend."""
  ax.set_xlabel('rank')
  ax.set_ylabel('matching rate (%)')
  ax.set_ylim(0.0, 102.0)  # headroom so a curve at 100 % stays visible above the frame
  ax.set_title(title or 'CMC')
  ax.grid(True, alpha=0.3)
  ax.legend(loc='lower right')


def _jsonable(value: Any) -> Any:
  if isinstance(value, np.ndarray):
    return value.tolist()
  if isinstance(value, np.generic):
    return value.item()
  if isinstance(value, Path):
    return str(value)
  raise TypeError(
    f'write_results: {type(value).__name__} value {value!r} is not JSON-serialisable; pass '
    'numbers, strings, lists or dicts in results/chance/extra.'
  )


def write_results(
  workdir: str | os.PathLike,
  results: Mapping[str, RankResult | SBIRResult | Mapping[str, Any]],
  *,
  chance: Mapping[str, Any] | None = None,
  extra: Mapping[str, Any] | None = None,
  selected: Mapping[str, Any] | None = None,
) -> dict[str, str]:
  """Write results.json, results.csv, results.md and cmc.png into ``workdir``; return their paths.

  Each result is a ``RankResult``, an ``SBIRResult`` or a dict of metrics holding a ``'cmc'``
  array. ``chance`` is a :func:`chance_levels` (or ``sbir.sbir_chance_levels``) dict (its
  ``'cmc'`` is drawn dashed); ``extra`` is metadata stored in the
  JSON (config name, checkpoint step, …); ``extra['title']``, if present, also titles the plot.
  ``selected`` (``evaluation.selection.Selection.best``: epoch, metric, protocol, label and its
  per-protocol metrics) is stored under ``"selected"`` in the JSON, as a second table in the
  Markdown (:func:`selected_table`) and as rows ``<protocol> [selected epoch E]`` in the CSV;
  ``results`` stay the evaluation just made (the last epoch's).
  """
  if not results:
    raise ValueError('write_results: results is empty; pass {protocol name: RankResult}.')
  rows: dict[str, dict[str, Any]] = {}
  curves: dict[str, np.ndarray] = {}
  for name, result in results.items():
    metrics = _metrics_of(name, result)
    cmc = result.cmc if isinstance(result, (RankResult, SBIRResult)) else metrics.pop('cmc', None)
    if cmc is None:
      raise ValueError(
        f"write_results: results[{name!r}] has no CMC curve; pass the RankResult or add a 'cmc' "
        'array to its dict.'
      )
    curves[name] = np.asarray(cmc, dtype=np.float64)
    rows[name] = metrics
  chance_scalars = None if chance is None else {k: v for k, v in chance.items() if k != 'cmc'}

  # Serialise before touching the disk so a bad value leaves no half-written report.
  payload = {
    'results': {name: {**rows[name], 'cmc': curves[name]} for name in rows},
    'chance': None if chance is None else dict(chance),
    'extra': None if extra is None else dict(extra),
    'selected': None if selected is None else dict(selected),
  }
  json_text = json.dumps(payload, indent=2, default=_jsonable)
  table = format_table(rows, chance=chance_scalars)
  if selected is not None:
    current = None if extra is None else extra.get('step')
    table += '\n' + selected_table(selected, current_step=current)

  out_dir = Path(workdir)
  out_dir.mkdir(parents=True, exist_ok=True)
  paths = {
    key: str(out_dir / name)
    for key, name in (
      ('json', 'results.json'),
      ('csv', 'results.csv'),
      ('md', 'results.md'),
      ('png', 'cmc.png'),
    )
  }
  Path(paths['json']).write_text(json_text)
  Path(paths['md']).write_text(table)

  fieldnames = ['protocol']
  for metrics in rows.values():
    fieldnames += [k for k in metrics if k not in fieldnames]
  with open(paths['csv'], 'w', newline='') as f:
    writer = csv.DictWriter(f, fieldnames=fieldnames)
    writer.writeheader()
    for name, metrics in rows.items():
      writer.writerow({'protocol': name, **{k: _csv_value(v) for k, v in metrics.items()}})
    for name, metrics in ({} if selected is None else selected['results']).items():
      tag = f'{name} [selected epoch {selected["epoch"]}]'
      writer.writerow({'protocol': tag, **{k: _csv_value(metrics.get(k)) for k in fieldnames[1:]}})

  plot_cmc(
    curves,
    paths['png'],
    chance=None if chance is None else chance.get('cmc'),
    title=None if extra is None else extra.get('title'),
  )
  return paths


def selected_table(selected: Mapping[str, Any], *, current_step: int | None = None) -> str:
  """The selected epoch's metrics as a titled Markdown table (``write_results``' ``selected``);
  one line instead when the selection is the evaluation at ``current_step`` itself."""
  title = (
    f'Selected epoch {selected["epoch"]} (step {selected["step"]}): best {selected["metric"]} on '
    f'{selected["protocol"]!r}, {selected["label"]}'
  )
  if selected['step'] == current_step:
    return title + ': the evaluation above.\n'
  return title + '.\n\n' + format_table(selected['results'])


def _csv_value(value: Any) -> Any:
  return value.item() if isinstance(value, np.generic) else value
