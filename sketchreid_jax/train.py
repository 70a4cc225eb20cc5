"""Training: ``train_and_evaluate(config, workdir)``: the train state, the step and the loop.

This is the only module that wires a model, its losses and the optimiser (``optim.py``) together,
through the method registry (``sketchreid_jax.methods``). The per-device step :func:`train_step`
is written once; ``parallel.make_launcher`` compiles it for all devices (docs/design.md §6).

Determinism: everything a step depends on is a function of (seed, epoch, step) or is in the
checkpoint (``checkpoints.py``): the P×K plan of an epoch, each image's augmentation, the step's
random keys (``fold_in(seed, step)``), params, optimiser and BatchNorm state. A resumed run
therefore computes the same steps as an uninterrupted one (bitwise on CPU).

Non-finite values: the step computes, without a host round trip, one verdict from its averaged
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
import json
import logging
import os
import queue
import threading
import time
from typing import Any, Iterator

# clu's metric writers import TensorFlow: tf_setup must come first (GPUs hidden, start-up quiet).
from sketchreid_jax.tf_setup import tf  # noqa: F401

# isort: split

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from clu import metric_writers
from flax.training import train_state
from tqdm.auto import tqdm

from sketchreid_jax import checkpoints, datasets, input_pipeline, optim, parallel, sampler
from sketchreid_jax import validate as validate_lib
from sketchreid_jax.evaluation import protocols
from sketchreid_jax.evaluation.selection import Selection
from sketchreid_jax.methods import Method, get_method
from sketchreid_jax.weights import pretrained

log = logging.getLogger(__name__)


class TrainState(train_state.TrainState):
  batch_stats: Any = None
  # Variables of frozen networks the step runs (``Method.frozen_for``); never updated or saved.
  frozen: Any = None


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
    tx=optim.make_optimizer(config, steps_per_epoch, params),
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
    grads, batch_stats, metrics = optim.per_term_clipped_grads(
      forward, state.params, lambda out: method.losses_for(out, global_batch, config), o
    )
  else:

    def loss_fn(params):
      outputs, batch_stats = forward(params)
      terms = method.losses_for(outputs, global_batch, config)
      total = sum(weight * value for weight, value in terms.values())
      return total, (batch_stats, {f'loss/{name}': value for name, (_, value) in terms.items()})

    (loss, (batch_stats, metrics)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
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
  """(table, train set, per-photo masks or None) for ``config.data`` and the method's needs."""
  table = datasets.load(config.data)
  train_set = sampler.make_train_set(table, config.data.train_styles)
  prepare = get_method(config.method).prepare_data
  train_set, masks = prepare(config, table, train_set) if prepare else (train_set, None)
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


@dataclasses.dataclass
class _Run:
  """One training run's fixed parts (built by :func:`_setup`) and its moving ones."""

  config: ml_collections.ConfigDict
  workdir: str
  method: Method
  table: Any
  train_set: Any
  masks: Any
  steps_per_epoch: int
  eval_model: Any
  launcher: Any
  perm: np.ndarray
  latest: Any  # orbax managers (checkpoints.managers)
  best: Any
  selection: Selection
  writer: Any
  state: Any
  step: int
  saved_step: int
  unchecked: list = dataclasses.field(default_factory=list)  # (step, device metrics) not yet read
  window: list = dataclasses.field(default_factory=list)  # (step, host metrics) since the last log

  def read_metrics(self) -> None:
    """Moves the pending steps' metrics to the host; stops or warns on a skipped step."""
    directory = os.fspath(self.latest.directory)
    self.window += _fetch_and_check(self.unchecked, self.config.train.on_nonfinite, directory)
    self.unchecked = []

  def save(self, *, force: bool = False) -> None:
    # Never a state after a non-finite step: read every pending step's metrics first.
    self.read_metrics()
    if self.step != self.saved_step:  # e.g. checkpoint_every_steps divides the epoch
      host_state = self.launcher.get_state(self.state)  # only when a save happens
      save_args = ocp.args.StandardSave(checkpoints.state_to_save(host_state))
      self.latest.save(self.step, args=save_args, force=force)
      self.saved_step = self.step


