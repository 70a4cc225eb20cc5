"""Evaluation errors (issue 10 item 5): NaN features, an empty query set, duplicate file names.

A parameter-free stand-in model makes the NaN rows predictable: its embedding is the log of an
image's mean normalised channel values, NaN exactly for black images (normalised below 0) and
finite for white ones, so the expected row counts and paths follow from the table alone.
"""

import io
import re
import warnings

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from sketchreid_jax import input_pipeline
from sketchreid_jax.config_base import base_config
from sketchreid_jax.datasets.table import make_table
from sketchreid_jax.evaluation import protocols as evaluate

H, W = 16, 8


class Probe(nn.Module):
  """Embedding = log(mean over pixels of the normalised image): NaN for black, finite for white."""

  def __call__(self, images, modality=0, train=False):
    return self.extract(images, modality, train)

  def extract(self, images, modality=0, train=False):
    return {'feat': jnp.log(images.mean(axis=(1, 2)))}

  def extract_stem(self, images, modality=1, train=False):
    return images  # the 'stem' multi-query path averages these maps per identity

  def extract_from_stem(self, maps, train=False):
    return self.extract(maps)

  def extract_fused(self, mean_maps, train=False):
    return self.extract(mean_maps)  # no Non-local block


def _png(value: int) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(np.full((H, W, 3), value, np.uint8)).save(buf, format='PNG')
  return buf.getvalue()


WHITE, BLACK = _png(255), _png(0)


def _photo(pid, split, dark=False, name=None):
  path = f'photo/{split}/{name or f"{pid:04d}_c1s1_000001_00.png"}'
  return dict(
    image=BLACK if dark else WHITE, pid=pid, modality=0, style='', split=split, camid=1, path=path
  )


def _sketch(pid, split, style, dark=False):
  return dict(
    image=BLACK if dark else WHITE,
    pid=pid,
    modality=1,
    style=style,
    split=split,
    camid=0,
    path=f'sketch/{style}/{split}/{pid:04d}.png',
  )


def _table(rows):
  base = [_photo(1, 'train'), _sketch(1, 'train', 'A'), _sketch(1, 'train', 'B')]
  return make_table(base + rows, root='/data/tiny', name='tiny')


def _config(protocols, aggregate='mean'):
  config = base_config()
  config.data.image_size = (H, W)
  config.data.test_styles = 'A'
  config.eval.batch_size = 4
  config.eval.protocols = protocols
  config.eval.multi_query_aggregate = aggregate
  return config


def _evaluate(table, config):
  with warnings.catch_warnings():
    warnings.simplefilter('ignore')  # an unmatched query is only a warning
    return evaluate.evaluate(Probe(), {}, table, config)


# --------------------------------------------------------------------------- NaN features


def test_nan_gallery_features_name_protocol_modality_and_rows():
  dark = {3, 5}
  gallery = [_photo(pid, 'query', dark=pid in dark) for pid in range(2, 7)]
  table = _table(gallery + [_sketch(pid, 'query', 'A') for pid in (2, 3, 4)])
  paths = ', '.join(f'photo/query/{pid:04d}_c1s1_000001_00.png' for pid in sorted(dark))
  message = (
    f"protocol 'single_query' of config.eval.protocols: 2 of 5 gallery photo embeddings contain "
    f'NaN or Inf ({paths}).'
  )
  with pytest.raises(FloatingPointError, match=re.escape(message)) as err:
    _evaluate(table, _config(('single_query',)))
  assert 'training diverged' in str(err.value) and 'check the checkpoint' in str(err.value)


def test_nan_query_features():
  table = _table(
    [_photo(pid, 'query') for pid in range(2, 5)]
    + [_sketch(pid, 'query', 'A', dark=pid == 3) for pid in (2, 3, 4)]
  )
  message = (
    "protocol 'single_query:A' of config.eval.protocols: 1 of 3 query sketch embeddings "
    'contain NaN or Inf (sketch/A/query/0003.png).'
  )
  with pytest.raises(FloatingPointError, match=re.escape(message)):
    _evaluate(table, _config(('single_query:A',)))


