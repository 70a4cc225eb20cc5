"""TensorFlow SavedModel export through jax2tf: signatures ``photo`` and ``sketch``.

  input   images     uint8 [batch, height, width, 3], RGB, any batch size and any image size
                     (one size per call); 0..255 as decoded from a JPEG/PNG
  output  embedding  float32 [batch, D], L2-normalised

Inside each signature: bilinear resize to the training's image size and ImageNet normalisation (in
TensorFlow, the evaluation's ops), then the model (the JAX function converted with jax2tf, native
serialisation, the batch dimension symbolic). The weights are SavedModel variables;
``<out>/assets.extra/sketchreid.json`` records the origin and options.

jax2tf embeds the model as StableHLO that TensorFlow deserialises when the function first runs. A
TensorFlow older than the jax that wrote it cannot read it (jax 0.12 writes StableHLO 1.18, TF 2.21
reads up to 1.13.7). :func:`unreadable_reason` tries one tiny function of the same kind first, so
such a pair fails in one line before anything is written, instead of writing a SavedModel that
no TensorFlow here can run.
"""

import functools
import json
import os
from collections.abc import Sequence

from sketchreid_jax.export import SAVED_MODEL_PLATFORMS, SIGNATURES, metadata


@functools.cache
def unreadable_reason() -> str | None:
  """None when this TensorFlow runs what this jax's jax2tf writes, else TF's first error line."""
  from sketchreid_jax.tf_setup import tf  # before jax2tf, which imports TensorFlow

  # isort: split

  from jax.experimental import jax2tf

  # The batch dimension symbolic, as in the export: it adds the shape-assertion op that newer
  # StableHLO versions encode differently.
  double = jax2tf.convert(
    lambda x: x * 2,
    polymorphic_shapes=['(b, ...)'],
    with_gradient=False,
    native_serialization_platforms=('cpu',),
  )
  try:
    double(tf.ones((1, 2), tf.float32))
  except (tf.errors.InvalidArgumentError, tf.errors.UnknownError) as err:
    lines = [ln.strip() for ln in str(err).splitlines() if 'deserialize' in ln]
    return (lines[-1] if lines else str(err).strip().splitlines()[0])[:200]
  return None


def export(trained, out: str, *, platforms: Sequence[str] = SAVED_MODEL_PLATFORMS) -> dict:
  """Writes ``trained`` (an ``inference.Trained``) as a SavedModel in ``out``; returns its metadata."""
  from sketchreid_jax import augment, inference  # inference imports tf_setup before jax2tf does
  from sketchreid_jax.tf_setup import tf

  # isort: split

  from jax.experimental import jax2tf

  height, width = trained.config.data.image_size
  module = tf.Module()
  # Variables, not constants: the weights stay out of the graph proto (2 GB limit) and are saved as
  # a checkpoint beside it.
  module.model_variables = tf.nest.map_structure(
    lambda a: tf.Variable(a, trainable=False), trained.variables
  )

  def signature(modality: int):
    embed = jax2tf.convert(
      inference.embedding_fn(trained, modality),
      polymorphic_shapes=[None, '(b, ...)'],
      with_gradient=False,
      native_serialization_platforms=tuple(platforms),
    )

    def serve(images):
      resized = tf.image.resize(tf.cast(images, tf.float32), (height, width), method='bilinear')
      return {'embedding': embed(module.model_variables, augment.normalize(resized))}

    return tf.function(
      serve,
      input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, name='images')],
      autograph=False,
    )

  # Only as signatures (not also as tracked module attributes, which would trace and convert
  # every function a second time when saving).
  concrete = {
    name: signature(modality).get_concrete_function() for name, modality in SIGNATURES.items()
  }
  tf.saved_model.save(module, out, signatures=concrete)

  meta = metadata(
    trained,
    fmt='savedmodel',
    embedding_dim=int(concrete['photo'].structured_outputs['embedding'].shape[-1]),
    signatures={
      name: {'input': 'images: uint8 [batch, height, width, 3] RGB', 'output': 'embedding'}
      for name in SIGNATURES
    },
    platforms=list(platforms),
  )
  extra = os.path.join(out, 'assets.extra')
  os.makedirs(extra, exist_ok=True)
  with open(os.path.join(extra, 'sketchreid.json'), 'w') as f:
    json.dump(meta, f, indent=2)
  return meta
