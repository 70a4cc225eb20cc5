r"""The demo: the MM'23 baseline, narrow and small, on the synthetic Market-Sketch-1K stand-in,
sized to train and evaluate in a few minutes on a 2-core CPU (`make demo`).

Launch (what `make demo` runs):

  .venv/bin/python -m sketchreid_jax.main --config=configs/demo.py --workdir=runs/demo

Differences from configs/baseline.py, and why: ResNet-50 at width 8 (1/64 of the FLOPs of width 64)
on 96×48 inputs so that a 2-core CPU trains 20 epochs in about 7 minutes (128×64 at width 16 runs
at 44 images/s there, 96×48 at width 8 at about 250); the backbone trains at the full learning rate
because there are no ImageNet weights to protect; a 20-epoch schedule. The demo trains on every
artist's sketches and reports single- and multi-query results on the 100 held-out identities, with
the chance level beside them. Adam(W) was tried and learned markedly slower than SGD here.
"""

from sketchreid_jax.config_base import base_config, with_preset

PRESETS = {
  # What the test suite runs: the same path, tiny enough for seconds.
  'tiny': {
    'model.width': 8,
    'model.blocks': (1, 1, 1, 1),  # one Bottleneck per stage: a third of the compile time
    'data.image_size': (64, 32),
    'sampler.P': 4,
    'sampler.K': 2,
    'train.epochs': 2,
    'eval.every_epochs': 1,
    'eval.batch_size': 32,
    'schedule.warmup_epochs': 1,
    'schedule.milestones': (1,),
  },
}


def get_config(preset: str = ''):
  c = base_config('baseline')
  c.data.root = 'data/synthetic/market_sketch'
  c.data.train_styles = 'ABCDEF'
  c.data.test_styles = 'ABCDEF'
  c.data.image_size = (96, 48)
  c.data.pad = 4
  c.data.threads = 1  # leave the second core to the XLA step (+10% images/s on 2 cores)
  c.model.width = 8
  c.sampler.P = 8
  c.sampler.K = 4
  c.optim.lr = 0.05
  c.optim.backbone_lr_mult = 1.0
  c.train.epochs = 20
  c.train.log_every_steps = 38
  c.schedule.warmup_epochs = 2
  c.schedule.milestones = (14, 18)
  c.eval.every_epochs = 0  # only after the last epoch
  c.eval.protocols = ('single_query', 'multi_query')
  return with_preset(c, preset, PRESETS)
