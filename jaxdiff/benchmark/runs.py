"""The benchmark's runs: configurations, checked, then run at each NFE into rows.

A configuration (`Entry`) is (sampler name, options, grid name, grid options);
its registry entry's NFE rule (`samplers.num_steps_for`, told where the grid
ends) gives the grid length for each NFE. The grid "learned" is fitted to each sampler at each NFE (`grids.learned`,
LD3) on training starts drawn apart from the benchmark's x_T
(`problems.training_pairs`), monotone in NFE (each fit knows the best one at
fewer steps). A configuration mistake (an unknown sampler, grid,
option or peer, a bad option value) is found by `check_entries` before anything
runs: each configuration is traced once with jax.eval_shape, without compiling.
What only the run itself shows (an NFE a configuration cannot spend, NaN/inf, a
wrong NFE count) is recorded in that run's row and the benchmark goes on.
"""

import dataclasses
import functools
import inspect
import pathlib
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff import grids, metrics, samplers
from jaxdiff.benchmark.problems import Problem, oracle_reference, training_pairs
from jaxdiff.schedules import Process

@dataclasses.dataclass(frozen=True)
class Entry:
  """One benchmark configuration: run(nfe) -> (x [B, D], info dict).

  info holds nfe_counted, steps, times (the evaluation times then the end, in
  the process's t), compile_s, run_s and stochastic. check(nfe) raises what
  run(nfe) would raise before it compiles or samples: UnreachableNFE where the
  configuration cannot spend this NFE, anything else for a mistake.
  """

  family: str  # "jaxdiff" or "diffusers"
  sampler: str
  options: dict
  grid: str
  grid_options: dict
  run: Callable
  check: Callable

  @property
  def label(self):
    words = [self.sampler, *(f"{k}={v}" for k, v in self.options.items()), self.grid,
             *(f"{k}={v}" for k, v in self.grid_options.items())]
    return " ".join(str(w) for w in words)


class UnreachableNFE(ValueError):
  """A configuration's NFE rule cannot spend this NFE (a row error, not a mistake)."""


def sampler_entry(problem: Problem, name: str, options=None, grid: str = "trailing",
                  grid_options=None) -> Entry:
  """A registered jaxdiff sampler on a named grid (grids.make_grid), or on the grid
  "learned" for it (`learned_grid`, grid_options its keywords).

  Raises:
    ValueError for an unknown sampler, grid or option name.
  """
  options, grid_options = dict(options or {}), dict(grid_options or {})
  sampler = samplers.get_sampler(name)
  samplers.check_options(name, options)
  if grid == "learned":
    valid = [p.name for fn in (learned_grid, grids.learned)
             for p in inspect.signature(fn).parameters.values()
             if p.kind is inspect.Parameter.KEYWORD_ONLY
             and p.name not in ("key", "starts", "smaller")]
    unknown = sorted(set(grid_options) - set(valid))
    if unknown:
      raise ValueError(f"the grid 'learned' takes the options {valid}, got unknown {unknown}")
  elif grid not in grids.GRIDS:
    raise ValueError(f"unknown grid {grid!r}; valid: {sorted(grids.GRIDS)} and 'learned'")

  def setup(nfe):
    """(N, the sampler with its options bound) for this NFE."""
    try:
      num_steps = samplers.num_steps_for(name, nfe, options, ends_at_zero=ends_at_zero())
    except ValueError as error:
      raise UnreachableNFE(str(error)) from error
    return num_steps, functools.partial(sampler, problem.denoise_fn, problem.process,
                                        prediction=problem.prediction, **options)

  def fixed_grid(num_steps):
    if grid == "learned":  # The starting grid of the fit.
      return grids.make_grid(problem.process, grid_options.get("init", "log_snr"), num_steps,
                             **dict(grid_options.get("init_options") or {}))
    return grids.make_grid(problem.process, grid, num_steps, **grid_options)

  def ends_at_zero():
    """Whether sigma = 0 where the grid ends (its end time does not depend on N)."""
    return samplers.base.ends_at_zero(problem.process, float(fixed_grid(1)[-1]))

  def check(nfe):
    num_steps, fn = setup(nfe)
    times = samplers.check_grid(fixed_grid(num_steps), problem.process, num_steps)
    jax.eval_shape(fn, problem.x_T, problem.key, times)

  fitted = {}  # The learned grids: N -> (times, held-out RMSE), for `learned`'s smaller.

  def run(nfe):
    num_steps, fn = setup(nfe)
    fit = {}
    if grid == "learned":
      smaller = min((f for n, f in fitted.items() if n < num_steps), key=lambda f: f[1],
                    default=None)
      times, fit = learned_grid(problem, lambda x, g: fn(x, problem.key, g)[0], num_steps,
                                smaller=smaller, **grid_options)
      fitted[num_steps] = (times, fit["fit_rmse"])
    else:
      times = fixed_grid(num_steps)  # [N + 1]
    times = samplers.check_grid(times, problem.process, num_steps)
    start = time.perf_counter()
    compiled = jax.jit(fn).lower(problem.x_T, problem.key, times).compile()
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    x, info = jax.block_until_ready(compiled(problem.x_T, problem.key, times))
    run_s = time.perf_counter() - start
    samplers.raise_if_nonfinite(info, times)
    return x, {**fit, "nfe_counted": int(info["nfe"]), "steps": num_steps,
               "times": np.asarray(times).tolist(), "compile_s": compile_s, "run_s": run_s,
               "stochastic": sampler.stochastic(sampler.resolve(options))}

  return Entry("jaxdiff", name, options, grid, grid_options, run, check)


