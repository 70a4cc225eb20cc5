"""Drawing synthetic people: one identity -> camera photos and artist sketches (docs/design.md §5).

This module is the "how a person looks" half of the synthetic dataset; ``synthetic.py`` decides
which people exist and where their files go. Everything is PIL + numpy, driven by a caller-supplied
``numpy.random.Generator`` so every image is reproducible from its own stream.

Model of a person
  * ``Identity.attributes`` holds the 27 Market-1501 attribute codes (1 = no, 2 = yes; age
    1..4), exactly as they go into ``market_attribute.mat``. ``Identity.details`` holds what the
    attributes do not say — body proportions, upper-body print, shoe/bag/hat colours, which hip
    the bag sits on, which shoulder carries the backpack strap, skin and hair tone, and the exact
    shade of the two named garment colours. Details are stored independently of the attributes
    (shades are offsets from the named colour), so two identities can share all 27 attributes
    and still differ.
  * The body is a set of flat polygons (``Shape``) in a unit frame: y = 0 at the top of the head,
    y = 1 at the soles, x = 0 on the body axis, +x = the person's left in a front view. Photos fill
    the polygons with colour; sketches outline and shade the same polygons, so a photo and a sketch
    of one identity agree on every detail the artist chose to draw.

Interpretations chosen (the brief leaves them open)
  * Views: ``front`` / ``back`` / ``side``. A back view mirrors x (the person's left moves to image
    left). Logos and dots are prints on the front only; stripes and checks go all round. The
    backpack is a box on the back; from the front only its strap(s) show; from the side it bulges
    behind the torso.
  * Age group changes drawn height and head ratio (children small with big heads); the old
    age group stoops (head lowered, shoulders rounded forward in a side view) and greys its hair.
  * Camera model: per camera a fixed RGB gain ("colour cast"), a brightness and a background
    scene colour; per photo clutter (muted rectangles and lines), pose, view, scale, shift,
    illumination, pixel noise and blur. JPEG quality is drawn by the caller from the same stream.
  * Sketches are always frontal and near-neutral in pose (artists draw a standing figure). A style
    (``SketchStyle``) sets stroke width, jitter, shading (flat grey or hatching), detail level,
    per-detail omission probabilities, proportion distortion and the chance to draw a side-bound
    accessory on the wrong side — the "subjectivity" of CMDSL/DALNet.
  * Sketch greys come from garment luminance (Rec. 601 weights) scaled by the style's shading.
  * Proportions that carry identity live in ``BodyPlan`` and ``IdentityDetails``; the small
    constants inside ``person_shapes`` (neck width, strap offsets, hem heights, logo size…) are
    the fixed design of the drawn figure, not tunable hyper-parameters.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

# --------------------------------------------------------------------------------------------
# Attribute vocabulary (Market-1501 attribute annotation, Lin et al.)
# --------------------------------------------------------------------------------------------

UP_COLOUR_NAMES: tuple[str, ...] = (
  'black',
  'blue',
  'green',
  'gray',
  'purple',
  'red',
  'white',
  'yellow',
)
DOWN_COLOUR_NAMES: tuple[str, ...] = (
  'black',
  'blue',
  'brown',
  'gray',
  'green',
  'pink',
  'purple',
  'white',
  'yellow',
)

# Field order of the real market_attribute.mat structs (image_index is appended by the writer).
from sketchreid_jax.datasets.attributes import MARKET_ATTRIBUTE_NAMES  # noqa: E402

NUM_AGE_GROUPS = 4  # young, teen, adult, old

# Named colours (sRGB 0..255). Garment shades add a per-identity offset to these.
COLOURS: Mapping[str, tuple[float, float, float]] = {
  'black': (32.0, 32.0, 36.0),
  'blue': (40.0, 70.0, 160.0),
  'brown': (115.0, 78.0, 46.0),
  'gray': (128.0, 128.0, 130.0),
  'green': (50.0, 130.0, 62.0),
  'pink': (228.0, 145.0, 175.0),
  'purple': (112.0, 52.0, 142.0),
  'red': (182.0, 36.0, 42.0),
  'white': (232.0, 232.0, 226.0),
  'yellow': (222.0, 202.0, 54.0),
}
PATTERNS: tuple[str, ...] = ('none', 'stripes', 'dots', 'logo', 'check')
LOGO_SHAPES: tuple[str, ...] = ('circle', 'triangle', 'square', 'diamond', 'star')
SIDES: tuple[str, ...] = ('left', 'right')
STRAP_SIDES: tuple[str, ...] = ('left', 'right', 'both')
VIEWS: tuple[str, ...] = ('front', 'back', 'side')


# --------------------------------------------------------------------------------------------
# Identity
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class IdentityDetails:
  """Fine identity details the 27 attributes do not encode (all sampled per identity).

  height, shoulder, leg, head: multipliers (≈1) of the body plan's stature, shoulder width,
    leg length and head radius.
  pattern: one of ``PATTERNS`` printed on the upper garment; pattern_colour a ``COLOURS`` name;
    pattern_scale multiplies stripe/dot/check spacing; logo_shape one of ``LOGO_SHAPES``.
  shoe_colour, bag_colour, backpack_colour, hat_colour: ``COLOURS`` names.
  bag_side, handbag_side: 'left'/'right' (the person's side); strap_side: 'left'/'right'/'both'.
  skin, hair_colour: RGB; up_shade, down_shade: RGB offsets added to the named garment colours.
  """

  height: float
  shoulder: float
  leg: float
  head: float
  pattern: str
  pattern_colour: str
  pattern_scale: float
  logo_shape: str
  shoe_colour: str
  bag_colour: str
  backpack_colour: str
  hat_colour: str
  bag_side: str
  handbag_side: str
  strap_side: str
  skin: tuple[float, float, float]
  hair_colour: tuple[float, float, float]
  up_shade: tuple[float, float, float]
  down_shade: tuple[float, float, float]

  def __post_init__(self) -> None:
    _check_choice('IdentityDetails.pattern', self.pattern, PATTERNS)
    _check_choice('IdentityDetails.logo_shape', self.logo_shape, LOGO_SHAPES)
    for name in ('pattern_colour', 'shoe_colour', 'bag_colour', 'backpack_colour', 'hat_colour'):
      _check_choice(f'IdentityDetails.{name}', getattr(self, name), tuple(COLOURS))
    _check_choice('IdentityDetails.bag_side', self.bag_side, SIDES)
    _check_choice('IdentityDetails.handbag_side', self.handbag_side, SIDES)
    _check_choice('IdentityDetails.strap_side', self.strap_side, STRAP_SIDES)


@dataclasses.dataclass(frozen=True)
class Identity:
  """A synthetic person: ``pid``, the 27 attribute codes and the fine details."""

  pid: int
  attributes: Mapping[str, int]
  details: IdentityDetails

  def __post_init__(self) -> None:
    validate_attributes(self.attributes, where=f'Identity(pid={self.pid}).attributes')

  def has(self, name: str) -> bool:
    """True when binary attribute ``name`` is coded 2 (yes / the second option)."""
    return self.attributes[name] == 2

  @property
  def up_colour(self) -> str:
    return next(c for c in UP_COLOUR_NAMES if self.attributes['up' + c] == 2)

  @property
  def down_colour(self) -> str:
    return next(c for c in DOWN_COLOUR_NAMES if self.attributes['down' + c] == 2)


def validate_attributes(attributes: Mapping[str, int], *, where: str = 'attributes') -> None:
  """Raise ValueError unless ``attributes`` is a valid Market attribute coding."""
  missing = [n for n in MARKET_ATTRIBUTE_NAMES if n not in attributes]
  extra = [n for n in attributes if n not in MARKET_ATTRIBUTE_NAMES]
  if missing or extra:
    raise ValueError(
      f'{where}: expected exactly the 27 MARKET_ATTRIBUTE_NAMES; '
      f'missing {missing}, unexpected {extra}.'
    )
  for name in MARKET_ATTRIBUTE_NAMES:
    hi = NUM_AGE_GROUPS if name == 'age' else 2
    if not 1 <= int(attributes[name]) <= hi:
      raise ValueError(
        f'{where}[{name!r}] = {attributes[name]}; must be in 1..{hi} '
        '(binary fields: 1 = no, 2 = yes).'
      )
  for prefix, names in (('up', UP_COLOUR_NAMES), ('down', DOWN_COLOUR_NAMES)):
    on = [c for c in names if attributes[prefix + c] == 2]
    if len(on) != 1:
      raise ValueError(f'{where}: exactly one {prefix}-colour must be 2, got {on}.')


def _check_choice(where: str, value: str, choices: Sequence[str]) -> None:
  if value not in choices:
    raise ValueError(f'{where} = {value!r}; choose one of {tuple(choices)}.')


# --------------------------------------------------------------------------------------------
# Parameter tables
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class BodyPlan:
  """Proportions of the drawn body in the unit frame (stature 1 = head top to soles).

  Adult values follow the usual 7.5-heads figure; ``age_height``/``age_head`` scale stature and
  head radius per age group (young, teen, adult, old). Widths are half-widths.
  """

  head_radius: float = 0.066
  neck: float = 0.022
  leg_length: float = 0.47
  hip_drop: float = 0.05
  shoulder_half: float = 0.115
  waist_ratio: float = 0.78
  hip_half: float = 0.074
  female_shoulder: float = 0.9
  female_hip: float = 1.06
  upper_arm: float = 0.165
  forearm: float = 0.15
  arm_half_width: float = 0.022
  wrist_half_width: float = 0.016
  hand_radius: float = 0.018
  thigh_half_width: float = 0.034
  ankle_half_width: float = 0.02
  foot_height: float = 0.025
  shoe_half_length: float = 0.032
  side_lateral: float = 0.55
  age_height: tuple[float, float, float, float] = (0.72, 0.9, 1.0, 0.96)
  age_head: tuple[float, float, float, float] = (1.28, 1.08, 1.0, 1.0)
  old_head_drop: float = 0.02
  old_grey: float = 0.6


@dataclasses.dataclass(frozen=True)
class PhotoParams:
  """Camera-photo randomisation. Ranges are (low, high), uniform unless said otherwise.

  supersample: draw at this factor, then box-reduce (anti-aliasing).
  view_probs: probabilities of ('front', 'back', 'side').
  person_height: drawn stature as a fraction of the image height (before age/height factors).
  shift: max horizontal offset of the body axis as a fraction of the image width.
  baseline: feet position as a fraction of the image height.
  stride_deg, arm_swing_deg, elbow_deg: pose ranges (max absolute angle); arm_rest_deg: the
    minimum outward angle of a hanging arm in front/back views.
  clutter: number of background rectangles+lines; clutter_muting: how far clutter colours are
    pulled toward the camera's background colour (1 = invisible); clutter_rect_prob: share of
    rectangles (the rest are lines); clutter_width/height: rectangle size (image fraction).
  illumination: per-photo multiplicative light on the whole image.
  camera_gain, camera_brightness: ranges the fixed per-camera colour cast is drawn from;
  background_grey, background_tint: the camera's scene colour (grey level, tint std);
  horizon: height of the ground line (fraction of the image); ground_shade: ground darkening.
  noise_std: Gaussian pixel noise (0..255 scale); blur_radius: Gaussian blur radius (pixels).
  jpeg_quality: JPEG quality range drawn per photo (inclusive).
  """

  supersample: int = 2
  view_probs: tuple[float, float, float] = (0.4, 0.35, 0.25)
  person_height: tuple[float, float] = (0.8, 0.93)
  shift: float = 0.08
  baseline: tuple[float, float] = (0.94, 0.99)
  stride_deg: float = 18.0
  arm_swing_deg: float = 22.0
  arm_rest_deg: float = 3.0
  elbow_deg: float = 25.0
  clutter: tuple[int, int] = (3, 9)
  clutter_muting: float = 0.55
  clutter_rect_prob: float = 0.6
  clutter_width: tuple[float, float] = (0.1, 0.6)
  clutter_height: tuple[float, float] = (0.05, 0.5)
  illumination: tuple[float, float] = (0.88, 1.12)
  camera_gain: tuple[float, float] = (0.82, 1.18)
  camera_brightness: tuple[float, float] = (0.72, 1.15)
  background_grey: tuple[float, float] = (90.0, 190.0)
  background_tint: float = 12.0
  horizon: tuple[float, float] = (0.55, 0.75)
  ground_shade: float = 0.82
  noise_std: float = 3.0
  blur_radius: tuple[float, float] = (0.0, 0.8)
  jpeg_quality: tuple[int, int] = (72, 95)


@dataclasses.dataclass(frozen=True)
class SketchStyle:
  """One artist. Lengths are in output pixels of a 256×128 sketch (scaled for other sizes).

  stroke_width: outline width; jitter: std of the outline's control-point wobble;
  segment: spacing of jittered control points along an outline.
  shading: 0 = outline only, 1 = fill each region with its full luminance grey;
  hatching: shade with diagonal hatch lines instead of flat grey.
  detail_level: 0 = silhouette only, 1 = + garment edges/hair/shoes/accessories,
    2 = + face, prints and straps.
  omit_pattern/omit_shoes/omit_face/omit_hair/omit_accessory: probability that this sketch leaves
    out the print, the shoes, the face, the hair shape, each accessory (bag, backpack, handbag,
    hat, decided separately).
  proportion_noise: std of the log-normal distortion of height/shoulder/leg/head.
  side_swap_prob: chance to draw bag/handbag/strap on the wrong side (memory error).
  gap_prob: chance that a stroke segment is not drawn (broken lines).
  double_stroke_prob: chance that an outline is traced twice with fresh jitter.
  """

  stroke_width: float
  jitter: float
  segment: float
  shading: float
  hatching: bool
  detail_level: int
  omit_pattern: float
  omit_shoes: float
  omit_face: float
  omit_hair: float
  omit_accessory: float
  proportion_noise: float
  side_swap_prob: float
  gap_prob: float
  double_stroke_prob: float


# The six Market-Sketch-1K artists S1..S6 = A..F, from careful to sloppy. PKU's five styles use
# A..E of the same table.
SKETCH_STYLES: Mapping[str, SketchStyle] = {
  # A: careful and detailed — thin steady lines, soft shading, almost never omits anything.
  'A': SketchStyle(
    stroke_width=1.5,
    jitter=0.3,
    segment=6.0,
    shading=0.55,
    hatching=False,
    detail_level=2,
    omit_pattern=0.05,
    omit_shoes=0.05,
    omit_face=0.05,
    omit_hair=0.0,
    omit_accessory=0.02,
    proportion_noise=0.02,
    side_swap_prob=0.02,
    gap_prob=0.0,
    double_stroke_prob=0.0,
  ),
  # B: fine, light lines, little shading, detailed but drops prints now and then.
  'B': SketchStyle(
    stroke_width=1.0,
    jitter=0.5,
    segment=5.0,
    shading=0.2,
    hatching=False,
    detail_level=2,
    omit_pattern=0.2,
    omit_shoes=0.15,
    omit_face=0.1,
    omit_hair=0.05,
    omit_accessory=0.05,
    proportion_noise=0.04,
    side_swap_prob=0.05,
    gap_prob=0.02,
    double_stroke_prob=0.0,
  ),
  # C: heavy strokes with hatched shading, medium detail.
  'C': SketchStyle(
    stroke_width=2.5,
    jitter=0.6,
    segment=8.0,
    shading=0.8,
    hatching=True,
    detail_level=1,
    omit_pattern=0.3,
    omit_shoes=0.2,
    omit_face=0.5,
    omit_hair=0.05,
    omit_accessory=0.08,
    proportion_noise=0.05,
    side_swap_prob=0.08,
    gap_prob=0.0,
    double_stroke_prob=0.1,
  ),
  # D: sketchy re-traced lines, moderate shading, forgets details.
  'D': SketchStyle(
    stroke_width=1.5,
    jitter=1.0,
    segment=6.0,
    shading=0.4,
    hatching=False,
    detail_level=2,
    omit_pattern=0.35,
    omit_shoes=0.3,
    omit_face=0.3,
    omit_hair=0.1,
    omit_accessory=0.1,
    proportion_noise=0.07,
    side_swap_prob=0.12,
    gap_prob=0.05,
    double_stroke_prob=0.5,
  ),
  # E: minimal contour drawing, no shading, broken lines.
  'E': SketchStyle(
    stroke_width=1.0,
    jitter=0.8,
    segment=7.0,
    shading=0.0,
    hatching=False,
    detail_level=1,
    omit_pattern=0.5,
    omit_shoes=0.4,
    omit_face=0.6,
    omit_hair=0.15,
    omit_accessory=0.15,
    proportion_noise=0.08,
    side_swap_prob=0.15,
    gap_prob=0.12,
    double_stroke_prob=0.0,
  ),
  # F: sloppy and sparse — thick wobbly strokes, distorted proportions, most details dropped.
  'F': SketchStyle(
    stroke_width=2.0,
    jitter=1.5,
    segment=10.0,
    shading=0.1,
    hatching=False,
    detail_level=1,
    omit_pattern=0.7,
    omit_shoes=0.6,
    omit_face=0.8,
    omit_hair=0.3,
    omit_accessory=0.25,
    proportion_noise=0.12,
    side_swap_prob=0.25,
    gap_prob=0.2,
    double_stroke_prob=0.2,
  ),
}


@dataclasses.dataclass(frozen=True)
class SketchParams:
  """Sketch canvas settings shared by all styles.

  supersample: draw at this factor, then box-reduce. person_height: drawn stature as a
  fraction of the canvas height; baseline: feet position. stride_deg/arm_deg: the near-neutral
  standing pose. reference_height: canvas height the style table's pixel sizes refer to.
  jpeg_quality: sketch JPEG quality.
  """

  supersample: int = 2
  person_height: float = 0.9
  baseline: float = 0.96
  stride_deg: float = 4.0
  arm_deg: float = 8.0
  reference_height: int = 256
  jpeg_quality: int = 92


@dataclasses.dataclass(frozen=True)
class Camera:
  """Fixed per-camera appearance: RGB gain (colour cast), brightness, background scene colour."""

  gain: tuple[float, float, float]
  brightness: float
  background: tuple[float, float, float]


def sample_camera(rng: np.random.Generator, params: PhotoParams = PhotoParams()) -> Camera:
  """Draw one camera's fixed colour cast, brightness and background colour."""
  gain = tuple(float(g) for g in rng.uniform(*params.camera_gain, size=3))
  brightness = float(rng.uniform(*params.camera_brightness))
  # Muted scene colours: a grey with a mild tint, as in outdoor campus footage.
  grey = rng.uniform(*params.background_grey)
  tint = rng.normal(0.0, params.background_tint, size=3)
  background = tuple(float(v) for v in np.clip(grey + tint, 0.0, 255.0))
  return Camera(gain=gain, brightness=brightness, background=background)


# --------------------------------------------------------------------------------------------
# Geometry
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Pose:
  """view in VIEWS; mirror flips the image horizontally (side view facing left);
  angles in radians: stride = leg splay, arm_* = swing of each arm away from the body axis
  (front: outward, side: forward), elbow_* = extra forearm bend."""

  view: str = 'front'
  mirror: bool = False
  stride: float = 0.0
  arm_left: float = 0.1
  arm_right: float = 0.1
  elbow_left: float = 0.1
  elbow_right: float = 0.1


@dataclasses.dataclass(frozen=True)
class Shape:
  """A drawable region (closed polygon) or stroke (open polyline of ``width``) in the unit frame.

  part: what it depicts — used for sketch omission (see ``_OMIT_GROUP``);
  level: sketch detail level needed to draw it (0 silhouette, 1 garment/accessory, 2 fine).
  """

  part: str
  points: np.ndarray
  colour: tuple[float, float, float]
  level: int
  closed: bool = True
  width: float = 0.0


def _ellipse(
  cx: float,
  cy: float,
  rx: float,
  ry: float,
  n: int = 20,
  a0: float = 0.0,
  a1: float = 2.0 * math.pi,
) -> np.ndarray:
  t = np.linspace(a0, a1, n, endpoint=(a1 - a0) < 2.0 * math.pi - 1e-9)
  return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], axis=1)


