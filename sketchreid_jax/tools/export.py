r"""Exports a trained model's photo and sketch feature extractors for serving: a TensorFlow SavedModel or ONNX.

  python -m sketchreid_jax.tools.export --checkpoint=runs/demo --out=exported/demo \
      [--format=savedmodel|onnx] [--which=best|latest] [--platforms=cpu,cuda,tpu] \
      [--opset=21] [--overwrite]

--checkpoint is a training workdir (config.json, train_meta.json, best/, checkpoints/). Both
formats hold the model's two streams, 'photo' and 'sketch', each mapping uint8 RGB images
[batch, height, width, 3] (0..255 as decoded from a JPEG/PNG, any batch size) to 'embedding',
float32 [batch, D], L2-normalised: the configured feature (config.eval.feature), averaged with the
mirror image's if config.eval.flip. Rank a gallery by the dot product of embeddings (cosine
similarity) or by Euclidean distance: the same order. The embeddings equal
`sketchreid_jax.inference.embed` on the same pixels (the tests bound the difference by 1e-4).

--format=savedmodel (default): one SavedModel with signatures 'photo' and 'sketch' that also
resize (bilinear) any image size to the training's; <out>/assets.extra/sketchreid.json records the
method, checkpoint, step, image size, embedding size and feature options. --platforms: the model
is serialised as StableHLO for these JAX platforms. The TensorFlow installed must be able to read
the StableHLO this jax writes; where it cannot (jax 0.12 with TF 2.21), export stops with one line
before writing anything: use --format=onnx there.

  import tensorflow as tf
  model = tf.saved_model.load('exported/demo')
  emb = model.signatures['sketch'](images=tf.constant(uint8_batch))['embedding']

--format=onnx: <out>/photo.onnx and <out>/sketch.onnx (jax2onnx, ONNX opset --opset) with a
dynamic batch, taking images at the training's image size (resize before), and
<out>/sketchreid.json. Needs the [onnx] extra (pip install -e '.[onnx]').

  import onnxruntime as ort
  sketch = ort.InferenceSession('exported/demo/sketch.onnx')
  emb = sketch.run(None, {'images': uint8_batch})[0]
"""

import argparse
import os
from collections.abc import Sequence

from sketchreid_jax.tools import cli

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

FORMATS = ('savedmodel', 'onnx')


def _parser() -> argparse.ArgumentParser:
  from sketchreid_jax import export

  p = cli.parser('sketchreid_jax.tools.export', __doc__)
  cli.add_checkpoint_args(p)
  p.add_argument(
    '--out', required=True, help='folder to write (the SavedModel, or the .onnx files)'
  )
  p.add_argument('--format', choices=FORMATS, default='savedmodel', help='what to write (below)')
  p.add_argument(
    '--platforms',
    default=','.join(export.SAVED_MODEL_PLATFORMS),
    help='savedmodel: comma-separated JAX platforms to serialise for (cpu, cuda, rocm, tpu)',
  )
  p.add_argument(
    '--opset', type=int, default=export.ONNX_OPSET, help='onnx: the ONNX opset to target'
  )
  p.add_argument('--overwrite', action='store_true', help='replace the files of an existing --out')
  return p


def _export_saved_model(trained, args) -> dict:
  from sketchreid_jax.export import to_saved_model

  platforms = [p.strip() for p in args.platforms.split(',') if p.strip()]
  meta = to_saved_model.export(trained, args.out, platforms=platforms)
  print(
    f'wrote {args.out}: SavedModel signatures photo, sketch (images uint8 [batch, h, w, 3] -> '
    f'embedding float32 [batch, {meta["embedding_dim"]}]), {trained.config.method} step '
    f'{trained.step} from {trained.checkpoint}, platforms {",".join(platforms)}'
  )
  return meta


def _export_onnx(trained, args) -> dict:
  from sketchreid_jax.export import to_onnx

  meta = to_onnx.export(trained, args.out, opset=args.opset)
  h, w = meta['image_size']
  print(
    f'wrote {args.out}/photo.onnx and sketch.onnx (images uint8 [batch, {h}, {w}, 3] -> embedding '
    f'float32 [batch, {meta["embedding_dim"]}], opset {args.opset}), {trained.config.method} step '
    f'{trained.step} from {trained.checkpoint}'
  )
  return meta


def _check_format_can_run(args) -> None:
  """Fails in one line, before the checkpoint is read, when the chosen format cannot be written."""
  if args.format == 'onnx':
    try:
      import jax2onnx  # noqa: F401
      import onnx  # noqa: F401
    except ImportError as err:
      raise SystemExit(
        f"export: --format=onnx needs jax2onnx and onnx ({err}); pip install -e '.[onnx]'"
      ) from None
    return
  if not [p for p in args.platforms.split(',') if p.strip()]:
    raise SystemExit('--platforms is empty; name at least one of cpu, cuda, rocm, tpu.')
  from sketchreid_jax.export import to_saved_model

  reason = to_saved_model.unreadable_reason()
  if reason:
    import jax

    from sketchreid_jax.tf_setup import tf

    raise SystemExit(
      f'export: TensorFlow {tf.__version__} cannot read the StableHLO that jax {jax.__version__} '
      f'writes ({reason}), so a SavedModel would not load here; use --format=onnx.'
    )


def main(argv: Sequence[str] | None = None) -> dict:
  args = _parser().parse_args(argv)
  if os.path.isdir(args.out) and os.listdir(args.out) and not args.overwrite:
    raise SystemExit(
      f'--out {args.out!r} exists and is not empty; choose another folder or pass --overwrite.'
    )
  _check_format_can_run(args)
  from sketchreid_jax import inference

  try:
    trained = inference.load_trained(args.checkpoint, which=args.which)
  except (FileNotFoundError, OSError, ValueError, KeyError) as err:
    raise SystemExit(f'export: {err}') from None
  return {'savedmodel': _export_saved_model, 'onnx': _export_onnx}[args.format](trained, args)


if __name__ == '__main__':
  main()
