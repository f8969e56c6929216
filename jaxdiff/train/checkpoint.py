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

What is saved is checked: a state holding a NaN or inf is never saved (the run
stops, naming the array), and the run record holds a checksum of every array
(`fingerprint`: one device computation at save time), compared on every
restore. A checkpoint whose bytes were garbled, or that was cut short, counts
as unreadable: training sets it aside (`restore_latest`); the programs that only
read (sample.py, bpd.py, the studies: `read_newest`, through `generate.load`)
skip it with a warning, moving nothing, for the newest one that reads, reading
each checkpoint's arrays once. A checkpoint written before checksums existed
restores unverified.

A run that measures its samples' quality (config `eval`) saves that quality with
the checkpoints of the steps it was measured at (Orbax's per-checkpoint metrics),
and its manager keeps, besides the last `keep`, the checkpoint of the best (lowest)
value (`best`): pruning never deletes the best checkpoint so far.
"""

import pathlib
import shutil
import time
import warnings

import grain
import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

STATE, DATA, RUN = "state", "data", "run"
DIRECTORY = "checkpoints"
CHECKSUMS = "checksums"  # The run record's {array name: checksum}; absent in older ones.


class ChecksumMismatch(ValueError):
  """Arrays read from a checkpoint differ from those that were saved."""


class WriteError(OSError):
  """A checkpoint could not be written (a full disk, a quota): its one-line reason."""


def manager(workdir, *, keep: int | None, asynchronous: bool = True, directory=DIRECTORY,
            items=(STATE, DATA, RUN), best: str | None = None) -> ocp.CheckpointManager:
  """The CheckpointManager of <workdir>/<directory> (checkpoints/: the training state's) with
  these items, keeping the last `keep` steps (None: all), and where `best` names a metric
  saved with checkpoints (`save`'s metrics), also the one of its lowest value."""
  if best is None:
    keeping = {"max_to_keep": keep}
  else:
    policies = ocp.checkpoint_managers
    lowest = lambda metrics: metrics.get(best, float("inf"))
    # best_fn makes Orbax write the metrics with a checkpoint (and read them back on resume);
    # the preservation policy says what pruning keeps.
    keeping = {"best_fn": lowest, "best_mode": "min",
               "preservation_policy": policies.AnyPreservationPolicy([
                   policies.LatestN(keep),
                   policies.BestN(get_metric_fn=lowest, reverse=True, n=1,
                                  keep_checkpoints_without_metrics=False)])}
  options = ocp.CheckpointManagerOptions(enable_async_checkpointing=asynchronous, **keeping)
  return ocp.CheckpointManager(pathlib.Path(workdir).absolute() / directory, options=options,
                               item_names=tuple(items))


def save(checkpoints: ocp.CheckpointManager, step: int, state, iterator, run: dict,
         metrics: dict | None = None):
  """Starts writing checkpoint `step` (returns before the arrays are on disk), the checksum of
  every array added to its run record; metrics ({name: float}, e.g. the sample quality at this
  step) saved with it for the manager's `best`.

  Raises:
    FloatingPointError naming the arrays that hold a NaN or inf: nothing is written.
    WriteError when the previous checkpoint's asynchronous write failed.
  """
  finite, checksums = fingerprint(state)
  bad = [name for name, ok in finite.items() if not ok]
  if bad:
    raise FloatingPointError(
        f"the training state holds NaN or inf at step {step} (in {', '.join(bad[:3])}"
        f"{f' and {len(bad) - 3} more arrays' if len(bad) > 3 else ''}); training stopped "
        f"without saving it. {kept(checkpoints)}")
  try:
    checkpoints.save(step, args=ocp.args.Composite(**{
        STATE: ocp.args.StandardSave(state), DATA: grain.checkpoint.CheckpointSave(iterator),
        RUN: ocp.args.JsonSave({**run, CHECKSUMS: checksums})}), metrics=metrics)
  except (OSError, ValueError, RuntimeError) as error:  # Orbax re-raises a failed write here.
    raise _write_error(checkpoints, error) from None


def finish(checkpoints: ocp.CheckpointManager):
  """Waits for the last checkpoint's write and closes the manager.

  Raises:
    WriteError when the write failed.
  """
  try:
    checkpoints.wait_until_finished()
  except (OSError, ValueError, RuntimeError) as error:
    raise _write_error(checkpoints, error) from None
  finally:
    checkpoints.close()


def _write_error(checkpoints, error) -> WriteError:
  written = sorted(int(p.name) for p in pathlib.Path(checkpoints.directory).glob("*")
                   if p.name.isdigit())
  return WriteError(f"cannot write a checkpoint in {checkpoints.directory}: "
                    f"{str(error).splitlines()[0]}; training stopped. "
                    + (f"The last complete checkpoint ({written[-1]}) is kept." if written
                       else "No checkpoint was written."))


def kept(checkpoints: ocp.CheckpointManager) -> str:
  """What a stopped run leaves: its last checkpoint (every saved one is finite), or none."""
  step = checkpoints.latest_step()
  if step is None:
    return f"No checkpoint was written in {checkpoints.directory}."
  return f"The last good checkpoint ({step}) is kept in {checkpoints.directory}."


def best(checkpoints: ocp.CheckpointManager, metric: str) -> tuple[int, float] | None:
  """(step, value) of the kept checkpoint with the lowest `metric` saved with it, or None."""
  found = [(metrics[metric], step) for step in checkpoints.all_steps()
           if (metrics := checkpoints.metrics(step)) and metric in metrics]
  if not found:
    return None
  value, step = min(found)
  return step, float(value)


def fingerprint(tree) -> tuple[dict, dict]:
  """({name: all finite}, {name: checksum}) of every array in a pytree, named by its path
  ("params/dense_out/kernel"), from one jitted computation on the arrays where they are."""
  names = [_name(path) for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]
  finite, checksums = jax.device_get(_fingerprint(tree))
  return dict(zip(names, finite.tolist())), dict(zip(names, checksums.tolist()))


@jax.jit
def _fingerprint(tree):
  leaves = jax.tree.leaves(tree)
  return (jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]),
          jnp.stack([_checksum(x) for x in leaves]))


def _checksum(x) -> jax.Array:
  """sum_i w_i word_i mod 2^32 over the array's bytes read as words, with an odd weight w_i
  per position: a change of any one word changes it, and it does not depend on how the
  array is split over devices (integer sums in any order agree)."""
  if x.dtype == jnp.bool_:
    words = x.astype(jnp.uint32)
  else:
    unsigned = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint32}[x.dtype.itemsize]
    words = jax.lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32)
  words = words.ravel()
  weights = (2 * jnp.arange(words.size, dtype=jnp.uint32) + 1) * jnp.uint32(0x9E3779B1)
  return jnp.sum(words * weights, dtype=jnp.uint32)


