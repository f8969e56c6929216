"""Samples the analytic Gaussian-mixture oracle with the configured samplers.

  python sample.py                                   # configs/base.py
  python sample.py --config configs/cosine.py --workdir runs/cosine
  python sample.py --config.num_samples 1000

Everything the config names is built and checked (each sampler traced once,
without compiling) before the workdir is claimed (jaxdiff.workdir: a new
folder, never one that holds files). Rows are appended to results.jsonl as
each sampler run finishes; at the end come samples.png (the samples over the
true density), schedule.png (alpha_bar and log-SNR of the process),
results.md / results.json (one row per sampler run) and samples.npz. A run
that stops early leaves its finished rows and the file INCOMPLETE saying why.
"""

import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from jaxdiff import (cli, grids, metrics, oracle, parameterization, plots, samplers, schedules,
                     sde, workdir)

_CONFIG = cli.define_config("configs/base.py", "Sampling configuration.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Output folder; default runs/sample-<time>.")


def build(config):
  """(process, mixture, denoise_fn, runs) from the config, every part checked.

  Each run is (run config, sampler fn, grid); each sampler is traced once on
  the real shapes (jax.eval_shape, no compilation), so that a bad option value
  fails here, before anything is written or compiled.

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
  runs = []
  for run in config.samplers:
    sampler = samplers.get_sampler(run.name).fn
    samplers.check_options(run.name, run.options)
    grid = samplers.check_grid(grids.make_grid(process, run.grid, run.num_steps), process)
    try:
      jax.eval_shape(lambda x, k, g, sampler=sampler, run=run: sampler(
          denoise_fn, process, x, k, g, prediction=config.prediction, **run.options),
                     x_T, jax.random.PRNGKey(0), grid)
    except (ValueError, TypeError) as error:
      raise ValueError(f"sampler run {run.name} {dict(run.options)}: {error}") from error
    runs.append((run, sampler, grid))
  return process, mixture, denoise_fn, runs


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


def markdown_table(rows):
  columns = list(rows[0])
  lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
  for row in rows:
    cells = (f"{v:.4g}" if isinstance(v, float) else str(v) for v in row.values())
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def main(argv):
  del argv
  config = _CONFIG.value
  try:
    process, mixture, denoise_fn, runs = build(config)
  except ValueError as error:
    raise SystemExit(f"invalid configuration: {error} (nothing was written)") from None
  with workdir.claim(_WORKDIR.value, "sample") as out:
    sample_all(config, process, mixture, denoise_fn, runs, out)


def sample_all(config, process, mixture, denoise_fn, runs, out):
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
  for run, sampler, grid in runs:
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

  table = markdown_table(rows)
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
  app.run(main, flags_parser=cli.parse_flags)
