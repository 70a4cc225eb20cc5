"""Decoding and augmentation: tf.data ops on one image, seeded statelessly (docs/design.md §4).

The training chain (``input_pipeline.train_iterator`` applies it per example):
``decode_rgb`` -> ``geometric_augment`` (bilinear resize to image_size -> zero-pad ``pad`` pixels,
black in pixel space, as torchvision's Pad before Normalize -> random crop back -> random
horizontal flip, p = 0.5) -> ``normalize`` (ImageNet) -> ``random_erase``. Evaluation only
decodes, resizes and normalises.

Interpretations chosen:
- Random erasing: erased pixels are set to 0 in normalised space, i.e. the ImageNet mean colour;
  the aspect ratio is drawn uniformly in the range (as the re-ID baselines do), with a fixed number
  of attempts; no valid attempt = no erasing.
- The per-example augmentation seed (``example_seed``) is folded from (seed, epoch, step,
  process_index, position in the host batch), so two hosts never share draws and a resumed run
  (``start_step``) reproduces the same images exactly.
- Geometric augmentation is ``geometric_augment`` on an (H, W, C) stack of any C, so a mask
  channel appended to the image is resized, cropped and flipped with it (DALNet's precomputed
  masks, ``decode_mask``).
"""

from sketchreid_jax.tf_setup import tf  # hides GPUs from TF first

# isort: split

import numpy as np

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
PIXEL_MAX = 255.0


def decode_rgb(encoded: tf.Tensor) -> tf.Tensor:
  """Encoded JPEG/PNG/BMP/GIF bytes -> float32 (h, w, 3) in [0, 255]; greyscale is replicated."""
  image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
  return tf.cast(image, tf.float32)


def decode_mask(encoded: tf.Tensor) -> tf.Tensor:
  """Encoded greyscale PNG bytes -> float32 (h, w, 1) in [0, 1]."""
  mask = tf.io.decode_png(encoded, channels=1)
  return tf.cast(mask, tf.float32) / PIXEL_MAX


def normalize(rgb):
  """[0, 255] RGB -> (x / 255 - mean) / std with the ImageNet statistics.

  The statistics are float32 numpy constants, so the same function normalises a TF tensor (the
  input pipeline, the SavedModel) and a JAX array (the ONNX export's traced function).
  """
  mean = np.asarray(IMAGENET_MEAN, np.float32)
  std = np.asarray(IMAGENET_STD, np.float32)
  return (rgb / PIXEL_MAX - mean) / std


def geometric_augment(
  stack: tf.Tensor, seed: tf.Tensor, *, image_size: tuple[int, int], pad: int, flip: bool
) -> tf.Tensor:
  """Resize (bilinear) + zero-pad + random crop + random h-flip of an (h, w, C) stack, any C.

  Every channel gets the same crop and flip, so a mask appended as an extra channel stays
  aligned with the image. ``seed`` is a stateless (2,) seed.
  """
  crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
  height, width = image_size
  channels = stack.shape[-1] if stack.shape[-1] is not None else tf.shape(stack)[-1]
  stack = tf.image.resize(stack, (height, width), method='bilinear')
  if pad > 0:
    stack = tf.pad(stack, [[pad, pad], [pad, pad], [0, 0]])
    stack = tf.image.stateless_random_crop(stack, [height, width, channels], crop_seed)
    # Later ops (random erasing) need the static size the crop's size tensor hides.
    stack = tf.ensure_shape(stack, [height, width, stack.shape[-1]])
  if flip:
    stack = tf.image.stateless_random_flip_left_right(stack, flip_seed)
  return stack


def random_erase(
  image: tf.Tensor,
  seed: tf.Tensor,
  *,
  probability: float,
  area: tuple[float, float] = (0.02, 0.4),
  aspect: tuple[float, float] = (0.3, 3.3),
  attempts: int = 10,
) -> tf.Tensor:
  """Random erasing (Zhong et al.) on a normalised (H, W, C) image; erased pixels become 0.

  With probability ``probability``: target area ~ U(area)·H·W, aspect ~ U(aspect),
  h = round(√(area·aspect)), w = round(√(area/aspect)); the first of ``attempts`` draws with
  h < H and w < W is erased at a uniform position; if none fits nothing is erased.
  """
  if probability <= 0.0:
    return image
  height, width = image.shape[0], image.shape[1]
  s_apply, s_area, s_aspect, s_pos = tf.unstack(tf.random.experimental.stateless_split(seed, 4))
  apply = tf.random.stateless_uniform([], s_apply) < probability
  target = tf.random.stateless_uniform([attempts], s_area, area[0], area[1]) * (height * width)
  ratio = tf.random.stateless_uniform([attempts], s_aspect, aspect[0], aspect[1])
  h = tf.cast(tf.round(tf.sqrt(target * ratio)), tf.int32)
  w = tf.cast(tf.round(tf.sqrt(target / ratio)), tf.int32)
  fits = (h < height) & (w < width)
  first = tf.argmax(tf.cast(fits, tf.int32), output_type=tf.int32)
  h, w = h[first], w[first]
  u = tf.random.stateless_uniform([2], s_pos)
  top = tf.cast(tf.floor(u[0] * tf.cast(height - h + 1, tf.float32)), tf.int32)
  left = tf.cast(tf.floor(u[1] * tf.cast(width - w + 1, tf.float32)), tf.int32)
  rows = tf.range(height)[:, None]
  cols = tf.range(width)[None, :]
  box = (rows >= top) & (rows < top + h) & (cols >= left) & (cols < left + w)
  box = box & apply & tf.reduce_any(fits)
  return tf.where(box[:, :, None], tf.zeros_like(image), image)


def example_seed(
  seed: int, epoch: int, step: tf.Tensor, process_index: int, position: tf.Tensor
) -> tf.Tensor:
  """Stateless (2,) seed folded from (seed, epoch, step, process_index, position in batch)."""
  key = tf.constant([seed, epoch], tf.int64)
  for data in (step, tf.constant(process_index, tf.int64), position):
    key = tf.random.experimental.stateless_fold_in(key, tf.cast(data, tf.int64))
  return key
