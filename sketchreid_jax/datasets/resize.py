"""The MM'23 release's resize on load: every image PIL-Lanczos-resized once to the training size.

The release (data_loader.py, preprocess.py) opens each image with PIL and calls
``img.resize((W, H), Image.ANTIALIAS)`` (ANTIALIAS is LANCZOS) before anything else, replicates a
greyscale result to RGB, and only then pads, crops and flips at that size; at test time it resizes
the same way, and torchvision's later ``Resize`` to the same size is a no-op. ``config.data.
resize_antialias=True`` reproduces this: ``datasets.load`` passes the table through
``resize_table`` so training and evaluation both see the resized images.

Interpretations chosen:
- The resized images are re-encoded as PNG (lossless), so the pipeline's decode gives PIL's pixels
  bit for bit, and its bilinear ``tf.image.resize`` to the same (H, W) is then an exact no-op
  (tests/test_resize.py checks both). Decoding is PIL's too, as in the release: a JPEG decoded by
  PIL may differ from TF's decoder by a grey level here and there.
- 'L' and 'RGB' images (every JPEG and ordinary PNG of the datasets) are resized in their own mode,
  as the release does; greyscale stays one channel, which the pipeline's ``decode_rgb`` replicates
  exactly as the release's ``cv2.COLOR_GRAY2RGB`` (Lanczos works per channel, so resizing before
  or after replicating is the same). The release has no path for other modes (an RGBA array would
  reach the network with 4 channels, a palette image would be resized with NEAREST by PIL), so
  those are first decoded to RGB by the pipeline's own decoder (``tf.io.decode_image``,
  channels=3: alpha dropped, palette expanded, 16 bits scaled as TF does) and then resized, i.e.
  the colours are what the pipeline would have seen without this option.
- An image already at (H, W) is still decoded and re-encoded (PIL's resize is then a copy), so
  every row is decoded by PIL as in the release, whatever its size.
- Only ``table.image`` changes; row order, labels, paths and metadata are kept. DALNet's
  precomputed masks are NOT resized here: they are looked up per row by ``table.path``
  (``datasets.masks``) and the pipeline resizes each mask bilinearly to its photo's decoded size
  before the shared crop and flip, so they still line up with the Lanczos-resized photos.
- The work is per image and independent, run on a thread pool (PIL releases the GIL while it
  decodes, resamples and encodes) with results kept in row order, so the output is deterministic.
  PNG compression level 1: lossless like any level, and several times faster to write than 6.
"""

import concurrent.futures
import dataclasses
import io
import os

import numpy as np
from PIL import Image

from sketchreid_jax.datasets.table import SampleTable

# Below this many images the bar would only flash by (tests, tiny synthetic sets).
PROGRESS_MIN_IMAGES = 2000
PNG_COMPRESS_LEVEL = 1
NATIVE_MODES = ('L', 'RGB')


def _decode_rgb_like_pipeline(data: bytes) -> Image.Image:
  """An odd-mode image as the pipeline's ``decode_rgb`` would see it, as an RGB PIL image."""
  from sketchreid_jax.tf_setup import tf  # only for the rare non-L/RGB images: TF loads slowly

  rgb = tf.io.decode_image(data, channels=3, expand_animations=False).numpy()
  return Image.fromarray(rgb, 'RGB')


def resize_image(data: bytes, image_size: tuple[int, int]) -> bytes:
  """Encoded image bytes -> PNG bytes of ``Image.resize((W, H), Image.LANCZOS)`` of them."""
  height, width = image_size
  with Image.open(io.BytesIO(data)) as img:
    img.load()
    if img.mode not in NATIVE_MODES:
      img = _decode_rgb_like_pipeline(data)
    out = img.resize((width, height), Image.Resampling.LANCZOS)
  buf = io.BytesIO()
  out.save(buf, format='PNG', compress_level=PNG_COMPRESS_LEVEL)
  return buf.getvalue()


def resize_table(
  table: SampleTable,
  image_size: tuple[int, int],
  *,
  threads: int | None = None,
  progress: bool | None = None,
) -> SampleTable:
  """A copy of ``table`` whose images are PIL-Lanczos-resized to ``image_size`` = (H, W), as PNG.

  Args:
    table: the loaded table; only its ``image`` column is replaced.
    image_size: (H, W), as ``config.data.image_size``.
    threads: worker threads; None = the machine's CPU count.
    progress: show a tqdm bar; None = only for at least ``PROGRESS_MIN_IMAGES`` images.
  """
  size = tuple(int(s) for s in image_size)
  if len(size) != 2 or min(size) < 1:
    raise ValueError(
      f'resize_table: image_size must be (H, W) with H, W >= 1, got {tuple(image_size)}; '
      'set config.data.image_size, e.g. (288, 144).'
    )
  from tqdm.auto import tqdm  # tqdm.auto: a notebook widget in Jupyter, text elsewhere

  if progress is None:
    progress = len(table) >= PROGRESS_MIN_IMAGES
  workers = max(1, threads or os.cpu_count() or 1)

  def work(row: int) -> bytes:
    try:
      return resize_image(table.image[row], size)
    except Exception as err:  # name the file: a bare PIL error says nothing about which one
      raise ValueError(
        f'resize_antialias: cannot resize {os.path.join(table.root, str(table.path[row]))}: '
        f'{err}; fix or remove the file, or set --config.data.resize_antialias=False.'
      ) from err

  resized = np.empty(len(table), dtype=object)
  with concurrent.futures.ThreadPoolExecutor(workers) as pool:
    bar = tqdm(
      pool.map(work, range(len(table))),  # map yields in row order: deterministic output
      total=len(table),
      desc=f'resizing to {size[0]}x{size[1]} (Lanczos)',
      unit='img',
      disable=not progress,
    )
    for row, data in enumerate(bar):
      resized[row] = data
  return dataclasses.replace(table, image=resized)