def _rect(x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
  return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=np.float64)


def _limb(points: Sequence[np.ndarray], half_widths: Sequence[float]) -> np.ndarray:
  """Outline of a thick polyline (joint normals averaged so the outline stays connected)."""
  pts = np.asarray(points, dtype=np.float64)
  seg = np.diff(pts, axis=0)
  seg /= np.maximum(np.linalg.norm(seg, axis=1, keepdims=True), 1e-9)
  normals = np.stack([-seg[:, 1], seg[:, 0]], axis=1)
  joint_n = np.concatenate([normals[:1], (normals[:-1] + normals[1:]) / 2.0, normals[-1:]])
  joint_n /= np.maximum(np.linalg.norm(joint_n, axis=1, keepdims=True), 1e-9)
  w = np.asarray(half_widths, dtype=np.float64)[:, None]
  return np.concatenate([pts + joint_n * w, (pts - joint_n * w)[::-1]])


def _chain(
  start: np.ndarray, lengths: Sequence[float], angles: Sequence[float]
) -> list[np.ndarray]:
  """Joint positions of a limb hanging from ``start``; angle 0 = straight down, + = toward +x."""
  pts = [np.asarray(start, dtype=np.float64)]
  for length, angle in zip(lengths, angles):
    pts.append(pts[-1] + length * np.array([math.sin(angle), math.cos(angle)]))
  return pts


