"""Synthetic QMUL-ShoeV2 and QMUL-ChairV2: procedurally drawn shoes and chairs (fine-grained SBIR).

Layout written (both; what the distributed archives hold and ``datasets.qmul`` reads)::

    trainA/<stem>_<k>.png   training sketches, k = the sketcher (1..len(SKETCHERS))
    trainB/<stem>.png       training photos, one per item
    testA/<stem>_<k>.png    test sketches (the queries)
    testB/<stem>.png        test photos (the gallery)

``generate_qmul_shoev2`` and ``generate_qmul_chairv2`` decide which items exist and write them;
``sample_shoe``/``shoe_parts`` and ``sample_chair``/``chair_parts`` say what an item looks like;
``render_object_photo`` and ``render_object_sketch`` draw its parts. numpy + PIL only.

Interpretations chosen:
  * Fine-grained: every item of a category is built from the same part list (shoe: sole, upper,
    heel; chair: legs, seat, back) in the same view, so all items share the category's overall
    shape and differ in the parts: shoe silhouette (shaft height, toe shape and height, throat),
    heel type and height, sole thickness and tread, laces (number of eyelets) or straps or
    neither, side stripes, toe cap, stitching and colours; chair legs (straight, tapered, splayed,
    pedestal with or without casters, sled), stretchers, seat shape and thickness, cushion, back
    (solid with or without tufting, vertical or horizontal slats, open frame; flat or arched top,
    height, tilt), arms (none, bars, panels) and colours. Each item is normalised to the same
    frame, so its absolute size carries no identity; its proportions do.
  * Items: one seeded walk over item numbers 0, 1, 2, ... hands each to train or test by a fair
    coin and names it from the same stream; train takes the first ``num_train_photos`` "train"
    items, test the first ``num_test_photos`` "test" items. So train and test are disjoint and a
    split's size never changes the other split's items.
  * Stems: ShoeV2 ten-digit numbers (the real names look like 2429245009). ChairV2
    ``<word>_<4 hex digits>``, a quarter of them with a variant ``_<digit>``
    (``chair_set_a3f9_2``): never numeric, always with an underscore and often ending in
    ``_<digits>``, so only the last-``_k`` rule of the reader finds a sketch's photo.
  * Sketch counts: ``sketches_per_photo`` each, or ``num_sketches`` in all spread as evenly as
    possible (the mean's floor each, plus one for a seeded choice of items). Each sketch of a
    photo is by another sketcher, a seeded subset of ``SKETCHERS``, and k is that sketcher's
    number, so a photo's k need not be contiguous (``_1``, ``_3``, ``_4``).
  * Sketchers (``SKETCHERS``, careful to sloppy): each leaves out every detail group of the
    category (``SHOE_DETAILS``, ``CHAIR_DETAILS``) independently with its own ``omit_prob``
    (``draw_omissions``, the first draw of the sketch's stream, made for every group whether the
    item has it or not, so the decision never depends on the item), wobbles its lines by its own
    jitter, draws with its own stroke width, breaks and re-traces strokes at its own rates, and
    misremembers proportions by its own random affine distortion.
  * Photos: the parts filled with the item's colours (faces of a chair shaded as lit from above),
    one light direction per photo (a brightness ramp), darkened edges, a soft ground shadow, on a
    background that varies per photo (flat, gradient, stripes, checks or blotches in seeded
    colours), then per-photo white balance, pixel noise and blur; framing (scale, shift, tilt)
    varies per photo. Sketches: black lines on white outlining the same parts; the parts of the
    form are filled white first so that they hide what is behind them, details are never filled,
    so leaving a detail out only ever removes ink.
  * Images are RGB PNG, photos and sketches (the real ones are 256x256 RGB PNG). Sizes per
    preset (``synthetic.PRESETS``): tiny 64x64 and demo 128x128, for speed; full 256x256.
  * Every random decision has its own generator ``_stream(seed, dataset, purpose, item, ...)``
    (the item walk, an item's design, its sketcher subset, each photo, each sketch), so sizes can
    change without reshuffling the rest and the same seed gives byte-identical files.
  * Folder safety, ``SYNTHETIC.json`` marker and ``SYNTHETIC_FILES.txt`` manifest: as in
    ``datasets.synthetic`` (same parameters and all files present: nothing is done).
"""

from __future__ import annotations

import dataclasses
import io
import math
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from sketchreid_jax.datasets.synthetic import (
  _check_int,
  _check_size,
  _jsonable,
  _prepare_root,
  _run,
  _stream,
  _summary,
)
from sketchreid_jax.datasets.synthetic_render import COLOURS, _ellipse, _jittered

__all__ = [
  'CHAIR_DETAILS',
  'SHOE_DETAILS',
  'SKETCHERS',
  'ChairSpec',
  'Part',
  'ShoeSpec',
  'Sketcher',
  'chair_parts',
  'draw_omissions',
  'generate_qmul_chairv2',
  'generate_qmul_shoev2',
  'qmul_items',
  'render_object_photo',
  'render_object_sketch',
  'sample_chair',
  'sample_shoe',
  'shoe_parts',
  'sketch_omissions',
  'sketch_plan',
]

# Stream tags: datasets continue synthetic.py's (1 Market, 2 PKU); purposes are this module's.
_SHOE, _CHAIR = 3, 4
_ITEMS, _SPEC, _PLAN, _SKETCHER_SET, _PHOTO, _SKETCH = range(1, 7)
CATEGORIES = {'shoe': _SHOE, 'chair': _CHAIR}
FORMAT = 1  # bump when the drawing changes, so old output is regenerated
FOLDERS = {
  ('train', 'sketch'): 'trainA',
  ('train', 'photo'): 'trainB',
  ('test', 'sketch'): 'testA',
  ('test', 'photo'): 'testB',
}

SHOE_DETAILS: tuple[str, ...] = ('laces', 'straps', 'stripes', 'toe_cap', 'tread', 'stitching')
CHAIR_DETAILS: tuple[str, ...] = ('slats', 'stretchers', 'cushion', 'tufting', 'casters')
DETAILS = {'shoe': SHOE_DETAILS, 'chair': CHAIR_DETAILS}

RGB = tuple[float, float, float]


