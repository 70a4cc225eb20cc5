"""Which package may import which: the evaluation never imports ``viz``, ``viz`` uses only public
names, the evaluation package and the sampler import TensorFlow only on use, and the deprecated
module paths still hand out the moved objects themselves."""

import ast
import pathlib
import subprocess
import sys

import pytest

from tests.conftest import REPO

PACKAGE = pathlib.Path(REPO) / 'sketchreid_jax'


def _modules(folder: str) -> list[pathlib.Path]:
  paths = sorted((PACKAGE / folder).rglob('*.py'))
  assert paths, f'no modules under {PACKAGE / folder}'
  return paths


def _module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(PACKAGE.parent).with_suffix('').parts
  return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


def _imports(path: pathlib.Path) -> list[tuple[str, str | None, str, int]]:
  """(absolute module, imported name or None, the name it is bound to, line) of every import in
  the file, relative imports resolved, function-level imports included."""
  package = _module_name(path).split('.')
  if path.name != '__init__.py':
    package = package[:-1]
  found = []
  for node in ast.walk(ast.parse(path.read_text(), str(path))):
    if isinstance(node, ast.Import):
      for alias in node.names:
        found.append((alias.name, None, alias.asname or alias.name.split('.')[0], node.lineno))
    elif isinstance(node, ast.ImportFrom):
      base = package[: len(package) - node.level + 1] if node.level else []
      module = '.'.join(base + ([node.module] if node.module else []))
      for alias in node.names:
        found.append((module, alias.name, alias.asname or alias.name, node.lineno))
  return found


@pytest.mark.parametrize('path', _modules('evaluation'), ids=lambda p: p.name)
def test_evaluation_imports_nothing_from_viz(path):
  for module, name, _, line in _imports(path):
    target = module if name is None else f'{module}.{name}'
    assert not (
      module == 'sketchreid_jax.viz'
      or module.startswith('sketchreid_jax.viz.')
      or target == 'sketchreid_jax.viz'
    ), f'{path.relative_to(REPO)}:{line} imports {target}; evaluation must not depend on viz'


@pytest.mark.parametrize('path', _modules('viz'), ids=lambda p: p.name)
def test_viz_uses_only_public_names(path):
  own = _module_name(path)
  bound = set()  # names bound to something imported from the package
  for module, name, as_name, line in _imports(path):
    if not module.startswith('sketchreid_jax') or module == own:
      continue
    assert name is None or not name.startswith('_'), (
      f'{path.relative_to(REPO)}:{line} imports the private {module}.{name}; make it public there'
    )
    bound.add(as_name)
  for node in ast.walk(ast.parse(path.read_text(), str(path))):
    if (
      isinstance(node, ast.Attribute)
      and isinstance(node.value, ast.Name)
      and node.value.id in bound
      and node.attr.startswith('_')
      and not node.attr.startswith('__')
    ):
      raise AssertionError(
        f'{path.relative_to(REPO)}:{node.lineno} reads the private {node.value.id}.{node.attr}'
      )


def test_numpy_only_parts_leave_tensorflow_unloaded():
  code = (
    'import sys\n'
    'import sketchreid_jax.evaluation as ev\n'
    'import sketchreid_jax.sampler\n'
    'ev.evaluate_rank, ev.sbir_accuracy, ev.k_reciprocal_rerank, ev.format_table\n'
    "assert 'tensorflow' not in sys.modules, 'evaluation or sampler imported TensorFlow'\n"
    'ev.extract_features\n'
    "assert 'tensorflow' in sys.modules\n"
  )
  subprocess.run([sys.executable, '-c', code], check=True, cwd=REPO, timeout=300)


def test_evaluation_package_exports_resolve():
  import sketchreid_jax.evaluation as ev

  for name in ev.__all__:
    assert getattr(ev, name) is not None, name
  assert set(ev.__all__) <= set(dir(ev))
  with pytest.raises(AttributeError, match='no_such_name'):
    ev.no_such_name  # noqa: B018


def test_old_evaluation_paths_are_the_new_objects():
  from sketchreid_jax import evaluate, modality
  from sketchreid_jax.evaluation import extract, protocols
  from sketchreid_jax.evaluation import ranked_list as ranked_list_new
  from sketchreid_jax.viz import ranked_list as ranked_list_old

  assert evaluate._extract_fn is extract.extract_fn
  for name in ('extract_features', 'stem_group_features', 'l2_normalise', 'require_finite'):
    assert getattr(evaluate, name) is getattr(extract, name), name
  for name in ('evaluate', 'PROTOCOLS', 'parse_protocol', 'Queries', 'Ranking', 'euclidean'):
    assert getattr(evaluate, name) is getattr(protocols, name), name
  assert evaluate.ranked_list_figure is protocols.ranking_figure
  assert (evaluate.PHOTO, evaluate.SKETCH) == (modality.PHOTO, modality.SKETCH) == (0, 1)
  for name in ('ranked_list_figure', 'ranked_list_from_eval', 'top_k_matches', 'CORRECT_COLOR'):
    assert getattr(ranked_list_old, name) is getattr(ranked_list_new, name), name


def test_old_modality_names_are_the_modality_ids():
  from sketchreid_jax import models
  from sketchreid_jax.datasets import table
  from sketchreid_jax.modality import PHOTO, SKETCH
  from sketchreid_jax.models import baseline

  assert (table.MODALITY_PHOTO, table.MODALITY_SKETCH) == (PHOTO, SKETCH)
  assert (models.PHOTO, models.SKETCH) == (baseline.PHOTO, baseline.SKETCH) == (PHOTO, SKETCH)


def test_old_input_pipeline_names_are_the_moved_objects():
  from sketchreid_jax import augment, input_pipeline, sampler
  from sketchreid_jax.datasets import table

  moved = {
    sampler: (
      'SCHEMES',
      'TRAIN_SPLIT',
      'TrainSet',
      'batch_indices',
      'host_slice',
      'make_train_set',
      'pk_plan',
      'steps_per_epoch',
    ),
    augment: (
      'IMAGENET_MEAN',
      'IMAGENET_STD',
      'PIXEL_MAX',
      'decode_mask',
      'decode_rgb',
      'example_seed',
      'geometric_augment',
      'normalize',
      'random_erase',
    ),
    table: ('available_styles',),
  }
  for module, names in moved.items():
    for name in names:
      assert getattr(input_pipeline, name) is getattr(module, name), name