def check_nfes(nfes):
  """The NFE values as a tuple of positive integers, or a ValueError."""
  nfes = tuple(nfes)
  bad = [n for n in nfes if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1]
  if not nfes or bad:
    raise ValueError(f"nfes must be a non-empty sequence of positive integers, got {nfes!r}")
  return nfes


def check_entries(entries, nfes):
  """Every configuration's mistakes, found before anything runs: a list of messages.

  An NFE that a configuration cannot spend is left to its row; a configuration
  that can spend none of them is a mistake.
  """
  mistakes = []
  for entry in entries:
    unreachable = []
    try:
      for nfe in check_nfes(nfes):
        try:
          entry.check(nfe)
        except UnreachableNFE as error:
          unreachable.append(f"NFE {nfe}: {error}")
      if len(unreachable) == len(nfes):
        raise ValueError("it can spend none of the NFEs asked for: " + "; ".join(unreachable))
    except Exception as error:  # pylint: disable=broad-except  # Every mistake is reported.
      mistakes.append(f"{entry.family} {entry.label}: {type(error).__name__}: {error}")
  return mistakes


def learned_grid(problem: Problem, sample_fn, num_steps: int, *, init: str = "log_snr",
                 init_options=None, other_starts=(), num_pairs: int = 4096, smaller=None,
                 **fit_options):
  """`grids.learned` started from the named grid and from the grids `other_starts` (names,
  on init's first and last network times), fitted on `training_pairs` (a quarter held out).

  smaller: (times, held-out RMSE) of the best fit at fewer steps on the same pairs, so that
    the fits are monotone in NFE in the order the benchmark runs them (increasing).

  Returns:
    (times [N + 1], info) with the held-out RMSE of the start and of the grid returned (as
    fit_rmse_init, fit_rmse), the candidate that won (fit_start) and the wall time fit_s.
  """
  init_grid = grids.make_grid(problem.process, init, num_steps, **dict(init_options or {}))
  ends = {"t_max": float(init_grid[0]), "t_min": float(init_grid[-2])}
  starts = [grids.make_grid(problem.process, name, num_steps, **ends) for name in other_starts]
  x_T, x_ref = training_pairs(problem, num_pairs)
  start = time.perf_counter()
  times, fit = grids.learned(sample_fn, x_T, x_ref, init_grid, starts=starts, smaller=smaller,
                             key=jax.random.fold_in(jax.random.PRNGKey(problem.seed), 2),
                             **fit_options)
  return times, {"fit_rmse_init": fit["rmse_init"], "fit_rmse": fit["rmse"],
                 "fit_start": fit["start"], "fit_s": time.perf_counter() - start}


def noise_to_signal(process: Process, t) -> float:
  """sigma(t) / alpha(t), the EDM noise level; 0 at the data end."""
  return 0.0 if t == 0 else float(process.noise_to_signal(t))