# --------------------------------------------------------------------------------------------
# Parts and sketchers
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Part:
  """A filled region (closed polygon) or a stroke (open polyline) in the item frame (x right, y
  up, the item fitted into the unit square).

  detail: '' for the item's form (always drawn), else the detail group a sketcher may leave out;
  width: a stroke's width in item units (photos; a sketch draws every line with its pen).
  """

  points: np.ndarray
  colour: RGB
  detail: str = ''
  closed: bool = True
  width: float = 0.0


@dataclasses.dataclass(frozen=True)
class Sketcher:
  """One sketcher. Lengths are in pixels of a 256-pixel image (scaled for other sizes).

  stroke_width: the pen; jitter: std of the wobble of the outline points, resampled every
  ``segment`` pixels; omit_prob: probability of leaving out each detail group of an item (drawn
  per sketch and group); gap_prob: chance that a stroke segment is not drawn; double_stroke_prob:
  chance that a part is traced twice; distortion: std of the entries of the sketch's random affine
  distortion (misremembered proportions).
  """

  stroke_width: float
  jitter: float
  segment: float
  omit_prob: float
  gap_prob: float
  double_stroke_prob: float
  distortion: float


# k = 1..5, careful to sloppy.
SKETCHERS: tuple[Sketcher, ...] = (
  Sketcher(1.5, 0.4, 6.0, omit_prob=0.05, gap_prob=0.0, double_stroke_prob=0.0, distortion=0.02),
  Sketcher(2.0, 0.8, 8.0, omit_prob=0.2, gap_prob=0.02, double_stroke_prob=0.2, distortion=0.04),
  Sketcher(2.5, 1.0, 7.0, omit_prob=0.35, gap_prob=0.04, double_stroke_prob=0.4, distortion=0.05),
  Sketcher(3.0, 1.6, 10.0, omit_prob=0.5, gap_prob=0.08, double_stroke_prob=0.1, distortion=0.07),
  Sketcher(1.5, 1.2, 6.0, omit_prob=0.7, gap_prob=0.12, double_stroke_prob=0.0, distortion=0.09),
)


def draw_omissions(
  sketcher: Sketcher, details: Sequence[str], rng: np.random.Generator
) -> frozenset[str]:
  """The detail groups this sketch leaves out: each of ``details`` with ``sketcher.omit_prob``."""
  u = rng.random(len(details))
  return frozenset(d for d, v in zip(details, u) if v < sketcher.omit_prob)


def sketch_omissions(category: str, seed: int, item: int, k: int) -> frozenset[str]:
  """What sketch ``k`` (1-based sketcher) of ``item`` leaves out, as the generator decides it."""
  rng = _stream(seed, CATEGORIES[category], _SKETCH, item, k)
  return draw_omissions(SKETCHERS[k - 1], DETAILS[category], rng)


# --------------------------------------------------------------------------------------------
# Geometry helpers
# --------------------------------------------------------------------------------------------


def _chaikin(points: np.ndarray, iterations: int = 2) -> np.ndarray:
  """Corner cutting of a closed polygon: a smooth outline through the control polygon's corners."""
  pts = np.asarray(points, np.float64)
  for _ in range(iterations):
    nxt = np.roll(pts, -1, axis=0)
    pts = np.stack([0.75 * pts + 0.25 * nxt, 0.25 * pts + 0.75 * nxt], axis=1).reshape(-1, 2)
  return pts


def _hull(points: np.ndarray) -> np.ndarray:
  """Convex hull (Andrew's monotone chain), counter-clockwise."""
  pts = sorted(set(map(tuple, np.round(np.asarray(points, np.float64), 9).tolist())))
  if len(pts) < 3:
    return np.asarray(pts, np.float64)

  def half(seq):
    out: list = []
    for p in seq:
      while (
        len(out) >= 2
        and (
          (out[-1][0] - out[-2][0]) * (p[1] - out[-2][1])
          - (out[-1][1] - out[-2][1]) * (p[0] - out[-2][0])
        )
        <= 0
      ):
        out.pop()
      out.append(p)
    return out

  lower, upper = half(pts), half(reversed(pts))
  return np.asarray(lower[:-1] + upper[:-1], np.float64)


def _shaded(colour: RGB, factor: float) -> RGB:
  return tuple(float(v) for v in np.clip(np.asarray(colour) * factor, 0.0, 255.0))


def _colour(rng: np.random.Generator, names: Sequence[str] = tuple(COLOURS)) -> RGB:
  base = np.asarray(COLOURS[names[int(rng.integers(len(names)))]])
  return tuple(float(v) for v in np.clip(base + rng.normal(0.0, 14.0, 3), 0.0, 255.0))


def _normalise(parts: list[Part]) -> list[Part]:
  """The parts moved and scaled so that the item's bounding box is centred in the unit square with
  its longer side 1 (stroke widths scaled alike)."""
  allpts = np.concatenate([p.points for p in parts])
  lo, hi = allpts.min(axis=0), allpts.max(axis=0)
  scale = 1.0 / float(max(hi - lo))
  centre = (lo + hi) / 2.0
  return [
    dataclasses.replace(p, points=(p.points - centre) * scale + 0.5, width=p.width * scale)
    for p in parts
  ]


# --------------------------------------------------------------------------------------------
# Shoes (side view, toe to the right)
# --------------------------------------------------------------------------------------------

SHOE_SILHOUETTES = ('low', 'mid', 'high', 'boot')
SHOE_HEELS = ('flat', 'block', 'stiletto', 'wedge')
SHOE_TOES = ('round', 'pointed', 'square')
SHOE_CLOSURES = ('laces', 'straps', 'none')
_SOLE_COLOURS = ('white', 'black', 'brown', 'gray')
_SHAFT_RANGE = {'low': (0.1, 0.16), 'mid': (0.2, 0.27), 'high': (0.33, 0.43), 'boot': (0.5, 0.68)}
_HEEL_RANGE = {
  'flat': (0.0, 0.03),
  'block': (0.08, 0.17),
  'stiletto': (0.16, 0.28),
  'wedge': (0.08, 0.2),
}


@dataclasses.dataclass(frozen=True)
class ShoeSpec:
  """One shoe design. Lengths in units of the shoe's length (heel at x = 0, toe at x = 1).

  silhouette: one of SHOE_SILHOUETTES; shaft: collar height above the heel seat; throat: x where
  the vamp opening starts; toe: one of SHOE_TOES, toe_height its height; heel: one of SHOE_HEELS,
  heel_height its height; sole: sole thickness; tread: ridges on the sole; eyelets: laced with
  that many eyelets (0 = no laces); straps: straps across the instep; stripes: side stripes,
  stripe_slant their forward lean; toe_cap, stitching: a toe-cap seam, a stitched welt.
  """

  silhouette: str
  shaft: float
  throat: float
  toe: str
  toe_height: float
  heel: str
  heel_height: float
  sole: float
  tread: bool
  eyelets: int
  straps: int
  stripes: int
  stripe_slant: float
  toe_cap: bool
  stitching: bool
  upper: RGB
  accent: RGB
  sole_colour: RGB
  lace_colour: RGB


