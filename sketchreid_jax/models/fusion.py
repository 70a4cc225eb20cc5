"""Multi-query fusion of sketch feature maps (the MM'23 baseline's multi-query setting, DESIGN §5).

The MM'23 code answers a multi-query (several artists' sketches of one person) by averaging the
sketches' early feature maps and running the rest of the network once on the mean. We offer it in
two places:

* training (``config.model.sketch_fusion``, CMDSL Table 5 b and d, "multi-query training"): the K
  sketches of each identity in a P×K batch are contiguous rows of this device's sketch half (see
  ``parallel.device_major_permutation``); each is replaced by the mean of its identity's K maps, so
  shapes, labels and every loss stay as in single-query training;
* evaluation (``config.eval.multi_query_aggregate='stem'``): ``evaluate.py`` accumulates the maps
  returned by a model's ``extract_stem`` per query group and embeds the means with
  ``extract_from_stem``.

"Early" is the modality-specific part of the model: the stem for the two-stream models, the whole
private stream (stem … layer2 by default) for DALNet.
"""

import jax
import jax.numpy as jnp


def fuse_groups(x: jax.Array, group_size: int) -> jax.Array:
  """Replaces every row of each block of ``group_size`` contiguous rows by the block's mean.

  A batch smaller than one group is returned as it is: that is ``model.init``'s one-row shape
  probe, never a training batch (which holds K rows per identity).
  """
  n = x.shape[0]
  if n < group_size:
    return x
  if group_size < 1 or n % group_size:
    raise ValueError(
      f'fuse_groups: {n} rows do not split into groups of {group_size} contiguous rows (one '
      'group per identity of the P×K batch); check config.sampler.K.'
    )
  groups = x.reshape(n // group_size, group_size, *x.shape[1:])
  mean = jnp.mean(groups.astype(jnp.float32), axis=1, keepdims=True).astype(x.dtype)
  return jnp.broadcast_to(mean, groups.shape).reshape(x.shape)
