"""A new method is one module and one config file, and needs no edit to any file of the package.

The test writes both into a temporary folder, outside the package, and trains and evaluates the
method for one epoch through ``main`` in a subprocess, which finds it by its dotted module name
(``config.method='toy_methods.toy'``).
"""

import json
import os
import subprocess
import sys
import textwrap

import jax

from sketchreid_jax.config_base import base_config
from tests.conftest import REPO

METHOD_MODULE = textwrap.dedent(
  '''
  """A toy method: the baseline's two streams with a new head and a new loss term."""

  import jax.numpy as jnp

  from sketchreid_jax import losses, models
  from sketchreid_jax.methods import Method, baseline


  class ToyModel(models.Baseline):
    """The baseline's model under a new name (a new method may bring any ReIDModel)."""


  def config(c):
    c.loss.toy_norm_weight = 0.01  # pulls the features' squared norm towards 1


  def model_for(config, num_classes, bn_axis_name):
    return ToyModel(**baseline.backbone_kwargs(config, num_classes, bn_axis_name))


  def losses_for(outputs, batch, config):
    feat = outputs['feat']
    norm = jnp.mean(jnp.square(jnp.sum(jnp.square(feat), axis=-1) - 1.0))
    return {
      'id': (1.0, losses.cross_entropy(outputs['logits'], batch['label'])),
      'toy_norm': (config.loss.toy_norm_weight, norm),
    }


  METHOD = Method(
    name='toy',
    model_for=model_for,
    losses_for=losses_for,
    model_types=(ToyModel,),
    config=config,
    stage_split=baseline.STAGE_SPLIT,
  )
  '''
)

CONFIG_FILE = textwrap.dedent(
  '''
  """The toy method on the tiny demo data."""

  from sketchreid_jax.config_base import base_config


  def get_config():
    c = base_config('toy_methods.toy')
    c.model.width = 8
    c.model.blocks = (1, 1, 1, 1)
    c.data.image_size = (64, 32)
    c.sampler.P, c.sampler.K = 4, 2
    c.optim.lr, c.optim.backbone_lr_mult = 0.05, 1.0
    c.train.epochs = 1
    c.train.progress_bar = False
    c.eval.batch_size = 32
    c.eval.protocols = ('single_query:A',)
    c.schedule.warmup_epochs, c.schedule.milestones = 1, (1,)
    return c
  '''
)


def _package_files() -> dict[str, float]:
  root = os.path.join(REPO, 'sketchreid_jax')
  return {
    os.path.join(d, f): os.path.getmtime(os.path.join(d, f))
    for d, _, files in os.walk(root)
    for f in files
    if f.endswith('.py')
  }


def test_a_method_outside_the_package_trains_and_evaluates_through_main(
  tmp_path, tiny_market, tfds_cache
):
  (tmp_path / 'toy_methods').mkdir()
  (tmp_path / 'toy_methods' / '__init__.py').write_text('')
  (tmp_path / 'toy_methods' / 'toy.py').write_text(METHOD_MODULE)
  (tmp_path / 'toy_config.py').write_text(CONFIG_FILE)
  before = _package_files()
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), REPO]))
  common = [
    f'--config={tmp_path / "toy_config.py"}',
    f'--workdir={tmp_path / "run"}',
    f'--config.data.root={tiny_market}',
    f'--config.data.cache_dir={tfds_cache}',
    f'--jax_cache={jax.config.jax_compilation_cache_dir}',
  ]
  # Training ends with the evaluation of the last epoch.
  done = subprocess.run(
    [sys.executable, '-m', 'sketchreid_jax.main', *common],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert done.returncode == 0, done.stderr[-3000:]

  run = tmp_path / 'run'
  config = json.loads((run / 'config.json').read_text())
  assert config['method'] == 'toy_methods.toy'
  assert config['loss']['toy_norm_weight'] == 0.01
  # Only the common keys and the toy's own: no other method's keys.
  assert 'use_aux' not in config['model'] and 'cmalign_mask' not in config['loss']
  assert 'wrt_shift' not in config['loss']
  mAP = json.loads((run / 'results.json').read_text())['results']['single_query:A']['mAP']
  assert 0.0 < mAP <= 100.0
  # The toy term was in the step (the metric writer logs it) and nothing in the package changed.
  assert 'loss/toy_norm=' in done.stderr
  assert _package_files() == before


def test_the_baseline_config_holds_no_other_methods_keys():
  flat = json.dumps(base_config('baseline').to_dict())
  for key in ('use_aux', 'use_mia', 'circle_', 'cmalign_', 'ffam_', 'rtcl_', 'mask_source',
              'attribute_noise', 'style_weight', 'dag_'):  # fmt: skip
    assert key not in flat, key