def _choice(rng: np.random.Generator, options: Sequence[str], p: Sequence[float]) -> str:
  p = np.asarray(p, np.float64)
  return options[int(rng.choice(len(options), p=p / p.sum()))]


def sample_shoe(rng: np.random.Generator) -> ShoeSpec:
  """A random shoe design (see ``ShoeSpec``)."""
  silhouette = _choice(rng, SHOE_SILHOUETTES, (0.45, 0.25, 0.15, 0.15))
  shaft = float(rng.uniform(*_SHAFT_RANGE[silhouette]))
  heel = _choice(rng, SHOE_HEELS, (0.5, 0.2, 0.15, 0.15))
  heel_height = float(rng.uniform(*_HEEL_RANGE[heel]))
  sole = float(rng.uniform(0.015, 0.03) if heel == 'stiletto' else rng.uniform(0.03, 0.075))
  closure = _choice(rng, SHOE_CLOSURES, (0.5, 0.25, 0.25))
  eyelets = int(rng.integers(3, 7)) if closure == 'laces' else 0
  straps = int(rng.integers(1, 3)) if closure == 'straps' else 0
  stripes = int(rng.integers(1, 4)) if rng.random() < 0.45 else 0
  upper = _colour(rng)
  accent = _colour(rng)
  while np.abs(np.subtract(accent, upper)).sum() < 90:  # an accent must show on the upper
    accent = _colour(rng)
  lace = (COLOURS['white'], COLOURS['black'], accent)[int(rng.integers(3))]
  return ShoeSpec(
    silhouette=silhouette,
    shaft=shaft,
    throat=float(rng.uniform(0.5, 0.66)),
    toe=_choice(rng, SHOE_TOES, (0.5, 0.25, 0.25)),
    toe_height=float(rng.uniform(0.1, 0.17)),
    heel=heel,
    heel_height=heel_height,
    sole=sole,
    tread=bool(rng.random() < 0.5),
    eyelets=eyelets,
    straps=straps,
    stripes=stripes,
    stripe_slant=float(rng.uniform(0.03, 0.14)),
    toe_cap=bool(rng.random() < 0.4),
    stitching=bool(rng.random() < 0.5),
    upper=upper,
    accent=accent,
    sole_colour=_colour(rng, _SOLE_COLOURS),
    lace_colour=tuple(float(v) for v in lace),
  )


def shoe_parts(s: ShoeSpec) -> list[Part]:
  """The shoe's parts in drawing order (heel, sole, upper, then details), normalised."""
  f, b = s.sole, s.sole + s.heel_height  # insole height under the forefoot / at the heel seat
  T = s.toe_height

  def insole(x):
    t = np.clip((np.asarray(x) - 0.2) / 0.42, 0.0, 1.0)
    return b + (f - b) * (0.5 - 0.5 * np.cos(np.pi * t))

  xs = np.linspace(0.02, 0.98, 33)
  grounded = s.heel in ('flat', 'wedge')
  spring = 0.02 * np.clip((xs - 0.82) / 0.16, 0.0, 1.0) ** 2  # the toe lifts off the ground
  bottom = spring if grounded else np.maximum(insole(xs) - f, spring)
  parts: list[Part] = []
  sole_colour = s.sole_colour
  if not grounded:
    top = b - f
    if s.heel == 'block':
      heel = [(0.03, top), (0.2, top), (0.17, 0.0), (0.05, 0.0)]
    else:
      heel = [(0.03, top), (0.16, top), (0.11, top * 0.4), (0.095, 0.0), (0.075, 0.0)]
    parts.append(Part(np.asarray(heel), _shaded(sole_colour, 0.85)))
  sole = np.concatenate(
    [
      np.stack([xs, insole(xs)], 1),
      [[1.0, (insole(0.98) + bottom[-1]) / 2]],
      np.stack([xs, bottom], 1)[::-1],
      [[0.0, (insole(0.02) + bottom[0]) / 2]],
    ]
  )
  parts.append(Part(sole, sole_colour))

  # Upper: the top edge from the toe back to the heel, then along the insole to the toe.
  collar = b + s.shaft
  xc, yt = s.throat - 0.18, f + T + 0.32 * (0.88 - s.throat) + 0.03
  yc = max(yt + 0.04, collar - 0.02)
  dip = 0.03 if s.silhouette in ('low', 'mid') else 0.0
  toe = {
    'round': [(0.985, f + 0.01), (1.0, f + 0.45 * T), (0.96, f + 0.9 * T)],
    'pointed': [(1.03, f + 0.02), (0.99, f + 0.4 * T), (0.94, f + 0.8 * T)],
    'square': [(1.0, f + 0.01), (1.0, f + 0.8 * T), (0.97, f + 0.98 * T)],
  }[s.toe]
  top_chain = [(0.88, f + T), (s.throat, yt), (xc, yc), ((xc + 0.05) / 2, min(yc, collar) - dip)]
  top_chain += [(0.05, collar)]
  back = [(0.0, collar - 0.05), (-0.02, (collar + b) / 2), (0.0, b + 0.02)]
  base = [(x, float(insole(x))) for x in np.linspace(0.02, 0.97, 12)]
  upper = _chaikin(np.asarray(toe + top_chain + back + base), 2)
  parts.append(Part(upper, s.upper))
  tx, ty = zip(*sorted(top_chain))

  def top_y(x):
    return np.interp(x, tx, ty)

  if s.stripes:
    for i in range(s.stripes):
      x0 = 0.22 + 0.075 * i
      lo = float(insole(x0)) + 0.035
      hi = max(min(float(top_y(x0 + s.stripe_slant)) - 0.035, lo + 0.32), lo + 0.04)
      quad = [
        (x0, lo),
        (x0 + 0.04, lo),
        (x0 + 0.04 + s.stripe_slant, hi),
        (x0 + s.stripe_slant, hi),
      ]
      parts.append(Part(np.asarray(quad), s.accent, 'stripes'))
  if s.toe_cap:
    cap = np.asarray([(0.79, f + 0.01), (0.8, f + 0.5 * T), (0.85, f + 0.85 * T), (0.91, f + T)])
    parts.append(Part(cap, _shaded(s.upper, 0.6), 'toe_cap', closed=False, width=0.01))
  if s.stitching:
    for x in np.arange(0.06, 0.9, 0.045):
      seg = np.asarray(
        [(x, float(insole(x)) + 0.018), (x + 0.025, float(insole(x + 0.025)) + 0.018)]
      )
      parts.append(Part(seg, _shaded(s.upper, 1.35), 'stitching', closed=False, width=0.006))
  if s.tread:
    for x, y in zip(xs[1:-1:2], bottom[1:-1:2]):
      tick = np.asarray([(x, y), (x, y + 0.6 * f)])
      parts.append(Part(tick, _shaded(sole_colour, 0.6), 'tread', closed=False, width=0.008))
  if s.eyelets:
    a = np.asarray([s.throat - 0.02, yt - 0.035])
    c = np.asarray([xc + 0.02, yc - 0.035])
    holes = [a + (c - a) * (i + 0.5) / s.eyelets for i in range(s.eyelets)]
    zig = []
    for i, h in enumerate(holes):
      zig.append(h)
      if i + 1 < len(holes):
        mid = (h + holes[i + 1]) / 2
        zig.append((mid[0], float(top_y(mid[0])) + 0.006))
    parts.append(Part(np.asarray(zig), s.lace_colour, 'laces', closed=False, width=0.012))
    for h in holes:
      parts.append(Part(_ellipse(h[0], h[1], 0.011, 0.011, 10), (40.0, 40.0, 44.0), 'laces'))
  for j in range(s.straps):
    x = s.throat - 0.04 - 0.09 * j
    lo = float(insole(x)) + 0.05
    quad = [(x - 0.03, float(top_y(x - 0.03)) + 0.01), (x + 0.03, float(top_y(x + 0.03)) + 0.01)]
    quad += [(x + 0.06, lo), (x, lo)]
    parts.append(Part(np.asarray(quad), s.accent, 'straps'))
    buckle = [(x + 0.005, lo + 0.005), (x + 0.05, lo + 0.005), (x + 0.05, lo + 0.04)]
    parts.append(
      Part(np.asarray(buckle + [(x + 0.005, lo + 0.04)]), (190.0, 188.0, 178.0), 'straps')
    )
  return _normalise(parts)


