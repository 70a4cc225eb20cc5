"""TFDS plumbing every manual_dir reader shares: fingerprinted build cache, quiet build, reading.

Market-Sketch-1K and PKU-Sketch (DESIGN §2, §5, §6) both build a TFDS copy of a local folder once
and read it back into a ``SampleTable``; this module holds the dataset-independent parts.

Interpretations chosen:
- The build cache lives in ``<cache_dir>/<fingerprint>/``; the fingerprint is the sha1 of the
  absolute root and the sorted (relative path, size, mtime_ns) of the files the reader consumes,
  so editing or regenerating the data rebuilds and two datasets never share a cache. Old
  fingerprints are not deleted (a cache folder may be shared by several datasets).
- Reading returns every feature of the split as Python lists, text features decoded to ``str``,
  plus a ``split`` column naming the TFDS split the row came from.
- Every image is fully decoded once by PIL while its example is generated (so only when a build
  runs, never on a cached load): ``Image.verify()`` alone misses a truncated JPEG. A file that
  cannot be read or decoded fails the build with a ValueError naming it (absolute path, and its
  relative path under the dataset root) and the other unreadable files of the same split; it is
  never skipped, since a missing image would silently change the identities and the protocol.
"""

import contextlib
import hashlib
import inspect
import io
import logging
import os
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from sketchreid_jax.tf_setup import tf  # noqa: E402  (hides GPUs from TF first)

import tensorflow_datasets as tfds  # noqa: E402
from absl import logging as absl_logging  # noqa: E402
from etils import epath  # noqa: E402
from PIL import Image, UnidentifiedImageError

DEFAULT_CACHE_DIR = "~/.cache/sketchreid_jax/tfds"


def fingerprint(root: str | os.PathLike, rel_paths: Iterable[str]) -> str:
  """sha1 of the absolute root and the sorted (relative path, size, mtime_ns) of ``rel_paths``."""
  root = Path(root).expanduser().resolve()
  digest = hashlib.sha1(str(root).encode())
  for rel in sorted(rel_paths):
    stat = (root / rel).stat()
    digest.update(f"\0{rel}\0{stat.st_size}\0{stat.st_mtime_ns}".encode())
  return digest.hexdigest()


def cache_data_dir(
  cache_dir: str | os.PathLike | None, root: str | os.PathLike, rel_paths: Iterable[str]
) -> Path:
  """``<cache_dir or DEFAULT_CACHE_DIR>/<fingerprint(root, rel_paths)>``: one TFDS data_dir."""
  return Path(cache_dir or DEFAULT_CACHE_DIR).expanduser() / fingerprint(root, rel_paths)


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
    getattr(tqdm_utils, "_active", True),
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
        values = [v.decode("utf-8") for v in values]
      out[key].extend(values)
  out["split"] = [split] * len(next(iter(out.values()), []))
  return out


def image_table_features(*, styles: str, cameras: str) -> "tfds.features.FeaturesDict":
  """The per-image example schema every reader stores: raw bytes (no re-encoding) + identity."""
  return tfds.features.FeaturesDict(
    {
      "image": tfds.features.Tensor(shape=(), dtype=tf.string),
      "pid": tfds.features.Scalar(dtype=tf.int32),
      "modality": tfds.features.Scalar(dtype=tf.int32, doc="0 photo, 1 sketch"),
      "style": tfds.features.Text(doc=f"'' for photos, {styles} for sketches"),
      "camid": tfds.features.Scalar(dtype=tf.int32, doc=f"camera ({cameras}), 0 for sketches"),
      "path": tfds.features.Text(doc="path relative to the dataset root"),
    }
  )


# Unreadable files listed by name in one error, beyond the first.
_MAX_LISTED = 5


def image_problem(data: bytes) -> str | None:
  """Why ``data`` cannot be decoded as an image (PIL's reason), or None if it decodes fully."""
  if not data:
    return "the file is empty"
  try:
    with Image.open(io.BytesIO(data)) as img:
      img.load()  # a full decode: verify() passes a JPEG that was cut short
  except UnidentifiedImageError:  # its message names an anonymous BytesIO, not the file
    return "not a format PIL recognises (JPEG, PNG, ...)"
  except Exception as err:  # noqa: BLE001  (PIL raises several types for a corrupt file)
    return f"{type(err).__name__}: {err}"
  return None


def _read_image(root: Path, rel: str) -> tuple[bytes | None, str | None]:
  try:
    data = (root / rel).read_bytes()
  except OSError as err:
    return None, f"{type(err).__name__}: {err.strerror or err}"
  return data, image_problem(data)


def image_examples(root: Path, records: Sequence) -> Iterator[tuple[str, dict]]:
  """TFDS examples for records with ``path``, ``pid``, ``modality``, ``style`` and ``camid``: the
  file's raw bytes, keyed by its relative path.

  Each file must decode as an image; the first one that does not raises a ValueError naming it
  and every other unreadable file of ``records`` (they are only checked then, on failure).
  """
  records = list(records)
  for i, record in enumerate(records):
    data, problem = _read_image(root, record.path)
    if problem is not None:
      others = [r.path for r in records[i + 1 :] if _read_image(root, r.path)[1] is not None]
      raise ValueError(unreadable_message(root, record.path, problem, others))
    yield (
      record.path,
      {
        "image": data,
        "pid": record.pid,
        "modality": record.modality,
        "style": record.style,
        "camid": record.camid,
        "path": record.path,
      },
    )


def unreadable_message(root: Path, rel: str, problem: str, others: Sequence[str] = ()) -> str:
  """The error for an image file that cannot be read or decoded (path first, then the fix)."""
  message = (
    f"{root / rel}: unreadable image ({problem}); expected a complete JPEG or PNG file "
    f"({rel} under the dataset root {root}). Re-copy it from the original dataset or remove "
    f"it, then load again."
  )
  if others:
    listed = ", ".join(others[:_MAX_LISTED]) + (", ..." if len(others) > _MAX_LISTED else "")
    message += f" Also unreadable in the same split ({len(others)}): {listed}."
  return message
