"""Training: ``train_and_evaluate(config, workdir)`` and the small pure pieces it is made of.

This is the only module that wires a model, its losses and the optimiser together, through the
method registry (``sketchreid_jax.methods``). The per-device step :func:`train_step` is written once;
``parallel.make_launcher`` compiles it for all devices (DESIGN §6).

Workdir contents: ``config.json``, ``train_meta.json`` (label ↔ identity map, steps per epoch),
``checkpoints/`` (latest, orbax), ``best/`` (best by mAP), TensorBoard event files, and after each
evaluation ``results.{json,csv,md}`` and ``cmc.png``.

Resumption and faults (the choices made):

* A run resumes from the newest restorable step of ``checkpoints/``. Everything a step depends on is
  a function of (seed, epoch, step) or is in the checkpoint: the P×K plan of an epoch, each image's
  augmentation, the step's random keys (``fold_in(seed, step)``), params, optimiser and BatchNorm
  state. A resumed run therefore computes the same steps as an uninterrupted one (bitwise on CPU).
* A step folder that does not restore (unreadable or missing files, or non-finite arrays) while an
  older one does is moved aside to ``checkpoints/corrupt-<step>/`` (nothing is deleted) and the run
  resumes from the older step with a warning. If no step restores, nothing is moved and the error
  says so (most often the config changed since the run started).
* Non-finite values: the step computes, without a host round trip, one verdict from its averaged
  loss terms, total loss and gradient norm; a non-finite step is not applied (params, optimiser
  state and BatchNorm statistics keep their previous values, only the step counter advances so that
  the data and random keys stay aligned with it) and reports ``skipped = 1``. The host reads the
  metrics of every step before each checkpoint save and at each log step: with
  ``train.on_nonfinite='stop'`` (default) the first such step stops training with an error naming
  it and its non-finite terms before anything later is saved; with ``'skip'`` training goes on and a
  warning lists the skipped steps. A skipped step does not advance the optimiser's own step count.
"""

import dataclasses
import functools
import gc
import json
import logging
import os
import queue
import threading
import time
from typing import Any, Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from clu import metric_writers
from flax import traverse_util
from flax.training import train_state
from tqdm.auto import tqdm

from sketchreid_jax import datasets
from sketchreid_jax.datasets import attributes as attributes_lib
from sketchreid_jax.datasets import masks as masks_lib
from sketchreid_jax import evaluate as evaluate_lib
from sketchreid_jax import input_pipeline
from sketchreid_jax import parallel
from sketchreid_jax import validate as validate_lib
from sketchreid_jax.evaluation.selection import Selection
from sketchreid_jax.methods import Method, get_method
from sketchreid_jax.weights import pretrained

log = logging.getLogger(__name__)


class TrainState(train_state.TrainState):
  batch_stats: Any = None
  # Variables of frozen networks the step runs (``Method.frozen_for``); never updated or saved.
  frozen: Any = None


# ----------------------------------------------------------------------------- optimiser


def lr_schedule(config: ml_collections.ConfigDict, steps_per_epoch: int, base_lr: float):
  """The epoch-wise step schedule of DESIGN §4 as a function of the global step.

  For epoch e: base·(e+1)/warmup for e < warmup, then base × gamma^(number of milestones ≤ e).
  """
  s = config.schedule
  milestones = jnp.asarray(s.milestones, jnp.int32)

  def schedule(step):
    epoch = step // steps_per_epoch
    warm = jnp.minimum((epoch + 1) / max(s.warmup_epochs, 1), 1.0)
    decay = s.gamma ** jnp.sum(epoch >= milestones)
    return base_lr * warm * decay

  return schedule


