"""Synthetic Market-Sketch-1K and PKU-Sketch datasets (README "The synthetic stand-in").

Procedurally rendered people written in exactly the on-disk layouts of the two real datasets, so
every reader, protocol and notebook runs without downloads. ``synthetic_render.py`` draws a
person; this module decides who exists, which photos and sketches each person gets, and writes
them.

Market-Sketch-1K layout (``generate_market_sketch``)::

    photo/train/<pid:04d>_c<cam>s1_<frame:06d>_00.jpg     train identities, 1..photos_per_camera
    photo/query/<pid:04d>_c<cam>s1_<frame:06d>_00.jpg     test identities, 1 per camera (gallery)
    sketch/<S>/train/<pid:04d>.jpg, sketch/<S>/query/<pid:04d>.jpg     S in A..F
    market_attribute.mat                                  struct train/test, 27 fields + image_index

PKU-Sketch layout (``generate_pku_sketch``)::

    sketch/<id>.jpg   photo/<id>_<cam>_<frame>.jpg (cams 1, 2)   styleAnnotation/<S>_<count>.txt

Interpretations chosen (the brief leaves them open)
  * Identity numbers: one seeded walk over 2, 3, 4, … skips a number with probability
    ``id_gap_prob`` and hands each visited number to train or test by a fair coin; train takes the
    first ``num_train_ids`` "train" numbers, test the first ``num_test_ids`` "test" numbers. So
    train and test are disjoint and changing one count never changes the other split's ids.
  * Every random decision has its own ``numpy.random.Generator`` seeded by
    ``[seed, dataset, stream, pid, …]`` — the identity, its camera plan, its sketch draws, each
    photo and each sketch — so sizes can change without reshuffling the rest.
  * Attributes come from ``num_archetypes`` archetypes (drawn once per seed) with each of the 12
    attribute groups re-drawn from the prior with probability ``attribute_noise``; so many people
    share all 27 attributes and differ only in ``IdentityDetails`` (the re-id task needs them).
  * Frame number = pid·100 + cam·10 + photo index (< 10^6 for 4-digit ids): unique per file.
  * A style draws an identity when its per-identity uniform is below ``draw_prob``;
    ``always_draw_style`` (A) draws everyone; identities left with fewer than
    ``min_sketches_per_id`` sketches get the styles with the smallest uniforms added.
  * PKU: style counts are PKU's A 46, B 20, C 79, D 33, E 22 (CMDSL Table 1 totals) scaled to
    ``num_ids`` by largest remainder; ids are assigned to styles by a seeded permutation; each
    sketch is drawn in its style from ``SKETCH_STYLES`` (PKU letter X uses Market style X).
    Photo frames are seeded integers in 1..``pku_max_frame`` (one photo per camera).
  * Folder safety: a ``SYNTHETIC.json`` marker (parameters, counts; no time stamps, so same seed
    ⇒ byte-identical files) and a ``SYNTHETIC_FILES.txt`` manifest of every file written are
    created before the images. Same parameters and all files present ⇒ nothing is done. Our own
    earlier output with other parameters ⇒ exactly the files in its manifest are deleted first.
    A non-empty folder without our marker is refused unless ``overwrite=True``, which writes
    alongside the foreign files and never deletes them.
  * ``market_attribute.mat`` is written by ``scipy.io.savemat``; its 116-byte text header (which
    normally carries the creation time) is replaced by a fixed description for determinism.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import scipy.io
from tqdm import tqdm

from sketchreid_jax.datasets.synthetic_render import (
  COLOURS,
  DOWN_COLOUR_NAMES,
  LOGO_SHAPES,
  MARKET_ATTRIBUTE_NAMES,
  NUM_AGE_GROUPS,
  PATTERNS,
  SIDES,
  SKETCH_STYLES,
  STRAP_SIDES,
  UP_COLOUR_NAMES,
  BodyPlan,
  Camera,
  Identity,
  IdentityDetails,
  PhotoParams,
  SketchParams,
  render_photo,
  render_sketch,
  sample_camera,
)

__all__ = [
  'MARKET_ATTRIBUTE_NAMES',
  'MARKET_STYLES',
  'PKU_STYLES',
  'PKU_STYLE_COUNTS',
  'PRESETS',
  'PopulationParams',
  'generate_market_sketch',
  'generate_pku_sketch',
  'market_ids',
  'market_attributes_bytes',
  'market_photo_name',
  'market_sketch_styles',
  'pku_style_counts',
  'sample_archetypes',
  'sample_identity',
  'write_market_attributes',
]

MARKET_STYLES: tuple[str, ...] = ('A', 'B', 'C', 'D', 'E', 'F')
PKU_STYLES: tuple[str, ...] = ('A', 'B', 'C', 'D', 'E')
# CMDSL Table 1 (train + test) per PKU style.
PKU_STYLE_COUNTS: Mapping[str, int] = {'A': 46, 'B': 20, 'C': 79, 'D': 33, 'E': 22}

MARKER_NAME = 'SYNTHETIC.json'
MANIFEST_NAME = 'SYNTHETIC_FILES.txt'
GENERATOR = 'sketchreid_jax.datasets.synthetic'
FORMAT_VERSION = 1
_MAT_HEADER = b'MATLAB 5.0 MAT-file, written by sketchreid_jax.datasets.synthetic'
_MAT_HEADER_BYTES = 116  # the text field of a MAT-5 file header

# Stream tags: the second and third entries of every seed sequence.
_MARKET, _PKU = 1, 2
_IDS, _ARCHETYPES, _IDENTITY, _CAMERA, _CAMERA_PLAN, _PHOTO, _SKETCH, _DRAWS, _STYLES = range(1, 10)

# "qmul_shoev2"/"qmul_chairv2" are the arguments of synthetic_objects.generate_qmul_shoev2/_chairv2.
_QMUL_TINY = {
  'num_train_photos': 12,
  'num_test_photos': 6,
  'num_sketches': None,
  'sketches_per_photo': 3,
  'size': (64, 64),
}
PRESETS: Mapping[str, Mapping[str, Mapping[str, Any]]] = {
  # Unit tests: a second or two.
  'tiny': {
    'market': {'num_train_ids': 12, 'num_test_ids': 8},
    'pku': {'num_ids': 20},
    'qmul_shoev2': _QMUL_TINY,
    'qmul_chairv2': _QMUL_TINY,
  },
  # Notebooks and smoke training: every layout in well under a minute on 2 cores.
  'demo': {
    'market': {'num_train_ids': 300, 'num_test_ids': 100},
    'pku': {'num_ids': 200},
    'qmul_shoev2': {
      'num_train_photos': 200,
      'num_test_photos': 100,
      'num_sketches': None,
      'sketches_per_photo': 3,
      'size': (128, 128),
    },
    'qmul_chairv2': {
      'num_train_photos': 150,
      'num_test_photos': 50,
      'num_sketches': None,
      'sketches_per_photo': 3,
      'size': (128, 128),
    },
  },
  # Market-Sketch-1K scale (498 + 498 real identities, rounded), the real PKU size, and the real
  # QMUL archives' counts and image size.
  'full': {
    'market': {'num_train_ids': 500, 'num_test_ids': 500},
    'pku': {'num_ids': 200},
    'qmul_shoev2': {
      'num_train_photos': 1800,
      'num_test_photos': 200,
      'num_sketches': 6648,
      'size': (256, 256),
    },
    'qmul_chairv2': {
      'num_train_photos': 300,
      'num_test_photos': 100,
      'num_sketches': 1275,
      'size': (256, 256),
    },
  },
}


def _stream(seed: int, *keys: int) -> np.random.Generator:
  """An independent generator for one (seed, dataset, purpose, ids…) tuple."""
  return np.random.default_rng([int(seed), *(int(k) for k in keys)])


# --------------------------------------------------------------------------------------------
# People
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PopulationParams:
  """How identities are drawn.

  num_archetypes: distinct attribute vectors people are drawn around; attribute_noise: per
  attribute group, probability of re-drawing it from the prior instead of the archetype.
  Priors (probability of "yes"): female_prob; long_hair_prob and dress_prob as (male, female);
  short_lower_prob, short_sleeve_prob, hat_prob, backpack_prob, bag_prob, handbag_prob;
  age_probs over (young, teen, adult, old); up/down_colour_probs over UP/DOWN_COLOUR_NAMES.
  Details: height/shoulder/leg/head multiplier ranges; pattern_probs over PATTERNS;
  pattern_scale_range; shade_jitter = std of the RGB offset of each garment's shade;
  skin_tones and hair_colours the RGB palettes.
  """

  num_archetypes: int = 8
  attribute_noise: float = 0.06
  female_prob: float = 0.45
  long_hair_prob: tuple[float, float] = (0.08, 0.75)
  dress_prob: tuple[float, float] = (0.0, 0.35)
  short_lower_prob: float = 0.3
  short_sleeve_prob: float = 0.5
  hat_prob: float = 0.08
  backpack_prob: float = 0.3
  bag_prob: float = 0.2
  handbag_prob: float = 0.12
  age_probs: tuple[float, float, float, float] = (0.05, 0.15, 0.7, 0.1)
  up_colour_probs: tuple[float, ...] = (0.2, 0.13, 0.08, 0.15, 0.05, 0.1, 0.2, 0.09)
  down_colour_probs: tuple[float, ...] = (0.3, 0.2, 0.08, 0.15, 0.05, 0.05, 0.04, 0.08, 0.05)
  height_range: tuple[float, float] = (0.9, 1.1)
  shoulder_range: tuple[float, float] = (0.85, 1.18)
  leg_range: tuple[float, float] = (0.9, 1.1)
  head_range: tuple[float, float] = (0.88, 1.14)
  pattern_probs: tuple[float, float, float, float, float] = (0.3, 0.2, 0.15, 0.2, 0.15)
  pattern_scale_range: tuple[float, float] = (0.75, 1.35)
  shade_jitter: float = 18.0
  skin_tones: tuple[tuple[float, float, float], ...] = (
    (241.0, 204.0, 177.0),
    (224.0, 172.0, 138.0),
    (198.0, 142.0, 105.0),
    (160.0, 110.0, 75.0),
    (110.0, 75.0, 50.0),
  )
  hair_colours: tuple[tuple[float, float, float], ...] = (
    (20.0, 18.0, 18.0),
    (55.0, 38.0, 28.0),
    (95.0, 62.0, 38.0),
    (170.0, 135.0, 80.0),
  )

  def __post_init__(self) -> None:
    for name, probs, n in (
      ('age_probs', self.age_probs, NUM_AGE_GROUPS),
      ('up_colour_probs', self.up_colour_probs, len(UP_COLOUR_NAMES)),
      ('down_colour_probs', self.down_colour_probs, len(DOWN_COLOUR_NAMES)),
      ('pattern_probs', self.pattern_probs, len(PATTERNS)),
    ):
      if len(probs) != n or min(probs) < 0 or sum(probs) <= 0:
        raise ValueError(
          f'PopulationParams.{name} needs {n} non-negative weights with a '
          f'positive sum, got {probs}.'
        )
    if self.num_archetypes < 1:
      raise ValueError(f'PopulationParams.num_archetypes = {self.num_archetypes}; need ≥ 1.')
    if not 0.0 <= self.attribute_noise <= 1.0:
      raise ValueError(
        f'PopulationParams.attribute_noise = {self.attribute_noise}; '
        'must be a probability in [0, 1].'
      )


# Attribute groups in the order noise is applied (gender first: other priors depend on it).
_GROUPS = (
  'gender',
  'hair',
  'clothes',
  'down',
  'up',
  'hat',
  'backpack',
  'bag',
  'handbag',
  'age',
  'upcolour',
  'downcolour',
)


def _pick(rng: np.random.Generator, probs: Sequence[float]) -> int:
  p = np.asarray(probs, dtype=np.float64)
  return int(rng.choice(len(p), p=p / p.sum()))


def _draw_group(
  group: str, state: dict[str, Any], rng: np.random.Generator, p: PopulationParams
) -> None:
  """Draw one attribute group from the prior (conditioned on gender) into ``state``."""
  female = int(state.get('female', False))
  if group == 'gender':
    state['female'] = bool(rng.random() < p.female_prob)
  elif group == 'hair':
    state['long_hair'] = bool(rng.random() < p.long_hair_prob[female])
  elif group == 'clothes':
    state['dress'] = bool(rng.random() < p.dress_prob[female])
  elif group == 'down':
    state['short_lower'] = bool(rng.random() < p.short_lower_prob)
  elif group == 'up':
    state['short_sleeve'] = bool(rng.random() < p.short_sleeve_prob)
  elif group in ('hat', 'backpack', 'bag', 'handbag'):
    state[group] = bool(rng.random() < getattr(p, f'{group}_prob'))
  elif group == 'age':
    state['age'] = 1 + _pick(rng, p.age_probs)
  elif group == 'upcolour':
    state['up'] = UP_COLOUR_NAMES[_pick(rng, p.up_colour_probs)]
  elif group == 'downcolour':
    state['down'] = DOWN_COLOUR_NAMES[_pick(rng, p.down_colour_probs)]


def _encode(state: Mapping[str, Any]) -> dict[str, int]:
  """Decoded attribute state -> the 27 Market codes (1 = no / first option, 2 = yes / second)."""
  yes = lambda flag: 2 if flag else 1  # noqa: E731
  codes = {
    'age': int(state['age']),
    'backpack': yes(state['backpack']),
    'bag': yes(state['bag']),
    'handbag': yes(state['handbag']),
    **{'down' + c: yes(state['down'] == c) for c in DOWN_COLOUR_NAMES},
    **{'up' + c: yes(state['up'] == c) for c in UP_COLOUR_NAMES},
    'clothes': yes(not state['dress']),  # 1 = dress, 2 = pants
    'down': yes(state['short_lower']),  # 1 = long, 2 = short
    'up': yes(state['short_sleeve']),  # 1 = long sleeve, 2 = short
    'hair': yes(state['long_hair']),  # 1 = short, 2 = long
    'hat': yes(state['hat']),
    'gender': yes(state['female']),  # 1 = male, 2 = female
  }
  return {name: codes[name] for name in MARKET_ATTRIBUTE_NAMES}


def sample_archetypes(
  seed: int, dataset: int = _MARKET, population: PopulationParams = PopulationParams()
) -> list[dict[str, Any]]:
  """The seed's archetypes: decoded attribute states people are drawn around."""
  rng = _stream(seed, dataset, _ARCHETYPES)
  out = []
  for _ in range(population.num_archetypes):
    state: dict[str, Any] = {}
    for group in _GROUPS:
      _draw_group(group, state, rng, population)
    out.append(state)
  return out


