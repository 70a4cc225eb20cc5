"""Configuration checks that run before any data is read or anything is compiled.

``validate(config, workdir)`` raises :class:`ConfigError` (a ``ValueError``) with a one-line message
that names the key and the fix, for a configuration that would otherwise fail minutes later (after
building the dataset cache and compiling the step) or, worse, run wrongly. ``main`` prints that line
and exits with status 2; ``train.train_and_evaluate`` calls it first as well.

What is checked, and the interpretations chosen:

* Method: ``config.method`` names a method (``methods.get_method``) and the config holds its keys
  (a config built for another method is refused); the method's own checks (``Method.check``:
  CMAlign's identities per device in ``methods/cmdsl.py``, the U²-Net settings in
  ``methods/dalnet.py``) run after the generic ones.
* Sampler vs devices: P ≥ 2 (every metric loss and CMAlign need another identity in the batch),
  K ≥ 1, and the P identities of a batch split evenly over processes × local devices
  (``parallel.check_identity_split``: each device gets ``[photos | sketches]`` of P/N identities).
* Image size: ``data.image_size`` is two positive ints divisible by the backbone's total stride,
  4 (conv1 and the stem max-pool) × the stage strides of ``models.resnet.stage_specs`` = 16 with
  ``model.last_stride=1`` or 32 with 2. The padded convolutions would accept any size, but then a
  stage's last row or column is computed half from padding and the layer-k grid no longer tiles the
  image exactly (as 18×9 tiles 288×144 in the papers), which CMAlign's position-wise alignment and
  the feature-map visualisations assume.
* Workdir: created if needed, then a probe file is written and removed there.
* Weight files: ``model.init_checkpoint``, when set, must exist and fit the ResNet-50 depth.
* Enumerations that would otherwise fail late: ``train.on_nonfinite``, ``parallel.launcher``,
  ``sampler.scheme``, and non-negative step counts.

Unknown presets (``config_base.with_preset``) and unknown keys (locked configs) are refused while the
config is parsed; ``main`` turns those errors into one line as well. Checks of the data themselves
(folders, files, identities) are the dataset readers' job and run when the data are loaded.
"""

import os
import tempfile

from sketchreid_jax.config_base import ConfigError

__all__ = ['ConfigError', 'check_choices', 'check_size_pair', 'validate']

# The stem's conv1 (7×7/2) and max-pool (3×3/2) of every ResNet-50 stream.
STEM_STRIDE = 4
ON_NONFINITE = ('stop', 'skip')
LAUNCHERS = ('shard_map', 'pmap')


def validate(
  config,
  workdir: str | None,
  *,
  num_devices: int | None = None,
  num_processes: int | None = None,
  training: bool = True,
) -> None:
  """Raises :class:`ConfigError` (one line) if ``config`` cannot run in ``workdir``.

  ``num_devices`` is the device count of the whole job and ``num_processes`` its process count
  (default: this job's, from JAX). ``training=False`` (``--mode=evaluate``) skips the checks that
  only concern the train step (sampler split, CMAlign, ``train.*``). ``workdir=None`` skips the
  workdir check.
  """
  method = _check_method(config)
  _check_image_size(config)
  _check_weights(config)
  if training:
    if num_processes is None or num_devices is None:
      import jax

      num_processes = jax.process_count() if num_processes is None else num_processes
      num_devices = jax.device_count() if num_devices is None else num_devices
    _check_sampler(config, num_devices, num_processes)
    _check_train(config)
  if method.check is not None:
    method.check(config, num_devices if training else None)
  if workdir is not None:
    _check_workdir(workdir)
    if training:
      _check_not_converted(workdir)


def _check_not_converted(workdir: str) -> None:
  """Training would rewrite a converted release checkpoint's config.json and train_meta.json."""
  import json

  meta = os.path.join(workdir, 'train_meta.json')
  if os.path.exists(meta):
    with open(meta) as f:
      converted = json.load(f).get('converted_from')
    if converted:
      raise ConfigError(
        f'workdir {workdir!r} holds weights converted by tools.convert_weights, not a training '
        'of ours: evaluate it with --mode=evaluate, or train in a new --workdir.'
      )


def check_choices(config, choices: dict[str, tuple]) -> None:
  """Each dotted key of ``choices`` holds one of its allowed values (else one-line ConfigError)."""
  for key, allowed in choices.items():
    section, leaf = key.split('.')
    if config[section][leaf] not in allowed:
      raise ConfigError(
        f'config.{key}={config[section][leaf]!r}: choose one of {", ".join(map(repr, allowed))}.'
      )


def _method(config):
  from sketchreid_jax.methods import get_method

  try:
    method = get_method(config.method)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  # A config built for another method lacks this one's keys: say so instead of a KeyError later.
  expected = set(_flat_keys(base_keys(config.method)))
  missing = sorted(expected - set(_flat_keys(config)))
  if missing:
    raise ConfigError(
      f'config.method={config.method!r} but the config lacks its keys ({", ".join(missing[:3])}'
      f'{", ..." if len(missing) > 3 else ""}): build it with config_base.base_config('
      f"{config.method!r}), not another method's config."
    )
  return method


def base_keys(method: str):
  from sketchreid_jax.config_base import base_config

  return base_config(method)


def _flat_keys(config, prefix: str = '') -> list[str]:
  out = []
  for k, v in config.items():
    if hasattr(v, 'items'):
      out += _flat_keys(v, f'{prefix}{k}.')
    else:
      out.append(f'{prefix}{k}')
  return out