def param_groups(params, head_modules, frozen_paths=()) -> Any:
  """Labels each parameter 'head' (full lr), 'backbone' (lr × backbone_lr_mult) or 'frozen'.

  ``frozen_paths`` are '/'-joined parameter paths (or path prefixes) that must not change at all
  (``Method.frozen_params``): a stopped gradient is not enough, since coupled weight decay and
  momentum would still move them, so their group's transformation is ``optax.set_to_zero``.
  """
  present = [m for m in head_modules if m in params]
  if not present:
    raise ValueError(
      f'config.optim.head_modules={tuple(head_modules)} matches none of the model\'s '
      f'parameter collections {sorted(params)}'
    )
  flat = traverse_util.flatten_dict(params, sep='/')
  unmatched = [f for f in frozen_paths if not any(_under(k, f) for k in flat)]
  if unmatched:
    raise ValueError(
      f'frozen parameters {unmatched} are not in the model (its parameters: '
      f'{sorted(flat)[:8]}...); the method\'s frozen_params names a path that does not exist.'
    )

  def label(path: str) -> str:
    if any(_under(path, f) for f in frozen_paths):
      return 'frozen'
    return 'head' if path.split('/')[0] in head_modules else 'backbone'

  return traverse_util.unflatten_dict({k: label(k) for k in flat}, sep='/')


def _under(path: str, prefix: str) -> bool:
  return path == prefix or path.startswith(prefix + '/')


def _sgd(o, lr):
  # Coupled L2 before momentum, as torch.optim.SGD(weight_decay=…) in the reference code.
  return optax.chain(
    optax.add_decayed_weights(o.weight_decay),
    optax.sgd(lr, momentum=o.momentum, nesterov=o.nesterov),
  )


def _adamw(o, lr):
  return optax.adamw(lr, b1=o.momentum, weight_decay=o.weight_decay)


# config.optim.name -> (optim config, learning-rate schedule) -> transformation
OPTIMIZERS = {'sgd': _sgd, 'adamw': _adamw}


def make_optimizer(config, steps_per_epoch: int, params) -> optax.GradientTransformation:
  o = config.optim
  if o.name not in OPTIMIZERS:
    raise ValueError(f'unknown config.optim.name {o.name!r}; known: {sorted(OPTIMIZERS)}')
  build = OPTIMIZERS[o.name]
  tx = optax.multi_transform(
    {
      'head': build(o, lr_schedule(config, steps_per_epoch, o.lr)),
      'backbone': build(o, lr_schedule(config, steps_per_epoch, o.lr * o.backbone_lr_mult)),
      'frozen': optax.set_to_zero(),
    },
    param_groups(params, o.head_modules, get_method(config.method).frozen_params(config)),
  )
  if o.grad_clip_norm < 0:
    raise ValueError(f'config.optim.grad_clip_norm must be >= 0 (0 = off), got {o.grad_clip_norm}')
  if o.grad_clip_norm and not o.clip_per_term:  # per term: train_step clips before this
    # One global norm over every clipped parameter, before the update (the logged grad_norm is
    # pre-clip). ``optim.clip_exempt`` modules are left out of it: a classifier that only the
    # identity loss trains must not be slowed because another term's gradient is large elsewhere.
    tx = optax.chain(_clip(params, o.grad_clip_norm, tuple(o.get('clip_exempt', ()))), tx)
  return tx


def _clip(params, max_norm: float, exempt: tuple[str, ...]) -> optax.GradientTransformation:
  clip = optax.clip_by_global_norm(max_norm)
  if not exempt:
    return clip
  # As head_modules: an ablation may lack some of them (no MIA, no mia_bnneck), not all.
  if not any(m in params for m in exempt):
    raise ValueError(
      f'config.optim.clip_exempt={exempt} matches none of the model\'s parameter collections '
      f'{sorted(params)}.'
    )
  labels = {
    k: jax.tree.map(lambda _: 'free' if k in exempt else 'clip', v) for k, v in params.items()
  }
  return optax.multi_transform({'clip': clip, 'free': optax.identity()}, labels)


