"""t-SNE of photo, auxiliary and sketch embeddings in one 2-D map (DALNet Fig. 4).

``modality_embeddings`` computes the eval embeddings of each modality (DALNet's auxiliary ones too:
DAG(photo) through the auxiliary stream and the shared backbone), ``tsne_points`` embeds all of
them jointly in 2-D with scikit-learn's ``TSNE``, and ``tsne_figure`` draws the points, coloured by
identity, one marker per modality.

Interpretations chosen:

* The modalities are embedded **jointly** (one t-SNE over the stacked rows), otherwise their 2-D
  coordinates would not be comparable; the split back per modality keeps the input order.
* Embeddings are L2-normalised before t-SNE (``normalise=True``), as at retrieval time, so t-SNE's
  Euclidean distances rank pairs exactly as the evaluation's cosine does.
* ``init='pca'`` and ``random_state=seed`` make a run deterministic for a given input.
* t-SNE needs perplexity < number of points; a perplexity above (n − 1) / 3 (the usual upper
  bound) is lowered to it with a warning, so a notebook on a tiny set still runs.
* The auxiliary embedding of a photo is the shared-backbone feature of the DAG output, the same
  path the training's identity loss sees (``models/dalnet.py``); it exists only for models with a
  DAG (DALNet with ``use_aux``).
* Identity colours come from matplotlib's ``tab20`` and repeat after 20 identities.
"""

import functools
import warnings
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from sketchreid_jax.modality import PHOTO, SKETCH
from sketchreid_jax.viz.gradcam import FEATURES, embed

__all__ = ['MARKERS', 'modality_embeddings', 'tsne_figure', 'tsne_points']

MARKERS: dict[str, str] = {'photo': 'o', 'aux': '^', 'sketch': '*'}


def _l2(x: np.ndarray) -> np.ndarray:
  from sketchreid_jax.evaluation.extract import l2_normalise  # imports TensorFlow: only on use

  return l2_normalise(x)


@functools.lru_cache(maxsize=4)
def _aux_extract(model, feature: str):
  def fn(variables, photos, masks):
    def aux(m, x, mask):
      return m.extract_from_stem(m.aux_stream(m.dag(x, mask), train=False))[feature]

    return model.apply(variables, photos, masks, method=aux).astype(jnp.float32)

  return jax.jit(fn)


def modality_embeddings(
  model,
  variables,
  *,
  photos=None,
  sketches=None,
  masks=None,
  feature: str = 'feat',
) -> dict[str, np.ndarray]:
  """L2-normalised eval embeddings per modality: {'photo', 'aux', 'sketch'} (those computable).

  ``photos``/``sketches`` (N, H, W, 3) normalised as in the pipeline; 'aux' is added for models
  with a DAG (DALNet with ``use_aux``), from the photos and their foreground ``masks``
  (N, H, W, 1) or None (no masking, the ``none`` mask source).
  """
  if feature not in FEATURES:
    raise ValueError(f'modality_embeddings: feature must be one of {FEATURES}, got {feature!r}.')
  if photos is None and sketches is None:
    raise ValueError('modality_embeddings: pass photos, sketches or both.')
  out: dict[str, np.ndarray] = {}
  if photos is not None:
    out['photo'] = embed(model, variables, photos, modality=PHOTO, feature=feature)
    if getattr(model, 'use_aux', False):
      masks = None if masks is None else jnp.asarray(masks)
      feat = _aux_extract(model, feature)(variables, jnp.asarray(photos), masks)
      out['aux'] = _l2(np.asarray(feat, np.float32))
  if sketches is not None:
    out['sketch'] = embed(model, variables, sketches, modality=SKETCH, feature=feature)
  return out


