"""L_dt, the dense triplet loss of CMAlign (docs/design.md §4 "CMAlign (L_ic, L_dt)").

From the MM'23 Market-Sketch-1K baseline, after Park et al., "Learning by Aligning" (ICCV 2021).
For a map f, its reconstructions from a positive (f̂⁺) and a negative (f̂⁻) partner of the other
modality and the co-mask c of the positive pair (all from ``models/cmalign.py``):

    d⁺_ni = sqrt(Σ_ch (f_nic − f̂⁺_nic)² + eps),   d⁻_ni = sqrt(Σ_ch (f_nic − f̂⁻_nic)² + eps)
    L_dt  = (1 / (N·H·W)) Σ_n Σ_i c_ni · max(0, d⁺_ni − d⁻_ni + margin)

with i running over the H×W positions. The training step sums L_dt over layer3 and layer4.

Interpretations chosen:

* eps sits inside the square root (eps = 1e-6, docs/design.md §4): the gradient stays finite where a
  reconstruction equals f exactly (d = sqrt(eps) ≈ 1e-3, so the loss of an exact positive and a
  negative at distance ≥ margin + 1e-3 is exactly zero).
* The mean runs over all N·H·W positions, not over Σ c: positions with c = 0 count as zeros (the
  reference's ``torch.mean(comask * triplet)``).
* c is put under ``stop_gradient`` here as well, so the loss is right even if a caller passes a
  differentiable co-mask.
* Computed in (at least) float32 whatever the maps' dtype: the difference of two near-equal
  distances is what the hinge sees.
"""

import jax
import jax.numpy as jnp

__all__ = ['dense_triplet']


def dense_triplet(
  f: jax.Array,
  f_pos_hat: jax.Array,
  f_neg_hat: jax.Array,
  comask: jax.Array,
  *,
  margin: float = 0.3,
  eps: float = 1e-6,
) -> jax.Array:
  """Co-masked dense triplet loss L_dt (equation in the module docstring) -> scalar.

  Args:
    f: (N, H, W, C) feature map (the anchor at every position).
    f_pos_hat: (N, H, W, C) f reconstructed from its positive partner.
    f_neg_hat: (N, H, W, C) f reconstructed from its negative partner.
    comask: (N, H, W, 1) or (N, H, W) co-mask of the positive pair, values in [0, 1].
    margin: the triplet margin (0.3 in the reference; config).
    eps: added under the square root of each per-position distance (1e-6; config).
  """
  f, f_pos_hat, f_neg_hat, comask = (jnp.asarray(x) for x in (f, f_pos_hat, f_neg_hat, comask))
  if f.ndim != 4 or f_pos_hat.shape != f.shape or f_neg_hat.shape != f.shape:
    raise ValueError(
      f'dense_triplet: f, f_pos_hat and f_neg_hat must be NHWC maps of one shape, got '
      f'{tuple(f.shape)}, {tuple(f_pos_hat.shape)} and {tuple(f_neg_hat.shape)}.'
    )
  if comask.shape not in (f.shape[:-1], f.shape[:-1] + (1,)):
    raise ValueError(
      f'dense_triplet: comask must be (N, H, W, 1) or (N, H, W) = {f.shape[:-1]} for maps of '
      f'shape {tuple(f.shape)}, got {tuple(comask.shape)}.'
    )
  if isinstance(eps, (int, float)) and eps <= 0:
    raise ValueError(
      f'dense_triplet: eps must be > 0 (it keeps sqrt differentiable at zero distance), '
      f'got {eps} (config.loss.cmalign eps).'
    )
  dtype = jnp.promote_types(jnp.result_type(f, f_pos_hat, f_neg_hat), jnp.float32)
  f, f_pos_hat, f_neg_hat = (x.astype(dtype) for x in (f, f_pos_hat, f_neg_hat))
  c = jax.lax.stop_gradient(comask).astype(dtype).reshape(f.shape[:-1])
  d_pos = jnp.sqrt(jnp.sum((f - f_pos_hat) ** 2, axis=-1) + eps)
  d_neg = jnp.sqrt(jnp.sum((f - f_neg_hat) ** 2, axis=-1) + eps)
  return jnp.mean(c * jax.nn.relu(d_pos - d_neg + margin))