def _partial_limb(
  joints: Sequence[np.ndarray], half_widths: Sequence[float], fraction: float, widen: float
) -> np.ndarray:
  """Outline of the first ``fraction`` (0..1 of total length) of a two-segment limb."""
  a, b, c = (np.asarray(j) for j in joints)
  l1, l2 = np.linalg.norm(b - a), np.linalg.norm(c - b)
  target = fraction * (l1 + l2)
  if target <= l1:
    t = target / max(l1, 1e-9)
    end = a + t * (b - a)
    w_end = half_widths[0] + t * (half_widths[1] - half_widths[0])
    return _limb([a, end], [half_widths[0] * widen, w_end * widen])
  t = (target - l1) / max(l2, 1e-9)
  end = b + t * (c - b)
  w_end = half_widths[1] + t * (half_widths[2] - half_widths[1])
  return _limb([a, b, end], [w * widen for w in (half_widths[0], half_widths[1], w_end)])


def clip_convex(subject: np.ndarray, clip: np.ndarray) -> np.ndarray:
  """Sutherland–Hodgman: the part of polygon ``subject`` inside convex polygon ``clip``."""
  cx, cy = clip[:, 0].tolist(), clip[:, 1].tolist()
  area2 = sum(cx[i] * cy[i - 1] - cx[i - 1] * cy[i] for i in range(len(cx)))
  orient = -1.0 if area2 > 0 else 1.0  # the sum above runs edges backwards
  out = [tuple(p) for p in subject.tolist()]
  for i in range(len(cx)):
    ax, ay = cx[i], cy[i]
    ex, ey = cx[(i + 1) % len(cx)] - ax, cy[(i + 1) % len(cy)] - ay
    inp, out = out, []
    if not inp:
      break
    side = [orient * (ex * (py - ay) - ey * (px - ax)) for px, py in inp]
    for j in range(len(inp)):
      k = (j + 1) % len(inp)
      if side[k] >= 0:
        if side[j] < 0:
          t = side[j] / (side[j] - side[k])
          out.append(
            (inp[j][0] + t * (inp[k][0] - inp[j][0]), inp[j][1] + t * (inp[k][1] - inp[j][1]))
          )
        out.append(inp[k])
      elif side[j] >= 0:
        t = side[j] / (side[j] - side[k])
        out.append(
          (inp[j][0] + t * (inp[k][0] - inp[j][0]), inp[j][1] + t * (inp[k][1] - inp[j][1]))
        )
  return np.array(out, dtype=np.float64).reshape(-1, 2)


