"""Config validation: every refused case is one line naming the key, before data or compilation."""

import os
import subprocess
import sys

import pytest

from sketchreid_jax import validate
from sketchreid_jax.config_base import ConfigError, load_config
from tests.conftest import REPO, config_presets

CONFIGS = ('baseline', 'cmdsl', 'dalnet', 'demo')


def _config(spec='demo.py:tiny', **overrides):
  return load_config(os.path.join(REPO, 'configs', spec), **overrides)


def _refused(config, workdir, match, **kw) -> str:
  with pytest.raises(ConfigError, match=match) as error:
    validate.validate(config, workdir, **kw)
  message = str(error.value)
  assert '\n' not in message
  return message


@pytest.mark.parametrize('name', CONFIGS)
def test_every_preset_of_every_config_passes(name, tmp_path):
  for preset in [''] + sorted(config_presets(name)):
    config = _config(f'{name}.py:{preset}' if preset else f'{name}.py')
    validate.validate(config, str(tmp_path), num_devices=1, num_processes=1)


def test_identities_must_split_over_devices_and_processes(tmp_path):
  config = _config()  # P = 4
  for devices, processes in ((1, 1), (2, 1), (4, 1), (4, 2), (3, 1), (8, 1), (6, 2)):
    kw = dict(num_devices=devices, num_processes=processes)
    if 4 % devices == 0:
      validate.validate(config, str(tmp_path), **kw)
    else:
      message = _refused(config, str(tmp_path), 'config.sampler.P', **kw)
      assert f'multiple of {devices}' in message and 'batch = 2·P·K = 16' in message
  for P in (0, 1):
    _refused(_config(sampler__P=P), str(tmp_path), r'at least 2 identities', num_devices=1)
  _refused(_config(sampler__K=0), str(tmp_path), r'config.sampler.K = 0', num_devices=1)


def test_cmalign_needs_another_identity_on_every_device(tmp_path):
  for P, devices in ((2, 1), (4, 1), (4, 2), (4, 4), (8, 4), (8, 8), (16, 8)):
    config = _config('cmdsl.py:market_mq', sampler__P=P)
    kw = dict(num_devices=devices, num_processes=1)
    if P // devices - 1 >= 1:
      validate.validate(config, str(tmp_path), **kw)
    else:
      message = _refused(config, str(tmp_path), 'CMAlign', **kw)
      assert f'leaves {P // devices} identity per device' in message
  # One weight is enough to turn CMAlign on (the MM'23 preset keeps only L_dt); with both at 0 the
  # same split is fine.
  kw = dict(num_devices=4, num_processes=1)
  _refused(_config('cmdsl.py:mm23_baseline', sampler__P=4), str(tmp_path), 'CMAlign', **kw)
  config = _config('cmdsl.py', sampler__P=4, loss__cmalign_ic_weight=0.0)
  config.loss.cmalign_dt_weight = 0.0
  validate.validate(config, str(tmp_path), **kw)


def test_image_size_must_be_a_multiple_of_the_backbone_stride(tmp_path):
  ok = dict(num_devices=1, num_processes=1)
  for size, last_stride in (((64, 32), 1), ((288, 144), 1), ((288, 128), 2)):
    validate.validate(
      _config(data__image_size=size, model__last_stride=last_stride), str(tmp_path), **ok
    )
  for size, last_stride, stride in (((100, 50), 1, 16), ((64, 40), 1, 16), ((96, 48), 2, 32)):
    config = _config(data__image_size=size, model__last_stride=last_stride)
    message = _refused(config, str(tmp_path), f'total stride is {stride}', **ok)
    assert 'config.data.image_size' in message
  for size in ((64,), (64, 32, 3), (64, 0), (64.0, 32)):
    _refused(_config(data__image_size=size), str(tmp_path), 'two positive ints', **ok)
  _refused(_config(model__last_stride=3), str(tmp_path), 'last_stride', **ok)
  config = _config('dalnet.py:pku', data__mask_source='u2net', model__u2net_size=(320,))
  _refused(config, str(tmp_path), 'model.u2net_size', **ok)


def test_unknown_preset_lists_the_known_ones():
  for name in CONFIGS:
    with pytest.raises(ConfigError) as error:
      _config(f'{name}.py:no_such_preset')
    message = str(error.value)
    assert '\n' not in message and "unknown preset 'no_such_preset'" in message
    listed = message.split('this config has: ')[1].split(', ')
    assert listed == sorted(config_presets(name))