def sample_identity(
  pid: int,
  seed: int,
  archetypes: Sequence[Mapping[str, Any]],
  *,
  dataset: int = _MARKET,
  population: PopulationParams = PopulationParams(),
) -> Identity:
  """Identity ``pid``: an archetype with attribute noise, plus freshly drawn details.

  Depends only on (seed, dataset, pid) and the archetypes, not on how many people exist.
  """
  p = population
  rng = _stream(seed, dataset, _IDENTITY, pid)
  state = dict(archetypes[int(rng.integers(len(archetypes)))])
  for group in _GROUPS:
    if rng.random() < p.attribute_noise:
      _draw_group(group, state, rng, p)
  colour_names = tuple(COLOURS)
  choose = lambda seq: seq[int(rng.integers(len(seq)))]  # noqa: E731
  details = IdentityDetails(
    height=float(rng.uniform(*p.height_range)),
    shoulder=float(rng.uniform(*p.shoulder_range)),
    leg=float(rng.uniform(*p.leg_range)),
    head=float(rng.uniform(*p.head_range)),
    pattern=PATTERNS[_pick(rng, p.pattern_probs)],
    pattern_colour=choose(colour_names),
    pattern_scale=float(rng.uniform(*p.pattern_scale_range)),
    logo_shape=choose(LOGO_SHAPES),
    shoe_colour=choose(colour_names),
    bag_colour=choose(colour_names),
    backpack_colour=choose(colour_names),
    hat_colour=choose(colour_names),
    bag_side=choose(SIDES),
    handbag_side=choose(SIDES),
    strap_side=choose(STRAP_SIDES),
    skin=tuple(float(v) for v in choose(p.skin_tones)),
    hair_colour=tuple(float(v) for v in choose(p.hair_colours)),
    up_shade=tuple(float(v) for v in rng.normal(0.0, p.shade_jitter, 3)),
    down_shade=tuple(float(v) for v in rng.normal(0.0, p.shade_jitter, 3)),
  )
  return Identity(pid=int(pid), attributes=_encode(state), details=details)


