"""The official DPM-Solver and UniPC against jaxdiff's benchmark rows, on the same problems.

  python3 benchmarks/reference_solvers.py \\
      --dpm-solver /path/to/dpm-solver/dpm_solver_pytorch.py \\
      --unipc /path/to/UniPC/uni_pc.py \\
      --jaxdiff runs/bench-<time>/results.jsonl[,more.jsonl]

The official code (Lu et al. 2022, "DPM-Solver" and "DPM-Solver++",
LuChengTHU/dpm-solver; Zhao et al. 2023, "UniPC", wl-zhao/UniPC; both PyTorch)
is imported from the given files at run time; nothing of it is in jaxdiff. It
runs on the benchmark's oracle problems (--config, configs/benchmark.py by
default: the same process, oracle mixtures, num_samples, seed and so the same
x_T as bench.py), with the exact oracle eps converted from torch through numpy
at each call, its discrete noise schedule built from the same alpha-bar table
(NoiseScheduleVP("discrete"), whose t in [1/T, 1] is jaxdiff's DiscreteDDPM t),
and its own defaults otherwise: time steps from t = 1 to t_end = 1/T with no
final jump (N calls on N + 1 points), lower_order_final, no denoise_to_zero.
Each official configuration is scored as bench.py scores a row: rmse = sqrt(mean
over samples of ||x - x_ref||^2 / D) against the exact PF-ODE solution from the
same x_T (problems.oracle_reference), and its network calls are counted.

Printed: every official row, then per oracle and NFE the best official rmse
against jaxdiff's best fixed-grid configuration and jaxdiff's best overall
(learned grids included), read from a bench.py results.jsonl of the same
config, as ratios jaxdiff / official (below 1: jaxdiff is more accurate).
"""

import contextlib
import importlib.util
import io
import json
import math
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import torch
from absl import app, flags

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from jaxdiff import schedules  # pylint: disable=wrong-import-position
from jaxdiff.benchmark import problems  # pylint: disable=wrong-import-position

_DPM_SOLVER = flags.DEFINE_string("dpm-solver", None, "dpm_solver_pytorch.py of a "
                                  "LuChengTHU/dpm-solver checkout.", required=True)
_UNIPC = flags.DEFINE_string("unipc", None, "uni_pc.py of a wl-zhao/UniPC checkout.",
                             required=True)
_JAXDIFF = flags.DEFINE_list("jaxdiff", [], "results.jsonl files of `bench.py` on the same "
                             "problems; without them only the official rows are printed.")
_CONFIG = flags.DEFINE_string("config", "configs/benchmark.py", "The benchmark config whose "
                              "problems are solved.")
_NFES = flags.DEFINE_list("nfes", ["5", "10", "15", "20"], "NFE values.")

# The official solvers' recommended settings (their READMEs and docstrings):
# (label, solver, sample() keywords). UniPC is built with variant and
# data_prediction, DPM-Solver with its algorithm_type.
OFFICIAL = (
    *((f"UniPC {variant} order {order}, {skip}", "unipc", variant,
       {"order": order, "skip_type": skip, "method": "multistep"})
      for variant in ("bh2", "bh1") for order in (2, 3) for skip in ("time_quadratic", "logSNR")),
    *((f"DPM-Solver++ {order}M, {skip}", "dpm_solver", "dpmsolver++",
       {"order": order, "skip_type": skip, "method": "multistep"})
      for order in (2, 3) for skip in ("logSNR", "time_uniform", "time_quadratic")),
    ("DPM-Solver-3 singlestep, logSNR", "dpm_solver", "dpmsolver",
     {"order": 3, "skip_type": "logSNR", "method": "singlestep"}),
)


def load_module(path, name):
  """The Python module at `path`, imported under `name`."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise SystemExit(f"{name}: no file {path}; pass the .py file of the official checkout")
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def load_config(path):
  module = load_module(path, "benchmark_config")
  return module.get_config()


def build_problems(config):
  """bench.py's problems: (name, Problem), the same names, x_T and seeds."""
  process = schedules.make_process(config.process, **config.process_options)
  if not hasattr(process, "betas"):
    raise SystemExit(f"the official solvers need a discrete DDPM (betas); got {config.process}")
  built = []
  for spec in config.oracles:
    mixture = problems.make_oracle(spec.name, **spec.options)
    name = f"{spec.name}-{mixture.dim}d"
    built.append(problems.make_problem(name, process, mixture, config.prediction,
                                       config.num_samples, config.seed))
  return built


