"""Parallelism: jit over a device Mesh with NamedShardings; the one module naming mesh axes.

A single device is a mesh of one. The train step is jitted with the state's
sharding (replicated here: every device holds the parameters) and the batch
split along its batch axis over the "data" axis; XLA inserts the gradient
all-reduce. The global batch is assembled from each process's local rows
(`global_batch`), so the same code runs on one CPU, several GPUs or many hosts.
"""

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA = "data"  # The batch axis.


def make_mesh(axes) -> Mesh:
  """A mesh over all devices from {"data": n}; n = -1 takes every device.

  Raises:
    ValueError when the axes do not multiply to the number of devices.
  """
  axes = dict(axes)
  if set(axes) != {DATA}:
    raise ValueError(f"mesh axes must be {{'{DATA}': n}} (n = -1: all devices), got {axes}")
  devices = jax.devices()
  size = axes[DATA]
  if size == -1:
    size = len(devices)
  if size != len(devices):
    raise ValueError(f"mesh {axes} needs {size} devices, but {len(devices)} are present "
                     f"({devices[0].platform}); use {{'{DATA}': -1}} for all of them")
  return Mesh(np.asarray(devices), (DATA,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def state_sharding(mesh: Mesh, state):
  """The train state's sharding: every leaf replicated."""
  return jax.tree.map(lambda _: replicated(mesh), state)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Stacked batches [k, B, ...]: B split over the data axis."""
  return NamedSharding(mesh, P(None, DATA))


def check_batch_size(mesh: Mesh, batch_size: int):
  """Raises ValueError unless the data axis divides the global batch."""
  devices = mesh.shape[DATA]
  if batch_size % devices:
    raise ValueError(f"batch_size {batch_size} must be divisible by the {devices} devices of "
                     f"the mesh's data axis")


def global_batch(local_batches, sharding: NamedSharding):
  """The global array of each leaf from this process's rows ([k, B_local, ...])."""
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local_batches)
