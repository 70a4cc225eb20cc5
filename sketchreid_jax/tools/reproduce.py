r"""Runs one of the papers' protocols end to end and writes its table (sketchreid_jax/studies.py).

  python -m sketchreid_jax.tools.reproduce --protocol=<protocol> \
      --config=configs/<method>.py[:preset] --workdir=runs/<name> [--config.<key>=<value> ...]

Protocols (--protocol):
  pku_trials        PKU-Sketch: trains and evaluates each of data.pku_trials (10) stratified
                    150/50 splits, then mean ± std of mAP, R-1/5/10/20    (CMDSL Table 4)
  market_styles     Market-Sketch-1K, one training: single-query per artist of data.test_styles,
                    single- and multi-query across them                  (CMDSL Tables 2–3)
  style_grid        training artists × unseen test artists, sub-tables (a)–(d): single/multi-query
                    training × single/multi-query testing; --grid_styles, --subtables
                                                                          (CMDSL Table 5)
  attribute_noise   the config with --noise_levels (0,3,6,9) of 27 attributes corrupted per
                    identity; run with the baseline's and CMDSL's configs (CMDSL Table 7)
  sbir              QMUL-ShoeV2 / QMUL-ChairV2, one training: every test sketch queries every
                    test photo; acc@1/5/10 and mAP          (DALNet Table 1 on ShoeV2)
  evaluate          no training: evaluate the workdir's best (else latest) checkpoint on
                    --config.eval.protocols (any of single_query, multi_query, with ':<styles>')

Seeds (--seeds=0,1,2, any protocol): the protocol runs once per seed with config.seed set to it,
in <workdir>/seed<k>/ (each with its own tables), then <workdir>/seeds.md, .csv and .json hold
mean ± std over the seeds (population std, ddof = 0) of every metric of every row; pku_trials adds
its mean over trials as a row; --protocol=evaluate evaluates each <workdir>/seed<k>/ (trained
there with --workdir=<workdir>/seed<k> --config.seed=<k>). Without --seeds, one run with the
config's seed, as before.

Every training goes to its own sub-folder of --workdir and resumes if interrupted; re-running a
finished protocol only re-evaluates. Evaluation options apply to every protocol:
--config.eval.rerank=True (k-reciprocal re-ranking, k1 20, k2 6, λ 0.3), --config.eval.flip=True
(flip-averaged features), --config.eval.multi_query_aggregate=stem (the MM'23 multi-query).
Tables go to <workdir>/<protocol>.md, .csv and .json.

Examples on the synthetic stand-in (after `make demo`):
  .venv/bin/python -m sketchreid_jax.tools.reproduce --protocol=pku_trials \
      --config=configs/cmdsl.py:pku --workdir=runs/cmdsl_pku_trials
  .venv/bin/python -m sketchreid_jax.tools.reproduce --protocol=style_grid \
      --config=configs/cmdsl.py:market_sq --workdir=runs/cmdsl_grid
  .venv/bin/python -m sketchreid_jax.tools.reproduce --protocol=market_styles --seeds=0,1,2 \
      --config=configs/baseline.py --workdir=runs/baseline_styles_3seeds
"""

import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')  # before TF is imported anywhere

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from sketchreid_jax import runtime, studies  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_enum('protocol', None, list(studies.STUDIES), 'Which protocol to run (see above).')
config_flags.DEFINE_config_file(
  'config', None, 'Config file, optionally with :preset.', lock_config=True
)
flags.DEFINE_string('workdir', None, 'Where the runs and the summary tables go.')
flags.DEFINE_string(
  'grid_styles',
  'ABCDEF',
  'style_grid: the artists, in order (rows S1, S1,2, ...; columns S6, ...).',
)
flags.DEFINE_string('subtables', 'abcd', 'style_grid: which sub-tables of Table 5 to run.')
flags.DEFINE_string('noise_levels', '0,3,6,9', 'attribute_noise: corrupted attributes per run.')
flags.DEFINE_string(
  'seeds',
  '',
  'Comma-separated config.seed values (e.g. 0,1,2): the protocol once per seed in '
  '<workdir>/seed<k>/, then mean ± std over seeds in <workdir>/seeds.md/.csv/.json. '
  "'' = one run with the config's seed.",
)
flags.DEFINE_string('jax_cache', runtime.DEFAULT_JAX_CACHE, runtime.JAX_CACHE_HELP)
flags.mark_flags_as_required(['protocol', 'config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  try:  # before any JAX/TF start-up, so a typo fails at once
    seeds = studies.parse_seeds(FLAGS.seeds) if FLAGS.seeds.strip() else None
  except ValueError as e:
    print(f'reproduce: error: {e}', file=sys.stderr)
    sys.exit(2)
  runtime.configure(FLAGS.jax_cache, FLAGS.config.parallel)
  from sketchreid_jax import validate
  from sketchreid_jax.config_base import ConfigError

  try:  # the study's base config, before any data or compilation (as main does)
    validate.validate(FLAGS.config, FLAGS.workdir)
  except ConfigError as e:
    print(f'reproduce: error: {e}', file=sys.stderr)
    sys.exit(2)
  options = {
    'grid_styles': FLAGS.grid_styles,
    'subtables': FLAGS.subtables,
    'noise_levels': FLAGS.noise_levels,
  }
  if seeds is None:
    studies.STUDIES[FLAGS.protocol].run(FLAGS.config, FLAGS.workdir, options)
  else:
    studies.run_seeds(FLAGS.protocol, FLAGS.config, FLAGS.workdir, options, seeds)


if __name__ == '__main__':
  app.run(main)
