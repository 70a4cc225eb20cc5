r"""Command-line entry point: train and evaluate, or evaluate a trained workdir.

  python -m sketchreid_jax.main --config=configs/baseline.py:market_sketch_mq --workdir=runs/mq \
      [--config.train.epochs=5 ...] [--mode=train|evaluate]

``--config`` names an ml_collections config file, optionally followed by ``:preset``; any key can be
overridden with ``--config.<key>=<value>``. ``--mode=train`` (default) resumes from the workdir's
latest checkpoint if there is one. ``--mode=evaluate`` evaluates the workdir's best (else latest)
checkpoint on the config's protocols without training.

Several hosts: run the same command on every host with
``--config.parallel.coordinator_address=host0:port --config.parallel.num_processes=N
--config.parallel.process_id=i`` (i = 0..N-1); under ``srun``/``mpirun`` the environment provides
them (see ``parallel.initialize_distributed``).
"""

import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')  # before TF is imported anywhere

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from sketchreid_jax import runtime  # noqa: E402

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
  'config', None, 'Config file, optionally with :preset.', lock_config=True
)
flags.DEFINE_string('workdir', None, 'Where checkpoints, metrics and reports go.')
flags.DEFINE_enum('mode', 'train', ['train', 'evaluate'], 'Train (and evaluate) or evaluate only.')
flags.DEFINE_string('jax_cache', runtime.DEFAULT_JAX_CACHE, runtime.JAX_CACHE_HELP)
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  # First: joins a multi-process job when config.parallel or the environment asks for one.
  runtime.configure(FLAGS.jax_cache, FLAGS.config.parallel)
  from sketchreid_jax import parallel, train

  if FLAGS.mode == 'train':
    parallel.check_identity_split(FLAGS.config.sampler.P)  # before the data are loaded
    train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  else:
    train.evaluate_workdir(FLAGS.config, FLAGS.workdir)


if __name__ == '__main__':
  app.run(main)
