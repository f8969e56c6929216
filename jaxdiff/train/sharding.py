"""Parallelism: jit over a device Mesh with NamedShardings; the one module naming mesh axes.

The mesh has two axes (a single device is a mesh of 1 x 1):

  data  data parallelism: the batch is split over it, the state replicated;
  fsdp  fully sharded data parallelism (ZeRO-3; Rajbhandari et al. 2020): the
        batch is split over it too, and so is every large array of the state
        (parameters, each EMA, Adam's moments), along one of its dimensions
        (`state_spec`). XLA gathers a layer's parameters where the step uses
        them and reduce-scatters their gradients.

The train step is jitted with these shardings (`step.jit_train_step`) and XLA
inserts the collectives; the global batch is assembled from each process's
local rows (`global_batch`), so the same code runs on one CPU, several GPUs or
many hosts. Orbax restores a checkpoint onto whatever shardings the state is
given, so a run saved on one mesh resumes or samples on another.
"""

import math

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA = "data"
FSDP = "fsdp"
AXES = (DATA, FSDP)
BATCH_AXES = (DATA, FSDP)  # The batch is split over both.
# Arrays smaller than this stay replicated under FSDP: gathering them would cost
# more in latency than they save in memory (all of them together are well under 1%
# of the networks' parameters).
MIN_SHARDED_SIZE = 2**14


def make_mesh(axes, devices=None) -> Mesh:
  """A (data, fsdp) mesh from {"data": n, "fsdp": m}: an absent axis is 1, and one
  axis may be -1, taking the devices the other leaves.

  Args:
    axes: the config's mesh.
    devices: the devices to use; by default every device of every process.

  Raises:
    ValueError when an axis is unknown or not a positive integer (or -1), or when
    the axes do not multiply to the number of devices.
  """
  devices = list(jax.devices() if devices is None else devices)
  axes = dict(axes)
  unknown = sorted(set(axes) - set(AXES))
  if unknown:
    raise ValueError(f"unknown mesh axes {unknown}: the mesh has the axes {list(AXES)}, e.g. "
                     f"{{'{DATA}': -1, '{FSDP}': 1}} (-1: the devices the other axis leaves)")
  sizes = {name: axes.get(name, 1) for name in AXES}
  for name, size in sizes.items():
    if not isinstance(size, int) or isinstance(size, bool) or not (size >= 1 or size == -1):
      raise ValueError(f"mesh axis {name!r} must be a positive integer or -1, got {size!r}")
  free = [name for name, size in sizes.items() if size == -1]
  if len(free) > 1:
    raise ValueError(f"only one mesh axis may be -1, got {axes}")
  if free:
    fixed = math.prod(size for size in sizes.values() if size != -1)
    if len(devices) % fixed:
      raise ValueError(f"mesh {axes}: {len(devices)} devices are not a multiple of {fixed}")
    sizes[free[0]] = len(devices) // fixed
  if math.prod(sizes.values()) != len(devices):
    raise ValueError(f"mesh {axes} needs {math.prod(sizes.values())} devices, but "
                     f"{len(devices)} are present ({devices[0].platform}); use -1 for one axis "
                     f"to take all of them, e.g. {{'{DATA}': -1, '{FSDP}': {sizes[FSDP]}}}")
  shape = tuple(sizes[name] for name in AXES)
  # The physical topology's order (ICI rings on TPU, NVLink on GPU) where it has one.
  grid = mesh_utils.create_device_mesh(shape, devices, allow_split_physical_axes=True)
  return Mesh(grid, AXES)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def state_spec(shape, fsdp_size: int) -> P:
  """One array's PartitionSpec under FSDP: its largest dimension that fsdp_size
  divides is split over the fsdp axis; arrays under MIN_SHARDED_SIZE elements, or
  with no such dimension, are replicated."""
  if fsdp_size == 1 or math.prod(shape) < MIN_SHARDED_SIZE:
    return P()
  divisible = [axis for axis, n in enumerate(shape) if n % fsdp_size == 0]
  if not divisible:
    return P()
  axis = max(divisible, key=lambda a: shape[a])
  return P(*(FSDP if a == axis else None for a in range(len(shape))))


def state_sharding(mesh: Mesh, state):
  """The train state's shardings (`state_spec` for every leaf): replicated over the
  data axis, split over the fsdp axis."""
  return jax.tree.map(lambda a: NamedSharding(mesh, state_spec(a.shape, mesh.shape[FSDP])),
                      state)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Stacked batches [k, B, ...]: B split over the data and fsdp axes."""
  return NamedSharding(mesh, P(None, BATCH_AXES))


def batch_devices(mesh: Mesh) -> int:
  """How many ways the batch is split: the devices along the batch axes."""
  return math.prod(mesh.shape[name] for name in BATCH_AXES)


def check_batch_size(mesh: Mesh, batch_size: int, grad_accum: int = 1):
  """Raises ValueError unless every micro-batch splits evenly over the batch axes."""
  devices = batch_devices(mesh)
  if batch_size % (devices * grad_accum):
    micro = f" times grad_accum = {grad_accum}" if grad_accum > 1 else ""
    raise ValueError(f"batch_size {batch_size} must be divisible by the {devices} devices of "
                     f"the mesh's batch axes {dict(mesh.shape)}{micro}")


def bytes_per_device(arrays, shardings) -> int:
  """The bytes one device holds of arrays (ShapeDtypeStructs) under shardings."""
  return sum(math.prod(s.shard_shape(a.shape)) * np.dtype(a.dtype).itemsize
             for a, s in zip(jax.tree.leaves(arrays), jax.tree.leaves(shardings)))


def global_batch(local_batches, sharding: NamedSharding):
  """The global array of each leaf from this process's rows ([k, B_local, ...])."""
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local_batches)