def torch_eps(problem):
  """(x torch [B, D, 1, 1], t torch [B]) -> the oracle's eps as torch, and a call counter.

  The official UniPC's einsums assume images [B, C, H, W]: a D-vector is an image
  of D channels and 1 x 1 pixels.
  """
  eps_fn = jax.jit(problem.mixture.denoise_fn(problem.process, "eps"))
  calls = [0]

  def model_fn(x, t):
    calls[0] += 1
    eps = eps_fn(jnp.asarray(x.cpu().numpy().reshape(x.shape[:2]), jnp.float32),
                 jnp.asarray(t.cpu().numpy(), jnp.float32), None)
    return torch.from_numpy(np.array(eps)).to(x.dtype).reshape(x.shape)

  return model_fn, calls


def run_official(modules, problem, solver, variant, options, nfe):
  """x_0 [B, D] numpy and the counted network calls of one official run."""
  module = modules[solver]
  alphas_cumprod = torch.from_numpy(np.cumprod(1.0 - np.asarray(problem.process.betas, np.float64)))
  schedule = module.NoiseScheduleVP("discrete", alphas_cumprod=alphas_cumprod)
  model_fn, calls = torch_eps(problem)
  if solver == "unipc":
    sampler = module.UniPC(model_fn, schedule, algorithm_type="data_prediction", variant=variant)
  else:
    sampler = module.DPM_Solver(model_fn, schedule, algorithm_type=variant)
  x_T = torch.from_numpy(np.array(problem.x_T)[:, :, None, None])  # [B, D, 1, 1]
  with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):  # UniPC prints per run.
    x_0 = sampler.sample(x_T, steps=nfe, **options)
  return x_0.numpy()[:, :, 0, 0], calls[0]


def rmse(x, reference):
  return float(np.sqrt(np.mean(np.sum((x - reference) ** 2, axis=-1) / x.shape[-1])))


def jaxdiff_best(rows, oracle, nfe, fixed_only):
  """(rmse, label) of the best deterministic jaxdiff row, or (nan, "-")."""
  candidates = [r for r in rows if r.get("oracle") == oracle and r.get("nfe") == nfe
                and r.get("family") == "jaxdiff" and r.get("status") == "ok"
                and not r.get("stochastic") and not (fixed_only and r.get("grid") == "learned")]
  if not candidates:
    return math.nan, "-"
  best = min(candidates, key=lambda r: r["rmse"])
  return best["rmse"], best["label"]


def main(argv):
  del argv
  torch.set_num_threads(1)
  modules = {"dpm_solver": load_module(_DPM_SOLVER.value, "dpm_solver_official"),
             "unipc": load_module(_UNIPC.value, "uni_pc_official")}
  config = load_config(_CONFIG.value)
  nfes = [int(n) for n in _NFES.value]
  print(f"process {config.process} {dict(config.process_options)}, {config.num_samples} "
        f"samples, seed {config.seed}; torch {torch.__version__}, jax {jax.__version__}")
  table = []
  for problem in build_problems(config):
    reference = np.asarray(problems.oracle_reference(problem.mixture, problem.process,
                                                     problem.x_T, **config.reference))
    for nfe in nfes:
      official = []
      for label, solver, variant, options in OFFICIAL:
        x_0, calls = run_official(modules, problem, solver, variant, options, nfe)
        if calls != nfe:
          raise AssertionError(f"{label} at NFE {nfe} called the network {calls} times")
        official.append((rmse(x_0, reference), label))
        print(f"{problem.name} NFE {nfe:>2} {label:<36} rmse {official[-1][0]:.4g}", flush=True)
      best = min(official)
      table.append((problem.name, nfe, best))

  # Read after the official runs, so a bench.py still running adds the rows it has finished.
  rows = [json.loads(line) for path in _JAXDIFF.value
          for line in pathlib.Path(path).read_text().splitlines() if line.strip()]
  table = [(name, nfe, best, jaxdiff_best(rows, name, nfe, fixed_only=True),
            jaxdiff_best(rows, name, nfe, fixed_only=False)) for name, nfe, best in table]

  print("\n| oracle | NFE | best official | jaxdiff fixed grid | ratio | jaxdiff overall | ratio |")
  print("|---|---|---|---|---|---|---|")
  for name, nfe, best, fixed, overall in table:
    print(f"| {name} | {nfe} | {best[0]:.3g} ({best[1]}) | {fixed[0]:.3g} ({fixed[1]}) | "
          f"{fixed[0] / best[0]:.2f} | {overall[0]:.3g} ({overall[1]}) | "
          f"{overall[0] / best[0]:.2f} |")


if __name__ == "__main__":
  app.run(main)
