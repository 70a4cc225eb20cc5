"""The configuration keys every method reads, with their defaults and meanings.

``base_config(method)`` is these common keys plus the method's own (``Method.config`` in
``methods/<method>.py`` defines them, with defaults and meanings), so a run's resolved config holds
only keys its method reads. Config files (``configs/*.py``) start from it and change what their
preset needs; they never invent keys (configs are locked, so a typo in ``--config.train.epoch=5``
is an error rather than a silently ignored setting). Defaults follow the MM'23 baseline
(docs/design.md §4).
"""

import warnings

import ml_collections


class ConfigError(ValueError):
  """A configuration that cannot run, found before any data is read or anything compiled.

  The message is one line that names the key and the fix (``sketchreid_jax.validate``, ``main``).
  """


def base_config(method: str = 'baseline') -> ml_collections.ConfigDict:
  """The common keys plus ``method``'s own (``methods.get_method(method).config``)."""
  from sketchreid_jax.methods import get_method  # the methods import models: load on use

  c = common_config()
  c.method = method
  get_method(method).config(c)
  return c


def common_config() -> ml_collections.ConfigDict:
  """The keys every method reads (training, data, evaluation, the ResNet-50 streams)."""
  c = ml_collections.ConfigDict()
  # A module of sketchreid_jax.methods ('baseline', 'cmdsl', 'dalnet') or a dotted module path.
  c.method = 'baseline'
  c.seed = 0  # model init, P×K plan and augmentation all derive from it

  c.data = ml_collections.ConfigDict()
  c.data.dataset = 'market_sketch'  # key of sketchreid_jax.datasets.DATASETS
  # The dataset folder (real or synthetic, same layout).
  c.data.root = 'data/synthetic/market_sketch'
  c.data.cache_dir = ''  # TFDS build cache; '' = ~/.cache/sketchreid_jax/tfds
  c.data.pku_trial = 0  # PKU-Sketch: which random 150/50 identity split (protocol: 0..9)
  c.data.pku_split_seed = 0  # PKU-Sketch: seed of the trial splits; (seed, trial) fixes one
  c.data.pku_trials = 10  # PKU-Sketch protocol: trials 0..pku_trials-1 (tools.reproduce pku_trials)
  # PKU-Sketch test identities per style and trial (CMDSL Table 1: 50 test ids in all).
  c.data.pku_test_counts = ml_collections.ConfigDict({'A': 12, 'B': 5, 'C': 19, 'D': 8, 'E': 6})
  c.data.train_styles = 'ABCDEF'  # artist styles (S1..S6 = A..F) whose sketches train
  c.data.test_styles = 'ABCDEF'  # artist styles whose sketches are the queries
  c.data.image_size = (288, 144)  # (H, W)
  c.data.pad = 10  # zero padding before the random crop
  c.data.flip = True
  c.data.random_erasing = 0.0  # probability; off in the MM'23 baseline, on (0.5) in CMDSL's text
  # Resize every image to image_size once, on load, with PIL's antialiasing (Lanczos) filter, as
  # the MM'23 release does before augmenting (datasets/resize.py); False = bilinear in tf.data.
  c.data.resize_antialias = False
  c.data.prefetch = 2  # batches prefetched by tf.data and to the device
  c.data.threads = 0  # tf.data thread-pool size; 0 = TF's default (all cores)

  c.sampler = ml_collections.ConfigDict()
  c.sampler.P = 8  # identities per batch
  c.sampler.K = 4  # photos and sketches per identity (batch = 2·P·K)
  # 'cycle': identities walk per-epoch permutations, images drawn without replacement when the
  # identity has >= K (ours); 'release': the MM'23 release's IdentitySampler, P identities drawn
  # afresh for every batch and K images always with replacement (sampler.pk_plan).
  c.sampler.scheme = 'cycle'

  c.model = ml_collections.ConfigDict()
  c.model.width = 64  # ResNet base channels; 64 is the real ResNet-50
  c.model.last_stride = 1  # re-id keeps layer4 at 1/16 resolution
  # Bottlenecks in layer1..layer4: (3, 4, 6, 3) is ResNet-50 (the papers; ImageNet weights need
  # it). Fewer give a shallower net of the same shape; the tests' tiny models use (1, 1, 1, 1).
  c.model.blocks = (3, 4, 6, 3)
  c.model.gem_p = 3.0
  c.model.gem_learnable = False  # fixed p = 3 in the baseline
  c.model.dtype = 'float32'  # computation dtype ('bfloat16' for mixed precision)
  # Converted ImageNet weights (tools.convert_weights); '' = from scratch.
  c.model.init_checkpoint = ''
  # Multi-query training as released (--train_mq; every "M" row of the papers): each sketch slot
  # holds the identity's whole set of training sketches, independently augmented, fused at the
  # stem (mean of the stem maps; models/fusion.py). Baseline and CMDSL only.
  c.model.sketch_fusion = False

  c.loss = ml_collections.ConfigDict()
  c.loss.id_weight = 1.0  # identity cross-entropy on the BNNeck logits
  c.loss.label_smoothing = 0.0

  c.optim = ml_collections.ConfigDict()
  c.optim.name = 'sgd'  # 'sgd' (the papers: Nesterov momentum) or 'adamw' (from-scratch runs)
  c.optim.lr = 0.1  # base learning rate of the heads
  c.optim.backbone_lr_mult = 0.1  # backbone lr = lr × this (ImageNet-initialised backbones)
  c.optim.momentum = 0.9  # SGD momentum, or AdamW's beta1
  c.optim.nesterov = True
  c.optim.weight_decay = 5e-4  # SGD: coupled L2 as torch.optim.SGD; AdamW: decoupled decay
  c.optim.head_modules = ('gem', 'bnneck')  # top-level parameter collections trained at the full lr
  # Clip the global gradient norm to this before the update (0 = off). The papers do not clip; from
  # scratch, DALNet's circle terms (γ = 64) give gradient norms > 100 early and diverge without it.
  c.optim.grad_clip_norm = 0.0
  # Top-level modules left out of that clip (their gradient is neither counted nor scaled), e.g.
  # BNNecks and classifiers that only the identity loss trains.
  c.optim.clip_exempt = ()
  # Clip each loss term's gradient to grad_clip_norm on its own, then sum (one backward pass per
  # term; optim.per_term_clipped_grads says why), instead of one global clip of the sum.
  c.optim.clip_per_term = False

  # Epoch-wise step schedule: lr·(e+1)/warmup_epochs during warm-up, then ×gamma at each milestone.
  c.schedule = ml_collections.ConfigDict()
  c.schedule.warmup_epochs = 10
  c.schedule.milestones = (20, 50)
  c.schedule.gamma = 0.1

  c.train = ml_collections.ConfigDict()
  c.train.epochs = 80
  c.train.log_every_steps = 10
  c.train.checkpoint_every_steps = 0  # 0 = at the end of every epoch only
  c.train.progress_bar = True
  # A step with non-finite losses or gradients is never applied; 'stop' ends training there,
  # 'skip' goes on (train.py states the policy).
  c.train.on_nonfinite = 'stop'

  c.eval = ml_collections.ConfigDict()
  c.eval.every_epochs = 10  # and always after the last epoch (0 = only then)
  # Evaluate after epoch e (1-based) when e > offset and (e - offset) % every_epochs == 0. The MM'23
  # release tests after epochs 3, 5, ..., 81 (its 0-based even epochs > 0): every 2, offset 1.
  c.eval.offset_epochs = 0
  # Any of 'single_query', 'multi_query' (re-id: mAP, R-k, mINP) and 'sbir' (QMUL-ShoeV2/ChairV2:
  # every test sketch queries every test photo; acc@1/5/10, mAP), each optionally restricted to
  # some artists with ':<styles>' (e.g. 'single_query:A' = style A only); else data.test_styles.
  c.eval.protocols = ('single_query',)
  c.eval.best_protocol = ''  # protocol whose best_metric picks the best checkpoint; '' = the first
  # 'mAP' or 'R-1' (the release keeps the epoch of the best rank-1), 'acc@1'/'acc@5'/'acc@10'/'mAP'
  # on 'sbir', optionally as '<protocol>/<metric>' (e.g. 'sbir/acc@1'). The selected epoch's numbers
  # are best on the test set, so the reports always show the last epoch's beside them.
  c.eval.best_metric = 'mAP'
  c.eval.batch_size = 128
  c.eval.feature = 'feat'  # 'feat' = pre-BN GeM feature (the reference), 'bn_feat' = after BNNeck
  c.eval.flip = False  # average the embeddings of the image and its mirror image
  # Multi-query embedding of an identity's sketches: 'mean' of their L2-normalised embeddings, or
  # 'stem' = the MM'23 code's mean of their modality-specific feature maps, embedded once.
  c.eval.multi_query_aggregate = 'mean'
  # k-reciprocal re-ranking (Zhong et al. 2017) of the query-gallery distances.
  c.eval.rerank = False
  c.eval.rerank_k1 = 20
  c.eval.rerank_k2 = 6
  c.eval.rerank_lambda = 0.3
  c.eval.max_rank = 50
  # ranked_list.png in the workdir: this many evenly spaced queries of the first protocol, each
  # with its top-k gallery photos framed green (same identity) or red (0 = no figure).
  c.eval.ranked_list_queries = 4
  c.eval.ranked_list_topk = 10

  c.parallel = ml_collections.ConfigDict()
  c.parallel.launcher = 'shard_map'  # 'shard_map' (jit over a ('data',) mesh) or 'pmap'
  # Several processes (hosts), each running the same command (parallel.initialize_distributed):
  # 'host:port' of process 0's coordinator; '' = single process unless the environment says
  # otherwise (JAX_COORDINATOR_ADDRESS, a multi-task srun step, an mpirun); 'auto' = JAX's own
  # cluster detection (Cloud TPU, SLURM, Open MPI).
  c.parallel.coordinator_address = ''
  # Processes in the job; 0 = from the environment; 1 = single process, the environment ignored.
  c.parallel.num_processes = 0
  c.parallel.process_id = -1  # this process's rank, 0..num_processes-1; -1 = from the environment
  return c


