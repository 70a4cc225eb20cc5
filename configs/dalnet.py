r"""DALNet (AAAI 2024): DAG auxiliary modality, three-stream ResNet-50, MIA (BAM + ACA),
identity + cross-/intra-modal circle + style refinement losses (docs/design.md §4).

Launch (from the repository root, after `make demo` has created .venv):

  .venv/bin/python -m sketchreid_jax.main \
      --config=configs/dalnet.py:pku --workdir=runs/dalnet_pku \
      --config.data.root=/path/to/PKUSketchRE-ID_V1

Foreground masks: the presets use data.mask_source='auto', i.e. the U²-NetP masks precomputed
beside the dataset when they exist (make them once with
`python -m sketchreid_jax.tools.precompute_masks --root=<dataset> --model=u2netp
--weights=pretrained/u2netp.msgpack`), otherwise no masking with a warning in the log. Force a
source with --config.data.mask_source=precomputed|u2net|none.

Presets (the part after ':'):
  pku                    PKU-Sketch, one 150/50 trial (--config.data.pku_trial=0..9) (the default)
  market_sq              Market-Sketch-1K, all six artists, single-query
  market_mq              Market-Sketch-1K, all six artists, multi-query
  ablation_baseline      Table 1 "B": two-stream ResNet-50, identity loss only
  ablation_aux           + auxiliary modality (DAG + aux stream, identity loss on it)
  ablation_cross         + cross-modal circle loss
  ablation_intra         + intra-modal circle loss (inside each modality; no MIA yet)
  ablation_mia           + MIA (its identity loss; intra circle on pre/post-MIA pairs), no style loss
  dag_frozen             Table 2: DAG kernel frozen, no style loss
  dag_trainable          Table 2: DAG kernel trained by the task losses, no style loss
  dag_style              Table 2: DAG kernel trained, + style refinement loss (= pku, the full model)
  shoev2                 QMUL-ShoeV2 (fine-grained SBIR; each photo is a class; protocol 'sbir':
                         acc@1/5/10 and mAP of each test sketch against every test photo)
  chairv2                QMUL-ChairV2, the same
  ablation_<row>_shoev2  Table 1's rows on QMUL-ShoeV2 (<row> = baseline, aux, cross, intra, mia)
The ablations run on PKU-Sketch, as DALNet's tables do (and on ShoeV2 with the _shoev2 suffix).
SBIR launch: `python -m sketchreid_jax.tools.reproduce --protocol=sbir
--config=configs/dalnet.py:shoev2 --workdir=runs/dalnet_shoev2 --config.data.root=/path/to/ShoeV2`.

Market-Sketch-1K protocol: market_mq trains on single sketches and tests multi-query with the
'mean' aggregate (each identity's query = the re-normalised mean of its sketches' embeddings).
DALNet describes no multi-query training, and the release's fusion (mean of stem maps, Non-local
block) belongs to its two-stream stem, not to DALNet's three private streams, so
model.sketch_fusion is refused for this method (validate.py).

What the seed does not give (its formula images and most numbers were lost), and what we chose:
loss weights (all 1), optimiser and schedule (the MM'23 baseline's: SGD Nesterov, lr 0.1 with the
backbone at 0.1×, 10 warm-up epochs, ×0.1 at 20 and 50, 80 epochs), P×K = 8×4, image 288×144,
MIA reduction 16. Circle m = 0.25, γ = 64 and the style τ = 0.07 are the circle loss's usual values (Sun et al.) and DALNet's stated temperature.

Training from scratch (no --config.model.init_checkpoint) with the circle terms on, add
--config.optim.grad_clip_norm=5: their early gradients (global norm > 100 with γ = 64) made SGD at
lr 0.05 diverge to NaN within a few hundred steps on the synthetic ablation; the papers do not clip.
Each loss term is clipped on its own (optim.clip_per_term) and the BNNecks and classifiers stay
outside the clip (optim.clip_exempt), so the identity losses keep training at the full rate;
methods/dalnet.py gives the measurements.

Test feature: the pre-BN GeM feature, except in the rows trained by the identity loss alone
(ablation_baseline, ablation_aux and their _shoev2 rows), which test on the BNNeck output
(eval.feature='bn_feat'; ID_LOSS_ONLY below says why).
"""

