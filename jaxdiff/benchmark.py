"""NFE benchmark: samplers x time grids x numbers of network evaluations on the oracle.

Every sampler runs with the exact denoiser of a Gaussian mixture (`jaxdiff.oracle`),
so its error is the discretization error alone. Each run is scored by
  rmse  sqrt(mean_b ||x_b - x_ref,b||^2 / D) against the probability-flow ODE
        solved from the same x_T to t = 0 (`reference_solution`); for stochastic
        samplers (detected by re-running with another key) it is reported but
        marked, since they do not follow the ODE;
  sw2   sliced Wasserstein-2 to fresh data (`metrics.sliced_wasserstein`);
  nll   mean -log p_0(x) under the true density (nats).

The reference solves the PF-ODE in the variables of Karras et al. 2022
("Elucidating the Design Space...", eq. 4 with s(t) = alpha(t), sigma(t) -> sigma/alpha):
with the noise-to-signal ratio sigma~ = sigma / alpha = exp(-lam / 2) and
x~ = x / alpha,
  dx~ / dsigma~ = eps_hat(alpha x~, t(sigma~)),    t(sigma~) = t_from_log_snr(-2 log sigma~),
which is smooth down to sigma~ = 0 (the data end), so it is integrated exactly to
t = 0 (Song et al. 2021, eq. 13, after the change of variables of Lu et al. 2022,
"DPM-Solver", sec. 3.1). DDIM is the Euler method of this ODE (Karras et al. sec. 3).

A configuration is (sampler name, options, grid name, grid options); its
registry rule `num_steps(nfe, **options)` gives the grid length for each NFE.
The grid "learned" is fitted to each sampler at each NFE (`grids.learned`, LD3)
on training starts drawn apart from the benchmark's x_T (`training_pairs`).
A configuration mistake (an unknown sampler, grid, option or peer, a bad option
value) is found by `check_entries` before anything runs: each configuration is
traced once with jax.eval_shape, without compiling. What only the run itself
shows (an NFE a configuration cannot spend, NaN/inf, a wrong NFE count) is
recorded in that run's row and the benchmark goes on.
"""

import csv
import dataclasses
import functools
import importlib.metadata
import inspect
import io
import json
import pathlib
import time
from typing import Callable

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np

from jaxdiff import grids, metrics, oracle, samplers
from jaxdiff.samplers import ode
from jaxdiff.schedules import Process

matplotlib.use("Agg")  # Files only; no display is assumed.
import matplotlib.pyplot as plt  # noqa: E402

# --------------------------------------------------------------------------
# The problem: a process, an oracle mixture, a prediction type and x_T.
# --------------------------------------------------------------------------


def random_mixture(dim: int = 64, num_modes: int = 10, scale: float = 1.0,
                   std_range=(0.1, 0.3), seed: int = 0) -> oracle.GaussianMixture:
  """A seeded mixture: means scale * U[-1, 1]^D, stds U(std_range), Dirichlet(5) weights."""
  for name, value in (("dim", dim), ("num_modes", num_modes)):
    if not isinstance(value, (int, np.integer)) or value < 1:
      raise ValueError(f"random_mixture: {name} must be a positive integer, got {value!r}")
  if len(std_range) != 2 or not 0 < std_range[0] <= std_range[1]:
    raise ValueError(f"random_mixture: std_range must be (low, high) with 0 < low <= high, "
                     f"got {std_range!r}")
  rng = np.random.default_rng(seed)
  weights = rng.dirichlet(np.full(num_modes, 5.0))
  means = scale * rng.uniform(-1.0, 1.0, (num_modes, dim))
  stds = rng.uniform(std_range[0], std_range[1], num_modes)
  return oracle.GaussianMixture(weights / weights.sum(), means, stds)


ORACLES = {"ring": oracle.ring, "random": random_mixture}


def make_oracle(name: str, **options) -> oracle.GaussianMixture:
  """A named oracle mixture: "ring" (oracle.ring) or "random" (random_mixture)."""
  if name not in ORACLES:
    raise ValueError(f"unknown oracle {name!r}; valid: {sorted(ORACLES)}")
  valid = list(inspect.signature(ORACLES[name]).parameters)
  unknown = sorted(set(options) - set(valid))
  if unknown:
    raise ValueError(f"oracle {name!r} takes the options {valid}, got unknown {unknown}")
  return ORACLES[name](**options)