# --------------------------------------------------------------------------------------------
# Chairs (oblique view from the front right, above the seat)
# --------------------------------------------------------------------------------------------

CHAIR_LEGS = ('straight', 'tapered', 'splayed', 'pedestal', 'sled')
CHAIR_BACKS = ('solid', 'vertical_slats', 'horizontal_slats', 'frame')
CHAIR_ARMS = ('none', 'bar', 'panel')
_FRAME_COLOURS = ('brown', 'black', 'gray', 'white')
# Receding axis of the oblique projection: depth z moves a point up and to the right.
_DX, _DY = 0.45 * math.cos(math.radians(35.0)), 0.45 * math.sin(math.radians(35.0))
# Face shades of a box lit from above: top, front, right side.
_TOP, _FRONT, _SIDE = 1.12, 1.0, 0.78


@dataclasses.dataclass(frozen=True)
class ChairSpec:
  """One chair design, in units of about a seat width (x width, y up, z depth, 0 = front).

  seat_shape: 'square' or 'round'; legs: one of CHAIR_LEGS; stretchers: bars between four legs;
  back: one of CHAIR_BACKS with ``slats`` slats, back_top 'flat' or 'arched', back_tilt the top's
  lean back; arms: one of CHAIR_ARMS at arm_height above the seat; cushion: a cushion on the seat;
  tufting: buttons on a solid back; casters: wheels under a pedestal base.
  """

  width: float
  depth: float
  seat_height: float
  seat_thickness: float
  seat_shape: str
  legs: str
  leg_width: float
  stretchers: bool
  back: str
  back_height: float
  slats: int
  back_top: str
  back_tilt: float
  arms: str
  arm_height: float
  cushion: bool
  tufting: bool
  casters: bool
  frame: RGB
  seat: RGB
  back_colour: RGB


def sample_chair(rng: np.random.Generator) -> ChairSpec:
  """A random chair design (see ``ChairSpec``)."""
  legs = _choice(rng, CHAIR_LEGS, (0.35, 0.2, 0.15, 0.15, 0.15))
  back = _choice(rng, CHAIR_BACKS, (0.35, 0.25, 0.2, 0.2))
  frame = _colour(rng, _FRAME_COLOURS)
  seat = _colour(rng) if rng.random() < 0.6 else frame
  return ChairSpec(
    width=float(rng.uniform(0.75, 1.0)),
    depth=float(rng.uniform(0.6, 0.85)),
    seat_height=float(rng.uniform(0.42, 0.58)),
    seat_thickness=float(rng.uniform(0.04, 0.1)),
    seat_shape=_choice(rng, ('square', 'round'), (0.7, 0.3)),
    legs=legs,
    leg_width=float(rng.uniform(0.04, 0.075)),
    stretchers=bool(legs in ('straight', 'tapered', 'splayed') and rng.random() < 0.45),
    back=back,
    back_height=float(rng.uniform(0.35, 0.75)),
    slats=int(rng.integers(2, 6) if back == 'vertical_slats' else rng.integers(2, 5)),
    back_top=_choice(rng, ('flat', 'arched'), (0.6, 0.4)),
    back_tilt=float(rng.uniform(0.0, 0.12)),
    arms=_choice(rng, CHAIR_ARMS, (0.5, 0.3, 0.2)),
    arm_height=float(rng.uniform(0.18, 0.28)),
    cushion=bool(rng.random() < 0.4),
    tufting=bool(back == 'solid' and rng.random() < 0.35),
    casters=bool(legs == 'pedestal' and rng.random() < 0.6),
    frame=frame,
    seat=seat,
    back_colour=seat if rng.random() < 0.7 else _colour(rng),
  )


def _proj(points3d) -> np.ndarray:
  p = np.asarray(points3d, np.float64).reshape(-1, 3)
  return np.stack([p[:, 0] + p[:, 2] * _DX, p[:, 1] + p[:, 2] * _DY], axis=1)