# --------------------------------------------------------------------------------------------
# Market-Sketch-1K plan
# --------------------------------------------------------------------------------------------


def market_ids(
  seed: int,
  num_train_ids: int,
  num_test_ids: int,
  *,
  id_gap_prob: float = 0.35,
  train_share: float = 0.5,
  first_id: int = 2,
) -> tuple[list[int], list[int]]:
  """Disjoint sorted 4-digit train and test ids (see the module docstring for the walk)."""
  rng = _stream(seed, _MARKET, _IDS)
  train: list[int] = []
  test: list[int] = []
  pid = first_id
  while len(train) < num_train_ids or len(test) < num_test_ids:
    to_train = rng.random() < train_share
    (train if to_train else test).append(pid)
    pid += 1 + int(rng.random() < id_gap_prob)
  train, test = train[:num_train_ids], test[:num_test_ids]
  if max(train + test, default=0) > 9999:
    raise ValueError(
      f'num_train_ids={num_train_ids}, num_test_ids={num_test_ids} need ids '
      'beyond 9999, which do not fit the 4-digit Market naming; lower the '
      'counts or id_gap_prob.'
    )
  return train, test


def market_sketch_styles(
  pid: int,
  seed: int,
  *,
  styles: Sequence[str] = MARKET_STYLES,
  draw_prob: float = 0.8,
  always_draw_style: str | None = 'A',
  min_sketches_per_id: int = 2,
) -> list[str]:
  """The artist styles that sketch identity ``pid`` (sorted)."""
  u = _stream(seed, _MARKET, _DRAWS, pid).random(len(MARKET_STYLES))
  draw = {s: u[MARKET_STYLES.index(s)] for s in styles}
  chosen = {s for s in styles if s == always_draw_style or draw[s] < draw_prob}
  for s in sorted(styles, key=lambda s: draw[s]):  # top up with the nearest misses
    if len(chosen) >= min_sketches_per_id:
      break
    chosen.add(s)
  return sorted(chosen)


