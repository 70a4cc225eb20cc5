"""TFDS plumbing every manual_dir reader shares: fingerprinted build cache, quiet build, reading.

Market-Sketch-1K and PKU-Sketch (docs/design.md §2, §5, §6) both build a TFDS copy of a local folder once
and read it back into a ``SampleTable``; this module holds the dataset-independent parts.

Interpretations chosen:
- The build cache lives in ``<cache_dir>/<fingerprint>/``; the fingerprint is the sha1 of the
  absolute root and the sorted (relative path, size, mtime_ns) of the files the reader consumes,
  so editing or regenerating the data rebuilds and two datasets never share a cache. Old
  fingerprints are not deleted (a cache folder may be shared by several datasets).
- Reading returns every feature of the split as Python lists, text features decoded to ``str``,
  plus a ``split`` column naming the TFDS split the row came from.
- Examples hold the files' bytes as they are. The loaders check every image before a build
  (``checks.check_images``: a full decode, all problems reported at once), never on a cached load.
"""

import contextlib
import fcntl
import hashlib
import inspect
import io
import logging
import os
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from sketchreid_jax.tf_setup import tf  # noqa: E402  (hides GPUs from TF first)

# isort: split

import tensorflow_datasets as tfds  # noqa: E402
from absl import logging as absl_logging  # noqa: E402
from etils import epath  # noqa: E402

log = logging.getLogger(__name__)

DEFAULT_CACHE_DIR = '~/.cache/sketchreid_jax/tfds'


def fingerprint(root: str | os.PathLike, rel_paths: Iterable[str]) -> str:
  """sha1 of the absolute root and the sorted (relative path, size, mtime_ns) of ``rel_paths``."""
  root = Path(root).expanduser().resolve()
  digest = hashlib.sha1(str(root).encode())
  for rel in sorted(rel_paths):
    stat = (root / rel).stat()
    digest.update(f'\0{rel}\0{stat.st_size}\0{stat.st_mtime_ns}'.encode())
  return digest.hexdigest()


def cache_data_dir(
  cache_dir: str | os.PathLike | None, root: str | os.PathLike, rel_paths: Iterable[str]
) -> Path:
  """``<cache_dir or DEFAULT_CACHE_DIR>/<fingerprint(root, rel_paths)>``: one TFDS data_dir."""
  return Path(cache_dir or DEFAULT_CACHE_DIR).expanduser() / fingerprint(root, rel_paths)


def is_built(data_dir: str | os.PathLike, builder_class) -> bool:
  """Whether ``data_dir`` holds a finished build of ``builder_class`` (its dataset_info.json is
  written last), found without constructing the builder (that logs about a missing folder)."""
  version = Path(data_dir) / builder_class.name / str(builder_class.VERSION)
  return (version / 'dataset_info.json').is_file()


class LocalCodePath:
  """Mixin for builders: ``code_path`` from the defining file.

  TFDS 4.9's default resolves the package through ``importlib_resources``, which is only a
  dependency on Python < 3.9 and so may be absent; this is its own fallback result.
  """

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    return epath.Path(inspect.getfile(cls))


@contextlib.contextmanager
def quiet_tfds() -> Iterator[None]:
  """Lowers absl/TF logging to warnings and hides TFDS progress bars, restoring them afterwards."""
  tqdm_utils = tfds.core.utils.tqdm_utils
  previous = (
    absl_logging.get_verbosity(),
    tf.get_logger().level,
    getattr(tqdm_utils, '_active', True),
  )
  absl_logging.set_verbosity(absl_logging.WARNING)
  tf.get_logger().setLevel(logging.WARNING)
  tfds.display_progress_bar(False)
  try:
    yield
  finally:
    absl_logging.set_verbosity(previous[0])
    tf.get_logger().setLevel(previous[1])
    tfds.display_progress_bar(previous[2])


