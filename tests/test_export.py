"""tools.export: the SavedModel's embeddings equal the Flax model's, for any batch and image size."""

import json
import os
from collections.abc import Sequence

import jax
import numpy as np
import pytest

from sketchreid_jax import inference, input_pipeline
from sketchreid_jax.tf_setup import tf
from sketchreid_jax.tools import export
from tests.test_retrieve import tiny_trained_workdir


@pytest.fixture(scope='module')
def workdir(tmp_path_factory, tiny_market, tfds_cache):
  return tiny_trained_workdir(tmp_path_factory, tiny_market, tfds_cache)


def flax_embeddings(trained, images: Sequence[np.ndarray], modality: int):
  """Reference: TF resize + normalise of each uint8 batch, then the Flax model's extract averaged
  with the mirror image's, and without that averaging; normalised in numpy; one compile."""
  h, w = trained.config.data.image_size
  x = np.concatenate(
    [
      input_pipeline.normalize(tf.image.resize(tf.cast(b, tf.float32), (h, w))).numpy()
      for b in images
    ]
  )
  extract = jax.jit(
    lambda v, x: trained.model.apply(v, x, modality=modality, method=trained.model.extract)['feat']
  )
  both = np.asarray(extract(trained.variables, np.concatenate([x, x[:, :, ::-1]])))
  normalise = lambda f: f / np.linalg.norm(f, axis=1, keepdims=True)
  return normalise((both[: len(x)] + both[len(x) :]) / 2), normalise(both[: len(x)])


def test_saved_model_embeddings_equal_the_flax_model(workdir, tmp_path, capsys):
  out = str(tmp_path / 'saved')
  meta = export.main([f'--checkpoint={workdir}', f'--out={out}'])
  assert 'wrote' in capsys.readouterr().out
  trained = inference.load_trained(workdir)
  assert trained.config.eval.flip  # the shared workdir averages mirror images (test_retrieve.py)
  assert meta['step'] == trained.step and meta['platforms'] == ['cpu', 'cuda', 'tpu']
  assert meta['flip'] and meta['image_size'] == list(trained.config.data.image_size)
  assert json.load(open(os.path.join(out, 'assets.extra', 'sketchreid.json'))) == meta

  loaded = tf.saved_model.load(out)
  assert set(loaded.signatures) == {'photo', 'sketch'}
  rng = np.random.default_rng(0)
  # Images whose right half is brighter, so that the mirror image embeds differently; not the
  # training's 64×32 (the signature resizes); batches of 3 and 1 (the batch is symbolic).
  batches = [rng.integers(0, 128, (3, 80, 40, 3)), rng.integers(0, 128, (1, 50, 30, 3))]
  for b in batches:
    b[:, :, b.shape[2] // 2 :] += 120
  batches = [b.astype(np.uint8) for b in batches]
  for name, modality, shown in (
    ('photo', inference.PHOTO, batches),
    ('sketch', inference.SKETCH, batches[:1]),
  ):
    got = np.concatenate(
      [loaded.signatures[name](images=tf.constant(b))['embedding'].numpy() for b in shown]
    )
    assert got.shape == (sum(len(b) for b in shown), meta['embedding_dim'])
    flipped, plain = flax_embeddings(trained, shown, modality)
    np.testing.assert_allclose(got, flipped, atol=1e-4)
    # Not vacuous: without the mirror averaging the embeddings would be measurably different.
    assert np.abs(got - plain).max() > 1e-3
  # The two streams really differ (swapped signatures would have failed above).
  photo = loaded.signatures['photo'](images=tf.constant(batches[0]))['embedding'].numpy()
  assert np.abs(photo - got).max() > 1e-3

  with pytest.raises(SystemExit, match='exists and is not empty'):
    export.main([f'--checkpoint={workdir}', f'--out={out}'])