def _name(path) -> str:
  return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))))
                  for k in path)


def verify(step_dir, state, recorded: dict | None):
  """ChecksumMismatch unless every array of `state` has the checksum recorded when step_dir
  was saved ({name: checksum}; None: saved before checksums existed, nothing to compare)."""
  if recorded is None:
    return
  checksums = fingerprint(state)[1]
  bad = [name for name, value in recorded.items() if checksums.get(name) != value]
  if bad:
    raise ChecksumMismatch(
        f"{len(bad)} of the {len(recorded)} arrays read from {step_dir} differ from those "
        f"saved (their checksums; first {bad[0]}): its files were damaged after writing")


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
      verify(pathlib.Path(checkpoints.directory) / str(step), restored[STATE],
             run.get(CHECKSUMS))
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


def candidates(path) -> list[pathlib.Path]:
  """The complete checkpoints (state/ and run/ present) a path names, newest first: a
  training workdir's or a checkpoints/ folder's steps, or one step's folder.

  Raises:
    FileNotFoundError saying what was looked for.
  """
  path = pathlib.Path(path).absolute()
  if (path / RUN).is_dir() and (path / STATE).is_dir():
    return [path]
  folder = path / DIRECTORY if (path / DIRECTORY).is_dir() else path
  steps = sorted((int(p.name) for p in folder.glob("*") if p.name.isdigit()
                  and (p / RUN).is_dir() and (p / STATE).is_dir()), reverse=True)
  if not steps:
    raise FileNotFoundError(f"no complete checkpoint in {path}: expected a training workdir "
                            f"(with {DIRECTORY}/<step>/), its {DIRECTORY}/ folder, or one "
                            "<step>/ folder holding state/ and run/")
  return [folder / str(step) for step in steps]