def run_entry(problem: Problem, entry: Entry, nfe: int, reference):
  """One run: the row of measurements and the samples (None on error)."""
  row = {"oracle": problem.name, "family": entry.family, "sampler": entry.sampler,
         "options": entry.options, "grid": entry.grid, "grid_options": entry.grid_options,
         "label": entry.label, "nfe": nfe, "seed": problem.seed, "status": "ok", "error": ""}
  try:
    x, info = entry.run(nfe)
    if info["nfe_counted"] != nfe:
      raise AssertionError(f"NFE mismatch: asked {nfe}, the sampler counted "
                           f"{info['nfe_counted']} network calls")
    if not np.all(np.isfinite(np.asarray(x))):
      raise FloatingPointError("the samples hold NaN or inf")
  except Exception as error:  # pylint: disable=broad-except  # Recorded, the benchmark goes on.
    row.update(status="error", error=f"{type(error).__name__}: {error}")
    return row, None
  times = info["times"]
  row.update(info, t_start=times[0], t_end=times[-1],
             sigma_end=info.get("sigma_end", noise_to_signal(problem.process, times[-1])))
  row.update(sample_metrics(problem, x, reference))
  return row, x


def sample_metrics(problem: Problem, x, reference):
  """rmse against the reference, sw2 to fresh data, nll under the true density."""
  squared = jnp.sum((x - reference) ** 2, axis=-1) / x.shape[-1]  # [B]
  scores = metrics.oracle_metrics(problem.eval_key, problem.mixture, x)
  return {"rmse": float(jnp.sqrt(jnp.mean(squared))), **scores}


def check_unique(entries):
  """Each configuration once: rows are grouped by label in the table and plot."""
  labels = [(entry.family, entry.label) for entry in entries]
  repeated = {label for label in labels if labels.count(label) > 1}
  if repeated:
    raise ValueError(f"configurations listed more than once: {sorted(repeated)}")


def row_key(row):
  """What identifies a run across an interrupted benchmark and its resumption."""
  return row["oracle"], row["family"], row["label"], row["nfe"]


def _save_npz(path, **arrays):
  """np.savez through a temporary file and a rename: the file is whole or absent."""
  partial = path.with_name(path.name + ".partial")
  with open(partial, "wb") as f:
    np.savez(f, **arrays)
  partial.replace(path)


def run_benchmark(problem: Problem, entries, nfes, *, reference=None, sample_dir=None,
                  log=print, finished=None, on_row=None):
  """Runs every entry at every NFE on one problem.

  Args:
    problem: the shared process, oracle, prediction and x_T.
    entries: Entry configurations (sampler_entry, peers.peer_entries).
    nfes: the NFE values.
    reference: [B, D] PF-ODE solution from x_T; oracle_reference by default.
    sample_dir: when given, writes problem.npz (x_T, reference) and an .npz per run.
    log: called with one progress line per run.
    finished: rows of an interrupted benchmark (`row_key` -> row), taken as they
      are instead of running again.
    on_row: called with each new row as soon as it is finished.

  Returns:
    (rows, reference): a list of row dicts, one per (entry, nfe), and [B, D].
  """
  check_unique(entries)
  finished = finished or {}
  if reference is None:
    reference = oracle_reference(problem.mixture, problem.process, problem.x_T)
  if sample_dir is not None:
    sample_dir = pathlib.Path(sample_dir)
    sample_dir.mkdir(parents=True, exist_ok=True)
    _save_npz(sample_dir / "problem.npz", x_T=problem.x_T, reference=reference)
  rows = []
  for entry in entries:
    for nfe in nfes:
      key = (problem.name, entry.family, entry.label, nfe)
      if key in finished:
        rows.append(finished[key])
        log(progress_line(len(rows), len(entries) * len(nfes), rows[-1]) + " (finished before)")
        continue
      row, x = run_entry(problem, entry, nfe, reference)
      rows.append(row)
      if sample_dir is not None and x is not None:
        _save_npz(sample_dir / f"{len(rows):03d}-nfe{nfe}.npz", x=np.asarray(x),
                  times=np.asarray(row["times"]), label=row["label"])
      if on_row is not None:
        on_row(row)
      log(progress_line(len(rows), len(entries) * len(nfes), row))
  return rows, reference


def progress_line(index, total, row):
  head = f"[{index}/{total}] {row['oracle']} {row['family']}: {row['label']} NFE {row['nfe']}"
  if row["status"] != "ok":
    return f"{head}: {row['error']}"
  mark = " (stochastic)" if row["stochastic"] else ""
  return (f"{head}: rmse {row['rmse']:.4g}{mark}, run {row['run_s']:.3f} s, compile "
          f"{row['compile_s']:.2f} s")
