r"""The MM'23 "Beyond Domain Gap" baseline on Market-Sketch-1K: two-stream ResNet-50, GeM + BNNeck,
identity loss and the weighted regularised triplet (docs/design.md §4).

Launch (from the repository root, after `make demo` has created .venv):

  .venv/bin/python -m sketchreid_jax.main \
      --config=configs/baseline.py:market_mq \
      --workdir=runs/baseline_mq \
      --config.data.root=/path/to/Market-Sketch-1K

Presets (the part after ':'):
  market_s1         train and test on artist S1 (style A), single-query      (CMDSL Table 2 setting)
  market_sq         train and test on all six artists, single-query          (CMDSL Table 3, S)
  market_mq         train and test on all six artists, multi-query           (CMDSL Table 3, M)
                    as the release's --train_mq --test_mq: fused sketch sets with its Non-local
                    block in training, the same fusion ('stem') at test (models/fusion.py)
  pku               PKU-Sketch, one 150/50 trial (--config.data.pku_trial)   (CMDSL Table 4, B)
  shoev2, chairv2   QMUL-ShoeV2 / QMUL-ChairV2 fine-grained SBIR (each photo a class; protocol
                    'sbir': acc@1/5/10, mAP), the baseline beside DALNet's SBIR rows:
                    `python -m sketchreid_jax.tools.reproduce --protocol=sbir
                    --config=configs/baseline.py:shoev2 --workdir=runs/baseline_shoev2`
Without a preset the config is market_sq. The old names market_sketch_s1/sq/mq and pku_sketch
still work and warn.

CMAlign (L_ic, L_dt), which the released MM'23 code adds on top of this, arrives with the CMDSL
method; this config is the identity + WRT core that every method here extends.
"""

from sketchreid_jax.config_base import (
  PKU_SKETCH,
  QMUL_CHAIRV2,
  QMUL_SHOEV2,
  base_config,
  with_preset,
)

PRESETS = {
  'market_s1': {
    'data.train_styles': 'A',
    'data.test_styles': 'A',
    'eval.protocols': ('single_query',),
  },
  'market_sq': {
    'data.train_styles': 'ABCDEF',
    'data.test_styles': 'ABCDEF',
    'eval.protocols': ('single_query',),
  },
  'market_mq': {
    'data.train_styles': 'ABCDEF',
    'data.test_styles': 'ABCDEF',
    'eval.protocols': ('multi_query', 'single_query'),
    'model.sketch_fusion': True,
    'model.fusion_nonlocal': True,
    'eval.multi_query_aggregate': 'stem',
  },
  'pku': PKU_SKETCH,
  'shoev2': QMUL_SHOEV2,
  'chairv2': QMUL_CHAIRV2,
}


# The names these presets had before every config used one scheme; they still work, with a warning.
ALIASES = {
  'market_sketch_s1': 'market_s1',
  'market_sketch_sq': 'market_sq',
  'market_sketch_mq': 'market_mq',
  'pku_sketch': 'pku',
}


def get_config(preset: str = 'market_sq'):
  return with_preset(base_config('baseline'), preset, PRESETS, ALIASES)