def _market_photo_plan(
  pid: int,
  seed: int,
  *,
  per_camera: int | None,
  max_per_camera: int,
  min_cameras: int,
  num_cameras: int,
) -> list[tuple[int, int]]:
  """(cam, index) pairs of one identity's photos; per_camera fixed, or 1..max_per_camera."""
  rng = _stream(seed, _MARKET, _CAMERA_PLAN, pid)
  k = int(rng.integers(min_cameras, num_cameras + 1))
  cams = sorted(int(c) + 1 for c in rng.choice(num_cameras, size=k, replace=False))
  plan = []
  for cam in cams:
    n = per_camera if per_camera is not None else int(rng.integers(1, max_per_camera + 1))
    plan.extend((cam, i) for i in range(n))
  return plan


def market_photo_name(pid: int, cam: int, index: int) -> str:
  """Market-1501 file name; frame = pid·100 + cam·10 + index (unique per file)."""
  return f'{pid:04d}_c{cam}s1_{pid * 100 + cam * 10 + index:06d}_00.jpg'


# --------------------------------------------------------------------------------------------
# Writing helpers
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Job:
  relpath: str
  kind: str  # "photo" | "sketch"
  identity: Identity
  key: tuple[int, ...]  # the per-image stream keys after (seed, dataset)
  camera: Camera | None = None
  style: str = ''


@dataclasses.dataclass(frozen=True)
class _RenderConfig:
  seed: int
  dataset: int
  photo_size: tuple[int, int]
  sketch_size: tuple[int, int]
  photo_params: PhotoParams
  sketch_params: SketchParams
  body: BodyPlan