def _box(x0, x1, y0, y1, z0, z1, colour: RGB, detail: str = '') -> list[Part]:
  """The three visible faces of an axis-aligned box: right side, front, top."""
  faces = (
    ([(x1, y0, z0), (x1, y0, z1), (x1, y1, z1), (x1, y1, z0)], _SIDE),
    ([(x0, y0, z0), (x1, y0, z0), (x1, y1, z0), (x0, y1, z0)], _FRONT),
    ([(x0, y1, z0), (x1, y1, z0), (x1, y1, z1), (x0, y1, z1)], _TOP),
  )
  return [Part(_proj(f), _shaded(colour, shade), detail) for f, shade in faces]


def _solid(corners3d, colour: RGB, detail: str = '') -> Part:
  """A thin convex solid (a leg, a post) as the outline of its projection."""
  return Part(_hull(_proj(corners3d)), _shaded(colour, 0.92), detail)


def _leg(c: ChairSpec, x: float, z: float, top: float, out: tuple[float, float]) -> Part:
  """A leg whose top square starts at (x, z); ``out`` moves its foot (splayed legs)."""
  w = c.leg_width
  foot = 0.5 * w if c.legs == 'tapered' else w
  fx, fz = x + (w - foot) / 2 + out[0], z + (w - foot) / 2 + out[1]
  corners = [(x + a, top, z + d) for a in (0, w) for d in (0, w)]
  corners += [(fx + a, 0.0, fz + d) for a in (0, foot) for d in (0, foot)]
  return _solid(corners, c.frame)


def _seat(c: ChairSpec, y: float, inset: float, thickness: float, colour: RGB, detail: str):
  """A seat slab (or cushion) whose top is at y: box faces, or for a round seat the swept band of
  its rounded outline and the top."""
  x0, x1, z0, z1 = inset, c.width - inset, inset, c.depth - inset
  if c.seat_shape == 'square':
    return _box(x0, x1, y - thickness, y, z0, z1, colour, detail)
  t = np.linspace(0.0, 2.0 * np.pi, 36, endpoint=False)
  cos, sin = np.cos(t), np.sin(t)
  ex, ez = np.sign(cos) * np.abs(cos) ** 0.6, np.sign(sin) * np.abs(sin) ** 0.6
  rim = np.stack(
    [(x0 + x1) / 2 + (x1 - x0) / 2 * ex, np.full_like(t, y), (z0 + z1) / 2 + (z1 - z0) / 2 * ez], 1
  )
  top = _proj(rim)
  band = _hull(np.concatenate([top, top - [0.0, thickness]]))
  return [Part(band, _shaded(colour, _SIDE), detail), Part(top, _shaded(colour, _TOP), detail)]


def chair_parts(c: ChairSpec) -> list[Part]:
  """The chair's parts in drawing order (far to near), normalised."""
  W, D, H, t, lw = c.width, c.depth, c.seat_height, c.seat_thickness, c.leg_width
  under = H - t
  parts: list[Part] = []
  four = c.legs in ('straight', 'tapered', 'splayed')
  spread = 0.06 if c.legs == 'splayed' else 0.0
  if four:  # rear legs
    parts.append(_leg(c, 0.0, D - lw, under, (-spread, spread)))
    parts.append(_leg(c, W - lw, D - lw, under, (spread, spread)))
  if c.stretchers:
    y0, y1 = 0.14, 0.17
    parts += _box(lw, W - lw, y0, y1, D - lw * 0.7, D - lw * 0.3, c.frame, 'stretchers')
    for x in (lw * 0.3, W - lw * 0.7):
      parts += _box(x, x + lw * 0.4, y0, y1, lw, D - lw, c.frame, 'stretchers')
    parts += _box(lw, W - lw, y0, y1, lw * 0.3, lw * 0.7, c.frame, 'stretchers')
  if c.legs == 'sled':
    for x in (0.0, W - lw):  # left runner first: it is farther
      parts += _box(x, x + lw, 0.0, under, D - lw, D, c.frame)
      parts += _box(x, x + lw, 0.0, lw * 0.8, 0.0, D, c.frame)
  if c.legs == 'pedestal':
    cx, cz, reach = W / 2, D / 2, 0.55 * min(W, D)
    angles = math.radians(18.0) + 2.0 * np.pi * np.arange(5) / 5
    arms = sorted(angles, key=lambda a: -math.sin(a))  # far (large z) first
    column = _box(cx - 0.04, cx + 0.04, 0.08, under, cz - 0.04, cz + 0.04, c.frame)
    placed = False
    for a in arms:
      if not placed and math.sin(a) < 0:
        parts += column
        placed = True
      tip = (cx + reach * math.cos(a), 0.05, cz + reach * math.sin(a))
      side = np.asarray([-math.sin(a), 0.0, math.cos(a)]) * 0.025
      quad = [np.add((cx, 0.1, cz), side), np.add(tip, side), np.subtract(tip, side)]
      quad.append(np.subtract((cx, 0.1, cz), side))
      parts.append(Part(_proj(quad), _shaded(c.frame, 0.9)))
      if c.casters:
        wheel = _proj([tip])[0] - [0.0, 0.03]
        parts.append(
          Part(_ellipse(wheel[0], wheel[1], 0.032, 0.032, 12), (35.0, 35.0, 38.0), 'casters')
        )
    if not placed:
      parts += column

  # Back, on the plane z = D - lw (leaning back by back_tilt at its top).
  bh, zb = c.back_height, D - lw

  def plane(x, y):
    return (x, y, zb + c.back_tilt * (y - H) / bh)

  arch = 0.08 if c.back_top == 'arched' else 0.0
  us = np.linspace(0.0, 1.0, 13)
  top_edge = [(W * u, H + bh + arch * math.sin(math.pi * u)) for u in us]
  if c.back == 'solid':
    face = [plane(0.0, H), plane(W, H)] + [plane(x, y) for x, y in top_edge[::-1]]
    thick = [(x, y, z + 0.05) for x, y, z in face]
    parts.append(Part(_proj(thick), _shaded(c.back_colour, 0.7)))
    parts.append(Part(_proj(face), c.back_colour))
    if c.tufting:
      for i in range(3):
        for j in range(2):
          x, y = W * (0.25 + 0.25 * i), H + bh * (0.4 + 0.3 * j)
          px, py = _proj([plane(x, y)])[0]
          parts.append(
            Part(_ellipse(px, py, 0.014, 0.014, 8), _shaded(c.back_colour, 0.55), 'tufting')
          )
  else:
    rail = 0.07
    for x0 in (0.0, W - lw):  # posts
      corners = [plane(x0 + a, y) for a in (0, lw) for y in (H, H + bh)]
      parts.append(_solid([(x, y, z + d) for x, y, z in corners for d in (0, lw)], c.frame))
    inner = (lw, W - lw)
    if c.back == 'vertical_slats':
      for i in range(c.slats):
        x = inner[0] + (inner[1] - inner[0]) * (i + 0.5) / c.slats - 0.018
        quad = [plane(x, H + 0.04), plane(x + 0.036, H + 0.04), plane(x + 0.036, H + bh - rail)]
        parts.append(Part(_proj(quad + [plane(x, H + bh - rail)]), c.back_colour, 'slats'))
    else:
      n = c.slats if c.back == 'horizontal_slats' else 1
      for i in range(n):
        y = H + 0.06 + (bh - rail - 0.1) * (i + 0.5) / n
        quad = [plane(inner[0], y), plane(inner[1], y), plane(inner[1], y + 0.045)]
        parts.append(Part(_proj(quad + [plane(inner[0], y + 0.045)]), c.back_colour, 'slats'))
    top_rail = [plane(x, y) for x, y in top_edge] + [plane(x, y - rail) for x, y in top_edge[::-1]]
    parts.append(Part(_proj(top_rail), c.frame))

  parts += _seat(c, H, 0.0, t, c.seat, '')
  if c.cushion:
    parts += _seat(c, H + 0.05, 0.04, 0.05, _shaded(c.seat, 1.15), 'cushion')
  if four:  # front legs
    parts.append(_leg(c, 0.0, 0.0, under, (-spread, -spread)))
    parts.append(_leg(c, W - lw, 0.0, under, (spread, -spread)))
  if c.legs == 'sled':
    for x in (0.0, W - lw):
      parts += _box(x, x + lw, 0.0, under, 0.0, lw, c.frame)
  ah = c.arm_height
  for x in (0.0, W - 0.05):  # the left arm is farther from the viewer
    if c.arms == 'bar':
      parts += _box(x, x + 0.05, H, H + ah, 0.04, 0.09, c.frame)
      parts += _box(x - 0.01, x + 0.06, H + ah, H + ah + 0.035, 0.02, D - lw, c.frame)
    elif c.arms == 'panel':
      parts += _box(x, x + 0.05, under, H + ah, 0.02, D - lw, c.seat)
  return _normalise(parts)