def _logo(shape: str, cx: float, cy: float, r: float) -> np.ndarray:
  if shape == 'circle':
    return _ellipse(cx, cy, r, r, n=16)
  if shape == 'square':
    return _rect(cx - r * 0.85, cy - r * 0.85, cx + r * 0.85, cy + r * 0.85)
  if shape == 'diamond':
    return np.array([[cx, cy - r], [cx + r, cy], [cx, cy + r], [cx - r, cy]])
  if shape == 'triangle':
    return np.array([[cx, cy - r], [cx + r, cy + r * 0.8], [cx - r, cy + r * 0.8]])
  t = np.arange(10) * math.pi / 5.0 - math.pi / 2.0  # star: alternate outer/inner radius
  rad = np.where(np.arange(10) % 2 == 0, r, r * 0.45)
  return np.stack([cx + rad * np.cos(t), cy + rad * np.sin(t)], axis=1)


def _shade(base: str, offset: Sequence[float]) -> tuple[float, float, float]:
  return tuple(float(v) for v in np.clip(np.asarray(COLOURS[base]) + np.asarray(offset), 0, 255))


def _contrast_colour(name: str, against: str) -> tuple[float, float, float]:
  """The print colour, replaced by black/white when it equals the garment colour."""
  if name != against:
    return COLOURS[name]
  return COLOURS['black'] if luminance(COLOURS[name]) > 128 else COLOURS['white']


def luminance(rgb: Sequence[float]) -> float:
  """Rec. 601 luma of an RGB triple (0..255)."""
  return 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]


