"""DALNet's Modality Interactive Attention (MIA) = Bilinear Align (BAM) + Auxiliary Cross-Attention.

Implements DALNet / docs/design.md §4 "BAM" and "ACA". MIA is training-only; it takes the
shared-backbone maps of the photo X_p, the auxiliary A and the sketch X_s (NHWC, all the same
shape; row i of each belongs to the same identity). Per sample, with maps reshaped to HW × C:

    S_t   = σ(L2 ReLU(L1 [X_t, A]))               BAM, t ∈ {p, s}; [·,·] concatenates channels (2C)
    X_t'  = X_t + S_t ⊙ X_t                        L1: 2C → C/r, L2: C/r → C
    A'    = A + S_s ⊙ A                            the auxiliary is aligned by the *sketch* gate
    A_xa  = softmax(X_t' A'ᵀ / √d)                 ACA, Q = X_t', K = A', d = C, softmax over rows
    A_ax  = softmax(A' X_t'ᵀ / √d)
    X̂_t   = LayerNorm(X_t' + A_xa A_ax X_t')       the values are X_t' (a round trip through A')

Interpretations chosen (the seed's formula images were lost):

* The "bilinear alignment unit" is what the seed describes in words: two Linear layers (2C → C/r →
  C) with a ReLU between them, applied at every spatial position (a Dense on the channel axis of
  the NHWC map is the same as on the HW × C reshape). Layers ``fc1``/``fc2`` with bias and
  PyTorch's ``nn.Linear`` init (the reference framework), as in FFAM. C/r is floor division and
  must be ≥ 1 (a wrong r is an error, not silently widened: the paper's C is 1024 or 2048).
  The MLP computes in ``dtype`` with float32 parameters; S is returned in that dtype.
* [X_t, A] puts the target first, then the auxiliary.
* Two BAMs with separate weights (``bam_photo``, ``bam_sketch``): the seed draws one alignment per
  modality pair (photo–aux, sketch–aux) and names S_p and S_s separately; the pairs have different
  modality gaps, and the cost is a second small MLP. Likewise two ACAs (``aca_photo``,
  ``aca_sketch``), whose only parameters are their LayerNorms.
* A' = A + S_s ⊙ A uses S_s (as stated) for both ACAs, so photo_hat depends on the sketch through
  A'. S_s is not stop-gradient'ed.
* The round trip A_xa A_ax X' is associative; einsum picks the cheaper contraction order from the
  static shapes ((A_xa A_ax) X' costs L³ + L²C, A_xa (A_ax X') costs 2L²C).
* Attention (logits, softmaxes, products) runs in float32 with ``Precision.HIGHEST``: the logits
  are unnormalised dot products over C channels, where bfloat16 or TF32 rounding is amplified by
  the exponential. The residual and LayerNorm are float32 too; X̂ is cast to the input dtype.
* LayerNorm over channels with a learnable scale (init 1) and bias (init 0), biased variance and
  eps = 1e-5 inside the square root (PyTorch's ``nn.LayerNorm``), two-pass variance
  (``use_fast_variance=False``: E[x²] − E[x]² cancels on large activations). No dropout and no
  Q/K/V projections (the seed names none).
* ACA accepts an auxiliary map of another spatial size (same N and C): the formula is defined for
  it. MIA requires all three maps to have the same shape (BAM concatenates them position-wise).
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from sketchreid_jax.models.resnet import torch_linear_bias_init, torch_linear_kernel_init

Dtype = Any
Array = jax.Array


def _check_map(f: Array, where: str, what: str) -> None:
  if f.ndim != 4:
    raise ValueError(
      f'{where}: expected an NHWC feature map (N, H, W, C) for {what}, got shape {tuple(f.shape)}.'
    )


def _check_same_shape(where: str, **maps: Array) -> None:
  shapes = {name: tuple(m.shape) for name, m in maps.items()}
  if len(set(shapes.values())) != 1:
    raise ValueError(
      f'{where}: the maps must all have the same shape (row i of each is one identity, aligned '
      f'position by position), got {shapes}.'
    )


class BAM(nn.Module):
  """Bilinear Align Module: ``__call__(x, aux) -> (x + s ⊙ x, s)``, NHWC maps of equal shape.

  s = σ(fc2(ReLU(fc1([x, aux])))) has the shape of ``x``; x_aligned has its dtype.
  """

  reduction: int = 16
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, aux: Array) -> tuple[Array, Array]:
    _check_map(x, 'BAM', 'the target')
    _check_map(aux, 'BAM', 'the auxiliary')
    _check_same_shape('BAM', x=x, aux=aux)
    r = self.reduction
    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
      raise ValueError(
        f'BAM: reduction must be a positive int (the bottleneck ratio r), got {self.reduction!r}.'
      )
    channels = x.shape[-1]
    hidden = channels // r
    if hidden < 1:
      raise ValueError(
        f'BAM: the bottleneck C // reduction = {channels} // {r} is 0; use reduction <= {channels}.'
      )
    pair = jnp.concatenate([x, aux], axis=-1)
    h = nn.Dense(
      hidden,
      dtype=self.dtype,
      kernel_init=torch_linear_kernel_init(),
      bias_init=torch_linear_bias_init(2 * channels),
      name='fc1',
    )(pair)
    s = nn.sigmoid(
      nn.Dense(
        channels,
        dtype=self.dtype,
        kernel_init=torch_linear_kernel_init(),
        bias_init=torch_linear_bias_init(hidden),
        name='fc2',
      )(nn.relu(h))
    )
    x32 = x.astype(jnp.float32)
    return (x32 + s.astype(jnp.float32) * x32).astype(x.dtype), s


class ACA(nn.Module):
  """Auxiliary Cross-Attention: ``__call__(x, aux) -> x_hat`` = LN(x + A_xa A_ax x) per sample.

  ``x`` (N, H, W, C) is the BAM-aligned target, ``aux`` (N, H', W', C) the aligned auxiliary.
  x_hat has the shape and dtype of ``x``.
  """

  layer_norm_epsilon: float = 1e-5
  precision: jax.lax.Precision = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x: Array, aux: Array, reference: Array | None = None):
    """x_hat, or (x_hat, LN(reference)) when a ``reference`` map is given (same LayerNorm)."""
    _check_map(x, 'ACA', 'the target')
    _check_map(aux, 'ACA', 'the auxiliary')
    if aux.shape[0] != x.shape[0] or aux.shape[-1] != x.shape[-1]:
      raise ValueError(
        f'ACA: the target and the auxiliary must have the same batch size and channels, got '
        f'{tuple(x.shape)} and {tuple(aux.shape)}.'
      )
    if not self.layer_norm_epsilon > 0:
      raise ValueError(
        f'ACA: layer_norm_epsilon must be > 0 (it keeps LayerNorm finite on a constant '
        f'position), got {self.layer_norm_epsilon}.'
      )
    n, h, w, c = x.shape
    q = x.astype(jnp.float32).reshape(n, h * w, c)
    k = aux.astype(jnp.float32).reshape(n, -1, c)
    logits = jnp.einsum('nqc,nkc->nqk', q, k, precision=self.precision) / jnp.sqrt(jnp.float32(c))
    a_xa = jax.nn.softmax(logits, axis=-1)
    # K Qᵀ = (Q Kᵀ)ᵀ: one matmul, the reverse attention normalises over the target's positions.
    a_ax = jax.nn.softmax(jnp.swapaxes(logits, 1, 2), axis=-1)
    round_trip = jnp.einsum(
      'nqk,nkp,npc->nqc', a_xa, a_ax, q, precision=self.precision, optimize='optimal'
    )
    norm = nn.LayerNorm(
      epsilon=self.layer_norm_epsilon,
      dtype=jnp.float32,
      param_dtype=jnp.float32,
      use_fast_variance=False,
      name='norm',
    )
    x_hat = norm(q + round_trip).reshape(n, h, w, c).astype(x.dtype)
    if reference is None:
      return x_hat
    if reference.shape != x.shape:
      raise ValueError(
        f"ACA: the reference map must have the target's shape {tuple(x.shape)}, got "
        f'{tuple(reference.shape)}.'
      )
    return x_hat, norm(reference.astype(jnp.float32)).astype(x.dtype)


class MIA(nn.Module):
  """``__call__(photo, aux, sketch) -> (photo_hat, sketch_hat)``: BAM then ACA per modality.

  All three inputs are NHWC maps of the same shape; the outputs have that shape and the inputs'
  dtypes.
  """

  reduction: int = 16
  layer_norm_epsilon: float = 1e-5
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, photo: Array, aux: Array, sketch: Array, *, references: bool = False):
    """(photo_hat, sketch_hat); with ``references=True`` also (LN_p(photo), LN_s(sketch)): the
    unrefined maps through the same LayerNorms, the like-for-like "before MIA" features."""
    for name, f in (('photo', photo), ('aux', aux), ('sketch', sketch)):
      _check_map(f, 'MIA', name)
    _check_same_shape('MIA', photo=photo, aux=aux, sketch=sketch)
    photo_aligned, _ = BAM(self.reduction, dtype=self.dtype, name='bam_photo')(photo, aux)
    sketch_aligned, s_sketch = BAM(self.reduction, dtype=self.dtype, name='bam_sketch')(sketch, aux)
    aux32 = aux.astype(jnp.float32)
    aux_aligned = (aux32 + s_sketch.astype(jnp.float32) * aux32).astype(aux.dtype)
    aca_photo = ACA(self.layer_norm_epsilon, name='aca_photo')
    aca_sketch = ACA(self.layer_norm_epsilon, name='aca_sketch')
    if not references:
      return aca_photo(photo_aligned, aux_aligned), aca_sketch(sketch_aligned, aux_aligned)
    photo_hat, photo_ref = aca_photo(photo_aligned, aux_aligned, reference=photo)
    sketch_hat, sketch_ref = aca_sketch(sketch_aligned, aux_aligned, reference=sketch)
    return photo_hat, sketch_hat, photo_ref, sketch_ref
