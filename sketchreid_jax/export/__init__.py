"""A trained model's photo and sketch extractors as files other runtimes load (``tools.export``).

Two formats, one contract: a ``photo`` and a ``sketch`` function from uint8 RGB images
``[batch, height, width, 3]`` (any batch size) to float32 ``embedding`` ``[batch, D]``, L2-normalised,
equal to ``inference.embed`` on the same pixels (ImageNet normalisation, the model,
``config.eval.feature``, flip averaging if ``config.eval.flip``).

* ``to_saved_model``: a TensorFlow SavedModel through jax2tf (StableHLO inside TF ops); it also
  resizes, so it takes any image size.
* ``to_onnx``: two ONNX files through jax2onnx, at the training's image size (resizing is the
  caller's): what the PyTorch re-id toolkits export and what onnxruntime, TensorRT and most
  serving stacks load.
"""

import os

from sketchreid_jax.modality import PHOTO, SKETCH

SIGNATURES = {'photo': PHOTO, 'sketch': SKETCH}  # exported function -> the evaluation's modality
SAVED_MODEL_PLATFORMS = ('cpu', 'cuda', 'tpu')  # the JAX platforms a SavedModel is serialised for
# ONNX 1.16's opset (2024): onnxruntime >= 1.17 and TensorRT 10 run it.
ONNX_OPSET = 21


def metadata(trained, *, fmt: str, embedding_dim: int, **extra) -> dict:
  """What an export records beside the model: its origin, input size and feature options."""
  height, width = trained.config.data.image_size
  return {
    'format': fmt,
    'method': trained.config.method,
    'workdir': os.path.abspath(trained.workdir),
    'checkpoint': trained.checkpoint,
    'step': trained.step,
    'image_size': [height, width],
    'embedding_dim': embedding_dim,
    'feature': trained.config.eval.feature,
    'flip': bool(trained.config.eval.flip),
    **extra,
  }
