"""CMC curves of several runs in one figure, read from their workdirs or given as arrays.

``evaluation/report.py`` writes one run's curves to ``<workdir>/cmc.png``; this module compares
runs. A run is a CMC array (fractions, ranks 1..len), a ``RankResult``, or a path: a workdir
holding ``results.json`` (``report.write_results``; ``--mode=evaluate`` writes it to
``<workdir>/evaluate/``) or the ``results.json`` file itself.

Interpretations chosen:

* A ``results.json`` holds one curve per protocol. ``protocol=None`` draws every protocol of every
  run, labelled ``'run: protocol'`` (just ``'run'`` when the file has one protocol); a protocol
  name draws only that protocol and a run without it is an error listing the ones it has.
* Chance curves (``chance=True``) are read from the file: ``extra['chance'][protocol]``
  (``evaluation.evaluate`` stores every protocol's there), else the top-level ``chance``, which
  belongs to the first protocol. Identical chance curves (runs on the same split) are drawn once,
  dashed: grey when there is one, else in the colour of the first curve it belongs to. Arrays and
  ``RankResult`` runs have no chance curve.
* The style (percent axis with headroom to 102, dots, grid, legend at the lower right) is the one
  of ``report.plot_cmc``, which draws a single run's PNG.
"""

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from sketchreid_jax.evaluation import report
from sketchreid_jax.evaluation.ranking import RankResult

__all__ = ['load_cmc', 'plot_cmc_runs']

RESULTS_FILE = 'results.json'


def _results_path(source: str | os.PathLike) -> Path:
  path = Path(source)
  if path.is_dir():
    path = path / RESULTS_FILE
  if not path.is_file():
    raise FileNotFoundError(
      f'{path}: no results file; pass a workdir that an evaluation has written '
      f'{RESULTS_FILE} to (training or --mode=evaluate, which writes <workdir>/evaluate/), or '
      'the results.json file itself.'
    )
  return path


def _curve(value: Any, where: str) -> np.ndarray:
  curve = np.asarray(value, dtype=np.float64)
  if curve.ndim != 1 or curve.size == 0 or not np.all(np.isfinite(curve)):
    raise ValueError(f'{where}: a CMC curve must be a non-empty finite 1-D array, got {curve!r}.')
  return curve


def load_cmc(
  source: str | os.PathLike, *, protocol: str | None = None
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
  """({protocol: cmc}, {protocol: chance cmc}) from a workdir or a results.json file.

  ``protocol`` keeps only that protocol (an error listing the file's protocols if absent). The
  chance dict has the protocols whose chance curve the file records.
  """
  path = _results_path(source)
  try:
    payload = json.loads(path.read_text())
    results = payload['results']
  except (json.JSONDecodeError, KeyError, TypeError) as e:
    raise ValueError(
      f'{path}: not a results file of evaluation.report.write_results ({e!r}); rerun the '
      'evaluation (--mode=evaluate) to rewrite it.'
    ) from None
  if protocol is not None:
    if protocol not in results:
      raise KeyError(f'{path}: no protocol {protocol!r}; it has {sorted(results)}.')
    results = {protocol: results[protocol]}
  curves = {}
  for name, metrics in results.items():
    if not isinstance(metrics, Mapping) or 'cmc' not in metrics:
      raise ValueError(f"{path}: results[{name!r}] has no 'cmc' curve.")
    curves[name] = _curve(metrics['cmc'], f'{path}: results[{name!r}]')
  per_protocol = ((payload.get('extra') or {}).get('chance')) or {}
  first = next(iter(payload['results']))
  chances = {}
  for name in curves:
    entry = per_protocol.get(name) or (payload.get('chance') if name == first else None)
    if isinstance(entry, Mapping) and 'cmc' in entry:
      chances[name] = _curve(entry['cmc'], f'{path}: chance of {name!r}')
  return curves, chances


def _run_curves(name: str, source: Any, protocol: str | None):
  if isinstance(source, RankResult):
    return {name: _curve(source.cmc, f'runs[{name!r}]')}, {}
  if isinstance(source, (str, os.PathLike)):
    curves, chances = load_cmc(source, protocol=protocol)
    if len(curves) == 1:
      (only,) = curves
      return {name: curves[only]}, {name: chances[only]} if only in chances else {}
    label = {p: f'{name}: {p}' for p in curves}
    return {label[p]: c for p, c in curves.items()}, {label[p]: c for p, c in chances.items()}
  return {name: _curve(source, f'runs[{name!r}]')}, {}


def plot_cmc_runs(
  runs: Mapping[str, Any],
  *,
  protocol: str | None = None,
  chance: bool = True,
  max_rank: int | None = None,
  title: str | None = None,
) -> Figure:
  """CMC curves of several runs in one figure: ``{'run name': cmc array | RankResult | path}``.

  ``max_rank`` cuts the curves (default: their full length); see the module docstring for paths,
  protocols and chance curves.
  """
  if not runs:
    raise ValueError('plot_cmc_runs: runs is empty; pass {run name: cmc array or workdir}.')
  if max_rank is not None and max_rank < 1:
    raise ValueError(f'plot_cmc_runs: max_rank must be >= 1, got {max_rank}.')
  curves: dict[str, np.ndarray] = {}
  chances: list[tuple[np.ndarray, str]] = []  # (unique chance curve, the first curve it belongs to)
  for name, source in runs.items():
    run_curves, run_chances = _run_curves(name, source, protocol)
    curves.update(run_curves)
    for owner, c in run_chances.items():
      if not any(c.shape == seen.shape and np.allclose(c, seen) for seen, _ in chances):
        chances.append((c, owner))
  fig = Figure(figsize=(6.0, 4.5))
  FigureCanvasAgg(fig)
  ax = fig.add_subplot(1, 1, 1)
  colours = {}
  for label, curve in curves.items():
    curve = curve[:max_rank]
    (line,) = ax.plot(np.arange(1, curve.size + 1), 100.0 * curve, marker='.', label=label)
    colours[label] = line.get_color()
  for c, owner in chances if chance else []:
    c = c[:max_rank]
    # One chance level: grey, as report.plot_cmc; several: each in its run's colour.
    single = len(chances) == 1
    ax.plot(
      np.arange(1, c.size + 1),
      100.0 * c,
      linestyle='--',
      color='gray' if single else colours[owner],
      label='chance' if single else f'chance ({owner})',
    )
  report.style_cmc_axes(ax, title)
  fig.tight_layout()
  return fig
