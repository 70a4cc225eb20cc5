"""Non-finite losses and gradients: 'stop' names the step and the term and keeps the last good
checkpoint; 'skip' leaves the state exactly as it was before the faulty step.

The fault is injected through the batch: a test method (the baseline's model and losses, plus two
switches) reads a marker that a wrapped ``train._host_batch`` writes into the modality flags of one
chosen step (the baseline's model and losses never read them). Marker 7 multiplies the metric term by
NaN (loss and gradients non-finite); marker 8 takes the square root of zero times the features in a
term of weight 0 (a finite loss of 0, but its gradient 0·∞ = NaN). Every run compiles the same step,
and the step does not depend on ``train.on_nonfinite``, so the file compiles it once.
"""

import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from sketchreid_jax import methods, train
from sketchreid_jax.config_base import load_config
from sketchreid_jax.methods import baseline
from tests.conftest import REPO

NAN_LOSS, NAN_GRAD = 7, 8


def _poisoned_losses(outputs, batch, config):
  terms = baseline.losses_for(outputs, batch, config)
  marker = batch['modality']
  weight, metric = terms['metric']
  terms['metric'] = (weight, metric * jnp.where(jnp.any(marker == NAN_LOSS), jnp.nan, 1.0))
  scale = jnp.where(jnp.any(marker == NAN_GRAD), 0.0, 1.0)
  terms['probe'] = (0.0, jnp.sqrt(scale * jnp.sum(jnp.square(outputs['feat']))))
  return terms


@pytest.fixture
def faulty_run(monkeypatch, tiny_market, tfds_cache, tmp_path):
  """``run(faults, on_nonfinite, checkpoint_every_steps)`` trains one epoch (13 steps) of the tiny
  demo with ``faults = {step (1-based): marker}``; returns the workdir."""
  method = methods.Method(
    name='poisoned', model_for=baseline.model_for, losses_for=_poisoned_losses
  )
  monkeypatch.setitem(methods.METHODS, 'poisoned', method)

  def run(faults, on_nonfinite, checkpoint_every_steps=1):
    calls = []
    host_batch = train._host_batch

    def marked(batch, train_set, method):
      out = host_batch(batch, train_set, method)
      calls.append(None)  # one call per step, in order, from step 1 (nothing to resume)
      if len(calls) in faults:
        out['modality'] = np.full_like(out['modality'], faults[len(calls)])
      return out

    monkeypatch.setattr(train, '_host_batch', marked)
    config = load_config(os.path.join(REPO, 'configs/demo.py:tiny'))
    config.method = 'poisoned'
    config.data.root, config.data.cache_dir = tiny_market, tfds_cache
    config.train.epochs, config.train.checkpoint_every_steps = 1, checkpoint_every_steps
    config.train.progress_bar, config.train.on_nonfinite = False, on_nonfinite
    config.eval.protocols = ('single_query:A',)
    workdir = str(tmp_path / on_nonfinite)
    train.train_and_evaluate(config, workdir)
    return workdir

  return run


def _checkpoint(workdir, step):
  path = os.path.join(workdir, 'checkpoints', str(step), 'default')
  return jax.device_get(ocp.StandardCheckpointer().restore(path))


def _steps(workdir):
  return sorted(int(n) for n in os.listdir(os.path.join(workdir, 'checkpoints')) if n.isdigit())


def test_stop_names_step_and_term_and_keeps_the_last_good_checkpoint(faulty_run, tmp_path):
  with pytest.raises(train.NonFiniteError) as error:
    faulty_run({3: NAN_LOSS}, 'stop')
  message = str(error.value)
  assert 'at step 3' in message and 'loss/metric' in message and 'grad_norm' in message
  assert 'loss/id' not in message and 'loss/probe' not in message  # the finite terms
  assert '\n' not in message
  workdir = str(tmp_path / 'stop')
  assert _steps(workdir) == [1, 2]  # nothing after the faulty step
  state = _checkpoint(workdir, 2)
  assert int(state['step']) == 2
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(state))


def test_skip_keeps_params_optimiser_and_batchnorm_state_bitwise(faulty_run, caplog):
  # A gradient-only fault at step 2; a loss fault at the epoch's last step, with checkpoints after
  # step 12 and at the epoch's end (13) around it.
  with caplog.at_level(logging.WARNING):
    workdir = faulty_run({2: NAN_GRAD, 13: NAN_LOSS}, 'skip', checkpoint_every_steps=12)
  assert _steps(workdir) == [12, 13]
  before, skipped = _checkpoint(workdir, 12), _checkpoint(workdir, 13)
  assert int(skipped['step']) == 13  # the counter moves on, so data and keys stay aligned
  for key in ('params', 'opt_state', 'batch_stats'):
    for x, y in zip(jax.tree.leaves(before[key]), jax.tree.leaves(skipped[key])):
      np.testing.assert_array_equal(x, y, err_msg=key)
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(skipped))
  warnings = [r.getMessage() for r in caplog.records if 'non-finite step' in r.getMessage()]
  # Read before the save after step 12, then at the epoch's log step.
  assert warnings == [
    'skipped 1 non-finite step(s), their updates not applied: 2 (grad_norm)',
    'skipped 1 non-finite step(s), their updates not applied: 13 (grad_norm, loss, loss/metric)',
  ]
  # The metrics count them: TensorBoard's 'skipped' at step 13 (the epoch's only log step) is 2.
  assert _scalars(workdir, 'skipped') == {13: 2.0}


def _scalars(workdir, tag):
  import tensorflow as tf

  out = {}
  for name in os.listdir(workdir):
    if name.startswith('events.out.tfevents'):
      for event in tf.compat.v1.train.summary_iterator(os.path.join(workdir, name)):
        for value in event.summary.value:
          if value.tag == tag:
            out[event.step] = float(tf.make_ndarray(value.tensor))
  return out