def _load_numeric(path, what: str, keys=None):
  """The array of an .npy file (keys None) or the named arrays of an .npz file,
  each numeric, or a ValueError naming the file and what it must hold."""
  kind = ".npy file (np.save) of one array" if keys is None else f".npz file (np.savez) of {keys}"
  try:
    loaded = np.load(path)  # allow_pickle=False: never unpickles.
    is_npz = hasattr(loaded, "files")
    if is_npz != (keys is not None):
      raise ValueError(f"got {'an .npz' if is_npz else 'an .npy'} file")
    arrays = {k: loaded[k] for k in keys if k in loaded.files} if is_npz else {"array": loaded}
  except (OSError, EOFError, ValueError) as error:
    raise ValueError(f"cannot read {what} {path} ({type(error).__name__}: {error}); it must be "
                     f"an {kind} of numbers") from error
  for name, a in arrays.items():
    if not np.issubdtype(a.dtype, np.number):
      raise ValueError(f"{what} {path}: {name} must hold numbers, got dtype {a.dtype}")
  return arrays if is_npz else arrays["array"]


def load_mixture(path) -> oracle.GaussianMixture:
  """A mixture from an .npz file with arrays weights [K], means [K, D], stds [K]."""
  arrays = _load_numeric(path, "oracle file", ("weights", "means", "stds"))
  missing = {"weights", "means", "stds"} - set(arrays)
  if missing:
    raise ValueError(f"oracle file {path} lacks arrays {sorted(missing)}; it needs weights "
                     f"[K], means [K, D] and stds [K], got {sorted(arrays)}")
  try:
    return oracle.GaussianMixture(arrays["weights"], arrays["means"], arrays["stds"])
  except ValueError as error:
    raise ValueError(f"oracle file {path}: {error}") from error


def check_init_noise(x_T, shape, source="x_T"):
  """x_T as float32 [num_samples, D], or a ValueError naming the expected shape."""
  x_T = np.asarray(x_T)
  if x_T.shape != tuple(shape):
    raise ValueError(f"{source} must have shape [num_samples, D] = {list(shape)}, got "
                     f"{list(x_T.shape)}")
  if not np.all(np.isfinite(x_T)):
    raise ValueError(f"{source} holds NaN or inf")
  return jnp.asarray(x_T, jnp.float32)


def load_init_noise(path, shape):
  """x_T [num_samples, D] from an .npy file, its shape checked."""
  return check_init_noise(_load_numeric(path, "init noise"), shape, source=f"init noise {path}")


@dataclasses.dataclass(frozen=True, eq=False)
class Problem:
  """What every run of one benchmark table shares.

  name: the oracle's label; x_T: [num_samples, D] at process.t_max; key: the
  samplers' noise key; eval_key: the key of the metrics' fresh data.
  """

  name: str
  process: Process
  mixture: oracle.GaussianMixture
  prediction: str
  x_T: jax.Array
  key: jax.Array
  eval_key: jax.Array
  seed: int

  @property
  def denoise_fn(self):
    return self.mixture.denoise_fn(self.process, self.prediction)


def make_problem(name, process, mixture, prediction, num_samples, seed, x_T=None) -> Problem:
  """Draws x_T from the prior with `seed` unless given; keys split as in sample.py."""
  key_prior, key_sample, key_eval = jax.random.split(jax.random.PRNGKey(seed), 3)
  shape = (num_samples, mixture.dim)
  if x_T is None:
    x_T = jax.random.normal(key_prior, shape) * process.prior_std()
  return Problem(name, process, mixture, prediction, check_init_noise(x_T, shape), key_sample,
                 key_eval, seed)


# --------------------------------------------------------------------------
# The reference: the PF-ODE in (sigma~, x~), Tsit5 to sigma~ = 0.
# --------------------------------------------------------------------------


def reference_solution(denoise_fn, process: Process, x_T, t_start=None, *,
                       prediction: str = "eps", cond=None, rtol: float = 1e-6,
                       atol: float = 1e-6, max_steps: int = 16384):
  """Solves the PF-ODE from t_start to t = 0 exactly: `samplers.ode.adaptive` (Tsit5).

  Args:
    denoise_fn: (x [B, ...], t [B], cond) -> network output of type `prediction`;
      it must give a finite eps at t = 0 (an eps prediction does).
    process: the forward process.
    x_T: [B, ...] at t_start (process.t_max by default).
    rtol, atol: the step controller's tolerances, on x~ = x / alpha.

  Returns:
    x_0 [B, ...] at t = 0 (NaN where the solver failed, e.g. at max_steps).
  """
  t_start = process.t_max if t_start is None else t_start
  x_0, info = ode.adaptive(denoise_fn, process, x_T, None, jnp.array([t_start, 0.0]),
                           prediction=prediction, cond=cond, rtol=rtol, atol=atol,
                           max_steps=max_steps)
  return jnp.where(info["nonfinite_step"] < 0, x_0, jnp.nan)


