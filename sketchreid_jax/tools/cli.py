"""What every tool's command line shares: ``--help`` built from the module docstring (first
paragraph = description, the rest = epilog, line breaks kept), and the arguments of the tools that
read a trained workdir."""

import argparse


def parser(module: str, doc: str) -> argparse.ArgumentParser:
  """An ``argparse`` parser for ``python -m <module>`` whose ``--help`` is the docstring ``doc``."""
  description, _, epilog = doc.partition('\n\n')
  return argparse.ArgumentParser(
    prog=f'python -m {module}',
    description=description,
    epilog=epilog,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )


def add_checkpoint_args(p: argparse.ArgumentParser) -> None:
  """``--checkpoint`` (a training workdir) and ``--which`` (its best or latest checkpoint)."""
  p.add_argument('--checkpoint', required=True, help='training workdir (see below)')
  p.add_argument(
    '--which',
    choices=('best', 'latest'),
    default='best',
    help='checkpoint: best mAP (falls back to latest if none was evaluated) or latest',
  )