def prepare(builder_class, root: Path, data_dir) -> 'tfds.core.DatasetBuilder':
  """``builder_class`` on ``data_dir``, built from the manual_dir ``root`` unless already built.

  One process builds a fingerprint at a time (an exclusive lock on ``<data_dir>/.build.lock``):
  TFDS writes into an ``incomplete.*`` folder and renames it at the end, so two trainings started
  together on new data (``tools.reproduce --seeds``, several hosts on one file system) would
  otherwise both build and the second rename would fail. The second waits, then finds the build.
  """
  Path(data_dir).mkdir(parents=True, exist_ok=True)
  # Append mode: taking the lock must not touch the file (a cached load writes nothing).
  with open(Path(data_dir) / '.build.lock', 'a') as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
      builder = builder_class(data_dir=str(data_dir))
      # TFDS prints "Downloading and preparing dataset Unknown size ..." and "... downloaded and
      # prepared to ...": nothing is downloaded (a manual_dir build), and build_and_read already
      # said where the cache goes.
      with contextlib.redirect_stdout(io.StringIO()):
        builder.download_and_prepare(
          download_config=tfds.download.DownloadConfig(manual_dir=str(root), try_download_gcs=False)
        )
    finally:
      fcntl.flock(lock, fcntl.LOCK_UN)
  return builder


def read_split(builder: tfds.core.DatasetBuilder, split: str, batch: int) -> dict[str, list]:
  """Every feature of ``split`` as lists (text decoded), in file order, plus ``split``."""
  features = builder.info.features
  text_keys = {k for k, f in features.items() if isinstance(f, tfds.features.Text)}
  out: dict[str, list] = {k: [] for k in features.keys()}
  ds = builder.as_dataset(split=split, shuffle_files=False).batch(batch)
  for chunk in tfds.as_numpy(ds):
    for key in out:
      values = chunk[key]
      if key in text_keys:
        values = [v.decode('utf-8') for v in values]
      out[key].extend(values)
  out['split'] = [split] * len(next(iter(out.values()), []))
  return out


def image_table_features(*, styles: str, cameras: str) -> 'tfds.features.FeaturesDict':
  """The per-image example schema every reader stores: raw bytes (no re-encoding) + identity."""
  return tfds.features.FeaturesDict(
    {
      'image': tfds.features.Tensor(shape=(), dtype=tf.string),
      'pid': tfds.features.Scalar(dtype=tf.int32),
      'modality': tfds.features.Scalar(dtype=tf.int32, doc='0 photo, 1 sketch'),
      'style': tfds.features.Text(doc=f"'' for photos, {styles} for sketches"),
      'camid': tfds.features.Scalar(dtype=tf.int32, doc=f'camera ({cameras}), 0 for sketches'),
      'path': tfds.features.Text(doc='path relative to the dataset root'),
    }
  )


def image_examples(root: Path, records: Sequence) -> Iterator[tuple[str, dict]]:
  """TFDS examples for records with ``path``, ``pid``, ``modality``, ``style`` and ``camid``: the
  file's raw bytes, keyed by its relative path (the loaders checked the files first)."""
  for record in records:
    yield (
      record.path,
      {
        'image': (root / record.path).read_bytes(),
        'pid': record.pid,
        'modality': record.modality,
        'style': record.style,
        'camid': record.camid,
        'path': record.path,
      },
    )


def build_and_read(
  builder_class, root: Path, data_dir, *, num_images: int, splits, read_batch: int
):
  """Builds ``builder_class`` from ``root`` (once per fingerprint) and reads every split back.

  Returns the table columns (image, pid, modality, style, split, camid, path) as typed numpy
  arrays, in (split order, modality, style, path) order: stable across rebuilds and independent of
  TFDS's record order. A build whose image count differs from ``num_images`` is an error naming
  the folder to delete.
  """
  import numpy as np

  if not any(Path(data_dir).glob('*/*/dataset_info.json')):
    log.info('%s: building the TFDS cache in %s (once per data fingerprint)', root, data_dir)
  with quiet_tfds():
    builder = prepare(builder_class, root, data_dir)
    parts = [read_split(builder, split, read_batch) for split in splits]
  columns = {k: [v for part in parts for v in part[k]] for k in parts[0]}
  if len(columns['pid']) != num_images:
    raise RuntimeError(
      f'{data_dir}: the TFDS build holds {len(columns["pid"])} images but {root} has '
      f'{num_images}; delete {data_dir} and load again.'
    )
  image = np.empty(num_images, dtype=object)
  image[:] = columns['image']
  table = dict(
    image=image,
    pid=np.asarray(columns['pid'], np.int32),
    modality=np.asarray(columns['modality'], np.int8),
    style=np.asarray(columns['style'], str),
    split=np.asarray(columns['split'], str),
    camid=np.asarray(columns['camid'], np.int32),
    path=np.asarray(columns['path'], str),
  )
  split_rank = np.asarray([list(splits).index(s) for s in table['split']])
  order = np.lexsort((table['path'], table['style'], table['modality'], split_rank))
  return {k: v[order] for k, v in table.items()}