@functools.partial(jax.jit, static_argnums=(0, 1), static_argnames=("rtol", "atol"))
def oracle_reference(mixture, process, x_T, rtol=1e-6, atol=1e-6):
  """reference_solution with the mixture's exact eps from process.t_max: [B, D]."""
  return reference_solution(mixture.denoise_fn(process, "eps"), process, x_T, rtol=rtol, atol=atol)


# --------------------------------------------------------------------------
# Runs: a configuration at one NFE -> samples and what the run measured.
# --------------------------------------------------------------------------


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
             if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name != "key"]
    unknown = sorted(set(grid_options) - set(valid))
    if unknown:
      raise ValueError(f"the grid 'learned' takes the options {valid}, got unknown {unknown}")
  elif grid not in grids.GRIDS:
    raise ValueError(f"unknown grid {grid!r}; valid: {sorted(grids.GRIDS)} and 'learned'")

  def setup(nfe):
    """(N, the sampler with its options bound) for this NFE."""
    try:
      num_steps = samplers.num_steps_for(name, nfe, options)
    except ValueError as error:
      raise UnreachableNFE(str(error)) from error
    return num_steps, functools.partial(sampler.fn, problem.denoise_fn, problem.process,
                                        prediction=problem.prediction, **options)

  def fixed_grid(num_steps):
    if grid == "learned":  # The starting grid of the fit.
      return grids.make_grid(problem.process, grid_options.get("init", "log_snr"), num_steps,
                             **dict(grid_options.get("init_options") or {}))
    return grids.make_grid(problem.process, grid, num_steps, **grid_options)

  def check(nfe):
    num_steps, fn = setup(nfe)
    times = samplers.check_grid(fixed_grid(num_steps), problem.process, num_steps)
    jax.eval_shape(fn, problem.x_T, problem.key, times)

  def run(nfe):
    num_steps, fn = setup(nfe)
    fit = {}
    if grid == "learned":
      times, fit = learned_grid(problem, lambda x, g: fn(x, problem.key, g)[0], num_steps,
                                **grid_options)
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
    # Stochastic samplers give other samples for another key.
    x_other, _ = compiled(problem.x_T, jax.random.fold_in(problem.key, 1), times)
    return x, {**fit, "nfe_counted": int(info["nfe"]), "steps": num_steps,
               "times": np.asarray(times).tolist(), "compile_s": compile_s, "run_s": run_s,
               "stochastic": not np.array_equal(x, x_other, equal_nan=True)}

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
  problems = []
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
      problems.append(f"{entry.family} {entry.label}: {type(error).__name__}: {error}")
  return problems


@functools.lru_cache(maxsize=None)
def training_pairs(problem: Problem, num_pairs: int):
  """(x_T, x_ref) [num_pairs, D] for fitting grids: x_T from the prior with the key
  fold_in(PRNGKey(seed), 1), independent of the benchmark's x_T, and its reference."""
  key = jax.random.fold_in(jax.random.PRNGKey(problem.seed), 1)
  x_T = jax.random.normal(key, (num_pairs, problem.mixture.dim)) * problem.process.prior_std()
  return x_T, oracle_reference(problem.mixture, problem.process, x_T)


def learned_grid(problem: Problem, sample_fn, num_steps: int, *, init: str = "log_snr",
                 init_options=None, num_pairs: int = 4096, **fit_options):
  """`grids.learned` started from the named grid, fitted on `training_pairs`.

  Returns:
    (times [N + 1], info) with the fit's rmse_init and rmse on the training pairs
    (as fit_rmse_init, fit_rmse) and its wall time fit_s.
  """
  init_grid = grids.make_grid(problem.process, init, num_steps, **dict(init_options or {}))
  x_T, x_ref = training_pairs(problem, num_pairs)
  start = time.perf_counter()
  times, fit = grids.learned(sample_fn, x_T, x_ref, init_grid,
                             key=jax.random.fold_in(jax.random.PRNGKey(problem.seed), 2),
                             **fit_options)
  return times, {"fit_rmse_init": fit["rmse_init"], "fit_rmse": fit["rmse"],
                 "fit_s": time.perf_counter() - start}


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


# --------------------------------------------------------------------------
# Outputs: markdown table, CSV, JSON, rmse-vs-NFE plot.
# --------------------------------------------------------------------------


def versions():
  """Installed versions of the packages the results depend on (None where absent)."""
  found = {}
  for package in ("jax", "jaxlib", "jaxdiff", "diffrax", "torch", "diffusers"):
    try:
      found[package] = importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
      found[package] = None
  return found