from sketchreid_jax.config_base import (
  PKU_SKETCH,
  QMUL_CHAIRV2,
  QMUL_SHOEV2,
  base_config,
  with_preset,
)

HEADS = ('gem', 'style_gem', 'bnneck', 'mia_bnneck', 'mia', 'dag')

PKU = PKU_SKETCH
FULL = {
  'loss.circle_cross_weight': 1.0,
  'loss.circle_intra_weight': 1.0,
  'loss.style_weight': 1.0,
}
NO_STYLE = {'loss.style_weight': 0.0}
TWO_STREAMS = {'model.use_aux': False, 'model.use_mia': False, 'loss.mia_id_weight': 0.0}
NO_MIA = {'model.use_mia': False, 'loss.mia_id_weight': 0.0}
ID_ONLY = {'loss.circle_cross_weight': 0.0, 'loss.circle_intra_weight': 0.0, **NO_STYLE}
# A row trained by the identity loss alone is tested on the BNNeck output: that loss shapes only
# the feature after the BatchNorm (its classifier reads it), and BNNeck's authors (Luo et al.
# 2019) retrieve with that feature; the rows with a circle term train and test the pre-BN one.
# On the synthetic ablation (seed 0) row B gave single-query mAP 8.7 on the BNNeck output
# against 5.7 on the pre-BN feature, and the cross-modal row 8.7 against 13.7 the other way.
ID_LOSS_ONLY = {**ID_ONLY, 'eval.feature': 'bn_feat'}

PRESETS = {
  'pku': PKU,
  'market_sq': {
    'data.train_styles': 'ABCDEF',
    'data.test_styles': 'ABCDEF',
    'eval.protocols': ('single_query',),
  },
  'market_mq': {
    'data.train_styles': 'ABCDEF',
    'data.test_styles': 'ABCDEF',
    'eval.protocols': ('multi_query', 'single_query'),
  },
  'ablation_baseline': {**PKU, **TWO_STREAMS, **ID_LOSS_ONLY},
  'ablation_aux': {**PKU, **NO_MIA, **ID_LOSS_ONLY},
  'ablation_cross': {**PKU, **NO_MIA, **ID_ONLY, 'loss.circle_cross_weight': 1.0},
  'ablation_intra': {**PKU, **NO_MIA, **NO_STYLE},
  'ablation_mia': {**PKU, **NO_STYLE},
  'dag_frozen': {**PKU, **NO_STYLE, 'model.dag_trainable': False},
  'dag_trainable': {**PKU, **NO_STYLE},
  'dag_style': PKU,
  # DALNet's SBIR generalisation (its Table 1 ablates on PKU-Sketch and QMUL-ShoeV2).
  'shoev2': QMUL_SHOEV2,
  'chairv2': QMUL_CHAIRV2,
}
# Table 1's rows on QMUL-ShoeV2: the PKU rows' switches on the ShoeV2 data and protocol.
TABLE1 = ('ablation_baseline', 'ablation_aux', 'ablation_cross', 'ablation_intra', 'ablation_mia')
PRESETS |= {
  f'{row}_shoev2': {**{k: v for k, v in PRESETS[row].items() if k not in PKU}, **QMUL_SHOEV2}
  for row in TABLE1
}


def get_config(preset: str = 'pku'):
  c = base_config('dalnet')
  c.seed = 0
  c.data.image_size = (288, 144)
  c.data.mask_source = 'auto'
  c.data.mask_set = 'u2netp'
  c.sampler.P = 8
  c.sampler.K = 4
  c.model.gem_learnable = True  # "GeM Pooling ... where p is a learnable parameter"
  c.model.use_aux = True
  c.model.use_mia = True
  c.optim.head_modules = HEADS
  # From-scratch runs clip (optim.grad_clip_norm): each loss term on its own, and never the
  # BNNecks and classifiers, which only the identity losses train (methods/dalnet.py, "Scale").
  c.optim.clip_per_term = True
  c.optim.clip_exempt = ('bnneck', 'mia_bnneck')
  c.loss.mia_id_weight = 1.0
  for key, value in FULL.items():
    section, name = key.split('.')
    c[section][name] = value
  c.train.epochs = 80
  c.schedule.warmup_epochs = 10
  c.schedule.milestones = (20, 50)
  return with_preset(c, preset, PRESETS)
