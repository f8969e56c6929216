"""Grids fitted to a trained model, saved beside its checkpoint (fit_grids.py writes them,
sample.py reads them).

A fitted grid is the LD3 grid (`grids.learned_table`, Tong et al. 2024, "Learning to
Discretize Denoising Diffusion ODEs") of one sampler, with its options, at one NFE, for
the network of one checkpoint: the file

    <step dir>/grids/<sampler>-<options hash>-nfe<NFE>.json

holding the grid [N + 1], the process it was fitted for (`process_fingerprint`), the
sampler, its options (those that differ from the sampler's defaults: `canonical_options`,
whose JSON's SHA-256 the hash abbreviates), the NFE, the held-out error reached and the
starting grid's, and how the fit ran (its teacher, pairs, starts). `load` refuses a file
whose process, sampler, options, NFE or grid length differs from the run that asks for it,
naming the file; `save` never replaces one unless told to.
"""

import hashlib
import json
import math
import pathlib

import numpy as np

from jaxdiff import samplers, workdir
from jaxdiff.schedules import Process

FOLDER = "grids"
# The times at which a process's log-SNR is compared (fractions of [t_min, t_max]).
_PROBES = np.linspace(0.0, 1.0, 9)


def canonical_options(sampler: str, options: dict) -> dict:
  """The options that differ from the sampler's defaults, sorted by name: {} and
  {"order": 3} name the same run of a sampler whose default order is 3.

  Raises:
    ValueError for an unknown sampler or option (samplers.check_options).
  """
  defaults = samplers.get_sampler(sampler).resolve({})
  samplers.check_options(sampler, options)
  return {name: options[name] for name in sorted(options)
          if name not in defaults or options[name] != defaults[name]}


def path_for(step_dir, sampler: str, options: dict, nfe: int) -> pathlib.Path:
  """<step_dir>/grids/<sampler>-<first 8 hex digits of the options' SHA-256>-nfe<NFE>.json."""
  text = json.dumps(canonical_options(sampler, options), sort_keys=True)
  digest = hashlib.sha256(text.encode()).hexdigest()[:8]
  return pathlib.Path(step_dir) / FOLDER / f"{sampler}-{digest}-nfe{nfe}.json"


def process_fingerprint(process: Process) -> dict:
  """The process as a fitted grid records it: its class, time interval and log-SNR at nine
  times spread over that interval (what the grid's times mean)."""
  times = process.t_min + _PROBES * (process.t_max - process.t_min)
  return {"type": type(process).__name__, "t_min": float(process.t_min),
          "t_max": float(process.t_max),
          "log_snr": [float(process.log_snr(t)) for t in times]}


def _same_process(recorded: dict, process: Process) -> bool:
  now = process_fingerprint(process)
  return (recorded.get("type") == now["type"]
          and np.allclose([recorded.get("t_min", math.nan), recorded.get("t_max", math.nan)],
                          [now["t_min"], now["t_max"]], rtol=1e-6)
          and np.allclose(recorded.get("log_snr", [math.nan]), now["log_snr"], rtol=1e-5,
                          atol=1e-5))


def save(path, record: dict, *, force: bool = False) -> None:
  """Writes the record as JSON, atomically (a temporary file renamed onto path).

  Raises:
    FileExistsError naming the file where one is there and force is False.
  """
  path = pathlib.Path(path)
  if path.exists() and not force:
    raise FileExistsError(f"{path} holds a fitted grid already; pass --force to replace it")
  text = json.dumps(record, indent=1) + "\n"
  workdir.write_atomically(path, lambda f: f.write(text.encode()))


def load(path, process: Process, sampler: str, options: dict, nfe: int,
         num_steps: int) -> np.ndarray:
  """The grid [num_steps + 1] of a fitted grid file, checked against the run that will use
  it: the same process, sampler, options and NFE, and num_steps + 1 times.

  Raises:
    ValueError naming the file and what differs.
  """
  try:
    record = json.loads(pathlib.Path(path).read_text())
    times = np.asarray(record["grid"], np.float32)
  except (OSError, ValueError, KeyError, TypeError) as error:
    raise ValueError(f"fitted grid {path} does not read: {error}") from None
  if not _same_process(record.get("process", {}), process):
    raise ValueError(f"fitted grid {path} was fitted for another process "
                     f"({record.get('process')}); this run's is {process_fingerprint(process)}. "
                     "Fit one for it (fit_grids.py) or pass --grid")
  wanted = {"sampler": sampler, "options": canonical_options(sampler, options), "nfe": nfe}
  found = {name: record.get(name) for name in wanted}
  if found != wanted:
    raise ValueError(f"fitted grid {path} is for {found}, not {wanted}")
  if times.shape != (num_steps + 1,):
    raise ValueError(f"fitted grid {path} has {times.size} times; {sampler} at NFE {nfe} "
                     f"needs a grid of {num_steps + 1} (N = {num_steps})")
  return times
