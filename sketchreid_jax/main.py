r"""Command-line entry point: train and evaluate, or evaluate a trained workdir.

  python -m sketchreid_jax.main --config=configs/baseline.py:market_mq --workdir=runs/mq \
      [--config.train.epochs=5 ...] [--mode=train|evaluate]

``--config`` names an ml_collections config file, optionally followed by ``:preset``; any key can be
overridden with ``--config.<key>=<value>``. ``--mode=train`` (default) resumes from the workdir's
latest checkpoint if there is one. ``--mode=evaluate`` evaluates the workdir's best (else latest)
checkpoint on the config's protocols without training.

Several hosts: run the same command on every host with
``--config.parallel.coordinator_address=host0:port --config.parallel.num_processes=N
--config.parallel.process_id=i`` (i = 0..N-1); under ``srun``/``mpirun`` the environment provides
them (see ``parallel.initialize_distributed``).

A configuration that cannot run — an unknown preset or key, a value of the wrong type, a P that does
not split over the devices, an image size the backbone's strides cannot take, a missing weight file,
a workdir that cannot be written (``sketchreid_jax.validate``) — is reported as one line,
``main: error: ...``, with exit status 2, before any data is read or anything compiled.
"""

import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')  # before TF is imported anywhere

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from sketchreid_jax import runtime  # noqa: E402
from sketchreid_jax.config_base import ConfigError  # noqa: E402

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
  'config', None, 'Config file, optionally with :preset.', lock_config=True
)
flags.DEFINE_string('workdir', None, 'Where checkpoints, metrics and reports go.')
flags.DEFINE_enum('mode', 'train', ['train', 'evaluate'], 'Train (and evaluate) or evaluate only.')
flags.DEFINE_string('jax_cache', runtime.DEFAULT_JAX_CACHE, runtime.JAX_CACHE_HELP)
flags.mark_flags_as_required(['config', 'workdir'])


def _fail(message: str):
  print(f'main: error: {message}', file=sys.stderr)
  sys.exit(2)


def _one_line(error: BaseException, argv: list[str]) -> str:
  """The cause of a flag-parsing error as one line (absl and ml_collections give tracebacks)."""
  chain = [error]
  while (cause := chain[-1].__cause__ or chain[-1].__context__) is not None and len(chain) < 10:
    chain.append(cause)
  root = chain[-1]
  if isinstance(root, KeyError) and len(chain) > 1:  # a locked config's unknown field
    name = str(root.args[0]) if root.args else '?'
    overrides = [a.split('=', 1)[0] for a in argv if a.startswith('--config.')]
    flag = next((o for o in overrides if name in o[len('--config.') :].split('.')), '--config.?')
    hint = next(
      (str(e.args[0]).split('\n', 1)[1] for e in chain if '\n' in str(e.args[0] if e.args else '')),
      '',
    )
    return f'{flag}: unknown config key {flag[len("--config.") :]!r}. {hint}'.strip()
  if isinstance(root, OSError):  # ml_collections' loader wraps a missing or unreadable file
    path = next((a.split('=', 1)[1] for a in argv if a.startswith('--config=')), '?')
    return (
      f'--config={path}: cannot load the config file ({str(root).strip().splitlines()[-1].strip()})'
    )
  # The outermost message that is one line (absl's already names the flag), else the root's.
  for e in chain:
    text = str(e).strip()
    if text and '\n' not in text:
      return text
  return ' '.join(str(root).split())


def parse_flags(argv: list[str]) -> list[str]:
  """absl's parser, with every configuration error reported as one line (exit status 2)."""
  try:
    rest = FLAGS(argv)
    FLAGS.config.parallel  # a config file that failed to load raises only when first used
  except Exception as e:  # flags.Error, and the KeyError/OSError ml_collections lets through
    _fail(_one_line(e, argv))
  return rest


def main(argv):
  if len(argv) > 1:
    _fail(f'unexpected arguments: {argv[1:]}')
  # First: joins a multi-process job when config.parallel or the environment asks for one.
  runtime.configure(FLAGS.jax_cache, FLAGS.config.parallel)
  from sketchreid_jax import validate

  training = FLAGS.mode == 'train'
  # --mode=evaluate must not create a missing workdir (evaluate_workdir says what is missing).
  workdir = FLAGS.workdir if training or os.path.isdir(FLAGS.workdir) else None
  try:  # before the data are loaded or anything compiled
    validate.validate(FLAGS.config, workdir, training=training)
  except ConfigError as e:
    _fail(str(e))
  from sketchreid_jax import train

  if training:
    train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  else:
    train.evaluate_workdir(FLAGS.config, FLAGS.workdir)


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