@pytest.mark.parametrize(
  'aggregate,message',
  [
    # One embedding per sketch: the three black sketches (0002 A, 0003 A and B).
    ('mean', '3 of 6 query sketch embeddings contain NaN or Inf'),
    # One per identity of fused stem maps: only 0003's are all black (0002 has a white B).
    ('stem', '1 of 3 multi-query (stem-fused) query sketch group embeddings contain NaN or Inf'),
  ],
)
def test_nan_multi_query_features(aggregate, message):
  dark = {(2, 'A'), (3, 'A'), (3, 'B')}
  table = _table(
    [_photo(pid, 'query') for pid in range(2, 5)]
    + [
      _sketch(pid, 'query', style, dark=(pid, style) in dark) for pid in (2, 3, 4) for style in 'AB'
    ]
  )
  with pytest.raises(FloatingPointError, match=re.escape(message)) as err:
    _evaluate(table, _config(('multi_query:AB',), aggregate))
  assert str(err.value).startswith("protocol 'multi_query:AB' of config.eval.protocols: ")


def test_finite_features_evaluate():
  """The control: white images only (finite embeddings, no duplicate) rank without an error."""
  table = _table([_photo(pid, 'query') for pid in range(2, 5)] + [_sketch(2, 'query', 'A')])
  results = _evaluate(table, _config(('single_query', 'multi_query')))
  assert set(results) == {'single_query', 'multi_query'}
  assert all(r.num_valid_queries == 1 for r in results.values())


# --------------------------------------------------------------------------- empty query set


@pytest.mark.parametrize(
  'queries,protocol,missing,available',
  [
    # Style B has training sketches only.
    ([('A', 2)], 'single_query:B', 'B', 'A'),
    ([('A', 2)], 'multi_query:AB', 'B', 'A'),
    # No test sketch at all.
    ([], 'single_query', 'A', 'none'),
  ],
)
def test_empty_query_set_names_the_styles(queries, protocol, missing, available):
  table = _table(
    [_photo(pid, 'query') for pid in range(2, 4)]
    + [_sketch(pid, 'query', style) for style, pid in queries]
  )
  with pytest.raises(ValueError) as err:
    _evaluate(table, _config((protocol,)))
  message = str(err.value)
  assert message.startswith(f'protocol {protocol!r} of config.eval.protocols: test_styles=')
  assert f"no sketches of style(s) {missing} in split 'query'" in message
  assert f"Styles available in 'query': {available}; choose among those." in message


# --------------------------------------------------------------------------- duplicate names


def test_duplicate_file_names_are_listed():
  table = _table(
    [
      _photo(2, 'query'),
      _photo(3, 'query'),
      _photo(4, 'train'),  # also in the gallery below: trained on and ranked
      _photo(4, 'query'),
      _photo(5, 'query', name='0005_c2s1_000001_00.JPG'),  # the same stem twice in the gallery
      _photo(5, 'query', name='0005_c2s1_000001_00.png'),
      _sketch(2, 'query', 'A'),
      _sketch(2, 'query', 'B'),  # another style: the same name by design, not a duplicate
    ]
  )
  listed = (
    'photo/query/0004_c1s1_000001_00.png = photo/train/0004_c1s1_000001_00.png; '
    'photo/query/0005_c2s1_000001_00.JPG = photo/query/0005_c2s1_000001_00.png'
  )
  with pytest.raises(ValueError, match=re.escape('2 file name(s) of tiny at /data/tiny')) as err:
    input_pipeline.make_eval_set(table, 'AB', multi_query=False)
  assert listed in str(err.value) and 'check_data /data/tiny' in str(err.value)
  with pytest.raises(ValueError, match=re.escape("protocol 'single_query:AB' of config.eval")):
    _evaluate(table, _config(('single_query:AB',)))


def test_duplicate_sketch_across_splits_and_the_control():
  rows = [
    _photo(2, 'query'),
    _photo(3, 'query'),
    _sketch(2, 'query', 'A'),
    _sketch(3, 'query', 'B'),
  ]
  with warnings.catch_warnings():
    warnings.simplefilter('ignore')
    eval_set = input_pipeline.make_eval_set(_table(rows), 'AB', multi_query=True)
  assert eval_set.num_queries == 2  # sketch/B/train/0001 and sketch/A/train/0001: no duplicate
  leaked = _table(rows + [_sketch(2, 'train', 'A')])
  with pytest.raises(
    ValueError, match=re.escape('sketch/A/query/0002.png = sketch/A/train/0002.png')
  ):
    input_pipeline.make_eval_set(leaked, 'A', multi_query=False)
