"""Identity (classification) loss on the BNNeck logits (docs/design.md §4 "Baseline", L_id).

    L_id = −(1/N) Σ_n Σ_c q_nc · log softmax(z_n)_c,   q_nc = (1 − ε)·[c = y_n] + ε / C

Label smoothing follows the re-id reference code (``CrossEntropyLabelSmooth`` of the AGW/torchreid
code bases): the smoothing mass ε is spread over *all* C classes, the true one included.

Interpretations chosen:

* The log-softmax is computed in float32 whatever the logits' dtype (bfloat16 logits over ~1k
  identities lose the margins that matter); float64 stays float64.
* Labels outside [0, C) cannot be rejected under ``jit`` (values are traced); their one-hot row is
  all zeros, so only the ε/C part would count. The input pipeline guarantees the range.
"""

import jax
import jax.numpy as jnp

__all__ = ['cross_entropy']


def cross_entropy(
  logits: jax.Array, labels: jax.Array, *, label_smoothing: float = 0.0
) -> jax.Array:
  """Mean cross-entropy of ``logits`` (N, C) against integer ``labels`` (N,), with smoothing ε."""
  logits = jnp.asarray(logits)
  labels = jnp.asarray(labels)
  if logits.ndim != 2 or labels.shape != logits.shape[:1]:
    raise ValueError(
      f'cross_entropy: logits must be (N, C) and labels (N,), got {logits.shape} and '
      f'{labels.shape}.'
    )
  if not jnp.issubdtype(labels.dtype, jnp.integer):
    raise ValueError(f'cross_entropy: labels must be integer class ids, got dtype {labels.dtype}.')
  if isinstance(label_smoothing, (int, float)) and not 0.0 <= label_smoothing < 1.0:
    raise ValueError(
      f'cross_entropy: label_smoothing must be in [0, 1), got {label_smoothing} '
      '(config.loss.label_smoothing).'
    )
  logits = logits.astype(jnp.promote_types(logits.dtype, jnp.float32))
  num_classes = logits.shape[1]
  log_probs = jax.nn.log_softmax(logits, axis=1)
  targets = (1.0 - label_smoothing) * jax.nn.one_hot(
    labels, num_classes, dtype=logits.dtype
  ) + label_smoothing / num_classes
  return -jnp.mean(jnp.sum(targets * log_probs, axis=1))
