"""The two jobs on the analytic Gaussian-mixture oracle: the NFE benchmark and the oracle job.

  python bench.py                                          # --job nfe: configs/benchmark.py
  python bench.py --config configs/benchmark_quick.py --workdir runs/quick
  python bench.py --peers --config.nfes '(5, 10, 15, 20)'  # with diffusers' schedulers
  python bench.py --oracle mixture.npz --init-noise x_T.npy --save-samples
  python bench.py --job oracle                             # configs/base.py
  python bench.py --job oracle --config configs/cosine.py --workdir runs/cosine

Each job has its own configs and its default --config (`JOBS`); a config of the
other job is refused by name. Everything a job's config names is checked
before the workdir is claimed (jaxdiff.workdir: a new folder, never one that
holds files); a mistake exits non-zero, nothing written. Rows are appended to
results.jsonl as they finish; a run that stops early leaves its finished rows
and the file INCOMPLETE saying why.

--job nfe, the NFE benchmark (jaxdiff.benchmark): samplers x grids x NFE. Every
configuration is checked (names, options, NFE values; each traced once with
jax.eval_shape, nothing compiled) and every mistake listed. At the end come
results.md (rmse tables: configurations x NFE), results.csv and results.json
(one row per run, with a header of versions, process, oracles and seeds),
rmse-<oracle>.png and, with --save-samples, samples/<oracle>/*.npz. An
interrupted benchmark is finished by the same command with --workdir DIR
--resume, which runs only what is missing.

--job oracle: a list of samplers, each at its own grid and number of steps, on
the ring of Gaussians, scored by nll, sliced Wasserstein-2 and the recovered
mixture weights (each sampler traced once before the claim). At the end come
samples.png (the samples over the true density), schedule.png (alpha_bar and
log-SNR of the process), results.md / results.json (one row per sampler run)
and samples.npz.
"""

import json
import os
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from jaxdiff import (cli, grids, metrics, oracle, parameterization, plots, samplers, schedules,
                     sde, workdir)
from jaxdiff.benchmark import problems, report, runs

# Each job's default --config, and a field that only that job's configs have.
JOBS = {"nfe": "configs/benchmark.py", "oracle": "configs/base.py"}
JOB_FIELDS = {"nfe": "nfes", "oracle": "oracle"}
NFE_FLAGS = ("init-noise", "oracle", "save-samples", "peers", "resume")  # --job nfe's own.


def job_on_command_line(argv) -> str:
  """--job as given in argv, read before absl parses the flags, since the default
  --config depends on it; "nfe" when absent (absl reports a bad value)."""
  for i, arg in enumerate(argv):
    if arg.startswith("--job="):
      return arg.removeprefix("--job=")
    if arg == "--job" and i + 1 < len(argv):
      return argv[i + 1]
  return "nfe"


_JOB = flags.DEFINE_enum("job", "nfe", list(JOBS), "nfe: the NFE benchmark; oracle: the "
                         "sampler runs of the oracle job.")
_CONFIG = cli.define_config(JOBS.get(job_on_command_line(sys.argv[1:]), JOBS["nfe"]),
                            "The job's configuration; default: configs/benchmark.py for --job "
                            "nfe, configs/base.py for --job oracle.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Output folder; default runs/bench-<time> "
                               "(--job nfe) or runs/oracle-<time> (--job oracle).")
_INIT_NOISE = flags.DEFINE_string("init-noise", None, "--job nfe: x_T [num_samples, D] from "
                                  "this .npy instead of the seed.")
_ORACLE = flags.DEFINE_string("oracle", None, "--job nfe: mixture .npz (weights [K], means "
                              "[K, D], stds [K]) replacing the configured oracles.")
_SAVE_SAMPLES = flags.DEFINE_bool("save-samples", False, "--job nfe: write x_T, the reference "
                                  "and every run's samples as .npz.")
_PEERS = flags.DEFINE_bool("peers", False, "--job nfe: also run the configured diffusers "
                           "schedulers.")
_RESUME = flags.DEFINE_bool("resume", False, "--job nfe: finish the interrupted benchmark in "
                            "--workdir: same flags, only the missing runs.")
SETTINGS = "settings.json"  # What a resumed benchmark must agree with.


def main(argv):
  del argv
  config = _CONFIG.value
  check_job(config)
  if _JOB.value == "oracle":
    oracle_job(config)
  else:
    nfe_job(config)


