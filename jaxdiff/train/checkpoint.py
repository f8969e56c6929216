"""Checkpoints: Orbax's CheckpointManager under <workdir>/checkpoints/<step>/.

Each checkpoint holds three items:
  state  the TrainState (`StandardSave`: every array, sharded or not);
  data   the Grain iterator's position (`grain.checkpoint.CheckpointSave`), so
         a resumed run reads exactly the batches the uninterrupted one would;
  run    JSON: the config, the data's DataSpec and the jaxdiff version, so that
         sample.py knows which process and network the weights belong to.
Orbax writes a checkpoint into `<step>.orbax-checkpoint-tmp` and renames it
only when every item is complete, asynchronously (training goes on while the
arrays are written); a process killed mid-write leaves only that temporary
folder, which Orbax ignores and later replaces. A complete-looking checkpoint
that cannot be read is moved to <workdir>/checkpoints-unreadable/ (kept, not
deleted) with a warning, and the previous one is used.
"""

import pathlib
import shutil
import time
import warnings

import grain
import jax
import orbax.checkpoint as ocp

STATE, DATA, RUN = "state", "data", "run"
DIRECTORY = "checkpoints"


def manager(workdir, *, keep: int, asynchronous: bool = True) -> ocp.CheckpointManager:
  """The CheckpointManager of <workdir>/checkpoints, keeping the last `keep`."""
  options = ocp.CheckpointManagerOptions(max_to_keep=keep,
                                         enable_async_checkpointing=asynchronous)
  return ocp.CheckpointManager(pathlib.Path(workdir).absolute() / DIRECTORY, options=options,
                               item_names=(STATE, DATA, RUN))


def save(checkpoints: ocp.CheckpointManager, step: int, state, iterator, run: dict):
  """Starts writing checkpoint `step` (returns before the arrays are on disk)."""
  checkpoints.save(step, args=ocp.args.Composite(**{
      STATE: ocp.args.StandardSave(state), DATA: grain.checkpoint.CheckpointSave(iterator),
      RUN: ocp.args.JsonSave(run)}))


def restore_latest(workdir, checkpoints: ocp.CheckpointManager, abstract_state, iterator,
                   check_run=None):
  """(state, run record) of the newest readable checkpoint, the iterator set to its
  position; None when there is none. Unreadable ones are set aside with a warning.

  Args:
    abstract_state: the TrainState's structure (ShapeDtypeStructs with shardings).
    iterator: the data iterator, restored in place.
    check_run: called with each checkpoint's run record before its arrays are read;
      whatever it raises (e.g. a config mismatch) propagates, the checkpoint untouched.
  """
  for step in sorted(checkpoints.all_steps(), reverse=True):
    try:
      run = checkpoints.restore(step, args=ocp.args.Composite(**{RUN: ocp.args.JsonRestore()}))[RUN]
    except Exception as error:  # pylint: disable=broad-except  # Any unreadable record.
      _set_aside(workdir, checkpoints, step, error)
      continue
    if check_run is not None:
      check_run(run)
    try:
      restored = checkpoints.restore(step, args=ocp.args.Composite(**{
          STATE: ocp.args.StandardRestore(abstract_state),
          DATA: grain.checkpoint.CheckpointRestore(iterator)}))
    except Exception as error:  # pylint: disable=broad-except  # Any unreadable checkpoint.
      _set_aside(workdir, checkpoints, step, error)
      continue
    return restored[STATE], run
  return None


def _set_aside(workdir, checkpoints, step, error):
  """Moves checkpoint `step` to <workdir>/checkpoints-unreadable/, with a warning."""
  aside = pathlib.Path(workdir) / "checkpoints-unreadable" / f"{step}-{int(time.time())}"
  aside.parent.mkdir(exist_ok=True)
  shutil.move(str(pathlib.Path(checkpoints.directory) / str(step)), aside)
  warnings.warn(f"checkpoint {step} cannot be read ({type(error).__name__}: "
                f"{str(error)[:300]}); moved it to {aside} and trying the one before")
  checkpoints.reload()


def find(path) -> pathlib.Path:
  """The checkpoint a path names: a training workdir or its checkpoints/ folder (the
  latest complete step), or one step's folder.

  Raises:
    FileNotFoundError saying what was looked for.
  """
  path = pathlib.Path(path).absolute()
  if (path / RUN).is_dir() and (path / STATE).is_dir():
    return path
  folder = path / DIRECTORY if (path / DIRECTORY).is_dir() else path
  steps = sorted((int(p.name) for p in folder.glob("*") if p.name.isdigit()
                  and (p / RUN).is_dir() and (p / STATE).is_dir()), reverse=True)
  if not steps:
    raise FileNotFoundError(f"no complete checkpoint in {path}: expected a training workdir "
                            f"(with {DIRECTORY}/<step>/), its {DIRECTORY}/ folder, or one "
                            "<step>/ folder holding state/ and run/")
  return folder / str(steps[0])


def read_run(step_dir) -> dict:
  """The run record (config, data spec, version) of one checkpoint folder."""
  path = pathlib.Path(step_dir).absolute() / RUN
  try:
    with ocp.Checkpointer(ocp.JsonCheckpointHandler()) as checkpointer:
      return checkpointer.restore(path)
  except (OSError, ValueError) as error:
    raise FileNotFoundError(f"cannot read the run record {path} of checkpoint {step_dir}: "
                            f"{error}") from error


def restore_state(step_dir, abstract_state):
  """The TrainState of one checkpoint folder, onto abstract_state's structure and shardings;
  leaves without a sharding go to this process's first device (whatever mesh saved them)."""
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  abstract_state = jax.tree.map(
      lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=getattr(a, "sharding", None)
                                     or device), abstract_state)
  with ocp.StandardCheckpointer() as checkpointer:
    return checkpointer.restore(pathlib.Path(step_dir).absolute() / STATE, abstract_state)