def tsne_points(
  features: Mapping[str, np.ndarray],
  *,
  seed: int = 0,
  perplexity: float = 30.0,
  normalise: bool = True,
  **tsne_kwargs,
) -> dict[str, np.ndarray]:
  """Joint 2-D t-SNE of several groups of embeddings: {name: (N_k, D)} -> {name: (N_k, 2)}.

  ``tsne_kwargs`` go to ``sklearn.manifold.TSNE`` (e.g. ``max_iter``); see the module docstring
  for the choices made.
  """
  from sklearn.manifold import TSNE  # scikit-learn is only needed for this function

  if not features:
    raise ValueError('tsne_points: features is empty; pass {modality: (N, D) embeddings}.')
  arrays = {name: np.asarray(f, np.float64) for name, f in features.items()}
  dims = {name: a.shape for name, a in arrays.items()}
  if any(a.ndim != 2 for a in arrays.values()) or len({a.shape[1] for a in arrays.values()}) != 1:
    raise ValueError(f'tsne_points: every group must be (N, D) with one D for all, got {dims}.')
  stacked = np.concatenate(list(arrays.values()))
  if len(stacked) < 4:
    raise ValueError(f'tsne_points: t-SNE needs at least 4 points, got {len(stacked)} ({dims}).')
  if not np.all(np.isfinite(stacked)):
    raise ValueError('tsne_points: the embeddings contain NaN/Inf (a diverged checkpoint?).')
  if normalise:
    stacked = _l2(stacked)
  used = min(float(perplexity), (len(stacked) - 1) / 3.0)
  if used < perplexity:
    warnings.warn(
      f'tsne_points: perplexity {perplexity} lowered to {used:.2f} = (n - 1) / 3 for '
      f'{len(stacked)} points.',
      stacklevel=2,
    )
  tsne = TSNE(n_components=2, perplexity=used, init='pca', random_state=seed, **tsne_kwargs)
  points = tsne.fit_transform(stacked).astype(np.float32)
  bounds = np.cumsum([len(a) for a in arrays.values()])[:-1]
  return dict(zip(arrays, np.split(points, bounds)))


def tsne_figure(
  points: Mapping[str, np.ndarray],
  pids: Mapping[str, Sequence[int]],
  *,
  title: str | None = None,
  markers: Mapping[str, str] | None = None,
  size: float = 5.0,
) -> Figure:
  """Scatter of :func:`tsne_points`: colour = identity, marker = modality (legend: modalities)."""
  markers = {**MARKERS, **(markers or {})}
  if not points:
    raise ValueError('tsne_figure: points is empty.')
  if set(points) != set(pids):
    raise ValueError(
      f'tsne_figure: points and pids must have the same modalities, got {sorted(points)} and '
      f'{sorted(pids)}.'
    )
  unknown = [name for name in points if name not in markers]
  if unknown:
    raise ValueError(f'tsne_figure: no marker for {unknown}; pass markers={{name: marker}}.')
  identities = np.unique(np.concatenate([np.asarray(pids[k]) for k in points]))
  colour_index = {pid: i for i, pid in enumerate(identities.tolist())}
  fig = Figure(figsize=(size, size))
  FigureCanvasAgg(fig)
  ax = fig.add_subplot(1, 1, 1)
  cmap = matplotlib.colormaps['tab20']  # the registry only; the backend is left untouched
  handles = []
  for name, xy in points.items():
    xy = np.asarray(xy)
    labels = np.asarray(pids[name])
    if xy.ndim != 2 or xy.shape[1] != 2 or len(labels) != len(xy):
      raise ValueError(
        f'tsne_figure: points[{name!r}] must be (N, 2) with N = len(pids[{name!r}]), got '
        f'{xy.shape} and {len(labels)} pids.'
      )
    colours = [cmap(colour_index[p] % 20) for p in labels.tolist()]
    ax.scatter(xy[:, 0], xy[:, 1], c=colours, marker=markers[name], s=30, label=name)
    handles.append(Line2D([], [], marker=markers[name], color='gray', linestyle='None', label=name))
  ax.legend(handles=handles, loc='best', fontsize=8)
  ax.set_xticks([])
  ax.set_yticks([])
  ax.set_title(title or f't-SNE ({len(identities)} identities)')
  fig.tight_layout()
  return fig