def check_job(config):
  """SystemExit, nothing written, when the config or a flag belongs to the other job."""
  job, path = _JOB.value, config_flags.get_config_filename(flags.FLAGS["config"])
  if JOB_FIELDS[job] not in config:
    owner = [j for j, field in JOB_FIELDS.items() if field in config]
    hint = (f"it is a config of --job {owner[0]}: python3 bench.py --job {owner[0]} --config "
            f"{path}" if owner else f"it has no field {JOB_FIELDS[job]!r}")
    raise SystemExit(f"--config {path} is not a config of --job {job} ({hint}); --job {job} "
                     f"takes configs like {JOBS[job]} (nothing was run)")
  given = [f"--{name}" for name in NFE_FLAGS if flags.FLAGS[name].present]
  if job == "oracle" and given:
    raise SystemExit(f"{', '.join(given)}: flags of --job nfe, not of --job oracle (nothing "
                     "was run)")


# --------------------------------------------------------------------------
# --job nfe: the NFE benchmark.
# --------------------------------------------------------------------------


def build_problems(config, oracle_file, init_noise_file):
  """The (name, Problem) of each oracle, every input checked before anything is written."""
  process = schedules.make_process(config.process, **config.process_options)
  if oracle_file:
    mixtures = {pathlib.Path(oracle_file).stem: problems.load_mixture(oracle_file)}
  else:
    mixtures = {}
    for spec in config.oracles:
      mixture = problems.make_oracle(spec.name, **spec.options)
      mixtures[f"{spec.name}-{mixture.dim}d"] = mixture
  oracle_problems = []
  for name, mixture in mixtures.items():
    x_T = None
    if init_noise_file:
      x_T = problems.load_init_noise(init_noise_file, (config.num_samples, mixture.dim))
    oracle_problems.append(problems.make_problem(name, process, mixture, config.prediction,
                                                 config.num_samples, config.seed, x_T))
  return oracle_problems


def entries_for(problem, config, with_peers):
  """(entries, mistakes): the problem's configurations and what is wrong with them."""
  entries, mistakes = [], []
  for s in config.samplers:
    try:
      entries.append(runs.sampler_entry(problem, s.name, s.options.to_dict(), s.grid,
                                             s.grid_options.to_dict()))
    except ValueError as error:
      mistakes.append(f"sampler {s.name} {s.options.to_dict()} on grid {s.grid}: {error}")
  if with_peers:
    from jaxdiff import peers  # pylint: disable=import-outside-toplevel
    for p in config.peers:
      try:
        entries += peers.peer_entries(problem, [p.to_dict()])
      except ValueError as error:
        mistakes.append(f"peer {p.name} {p.options.to_dict()}: {error}")
  return entries, mistakes + runs.check_entries(entries, config.nfes)


def check_config(config):
  """(a problem per oracle, its entries), or SystemExit listing every mistake (nothing written)."""
  try:
    runs.check_nfes(config.nfes)
    if not isinstance(config.num_samples, int) or config.num_samples < 1:
      raise ValueError(f"num_samples must be a positive integer, got {config.num_samples!r}")
    if config.prediction not in parameterization.PREDICTIONS:
      raise ValueError(f"prediction must be one of {list(parameterization.PREDICTIONS)}, got "
                       f"{config.prediction!r}")
    oracle_problems = build_problems(config, _ORACLE.value, _INIT_NOISE.value)
    if _PEERS.value:
      from jaxdiff import peers  # pylint: disable=import-outside-toplevel
      peers.import_peers()  # A missing extra is reported before anything is written.
      if not hasattr(oracle_problems[0].process, "betas"):
        raise ValueError(f"--peers needs a discrete DDPM process, got {config.process}")
  except (ValueError, ImportError) as error:
    raise SystemExit(f"invalid benchmark configuration: {error} (nothing was written)") from None
  entries, mistakes = [], []
  for problem in oracle_problems:
    problem_entries, problem_mistakes = entries_for(problem, config, _PEERS.value)
    entries.append(problem_entries)
    mistakes += [f"{problem.name}: {m}" for m in problem_mistakes]
    if not problem_mistakes:
      try:
        runs.check_unique(problem_entries)
      except ValueError as error:
        mistakes.append(str(error))
  if mistakes:
    raise SystemExit("invalid benchmark configuration (nothing was written):\n  - "
                     + "\n  - ".join(mistakes))
  return oracle_problems, entries