def create_train_state(config, model, steps_per_epoch: int, rng, frozen=None) -> TrainState:
  h, w = config.data.image_size
  dummy = jnp.zeros((1, h, w, 3), jnp.float32)
  # Read before the (long) init, so a missing file fails at once.
  ckpt = config.model.init_checkpoint
  resnet = pretrained.read_backbone_checkpoint(ckpt) if ckpt else None
  variables = jax.jit(functools.partial(model.init, train=False))(rng, dummy, dummy)
  if resnet is not None:  # the ImageNet ResNet-50 into every stream; the heads stay fresh
    variables, report = pretrained.load_pretrained_backbone(variables, resnet, model)
    log.info('init_checkpoint %s:\n%s', ckpt, report)
  params = variables['params']
  return TrainState.create(
    apply_fn=model.apply,
    params=params,
    batch_stats=variables.get('batch_stats', {}),
    tx=make_optimizer(config, steps_per_epoch, params),
    frozen=frozen,
  )


# ----------------------------------------------------------------------------- the step


def train_step(state: TrainState, batch: dict, *, model, method: Method, config):
  """One optimiser step on this device's shard ``[photos | sketches]`` of the batch.

  Collectives over ``parallel.AXIS``: the losses see the all-gathered global batch, gradients and
  metrics are averaged, BatchNorm statistics are synchronised inside the model.
  """
  if method.prepare is not None:
    batch = method.prepare(dict(batch), state.frozen, config)
  model_kwargs = {k: batch[k] for k in method.model_inputs if k in batch}
  if 'sketch_set' in batch:  # multi-query training: 'image' holds the photos only
    photos, sketches = batch['image'], batch['sketch_set']
    model_kwargs['sketch_valid'] = batch['sketch_valid']
  else:
    half = batch['image'].shape[0] // 2
    photos, sketches = batch['image'][:half], batch['image'][half:]
  global_batch = {k: parallel.all_gather(batch[k]) for k in ('label', 'modality')}
  rng = jax.random.fold_in(jax.random.key(config.seed), state.step)
  # Each device draws its own randomness (e.g. CMAlign's pairing) for its own rows.
  device_rng = jax.random.fold_in(rng, jax.lax.axis_index(parallel.AXIS))

  def forward(params):
    outputs, mutated = model.apply(
      {'params': params, 'batch_stats': state.batch_stats},
      photos,
      sketches,
      train=True,
      mutable=['batch_stats'],
      rngs={
        'dropout': jax.random.fold_in(device_rng, 0),
        'cmalign': jax.random.fold_in(device_rng, 1),
      },
      **model_kwargs,
    )
    outputs = dict(outputs)
    for key in method.global_outputs:
      if key in outputs:  # an ablation may not compute every output
        outputs[key] = jax.tree.map(parallel.all_gather, outputs[key])
    return outputs, mutated['batch_stats']

  o = config.optim
  if o.grad_clip_norm and o.clip_per_term:
    grads, batch_stats, metrics = _per_term_clipped_grads(
      forward, state.params, lambda out: method.losses_for(out, global_batch, config), o
    )
  else:

    def loss_fn(params):
      outputs, batch_stats = forward(params)
      terms = method.losses_for(outputs, global_batch, config)
      total = sum(weight * value for weight, value in terms.values())
      return total, (batch_stats, {f'loss/{name}': value for name, (_, value) in terms.items()})

    (loss, (batch_stats, metrics)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      state.params
    )
    grads = parallel.pmean(grads)
    metrics = dict(metrics, loss=loss, grad_norm=optax.tree.norm(grads))
  metrics = parallel.pmean(metrics)
  # One verdict on averaged values: a NaN on any device reaches every device's copy, so the
  # replicated state stays identical. A non-finite gradient element makes grad_norm non-finite.
  finite = jnp.all(jnp.stack([jnp.isfinite(v) for v in jax.tree.leaves(metrics)]))
  new = state.apply_gradients(grads=grads, batch_stats=batch_stats)
  keep = lambda updated, old: jax.tree.map(lambda u, o: jnp.where(finite, u, o), updated, old)
  state = new.replace(
    params=keep(new.params, state.params),
    opt_state=keep(new.opt_state, state.opt_state),
    batch_stats=keep(new.batch_stats, state.batch_stats),
  )
  return state, dict(metrics, skipped=1.0 - finite.astype(jnp.float32))


