"""Data parallelism: the device mesh and the launchers that compile the one per-device train step.

The train step (``train.train_step``) is written once for *one device's shard* of the batch, with
named-axis collectives over the axis ``'data'``: features and labels are all-gathered so that the
losses see the global P×K batch, gradients and metrics are averaged with ``pmean``, and BatchNorm
statistics are synchronised because every BatchNorm gets ``axis_name='data'``. Two launchers compile
that same function (docs/design.md §6):

* ``'shard_map'`` (default): ``jax.jit(jax.shard_map(step))`` on a 1-D ``('data',)`` mesh of all
  devices (all hosts); the state is replicated, the batch is sharded along its first axis.
* ``'pmap'``: ``jax.pmap(step, axis_name='data')`` over the same devices; state and batch carry a
  leading axis of this process's devices.

How a batch is split: the input pipeline gives each host its own P/H identities (``host_slice``);
:func:`device_major_permutation` then orders the host's batch so that device d holds
``[photos | sketches]`` of its own P/(H·D) identities — the layout the two-stream models split in
halves. The global batch seen by the losses is the device-ordered concatenation; losses use labels
and modality flags, never positions, so the device count does not change any loss value.

Several hosts: every process runs the same program and calls :func:`initialize_distributed` first
(``main``/``tools.reproduce`` do it through ``runtime.configure``); ``jax.devices()`` then lists the
devices of all processes, the shard_map mesh spans them, and ``put_batch`` assembles the global batch
from each process's own rows. ``config.sampler.P`` must be a multiple of processes × local devices.
"""

import dataclasses
import logging
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

AXIS = 'data'

log = logging.getLogger(__name__)

# The variables by which jax.distributed.initialize() recognises a launcher it can read the process
# count and id from (jax/_src/clusters/{slurm,ompi}_cluster.py, `is_env_present`): a `srun` job step
# and an Open MPI `mpirun`. Auto-detection starts a multi-process job only when their process count
# is above 1, so a one-task SLURM allocation stays a plain single-process run.
_SLURM_VARS = (
  'SLURM_JOB_ID',
  'SLURM_STEP_NODELIST',
  'SLURM_NTASKS',
  'SLURM_PROCID',
  'SLURM_LOCALID',
)
_OMPI_URI, _OMPI_SIZE = 'OMPI_MCA_orte_hnp_uri', 'OMPI_COMM_WORLD_SIZE'


def _cluster_process_count() -> tuple[str, int] | None:
  """(launcher, process count) of a SLURM step or Open MPI run this process belongs to, if any."""
  if all(v in os.environ for v in _SLURM_VARS):
    return 'SLURM', int(os.environ['SLURM_NTASKS'])
  if _OMPI_URI in os.environ and _OMPI_SIZE in os.environ:
    return 'Open MPI', int(os.environ[_OMPI_SIZE])
  return None


def initialize_distributed(parallel_config=None) -> bool:
  """Joins a multi-process JAX job if the config or the environment asks for one.

  Must run before anything touches JAX's devices (JAX refuses afterwards). Returns whether this
  process is now part of a multi-process job. The decision, first match wins:

  1. ``config.parallel.num_processes == 1``: single process, the environment is not consulted.
  2. ``config.parallel.coordinator_address`` is ``'auto'``: ``jax.distributed.initialize()`` with
     arguments but those the config sets, i.e. JAX's own detection of every cluster it knows
     (Cloud TPU included).
  3. ``config.parallel.coordinator_address`` is ``host:port``, or else the environment variable
     ``JAX_COORDINATOR_ADDRESS`` is set (JAX reads it itself): initialise with that coordinator and
     ``num_processes``/``process_id`` from the config, where set (> 0 / >= 0), else from a SLURM or
     Open MPI environment.
  4. A SLURM job step (``srun``) or an Open MPI ``mpirun`` of more than one process: JAX detects the
     coordinator, process count and id from their variables.
  5. Otherwise: single process, nothing is called. (A Cloud TPU pod slice runs multi-host without
     it; use ``'auto'`` to initialise explicitly.)

  On CPU, cross-process collectives go through gloo (``jax_cpu_collectives_implementation``: JAX
  0.10's default; set here should it be unset).
  """
  get = lambda key, default: (
    parallel_config.get(key, default) if parallel_config is not None else default
  )
  address = get('coordinator_address', '') or ''
  num_processes = int(get('num_processes', 0))
  process_id = int(get('process_id', -1))
  if jax.distributed.is_initialized():
    return True  # e.g. a second runtime.configure in the same process
  if num_processes == 1:
    return False
  kwargs = {
    'num_processes': num_processes if num_processes > 0 else None,
    'process_id': process_id if process_id >= 0 else None,
  }
  cluster = _cluster_process_count()
  if address == 'auto':
    source = 'auto-detection (config.parallel.coordinator_address=auto)'
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
  elif address or os.environ.get('JAX_COORDINATOR_ADDRESS'):
    source = (
      'config.parallel.coordinator_address' if address else 'the JAX_COORDINATOR_ADDRESS variable'
    )
    if address:
      kwargs['coordinator_address'] = address
    if cluster is None and None in kwargs.values():
      raise ValueError(
        f"a coordinator is given ({source}) but not this process's place in the job: set "
        '--config.parallel.num_processes=N and --config.parallel.process_id=0..N-1 (different on '
        'every process), or launch with srun/mpirun, whose environment provides them.'
      )
  elif cluster is not None and cluster[1] > 1:
    source = f'the {cluster[0]} environment ({cluster[1]} processes)'
  else:
    return False
  if jax.config.jax_cpu_collectives_implementation is None:
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  jax.distributed.initialize(**kwargs)
  log.info(
    'multi-process JAX from %s: process %d of %d, %d local / %d global devices',
    source,
    jax.process_index(),
    jax.process_count(),
    jax.local_device_count(),
    jax.device_count(),
  )
  return True