def nfe_job(config):
  """Checks the configuration, claims the workdir and runs (or resumes) the benchmark."""
  if _RESUME.value and not (_WORKDIR.value and
                            (pathlib.Path(_WORKDIR.value) / workdir.MARKER).is_file()):
    raise SystemExit(f"--resume needs --workdir DIR, the folder of an interrupted benchmark "
                     f"(it holds {workdir.MARKER}); got {_WORKDIR.value}")
  oracle_problems, entries = check_config(config)
  settings = json.loads(json.dumps(
      {"config": config.to_dict(), "oracle": _ORACLE.value, "init_noise": _INIT_NOISE.value,
       "peers": _PEERS.value, "save_samples": _SAVE_SAMPLES.value}, default=str))

  with workdir.claim(_WORKDIR.value, "bench", resume=_RESUME.value) as out:
    finished = {}
    if _RESUME.value:
      if not (out / SETTINGS).is_file():
        raise SystemExit(f"--resume: {out} has no {SETTINGS}: that benchmark stopped before its "
                         "first run; start it anew in a new --workdir")
      saved = json.loads((out / SETTINGS).read_text())
      differ = sorted(k for k in settings.keys() | saved.keys() if settings.get(k) != saved.get(k))
      if differ:
        raise SystemExit(f"--resume: this command's {differ} differ from those the benchmark in "
                         f"{out} was started with ({out / SETTINGS}); rerun with the same flags")
      finished = {runs.row_key(row): row for row in workdir.read_rows(out)}
      print(f"resuming {out}: {len(finished)} finished runs are kept", flush=True)
    else:
      (out / SETTINGS).write_text(json.dumps(settings, indent=1))
    rows = []
    for problem, problem_entries in zip(oracle_problems, entries):
      sample_dir = out / "samples" / problem.name if _SAVE_SAMPLES.value else None
      problem_rows, _ = runs.run_benchmark(
          problem, problem_entries, tuple(config.nfes),
          reference=problems.oracle_reference(problem.mixture, problem.process, problem.x_T,
                                              **config.reference),
          sample_dir=sample_dir, log=lambda line: print(line, flush=True), finished=finished,
          on_row=lambda row: workdir.append_row(out, row))
      rows += problem_rows
    write_outputs(out, config, oracle_problems, rows)


def write_outputs(out, config, oracle_problems, rows):
  """results.md, .csv, .json and the plots, with the header of what was run."""
  header = {"versions": report.versions(), "device": str(jax.devices()[0]),
            "process": config.process, "process_options": config.process_options.to_dict(),
            "prediction": config.prediction, "num_samples": config.num_samples,
            "seed": config.seed, "init_noise": _INIT_NOISE.value, "oracle_file": _ORACLE.value,
            "oracles": {p.name: {"dim": p.mixture.dim, "modes": p.mixture.weights.shape[0]}
                        for p in oracle_problems},
            "nfes": list(config.nfes), "reference": config.reference.to_dict(),
            "nfe": "network calls counted by the sampler; a classifier-free-guided call "
                   "(conditional and unconditional in one batch of 2B, jaxdiff.guidance) "
                   "counts once",
            "metrics": "rmse = sqrt(mean ||x - x_ref||^2 / D) to the PF-ODE solution from the "
                       "same x_T; sw2 = sliced Wasserstein-2 to fresh data; nll in nats"}
  report.write_results(out, header, rows)
  print(report.markdown_table(rows))
  print(f"wrote results.md, results.csv, results.json and rmse-*.png to {out}")


# --------------------------------------------------------------------------
# --job oracle: sampler runs on the ring of Gaussians.
# --------------------------------------------------------------------------


def oracle_job(config):
  """Checks the configuration, claims the workdir and runs every sampler."""
  try:
    process, mixture, denoise_fn, sampler_runs = build_oracle_job(config)
  except ValueError as error:
    raise SystemExit(f"invalid configuration: {error} (nothing was written)") from None
  with workdir.claim(_WORKDIR.value, "oracle") as out:
    run_oracle_job(config, process, mixture, denoise_fn, sampler_runs, out)


def build_oracle_job(config):
  """(process, mixture, denoise_fn, sampler runs) from the config, every part checked.

  Each sampler run is (run config, sampler fn, grid); each sampler is traced
  once on the real shapes (jax.eval_shape, no compilation), so that a bad
  option value fails here, before anything is written or compiled.

  Raises:
    ValueError naming the offending field and what it accepts.
  """
  if not isinstance(config.num_samples, int) or config.num_samples < 1:
    raise ValueError(f"num_samples must be a positive integer, got {config.num_samples!r}")
  if config.prediction not in parameterization.PREDICTIONS:
    raise ValueError(f"prediction must be one of {list(parameterization.PREDICTIONS)}, got "
                     f"{config.prediction!r}")
  process = schedules.make_process(config.process, **config.process_options)
  mixture = oracle.ring(**config.oracle)
  denoise_fn = mixture.denoise_fn(process, config.prediction)
  x_T = jax.ShapeDtypeStruct((config.num_samples, mixture.dim), jnp.float32)
  sampler_runs = []
  for run in config.samplers:
    sampler = samplers.get_sampler(run.name)
    grid = samplers.check_grid(grids.make_grid(process, run.grid, run.num_steps), process)
    try:
      samplers.check_options(run.name, run.options)
      jax.eval_shape(lambda x, k, g, sampler=sampler, run=run: sampler(
          denoise_fn, process, x, k, g, prediction=config.prediction, **run.options),
                     x_T, jax.random.PRNGKey(0), grid)
    except (ValueError, TypeError) as error:
      raise ValueError(f"sampler run {run.name} {dict(run.options)}: {error}") from error
    sampler_runs.append((run, sampler, grid))
  return process, mixture, denoise_fn, sampler_runs