def _per_term_clipped_grads(forward, params, terms_fn, o):
  """Gradients with each loss term clipped on its own (``optim.clip_per_term``).

  One forward pass, one backward pass per term: term t's gradient g_t (averaged over devices)
  is scaled to norm ≤ ``optim.grad_clip_norm`` over the clipped parameters (all but
  ``optim.clip_exempt``), and the scaled gradients are summed. Why: with one global clip, a term
  whose gradient is large and uninformative (DALNet's circle terms from scratch: norms of 200–300
  against 4 for the identity loss, at the point where every pair has the same similarity) scales
  every other term's update down with it, 40–60× here, and the identity loss never leaves chance.
  Per term, each keeps at most the clip's share. Returns (grads, batch_stats, metrics); the
  metrics add ``grad_norm/<term>``, each term's norm before its clip, and ``grad_norm`` is the
  norm of the unclipped sum as in the global mode.
  """
  outputs, backward, batch_stats = jax.vjp(forward, params, has_aux=True)
  terms = terms_fn(outputs)
  names = list(terms)
  weighted, terms_backward = jax.vjp(
    lambda out: jnp.stack([w * v for w, v in terms_fn(out).values()]), outputs
  )
  exempt = tuple(o.clip_exempt)
  clipped = lambda tree: {k: v for k, v in tree.items() if k not in exempt}
  total, raw, metrics = None, None, {}
  for i, name in enumerate(names):
    (g_out,) = terms_backward(jnp.zeros_like(weighted).at[i].set(1.0))
    (g,) = backward(g_out)
    g = parallel.pmean(g)
    norm = optax.tree.norm(clipped(g))
    metrics[f'grad_norm/{name}'] = norm
    scale = jnp.minimum(1.0, o.grad_clip_norm / jnp.maximum(norm, 1e-12))
    g_scaled = {k: v if k in exempt else jax.tree.map(lambda x: x * scale, v) for k, v in g.items()}
    raw = g if raw is None else jax.tree.map(jnp.add, raw, g)
    total = g_scaled if total is None else jax.tree.map(jnp.add, total, g_scaled)
  metrics |= {f'loss/{name}': value for name, (_, value) in terms.items()}
  metrics |= {'loss': jnp.sum(weighted), 'grad_norm': optax.tree.norm(raw)}
  return total, batch_stats, metrics


# ----------------------------------------------------------------------------- checkpoints


def _checkpoint_managers(workdir: str, config):
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


def _state_to_save(state: TrainState) -> dict:
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


def restore_latest(manager, state: TrainState) -> TrainState:
  """``state`` updated from the newest restorable step of ``manager`` (unchanged if it has none).

  Newer steps that fail to restore while an older one succeeds are moved aside to
  ``corrupt-<step>/`` with a warning; if every step fails, :class:`CheckpointError` is raised and
  nothing is moved (that is what a changed config looks like, not corruption).
  """
  target = _state_to_save(state)
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


# ----------------------------------------------------------------------------- input


def _prefetch(iterator: Iterator, put, size: int) -> Iterator:
  """Moves the next ``size`` batches to the devices in a background thread while the step runs."""
  q: queue.Queue = queue.Queue(maxsize=max(size, 1))
  done = object()

  def producer():
    try:
      for item in iterator:
        q.put(put(item))
    except BaseException as e:  # re-raised in the consumer so a data error stops training
      q.put(e)
    q.put(done)

  threading.Thread(target=producer, daemon=True).start()
  while (item := q.get()) is not done:
    if isinstance(item, BaseException):
      raise item
    yield item


