"""The CMDSL backbone: the MM'23 two-stream baseline with an FFAM after the shared ResNet stages.

Implements CMDSL seed §3 ("we integrate the FFAM after each ResNet block", §3.1) and docs/design.md §4
"FFAM" (inserted after each ResNet stage, configurable, shared where the stage is shared). The
maths lives in ``ffam.py`` and ``baseline.py``; this module only assembles them.

Interpretations chosen:

* "After each ResNet block" means after each stage (layer1–layer4), not after every bottleneck,
  as docs/design.md §4 states. ``ffam_stages`` picks the stages (the Table 6 ablation: ``()`` is the
  plain baseline, with exactly Baseline's parameters and outputs).
* layer1–4 are shared between modalities, so each stage's FFAM is one module shared by both: the
  photo and sketch halves of a batch pass through the same ``ffam_layerN``.
* No FFAM after the modality-specific stems (the seed places it after the ResNet blocks only).
* The FFAM runs inside ``stages`` (through Baseline's ``post_stage`` hook), so every path that
  runs a stage also runs its FFAM: ``__call__``, ``extract`` and CMAlign's
  ``stages(maps['layer3'], start='layer4', stop='layer4')`` + ``head``. ``maps`` are therefore the
  post-FFAM maps, the features the next stage sees.
* The FFAM computes its mask in the backbone ``dtype`` and its normalisation in float32.
* Parameter tree: Baseline's plus ``ffam_layer1`` … ``ffam_layer4`` (each ``fc1``, ``fc2``) for
  the stages listed; FFAM has no batch statistics.

CMAlign (docs/design.md §4, training only): with ``cmalign_layers`` set and ``label`` given, ``__call__``
also returns ``outputs['cmalign'][layer]`` = the layer's map ``f``, the reconstructions ``f_pos_hat``
/ ``f_neg_hat`` and the co-mask (the inputs of L_dt), and — when ``cmalign_identity`` — the logits of
the reconstructed positive map pushed through the remaining stages (their FFAMs included) and the
shared head (the input of L_ic); ``outputs['cmalign']['labels']`` are the original labels. The
pairing draws from the ``'cmalign'`` rng stream on this device's own ``[photos | sketches]`` batch.
The losses themselves live in ``losses/`` and are combined by the method (``methods/cmdsl.py``).
"""

from typing import Any

import jax
import jax.numpy as jnp

from sketchreid_jax.models import cmalign
from sketchreid_jax.models.baseline import Baseline
from sketchreid_jax.models.ffam import FFAM
from sketchreid_jax.models.resnet import STAGE_NAMES

Array = jax.Array


def _check_ffam_stages(stages: Any) -> tuple[str, ...]:
  if isinstance(stages, str) or not all(isinstance(s, str) for s in stages):
    raise ValueError(
      f'CMDSL: ffam_stages must be a tuple of stage names from {STAGE_NAMES} (e.g. '
      f"('layer3',), not the bare string 'layer3'; () = no FFAM), got {stages!r}."
    )
  unknown = [s for s in stages if s not in STAGE_NAMES]
  if unknown or len(set(stages)) != len(stages):
    raise ValueError(
      f'CMDSL: ffam_stages must name distinct stages from {STAGE_NAMES}, got {tuple(stages)!r}'
      + (f' (unknown: {unknown}).' if unknown else ' (a stage is listed twice).')
    )
  return tuple(stages)


class CMDSL(Baseline):
  """Baseline (two stems, shared layer1–4, GeM, BNNeck) with a shared FFAM after the stages in
  ``ffam_stages``. Methods and outputs as ``Baseline``."""

  ffam_stages: tuple[str, ...] = STAGE_NAMES
  ffam_reduction: int = 16
  ffam_eps: float = 1e-5
  cmalign_layers: tuple[str, ...] = ()  # () = no CMAlign; the MM'23 code used layer3 and layer4
  cmalign_identity: bool = True  # also produce the L_ic logits (skipped when its weight is 0)
  cmalign_temperature: float = 50.0
  cmalign_mask: str = 'norm'  # 'norm' (feature-norm mask) or 'attribute' (attribute projection)
  attribute_seed: int = 0  # seed of the fixed attribute → H×W projection of the 'attribute' mask

  def setup(self) -> None:
    super().setup()
    # A dict attribute names its modules '<attr>_<key>': ffam_layer1, ..., ffam_layer4.
    self.ffam = {
      name: FFAM(reduction=self.ffam_reduction, eps=self.ffam_eps, dtype=self.dtype)
      for name in _check_ffam_stages(self.ffam_stages)
    }

  def post_stage(self, name: str, x: Array, *, train: bool) -> Array:
    """FFAM after the stages listed in ``ffam_stages``; the identity after the others."""
    del train  # FFAM has no batch statistics
    return self.ffam[name](x) if name in self.ffam else x

  def __call__(
    self,
    photos: Array,
    sketches: Array,
    *,
    train: bool,
    label: Array | None = None,
    attributes: Array | None = None,
    sketch_valid: Array | None = None,
  ) -> dict[str, Any]:
    out = super().__call__(photos, sketches, train=train, sketch_valid=sketch_valid)
    if train and self.cmalign_layers and label is not None:
      out['cmalign'] = self._cmalign(out['maps'], label, attributes, photos.shape[0], train=train)
    return out

  def _cmalign(self, maps, label, attributes, num_photos: int, *, train: bool) -> dict[str, Any]:
    unknown = [layer for layer in self.cmalign_layers if layer not in maps]
    if unknown:
      raise ValueError(f'CMDSL: cmalign_layers {unknown} not among the aligned maps {sorted(maps)}')
    if self.cmalign_mask == 'attribute' and attributes is None:
      raise ValueError(
        "CMDSL: cmalign_mask='attribute' needs per-sample attributes, but the dataset has none "
        '(no market_attribute.mat?); use --config.loss.cmalign_mask=norm.'
      )
    rng = self.make_rng('cmalign')
    result: dict[str, Any] = {'labels': label}
    for i, layer in enumerate(self.cmalign_layers):
      f = maps[layer]
      projection = None
      if self.cmalign_mask == 'attribute':
        projection = jnp.asarray(
          cmalign.attribute_projection(self.attribute_seed, attributes.shape[-1], *f.shape[1:3])
        )
      r = cmalign.cmalign_maps(
        f,
        label,
        jax.random.fold_in(rng, i),
        num_photos=num_photos,
        temperature=self.cmalign_temperature,
        mask=self.cmalign_mask,
        attributes=None if attributes is None else attributes.astype(jnp.float32),
        projection=projection,
      )
      entry = {
        'f': f,
        'f_pos_hat': r['f_pos_hat'],
        'f_neg_hat': r['f_neg_hat'],
        'comask': r['comask'],
      }
      if self.cmalign_identity:
        g = r['f_pos_hat']
        later = STAGE_NAMES[STAGE_NAMES.index(layer) + 1 :]
        if later:
          g = self.stages(g, start=later[0], stop=later[-1], train=train)
        entry['ic_logits'] = self.head(g, train=train)['logits']
      result[layer] = entry
    return result
