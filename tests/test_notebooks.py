"""The notebooks run top to bottom on tiny synthetic data: each is executed in a fresh kernel with
its ``parameters`` cell overridden (as papermill would), and a cell that raises fails the test.

The notebooks carry their own checks (a batch's layout, the table matching results.json, …), so a
notebook that runs but shows the wrong thing fails too. 03 analyses the run that 02 trained.
"""

import os

import nbformat
import pytest
from nbclient import NotebookClient

from tests.conftest import REPO

NOTEBOOKS = os.path.join(REPO, 'notebooks')
TIMEOUT = 600  # per cell; a tiny training takes well under a minute


def _with_parameters(nb, overrides: dict):
  cells = [c for c in nb.cells if 'parameters' in c.metadata.get('tags', [])]
  assert len(cells) == 1, 'each notebook has exactly one cell tagged "parameters"'
  names = {line.split('=')[0].strip() for line in cells[0].source.splitlines() if '=' in line}
  unknown = set(overrides) - names
  assert not unknown, f'not parameters of the notebook: {unknown}'
  cells[0].source += '\n# overridden by the test suite\n' + '\n'.join(
    f'{k} = {v!r}' for k, v in overrides.items()
  )
  return nb


def _run(name: str, overrides: dict, monkeypatch):
  path = os.path.join(NOTEBOOKS, name)
  nb = nbformat.read(path, as_version=4)
  for cell in nb.cells:
    if cell.cell_type == 'code':
      assert not cell.outputs and cell.execution_count is None, f'{name} is committed with outputs'
  # The kernel inherits the environment: the suite's compile cache serves it too.
  monkeypatch.setenv(
    'JAX_COMPILATION_CACHE_DIR',
    os.environ.get('PYTEST_JAX_CACHE', os.path.expanduser('~/.cache/sketchreid_jax/jax_tests')),
  )
  monkeypatch.setenv('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0.5')
  monkeypatch.setenv('TF_CPP_MIN_LOG_LEVEL', '2')
  client = NotebookClient(
    _with_parameters(nb, overrides),
    timeout=TIMEOUT,
    kernel_name='python3',
    resources={'metadata': {'path': REPO}},
  )
  client.execute()  # raises CellExecutionError naming the cell on the first error
  return nb


@pytest.fixture(scope='module')
def notebook_run(tmp_path_factory):
  return str(tmp_path_factory.mktemp('notebooks') / 'run')


def test_01_data(tiny_market, tfds_cache, monkeypatch):
  nb = _run(
    '01_data.ipynb',
    {'DATA_ROOT': tiny_market, 'CACHE_DIR': tfds_cache, 'IMAGE_SIZE': (64, 32)},
    monkeypatch,
  )
  figures = [o for c in nb.cells for o in c.get('outputs', []) if 'image/png' in o.get('data', {})]
  assert len(figures) >= 4  # batch, identity, augmentations, DAG


def test_02_train_eval(tiny_market, tfds_cache, notebook_run, monkeypatch):
  _run(
    '02_train_eval.ipynb',
    {'DATA_ROOT': tiny_market, 'CACHE_DIR': tfds_cache, 'WORKDIR': notebook_run, 'EPOCHS': 1},
    monkeypatch,
  )
  assert os.path.exists(os.path.join(notebook_run, 'results.json'))


def test_03_retrieval_analysis(tiny_market, tfds_cache, notebook_run, monkeypatch):
  # Analyses 02's run when it exists (the suite's order); trains it itself otherwise.
  _run(
    '03_retrieval_analysis.ipynb',
    {'DATA_ROOT': tiny_market, 'CACHE_DIR': tfds_cache, 'WORKDIR': notebook_run},
    monkeypatch,
  )