# --------------------------------------------------------------------------------------------
# Drawing
# --------------------------------------------------------------------------------------------


def _to_pixels(points: np.ndarray, matrix: np.ndarray, offset: np.ndarray, w: int, h: int):
  """Item frame (unit square, y up) -> pixels: ``matrix @ (p - 0.5) + 0.5 + offset``, y down."""
  p = (np.asarray(points) - 0.5) @ matrix.T + 0.5 + offset
  return np.stack([p[:, 0] * w, (1.0 - p[:, 1]) * h], axis=1)


def _rotation(angle: float, scale: float) -> np.ndarray:
  c, s = math.cos(angle), math.sin(angle)
  return scale * np.asarray([[c, -s], [s, c]])


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
  """(h, w, 3) float background: flat, gradient, stripes, checks or blotches in seeded colours."""
  c1 = rng.uniform(110.0, 250.0, 3)
  c2 = np.clip(c1 + rng.normal(0.0, 45.0, 3), 0.0, 255.0)
  kind = int(rng.integers(5))
  x = (np.arange(w, dtype=np.float32) / w)[None, :]
  y = (np.arange(h, dtype=np.float32) / h)[:, None]
  angle = rng.uniform(0.0, np.pi)
  along = x * math.cos(angle) + y * math.sin(angle)
  if kind == 0:
    mix = np.zeros((h, w), np.float32)
  elif kind == 1:
    mix = along - along.min()
    mix = mix / max(float(mix.max()), 1e-6)
  elif kind == 2:
    mix = 0.5 + 0.5 * np.sin(2.0 * np.pi * rng.uniform(4.0, 14.0) * along)
  elif kind == 3:
    n = rng.uniform(5.0, 12.0)
    mix = ((np.floor(x * n) + np.floor(y * n)) % 2) * 0.6
  else:
    cells = rng.random((int(rng.integers(3, 8)), int(rng.integers(3, 8))))
    small = Image.fromarray((cells * 255).astype(np.uint8), 'L')
    mix = np.asarray(small.resize((w, h), Image.BILINEAR), np.float32) / 255.0
  return (c1[None, None] * (1.0 - mix[..., None]) + c2[None, None] * mix[..., None]).astype(
    np.float32
  )


def render_object_photo(
  parts: Sequence[Part], rng: np.random.Generator, *, size: tuple[int, int], supersample: int = 2
) -> Image.Image:
  """An RGB photo (``size`` = (H, W)) of the parts: filled, lit, edged, shadowed, on a background.

  All randomness (framing, light, background, noise, blur) comes from ``rng``.
  """
  if len(parts) > 254:
    raise ValueError(f'render_object_photo: {len(parts)} parts; at most 254 fit the label image.')
  h_out, w_out = size
  ss = int(supersample)
  w, h = w_out * ss, h_out * ss
  scale = rng.uniform(0.72, 0.88)
  matrix = _rotation(rng.normal(0.0, math.radians(2.0)), scale)
  offset = rng.uniform(-0.04, 0.04, 2)
  background = _background(rng, h, w)
  label = Image.new('L', (w, h), 0)
  draw = ImageDraw.Draw(label)
  palette = np.zeros((len(parts) + 1, 3), np.float32)
  lowest, xs = [], []
  for i, part in enumerate(parts, start=1):
    pts = _to_pixels(part.points, matrix, offset, w, h)
    palette[i] = part.colour
    xy = [tuple(p) for p in pts.tolist()]
    if part.closed:
      draw.polygon(xy, fill=i)
    else:
      draw.line(xy, fill=i, width=max(1, int(round(part.width * scale * h))), joint='curve')
    lowest.append(pts[:, 1].max())
    xs.append(pts[:, 0])
  lab = np.asarray(label)
  obj = lab > 0
  # A soft shadow on the ground under the item.
  x_all = np.concatenate(xs)
  cx, cy = (x_all.min() + x_all.max()) / 2, max(lowest)
  rx, ry = (x_all.max() - x_all.min()) * 0.55, h * 0.04
  gx = np.arange(w, dtype=np.float32)[None, :]
  gy = np.arange(h, dtype=np.float32)[:, None]
  shadow = np.exp(-(((gx - cx) / rx) ** 2) - ((gy - cy) / ry) ** 2)
  background *= (1.0 - rng.uniform(0.2, 0.45) * shadow)[..., None]
  # One light per photo: a brightness ramp across the item, darker edges between parts.
  light = rng.uniform(0.0, 2.0 * np.pi)
  ramp = ((gx / w - 0.5) * math.cos(light) + (gy / h - 0.5) * math.sin(light)) * rng.uniform(
    0.3, 0.6
  )
  shade = (1.0 + ramp) * rng.uniform(0.92, 1.08)
  edge = np.zeros_like(obj)
  edge[1:] |= lab[1:] != lab[:-1]
  edge[:, 1:] |= lab[:, 1:] != lab[:, :-1]
  shade = np.where(edge & obj, shade * 0.68, shade)
  img = np.where(obj[..., None], palette[lab] * shade[..., None], background)
  img = img.reshape(h_out, ss, w_out, ss, 3).mean(axis=(1, 3))
  img = img * rng.uniform(0.94, 1.06, 3) + rng.normal(0.0, 2.5, img.shape)
  out = Image.fromarray(np.clip(img + 0.5, 0, 255).astype(np.uint8), 'RGB')
  radius = rng.uniform(0.0, 0.7)
  if radius > 0.05:
    out = out.filter(ImageFilter.GaussianBlur(radius))
  return out


