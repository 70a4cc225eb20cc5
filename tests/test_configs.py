"""Every config file and preset loads; presets and overrides fail loudly on unknown names."""

import glob
import os
import subprocess
import sys

import pytest

from sketchreid_jax.config_base import load_config
from sketchreid_jax.evaluation.protocols import PROTOCOLS
from sketchreid_jax.methods import METHODS
from tests.conftest import REPO

CONFIG_FILES = sorted(glob.glob(os.path.join(REPO, 'configs', '*.py')))


def _presets(path):
  namespace = {}
  exec(compile(open(path).read(), path, 'exec'), namespace)
  return sorted(namespace.get('PRESETS', {}))


@pytest.mark.parametrize('path,preset', [(p, s) for p in CONFIG_FILES for s in [''] + _presets(p)])
def test_every_config_and_preset_loads(path, preset):
  config = load_config(f'{path}:{preset}' if preset else path)
  assert config.method in METHODS
  assert config.sampler.P >= 2 and config.sampler.K >= 1
  assert {p.partition(':')[0] for p in config.eval.protocols} <= set(PROTOCOLS)
  # A QMUL dataset is tested with the SBIR protocol only, a re-id dataset never with it.
  assert (config.data.dataset.startswith('qmul')) == ('sbir' in config.eval.protocols)


def test_presets_set_what_they_say():
  mq = load_config(os.path.join(REPO, 'configs/baseline.py:market_mq'))
  assert mq.eval.protocols[0] == 'multi_query' and mq.data.train_styles == 'ABCDEF'
  s1 = load_config(os.path.join(REPO, 'configs/baseline.py:market_s1'))
  assert s1.data.train_styles == 'A' and s1.data.test_styles == 'A'


def test_unknown_preset_lists_the_known_ones():
  with pytest.raises(ValueError, match='market_mq'):
    load_config(os.path.join(REPO, 'configs/baseline.py:no_such_preset'))


def test_old_preset_names_still_work_and_warn():
  with pytest.warns(FutureWarning, match="'market_sketch_mq' is now called 'market_mq'"):
    old = load_config(os.path.join(REPO, 'configs/baseline.py:market_sketch_mq'))
  new = load_config(os.path.join(REPO, 'configs/baseline.py:market_mq'))
  assert old.to_dict() == new.to_dict()


def test_every_config_names_the_same_setting_the_same_way():
  # One scheme: the Market presets are market_s1/sq/mq and the PKU-Sketch preset is pku, in
  # every config that has them.
  for name in ('baseline', 'cmdsl', 'dalnet'):
    presets = _presets(os.path.join(REPO, f'configs/{name}.py'))
    assert {'market_sq', 'market_mq', 'pku'} <= set(presets), name
    assert not [p for p in presets if p.startswith('market_sketch')], name


def test_configs_are_locked_against_typos():
  config = load_config(os.path.join(REPO, 'configs/baseline.py'))
  config.lock()
  with pytest.raises(AttributeError):
    config.train.epoch = 5  # the key is 'epochs'


def test_main_help_explains_the_flags():
  out = subprocess.run(
    [sys.executable, '-m', 'sketchreid_jax.main', '--helpshort'],
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert out.returncode in (0, 1), out.stderr  # absl exits 1 after printing help, by convention
  assert 'Traceback' not in out.stderr
  assert '--config' in out.stdout and '--workdir' in out.stdout and '--mode' in out.stdout