def _render_job(job: _Job, cfg: _RenderConfig) -> bytes:
  """JPEG bytes of one planned image (deterministic in the job's own stream)."""
  rng = _stream(cfg.seed, cfg.dataset, *job.key)
  buf = io.BytesIO()
  if job.kind == 'photo':
    img = render_photo(
      job.identity, job.camera, rng, size=cfg.photo_size, params=cfg.photo_params, body=cfg.body
    )
    lo, hi = cfg.photo_params.jpeg_quality
    img.save(buf, format='JPEG', quality=int(rng.integers(lo, hi + 1)))
  else:
    img = render_sketch(
      job.identity,
      SKETCH_STYLES[job.style],
      rng,
      size=cfg.sketch_size,
      params=cfg.sketch_params,
      body=cfg.body,
    )
    img.save(buf, format='JPEG', quality=int(cfg.sketch_params.jpeg_quality))
  return buf.getvalue()


def _write_jobs(
  root: Path,
  jobs: Sequence[Any],
  cfg: Any,
  *,
  progress: bool,
  desc: str,
  render: Callable[[Any, Any], bytes] | None = None,
) -> None:
  """Writes ``render(job, cfg)`` (default ``_render_job``) to ``root / job.relpath``, every job."""
  render = render or _render_job
  for rel in sorted({str(Path(j.relpath).parent) for j in jobs}):
    (root / rel).mkdir(parents=True, exist_ok=True)
  for job in tqdm(jobs, desc=desc, unit='img', disable=not progress):
    (root / job.relpath).write_bytes(render(job, cfg))


def write_market_attributes(
  path: str | os.PathLike, train: Sequence[Identity], test: Sequence[Identity]
) -> None:
  """Write ``market_attribute.mat`` (see ``market_attributes_bytes``) to ``path``."""
  Path(path).write_bytes(market_attributes_bytes(train, test))


def market_attributes_bytes(train: Sequence[Identity], test: Sequence[Identity]) -> bytes:
  """``market_attribute.mat`` in the real file's struct form (27 uint8 (1, N) fields + ids)."""

  def struct(people: Sequence[Identity]) -> dict[str, np.ndarray]:
    s = {
      name: np.array([[p.attributes[name] for p in people]], dtype=np.uint8).reshape(1, -1)
      for name in MARKET_ATTRIBUTE_NAMES
    }
    index = np.empty((1, len(people)), dtype=object)
    index[0, :] = [f'{p.pid:04d}' for p in people]
    s['image_index'] = index
    return s

  buf = io.BytesIO()
  scipy.io.savemat(buf, {'market_attribute': {'train': struct(train), 'test': struct(test)}})
  data = bytearray(buf.getvalue())
  # The header text normally embeds time.asctime(); a fixed one keeps the file reproducible.
  data[:_MAT_HEADER_BYTES] = _MAT_HEADER.ljust(_MAT_HEADER_BYTES, b' ')
  return bytes(data)


def _jsonable(value: Any) -> Any:
  """Parameters as plain JSON (tuples -> lists, dataclasses -> dicts) for marker comparison."""
  if dataclasses.is_dataclass(value):
    value = dataclasses.asdict(value)
  return json.loads(json.dumps(value))


def _safe_rel(root: Path, rel: str) -> Path:
  path = (root / rel).resolve()
  if root.resolve() not in path.parents:
    raise ValueError(
      f'{root / MANIFEST_NAME} lists {rel!r}, which is outside {root}; '
      'refusing to touch it. Delete the folder by hand if it is really ours.'
    )
  return path


def _remove_previous(root: Path) -> None:
  """Delete exactly the files a previous run listed in its manifest (and folders left empty)."""
  manifest = root / MANIFEST_NAME
  rels = manifest.read_text().splitlines() if manifest.is_file() else []
  dirs: set[Path] = set()
  for rel in filter(None, rels):
    path = _safe_rel(root, rel)
    if path.is_file():
      path.unlink()
    dirs.update(p for p in path.parents if root.resolve() in p.parents)
  for d in sorted(dirs, key=lambda p: len(p.parts), reverse=True):
    if d.is_dir() and not any(d.iterdir()):
      d.rmdir()
  for name in (MANIFEST_NAME, MARKER_NAME):
    (root / name).unlink(missing_ok=True)


