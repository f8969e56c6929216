"""Several processes running one program (one per host, or several on one machine): the
flags that start them and the output folder they share; train.py and sample.py use both.

Every process runs the same command with --coordinator, --num-processes and
--process-id (or the JAX_COORDINATOR_ADDRESS environment variable; --distributed
alone detects TPU pods, SLURM and Open MPI): `start` calls
jax.distributed.initialize, after which the mesh spans every process's devices.
`claimed_workdir` lets process 0 claim the output folder (`jaxdiff.workdir`) and
tells the others whether it could; they then use the same folder, which must be on
a filesystem they all see.
"""

import contextlib
import os
import pathlib

import jax
import numpy as np
from absl import flags
from jax.experimental import multihost_utils

from jaxdiff import workdir

_DISTRIBUTED = flags.DEFINE_bool("distributed", False, "Start jax.distributed, detecting the "
                                 "cluster (TPU pod, SLURM, Open MPI); implied by the flags below "
                                 "or JAX_COORDINATOR_ADDRESS.")
_COORDINATOR = flags.DEFINE_string("coordinator", None, "host:port of process 0's coordinator.")
_NUM_PROCESSES = flags.DEFINE_integer("num-processes", None, "Number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process-id", None, "This process's index, from 0.")
_HEARTBEAT = flags.DEFINE_integer("heartbeat-timeout", 100, "Seconds without a heartbeat "
                                  "after which the processes give up on a lost one.")


def start():
  """jax.distributed.initialize where the flags or the environment ask for it; SystemExit
  naming what is wrong."""
  given = (_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  if not (_DISTRIBUTED.value or any(v is not None for v in given)
          or os.environ.get("JAX_COORDINATOR_ADDRESS")):
    return
  try:
    jax.distributed.initialize(*given, heartbeat_timeout_seconds=_HEARTBEAT.value)
  except (ValueError, TypeError, RuntimeError) as error:
    raise SystemExit(f"cannot start the processes: {error}. Pass --coordinator host:port, "
                     "--num-processes N and --process-id i (0 <= i < N), or run where JAX "
                     "detects the cluster (nothing was written)") from None


@contextlib.contextmanager
def claimed_workdir(path, prefix: str, resume: bool, parent="runs"):
  """workdir.claim in process 0, the same folder in the others once claimed; yields it."""
  if jax.process_count() == 1:
    with workdir.claim(path, prefix, resume=resume, parent=parent) as out:
      yield out
    return
  if not path:
    raise SystemExit("several processes need --workdir, a folder they all see (nothing was "
                     "written)")
  if jax.process_index() == 0:
    with contextlib.ExitStack() as stack:
      out = None
      try:
        out = stack.enter_context(workdir.claim(path, prefix, resume=resume, parent=parent))
      finally:  # The others learn whether it worked, also when it did not.
        multihost_utils.broadcast_one_to_all(np.int32(out is not None))
      yield out
    return
  if not multihost_utils.broadcast_one_to_all(np.int32(0)):
    raise SystemExit(f"process 0 could not claim {path}; see its error")
  if not pathlib.Path(path).is_dir():
    raise SystemExit(f"process {jax.process_index()} does not see {path}, claimed by process 0: "
                     "--workdir must be on a filesystem every process shares")
  yield pathlib.Path(path)
