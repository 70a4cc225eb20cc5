"""ONNX export through jax2onnx: ``photo.onnx`` and ``sketch.onnx`` with a dynamic batch.

Each file takes ``images``, uint8 ``[batch, height, width, 3]`` RGB at the training's
``data.image_size`` (NHWC, as decoded from a JPEG/PNG; resize before), and returns ``embedding``,
float32 ``[batch, D]``, L2-normalised. The ImageNet normalisation is inside. The weights are
initializers of the graph. ``sketchreid.json`` beside them (and each file's ``metadata_props``)
records the origin and options.

jax2onnx annotates some intermediate tensors with the wrong layout (it moves convolutions to NCHW
and keeps the NHWC shapes on their outputs); onnxruntime refuses such a file ("Incompatible
dimensions"). The annotations are hints, not part of the computation, so they are dropped and
ONNX's own shape inference recomputes them before the file is checked and written.
"""

import contextlib
import io
import json
import logging
import os

import jax
import jax.numpy as jnp

from sketchreid_jax import augment, inference
from sketchreid_jax.export import ONNX_OPSET, SIGNATURES, metadata


def serving_fn(trained, modality):
  """JAX ``uint8 (B, H, W, 3) -> float32 (B, D)``: normalisation, then ``inference.embedding_fn``,
  with the weights closed over (they become the graph's initializers)."""
  embed = inference.embedding_fn(trained, modality)
  variables = jax.tree.map(jnp.asarray, trained.variables)

  def serve(images):
    return embed(variables, augment.normalize(images.astype(jnp.float32)))

  return serve


def _jax2onnx_to_onnx():
  """``jax2onnx.to_onnx``. jax 0.12 folded ``ClosedJaxpr`` into ``Jaxpr`` (``jax.extend.core``
  keeps the old name as an alias), while jax2onnx (0.17.1) still reads
  ``jax._src.core.ClosedJaxpr``; the alias is put back there when it is missing."""
  import jax._src.core as jax_core

  if not hasattr(jax_core, 'ClosedJaxpr'):
    from jax.extend.core import ClosedJaxpr

    jax_core.ClosedJaxpr = ClosedJaxpr
  from jax2onnx import to_onnx

  return to_onnx


def _convert(fn, spec, opset: int):
  """The ONNX ModelProto of ``fn``, its layout annotations recomputed (module docstring)."""
  import onnx

  to_onnx = _jax2onnx_to_onnx()

  # jax2onnx prints a line per linen Conv and onnx_ir warns about untyped shape constants: neither
  # says anything about the exported model.
  logging.getLogger('onnx_ir').setLevel(logging.ERROR)
  with contextlib.redirect_stdout(io.StringIO()):
    model = to_onnx(
      fn,
      [spec],
      opset=opset,
      input_names=['images'],
      output_names=['embedding'],
      model_name='sketchreid',
    )
  del model.graph.value_info[:]
  model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
  onnx.checker.check_model(model)
  return model


def export(trained, out: str, *, opset: int = ONNX_OPSET) -> dict:
  """Writes ``out/photo.onnx``, ``out/sketch.onnx`` and ``out/sketchreid.json``; returns the metadata."""
  import onnx

  height, width = trained.config.data.image_size
  spec = jax.ShapeDtypeStruct(jax.export.symbolic_shape(f'batch, {height}, {width}, 3'), jnp.uint8)
  models = {name: _convert(serving_fn(trained, m), spec, opset) for name, m in SIGNATURES.items()}
  out_shape = models['photo'].graph.output[0].type.tensor_type.shape
  meta = metadata(
    trained,
    fmt='onnx',
    embedding_dim=int(out_shape.dim[-1].dim_value),
    opset=opset,
    files={
      name: {
        'file': f'{name}.onnx',
        'input': f'images: uint8 [batch, {height}, {width}, 3] RGB',
        'output': 'embedding: float32 [batch, D], L2-normalised',
      }
      for name in SIGNATURES
    },
  )
  os.makedirs(out, exist_ok=True)
  for name, model in models.items():
    onnx.helper.set_model_props(model, {'sketchreid': json.dumps(meta)})
    onnx.save(model, os.path.join(out, f'{name}.onnx'))
  with open(os.path.join(out, 'sketchreid.json'), 'w') as f:
    json.dump(meta, f, indent=2)
  return meta
