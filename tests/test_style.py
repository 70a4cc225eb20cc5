"""One style, enforced: `ruff format` (single quotes, 2-space indents, 100 columns) and `ruff check`
(the rules pyproject.toml selects) are clean on the whole repository."""

import subprocess
import sys

import pytest

from tests.conftest import REPO


@pytest.mark.parametrize('command', [['format', '--check'], ['check']])
def test_ruff_is_clean(command):
  done = subprocess.run(
    [sys.executable, '-m', 'ruff', *command, '.'], cwd=REPO, capture_output=True, text=True
  )
  assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
