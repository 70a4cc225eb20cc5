"""Multi-query fusion of sketch feature maps, as the MM'23 release trains and tests it.

The release answers a multi-query (several artists' sketches of one person) by running the sketch
stem on every sketch of the set, averaging the stem maps, passing the mean through a Non-local
block (``nonlocal_block.py``) and running the shared layers once on the result. It does this in
two places, and so do we:

* training (``config.model.sketch_fusion``, ``--train_mq`` in the release; every "M" row of the
  papers): every sketch slot of an identity in the P×K batch holds that identity's *whole* set of
  training sketches (all of ``data.train_styles``), each image independently augmented
  (``input_pipeline`` builds these sets). The K slots of one identity therefore differ only by
  augmentation. Sets have different sizes, so they are padded to the largest and carry a validity
  mask: padded images take no part in the mean nor in the stem's BatchNorm statistics;
* evaluation (``config.eval.multi_query_aggregate='stem'``, ``--test_mq``):
  ``evaluation.extract.stem_group_features`` accumulates the stem maps of each query group and
  embeds their mean through the model's ``extract_fused`` (Non-local block, then the shared
  layers).

Interpretation chosen: the release calls the stem once per set, so in training mode each set's
BatchNorm statistics are its own (and the running averages are updated once per set). We run the
stem once on the whole batch of sets with the padding masked out: one set of batch statistics over
the batch's real sketches, the same as for any other batch. At evaluation the running statistics
are used and the two agree exactly.
"""

import jax
import jax.numpy as jnp


def mean_of_sets(maps: jax.Array, valid: jax.Array) -> jax.Array:
  """(N, M, h, w, c) maps of N sets of up to M images, (N, M) validity -> (N, h, w, c) means.

  The mean of each set is over its valid members only, computed in float32 and returned in the
  maps' dtype. Every set must have at least one valid member (the pipeline guarantees it).
  """
  if maps.ndim != 5 or valid.shape != maps.shape[:2]:
    raise ValueError(
      f'mean_of_sets: maps must be (N, M, h, w, c) and valid (N, M), got {tuple(maps.shape)} '
      f'and {tuple(valid.shape)}.'
    )
  weights = valid.astype(jnp.float32)
  total = jnp.einsum('nm,nmhwc->nhwc', weights, maps.astype(jnp.float32))
  count = jnp.maximum(jnp.sum(weights, axis=1), 1.0)[:, None, None, None]
  return (total / count).astype(maps.dtype)
