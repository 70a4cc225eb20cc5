"""Training: ``train_and_evaluate(config, workdir)`` and the small pure pieces it is made of.

This is the only module that wires a model, its losses and the optimiser together, through the
method registry (``sketchreid_jax.methods``). The per-device step :func:`train_step` is written once;
``parallel.make_launcher`` compiles it for all devices (DESIGN §6).

Workdir contents: ``config.json``, ``train_meta.json`` (label ↔ identity map, steps per epoch),
``checkpoints/`` (latest, orbax), ``best/`` (best by mAP), TensorBoard event files, and after each
evaluation ``results.{json,csv,md}`` and ``cmc.png``.
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

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from clu import metric_writers
from flax.training import train_state
from tqdm.auto import tqdm

from sketchreid_jax import datasets
from sketchreid_jax.datasets import attributes as attributes_lib
from sketchreid_jax.datasets import masks as masks_lib
from sketchreid_jax import evaluate as evaluate_lib
from sketchreid_jax import input_pipeline
from sketchreid_jax import parallel
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


def param_groups(params, head_modules) -> Any:
  """Labels each parameter 'head' (full lr) or 'backbone' (lr × backbone_lr_mult)."""
  present = [m for m in head_modules if m in params]
  if not present:
    raise ValueError(
      f'config.optim.head_modules={tuple(head_modules)} matches none of the model\'s '
      f'parameter collections {sorted(params)}'
    )
  return {
    k: jax.tree.map(lambda _: 'head' if k in head_modules else 'backbone', v)
    for k, v in params.items()
  }


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
    },
    param_groups(params, o.head_modules),
  )
  if o.grad_clip_norm < 0:
    raise ValueError(f'config.optim.grad_clip_norm must be >= 0 (0 = off), got {o.grad_clip_norm}')
  if o.grad_clip_norm:
    # One global norm over every group, before the update (the logged grad_norm is pre-clip).
    tx = optax.chain(optax.clip_by_global_norm(o.grad_clip_norm), tx)
  return tx


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
  half = batch['image'].shape[0] // 2
  photos, sketches = batch['image'][:half], batch['image'][half:]
  global_batch = {k: parallel.all_gather(batch[k]) for k in ('label', 'modality')}
  rng = jax.random.fold_in(jax.random.key(config.seed), state.step)
  # Each device draws its own randomness (e.g. CMAlign's pairing) for its own rows.
  device_rng = jax.random.fold_in(rng, jax.lax.axis_index(parallel.AXIS))
  model_kwargs = {k: batch[k] for k in method.model_inputs if k in batch}

  def loss_fn(params):
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
    terms = method.losses_for(outputs, global_batch, config)
    total = sum(weight * value for weight, value in terms.values())
    metrics = {f'loss/{name}': value for name, (_, value) in terms.items()}
    return total, (mutated['batch_stats'], metrics)

  (loss, (batch_stats, metrics)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  grads = parallel.pmean(grads)
  state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
  metrics = dict(metrics, loss=loss, grad_norm=optax.tree.norm(grads))
  return state, parallel.pmean(metrics)


# ----------------------------------------------------------------------------- checkpoints


def _checkpoint_managers(workdir: str, config):
  latest = ocp.CheckpointManager(
    os.path.join(os.path.abspath(workdir), 'checkpoints'),
    options=ocp.CheckpointManagerOptions(max_to_keep=2, create=True),
  )
  best = ocp.CheckpointManager(
    os.path.join(os.path.abspath(workdir), 'best'),
    options=ocp.CheckpointManagerOptions(
      max_to_keep=1, create=True, best_fn=lambda m: m['mAP'], best_mode='max'
    ),
  )
  return latest, best


def _state_to_save(state: TrainState) -> dict:
  return {
    'params': state.params,
    'batch_stats': state.batch_stats,
    'opt_state': state.opt_state,
    'step': state.step,
  }


def restore_latest(manager, state: TrainState) -> TrainState:
  step = manager.latest_step()
  if step is None:
    return state
  restored = manager.restore(step, args=ocp.args.StandardRestore(_state_to_save(state)))
  log.info('resumed from %s at step %d', manager.directory, step)
  return state.replace(**restored)


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
  out = {k: batch[k] for k in ('image', 'label', 'modality')}
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


def _check_finite(metrics: dict, step: int):
  bad = [k for k, v in metrics.items() if not np.isfinite(v)]
  if bad:
    raise FloatingPointError(
      f'non-finite value at step {step} in {", ".join(sorted(bad))}; the last good checkpoint is '
      f'kept. Lower config.optim.lr or check the inputs of that loss term.'
    )


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains ``config.method`` and evaluates it; returns the last evaluation's results by protocol."""
  os.makedirs(workdir, exist_ok=True)
  method = get_method(config.method)
  table, train_set, masks = load_data(config)
  P, K = config.sampler.P, config.sampler.K
  steps_per_epoch = input_pipeline.steps_per_epoch(train_set, P, K)
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
  start = int(state.step)

  launcher = parallel.make_launcher(
    functools.partial(train_step, model=model, method=method, config=config),
    kind=config.parallel.launcher,
  )
  local_devices = launcher.num_devices // num_hosts
  perm = parallel.device_major_permutation(P // num_hosts, K, local_devices)
  state = launcher.put_state(state)

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
  for epoch in range(start // steps_per_epoch, config.train.epochs):
    plan = input_pipeline.host_slice(
      input_pipeline.pk_plan(train_set, P=P, K=K, epoch=epoch, seed=config.seed), host, num_hosts
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
    )
    put = lambda b: launcher.put_batch(
      {k: v[perm] for k, v in _host_batch(b, train_set, method).items()}
    )
    bar = tqdm(
      total=steps_per_epoch,
      initial=first,
      desc=f'epoch {epoch + 1}/{config.train.epochs}',
      unit='step',
      disable=None if config.train.progress_bar else True,
      leave=False,
    )
    tick, tick_step, pending = time.perf_counter(), step, []
    for device_batch in _prefetch(batches, put, config.data.prefetch):
      state, metrics = launcher.step(state, device_batch)
      step += 1
      pending.append(metrics)
      bar.update(1)
      if step % config.train.log_every_steps == 0 or step % steps_per_epoch == 0:
        summary = _summarise(pending)
        _check_finite(summary, step)
        rate = 2 * P * K * (step - tick_step) / (time.perf_counter() - tick)
        summary.update(
          images_per_sec=rate,
          epoch=epoch,
          lr=float(lr_schedule(config, steps_per_epoch, config.optim.lr)(step - 1)),
        )
        writer.write_scalars(step, summary)
        bar.set_postfix(loss=f'{summary["loss"]:.3f}', img_s=f'{rate:.0f}')
        tick, tick_step, pending = time.perf_counter(), step, []
      if config.train.checkpoint_every_steps and step % config.train.checkpoint_every_steps == 0:
        latest_mgr.save(step, args=ocp.args.StandardSave(_state_to_save(launcher.get_state(state))))
    bar.close()
    latest_mgr.save(
      step, args=ocp.args.StandardSave(_state_to_save(launcher.get_state(state))), force=True
    )

    last = epoch + 1 == config.train.epochs
    if last or (config.eval.every_epochs and (epoch + 1) % config.eval.every_epochs == 0):
      host_state = launcher.get_state(state)
      variables = {'params': host_state.params, 'batch_stats': host_state.batch_stats}
      results = evaluate_lib.evaluate(
        eval_model,
        variables,
        table,
        config,
        workdir=workdir,
        extra={'epoch': epoch + 1, 'step': step},
      )
      best_key = config.eval.best_protocol or config.eval.protocols[0]
      writer.write_scalars(
        step, {f'eval/{name}/{k}': v for name, r in results.items() for k, v in r.to_dict().items()}
      )
      best_mgr.save(
        step,
        args=ocp.args.StandardSave(_state_to_save(host_state)),
        metrics={'mAP': float(results[best_key].mAP)},
        force=True,
      )
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


def _summarise(pending: list[dict]) -> dict[str, float]:
  stacked = jax.device_get(pending)
  return {k: float(np.mean([np.asarray(m[k]).reshape(-1)[0] for m in stacked])) for k in stacked[0]}


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
  the reports go to ``<workdir>/evaluate/``."""
  meta_path = os.path.join(workdir, 'train_meta.json')
  if not os.path.exists(meta_path):
    raise FileNotFoundError(
      f'{meta_path} not found: {workdir!r} is not a training workdir '
      '(run --mode=train first, or pass the workdir of a finished run).'
    )
  with open(meta_path) as f:
    meta = json.load(f)
  method = get_method(config.method)
  table = datasets.load(config.data)
  model = method.model_for(config, meta['num_classes'], None)
  state = create_train_state(config, model, meta['steps_per_epoch'], jax.random.key(config.seed))
  latest_mgr, best_mgr = _checkpoint_managers(workdir, config)
  manager = best_mgr if best_mgr.latest_step() is not None else latest_mgr
  if manager.latest_step() is None:
    raise FileNotFoundError(f'no checkpoint in {workdir}/best or {workdir}/checkpoints')
  state = restore_latest(manager, state)
  # Its own folder: the training's reports stay as they were, whatever protocol is asked for here.
  return evaluate_lib.evaluate(
    model,
    {'params': state.params, 'batch_stats': state.batch_stats},
    table,
    config,
    workdir=os.path.join(workdir, 'evaluate'),
    extra={'step': int(state.step), 'mode': 'evaluate'},
  )
