"""Grad-CAM heatmaps at any stage of the trained re-id models (CMDSL Figs. 4–5, DALNet's maps).

Grad-CAM (Selvaraju et al., ICCV 2017): for a feature map A (h, w, C) of one image and a scalar
score y computed from it, α_c = mean_{h,w} ∂y/∂A_hwc and the map is ReLU(Σ_c α_c A_c). Here the
network is cut at the chosen stage into a *front* (image → that stage's map) and a *back* (map →
embedding), both built from the models' own stage methods (``stem``/``stages``/``head`` of
Baseline and CMDSL, the streams and shared stages of DALNet), and ``jax.grad`` differentiates the
back part with respect to the map. No Flax intermediates are captured.

Interpretations chosen:

* **Stage names** are the ResNet-50 parts: ``'stem'``, ``'layer1'`` … ``'layer4'``; the map of a
  stage is that stage's output as the next stage sees it. For CMDSL this is the output of the
  stage's FFAM when the stage has one, so the **default for CMDSL is the last stage with an FFAM**
  (the FFAM attention of CMDSL Figs. 4–5; ``layer4`` with the default ``ffam_stages``); the default
  for every other model is ``layer4``. DALNet's ``stem`` … ``layer{num_private_stages}`` are the
  query modality's own stream, the later stages are shared.
* **Target score** (``target``): the models embed for retrieval, so there is no class score.
    - ``None``: the L2 norm of the image's embedding (how strongly the image activates the
      embedding; it needs no reference).
    - an array (D,) or (N, D): the cosine similarity of each image's embedding to its reference
      embedding, e.g. the matching photo's embedding (:func:`embed`) for a sketch query; this
      shows what makes the query look like that photo to the model.
    - a callable ``(N, D) float32 embeddings -> (N,) scores`` for anything else.
  The embedding is ``feature`` of the model's eval output: ``'feat'`` (the pre-BN GeM feature, the
  default test feature, ``config.eval.feature``) or ``'bn_feat'``.
* The network runs in eval mode (BatchNorm running statistics), so images are independent and one
  gradient of the summed scores gives every image's own gradient.
* The map is upsampled to the input resolution bilinearly, then divided by its per-image maximum,
  so values lie in [0, 1], 1 at the strongest evidence and 0 where there is none; an image whose
  map is zero everywhere (no positive evidence) stays all zero instead of being stretched.
* Images are the pipeline's ImageNet-normalised RGB (NHWC float); :func:`display_rgb` undoes the
  normalisation for display.
* How a model is cut is its method's knowledge: ``Method.stage_split`` (``methods/<name>.py``),
  found from the model's class (``methods.method_of_model``; subclasses inherit it).
"""

import functools
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from sketchreid_jax import methods
from sketchreid_jax.methods import StageSplit
from sketchreid_jax.models.resnet import STAGE_NAMES
from sketchreid_jax.models.u2net import IMAGENET_MEAN, IMAGENET_STD

Array = jax.Array

__all__ = [
  'StageSplit',
  'cam_from_gradients',
  'default_stage',
  'display_rgb',
  'embed',
  'gradcam',
  'overlay_figure',
  'valid_stages',
]

ALL_STAGES: tuple[str, ...] = ('stem', *STAGE_NAMES)
FEATURES: tuple[str, ...] = ('feat', 'bn_feat')


def _split_for(model: nn.Module) -> StageSplit:
  method = methods.method_of_model(model)
  if method.stage_split is None:
    raise TypeError(
      f'gradcam: method {method.name!r} gives no stage split for {type(model).__name__}; '
      'describe how to cut it in its Method.stage_split.'
    )
  return method.stage_split


def valid_stages(model: nn.Module) -> tuple[str, ...]:
  """The stage names ``gradcam`` accepts for this model, in network order."""
  return _split_for(model).stages(model)


def default_stage(model: nn.Module) -> str:
  """FFAM's output for CMDSL (its last stage with an FFAM), ``layer4`` otherwise."""
  return _split_for(model).default(model)