def render_object_sketch(
  parts: Sequence[Part],
  sketcher: Sketcher,
  rng: np.random.Generator,
  *,
  size: tuple[int, int],
  omitted: frozenset[str] = frozenset(),
  supersample: int = 2,
) -> Image.Image:
  """An RGB line drawing (black on white) of the parts by ``sketcher``, without ``omitted``.

  Every part consumes the same draws from ``rng`` whether it is drawn or not, so a sketch with
  fewer details differs from the full one only by the missing lines.
  """
  h_out, w_out = size
  ss = int(supersample)
  w, h = w_out * ss, h_out * ss
  px = h_out / 256.0 * ss  # sketcher lengths are for a 256-pixel image
  distortion = np.eye(2) + rng.normal(0.0, sketcher.distortion, (2, 2))
  matrix = distortion * rng.uniform(0.76, 0.88)
  offset = rng.normal(0.0, 0.02, 2)
  img = Image.new('L', (w, h), 255)
  draw = ImageDraw.Draw(img)
  pen = max(1, int(round(sketcher.stroke_width * px)))
  for part in parts:
    pts = _to_pixels(part.points, matrix, offset, w, h)
    strokes = [
      _jittered(pts, part.closed, sketcher.segment * px, sketcher.jitter * px, rng)
      for _ in range(2)
    ]
    keeps = [rng.random(len(s) - 1) >= sketcher.gap_prob for s in strokes]
    passes = 2 if rng.random() < sketcher.double_stroke_prob else 1
    if part.detail in omitted:
      continue
    if part.closed and not part.detail:  # the form hides what it covers; details never do
      draw.polygon([tuple(p) for p in pts.tolist()], fill=255)
    for line, keep in list(zip(strokes, keeps))[:passes]:
      # Runs of kept segments [a, b) become one polyline each (broken strokes).
      edges = np.diff(np.concatenate([[0], keep.astype(np.int8), [0]]))
      xy = line.tolist()
      for a, b in zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)):
        draw.line([tuple(p) for p in xy[a : b + 1]], fill=0, width=pen, joint='curve')
  if ss > 1:
    img = img.reduce(ss)
  return img.convert('RGB')


# --------------------------------------------------------------------------------------------
# Items, sketch plan, writing
# --------------------------------------------------------------------------------------------

_CHAIR_WORDS = ('chair', 'chair_set', 'seat', 'chair_model', 'item')


def _stem(category: str, rng: np.random.Generator) -> str:
  if category == 'shoe':
    return str(int(rng.integers(1_000_000_000, 10_000_000_000)))
  word = _CHAIR_WORDS[int(rng.integers(len(_CHAIR_WORDS)))]
  stem = f'{word}_{int(rng.integers(16**4)):04x}'
  return stem + f'_{int(rng.integers(1, 10))}' if rng.random() < 0.25 else stem


def qmul_items(
  category: str, seed: int, num_train: int, num_test: int
) -> tuple[list[tuple[int, str]], list[tuple[int, str]]]:
  """(item, stem) of the train and the test photos (see the module docstring for the walk)."""
  rng = _stream(seed, CATEGORIES[category], _ITEMS)
  train: list[tuple[int, str]] = []
  test: list[tuple[int, str]] = []
  seen: set[str] = set()
  item = 0
  while len(train) < num_train or len(test) < num_test:
    to_train = rng.random() < 0.5
    stem = _stem(category, rng)
    while stem.casefold() in seen:
      stem = _stem(category, rng)
    seen.add(stem.casefold())
    (train if to_train else test).append((item, stem))
    item += 1
  return train[:num_train], test[:num_test]


def sketch_plan(
  category: str,
  seed: int,
  items: Sequence[int],
  *,
  sketches_per_photo: int = 3,
  num_sketches: int | None = None,
) -> dict[int, list[int]]:
  """item -> its sketchers (sorted k, 1-based): ``sketches_per_photo`` each, or ``num_sketches``
  spread as evenly as possible (floor of the mean each, +1 for a seeded choice of items)."""
  tag = CATEGORIES[category]
  n = len(items)
  if num_sketches is None:
    counts = np.full(n, sketches_per_photo)
  else:
    base, extra = divmod(num_sketches, n)
    counts = np.full(n, base)
    counts[_stream(seed, tag, _PLAN).permutation(n)[:extra]] += 1
  if n and (counts.min() < 1 or counts.max() > len(SKETCHERS)):
    raise ValueError(
      f'{n} photos with {int(counts.sum())} sketches need {counts.min()}..{counts.max()} '
      f'sketches a photo; each photo takes 1..{len(SKETCHERS)} (one per sketcher). Change '
      f'num_sketches or sketches_per_photo.'
    )
  plan = {}
  for item, count in zip(items, counts.tolist()):
    order = _stream(seed, tag, _SKETCHER_SET, item).permutation(len(SKETCHERS))
    plan[int(item)] = sorted(int(k) + 1 for k in order[:count])
  return plan