def load_data(config):
  """(table, train set, precomputed masks or None) for ``config.data``."""
  table = datasets.load(config.data)
  train_set = input_pipeline.make_train_set(table, config.data.train_styles)
  masks = None
  if masks_lib.resolve_mask_source(config.data) == 'precomputed':
    masks = masks_lib.load_masks(
      table, np.concatenate(train_set.photo_index_by_label), config.data.mask_set
    )
  if config.data.attribute_noise:
    if train_set.attributes is None:
      raise ValueError(
        f'config.data.attribute_noise={config.data.attribute_noise} but {config.data.root} has no '
        'attributes (market_attribute.mat); set it to 0.'
      )
    train_set = dataclasses.replace(
      train_set,
      attributes=attributes_lib.corrupt_attributes(
        train_set.attributes, config.data.attribute_noise, config.seed
      ),
    )
  return table, train_set, masks


# ----------------------------------------------------------------------------- the loop


def _host_batch(batch: dict, train_set, method: Method) -> dict[str, np.ndarray]:
  """The arrays the step needs from a pipeline batch (attributes looked up per row if wanted)."""
  out = {
    k: batch[k] for k in ('image', 'label', 'modality', 'sketch_set', 'sketch_valid') if k in batch
  }
  if 'mask' in batch and 'mask' in method.model_inputs:
    out['mask'] = batch['mask']
  if 'attributes' in method.model_inputs and train_set.attributes is not None:
    out['attributes'] = train_set.attributes[batch['label']].astype(np.int32)
  return out


def _write_meta(workdir, config, train_set, steps_per_epoch):
  with open(os.path.join(workdir, 'config.json'), 'w') as f:
    f.write(config.to_json_best_effort(indent=2))
  meta = {
    'num_classes': int(train_set.num_classes),
    'steps_per_epoch': int(steps_per_epoch),
    'label_to_pid': [int(p) for p in train_set.pids],
  }
  with open(os.path.join(workdir, 'train_meta.json'), 'w') as f:
    json.dump(meta, f, indent=2)


class NonFiniteError(FloatingPointError):
  """A training step's loss terms or gradients were not finite (``train.on_nonfinite='stop'``)."""


