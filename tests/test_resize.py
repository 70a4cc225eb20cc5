"""config.data.resize_antialias (datasets/resize.py): PIL's own Lanczos pixels, bit for bit, through
the pipeline's decoder; the pipeline's later bilinear resize a no-op; the tiny synthetic set loaded
with it evaluates on exactly normalize(PIL-resized) images."""

import io

import numpy as np
import pytest
from PIL import Image

from sketchreid_jax import datasets, input_pipeline
from sketchreid_jax.config_base import base_config
from sketchreid_jax.datasets import resize
from sketchreid_jax.datasets.table import make_table
from sketchreid_jax.tf_setup import tf

MEAN = np.asarray(input_pipeline.IMAGENET_MEAN, np.float64)
STD = np.asarray(input_pipeline.IMAGENET_STD, np.float64)


def encoded(mode, size_hw, fmt, seed=0):
  """A smooth random image with edges (so Lanczos' ringing and clipping are exercised)."""
  rng = np.random.default_rng(seed)
  h, w = size_hw
  yy, xx = np.mgrid[0:h, 0:w]
  channels = {'L': 1, 'RGB': 3, 'RGBA': 4}.get(mode, 1)
  planes = []
  for c in range(channels):
    a, b = rng.uniform(0.05, 0.4, size=2)
    plane = 127 + 100 * np.sin(a * yy + c) * np.cos(b * xx) + rng.normal(0, 20, size=(h, w))
    plane[h // 3 : h // 2, w // 4 :] = 255 * (c % 2)  # a hard edge
    planes.append(plane)
  arr = np.clip(np.stack(planes, -1), 0, 255).astype(np.uint8)
  img = Image.fromarray(arr[..., 0] if channels == 1 else arr, 'L' if channels == 1 else mode)
  if mode == 'P':
    img = img.convert('RGB').quantize(colors=32)
  buf = io.BytesIO()
  img.save(buf, format=fmt, **({'quality': 90} if fmt == 'JPEG' else {}))
  return buf.getvalue()


def pil_lanczos_rgb(data, size_hw):
  """The release: Image.open(f).resize((W, H), ANTIALIAS), greyscale replicated to RGB."""
  h, w = size_hw
  out = np.asarray(Image.open(io.BytesIO(data)).resize((w, h), Image.LANCZOS))
  return np.repeat(out[..., None], 3, axis=-1) if out.ndim == 2 else out


def pipeline_decode(data):
  return input_pipeline.decode_rgb(tf.constant(data)).numpy()


CASES = [  # (mode, source (h, w), format, target (H, W))
  ('RGB', (128, 64), 'JPEG', (32, 16)),  # downsample by 4, the synthetic photos' size
  ('RGB', (300, 150), 'JPEG', (288, 144)),  # the paper size, a non-multiple factor
  ('L', (97, 61), 'JPEG', (29, 13)),  # greyscale JPEG, odd sizes both sides
  ('L', (20, 11), 'PNG', (29, 13)),  # greyscale PNG, upsampled
  ('RGB', (64, 128), 'PNG', (288, 144)),  # upsampled, aspect changed
]


@pytest.mark.parametrize('mode, src, fmt, size', CASES)
def test_pixels_are_pils_lanczos_exactly(mode, src, fmt, size):
  data = encoded(mode, src, fmt)
  out = resize.resize_image(data, size)
  assert out.startswith(b'\x89PNG')  # lossless
  with Image.open(io.BytesIO(out)) as img:
    assert img.mode == mode and img.size == (size[1], size[0])
  want = pil_lanczos_rgb(data, size)
  got = pipeline_decode(out)
  assert got.dtype == np.float32 and got.shape == (*size, 3)
  np.testing.assert_array_equal(got, want.astype(np.float32))
  # Not a trivial pass: the pipeline's own bilinear resize of the original differs.
  bilinear = tf.image.resize(pipeline_decode(data), size, method='bilinear').numpy()
  assert np.abs(bilinear - want).max() > 1.0


@pytest.mark.parametrize('mode', ['RGBA', 'P'])
def test_other_modes_resize_what_the_pipeline_decodes(mode):
  data = encoded(mode, (50, 30), 'PNG', seed=3)
  with Image.open(io.BytesIO(data)) as img:
    assert img.mode == mode
  size = (24, 12)
  # TF's channels=3 decode (alpha dropped, palette expanded), then PIL's Lanczos in RGB.
  rgb = tf.io.decode_image(data, channels=3, expand_animations=False).numpy()
  want = np.asarray(Image.fromarray(rgb, 'RGB').resize((size[1], size[0]), Image.LANCZOS))
  np.testing.assert_array_equal(pipeline_decode(resize.resize_image(data, size)), want)


@pytest.mark.parametrize('size', [(288, 144), (29, 13), (1, 5)])
def test_pipeline_bilinear_resize_to_same_size_is_exact_noop(size):
  data = resize.resize_image(encoded('RGB', (100, 47), 'JPEG', seed=1), size)
  image = input_pipeline.decode_rgb(tf.constant(data))
  same = tf.image.resize(image, size, method='bilinear')
  np.testing.assert_array_equal(same.numpy(), image.numpy())
  # The training path: geometric_augment without pad/flip is only that resize.
  seed = tf.constant([1, 2], tf.int64)
  aug = input_pipeline.geometric_augment(image, seed, image_size=size, pad=0, flip=False)
  np.testing.assert_array_equal(aug.numpy(), image.numpy())


def small_table(n=7):
  rows = []
  for i in range(n):
    mode, src, fmt, _ = CASES[i % len(CASES)]
    rows.append(
      dict(
        image=encoded(mode, src, fmt, seed=i),
        pid=i // 2,
        modality=i % 2,
        style='' if i % 2 == 0 else 'A',
        split='train' if i < 4 else 'query',
        camid=1 if i % 2 == 0 else 0,
        path=f'img_{i}.{fmt.lower()}',
      )
    )
  return make_table(rows, root='/data', name='small')


def test_table_keeps_rows_and_is_deterministic(capsys):
  table = small_table()
  size = (29, 13)
  one = resize.resize_table(table, size, threads=1)
  four = resize.resize_table(table, size, threads=4)
  assert len(one) == len(table)
  for column in ('pid', 'modality', 'style', 'split', 'camid', 'path'):
    np.testing.assert_array_equal(getattr(one, column), getattr(table, column))
  assert (one.root, one.name) == (table.root, table.name)
  assert list(one.image) == list(four.image)  # same bytes whatever the thread count
  for row in range(len(table)):
    assert table.image[row] != one.image[row]  # the input table is left as it was
    np.testing.assert_array_equal(
      pipeline_decode(one.image[row]), pil_lanczos_rgb(table.image[row], size)
    )
  assert capsys.readouterr().err == ''  # 7 images: no progress bar
  resize.resize_table(table, size, progress=True)
  assert 'resizing to 29x13' in capsys.readouterr().err


def test_unreadable_image_error_names_the_file():
  table = small_table(3)
  image = table.image.copy()
  image[1] = b'not an image'
  broken = make_table(
    [
      {c: getattr(table, c)[i] for c in ('pid', 'modality', 'style', 'split', 'camid', 'path')}
      | {'image': image[i]}
      for i in range(3)
    ],
    root='/data',
  )
  with pytest.raises(ValueError, match=r'/data/img_1\.jpeg.*resize_antialias=False'):
    resize.resize_table(broken, (8, 4))
  with pytest.raises(ValueError, match='image_size'):
    resize.resize_table(table, (0, 4))


def test_load_applies_it_and_eval_sees_normalized_pil_images(tiny_market, tfds_cache):
  data = base_config().data
  data.root = tiny_market
  data.cache_dir = tfds_cache
  data.image_size = (30, 14)  # the synthetic photos are 128×64, sketches 256×128: non-multiples
  plain = datasets.load(data)
  data.resize_antialias = True
  table = datasets.load(data)
  assert len(table) == len(plain)
  for column in ('pid', 'modality', 'style', 'split', 'camid', 'path'):
    np.testing.assert_array_equal(getattr(table, column), getattr(plain, column))
  assert table.attributes.keys() == plain.attributes.keys()
  eval_set = input_pipeline.make_eval_set(table, 'AB', multi_query=False)
  rows = np.concatenate([eval_set.query_index, eval_set.gallery_index])
  assert set(table.modality[rows].tolist()) == {0, 1}  # photos and sketches both
  batches = list(
    input_pipeline.eval_iterator(table, rows, image_size=data.image_size, batch_size=16)
  )
  valid = np.concatenate([b['valid'] for b in batches])
  images = np.concatenate([b['image'] for b in batches])[valid]
  index = np.concatenate([b['index'] for b in batches])[valid]
  np.testing.assert_array_equal(index, rows)
  # Independent: PIL on the ORIGINAL bytes, normalised in float64.
  want = np.stack([pil_lanczos_rgb(plain.image[r], data.image_size) for r in rows])
  want = (want / 255.0 - MEAN) / STD
  np.testing.assert_allclose(images, want, rtol=0, atol=2e-6)
  # Without the option the eval images are the bilinear ones, visibly different.
  plain_batch = next(
    input_pipeline.eval_iterator(plain, rows[:16], image_size=data.image_size, batch_size=16)
  )
  assert np.abs(plain_batch['image'] - want[:16]).max() > 0.05