def read_newest(path, build=lambda run: run, restore=lambda step_dir, built: None):
  """(step folder, built, restored) of the newest checkpoint at path (`candidates`) that
  reads: its run record read, built = build(run record), restored = restore(step folder,
  built). A checkpoint whose record or arrays cannot be read (`restore` raises: damaged
  files, checksums that differ) is skipped with a warning naming it and why, left where it
  is, for the one before; training's `restore_latest` sets such ones aside instead.

  build: run record -> what restore needs (e.g. the Experiment); whatever it raises (a bad
    option of the user's) propagates.

  Raises:
    FileNotFoundError saying what was looked for, or why each checkpoint there cannot be read.
  """
  found = candidates(path)
  problems = []
  for step_dir in found:
    try:
      run = read_run(step_dir)
    except FileNotFoundError as error:
      problems.append(_problem(step_dir, error, found))
      continue
    built = build(run)
    try:
      return step_dir, built, restore(step_dir, built)
    except Exception as error:  # pylint: disable=broad-except  # Any unreadable checkpoint.
      problems.append(_problem(step_dir, error, found))
  raise FileNotFoundError(f"no checkpoint in {pathlib.Path(path).absolute()} can be read: "
                          f"{'; '.join(problems)}")


def _problem(step_dir, error, found) -> str:
  """The step folder and why it cannot be read, in one line; a warning unless it is the last
  one to try (then FileNotFoundError names it)."""
  problem = f"{step_dir} ({type(error).__name__}: {str(error)[:300]})"
  if step_dir != found[-1]:
    warnings.warn(f"checkpoint {problem} cannot be read; skipping it (left as it is) for the "
                  "one before")
  return problem


def find(path) -> pathlib.Path:
  """The newest complete checkpoint at path (`candidates`) whose run record reads; its arrays
  are not read (`restore_state` verifies them where they are read).

  Raises:
    FileNotFoundError saying what was looked for, or why no run record there reads.
  """
  return read_newest(path)[0]


def read_run(step_dir, item: str = RUN) -> dict:
  """The run record (config, data spec, version) of one checkpoint folder: its JSON item."""
  path = pathlib.Path(step_dir).absolute() / item
  try:
    with ocp.Checkpointer(ocp.JsonCheckpointHandler()) as checkpointer:
      return checkpointer.restore(path)
  except (OSError, ValueError) as error:
    raise FileNotFoundError(f"cannot read the run record {path} of checkpoint {step_dir}: "
                            f"{error}") from error


def restore_state(step_dir, abstract_state=None):
  """The TrainState of one checkpoint folder, verified against the checksums its run record
  holds, onto abstract_state's structure and shardings; leaves without a sharding go to this
  process's first device (whatever mesh saved them). abstract_state None: the arrays as
  saved (a tree of dicts), from the checkpoint's metadata.

  Raises:
    ChecksumMismatch when an array read differs from the one saved; whatever Orbax raises
    when the folder cannot be read.
  """
  state = restore_arrays(pathlib.Path(step_dir).absolute() / STATE, abstract_state)
  verify(step_dir, state, read_run(step_dir).get(CHECKSUMS))
  return state


def restore_arrays(path, abstract=None):
  """The pytree of arrays of one StandardSave item folder, onto abstract's structure and
  shardings; leaves without a sharding go to this process's first device. abstract None:
  the arrays as saved (a tree of dicts), from the item's metadata."""
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  with ocp.StandardCheckpointer() as checkpointer:
    if abstract is None:
      abstract = checkpointer.metadata(path).item_metadata
    abstract = jax.tree.map(  # (The metadata's sharding is the saving mesh's.)
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=(
            a.sharding if isinstance(a, jax.ShapeDtypeStruct) else None) or device),
        abstract)
    return checkpointer.restore(path, abstract)
