"""Checkpoints: the orbax managers of a workdir, restore-latest, and moving corrupt steps aside.

* A run resumes from the newest restorable step of ``checkpoints/``; three steps are kept, so that
  a corrupt newest one still leaves an older one.
* A step folder that does not restore (unreadable or missing files, or non-finite arrays) while an
  older one does is moved aside to ``checkpoints/corrupt-<step>/`` (nothing is deleted) and the run
  resumes from the older step with a warning. If no step restores, nothing is moved and the error
  says so (most often the config changed since the run started).
"""

import gc
import logging
import os

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)


def managers(workdir: str, config):
  """(latest, best) orbax managers of a workdir's ``checkpoints/`` and ``best/``."""
  # Three kept steps, so that a corrupt newest one still leaves an older one to resume from;
  # orbax's own temporary folders of a save that was killed are removed. The explicit handler
  # fixes the layout (one item, 'default'): otherwise orbax infers it from a step folder, and a
  # partial one would make every step unreadable.
  latest = ocp.CheckpointManager(
    os.path.join(os.path.abspath(workdir), 'checkpoints'),
    options=ocp.CheckpointManagerOptions(max_to_keep=3, create=True, cleanup_tmp_directories=True),
    item_handlers=ocp.StandardCheckpointHandler(),
  )
  # Only a new selection is saved here (evaluation/selection.py), so best/ holds exactly the
  # selected epoch; best_fn orders the saves by the same metric. A save made under another
  # eval.best_metric (a resumed run whose rule changed) ranks last, so the new rule's replaces it.
  metric = 'mAP' if config is None else config.eval.best_metric  # None: only resuming matters
  best = ocp.CheckpointManager(
    os.path.join(os.path.abspath(workdir), 'best'),
    options=ocp.CheckpointManagerOptions(
      max_to_keep=1,
      create=True,
      best_fn=lambda m: m.get(metric, float('-inf')),
      best_mode='max',
    ),
    item_handlers=ocp.StandardCheckpointHandler(),
  )
  return latest, best


def state_to_save(state) -> dict:
  """The part of a TrainState a checkpoint holds (the frozen variables are rebuilt, not saved)."""
  return {
    'params': state.params,
    'batch_stats': state.batch_stats,
    'opt_state': state.opt_state,
    'step': state.step,
  }


class CheckpointError(RuntimeError):
  """No step of a checkpoint folder can be restored into this config's state."""


def _try_restore(manager, step: int, target: dict) -> tuple[dict | None, str]:
  """(restored state, '') or (None, why it failed) for one step of ``manager``."""
  # A failed tensorstore read also logs the traceback of each of its async reads when their
  # futures are collected; the one line we return says it.
  logger = logging.getLogger('asyncio')
  level = logger.level
  logger.setLevel(logging.CRITICAL)
  try:
    try:
      restored = manager.restore(step, args=ocp.args.StandardRestore(target))
      _check_restored(restored)
      return restored, ''
    except Exception as e:  # any failure to read a step makes that step unusable
      reason = _first_line(e)
    gc.collect()
    return None, reason
  finally:
    logger.setLevel(level)


def _first_line(error: BaseException, limit: int = 200) -> str:
  lines = str(error).strip().splitlines()
  text = f'{type(error).__name__}: {lines[0] if lines else ""}'
  return text if len(text) <= limit else text[: limit - 3] + '...'


def _check_restored(restored: dict) -> None:
  bad = [
    jax.tree_util.keystr(path)
    for path, x in jax.tree_util.tree_leaves_with_path(restored)
    if jnp.issubdtype(jnp.asarray(x).dtype, jnp.floating) and not bool(jnp.isfinite(x).all())
  ]
  if bad:
    raise FloatingPointError(f'non-finite values in {", ".join(bad[:3])}')


def _move_aside(manager, step: int, reason: str, good_step: int) -> None:
  directory = os.fspath(manager.directory)
  source = os.path.join(directory, str(step))
  target = os.path.join(directory, f'corrupt-{step}')
  n = 1
  while os.path.exists(target):
    target, n = os.path.join(directory, f'corrupt-{step}-{n}'), n + 1
  if jax.process_index() == 0:
    os.rename(source, target)
  log.warning(
    'checkpoint step %d in %s cannot be restored (%s); moved it to %s and resuming from step %d',
    step,
    directory,
    reason,
    target,
    good_step,
  )


def restore_latest(manager, state):
  """``state`` updated from the newest restorable step of ``manager`` (unchanged if it has none).

  Newer steps that fail to restore while an older one succeeds are moved aside to
  ``corrupt-<step>/`` with a warning; if every step fails, :class:`CheckpointError` is raised and
  nothing is moved (that is what a changed config looks like, not corruption).
  """
  target = state_to_save(state)
  failed: list[tuple[int, str]] = []
  for step in sorted(manager.all_steps(), reverse=True):
    restored, reason = _try_restore(manager, step, target)
    if restored is None:
      failed.append((step, reason))
      continue
    for bad, reason in failed:
      _move_aside(manager, bad, reason, step)
    if failed:
      if jax.process_count() > 1:  # every process sees the folders moved before going on
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices('restore_latest')
      manager.reload()
    log.info('resumed from %s at step %d', manager.directory, step)
    return state.replace(**restored)
  if failed:
    raise CheckpointError(
      f'no checkpoint in {manager.directory} can be restored ('
      + '; '.join(f'step {s}: {r}' for s, r in failed)
      + '). If the config changed since this run started, rerun with the original config or use '
      'a new --workdir; nothing was moved.'
    )
  return state