def person_shapes(
  identity: Identity, pose: Pose, body: BodyPlan = BodyPlan(), *, swap_sides: bool = False
) -> tuple[list[Shape], float]:
  """Polygons of ``identity`` in ``pose``, in painter's order, and the stature factor.

  The unit frame has the head top at y = 0 and the soles at y = 1; the returned stature factor
  (age group × individual height) tells the caller how tall to draw the figure.
  ``swap_sides`` moves bag, handbag and a one-sided backpack strap to the other side.
  """
  _check_choice('Pose.view', pose.view, VIEWS)
  a, d = identity.attributes, identity.details
  age = int(a['age']) - 1
  female = identity.has('gender')
  side_view = pose.view == 'side'
  lat = body.side_lateral if side_view else 1.0

  def sgn(side: str) -> float:
    s = 1.0 if side == 'left' else -1.0
    return -s if swap_sides else s

  skin = tuple(float(v) for v in d.skin)
  hair = np.asarray(d.hair_colour, dtype=np.float64)
  if age == NUM_AGE_GROUPS - 1:  # old: greying hair
    hair = hair + body.old_grey * (np.asarray(COLOURS['gray']) + 40.0 - hair)
  hair_c = tuple(float(v) for v in np.clip(hair, 0, 255))
  up_c = _shade(identity.up_colour, d.up_shade)
  down_c = _shade(identity.down_colour, d.down_shade)

  # Vertical landmarks.
  r = body.head_radius * d.head * body.age_head[age]
  head_y = r + (body.old_head_drop if age == NUM_AGE_GROUPS - 1 else 0.0)
  sh_y = 2.0 * r + body.neck
  leg_len = body.leg_length * d.leg
  hip_y = 1.0 - leg_len
  waist_y = hip_y - body.hip_drop
  torso_len = waist_y - sh_y
  sw = body.shoulder_half * d.shoulder * (body.female_shoulder if female else 1.0)
  ww = sw * body.waist_ratio
  hw = body.hip_half * (body.female_hip if female else 1.0)
  stoop = 0.03 if (side_view and age == NUM_AGE_GROUPS - 1) else 0.0

  torso = np.array(
    [
      [-0.035, sh_y - 0.004],
      [0.035, sh_y - 0.004],
      [sw, sh_y + 0.022],
      [ww, waist_y + 0.02],
      [-ww, waist_y + 0.02],
      [-sw, sh_y + 0.022],
    ]
  )
  torso[:, 0] *= lat
  torso[:2, 0] += stoop
  hips = np.array([[-ww, waist_y], [ww, waist_y], [hw, hip_y + 0.03], [-hw, hip_y + 0.03]])
  hips[:, 0] *= lat

  # Limbs. Front/back: arms swing outward, legs splay; side: both swing along x in opposition.
  def arm(side: str) -> tuple[list[np.ndarray], list[float]]:
    s = 1.0 if side == 'left' else -1.0
    swing = pose.arm_left if side == 'left' else pose.arm_right
    bend = pose.elbow_left if side == 'left' else pose.elbow_right
    if side_view:
      start = np.array([stoop, sh_y + 0.03])
      ang = [s * swing, s * swing + bend]
    else:
      start = np.array([s * (sw - 0.016), sh_y + 0.028])
      ang = [s * swing, s * (swing - bend * 0.5)]
    return _chain(start, [body.upper_arm, body.forearm], ang), [
      body.arm_half_width,
      (body.arm_half_width + body.wrist_half_width) / 2.0,
      body.wrist_half_width,
    ]

  def leg(side: str) -> tuple[list[np.ndarray], list[float]]:
    s = 1.0 if side == 'left' else -1.0
    x0 = s * (0.01 if side_view else hw * 0.52)
    length = (1.0 - body.foot_height - hip_y) / 2.0
    spread = s * pose.stride * (1.0 if side_view else 0.5)
    # Side view: the forward leg's knee bends a little more than the trailing leg.
    knee_bend = 0.15 * abs(pose.stride) if side_view and spread > 0 else 0.0
    joints = _chain(np.array([x0, hip_y]), [length, length], [spread + knee_bend, spread])
    return joints, [
      body.thigh_half_width,
      (body.thigh_half_width + body.ankle_half_width) / 2,
      body.ankle_half_width,
    ]

  shapes: list[Shape] = []
  add = shapes.append

  def leg_shapes(side: str) -> None:
    joints, widths = leg(side)
    pants = identity.has('clothes')
    long_lower = not identity.has('down')
    if pants and long_lower:
      add(Shape('leg', _limb(joints, widths), down_c, 0))
    else:
      add(Shape('leg', _limb(joints, widths), skin, 0))
      if pants:  # shorts
        add(Shape('lower', _partial_limb(joints, widths, 0.45, 1.15), down_c, 1))
    ankle = joints[-1]
    fwd = 1.0 if side_view else 0.0
    shoe = _ellipse(
      ankle[0] + fwd * body.shoe_half_length * 0.6,
      ankle[1] + body.foot_height * 0.5,
      body.shoe_half_length * (1.4 if side_view else 1.0),
      body.foot_height * 0.75,
      n=14,
    )
    add(Shape('shoes', shoe, COLOURS[d.shoe_colour], 1))

  def lower_garment() -> None:
    if identity.has('clothes'):  # pants/shorts: a hip block joins the legs
      add(Shape('lower', hips, down_c, 1))
    else:  # dress/skirt, knee (short) or near-ankle (long) hem
      hem_y = hip_y + (0.45 if identity.has('down') else 0.86) * leg_len
      hem_w = hw * (1.9 if identity.has('down') else 2.2) * lat
      skirt = np.array(
        [[-ww * lat * 1.02, waist_y], [ww * lat * 1.02, waist_y], [hem_w, hem_y], [-hem_w, hem_y]]
      )
      add(Shape('lower', skirt, down_c, 1))

  def arm_shapes(side: str, with_handbag: bool = True) -> None:
    joints, widths = arm(side)
    long_sleeve = not identity.has('up')
    add(Shape('arm', _limb(joints, widths), up_c if long_sleeve else skin, 0))
    if not long_sleeve:
      add(Shape('upper', _partial_limb(joints, widths, 0.3, 1.2), up_c, 1))
    hand = joints[-1]
    add(
      Shape(
        'hand',
        _ellipse(
          hand[0], hand[1] + body.hand_radius * 0.5, body.hand_radius, body.hand_radius * 1.2, n=12
        ),
        skin,
        1,
      )
    )
    if (
      with_handbag
      and identity.has('handbag')
      and sgn(d.handbag_side) == (1.0 if side == 'left' else -1.0)
    ):
      hx, hy = hand[0], hand[1] + body.hand_radius * 1.5
      handle = np.array([[hx - 0.018, hy + 0.012], [hx, hy - 0.006], [hx + 0.018, hy + 0.012]])
      add(Shape('handbag', handle, COLOURS[d.bag_colour], 1, closed=False, width=0.006))
      add(
        Shape(
          'handbag', _rect(hx - 0.032, hy + 0.012, hx + 0.032, hy + 0.062), COLOURS[d.bag_colour], 1
        )
      )

  def pattern_shapes(view: str) -> None:
    if d.pattern == 'none' or (view != 'front' and d.pattern in ('dots', 'logo')):
      return
    colour = _contrast_colour(d.pattern_colour, identity.up_colour)
    x0, x1 = float(torso[:, 0].min()) - 0.01, float(torso[:, 0].max()) + 0.01
    top, bot = sh_y + 0.03, waist_y + 0.02
    step = 0.04 * d.pattern_scale
    if d.pattern in ('stripes', 'check'):
      y = top
      while y < bot:
        band = clip_convex(_rect(x0, y, x1, y + step * 0.45), torso)
        if len(band) >= 3:
          add(Shape('pattern', band, colour, 2))
        y += step
    if d.pattern == 'check':
      x = x0 + step * 0.3
      while x < x1:
        band = clip_convex(_rect(x, top, x + step * 0.35, bot), torso)
        if len(band) >= 3:
          add(Shape('pattern', band, colour, 2))
        x += step
    if d.pattern == 'dots':
      rad = 0.009 * d.pattern_scale
      for row, y in enumerate(np.arange(top + step * 0.5, bot, step)):
        for x in np.arange(x0 + step * (0.5 + 0.5 * (row % 2)), x1, step):
          dot = _ellipse(float(x), float(y), rad, rad, n=10)
          if len(clip_convex(dot, torso)) == len(dot):  # only whole dots
            add(Shape('pattern', dot, colour, 2))
    if d.pattern == 'logo':
      cx = float(np.mean(torso[:, 0]))
      add(
        Shape(
          'pattern',
          _logo(d.logo_shape, cx, sh_y + 0.38 * torso_len, 0.045 * d.pattern_scale),
          colour,
          2,
        )
      )

  def backpack_front() -> None:
    if not identity.has('backpack'):
      return
    sides = ('left', 'right') if d.strap_side == 'both' else (d.strap_side,)
    for side in sides:
      s = sgn(side)
      strap = _limb(
        [
          np.array([s * (sw - 0.045), sh_y + 0.004]),
          np.array([s * (ww - 0.03), sh_y + 0.6 * torso_len]),
        ],
        [0.011, 0.011],
      )
      add(Shape('backpack', strap, COLOURS[d.backpack_colour], 2))

  def backpack_back() -> None:
    if identity.has('backpack'):
      add(
        Shape(
          'backpack',
          _rect(-0.085, sh_y + 0.03, 0.085, sh_y + 0.03 + 0.72 * torso_len),
          COLOURS[d.backpack_colour],
          1,
        )
      )

  def bag_shapes(view: str) -> None:
    if not identity.has('bag'):
      return
    s = sgn(d.bag_side)
    colour = COLOURS[d.bag_colour]
    bx = s * (hw + 0.045) * lat if not side_view else 0.02
    by = hip_y - 0.01
    strap = np.array([[-s * (sw - 0.03) * lat, sh_y + 0.01], [bx, by - 0.04]])
    add(Shape('bag', strap, colour, 1, closed=False, width=0.008))
    add(Shape('bag', _rect(bx - 0.05, by - 0.04, bx + 0.05, by + 0.04), colour, 1))

  def head_shapes(view: str) -> None:
    long_hair = identity.has('hair')
    hx = stoop * 1.5
    head = _ellipse(hx, head_y, r * 0.84, r, n=22)
    if view == 'front' and long_hair:  # hair falling behind the shoulders
      add(
        Shape(
          'hair',
          np.array(
            [
              [hx - r * 1.05, head_y],
              [hx + r * 1.05, head_y],
              [hx + r * 1.15, sh_y + 0.09],
              [hx - r * 1.15, sh_y + 0.09],
            ]
          ),
          hair_c,
          1,
        )
      )
    add(Shape('neck', _rect(hx - r * 0.35, head_y + r * 0.7, hx + r * 0.35, sh_y + 0.01), skin, 0))
    add(Shape('head', head, hair_c if view == 'back' else skin, 0))
    if view == 'front':
      cap = _ellipse(hx, head_y, r * 0.9, r * 1.06, n=14, a0=math.pi, a1=2.0 * math.pi)
      cap = np.concatenate(
        [cap, [[hx + r * 0.88, head_y - r * 0.15], [hx - r * 0.88, head_y - r * 0.15]]]
      )
      add(Shape('hair', cap, hair_c, 1))
      for ex in (-0.32, 0.32):
        add(
          Shape(
            'face',
            _ellipse(hx + ex * r, head_y + 0.05 * r, 0.09 * r, 0.07 * r, n=8),
            COLOURS['black'],
            2,
          )
        )
      add(
        Shape(
          'face',
          np.array([[hx - 0.2 * r, head_y + 0.5 * r], [hx + 0.2 * r, head_y + 0.5 * r]]),
          (120.0, 60.0, 60.0),
          2,
          closed=False,
          width=0.004,
        )
      )
    elif view == 'back' and long_hair:
      add(
        Shape(
          'hair',
          np.array(
            [
              [hx - r * 0.9, head_y],
              [hx + r * 0.9, head_y],
              [hx + r * 1.1, sh_y + 0.1],
              [hx - r * 1.1, sh_y + 0.1],
            ]
          ),
          hair_c,
          1,
        )
      )
    elif view == 'side':
      back = _ellipse(hx, head_y, r * 0.86, r * 1.04, n=14, a0=0.5 * math.pi, a1=1.6 * math.pi)
      back = np.concatenate([back, [[hx + r * 0.2, head_y - r]]])
      add(Shape('hair', back, hair_c, 1))
      if long_hair:
        add(
          Shape(
            'hair',
            np.array(
              [
                [hx - r * 0.85, head_y],
                [hx - r * 0.1, head_y],
                [hx - r * 0.3, sh_y + 0.1],
                [hx - r * 1.0, sh_y + 0.1],
              ]
            ),
            hair_c,
            1,
          )
        )
      add(
        Shape('face', _ellipse(hx + 0.5 * r, head_y, 0.08 * r, 0.07 * r, n=8), COLOURS['black'], 2)
      )
    if identity.has('hat'):
      colour = COLOURS[d.hat_colour]
      add(
        Shape(
          'hat',
          _ellipse(hx, head_y - 0.25 * r, r * 0.9, r * 0.85, n=14, a0=math.pi, a1=2.0 * math.pi),
          colour,
          1,
        )
      )
      add(
        Shape(
          'hat', _rect(hx - r * 1.2, head_y - 0.3 * r, hx + r * 1.2, head_y - 0.15 * r), colour, 1
        )
      )

  near, far = ('left', 'right')
  if pose.view == 'front':
    for side in ('left', 'right'):
      leg_shapes(side)
    lower_garment()
    add(Shape('upper', torso, up_c, 0))
    pattern_shapes('front')
    backpack_front()
    for side in ('left', 'right'):
      arm_shapes(side)
    bag_shapes('front')
    head_shapes('front')
  elif pose.view == 'back':
    for side in ('left', 'right'):
      leg_shapes(side)
    lower_garment()
    add(Shape('upper', torso, up_c, 0))
    pattern_shapes('back')
    for side in ('left', 'right'):
      arm_shapes(side)
    bag_shapes('back')
    backpack_back()
    head_shapes('back')
  else:  # side: far arm and leg first, the backpack bulges behind (-x)
    arm_shapes(far)
    leg_shapes(far)
    leg_shapes(near)
    lower_garment()
    if identity.has('backpack'):
      add(
        Shape(
          'backpack',
          _rect(
            torso[:, 0].min() - 0.075,
            sh_y + 0.03,
            torso[:, 0].min() + 0.01,
            sh_y + 0.03 + 0.7 * torso_len,
          ),
          COLOURS[d.backpack_colour],
          1,
        )
      )
    add(Shape('upper', torso, up_c, 0))
    pattern_shapes('side')
    bag_shapes('side')
    arm_shapes(near)
    head_shapes('side')

  if pose.view == 'back' or pose.mirror:
    shapes = [dataclasses.replace(s, points=s.points * np.array([-1.0, 1.0])) for s in shapes]
  stature = body.age_height[age] * d.height
  return shapes, stature