def run_sampler(sampler, grid, options, denoise_fn, process, prediction, x_T, key):
  """Compiles and runs one sampler; returns samples and timings."""

  def sample(x_T, key, grid):
    return sampler(denoise_fn, process, x_T, key, grid, prediction=prediction, **options)

  start = time.perf_counter()
  compiled = jax.jit(sample).lower(x_T, key, grid).compile()
  compile_s = time.perf_counter() - start
  start = time.perf_counter()
  x_0, info = jax.block_until_ready(compiled(x_T, key, grid))
  samplers.raise_if_nonfinite(info, grid)
  return x_0, {"nfe": int(info["nfe"]), "compile_s": compile_s,
               "run_s": time.perf_counter() - start}


def run_oracle_job(config, process, mixture, denoise_fn, sampler_runs, out):
  """Runs every sampler, appending rows to out/results.jsonl, then writes the tables and
  pictures."""
  key = jax.random.PRNGKey(config.seed)
  key_prior, key_sample, key_eval = jax.random.split(key, 3)
  x_T = sde.prior_sample(process, key_prior, (config.num_samples, mixture.dim))
  data = mixture.sample(key_eval, config.num_samples)
  rows = [{"sampler": "data (reference)", "grid": "-", "steps": 0, "nfe": 0,
           **metrics.oracle_metrics(key_eval, mixture, data), "compile_s": 0.0, "run_s": 0.0}]
  workdir.append_row(out, rows[0])
  samples = {}
  for run, sampler, grid in sampler_runs:
    label = f"{run.name} {run.grid} {run.num_steps} " + " ".join(
        f"{k}={v}" for k, v in run.options.items())
    print(f"sampling: {label}", flush=True)
    x_0, timing = run_sampler(sampler, grid, run.options, denoise_fn, process, config.prediction,
                              x_T, key_sample)
    samples[label] = np.asarray(x_0)
    rows.append({"sampler": f"{run.name} " + " ".join(f"{k}={v}" for k, v in run.options.items()),
                 "grid": run.grid, "steps": run.num_steps, "nfe": timing["nfe"],
                 **metrics.oracle_metrics(key_eval, mixture, x_0),
                 "compile_s": timing["compile_s"], "run_s": timing["run_s"]})
    workdir.append_row(out, rows[-1])

  table = workdir.markdown_table(list(rows[0]), [list(row.values()) for row in rows])
  header = (f"process {config.process} {dict(config.process_options)}, prediction "
            f"{config.prediction}, {config.num_samples} samples, seed {config.seed}; nll in nats "
            "under the true density, sw2 = sliced Wasserstein-2 to fresh data, weight_error = "
            "max |recovered - true| mixture weight.\n\n")
  (out / "results.md").write_text(header + table + "\n")
  (out / "results.json").write_text(json.dumps(
      {"config": config.to_dict(), "jax": jax.__version__, "rows": rows}, indent=2, default=str))
  np.savez(out / "samples.npz", x_T=np.asarray(x_T), **{
      k.replace(" ", "_"): v for k, v in samples.items()})
  plots.plot_samples_2d({name: x[:, :2] for name, x in {"data": np.asarray(data), **samples}.items()},
                        out / "samples.png",
                        log_density=mixture.log_prob if mixture.dim == 2 else None)
  references = {f"ddpm {name}": schedules.discrete_ddpm(name) for name in schedules.BETA_SCHEDULES}
  references.update(vp=schedules.VP(), subvp=schedules.SubVP(), flow=schedules.FlowMatching())
  plots.plot_schedules({f"{config.process} (this run)": process,
                        **{k: p for k, p in references.items() if p != process}},
                       out / "schedule.png")
  print(header + table)
  print(f"\nwrote {sorted(os.listdir(out))} to {out}")


if __name__ == "__main__":
  app.run(cli.exit_on_interrupt(main), flags_parser=cli.parse_flags)
