"""Model selection across a training's evaluations, reported beside the last epoch's numbers.

The released MM'23 code tests every two epochs and keeps the checkpoint of the best rank-1 *on the
test set* (``if cmc[0] > best_acc``), and papers built on it report that epoch. Such a number is
selected on the data it is reported on, so it is optimistic. We select the same way when asked
(``config.eval.best_metric`` on ``config.eval.best_protocol``; it picks ``<workdir>/best/``), but
every report shows the last epoch's numbers first and the selected epoch's beside them, labelled
for what they are, with the epoch.

Interpretations chosen:

* A later evaluation replaces the selection only when it is strictly better, so ties keep the
  earlier epoch, as the release's ``>`` does.
* The selection is stored in ``<workdir>/selection.json`` after each evaluation, so a resumed run
  continues the comparison where it stopped.
* ``config.eval.best_metric`` is a metric name (``'mAP'``, ``'R-1'``; on an SBIR protocol
  ``'acc@1'``, ``'acc@5'``, ``'acc@10'``, ``'mAP'``) on ``config.eval.best_protocol``, or
  ``'<protocol entry>/<metric>'`` (e.g. ``'sbir/acc@1'``, ``'single_query:A/R-1'``), whose
  protocol then wins over ``best_protocol``. The entry is split at its last ``/`` and must be one
  of ``config.eval.protocols`` as written there. Which names are valid depends on the protocol
  (``protocol_metrics``): re-id protocols offer ``METRICS``, the SBIR one ``sbir.METRICS``.
"""

import json
import os
from collections.abc import Mapping
from typing import Any

from sketchreid_jax.evaluation import sbir
from sketchreid_jax.evaluation.ranking import RankResult
from sketchreid_jax.evaluation.sbir import SBIRResult

SELECTED_LABEL = 'best on the test set, as the reference code selects'
METRICS = ('mAP', 'R-1')  # of the re-id protocols (single_query, multi_query)
# Protocol name (before any ':<styles>') -> the metrics that can select on it; others: METRICS.
PROTOCOL_METRICS: dict[str, tuple[str, ...]] = {'sbir': sbir.METRICS}


def protocol_metrics(protocol: str) -> tuple[str, ...]:
  """The metric names that can select on the protocol entry ``protocol`` ('sbir:A' is 'sbir')."""
  return PROTOCOL_METRICS.get(protocol.partition(':')[0], METRICS)


def parse_best_metric(best_metric: str, protocol: str) -> tuple[str, str]:
  """``config.eval.best_metric`` -> (protocol entry, metric name): ``'acc@1'`` on ``protocol``, or
  ``'sbir/acc@1'`` on 'sbir'. ValueError for a name the protocol does not have, listing its own."""
  spec, slash, name = str(best_metric).rpartition('/')
  if slash and not spec:
    raise ValueError(
      f"config.eval.best_metric={best_metric!r}: nothing before '/'; write '<metric>' or "
      "'<protocol>/<metric>' (e.g. 'sbir/acc@1')."
    )
  protocol = spec if slash else protocol
  allowed = protocol_metrics(protocol)
  if name not in allowed:
    raise ValueError(
      f'config.eval.best_metric={best_metric!r}: {name!r} is not a metric of protocol '
      f'{protocol!r}; choose one of {", ".join(map(repr, allowed))} (or '
      "'<protocol>/<metric>', e.g. 'sbir/acc@1')."
    )
  return protocol, name


def metric_value(result: RankResult | SBIRResult, metric: str) -> float:
  """A protocol's result by a bare metric name (``'mAP'``, ``'R-1'``, ``'acc@K'``), as a fraction."""
  if isinstance(result, SBIRResult):
    if metric not in sbir.METRICS:
      raise ValueError(
        f'config.eval.best_metric: {metric!r} is not a metric of the SBIR protocol; choose one of '
        f'{", ".join(map(repr, sbir.METRICS))}.'
      )
    return float(result.mAP if metric == 'mAP' else result.acc(int(metric.removeprefix('acc@'))))
  if metric not in METRICS:
    raise ValueError(f'config.eval.best_metric must be one of {METRICS}, got {metric!r}.')
  return float(result.mAP if metric == 'mAP' else result.rank(1))


class Selection:
  """The best evaluation so far by ``metric`` on ``protocol``; persisted in ``path``.

  ``metric`` is ``config.eval.best_metric`` as written (kept in ``self.metric``, the key of the
  best checkpoint's metrics); a ``'<protocol>/'`` prefix replaces ``protocol``
  (:func:`parse_best_metric`). ``selection.json`` stores the protocol entry and the bare name.
  """

  def __init__(self, path: str, *, protocol: str, metric: str):
    self.path, self.metric = path, metric
    self.protocol, self.metric_name = parse_best_metric(metric, protocol)
    self.best: dict[str, Any] | None = None
    if os.path.exists(path):
      with open(path) as f:
        stored = json.load(f)
      # A selection made by another rule is not continued: the first new evaluation restarts it.
      if (stored.get('protocol'), stored.get('metric')) == (self.protocol, self.metric_name):
        self.best = stored

  def update(
    self, results: Mapping[str, RankResult | SBIRResult], *, epoch: int, step: int
  ) -> bool:
    """Takes one evaluation; True when it becomes the selection (strictly better, or the first)."""
    if self.protocol not in results:
      raise ValueError(
        f'config.eval.best_metric={self.metric!r} selects on protocol {self.protocol!r}, which '
        f'is not among the evaluated ones {sorted(results)} (config.eval.protocols, as written '
        'there).'
      )
    value = metric_value(results[self.protocol], self.metric_name)
    if self.best is not None and value <= self.best['value']:
      return False
    self.best = {
      'protocol': self.protocol,
      'metric': self.metric_name,
      'value': value,
      'epoch': int(epoch),
      'step': int(step),
      'label': SELECTED_LABEL,
      'results': {name: r.to_dict() for name, r in results.items()},
    }
    tmp = f'{self.path}.{os.getpid()}.tmp'  # every host of a job may write the same workdir
    with open(tmp, 'w') as f:
      json.dump(self.best, f, indent=2, default=lambda v: v.tolist())
    os.replace(tmp, self.path)
    return True