def _fetch_and_check(unchecked: list, on_nonfinite: str, directory: str) -> list:
  """Host copies ``[(step, {name: float})]`` of the steps' metrics, checked for skipped steps.

  ``'stop'``: raises :class:`NonFiniteError` at the first skipped step; ``'skip'``: logs them.
  """
  if not unchecked:
    return []
  fetched = jax.device_get([m for _, m in unchecked])
  out, skipped = [], []
  for (step, _), metrics in zip(unchecked, fetched):
    # pmap metrics carry a leading device axis of equal values.
    metrics = {k: float(np.asarray(v).reshape(-1)[0]) for k, v in metrics.items()}
    out.append((step, metrics))
    if metrics['skipped'] > 0:
      terms = ', '.join(sorted(k for k, v in metrics.items() if not np.isfinite(v)))
      if on_nonfinite != 'skip':
        raise NonFiniteError(
          f'non-finite {terms} at step {step}: training stopped; that step was not applied and '
          f'nothing after it was saved to {directory}, whose checkpoints stay as they were. Lower '
          'config.optim.lr or set config.optim.grad_clip_norm, check the inputs of that loss '
          'term, or set --config.train.on_nonfinite=skip to skip such steps.'
        )
      skipped.append(f'{step} ({terms})')
  if skipped:
    log.warning(
      'skipped %d non-finite step(s), their updates not applied: %s',
      len(skipped),
      '; '.join(skipped),
    )
  return out


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains ``config.method`` and evaluates it; returns the last evaluation's results by protocol."""
  validate_lib.validate(config, workdir)  # before any data load or compilation
  method = get_method(config.method)
  table, train_set, masks = load_data(config)
  P, K = config.sampler.P, config.sampler.K
  fused = bool(config.model.sketch_fusion)
  steps_per_epoch = input_pipeline.steps_per_epoch(train_set, P, K, fused=fused)
  num_hosts, host = jax.process_count(), jax.process_index()
  _write_meta(workdir, config, train_set, steps_per_epoch)

  model = method.model_for(config, train_set.num_classes, parallel.AXIS)
  eval_model = method.model_for(config, train_set.num_classes, None)
  frozen = method.frozen_for(config) if method.frozen_for else None
  state = create_train_state(
    config, model, steps_per_epoch, jax.random.key(config.seed), frozen=frozen
  )
  latest_mgr, best_mgr = _checkpoint_managers(workdir, config)
  state = restore_latest(latest_mgr, state)
  start = saved_step = int(state.step)

  launcher = parallel.make_launcher(
    functools.partial(train_step, model=model, method=method, config=config),
    kind=config.parallel.launcher,
  )
  local_devices = launcher.num_devices // num_hosts
  perm = parallel.device_major_permutation(P // num_hosts, K, local_devices)
  state = launcher.put_state(state)
  selection = Selection(
    os.path.join(workdir, 'selection.json'),
    protocol=config.eval.best_protocol or config.eval.protocols[0],
    metric=config.eval.best_metric,
  )

  writer = metric_writers.create_default_writer(workdir, just_logging=host > 0)
  writer.write_hparams(
    {k: v for k, v in _flatten(config.to_dict()).items() if isinstance(v, (int, float, str, bool))}
  )
  total_steps = config.train.epochs * steps_per_epoch
  log.info(
    '%s: %d identities, %d steps/epoch, %d epochs, batch %d on %d device(s)',
    config.method,
    train_set.num_classes,
    steps_per_epoch,
    config.train.epochs,
    2 * P * K,
    launcher.num_devices,
  )

  results: dict = {}
  step = start
  directory = os.fspath(latest_mgr.directory)
  unchecked: list = []  # (step, device metrics) not yet read on the host
  window: list = []  # (step, host metrics) since the last log line

  def save(device_state, *, force=False):
    nonlocal unchecked, window, saved_step
    # Never a state after a non-finite step: read every pending step's metrics first.
    window += _fetch_and_check(unchecked, config.train.on_nonfinite, directory)
    unchecked = []
    if step != saved_step:  # e.g. checkpoint_every_steps divides the epoch
      host_state = launcher.get_state(device_state)  # only when a save happens
      latest_mgr.save(step, args=ocp.args.StandardSave(_state_to_save(host_state)), force=force)
      saved_step = step

  try:
    for epoch in range(start // steps_per_epoch, config.train.epochs):
      plan = input_pipeline.host_slice(
        input_pipeline.pk_plan(
          train_set,
          P=P,
          K=K,
          epoch=epoch,
          seed=config.seed,
          scheme=config.sampler.scheme,
          fused=fused,
        ),
        host,
        num_hosts,
      )
      first = step - epoch * steps_per_epoch
      batches = input_pipeline.train_iterator(
        table,
        train_set,
        plan=plan,
        image_size=tuple(config.data.image_size),
        pad=config.data.pad,
        flip=config.data.flip,
        random_erasing=config.data.random_erasing,
        seed=config.seed,
        epoch=epoch,
        start_step=first,
        prefetch=config.data.prefetch,
        threads=config.data.threads,
        process_index=host,
        masks=masks,
        sketch_sets=fused,
      )
      put = lambda b: launcher.put_batch(
        parallel.device_order(_host_batch(b, train_set, method), perm)
      )
      bar = tqdm(
        total=steps_per_epoch,
        initial=first,
        desc=f'epoch {epoch + 1}/{config.train.epochs}',
        unit='step',
        disable=None if config.train.progress_bar else True,
        leave=False,
      )
      tick, tick_step = time.perf_counter(), step
      for device_batch in _prefetch(batches, put, config.data.prefetch):
        state, metrics = launcher.step(state, device_batch)
        step += 1
        unchecked.append((step, metrics))
        bar.update(1)
        if step % config.train.log_every_steps == 0 or step % steps_per_epoch == 0:
          window += _fetch_and_check(unchecked, config.train.on_nonfinite, directory)
          unchecked = []
          summary = _summarise(window)
          rate = 2 * P * K * (step - tick_step) / (time.perf_counter() - tick)
          summary.update(
            images_per_sec=rate,
            epoch=epoch,
            lr=float(lr_schedule(config, steps_per_epoch, config.optim.lr)(step - 1)),
          )
          writer.write_scalars(step, summary)
          bar.set_postfix(loss=f'{summary.get("loss", float("nan")):.3f}', img_s=f'{rate:.0f}')
          tick, tick_step, window = time.perf_counter(), step, []
        if config.train.checkpoint_every_steps and step % config.train.checkpoint_every_steps == 0:
          save(state)
      bar.close()
      save(state, force=True)

      if eval_due(config, epoch + 1):
        host_state = launcher.get_state(state)
        variables = {'params': host_state.params, 'batch_stats': host_state.batch_stats}
        results = evaluate_lib.evaluate(
          eval_model,
          variables,
          table,
          config,
          workdir=workdir,
          extra={'epoch': epoch + 1, 'step': step},
          selection=selection,
        )
        writer.write_scalars(
          step,
          {f'eval/{name}/{k}': v for name, r in results.items() for k, v in r.to_dict().items()},
        )
        # A step retrained after its corrupt checkpoint was moved aside may be in best/ already.
        if selection.best['step'] == step and step not in best_mgr.all_steps():
          best_mgr.save(
            step,
            args=ocp.args.StandardSave(_state_to_save(host_state)),
            metrics={selection.metric: selection.best['value']},
            force=True,
          )
  finally:
    # A save in flight completes even when training stops on an error, so the last good
    # checkpoint is whole.
    writer.flush()
    latest_mgr.wait_until_finished()
    best_mgr.wait_until_finished()
  if not results and start >= total_steps:
    log.info('training already complete at step %d; evaluating the latest checkpoint', start)
    host_state = launcher.get_state(state)
    results = evaluate_lib.evaluate(
      eval_model,
      {'params': host_state.params, 'batch_stats': host_state.batch_stats},
      table,
      config,
      workdir=workdir,
      extra={'epoch': config.train.epochs, 'step': start},
    )
  return results


def eval_due(config, epoch: int) -> bool:
  """Whether training evaluates after ``epoch`` (1-based): always after the last; else every
  ``eval.every_epochs`` epochs counted after ``eval.offset_epochs`` (0 = only after the last)."""
  every, offset = config.eval.every_epochs, config.eval.offset_epochs
  if epoch == config.train.epochs:
    return True
  return bool(every) and epoch > offset and (epoch - offset) % every == 0


def _summarise(window: list[tuple[int, dict]]) -> dict[str, float]:
  """Means over the applied steps of a log window; 'skipped' is the window's count of the others."""
  applied = [m for _, m in window if not m['skipped']]
  summary = {k: float(np.mean([m[k] for m in applied])) for k in (applied[0] if applied else {})}
  summary['skipped'] = float(sum(m['skipped'] > 0 for _, m in window))
  return summary


def _flatten(d: dict, prefix: str = '') -> dict:
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flatten(v, f'{prefix}{k}.'))
    else:
      out[f'{prefix}{k}'] = v
  return out


def evaluate_workdir(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Evaluates the best (else the latest) checkpoint of a training workdir on config's protocols;
  the reports go to ``<workdir>/evaluate/``.

  The model and its variables are the workdir's own (``inference.load_trained``: its config.json
  and checkpoint, params and batch statistics only); ``config`` supplies the data and the
  evaluation settings.
  """
  from sketchreid_jax import inference

  trained = inference.load_trained(workdir)
  table = datasets.load(config.data)
  # Its own folder: the training's reports stay as they were, whatever protocol is asked for here.
  return evaluate_lib.evaluate(
    trained.model,
    trained.variables,
    table,
    config,
    workdir=os.path.join(workdir, 'evaluate'),
    extra={'step': trained.step, 'mode': 'evaluate'},
  )
