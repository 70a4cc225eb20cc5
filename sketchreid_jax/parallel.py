"""Data parallelism: the device mesh and the launchers that compile the one per-device train step.

The train step (``train.train_step``) is written once for *one device's shard* of the batch, with
named-axis collectives over the axis ``'data'``: features and labels are all-gathered so that the
losses see the global P×K batch, gradients and metrics are averaged with ``pmean``, and BatchNorm
statistics are synchronised because every BatchNorm gets ``axis_name='data'``. Two launchers compile
that same function (DESIGN §6):

* ``'shard_map'`` (default): ``jax.jit(jax.shard_map(step))`` on a 1-D ``('data',)`` mesh of all
  devices (all hosts); the state is replicated, the batch is sharded along its first axis.
* ``'pmap'``: ``jax.pmap(step, axis_name='data')`` over the local devices; state and batch carry a
  leading device axis.

How a batch is split: the input pipeline gives each host its own P/H identities (``host_slice``);
:func:`device_major_permutation` then orders the host's batch so that device d holds
``[photos | sketches]`` of its own P/(H·D) identities — the layout the two-stream models split in
halves. The global batch seen by the losses is the device-ordered concatenation; losses use labels
and modality flags, never positions, so the device count does not change any loss value.
"""

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

AXIS = 'data'


def make_mesh(devices=None) -> Mesh:
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices), (AXIS,))


def device_major_permutation(num_ids: int, K: int, num_devices: int) -> np.ndarray:
  """Row permutation turning ``[photos(num_ids·K) | sketches(num_ids·K)]`` into device-major order.

  Device d then receives ``[photos | sketches]`` of identities ``d·n … (d+1)·n − 1`` (n = num_ids/D).
  """
  if num_ids % num_devices:
    raise ValueError(
      f'P = {num_ids} identities per host cannot be split over {num_devices} devices: choose '
      f'config.sampler.P as a multiple of the device count (e.g. --config.sampler.P='
      f'{max(num_devices, num_ids - num_ids % num_devices)}).'
    )
  per = num_ids // num_devices
  rows = []
  for d in range(num_devices):
    ids = np.arange(d * per, (d + 1) * per)
    photo_rows = (ids[:, None] * K + np.arange(K)[None, :]).reshape(-1)
    rows += [photo_rows, photo_rows + num_ids * K]
  return np.concatenate(rows)


def all_gather(x: jnp.ndarray) -> jnp.ndarray:
  """Concatenates every device's rows (differentiable: the transpose sums the cotangents back)."""
  return jax.lax.all_gather(x, AXIS, tiled=True)


def pmean(tree):
  return jax.lax.pmean(tree, AXIS)


@dataclasses.dataclass
class Launcher:
  """A compiled data-parallel step plus the host↔device moves that go with it."""

  kind: str
  mesh: Mesh
  step: Callable[[Any, Any], tuple[Any, Any]]

  @property
  def num_devices(self) -> int:
    return self.mesh.devices.size

  def put_state(self, state):
    if self.kind == 'pmap':
      # pmap takes a leading device axis: one copy of the state per local device.
      devices = list(self.mesh.local_devices)
      sharding = NamedSharding(Mesh(np.asarray(devices), (AXIS,)), P(AXIS))
      return jax.tree.map(
        lambda x: jax.device_put(jnp.broadcast_to(x, (len(devices), *jnp.shape(x))), sharding),
        state,
      )
    return jax.device_put(state, NamedSharding(self.mesh, P()))

  def get_state(self, state):
    """The state as a single-device (unreplicated) pytree, e.g. for evaluation or saving."""
    if self.kind == 'pmap':
      return jax.tree.map(lambda x: x[0], state)
    return state

  def put_batch(self, batch: dict[str, np.ndarray]):
    if self.kind == 'pmap':
      n = len(self.mesh.local_devices)
      return jax.tree.map(lambda x: x.reshape((n, -1) + x.shape[1:]), batch)
    sharding = NamedSharding(self.mesh, P(AXIS))
    # Each host passes only its own rows; this is also the single-host path.
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), batch)


def make_launcher(step_fn, *, kind: str = 'shard_map', mesh: Mesh | None = None) -> Launcher:
  """Compiles ``step_fn(state, batch) -> (state, metrics)`` for every device of ``mesh``.

  The state is donated: the step updates it in place on the device.
  """
  mesh = make_mesh() if mesh is None else mesh
  if kind == 'shard_map':
    # check_vma=False gives the step pmap's semantics, so one function is right under both
    # launchers: with varying-manual-axes typing on, the replicated parameters' implicit pvary
    # transposes to a psum that adds to the all_gather transpose's sum, and the gradients of a
    # loss over all-gathered features come out multiplied by the device count.
    sharded = jax.shard_map(
      step_fn, mesh=mesh, in_specs=(P(), P(AXIS)), out_specs=(P(), P()), check_vma=False
    )
    compiled = jax.jit(sharded, donate_argnums=0)
  elif kind == 'pmap':
    compiled = jax.pmap(step_fn, axis_name=AXIS, donate_argnums=0, devices=list(mesh.local_devices))
  else:
    raise ValueError(f"config.parallel.launcher must be 'shard_map' or 'pmap', got {kind!r}")
  return Launcher(kind=kind, mesh=mesh, step=compiled)