def _setup(config: ml_collections.ConfigDict, workdir: str) -> _Run:
  """Data, models, the (restored) state, the compiled step, checkpoint managers and the writer."""
  method = get_method(config.method)
  table, train_set, masks = load_data(config)
  P, K = config.sampler.P, config.sampler.K
  fused = bool(config.model.sketch_fusion)
  steps_per_epoch = sampler.steps_per_epoch(train_set, P, K, fused=fused)
  _write_meta(workdir, config, train_set, steps_per_epoch)

  model = method.model_for(config, train_set.num_classes, parallel.AXIS)
  frozen = method.frozen_for(config) if method.frozen_for else None
  state = create_train_state(
    config, model, steps_per_epoch, jax.random.key(config.seed), frozen=frozen
  )
  latest, best = checkpoints.managers(workdir, config)
  state = checkpoints.restore_latest(latest, state)
  launcher = parallel.make_launcher(
    functools.partial(train_step, model=model, method=method, config=config),
    kind=config.parallel.launcher,
  )
  num_hosts = jax.process_count()
  log.info(
    '%s: %d identities, %d steps/epoch, %d epochs, batch %d on %d %s device(s), jax %s',
    config.method,
    train_set.num_classes,
    steps_per_epoch,
    config.train.epochs,
    2 * P * K,
    launcher.num_devices,
    jax.default_backend(),
    jax.__version__,
  )
  writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
  writer.write_hparams(
    {k: v for k, v in _flatten(config.to_dict()).items() if isinstance(v, (int, float, str, bool))}
  )
  return _Run(
    config=config,
    workdir=workdir,
    method=method,
    table=table,
    train_set=train_set,
    masks=masks,
    steps_per_epoch=steps_per_epoch,
    eval_model=method.model_for(config, train_set.num_classes, None),
    launcher=launcher,
    perm=parallel.device_major_permutation(P // num_hosts, K, launcher.num_devices // num_hosts),
    latest=latest,
    best=best,
    selection=Selection(
      os.path.join(workdir, 'selection.json'),
      protocol=config.eval.best_protocol or config.eval.protocols[0],
      metric=config.eval.best_metric,
    ),
    writer=writer,
    state=launcher.put_state(state),
    step=int(state.step),
    saved_step=int(state.step),
  )


def _device_batches(run: _Run, epoch: int, first: int) -> Iterator:
  """The epoch's batches from step ``first`` on, sharded onto the devices ahead of the step."""
  c = run.config
  plan = sampler.host_slice(
    sampler.pk_plan(
      run.train_set,
      P=c.sampler.P,
      K=c.sampler.K,
      epoch=epoch,
      seed=c.seed,
      scheme=c.sampler.scheme,
      fused=bool(c.model.sketch_fusion),
    ),
    jax.process_index(),
    jax.process_count(),
  )
  batches = input_pipeline.train_batches(
    c,
    run.table,
    run.train_set,
    plan,
    epoch=epoch,
    start_step=first,
    masks=run.masks,
    process_index=jax.process_index(),
  )
  put = lambda b: run.launcher.put_batch(
    parallel.device_order(_host_batch(b, run.train_set, run.method), run.perm)
  )
  return _prefetch(batches, put, c.data.prefetch)


def _train_epoch(run: _Run, epoch: int) -> None:
  """Runs the rest of ``epoch`` (from ``run.step``), logging and saving as configured."""
  c = run.config
  first = run.step - epoch * run.steps_per_epoch
  bar = tqdm(
    total=run.steps_per_epoch,
    initial=first,
    desc=f'epoch {epoch + 1}/{c.train.epochs}',
    unit='step',
    disable=None if c.train.progress_bar else True,
    leave=False,
  )
  batches = _device_batches(run, epoch, first)
  tick = _StepLog(run, epoch)  # after the pipeline is built: images/s counts the steps only
  for device_batch in batches:
    run.state, metrics = run.launcher.step(run.state, device_batch)
    run.step += 1
    run.unchecked.append((run.step, metrics))
    bar.update(1)
    if run.step % c.train.log_every_steps == 0 or run.step % run.steps_per_epoch == 0:
      bar.set_postfix(tick.write())
    if c.train.checkpoint_every_steps and run.step % c.train.checkpoint_every_steps == 0:
      run.save()
  bar.close()
  run.save(force=True)


class _StepLog:
  """The scalars of each log window (means over its applied steps, lr, images/s)."""

  def __init__(self, run: _Run, epoch: int):
    self.run, self.epoch = run, epoch
    self.lr = optim.lr_schedule(run.config, run.steps_per_epoch, run.config.optim.lr)
    self.time, self.step = time.perf_counter(), run.step

  def write(self) -> dict[str, str]:
    run = self.run
    run.read_metrics()
    summary = _summarise(run.window)
    batch = 2 * run.config.sampler.P * run.config.sampler.K
    rate = batch * (run.step - self.step) / (time.perf_counter() - self.time)
    summary.update(images_per_sec=rate, epoch=self.epoch, lr=float(self.lr(run.step - 1)))
    run.writer.write_scalars(run.step, summary)
    self.time, self.step, run.window = time.perf_counter(), run.step, []
    return {'loss': f'{summary.get("loss", float("nan")):.3f}', 'img_s': f'{rate:.0f}'}


def _evaluate(run: _Run, epoch: int, *, select: bool) -> dict:
  """Evaluates the current state; with ``select`` it may become the best checkpoint."""
  host_state = run.launcher.get_state(run.state)
  variables = {'params': host_state.params, 'batch_stats': host_state.batch_stats}
  results = protocols.evaluate(
    run.eval_model,
    variables,
    run.table,
    run.config,
    workdir=run.workdir,
    extra={'epoch': epoch, 'step': run.step},
    selection=run.selection if select else None,
  )
  if not select:
    return results
  run.writer.write_scalars(
    run.step,
    {f'eval/{name}/{k}': v for name, r in results.items() for k, v in r.to_dict().items()},
  )
  # A step retrained after its corrupt checkpoint was moved aside may be in best/ already.
  if run.selection.best['step'] == run.step and run.step not in run.best.all_steps():
    run.best.save(
      run.step,
      args=ocp.args.StandardSave(checkpoints.state_to_save(host_state)),
      metrics={run.selection.metric: run.selection.best['value']},
      force=True,
    )
  return results


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains ``config.method`` and evaluates it; returns the last evaluation's results by protocol."""
  validate_lib.validate(config, workdir)  # before any data load or compilation
  run = _setup(config, workdir)
  start, results = run.step, {}
  try:
    for epoch in range(start // run.steps_per_epoch, config.train.epochs):
      _train_epoch(run, epoch)
      if eval_due(config, epoch + 1):
        results = _evaluate(run, epoch + 1, select=True)
  finally:
    # A save in flight completes even when training stops on an error, so the last good
    # checkpoint is whole.
    run.writer.flush()
    run.latest.wait_until_finished()
    run.best.wait_until_finished()
  if not results and start >= config.train.epochs * run.steps_per_epoch:
    log.info('training already complete at step %d; evaluating the latest checkpoint', start)
    results = _evaluate(run, config.train.epochs, select=False)
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
  return protocols.evaluate(
    trained.model,
    trained.variables,
    table,
    config,
    workdir=os.path.join(workdir, 'evaluate'),
    extra={'step': trained.step, 'mode': 'evaluate'},
  )