# --------------------------------------------------------------------------------------------
# Photos
# --------------------------------------------------------------------------------------------


def _to_pixels(points: np.ndarray, cx: float, baseline: float, height_px: float) -> list[tuple]:
  xy = np.empty_like(points)
  xy[:, 0] = cx + points[:, 0] * height_px
  xy[:, 1] = baseline - (1.0 - points[:, 1]) * height_px
  return [tuple(p) for p in xy.tolist()]


def sample_photo_pose(
  rng: np.random.Generator, params: PhotoParams = PhotoParams(), view: str | None = None
) -> Pose:
  """A random walking/standing pose; ``view`` fixes the facing instead of sampling it."""
  if view is None:
    view = VIEWS[
      int(rng.choice(len(VIEWS), p=np.asarray(params.view_probs) / np.sum(params.view_probs)))
    ]
  _check_choice('view', view, VIEWS)
  rad = math.radians
  stride = rng.uniform(-rad(params.stride_deg), rad(params.stride_deg))
  swing = rng.uniform(-rad(params.arm_swing_deg), rad(params.arm_swing_deg))
  if view == 'side':  # arms swing opposite to the legs
    arm_l, arm_r = -swing, swing
  else:
    # Facing the camera the arms hang slightly outward (never through the torso).
    other = rng.uniform(0.0, rad(params.arm_swing_deg))
    arm_l = abs(swing) * 0.5 + rad(params.arm_rest_deg)
    arm_r = other * 0.5 + rad(params.arm_rest_deg)
  # A side view faces left or right with equal chance.
  return Pose(
    view=view,
    mirror=bool(view == 'side' and rng.random() < 0.5),
    stride=stride,
    arm_left=arm_l,
    arm_right=arm_r,
    elbow_left=rng.uniform(0.0, rad(params.elbow_deg)),
    elbow_right=rng.uniform(0.0, rad(params.elbow_deg)),
  )