def _configurations(rows):
  """(oracle, label) -> its rows, in first-seen order."""
  groups = {}
  for row in rows:
    groups.setdefault((row["oracle"], row["family"], row["label"]), []).append(row)
  return groups


def _cell(row):
  if row["status"] != "ok":
    return "error"
  return f"{row['rmse']:.3g}" + ("*" if row["stochastic"] else "")


def markdown_table(rows):
  """rmse tables, one per oracle: rows configurations, columns NFE, then the end noise."""
  nfes = sorted({row["nfe"] for row in rows})
  tables = []
  for oracle_name in dict.fromkeys(row["oracle"] for row in rows):
    lines = [f"### {oracle_name}: rmse to the PF-ODE solution",
             "", "| configuration | " + " | ".join(f"NFE {n}" for n in nfes) +
             " | ends at sigma/alpha |", "|---|" + "---|" * (len(nfes) + 1)]
    for (name, family, label), group in _configurations(rows).items():
      if name != oracle_name:
        continue
      by_nfe = {row["nfe"]: row for row in group}
      cells = [_cell(by_nfe[n]) if n in by_nfe else "" for n in nfes]
      ends = {f"{row['sigma_end']:.3g}" for row in group if row["status"] == "ok"}
      prefix = "diffusers " if family == "diffusers" else ""
      lines.append(f"| {prefix}{label} | " + " | ".join(cells) + f" | {', '.join(sorted(ends))} |")
    tables.append("\n".join(lines))
  notes = []
  if any(row["status"] == "ok" and row["stochastic"] for row in rows):
    notes.append("* stochastic sampler: its rmse is not a discretization error of the PF-ODE.")
  if any(row["status"] != "ok" for row in rows):
    notes.append("error: see results.csv for the message.")
  return "\n\n".join(tables) + "\n\n" + " ".join(notes) + "\n"


CSV_COLUMNS = ("oracle", "family", "sampler", "options", "grid", "grid_options", "label", "nfe",
               "nfe_counted", "steps", "status", "error", "rmse", "sw2", "nll", "weight_error",
               "stochastic", "t_start", "t_end", "sigma_end", "compile_s", "run_s", "seed",
               "fit_rmse_init", "fit_rmse", "fit_s", "times")


def results_csv(rows):
  """One line per run; dict and list fields as JSON."""
  out = io.StringIO()
  writer = csv.DictWriter(out, CSV_COLUMNS, extrasaction="ignore")
  writer.writeheader()
  for row in rows:
    writer.writerow({k: json.dumps(v) if isinstance(v, (dict, list)) else v
                     for k, v in row.items()})
  return out.getvalue()


def plot_rmse(rows, path, oracle_name):
  """log-log rmse against NFE, a line per configuration (diffusers peers dashed)."""
  fig, ax = plt.subplots(figsize=(15, 7))
  colors, markers = plt.get_cmap("tab20").colors, "osD^v"
  groups = [(family, label, [r for r in group if r["status"] == "ok"])
            for (name, family, label), group in _configurations(rows).items()
            if name == oracle_name]
  for i, (family, label, ok) in enumerate(g for g in groups if g[2]):
    ax.loglog([row["nfe"] for row in ok], [row["rmse"] for row in ok],
              linestyle="--" if family == "diffusers" else "-", color=colors[i % len(colors)],
              marker=markers[i // len(colors) % len(markers)], markersize=4,
              label=("diffusers " if family == "diffusers" else "") + label)
  nfes = sorted({row["nfe"] for row in rows})
  ax.set_xticks(nfes, [str(n) for n in nfes])
  ax.minorticks_off()
  ax.set(xlabel="NFE", ylabel="rmse to the PF-ODE solution", title=oracle_name)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0),
            ncol=1 if len(ax.get_lines()) <= 24 else 2)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def write_results(workdir, header, rows):
  """results.md, results.csv, results.json and rmse-<oracle>.png in workdir."""
  workdir = pathlib.Path(workdir)
  (workdir / "results.md").write_text(
      f"# NFE benchmark\n\n```\n{json.dumps(header, indent=1, default=str)}\n```\n\n"
      + markdown_table(rows))
  (workdir / "results.csv").write_text(results_csv(rows))
  (workdir / "results.json").write_text(json.dumps(
      {"header": header, "rows": rows}, indent=1, default=_json_default))
  for oracle_name in dict.fromkeys(row["oracle"] for row in rows):
    plot_rmse(rows, workdir / f"rmse-{oracle_name}.png", oracle_name)


def _json_default(value):
  if isinstance(value, (np.generic, jax.Array)):
    return np.asarray(value).tolist()
  return str(value)
