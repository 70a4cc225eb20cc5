"""A trained workdir without its dataset: load_trained, embed and the retrieve command, checked
against the training's own restore path and a direct Flax computation."""

import json
import os
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from sketchreid_jax import datasets, inference, input_pipeline, train
from sketchreid_jax.config_base import load_config
from sketchreid_jax.evaluation import extract as evaluate
from sketchreid_jax.evaluation.ranked_list import CORRECT_COLOR, WRONG_COLOR
from sketchreid_jax.tf_setup import tf
from sketchreid_jax.tools import retrieve
from tests.conftest import REPO

GALLERY_SIZE = 5  # photos in the retrieval test's folder


def tiny_config(tiny_market, tfds_cache):
  config = load_config(os.path.join(REPO, 'configs/demo.py:tiny'), train__epochs=1)
  config.data.root = tiny_market
  config.data.cache_dir = tfds_cache
  config.train.progress_bar = False
  # Flip averaging on, so that every embedding path here (evaluation, embed, export) must mirror
  # the images as the references in these tests do.
  config.eval.flip = True
  config.eval.protocols = ('single_query',)
  return config


def tiny_trained_workdir(tmp_path_factory, tiny_market, tfds_cache) -> str:
  """One epoch of configs/demo.py:tiny, trained once per session (test_export.py reuses it).

  The workdir's place is fixed under the session's base temp folder, so every test module that
  asks finds the same finished training (test modules are imported under two names; a module
  global would not be shared).
  """
  workdir = tmp_path_factory.getbasetemp() / 'tiny_trained'
  if not (workdir / 'best').is_dir() or not os.listdir(workdir / 'best'):
    shutil.rmtree(workdir, ignore_errors=True)
    train.train_and_evaluate(tiny_config(tiny_market, tfds_cache), str(workdir))
  return str(workdir)


@pytest.fixture(scope='module')
def workdir(tmp_path_factory, tiny_market, tfds_cache):
  return tiny_trained_workdir(tmp_path_factory, tiny_market, tfds_cache)


def flax_embeddings(trained, paths, modality):
  """Reference: TF decode + resize + normalise, the Flax model's extract averaged with the mirror
  image's (config.eval.flip), normalised in numpy."""
  assert trained.config.eval.flip
  h, w = trained.config.data.image_size
  images = np.stack(
    [
      input_pipeline.normalize(
        tf.image.resize(tf.cast(tf.io.decode_image(open(p, 'rb').read(), 3), tf.float32), (h, w))
      ).numpy()
      for p in paths
    ]
  )
  extract = jax.jit(
    lambda v, x: trained.model.apply(v, x, modality=modality, method=trained.model.extract)
  )
  # Both orientations in one batch: one compile.
  both = np.asarray(
    extract(trained.variables, np.concatenate([images, images[:, :, ::-1]]))['feat']
  )
  feat = (both[: len(images)] + both[len(images) :]) / 2
  return feat / np.linalg.norm(feat, axis=1, keepdims=True)


def test_load_trained_equals_the_saved_checkpoint_and_embed_equals_the_evaluation(
  workdir, tiny_market, tfds_cache
):
  trained = inference.load_trained(workdir)
  config = tiny_config(tiny_market, tfds_cache)
  assert trained.config.to_dict() == config.to_dict()  # tuples come back as tuples
  assert trained.checkpoint == os.path.join(workdir, 'best')
  meta = json.load(open(os.path.join(workdir, 'train_meta.json')))
  assert trained.step == meta['steps_per_epoch'] and trained.meta == meta

  # Everything the training saved, read back whole without a template (no partial restore).
  saved = ocp.StandardCheckpointer().restore(
    os.path.join(workdir, 'best', str(trained.step), 'default')
  )
  expected = {'params': saved['params'], 'batch_stats': saved['batch_stats']}
  assert jax.tree.structure(trained.variables) == jax.tree.structure(expected)
  for got, want in zip(jax.tree.leaves(trained.variables), jax.tree.leaves(expected)):
    np.testing.assert_array_equal(got, np.asarray(want))

  # embed on image files = the evaluation's features of the same rows of the dataset. The batch
  # sizes (and so the compiled programs) are those of the retrieval below: 5 photos, 1 sketch.
  table = datasets.load(config.data)
  eval_set = input_pipeline.make_eval_set(table, 'A', multi_query=False)
  for rows, modality in (
    (eval_set.gallery_index[:GALLERY_SIZE], 'photo'),
    (eval_set.query_index[:1], 'sketch'),
  ):
    config.eval.batch_size = len(rows)  # embed's batch: no padded rows
    want = evaluate.extract_features(
      trained.model,
      trained.variables,
      table,
      rows,
      modality=inference.MODALITIES[modality],
      config=config,
    )
    paths = [os.path.join(tiny_market, p) for p in table.path[rows]]
    got = inference.embed(trained, paths, modality=modality)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(got, want, atol=1e-6)

  latest = inference.load_trained(workdir, which='latest')
  assert latest.checkpoint == os.path.join(workdir, 'checkpoints') and latest.step == trained.step