def _check_stage(model: nn.Module, stage: str | None) -> str:
  split = _split_for(model)
  stage = split.default(model) if stage is None else stage
  stages = split.stages(model)
  if stage not in stages:
    raise ValueError(
      f'gradcam: {stage!r} is not a stage of {type(model).__name__}; valid stages: {stages}.'
    )
  return stage


# --- Grad-CAM. ---


def embed(model, variables, images, *, modality: int, feature: str = 'feat') -> np.ndarray:
  """L2-normalised eval embeddings (N, D) of one modality (the retrieval feature), e.g. the
  reference ``target`` of :func:`gradcam`."""
  if feature not in FEATURES:
    raise ValueError(f'embed: feature must be one of {FEATURES}, got {feature!r}.')
  # The evaluation's own compiled extractor (no flip: a heatmap explains one image). It imports
  # TensorFlow, so only on use: importing viz stays light.
  from sketchreid_jax.evaluation.extract import extract_fn, l2_normalise

  feat = np.asarray(extract_fn(model, modality, feature, False)(variables, jnp.asarray(images)))
  return l2_normalise(feat)


def _cosine(feat: Array, reference: Array) -> Array:
  f = feat / jnp.maximum(jnp.linalg.norm(feat, axis=-1, keepdims=True), 1e-12)
  r = reference / jnp.maximum(jnp.linalg.norm(reference, axis=-1, keepdims=True), 1e-12)
  return jnp.sum(f * r, axis=-1)


def _embedding_norm(feat: Array, reference: None) -> Array:
  del reference
  return jnp.linalg.norm(feat, axis=-1)


def _target_score(target):
  """(score, reference) for the ``target`` argument of gradcam (shapes are checked when traced)."""
  if target is None:
    return _embedding_norm, None
  if callable(target):
    return target, None
  return _cosine, jnp.asarray(target, jnp.float32)


def _check_reference(reference: Array, feat: Array) -> None:
  n, dim = feat.shape
  if reference.shape not in ((dim,), (n, dim)):
    raise ValueError(
      f'gradcam: target must be a reference embedding of shape ({dim},) or ({n}, {dim}) '
      f'(e.g. viz.embed of the matching photos), a callable (N, D) -> (N,), or None; got shape '
      f'{tuple(reference.shape)}.'
    )


@functools.lru_cache(maxsize=16)
def _map_and_gradient(model, stage: str, modality: int, feature: str, score: Callable):
  """Compiled (variables, images, reference) -> (the stage's map, ∂ Σ_n score_n / ∂ map)."""
  split = _split_for(model)
  builtin = score in (_cosine, _embedding_norm)

  def fn(variables, images, reference):
    fmap = split.front(model, variables, images, modality, stage).astype(jnp.float32)

    def total(f):
      feat = split.back(model, variables, f, stage, modality)[feature].astype(jnp.float32)
      if reference is not None:
        _check_reference(reference, feat)
      scores = score(feat, reference) if builtin else score(feat)
      if scores.shape != (images.shape[0],):
        raise ValueError(
          f'gradcam: the target callable must return one score per image, shape '
          f'({images.shape[0]},), got {tuple(scores.shape)}.'
        )
      return jnp.sum(scores)

    return fmap, jax.grad(total)(fmap)

  return jax.jit(fn)


def cam_from_gradients(fmap, grads) -> np.ndarray:
  """ReLU(Σ_c α_c A_c) with α_c the spatial mean of the gradient: (N, h, w, C) × 2 -> (N, h, w)."""
  fmap = np.asarray(fmap, np.float32)
  grads = np.asarray(grads, np.float32)
  if fmap.ndim != 4 or fmap.shape != grads.shape:
    raise ValueError(
      f'cam_from_gradients: fmap and grads must be NHWC of one shape, got {fmap.shape} and '
      f'{grads.shape}.'
    )
  alpha = grads.mean(axis=(1, 2))
  return np.maximum(np.einsum('nhwc,nc->nhw', fmap, alpha), 0.0)


