r"""Exports a trained model's photo and sketch feature extractors as one TensorFlow SavedModel.

  python -m sketchreid_jax.tools.export --checkpoint=runs/demo --out=exported/demo \
      [--which=best|latest] [--platforms=cpu,cuda,tpu] [--overwrite]

--checkpoint is a training workdir (config.json, train_meta.json, best/, checkpoints/). The
SavedModel has two serving signatures, 'photo' and 'sketch' (the two streams of the model):

  input   images     uint8 [batch, height, width, 3], RGB, any batch size and any image size
                     (one size per call); 0..255 as decoded from a JPEG/PNG
  output  embedding  float32 [batch, D], L2-normalised

Inside each signature: bilinear resize to the training's image size and ImageNet normalisation (in
TensorFlow, the evaluation's ops), then the model (the JAX function converted with jax2tf, native
serialisation, the batch dimension symbolic), the configured feature (config.eval.feature),
flip averaging if config.eval.flip, L2 normalisation. Rank a gallery by the dot product of
embeddings (cosine similarity) or by Euclidean distance: the same order. The embeddings equal
`sketchreid_jax.inference.embed` on the same pixels (the test bounds the difference by 1e-4).
The weights are SavedModel variables; <out>/assets.extra/sketchreid.json records the method,
checkpoint, step, image size, embedding size and feature options.

--platforms: the compiled model is serialised for these JAX platforms (StableHLO per platform);
the SavedModel runs in TensorFlow on any of them. Python use:

  import tensorflow as tf
  model = tf.saved_model.load('exported/demo')
  emb = model.signatures['sketch'](images=tf.constant(uint8_batch))['embedding']
"""

import argparse
import json
import os
from collections.abc import Sequence

from sketchreid_jax.tools import cli

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

SIGNATURES = {'photo': 0, 'sketch': 1}  # signature name -> the evaluation's modality
DEFAULT_PLATFORMS = ('cpu', 'cuda', 'tpu')


def _parser() -> argparse.ArgumentParser:
  p = cli.parser('sketchreid_jax.tools.export', __doc__)
  cli.add_checkpoint_args(p)
  p.add_argument('--out', required=True, help='SavedModel folder to write')
  p.add_argument(
    '--platforms',
    default=','.join(DEFAULT_PLATFORMS),
    help='comma-separated JAX platforms to serialise for (cpu, cuda, rocm, tpu)',
  )
  p.add_argument('--overwrite', action='store_true', help='replace the files of an existing --out')
  return p


def export_saved_model(trained, out: str, *, platforms: Sequence[str] = DEFAULT_PLATFORMS) -> dict:
  """Writes ``trained`` (an ``inference.Trained``) as a SavedModel in ``out``; returns its metadata."""
  from jax.experimental import jax2tf

  from sketchreid_jax import augment, inference
  from sketchreid_jax.tf_setup import tf

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

  dim = int(concrete['photo'].structured_outputs['embedding'].shape[-1])
  meta = {
    'method': trained.config.method,
    'workdir': os.path.abspath(trained.workdir),
    'checkpoint': trained.checkpoint,
    'step': trained.step,
    'image_size': [height, width],
    'embedding_dim': dim,
    'feature': trained.config.eval.feature,
    'flip': bool(trained.config.eval.flip),
    'signatures': {
      name: {'input': 'images: uint8 [batch, height, width, 3] RGB', 'output': 'embedding'}
      for name in SIGNATURES
    },
    'platforms': list(platforms),
  }
  extra = os.path.join(out, 'assets.extra')
  os.makedirs(extra, exist_ok=True)
  with open(os.path.join(extra, 'sketchreid.json'), 'w') as f:
    json.dump(meta, f, indent=2)
  return meta


def main(argv: Sequence[str] | None = None) -> dict:
  args = _parser().parse_args(argv)
  platforms = [p.strip() for p in args.platforms.split(',') if p.strip()]
  if not platforms:
    raise SystemExit('--platforms is empty; name at least one of cpu, cuda, rocm, tpu.')
  if os.path.isdir(args.out) and os.listdir(args.out) and not args.overwrite:
    raise SystemExit(
      f'--out {args.out!r} exists and is not empty; choose another folder or pass --overwrite.'
    )
  from sketchreid_jax import inference

  try:
    trained = inference.load_trained(args.checkpoint, which=args.which)
  except (FileNotFoundError, OSError, ValueError, KeyError) as err:
    raise SystemExit(f'export: {err}') from None
  meta = export_saved_model(trained, args.out, platforms=platforms)
  print(
    f'wrote {args.out}: signatures {", ".join(SIGNATURES)} (images uint8 [batch, h, w, 3] -> '
    f'embedding float32 [batch, {meta["embedding_dim"]}]), {trained.config.method} step '
    f'{trained.step} from {trained.checkpoint}, platforms {",".join(platforms)}'
  )
  return meta


if __name__ == '__main__':
  main()
