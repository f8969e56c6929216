"""A dataset computed once over the mesh and written as .npy arrays, resumable bitwise.

What encode.py (the autoencoder's posteriors, `encode_run`) and reflow.py (the
teacher's noise-sample pairs, `reflow_run`) share: num records computed in
global batches of G, record i in batch i // G, each batch split over the mesh's
batch devices (and processes); the last batch is padded with copies of the
last record, which are dropped. Process 0 writes the rows of every column
(one .npy file each, float32 or int32 [N, ...]) into memmaps. Every save_every
batches it flushes them and then writes progress.json (the run's record, the
batches done and the caller's running state, JSON; atomically). A run killed
at any moment and started again on the same folder with the same settings
rewrites from the first batch not saved and ends bitwise equal to an
uninterrupted run, as long as batch b's rows are a function of b alone; a
folder holding another run's progress is refused, naming what differs. The
caller writes its record last (`finish`), which removes progress.json.
"""

import json
import math
import os
import pathlib

import jax
import numpy as np
from jax.experimental import multihost_utils

from jaxdiff import workdir
from jaxdiff.progress import progress_bar
from jaxdiff.train import sharding

PROGRESS = "progress.json"


def global_batch_size(batch_size: int, num: int, mesh) -> int:
  """batch_size rounded up to a multiple of the mesh's batch devices, and to at most num
  (rounded up likewise)."""
  devices = sharding.batch_devices(mesh)
  return -(-min(batch_size, num) // devices) * devices


def _host(x):
  """A global array (sharded over processes) whole on this host."""
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def _load_progress(out: pathlib.Path, run_record: dict):
  """(batches done, state) saved in out, or None where it holds no progress.

  Raises:
    ValueError when the progress there is of another run, naming what differs.
  """
  if not (out / PROGRESS).is_file():
    return None
  saved = json.loads((out / PROGRESS).read_text())
  differences = [f"{k}: {saved['run'].get(k)!r} there, {v!r} here"
                 for k, v in run_record.items() if saved["run"].get(k) != v]
  if differences:
    raise ValueError(f"{out} holds the progress of another run; it differs in "
                     f"{'; '.join(differences)}. Run the same command, or pass a new --out")
  return int(saved["batches_done"]), saved["state"]


def _save_progress(out: pathlib.Path, run_record: dict, batches_done: int, state, arrays):
  """The rows written so far flushed to disk, then progress.json naming them, atomically."""
  for array in arrays.values():
    array.flush()
  text = json.dumps({"run": run_record, "batches_done": batches_done, "state": state}, indent=1)
  workdir.write_atomically(out / PROGRESS, lambda f: f.write(text.encode()))


def write(out, run_record: dict, columns: dict, num: int, size: int, compute, *, state=None,
          accumulate=None, save_every: int = 10, progress: bool = True,
          desc: str = "writing"):
  """Computes and writes every batch of the dataset into out, or continues its progress.

  Args:
    out: the folder (claimed by the caller).
    run_record: what the run is, JSON data; a folder whose progress has another is refused.
    columns: {file name: (dtype, shape of one record)}: the .npy files [num, ...] written.
    num: the records; size: the global batch G (`global_batch_size`).
    compute: (index int [G], the padded record numbers of the batch) -> {file name: array
      [G, ...]}, global jax arrays (sharded over the processes) or host arrays.
    state, accumulate: a running state (JSON data) and (state, {file name: rows [n, ...]})
      -> state, called on each batch's rows in order; saved with the progress.
    save_every: batches between saves of the progress (0: only at the end).
    progress: show a bar (process 0), labelled desc.

  Returns:
    the final state.

  Raises:
    ValueError when out holds the progress of another run (naming what differs).
  """
  out = pathlib.Path(out)
  num_batches = math.ceil(num / size)
  run_record = json.loads(json.dumps({**run_record, "global_batch": size}))
  writes = jax.process_index() == 0
  saved = _load_progress(out, run_record)
  first, state = saved or (0, state)
  arrays = {}
  if writes:
    mode = "r+" if saved else "w+"
    arrays = {name: np.lib.format.open_memmap(out / name, mode, dtype, (num, *shape))
              for name, (dtype, shape) in columns.items()}
    if not saved:  # What the run is, before any batch: another command is refused from now on.
      _save_progress(out, run_record, 0, state, arrays)
  # A bar on a terminal, a line every 30 s in a log.
  bar = progress_bar(num_batches, first, enabled=progress and writes, every_seconds=30,
                            unit="batch", desc=desc)
  for b in range(first, num_batches):
    index = np.minimum(np.arange(b * size, (b + 1) * size), num - 1)  # Padded: the last record.
    n = min(size, num - b * size)
    rows = {name: _host(value)[:n] for name, value in compute(index).items()}  # [n, ...]
    if accumulate is not None:
      state = accumulate(state, rows)
    done = b + 1
    if writes:
      for name, value in rows.items():
        arrays[name][b * size:b * size + n] = value
      if done == num_batches or (save_every and done % save_every == 0):
        _save_progress(out, run_record, done, state, arrays)
    bar.update(1)
  bar.close()
  return state


def finish(out, record_name: str, record: dict):
  """Writes the dataset's record (process 0, atomically; last), then removes the progress."""
  if jax.process_index() != 0:
    return
  out = pathlib.Path(out)
  text = json.dumps(record, indent=1)
  workdir.write_atomically(out / record_name, lambda f: f.write(text.encode()))
  os.remove(out / PROGRESS)