def _check_method(config):
  method = _method(config)
  if config.model.sketch_fusion and not method.sketch_fusion:
    raise ConfigError(
      f'config.model.sketch_fusion=True: method {config.method!r} does not train on fused sketch '
      'sets (only the two-stream baseline and cmdsl do); set --config.model.sketch_fusion=False '
      "and test multi-query with eval.multi_query_aggregate='mean'."
    )
  check_choices(config, {'sampler.scheme': ('cycle', 'release')})
  from sketchreid_jax.evaluation.selection import parse_best_metric

  protocol = config.eval.best_protocol or config.eval.protocols[0]
  try:
    protocol, _ = parse_best_metric(config.eval.best_metric, protocol)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  if protocol not in config.eval.protocols:
    raise ConfigError(
      f'config.eval.best_metric={config.eval.best_metric!r} selects on protocol {protocol!r}, '
      f'which is not in config.eval.protocols {tuple(config.eval.protocols)}.'
    )
  for key in ('every_epochs', 'offset_epochs'):
    value = config.eval[key]
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
      raise ConfigError(f'config.eval.{key} = {value!r}: must be an int >= 0.')
  return method


def _positive_int(value) -> bool:
  return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _check_sampler(config, num_devices: int, num_processes: int) -> None:
  from sketchreid_jax import parallel

  P, K = config.sampler.P, config.sampler.K
  if not _positive_int(P) or P < 2:
    raise ConfigError(
      f'config.sampler.P = {P!r}: a batch needs at least 2 identities (the metric losses and '
      'CMAlign need a negative identity); set --config.sampler.P to 2 or more.'
    )
  if not _positive_int(K):
    raise ConfigError(
      f'config.sampler.K = {K!r}: each identity needs at least one photo and one sketch per batch; '
      'set --config.sampler.K to 1 or more.'
    )
  if num_devices % num_processes:
    raise ConfigError(
      f'{num_devices} device(s) do not split evenly over {num_processes} process(es); every '
      'process must contribute the same number of devices.'
    )
  try:
    parallel.check_identity_split(P, num_processes, num_devices // num_processes)
  except ValueError as e:
    raise ConfigError(f'{e} (batch = 2·P·K = {2 * P * K} images)') from None


def total_stride(config) -> int:
  """The backbone's input-to-layer4 stride for ``config.model`` (16, or 32 with last_stride 2)."""
  from sketchreid_jax.models.resnet import stage_specs

  try:
    specs = stage_specs(config.model.width, config.model.last_stride, tuple(config.model.blocks))
  except ValueError as e:
    raise ConfigError(f'config.model: {e}') from None
  stride = STEM_STRIDE
  for spec in specs:
    stride *= spec.stride
  return stride


def check_size_pair(value, key: str) -> tuple[int, int]:
  if (
    not isinstance(value, (tuple, list))
    or len(value) != 2
    or not all(_positive_int(v) for v in value)
  ):
    raise ConfigError(
      f'config.{key} = {value!r}: must be two positive ints (H, W), e.g. '
      f"--config.{key}='(288, 144)'."
    )
  return int(value[0]), int(value[1])


def _check_image_size(config) -> None:
  h, w = check_size_pair(config.data.image_size, 'data.image_size')
  stride = total_stride(config)
  if h % stride or w % stride:
    near = lambda n: max(stride, round(n / stride) * stride)
    raise ConfigError(
      f"config.data.image_size = ({h}, {w}): the backbone's total stride is {stride} "
      f'(model.last_stride={config.model.last_stride}), so H and W must be multiples of '
      f"{stride}; e.g. --config.data.image_size='({near(h)}, {near(w)})'."
    )
  if not isinstance(config.data.pad, int) or config.data.pad < 0:
    raise ConfigError(f'config.data.pad = {config.data.pad!r}: must be an int >= 0.')


def _check_weights(config) -> None:
  path = config.model.init_checkpoint
  if path and tuple(config.model.blocks) != (3, 4, 6, 3):
    raise ConfigError(
      f'config.model.init_checkpoint = {path!r} holds ResNet-50 weights, but config.model.blocks = '
      f'{tuple(config.model.blocks)}: set --config.model.blocks="(3, 4, 6, 3)" or train from '
      "scratch with --config.model.init_checkpoint=''."
    )
  if path and not os.path.isfile(path):
    raise ConfigError(
      f'config.model.init_checkpoint = {path!r} does not exist: convert the torchvision ImageNet '
      'weights with `python -m sketchreid_jax.tools.convert_weights --model=resnet50 '
      f'--input=resnet50-0676ba61.pth --output={path}` (README "Pretrained weights"), or set '
      "--config.model.init_checkpoint='' to train from scratch."
    )


def _check_train(config) -> None:
  t = config.train
  if t.on_nonfinite not in ON_NONFINITE:
    raise ConfigError(
      f'config.train.on_nonfinite = {t.on_nonfinite!r}: must be one of {", ".join(ON_NONFINITE)}.'
    )
  if config.parallel.launcher not in LAUNCHERS:
    raise ConfigError(
      f'config.parallel.launcher = {config.parallel.launcher!r}: must be one of '
      f'{", ".join(LAUNCHERS)}.'
    )
  # epochs = 0 is meaningful: the initial model is evaluated (studies use it as a chance check).
  for key, low in (('epochs', 0), ('log_every_steps', 1), ('checkpoint_every_steps', 0)):
    value = t[key]
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
      raise ConfigError(f'config.train.{key} = {value!r}: must be an int >= {low}.')


def _check_workdir(workdir: str) -> None:
  if not workdir:
    raise ConfigError('--workdir is empty: give the folder for checkpoints, metrics and reports.')
  try:
    os.makedirs(workdir, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=workdir, prefix='.write_test_'):
      pass
  except OSError as e:
    reason = e.strerror or type(e).__name__
    raise ConfigError(
      f'workdir {workdir!r} cannot be written ({reason}): choose another --workdir or fix its '
      'permissions.'
    ) from None