def test_unknown_method_and_enumerations(tmp_path):
  ok = dict(num_devices=1, num_processes=1)
  _refused(_config(method='nope'), str(tmp_path), r"unknown config.method 'nope'", **ok)
  _refused(_config(train__on_nonfinite='ignore'), str(tmp_path), 'train.on_nonfinite', **ok)
  _refused(_config(parallel__launcher='pjit'), str(tmp_path), 'parallel.launcher', **ok)
  _refused(_config(train__epochs=-1), str(tmp_path), r'train.epochs = -1', **ok)
  _refused(_config(sampler__scheme='random'), str(tmp_path), r'sampler.scheme', **ok)
  _refused(_config(loss__wrt_shift='row'), str(tmp_path), r'loss.wrt_shift', **ok)
  _refused(_config(eval__best_metric='R-5'), str(tmp_path), r'eval.best_metric', **ok)
  _refused(_config(eval__offset_epochs=-1), str(tmp_path), r'eval.offset_epochs = -1', **ok)


def test_a_workdir_that_cannot_be_written(tmp_path):
  blocker = tmp_path / 'a_file'
  blocker.write_text('')
  for workdir in (blocker, blocker / 'run'):
    message = _refused(_config(), str(workdir), 'cannot be written', num_devices=1)
    assert str(workdir) in message
  # A writable one is created and left without the probe file.
  workdir = tmp_path / 'new' / 'run'
  validate.validate(_config(), str(workdir), num_devices=1, num_processes=1)
  assert os.listdir(workdir) == []


def test_missing_weight_files(tmp_path):
  ok = dict(num_devices=1, num_processes=1)
  missing = str(tmp_path / 'resnet50.msgpack')
  message = _refused(
    _config(model__init_checkpoint=missing, model__blocks=(3, 4, 6, 3)),
    str(tmp_path),
    'init_checkpoint',
    **ok,
  )
  assert missing in message and 'convert_weights --model=resnet50' in message
  (tmp_path / 'resnet50.msgpack').write_bytes(b'')
  full_depth = (3, 4, 6, 3)
  validate.validate(
    _config(model__init_checkpoint=missing, model__blocks=full_depth), str(tmp_path), **ok
  )
  # ImageNet ResNet-50 weights cannot initialise a shallower net.
  _refused(
    _config(model__init_checkpoint=missing, model__blocks=(1, 1, 1, 1)),
    str(tmp_path),
    r'model.blocks = \(1, 1, 1, 1\)',
    **ok,
  )

  config = _config(
    'dalnet.py:pku', data__mask_source='u2net', model__u2net_weights=str(tmp_path / 'u.msgpack')
  )
  message = _refused(config, str(tmp_path), 'mask_source=u2net', **ok)
  assert 'u.msgpack' in message and 'convert_weights --model=u2netp' in message
  # Evaluation needs the same files but not the sampler checks.
  _refused(config, str(tmp_path), 'mask_source=u2net', training=False)


def _main(*args):
  return subprocess.run(
    [sys.executable, '-m', 'sketchreid_jax.main', *args],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=120,
  )


def test_main_reports_unknown_keys_and_presets_as_one_line(tmp_path):
  wd = f'--workdir={tmp_path}'
  cases = (
    (('--config=configs/demo.py:tiny', '--config.train.epoch=3'), "'train.epoch'", 'epochs'),
    (('--config=configs/demo.py:tiny', '--config.trian.epochs=3'), "'trian.epochs'", 'train'),
    (('--config=configs/demo.py:tny',), "unknown preset 'tny'", 'tiny'),
    (('--config=configs/nope.py',), 'configs/nope.py', 'No such file'),
    (('--config=configs/demo.py:tiny', '--config.train.epochs=x'), 'train.epochs=x', 'int'),
  )
  for args, names, hint in cases:
    done = _main(*args, wd)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert lines[0].startswith('main: error: ') and names in lines[0] and hint in lines[0]


def test_train_and_evaluate_validates_before_reading_any_data(tmp_path):
  from sketchreid_jax import train  # (imports TensorFlow: the one slow line of this file)

  config = _config(data__image_size=(100, 50))
  config.data.root = str(tmp_path / 'no_dataset_here')  # reading it would fail differently
  with pytest.raises(ConfigError, match='total stride is 16'):
    train.train_and_evaluate(config, str(tmp_path / 'run'))
  assert not (tmp_path / 'run').exists()  # refused before the workdir was even made


def test_a_config_built_for_another_method_is_refused_in_one_line():
  config = load_config(os.path.join(REPO, 'configs/baseline.py'))
  config.method = 'dalnet'  # the baseline's config lacks DALNet's keys
  with pytest.raises(ConfigError, match=r"config.method='dalnet' but the config lacks its keys"):
    validate.validate(config, None, training=False)


def test_an_unknown_method_lists_the_packaged_ones():
  config = load_config(os.path.join(REPO, 'configs/baseline.py'))
  config.method = 'no_such_method'
  with pytest.raises(ConfigError, match='known methods: baseline, cmdsl, dalnet'):
    validate.validate(config, None, training=False)