def check_identity_split(
  P: int, num_processes: int | None = None, local_devices: int | None = None
):
  """Raises unless the P identities of a batch split evenly over every process's devices.

  Each process reads P/num_processes identities of the P×K plan and gives each of its devices
  P/(num_processes·local_devices) of them (docs/design.md §6). Defaults: this job's counts.
  """
  num_processes = jax.process_count() if num_processes is None else num_processes
  local_devices = jax.local_device_count() if local_devices is None else local_devices
  n = num_processes * local_devices
  if P % n:
    raise ValueError(
      f'config.sampler.P = {P} identities per batch cannot be split over {num_processes} '
      f'process(es) × {local_devices} local device(s): P must be a multiple of {n} (e.g. '
      f'--config.sampler.P={max(n, P - P % n)}).'
    )


def make_mesh(devices=None) -> Mesh:
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices), (AXIS,))


def device_major_permutation(num_ids: int, K: int, num_devices: int) -> np.ndarray:
  """Row permutation turning ``[photos(num_ids·K) | sketches(num_ids·K)]`` into device-major order.

  Device d then receives ``[photos | sketches]`` of identities ``d·n … (d+1)·n − 1`` (n = num_ids/D).
  """
  if num_ids % num_devices:
    processes = jax.process_count()
    n = processes * num_devices
    raise ValueError(
      f'{num_ids} identities per process (config.sampler.P / {processes} process(es)) cannot be '
      f'split over {num_devices} local devices: choose config.sampler.P as a multiple of the device '
      f'count of all processes, processes × local devices = {n} (e.g. --config.sampler.P='
      f'{n * max(1, num_ids // num_devices)}).'
    )
  per = num_ids // num_devices
  rows = []
  for d in range(num_devices):
    ids = np.arange(d * per, (d + 1) * per)
    photo_rows = (ids[:, None] * K + np.arange(K)[None, :]).reshape(-1)
    rows += [photo_rows, photo_rows + num_ids * K]
  return np.concatenate(rows)


def device_order(batch: dict, perm: np.ndarray) -> dict:
  """Applies ``device_major_permutation`` to every array of a host batch.

  Arrays of 2·P·K rows ([photos | sketches]) take ``perm``; those of P·K rows (a fused batch's
  photos, sketch sets and their validity, one row per slot) take its photo part, which orders the
  slots of each device's identities the same way.
  """
  photo_perm = perm[perm < len(perm) // 2]
  return {k: v[perm] if len(v) == len(perm) else v[photo_perm] for k, v in batch.items()}


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
    """The state as one unreplicated pytree, e.g. for evaluation or saving.

    shard_map: the replicated arrays themselves. pmap: one process's copy, ``x[0]``; with several
    processes that would be a process-local array, which orbax refuses to save in a multi-process
    job, so there the local copies become one array replicated over the devices of all processes,
    as under shard_map.
    """
    if self.kind != 'pmap':
      return state
    if jax.process_count() == 1:
      return jax.tree.map(lambda x: x[0], state)
    replicated = NamedSharding(self.mesh, P())
    return jax.tree.map(
      lambda x: jax.make_array_from_single_device_arrays(
        x.shape[1:], replicated, [shard.data[0] for shard in x.addressable_shards]
      ),
      state,
    )

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
    # The mesh's devices of every process: pmap given only this process's devices would average
    # over them alone, and each host would train its own model.
    compiled = jax.pmap(step_fn, axis_name=AXIS, donate_argnums=0, devices=list(mesh.devices.flat))
  else:
    raise ValueError(f"config.parallel.launcher must be 'shard_map' or 'pmap', got {kind!r}")
  return Launcher(kind=kind, mesh=mesh, step=compiled)