# The data keys of every method's PKU-Sketch preset (seed 42 as CMDSL's PKU runs).
PKU_SKETCH = {
  'data.dataset': 'pku_sketch',
  'data.root': 'data/synthetic/pku_sketch',
  'data.train_styles': 'ABCDE',
  'data.test_styles': 'ABCDE',
  'seed': 42,
  'eval.protocols': ('single_query',),
}


# The fine-grained SBIR datasets: each photo is an identity, QMUL records no sketcher (every
# sketch has style 'A'), and the test is the 'sbir' protocol, selected on acc@1 as FG-SBIR papers
# report it. 224×224: the square crops FG-SBIR networks take (the photos are 256×256 objects, not
# 2:1 person crops).
def _qmul(name: str) -> dict:
  return {
    'data.dataset': name,
    'data.root': f'data/synthetic/{name}',
    'data.train_styles': 'A',
    'data.test_styles': 'A',
    'data.image_size': (224, 224),
    'eval.protocols': ('sbir',),
    'eval.best_metric': 'acc@1',
  }


QMUL_SHOEV2 = _qmul('qmul_shoev2')
QMUL_CHAIRV2 = _qmul('qmul_chairv2')


def with_preset(
  config: ml_collections.ConfigDict, preset: str | None, presets: dict, aliases: dict | None = None
) -> ml_collections.ConfigDict:
  """Applies ``presets[preset]`` (a dict of dotted keys → values) to ``config``.

  Presets are flat dicts of overrides so that a reader sees in one place what a paper setting
  changes. ``aliases`` maps old preset names to current ones; an old name works and warns.
  """
  if not preset:
    return config
  if aliases and preset in aliases:
    warnings.warn(
      f'preset {preset!r} is now called {aliases[preset]!r}; the old name will be removed.',
      FutureWarning,
      stacklevel=3,
    )
    preset = aliases[preset]
  if preset not in presets:
    raise ConfigError(
      f'unknown preset {preset!r}; this config has: {", ".join(sorted(presets)) or "none"}'
    )
  return set_keys(config, presets[preset], where=f'preset {preset!r}')


def set_keys(config: ml_collections.ConfigDict, values: dict, *, where: str = 'override'):
  """Sets dotted keys (``'optim.lr'``) of ``config`` in place; an unknown key is a KeyError."""
  for key, value in values.items():
    node = config
    *parents, leaf = key.split('.')
    for p in parents:
      node = node[p]
    if leaf not in node:
      raise KeyError(f'{where} sets unknown key {key!r}')
    node[leaf] = value
  return config


def load_config(spec: str, **overrides) -> ml_collections.ConfigDict:
  """Loads ``'configs/x.py[:preset]'`` the way ``--config`` does (for notebooks and tests).

  ``overrides`` use ``__`` for dots: ``load_config('configs/demo.py', train__epochs=1)``.
  """
  import importlib.util
  import os

  path, _, preset = spec.partition(':')
  if not os.path.exists(path):
    raise FileNotFoundError(f'config file {path!r} not found (relative to {os.getcwd()!r})')
  module_spec = importlib.util.spec_from_file_location(f'_config_{abs(hash(path))}', path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  config = module.get_config(preset) if preset else module.get_config()
  return set_keys(config, {k.replace('__', '.'): v for k, v in overrides.items()})
