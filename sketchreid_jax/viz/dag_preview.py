"""Photos beside their DAG auxiliary images (DALNet's Dynamic Auxiliary Generator, models/dag.py).

``auxiliary_images`` runs the DAG on photos: a trained DALNet's own DAG (its learnt edge kernel)
when ``model`` and ``variables`` are given, otherwise a fresh ``DAG`` at its initial kernel
(centre 9, neighbours −0.8); ``dag_preview_figure`` draws photo / mask / auxiliary image columns
for notebook 01.

Interpretations chosen:

* Photos are the pipeline's ImageNet-normalised RGB (what the DAG sees in training); they are
  de-normalised for display only.
* The three DAG output channels are identical, so channel 0 is shown, in grey, each image scaled
  from its own minimum (black) to its maximum (white): the edge map's range depends on the kernel
  and the image, and a shared scale would hide the weaker images.
* The mask row is drawn only when masks are given (the ``none`` mask source has none).
"""

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from sketchreid_jax.models.dag import DAG
from sketchreid_jax.viz.gradcam import display_rgb

__all__ = ['auxiliary_images', 'dag_preview_figure']


def auxiliary_images(photos, masks=None, *, model=None, variables=None) -> np.ndarray:
  """DAG(photos, masks) as numpy (N, H, W, 3) float32.

  ``model``/``variables``: a DALNet with a DAG (``use_aux``) and its variables, whose trained DAG
  is used; both None: ``models.DAG()`` with its initial kernel.
  """
  photos = jnp.asarray(photos)
  masks = None if masks is None else jnp.asarray(masks)
  if (model is None) != (variables is None):
    raise ValueError(
      'auxiliary_images: pass both model and variables (a trained DALNet) or neither.'
    )
  if model is None:
    # DAG's own initialisation is its fixed starting kernel (the key is not used).
    aux, _ = DAG().init_with_output(jax.random.key(0), photos, masks)
    return np.asarray(aux, np.float32)
  if not getattr(model, 'use_aux', False) or 'dag' not in variables.get('params', {}):
    raise ValueError(
      f'auxiliary_images: {type(model).__name__} has no DAG (only DALNet with '
      'model.use_aux=True has one); pass model=None for the DAG at its initial kernel.'
    )
  aux = model.apply(variables, photos, masks, method=lambda m, x, k: m.dag(x, k))
  return np.asarray(aux, np.float32)


def dag_preview_figure(
  photos,
  aux=None,
  masks=None,
  *,
  model=None,
  variables=None,
  titles: Sequence[str] | None = None,
  panel_size: float = 1.4,
) -> Figure:
  """Columns of photo / mask (if given) / auxiliary image; ``aux`` None: computed with
  :func:`auxiliary_images` (``model``/``variables`` as there)."""
  rgb = display_rgb(photos)
  if aux is None:
    aux = auxiliary_images(photos, masks, model=model, variables=variables)
  aux = np.asarray(aux, np.float32)
  if rgb.ndim != 4 or aux.shape[:3] != rgb.shape[:3]:
    raise ValueError(
      f'dag_preview_figure: aux must be (N, H, W, C) matching photos {rgb.shape}, got {aux.shape}.'
    )
  rows = [('photo', rgb, {})]
  if masks is not None:
    mask = np.asarray(masks, np.float32)
    if mask.shape != (*rgb.shape[:3], 1):
      raise ValueError(
        f'dag_preview_figure: masks must be {(*rgb.shape[:3], 1)}, got {mask.shape}.'
      )
    rows.append(('mask', mask[..., 0], dict(cmap='gray', vmin=0.0, vmax=1.0)))
  rows.append(('auxiliary', aux[..., 0], dict(cmap='gray')))
  n = rgb.shape[0]
  if titles is not None and len(titles) != n:
    raise ValueError(f'dag_preview_figure: {len(titles)} titles for {n} photos.')
  aspect = rgb.shape[1] / rgb.shape[2]
  fig = Figure(figsize=(panel_size * n, panel_size * aspect * len(rows) + 0.3))
  FigureCanvasAgg(fig)
  for r, (name, images, style) in enumerate(rows):
    for i in range(n):
      ax = fig.add_subplot(len(rows), n, r * n + i + 1)
      ax.imshow(images[i], **style)  # grey maps without vmin/vmax span their own min..max
      ax.set_xticks([])
      ax.set_yticks([])
      if i == 0:
        ax.set_ylabel(name)
      if r == 0 and titles is not None:
        ax.set_title(titles[i], fontsize=8)
  fig.tight_layout()
  return fig