def _upsample_and_scale(cams: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  up = np.asarray(
    jax.image.resize(jnp.asarray(cams), (cams.shape[0], *size), method='bilinear'), np.float32
  )
  up = np.maximum(up, 0.0)  # bilinear weights are convex, this only removes rounding below 0
  peak = up.max(axis=(1, 2), keepdims=True)
  return np.where(peak > 0, up / np.where(peak > 0, peak, 1.0), 0.0).astype(np.float32)


def gradcam(
  model,
  variables,
  images,
  *,
  modality: int,
  stage: str | None = None,
  target=None,
  feature: str = 'feat',
) -> np.ndarray:
  """Grad-CAM heatmaps (N, H, W) in [0, 1] at the input resolution (see the module docstring).

  ``images`` (N, H, W, 3) normalised as in the pipeline; ``modality`` 0 = photo, 1 = sketch;
  ``stage`` one of :func:`valid_stages` (None: :func:`default_stage`); ``target`` None (embedding
  norm), a reference embedding (D,)/(N, D) (cosine similarity) or a callable (N, D) -> (N,).
  """
  stage = _check_stage(model, stage)
  if feature not in FEATURES:
    raise ValueError(f'gradcam: feature must be one of {FEATURES}, got {feature!r}.')
  images = jnp.asarray(images)
  if images.ndim != 4 or images.shape[-1] != 3:
    raise ValueError(f'gradcam: images must be NHWC RGB (N, H, W, 3), got {tuple(images.shape)}.')
  score, reference = _target_score(target)
  fmap, grads = _map_and_gradient(model, stage, modality, feature, score)(
    variables, images, reference
  )
  return _upsample_and_scale(cam_from_gradients(fmap, grads), tuple(images.shape[1:3]))


# --- Display. ---


def display_rgb(images, *, normalised: bool = True) -> np.ndarray:
  """Images as float RGB in [0, 1] for ``imshow``.

  ``normalised=True``: the pipeline's ImageNet-normalised input (x·std + mean); otherwise uint8
  (÷255) or float already in [0, 1]. Values are clipped to [0, 1].
  """
  x = np.asarray(images)
  if x.shape[-1] != 3:
    raise ValueError(f'display_rgb: expected RGB channels last, got shape {x.shape}.')
  if normalised:
    x = x.astype(np.float32) * np.asarray(IMAGENET_STD, np.float32) + np.asarray(
      IMAGENET_MEAN, np.float32
    )
  elif x.dtype == np.uint8:
    x = x.astype(np.float32) / 255.0
  return np.clip(x.astype(np.float32), 0.0, 1.0)


def overlay_figure(
  images,
  heatmaps,
  *,
  titles: Sequence[str] | None = None,
  normalised: bool = True,
  alpha: float = 0.5,
  cmap: str = 'jet',
  ncols: int | None = None,
  panel_size: float = 1.6,
) -> Figure:
  """One panel per image: the image with its heatmap (values in [0, 1]) drawn over it.

  ``images`` (N, H, W, 3) as for :func:`display_rgb`; ``heatmaps`` (N, H, W) from :func:`gradcam`.
  """
  rgb = display_rgb(images, normalised=normalised)
  heat = np.asarray(heatmaps, np.float32)
  if rgb.ndim != 4 or heat.shape != rgb.shape[:3]:
    raise ValueError(
      f'overlay_figure: heatmaps must be (N, H, W) matching images {rgb.shape[:3]}, got '
      f'{heat.shape}.'
    )
  n = rgb.shape[0]
  if titles is not None and len(titles) != n:
    raise ValueError(f'overlay_figure: {len(titles)} titles for {n} images.')
  ncols = min(n, ncols or 8)
  nrows = -(-n // ncols)
  aspect = rgb.shape[1] / rgb.shape[2]
  fig = Figure(figsize=(panel_size * ncols, panel_size * aspect * nrows + 0.3 * nrows))
  FigureCanvasAgg(fig)
  for i in range(n):
    ax = fig.add_subplot(nrows, ncols, i + 1)
    ax.imshow(rgb[i])
    ax.imshow(heat[i], cmap=cmap, alpha=alpha, vmin=0.0, vmax=1.0)
    ax.set_axis_off()
    if titles is not None:
      ax.set_title(titles[i], fontsize=8)
  fig.tight_layout()
  return fig