def render_photo(
  identity: Identity,
  camera: Camera,
  rng: np.random.Generator,
  *,
  size: tuple[int, int] = (128, 64),
  params: PhotoParams = PhotoParams(),
  body: BodyPlan = BodyPlan(),
  view: str | None = None,
) -> Image.Image:
  """An RGB camera photo (``size`` = (H, W)) of ``identity`` seen by ``camera``.

  All randomness (pose, view unless given, clutter, framing, light, noise, blur) comes from
  ``rng``; the same generator state gives the same image.
  """
  h_out, w_out = _check_size('render_photo(size=...)', size)
  ss = int(params.supersample)
  w, h = w_out * ss, h_out * ss
  bg = np.asarray(camera.background)
  img = Image.new('RGB', (w, h), tuple(int(v) for v in bg))
  draw = ImageDraw.Draw(img)

  # Ground: a darker band under the horizon so the feet stand on something.
  horizon = h * rng.uniform(*params.horizon)
  draw.rectangle([0, horizon, w, h], fill=tuple(int(v) for v in bg * params.ground_shade))
  lo, hi = params.clutter
  for _ in range(int(rng.integers(lo, hi + 1))):
    colour = bg * params.clutter_muting + rng.uniform(0, 255, 3) * (1 - params.clutter_muting)
    fill = tuple(int(v) for v in colour)
    x0, y0 = rng.uniform(-0.2 * w, w), rng.uniform(-0.2 * h, h)
    if rng.random() < params.clutter_rect_prob:
      draw.rectangle(
        [
          x0,
          y0,
          x0 + rng.uniform(*params.clutter_width) * w,
          y0 + rng.uniform(*params.clutter_height) * h,
        ],
        fill=fill,
      )
    else:
      draw.line(
        [x0, y0, x0 + rng.uniform(-1, 1) * w, y0 + rng.uniform(-1, 1) * h],
        fill=fill,
        width=int(rng.integers(1, 3 * ss + 1)),
      )

  pose = sample_photo_pose(rng, params, view)
  shapes, stature = person_shapes(identity, pose, body)
  height_px = h * rng.uniform(*params.person_height) * stature
  cx = w * (0.5 + rng.uniform(-params.shift, params.shift))
  baseline = h * rng.uniform(*params.baseline)
  for s in shapes:
    pts = _to_pixels(s.points, cx, baseline, height_px)
    fill = tuple(int(v) for v in s.colour)
    if s.closed:
      draw.polygon(pts, fill=fill)
    else:
      draw.line(pts, fill=fill, width=max(1, int(round(s.width * height_px))))

  if ss > 1:
    img = img.reduce(ss)
  arr = np.asarray(img, dtype=np.float32)
  light = rng.uniform(*params.illumination) * camera.brightness
  arr = arr * (np.asarray(camera.gain, dtype=np.float32) * light)
  arr = arr + rng.normal(0.0, params.noise_std, arr.shape).astype(np.float32)
  img = Image.fromarray(np.clip(arr + 0.5, 0, 255).astype(np.uint8), 'RGB')
  radius = rng.uniform(*params.blur_radius)
  if radius > 0.05:  # PIL's blur at tiny radii is a no-op costing time
    img = img.filter(ImageFilter.GaussianBlur(radius))
  return img


