"""tools.export: the SavedModel's and the ONNX files' embeddings equal the Flax model's, for any
batch size (and, for the SavedModel, any image size)."""

import json
import os
from collections.abc import Sequence

import jax
import numpy as np
import pytest

from sketchreid_jax import inference, input_pipeline
from sketchreid_jax.export import to_saved_model
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


def brighter_right_half(rng, shape) -> np.ndarray:
  """uint8 images whose right half is brighter, so that the mirror image embeds differently."""
  images = rng.integers(0, 128, shape)
  images[:, :, shape[2] // 2 :] += 120
  return images.astype(np.uint8)


def check_embeddings(embed, trained, batches, dim):
  """``embed(name, batch)`` equals the Flax reference for both streams; the flip is not vacuous
  and the streams are not swapped."""
  for name, modality, shown in (
    ('photo', inference.PHOTO, batches),
    ('sketch', inference.SKETCH, batches[:1]),
  ):
    got = np.concatenate([embed(name, b) for b in shown])
    assert got.shape == (sum(len(b) for b in shown), dim)
    flipped, plain = flax_embeddings(trained, shown, modality)
    np.testing.assert_allclose(got, flipped, atol=1e-4)
    # Not vacuous: without the mirror averaging the embeddings would be measurably different.
    assert np.abs(got - plain).max() > 1e-3
  # The two streams really differ (swapped signatures would have failed above).
  assert np.abs(embed('photo', batches[0]) - got).max() > 1e-3


def test_saved_model_embeddings_equal_the_flax_model(workdir, tmp_path, capsys):
  out = str(tmp_path / 'saved')
  if to_saved_model.unreadable_reason():
    pytest.skip(
      f'TensorFlow {tf.__version__} cannot read jax {jax.__version__} StableHLO '
      '(test_saved_model_refused_where_tensorflow_cannot_read_it covers this stack)'
    )
  meta = export.main([f'--checkpoint={workdir}', f'--out={out}'])
  assert 'wrote' in capsys.readouterr().out
  trained = inference.load_trained(workdir)
  assert trained.config.eval.flip  # the shared workdir averages mirror images (test_retrieve.py)
  assert meta['step'] == trained.step and meta['platforms'] == ['cpu', 'cuda', 'tpu']
  assert meta['format'] == 'savedmodel'
  assert meta['flip'] and meta['image_size'] == list(trained.config.data.image_size)
  assert json.load(open(os.path.join(out, 'assets.extra', 'sketchreid.json'))) == meta

  loaded = tf.saved_model.load(out)
  assert set(loaded.signatures) == {'photo', 'sketch'}
  rng = np.random.default_rng(0)
  # Not the training's 64×32 (the signature resizes); batches of 3 and 1 (the batch is symbolic).
  batches = [brighter_right_half(rng, (3, 80, 40, 3)), brighter_right_half(rng, (1, 50, 30, 3))]
  embed = lambda name, b: loaded.signatures[name](images=tf.constant(b))['embedding'].numpy()
  check_embeddings(embed, trained, batches, meta['embedding_dim'])

  with pytest.raises(SystemExit, match='exists and is not empty'):
    export.main([f'--checkpoint={workdir}', f'--out={out}'])


def test_saved_model_refused_where_tensorflow_cannot_read_it(workdir, tmp_path):
  """Where this TF cannot read this jax's StableHLO, export stops in one line before writing, and
  the probe is right: a SavedModel written anyway fails when it runs."""
  reason = to_saved_model.unreadable_reason()
  if not reason:
    pytest.skip(f'TensorFlow {tf.__version__} reads jax {jax.__version__} StableHLO (tested above)')
  out = tmp_path / 'saved'
  with pytest.raises(SystemExit, match=r'cannot read the StableHLO.*use --format=onnx') as err:
    export.main([f'--checkpoint={workdir}', f'--out={out}'])
  assert '\n' not in str(err.value) and not out.exists()

  to_saved_model.export(inference.load_trained(workdir), str(out), platforms=['cpu'])
  loaded = tf.saved_model.load(str(out))
  with pytest.raises(tf.errors.InvalidArgumentError, match='deserialize'):
    loaded.signatures['photo'](images=tf.zeros((1, 64, 32, 3), tf.uint8))


def test_onnx_embeddings_equal_the_flax_model(workdir, tmp_path, capsys):
  import onnx
  import onnxruntime as ort

  out = tmp_path / 'onnx'
  meta = export.main([f'--checkpoint={workdir}', f'--out={out}', '--format=onnx'])
  assert 'photo.onnx and sketch.onnx' in capsys.readouterr().out
  trained = inference.load_trained(workdir)
  h, w = trained.config.data.image_size
  assert meta['format'] == 'onnx' and meta['step'] == trained.step and meta['flip']
  assert json.load(open(out / 'sketchreid.json')) == meta
  sessions = {}
  for name in ('photo', 'sketch'):
    model = onnx.load(str(out / f'{name}.onnx'))
    assert json.loads({p.key: p.value for p in model.metadata_props}['sketchreid']) == meta
    assert model.opset_import[0].version == meta['opset']
    sessions[name] = ort.InferenceSession(
      str(out / f'{name}.onnx'), providers=['CPUExecutionProvider']
    )
    (images,) = sessions[name].get_inputs()
    # The batch is a named, dynamic dimension; the image size is the training's.
    assert images.name == 'images' and images.type == 'tensor(uint8)'
    assert isinstance(images.shape[0], str) and images.shape[1:] == [h, w, 3]

  rng = np.random.default_rng(1)
  batches = [brighter_right_half(rng, (3, h, w, 3)), brighter_right_half(rng, (1, h, w, 3))]
  embed = lambda name, b: sessions[name].run(['embedding'], {'images': b})[0]
  check_embeddings(embed, trained, batches, meta['embedding_dim'])
