"""Samples the analytic Gaussian-mixture oracle with the configured samplers.

  python sample.py                                   # configs/base.py
  python sample.py --config configs/cosine.py --workdir runs/cosine
  python sample.py --config.num_samples 1000

Writes into a new workdir (never into one that already holds files):
samples.png (the samples over the true density), schedule.png (alpha_bar and
log-SNR of the process), results.md / results.json (one row per sampler run)
and samples.npz.
"""

import json
import os
import time

import jax
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from jaxdiff import grids, metrics, oracle, plots, samplers, schedules, sde
from jaxdiff.workdir import new_workdir

_CONFIG = config_flags.DEFINE_config_file("config", "configs/base.py", "Sampling configuration.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Output folder; default runs/sample-<time>.")




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
  # Everything the config names is built before anything is written.
  process = schedules.make_process(config.process, **config.process_options)
  mixture = oracle.ring(**config.oracle)
  denoise_fn = mixture.denoise_fn(process, config.prediction)
  runs = [(run, samplers.get_sampler(run.name).fn, grids.make_grid(process, run.grid, run.num_steps))
          for run in config.samplers]
  workdir = new_workdir(_WORKDIR.value, "sample")

  key = jax.random.PRNGKey(config.seed)
  key_prior, key_sample, key_eval = jax.random.split(key, 3)
  x_T = sde.prior_sample(process, key_prior, (config.num_samples, mixture.dim))
  data = mixture.sample(key_eval, config.num_samples)
  rows = [{"sampler": "data (reference)", "grid": "-", "steps": 0, "nfe": 0,
           **metrics.oracle_metrics(key_eval, mixture, data), "compile_s": 0.0, "run_s": 0.0}]
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

  table = markdown_table(rows)
  header = (f"process {config.process} {dict(config.process_options)}, prediction "
            f"{config.prediction}, {config.num_samples} samples, seed {config.seed}; nll in nats "
            "under the true density, sw2 = sliced Wasserstein-2 to fresh data, weight_error = "
            "max |recovered - true| mixture weight.\n\n")
  (workdir / "results.md").write_text(header + table + "\n")
  (workdir / "results.json").write_text(json.dumps(
      {"config": config.to_dict(), "jax": jax.__version__, "rows": rows}, indent=2, default=str))
  np.savez(workdir / "samples.npz", x_T=np.asarray(x_T), **{
      k.replace(" ", "_"): v for k, v in samples.items()})
  plots.plot_samples_2d({name: x[:, :2] for name, x in {"data": np.asarray(data), **samples}.items()},
                        workdir / "samples.png",
                        log_density=mixture.log_prob if mixture.dim == 2 else None)
  references = {f"ddpm {name}": schedules.discrete_ddpm(name) for name in schedules.BETA_SCHEDULES}
  references.update(vp=schedules.VP(), subvp=schedules.SubVP(), flow=schedules.FlowMatching())
  plots.plot_schedules({f"{config.process} (this run)": process,
                        **{k: p for k, p in references.items() if p != process}},
                       workdir / "schedule.png")
  print(header + table)
  print(f"\nwrote {sorted(os.listdir(workdir))} to {workdir}")


if __name__ == "__main__":
  app.run(main)