def _prepare_root(
  root: Path, layout: str, params: Mapping[str, Any], overwrite: bool
) -> dict[str, Any] | None:
  """Return the stored marker when ``root`` already holds this exact output; else make room."""
  if root.exists() and not root.is_dir():
    raise NotADirectoryError(f'Output root {root} exists and is not a folder; pass a folder path.')
  marker = root / MARKER_NAME
  stored: Any = None
  if marker.is_file():
    try:
      stored = json.loads(marker.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
      stored = None  # unreadable: treated like any foreign file below
  if isinstance(stored, dict) and stored.get('generator') == GENERATOR:
    if stored.get('layout') == layout:
      manifest = root / MANIFEST_NAME
      if (
        stored.get('status') == 'complete'
        and stored.get('params') == params
        and stored.get('format_version') == FORMAT_VERSION
        and manifest.is_file()
        and all((root / r).is_file() for r in manifest.read_text().splitlines() if r)
      ):
        return stored
      # Our own earlier (other parameters, or interrupted) output: replace exactly it.
      _remove_previous(root)
      return None
    if not overwrite:
      raise FileExistsError(
        f'{root} holds synthetic {stored.get("layout")!r} data, not {layout!r}; refusing '
        'to mix layouts. Choose another output folder, or pass overwrite=True '
        '(--overwrite) to write alongside it.'
      )
    return None
  if root.is_dir() and any(root.iterdir()) and not overwrite:
    raise FileExistsError(
      f'{root} is not empty and has no {MARKER_NAME} from this generator, so it is not a '
      'previous synthetic output; refusing to write into it. Choose an empty or new folder, '
      'or pass overwrite=True (--overwrite) to write alongside its files (files this '
      'generator did not write are never deleted).'
    )
  return None


def _write_marker(
  root: Path,
  layout: str,
  params: Mapping[str, Any],
  status: str,
  counts: Mapping[str, int] | None = None,
) -> dict[str, Any]:
  marker = {
    'generator': GENERATOR,
    'format_version': FORMAT_VERSION,
    'layout': layout,
    'status': status,
    'params': params,
    'counts': dict(counts or {}),
  }
  (root / MARKER_NAME).write_text(json.dumps(marker, indent=1) + '\n')
  return marker


def _run(
  root: Path,
  layout: str,
  params: dict[str, Any],
  jobs: Sequence[Any],
  extra_files: Mapping[str, bytes],
  counts: Mapping[str, int],
  cfg: Any,
  *,
  progress: bool,
  start: float,
  render: Callable[[Any, Any], bytes] | None = None,
) -> dict[str, Any]:
  """Writes one layout: manifest and marker first, then every job (``_write_jobs``), the extra
  files and the completed marker; returns the ``_summary``."""
  root.mkdir(parents=True, exist_ok=True)
  rels = sorted([j.relpath for j in jobs] + list(extra_files))
  # Manifest and an "in_progress" marker first: an interrupted run is still recognised as ours.
  (root / MANIFEST_NAME).write_text(''.join(r + '\n' for r in rels))
  _write_marker(root, layout, params, 'in_progress')
  _write_jobs(root, jobs, cfg, progress=progress, desc=layout, render=render)
  for rel, data in extra_files.items():
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    (root / rel).write_bytes(data)
  marker = _write_marker(root, layout, params, 'complete', counts)
  return _summary(root, marker, generated=True, start=start)


def _summary(
  root: Path, marker: Mapping[str, Any], *, generated: bool, start: float
) -> dict[str, Any]:
  return {
    'layout': marker['layout'],
    'root': str(root),
    'generated': generated,
    'counts': dict(marker['counts']),
    'params': marker['params'],
    'seconds': time.perf_counter() - start,
  }


def _check_int(name: str, value: int, lo: int, hi: int | None = None) -> int:
  if (
    isinstance(value, bool)
    or not isinstance(value, (int, np.integer))
    or value < lo
    or (hi is not None and value > hi)
  ):
    rng = f'≥ {lo}' if hi is None else f'in {lo}..{hi}'
    raise ValueError(f'{name} = {value!r}; must be an integer {rng}.')
  return int(value)


def _check_size(name: str, size: Sequence[int]) -> tuple[int, int]:
  try:
    h, w = (int(v) for v in size)
  except (TypeError, ValueError) as err:
    raise ValueError(f'{name} = {size!r}; give (height, width) integers.') from err
  if h < 8 or w < 8:
    raise ValueError(f'{name} = {size!r}; height and width must be ≥ 8 pixels.')
  return h, w


# --------------------------------------------------------------------------------------------
# Public generators
# --------------------------------------------------------------------------------------------


def generate_market_sketch(
  root: str | os.PathLike,
  *,
  num_train_ids: int = 300,
  num_test_ids: int = 100,
  seed: int = 0,
  styles: Sequence[str] = MARKET_STYLES,
  draw_prob: float = 0.8,
  always_draw_style: str | None = 'A',
  min_sketches_per_id: int = 2,
  photos_per_camera: int = 3,
  test_photos_per_camera: int = 1,
  min_cameras: int = 2,
  num_cameras: int = 6,
  photo_size: Sequence[int] = (128, 64),
  sketch_size: Sequence[int] = (256, 128),
  id_gap_prob: float = 0.35,
  population: PopulationParams = PopulationParams(),
  photo_params: PhotoParams = PhotoParams(),
  sketch_params: SketchParams = SketchParams(),
  body: BodyPlan = BodyPlan(),
  overwrite: bool = False,
  progress: bool = False,
) -> dict[str, Any]:
  """Write a synthetic Market-Sketch-1K under ``root``; return a summary dict.

  Train identities get 1..``photos_per_camera`` photos in each of 2..``num_cameras`` random
  cameras (``photo/train``); test identities exactly ``test_photos_per_camera`` per camera
  (``photo/query``, the gallery). Each style in ``styles`` sketches an identity with probability
  ``draw_prob``; ``always_draw_style`` sketches everyone; every identity gets at least
  ``min_sketches_per_id`` sketches. Sizes are (height, width). Returns
  ``{'layout', 'root', 'generated', 'counts', 'params', 'seconds'}``; ``generated`` is False
  when ``root`` already held this exact output. ``progress`` shows a tqdm bar.
  """
  start = time.perf_counter()
  root = Path(root)
  seed = _check_int('seed', seed, 0)
  num_train_ids = _check_int('num_train_ids', num_train_ids, 1)
  num_test_ids = _check_int('num_test_ids', num_test_ids, 1)
  num_cameras = _check_int('num_cameras', num_cameras, 2, 9)
  min_cameras = _check_int('min_cameras', min_cameras, 1, num_cameras)
  photos_per_camera = _check_int('photos_per_camera', photos_per_camera, 1, 9)
  test_photos_per_camera = _check_int('test_photos_per_camera', test_photos_per_camera, 1, 9)
  photo_size = _check_size('photo_size', photo_size)
  sketch_size = _check_size('sketch_size', sketch_size)
  styles = tuple(sorted(set(styles)))
  bad = [s for s in styles if s not in MARKET_STYLES]
  if not styles or bad:
    raise ValueError(f'styles = {styles}: unknown {bad}; choose from {MARKET_STYLES}.')
  if always_draw_style is not None and always_draw_style not in styles:
    raise ValueError(
      f'always_draw_style = {always_draw_style!r} is not among styles '
      f'{styles}; add it to styles or pass always_draw_style=None.'
    )
  min_sketches_per_id = _check_int('min_sketches_per_id', min_sketches_per_id, 1, len(styles))
  if not 0.0 <= draw_prob <= 1.0:
    raise ValueError(f'draw_prob = {draw_prob}; must be a probability in [0, 1].')
  if not 0.0 <= id_gap_prob < 1.0:
    raise ValueError(f'id_gap_prob = {id_gap_prob}; must be in [0, 1).')

  params = _jsonable(
    {
      'num_train_ids': num_train_ids,
      'num_test_ids': num_test_ids,
      'seed': seed,
      'styles': list(styles),
      'draw_prob': draw_prob,
      'always_draw_style': always_draw_style,
      'min_sketches_per_id': min_sketches_per_id,
      'photos_per_camera': photos_per_camera,
      'test_photos_per_camera': test_photos_per_camera,
      'min_cameras': min_cameras,
      'num_cameras': num_cameras,
      'photo_size': photo_size,
      'sketch_size': sketch_size,
      'id_gap_prob': id_gap_prob,
      'population': _jsonable(population),
      'photo_params': _jsonable(photo_params),
      'sketch_params': _jsonable(sketch_params),
      'body': _jsonable(body),
    }
  )
  stored = _prepare_root(root, 'market_sketch', params, overwrite)
  if stored is not None:
    return _summary(root, stored, generated=False, start=start)

  train_ids, test_ids = market_ids(seed, num_train_ids, num_test_ids, id_gap_prob=id_gap_prob)
  archetypes = sample_archetypes(seed, _MARKET, population)
  people = {
    pid: sample_identity(pid, seed, archetypes, dataset=_MARKET, population=population)
    for pid in train_ids + test_ids
  }
  cameras = {
    c: sample_camera(_stream(seed, _MARKET, _CAMERA, c), photo_params)
    for c in range(1, num_cameras + 1)
  }

  jobs: list[_Job] = []
  counts: dict[str, int] = {'ids/train': num_train_ids, 'ids/test': num_test_ids}
  for split, ids, per_cam in (
    ('train', train_ids, None),
    ('query', test_ids, test_photos_per_camera),
  ):
    folder = f'photo/{split}'
    counts.setdefault(folder, 0)
    for pid in ids:
      for cam, index in _market_photo_plan(
        pid,
        seed,
        per_camera=per_cam,
        max_per_camera=photos_per_camera,
        min_cameras=min_cameras,
        num_cameras=num_cameras,
      ):
        jobs.append(
          _Job(
            f'{folder}/{market_photo_name(pid, cam, index)}',
            'photo',
            people[pid],
            (_PHOTO, pid, cam, index),
            camera=cameras[cam],
          )
        )
        counts[folder] += 1
  for split, ids in (('train', train_ids), ('query', test_ids)):
    for s in styles:
      counts[f'sketch/{s}/{split}'] = 0
    for pid in ids:
      for s in market_sketch_styles(
        pid,
        seed,
        styles=styles,
        draw_prob=draw_prob,
        always_draw_style=always_draw_style,
        min_sketches_per_id=min_sketches_per_id,
      ):
        jobs.append(
          _Job(
            f'sketch/{s}/{split}/{pid:04d}.jpg',
            'sketch',
            people[pid],
            (_SKETCH, pid, MARKET_STYLES.index(s)),
            style=s,
          )
        )
        counts[f'sketch/{s}/{split}'] += 1

  mat = market_attributes_bytes([people[p] for p in train_ids], [people[p] for p in test_ids])
  cfg = _RenderConfig(seed, _MARKET, photo_size, sketch_size, photo_params, sketch_params, body)
  return _run(
    root,
    'market_sketch',
    params,
    jobs,
    {'market_attribute.mat': mat},
    counts,
    cfg,
    progress=progress,
    start=start,
  )


def pku_style_counts(num_ids: int, base: Mapping[str, int] = PKU_STYLE_COUNTS) -> dict[str, int]:
  """``base`` counts scaled to ``num_ids`` by largest remainder (ties: style order)."""
  num_ids = _check_int('num_ids', num_ids, 1)
  total = sum(base.values())
  quotas = {s: c * num_ids / total for s, c in base.items()}
  counts = {s: int(np.floor(q)) for s, q in quotas.items()}
  order = sorted(base, key=lambda s: (-(quotas[s] - counts[s]), list(base).index(s)))
  for s in order[: num_ids - sum(counts.values())]:
    counts[s] += 1
  return counts


def generate_pku_sketch(
  root: str | os.PathLike,
  *,
  num_ids: int = 200,
  seed: int = 0,
  style_counts: Mapping[str, int] | None = None,
  pku_max_frame: int = 9999,
  photo_size: Sequence[int] = (128, 64),
  sketch_size: Sequence[int] = (256, 128),
  population: PopulationParams = PopulationParams(),
  photo_params: PhotoParams = PhotoParams(),
  sketch_params: SketchParams = SketchParams(),
  body: BodyPlan = BodyPlan(),
  overwrite: bool = False,
  progress: bool = False,
) -> dict[str, Any]:
  """Write a synthetic PKU-Sketch under ``root``; return a summary dict.

  Ids 1..``num_ids``; one sketch each in its style, two photos (cams 1 and 2).
  ``style_counts`` (letters A..E, summing to ``num_ids``) defaults to ``pku_style_counts``.
  Same return value and folder rules as ``generate_market_sketch``.
  """
  start = time.perf_counter()
  root = Path(root)
  seed = _check_int('seed', seed, 0)
  num_ids = _check_int('num_ids', num_ids, 1)
  pku_max_frame = _check_int('pku_max_frame', pku_max_frame, 1)
  photo_size = _check_size('photo_size', photo_size)
  sketch_size = _check_size('sketch_size', sketch_size)
  counts_by_style = dict(style_counts) if style_counts is not None else pku_style_counts(num_ids)
  bad = [s for s in counts_by_style if s not in PKU_STYLES]
  if bad or sum(counts_by_style.values()) != num_ids or min(counts_by_style.values()) < 0:
    raise ValueError(
      f'style_counts = {counts_by_style}: keys must be among {PKU_STYLES} '
      f'(unknown {bad}), counts ≥ 0 and summing to num_ids = {num_ids}.'
    )
  counts_by_style = {s: int(counts_by_style.get(s, 0)) for s in PKU_STYLES}

  params = _jsonable(
    {
      'num_ids': num_ids,
      'seed': seed,
      'style_counts': counts_by_style,
      'pku_max_frame': pku_max_frame,
      'photo_size': photo_size,
      'sketch_size': sketch_size,
      'population': _jsonable(population),
      'photo_params': _jsonable(photo_params),
      'sketch_params': _jsonable(sketch_params),
      'body': _jsonable(body),
    }
  )
  stored = _prepare_root(root, 'pku_sketch', params, overwrite)
  if stored is not None:
    return _summary(root, stored, generated=False, start=start)

  ids = list(range(1, num_ids + 1))
  archetypes = sample_archetypes(seed, _PKU, population)
  people = {
    pid: sample_identity(pid, seed, archetypes, dataset=_PKU, population=population) for pid in ids
  }
  cameras = {c: sample_camera(_stream(seed, _PKU, _CAMERA, c), photo_params) for c in (1, 2)}
  order = _stream(seed, _PKU, _STYLES).permutation(ids)
  style_of: dict[int, str] = {}
  files: dict[str, bytes] = {}
  at = 0
  for s in PKU_STYLES:
    members = sorted(int(p) for p in order[at : at + counts_by_style[s]])
    at += counts_by_style[s]
    style_of.update((p, s) for p in members)
    files[f'styleAnnotation/{s}_{len(members)}.txt'] = ''.join(f'{p}\n' for p in members).encode()

  jobs: list[_Job] = []
  for pid in ids:
    jobs.append(
      _Job(
        f'sketch/{pid}.jpg',
        'sketch',
        people[pid],
        (_SKETCH, pid, PKU_STYLES.index(style_of[pid])),
        style=style_of[pid],
      )
    )
    frames = _stream(seed, _PKU, _CAMERA_PLAN, pid).integers(1, pku_max_frame + 1, size=2)
    for cam, frame in zip((1, 2), frames):
      jobs.append(
        _Job(
          f'photo/{pid}_{cam}_{int(frame)}.jpg',
          'photo',
          people[pid],
          (_PHOTO, pid, cam, 0),
          camera=cameras[cam],
        )
      )
  counts = {
    'ids': num_ids,
    'sketch': num_ids,
    'photo': 2 * num_ids,
    **{f'styleAnnotation/{s}': c for s, c in counts_by_style.items()},
  }
  cfg = _RenderConfig(seed, _PKU, photo_size, sketch_size, photo_params, sketch_params, body)
  return _run(root, 'pku_sketch', params, jobs, files, counts, cfg, progress=progress, start=start)
