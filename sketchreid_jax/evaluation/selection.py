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
"""

import json
import os
from collections.abc import Mapping
from typing import Any

from sketchreid_jax.evaluation.ranking import RankResult

SELECTED_LABEL = 'best on the test set, as the reference code selects'
METRICS = ('mAP', 'R-1')


def metric_value(result: RankResult, metric: str) -> float:
  """``'mAP'`` or ``'R-1'`` of a protocol's result, as a fraction."""
  if metric not in METRICS:
    raise ValueError(f"config.eval.best_metric must be one of {METRICS}, got {metric!r}.")
  return float(result.mAP if metric == 'mAP' else result.rank(1))


class Selection:
  """The best evaluation so far by ``metric`` on ``protocol``; persisted in ``path``."""

  def __init__(self, path: str, *, protocol: str, metric: str):
    self.path, self.protocol, self.metric = path, protocol, metric
    self.best: dict[str, Any] | None = None
    if os.path.exists(path):
      with open(path) as f:
        stored = json.load(f)
      # A selection made by another rule is not continued: the first new evaluation restarts it.
      if (stored.get('protocol'), stored.get('metric')) == (protocol, metric):
        self.best = stored

  def update(self, results: Mapping[str, RankResult], *, epoch: int, step: int) -> bool:
    """Takes one evaluation; True when it becomes the selection (strictly better, or the first)."""
    value = metric_value(results[self.protocol], self.metric)
    if self.best is not None and value <= self.best['value']:
      return False
    self.best = {
      'protocol': self.protocol,
      'metric': self.metric,
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