# --------------------------------------------------------------------------------------------
# Sketches
# --------------------------------------------------------------------------------------------

# Which omission probability of a SketchStyle applies to a Shape.part (others are never omitted).
_OMIT_GROUP: Mapping[str, str] = {
  'pattern': 'omit_pattern',
  'shoes': 'omit_shoes',
  'face': 'omit_face',
  'hair': 'omit_hair',
  'bag': 'omit_accessory',
  'backpack': 'omit_accessory',
  'handbag': 'omit_accessory',
  'hat': 'omit_accessory',
}

_HATCH_CACHE: dict[tuple[int, int, int, int], Image.Image] = {}


def _hatch_texture(size: tuple[int, int], grey: int, spacing: int, width: int) -> Image.Image:
  """A white canvas with diagonal lines; darker regions get denser lines (cached)."""
  key = (size[0], size[1], grey, spacing)
  tex = _HATCH_CACHE.get(key)
  if tex is None:
    tex = Image.new('L', size, 255)
    d = ImageDraw.Draw(tex)
    for x in range(-size[1], size[0], max(spacing, 2)):
      d.line([x, 0, x + size[1], size[1]], fill=grey, width=width)
    _HATCH_CACHE[key] = tex
  return tex


def _jittered(
  pts: np.ndarray, closed: bool, segment: float, jitter: float, rng: np.random.Generator
) -> np.ndarray:
  """Resample an outline every ``segment`` px and wobble the samples by N(0, jitter²)."""
  if closed:
    pts = np.concatenate([pts, pts[:1]])
  seg = np.diff(pts, axis=0)
  n = np.maximum(1, (np.linalg.norm(seg, axis=1) / max(segment, 1e-6)).astype(np.int64))
  edge = np.repeat(np.arange(len(seg)), n)
  t = (np.arange(int(n.sum())) - np.repeat(np.cumsum(n) - n, n) + 1) / np.repeat(n, n)
  res = np.concatenate([pts[:1], pts[edge] + t[:, None] * seg[edge]])
  if jitter > 0:
    res = res + rng.normal(0.0, jitter, res.shape)
    if closed:
      res[-1] = res[0]
  return res


def render_sketch(
  identity: Identity,
  style: SketchStyle,
  rng: np.random.Generator,
  *,
  size: tuple[int, int] = (256, 128),
  params: SketchParams = SketchParams(),
  body: BodyPlan = BodyPlan(),
) -> Image.Image:
  """A greyscale (mode 'L') line drawing of ``identity`` by an artist with ``style``."""
  h_out, w_out = _check_size('render_sketch(size=...)', size)
  ss = int(params.supersample)
  w, h = w_out * ss, h_out * ss
  px = h_out / params.reference_height  # style pixel sizes are for a 256-high output
  img = Image.new('L', (w, h), 255)
  draw = ImageDraw.Draw(img)

  # The artist's memory distorts proportions and may put a bag on the wrong side.
  k = np.exp(rng.normal(0.0, style.proportion_noise, 4))
  d = identity.details
  ident = dataclasses.replace(
    identity,
    details=dataclasses.replace(
      d, height=d.height * k[0], shoulder=d.shoulder * k[1], leg=d.leg * k[2], head=d.head * k[3]
    ),
  )
  swap = bool(rng.random() < style.side_swap_prob)
  rad = math.radians
  pose = Pose(
    view='front',
    stride=rng.uniform(-1, 1) * rad(params.stride_deg),
    arm_left=rad(params.arm_deg) * rng.uniform(0.5, 1.5),
    arm_right=rad(params.arm_deg) * rng.uniform(0.5, 1.5),
    elbow_left=rad(params.arm_deg),
    elbow_right=rad(params.arm_deg),
  )
  shapes, stature = person_shapes(ident, pose, body, swap_sides=swap)

  omitted: dict[str, bool] = {}
  for part in sorted(set(_OMIT_GROUP)):  # sorted: the draw order must not depend on set order
    omitted[part] = bool(rng.random() < getattr(style, _OMIT_GROUP[part]))
  height_px = h * params.person_height * stature
  baseline = h * params.baseline
  stroke = max(1, int(round(style.stroke_width * px * ss)))
  for s in shapes:
    if s.level > style.detail_level or omitted.get(s.part, False):
      continue
    pts = _to_pixels(s.points, w / 2.0, baseline, height_px)
    grey = int(round(255.0 - style.shading * (255.0 - luminance(s.colour))))
    if s.closed:
      if style.hatching and grey < 245:
        mask = Image.new('L', (w, h), 0)
        ImageDraw.Draw(mask).polygon(pts, fill=255)
        spacing = int(round((3 + 9 * grey / 255.0) * px * ss))
        draw.polygon(pts, fill=255)
        img.paste(_hatch_texture((w, h), 60, spacing, max(1, ss)), mask=mask)
      else:
        draw.polygon(pts, fill=grey)
    passes = 2 if rng.random() < style.double_stroke_prob else 1
    for _ in range(passes):
      line = _jittered(
        np.asarray(pts), s.closed, style.segment * px * ss, style.jitter * px * ss, rng
      )
      keep = rng.random(len(line) - 1) >= style.gap_prob
      width = stroke if s.closed else max(stroke, int(round(s.width * height_px)))
      # Runs of kept segments [start, end) become one polyline each (broken strokes).
      edges = np.diff(np.concatenate([[0], keep.astype(np.int8), [0]]))
      xy = line.tolist()
      for a, b in zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)):
        draw.line([tuple(p) for p in xy[a : b + 1]], fill=0, width=width, joint='curve')
  if ss > 1:
    img = img.reduce(ss)
  return img


def _check_size(where: str, size: Sequence[int]) -> tuple[int, int]:
  if len(size) != 2 or min(int(v) for v in size) < 8:
    raise ValueError(f'{where} = {tuple(size)}; give (height, width) with both ≥ 8 pixels.')
  return int(size[0]), int(size[1])