def test_retrieve_ranks_a_folder_as_the_flax_model_does(workdir, tiny_market, tmp_path, capsys):
  photos = os.path.join(tiny_market, 'photo', 'query')
  names = sorted(os.listdir(photos))
  pid = names[0][:4]  # a test identity: its sketch is a query of style A
  query = os.path.join(tiny_market, 'sketch', 'A', 'query', f'{pid}.jpg')
  mine = [n for n in names if n[:4] == pid]
  others = {}  # one photo of each other identity
  for n in names:
    if n[:4] != pid:
      others.setdefault(n[:4], n)
  assert 0 < len(mine) < GALLERY_SIZE
  chosen = sorted(mine + sorted(others.values())[: GALLERY_SIZE - len(mine)])
  gallery = tmp_path / 'gallery'
  gallery.mkdir()
  for n in chosen:
    shutil.copy(os.path.join(photos, n), gallery / n)
  out = tmp_path / 'ranks.png'
  topk = 4

  top = retrieve.main(
    [
      f'--checkpoint={workdir}',
      f'--query={query}',
      f'--gallery={gallery}',
      f'--topk={topk}',
      f'--out={out}',
      '--id_prefix_len=4',
      '--jax_cache=',
    ]
  )

  trained = inference.load_trained(workdir)
  q = flax_embeddings(trained, [query], inference.SKETCH)[0]
  g = flax_embeddings(trained, [str(gallery / n) for n in chosen], inference.PHOTO)
  cosine = g @ q
  want = sorted(zip(chosen, cosine), key=lambda item: -item[1])[:topk]
  assert [n for n, _ in top] == [n for n, _ in want]
  np.testing.assert_allclose([s for _, s in top], [s for _, s in want], atol=1e-5)

  printed = [line.split() for line in capsys.readouterr().out.splitlines()]
  rows = [line for line in printed if len(line) == 3 and line[0].isdigit()]
  assert [int(r[0]) for r in rows] == list(range(1, topk + 1))
  assert [r[2] for r in rows] == [n for n, _ in want]
  np.testing.assert_allclose([float(r[1]) for r in rows], [s for _, s in want], atol=2e-6)

  from PIL import Image

  image = np.asarray(Image.open(out).convert('RGB')).astype(int)
  assert image.shape[0] > 50 and image.shape[1] > 5 * image.shape[0] // 4
  # Frames: as many identity matches in the top-k as green frames drawn, and so for red.
  hits = sum(n[:4] == pid for n, _ in want)
  for colour, count in ((CORRECT_COLOR, hits), (WRONG_COLOR, topk - hits)):
    near = np.all(np.abs(image - np.array(colour) * 255) <= 3, axis=-1)
    assert near.any() == (count > 0), (colour, count)


def test_retrieve_errors_name_the_problem(workdir, tiny_market, tmp_path, capsys):
  query = os.path.join(
    tiny_market,
    'sketch',
    'A',
    'query',
    sorted(os.listdir(os.path.join(tiny_market, 'sketch', 'A', 'query')))[0],
  )
  empty = tmp_path / 'empty'
  empty.mkdir()
  (empty / 'notes.txt').write_text('not a photo')
  base = [f'--checkpoint={workdir}', f'--query={query}', '--jax_cache=']
  with pytest.raises(SystemExit, match='holds no image file'):
    retrieve.main(base + [f'--gallery={empty}'])

  broken = tmp_path / 'broken'
  broken.mkdir()
  photos = os.path.join(tiny_market, 'photo', 'query')
  shutil.copy(os.path.join(photos, sorted(os.listdir(photos))[0]), broken / 'a.jpg')
  (broken / 'b.jpg').write_bytes(b'definitely not a jpeg')
  with pytest.raises(SystemExit, match=r'cannot decode .*b\.jpg'):
    retrieve.main(base + [f'--gallery={broken}'])

  bare = tmp_path / 'bare'  # a workdir whose training never finished an epoch
  bare.mkdir()
  for name in ('config.json', 'train_meta.json'):
    shutil.copy(os.path.join(workdir, name), bare / name)
  edited = tmp_path / 'edited'  # a config.json that no longer describes its checkpoint
  shutil.copytree(os.path.join(workdir, 'best'), edited / 'best')
  shutil.copy(os.path.join(workdir, 'train_meta.json'), edited / 'train_meta.json')
  config = json.load(open(os.path.join(workdir, 'config.json')))
  config['model']['width'] *= 2
  (edited / 'config.json').write_text(json.dumps(config))
  for args, message in (
    ([f'--checkpoint={bare}'], 'no checkpoint in'),
    ([f'--checkpoint={tmp_path}'], 'not a training workdir'),
    ([f'--checkpoint={edited}'], 'differ in shape'),
  ):
    with pytest.raises(SystemExit, match=message):
      retrieve.main(args + [f'--query={query}', f'--gallery={broken}', '--jax_cache='])

  with pytest.raises(SystemExit) as exit_info:
    retrieve.main(['--help'])
  assert exit_info.value.code == 0
  assert 'COSINE SIMILARITY' in capsys.readouterr().out