@dataclasses.dataclass(frozen=True)
class _ObjectJob:
  relpath: str
  kind: str  # 'photo' | 'sketch'
  item: int
  spec: Any
  k: int = 0  # the sketcher (sketches)


@dataclasses.dataclass(frozen=True)
class _ObjectConfig:
  seed: int
  category: str
  size: tuple[int, int]


def _render_object_job(job: _ObjectJob, cfg: _ObjectConfig) -> bytes:
  """PNG bytes of one planned image (deterministic in the job's own stream)."""
  tag = CATEGORIES[cfg.category]
  parts = shoe_parts(job.spec) if cfg.category == 'shoe' else chair_parts(job.spec)
  if job.kind == 'photo':
    img = render_object_photo(parts, _stream(cfg.seed, tag, _PHOTO, job.item), size=cfg.size)
  else:
    rng = _stream(cfg.seed, tag, _SKETCH, job.item, job.k)
    sketcher = SKETCHERS[job.k - 1]
    omitted = draw_omissions(sketcher, DETAILS[cfg.category], rng)  # first: sketch_omissions
    img = render_object_sketch(parts, sketcher, rng, size=cfg.size, omitted=omitted)
  buf = io.BytesIO()
  img.save(buf, format='PNG')
  return buf.getvalue()


def _generate(
  layout: str,
  category: str,
  root,
  *,
  num_train_photos: int,
  num_test_photos: int,
  sketches_per_photo: int,
  num_sketches: int | None,
  seed: int,
  size: Sequence[int],
  overwrite: bool,
  progress: bool,
) -> dict[str, Any]:
  start = time.perf_counter()
  root = Path(root)
  seed = _check_int('seed', seed, 0)
  num_train_photos = _check_int('num_train_photos', num_train_photos, 1)
  num_test_photos = _check_int('num_test_photos', num_test_photos, 1)
  sketches_per_photo = _check_int('sketches_per_photo', sketches_per_photo, 1, len(SKETCHERS))
  total = num_train_photos + num_test_photos
  if num_sketches is not None:
    num_sketches = _check_int('num_sketches', num_sketches, total, total * len(SKETCHERS))
  size = _check_size('size', size)
  params = _jsonable(
    {
      'num_train_photos': num_train_photos,
      'num_test_photos': num_test_photos,
      'sketches_per_photo': sketches_per_photo,
      'num_sketches': num_sketches,
      'seed': seed,
      'size': size,
      'sketchers': [dataclasses.asdict(s) for s in SKETCHERS],
      'format': FORMAT,
    }
  )
  stored = _prepare_root(root, layout, params, overwrite)
  if stored is not None:
    return _summary(root, stored, generated=False, start=start)

  tag = CATEGORIES[category]
  train, test = qmul_items(category, seed, num_train_photos, num_test_photos)
  sample = sample_shoe if category == 'shoe' else sample_chair
  items = sorted(i for i, _ in train + test)
  plan = sketch_plan(
    category, seed, items, sketches_per_photo=sketches_per_photo, num_sketches=num_sketches
  )
  jobs: list[_ObjectJob] = []
  counts: dict[str, int] = {}
  for split, members in (('train', train), ('test', test)):
    photo_dir, sketch_dir = FOLDERS[(split, 'photo')], FOLDERS[(split, 'sketch')]
    counts[photo_dir], counts[sketch_dir] = len(members), 0
    for item, stem in members:
      spec = sample(_stream(seed, tag, _SPEC, item))
      jobs.append(_ObjectJob(f'{photo_dir}/{stem}.png', 'photo', item, spec))
      for k in plan[item]:
        jobs.append(_ObjectJob(f'{sketch_dir}/{stem}_{k}.png', 'sketch', item, spec, k))
        counts[sketch_dir] += 1
  counts = {k: counts[k] for k in ('trainA', 'trainB', 'testA', 'testB')}
  cfg = _ObjectConfig(seed, category, size)
  return _run(
    root,
    layout,
    params,
    jobs,
    {},
    counts,
    cfg,
    progress=progress,
    start=start,
    render=_render_object_job,
  )


def generate_qmul_shoev2(
  root,
  *,
  num_train_photos: int = 1800,
  num_test_photos: int = 200,
  num_sketches: int | None = 6648,
  sketches_per_photo: int = 3,
  seed: int = 0,
  size: Sequence[int] = (256, 256),
  overwrite: bool = False,
  progress: bool = False,
) -> dict[str, Any]:
  """Write a synthetic QMUL-ShoeV2 under ``root``; return a summary dict.

  Defaults are the real archive's counts: 1,800 train and 200 test photos, 6,648 sketches
  (``num_sketches``; None = ``sketches_per_photo`` for every photo), 256x256 RGB PNG (``size`` is
  (height, width)). Returns ``{'layout', 'root', 'generated', 'counts', 'params', 'seconds'}``;
  ``generated`` is False when ``root`` already held this exact output. ``progress`` shows a tqdm
  bar. Folder rules as ``synthetic.generate_market_sketch``.
  """
  return _generate(
    'qmul_shoev2',
    'shoe',
    root,
    num_train_photos=num_train_photos,
    num_test_photos=num_test_photos,
    sketches_per_photo=sketches_per_photo,
    num_sketches=num_sketches,
    seed=seed,
    size=size,
    overwrite=overwrite,
    progress=progress,
  )


def generate_qmul_chairv2(
  root,
  *,
  num_train_photos: int = 300,
  num_test_photos: int = 100,
  num_sketches: int | None = 1275,
  sketches_per_photo: int = 3,
  seed: int = 0,
  size: Sequence[int] = (256, 256),
  overwrite: bool = False,
  progress: bool = False,
) -> dict[str, Any]:
  """Write a synthetic QMUL-ChairV2 under ``root``; return a summary dict.

  Defaults are the real counts: 300 train and 100 test photos, 1,275 sketches; otherwise as
  ``generate_qmul_shoev2``.
  """
  return _generate(
    'qmul_chairv2',
    'chair',
    root,
    num_train_photos=num_train_photos,
    num_test_photos=num_test_photos,
    sketches_per_photo=sketches_per_photo,
    num_sketches=num_sketches,
    seed=seed,
    size=size,
    overwrite=overwrite,
    progress=progress,
  )
