"""The NFE benchmark: samplers x grids x NFE on the analytic oracle (jaxdiff.benchmark).

  python bench.py                                          # configs/benchmark.py
  python bench.py --config configs/benchmark_quick.py --workdir runs/quick
  python bench.py --peers --config.nfes '(5, 10, 15, 20)'  # with diffusers' schedulers
  python bench.py --oracle mixture.npz --init-noise x_T.npy --save-samples

Writes into a new workdir (never into one that already holds files):
results.md (rmse tables: configurations x NFE), results.csv and results.json
(one row per run, with a header of versions, process, oracles and seeds),
rmse-<oracle>.png and, with --save-samples, samples/<oracle>/*.npz.
"""

import pathlib

import jax
from absl import app, flags
from ml_collections import config_flags

from jaxdiff import benchmark, schedules
from jaxdiff.workdir import new_workdir

_CONFIG = config_flags.DEFINE_config_file("config", "configs/benchmark.py",
                                          "Benchmark configuration.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Output folder; default runs/bench-<time>.")
_INIT_NOISE = flags.DEFINE_string("init-noise", None,
                                  "x_T [num_samples, D] from this .npy instead of the seed.")
_ORACLE = flags.DEFINE_string("oracle", None, "Mixture .npz (weights [K], means [K, D], stds "
                              "[K]) replacing the configured oracles.")
_SAVE_SAMPLES = flags.DEFINE_bool("save-samples", False, "Write x_T, the reference and every "
                                  "run's samples as .npz.")
_PEERS = flags.DEFINE_bool("peers", False, "Also run the configured diffusers schedulers.")




def build_problems(config, oracle_file, init_noise_file):
  """The (name, Problem) of each oracle, every input checked before anything is written."""
  process = schedules.make_process(config.process, **config.process_options)
  if oracle_file:
    mixtures = {pathlib.Path(oracle_file).stem: benchmark.load_mixture(oracle_file)}
  else:
    mixtures = {}
    for spec in config.oracles:
      mixture = benchmark.make_oracle(spec.name, **spec.options)
      mixtures[f"{spec.name}-{mixture.dim}d"] = mixture
  problems = []
  for name, mixture in mixtures.items():
    x_T = None
    if init_noise_file:
      x_T = benchmark.load_init_noise(init_noise_file, (config.num_samples, mixture.dim))
    problems.append(benchmark.make_problem(name, process, mixture, config.prediction,
                                           config.num_samples, config.seed, x_T))
  return problems


def entries_for(problem, config, with_peers):
  entries = [benchmark.sampler_entry(problem, s.name, s.options.to_dict(), s.grid,
                                     s.grid_options.to_dict()) for s in config.samplers]
  if with_peers:
    from jaxdiff import peers  # pylint: disable=import-outside-toplevel
    entries += peers.peer_entries(problem, [p.to_dict() for p in config.peers])
  return entries


def main(argv):
  del argv
  config = _CONFIG.value
  problems = build_problems(config, _ORACLE.value, _INIT_NOISE.value)
  if _PEERS.value:
    from jaxdiff import peers  # pylint: disable=import-outside-toplevel
    peers.import_peers()  # A missing extra is reported before anything is written.
    if not hasattr(problems[0].process, "betas"):
      raise SystemExit(f"--peers needs a discrete DDPM process, got {config.process}")
  entries = [entries_for(problem, config, _PEERS.value) for problem in problems]
  for problem_entries in entries:
    benchmark.check_unique(problem_entries)
  workdir = new_workdir(_WORKDIR.value, "bench")

  rows = []
  for problem, problem_entries in zip(problems, entries):
    sample_dir = workdir / "samples" / problem.name if _SAVE_SAMPLES.value else None
    problem_rows, _ = benchmark.run_benchmark(
        problem, problem_entries, tuple(config.nfes),
        reference=benchmark.oracle_reference(problem.mixture, problem.process, problem.x_T,
                                             **config.reference),
        sample_dir=sample_dir, log=lambda line: print(line, flush=True))
    rows += problem_rows

  header = {"versions": benchmark.versions(), "device": str(jax.devices()[0]),
            "process": config.process, "process_options": config.process_options.to_dict(),
            "prediction": config.prediction, "num_samples": config.num_samples,
            "seed": config.seed, "init_noise": _INIT_NOISE.value, "oracle_file": _ORACLE.value,
            "oracles": {p.name: {"dim": p.mixture.dim, "modes": p.mixture.weights.shape[0]}
                        for p in problems},
            "nfes": list(config.nfes), "reference": config.reference.to_dict(),
            "nfe": "network calls counted by the sampler; a classifier-free-guided call "
                   "(conditional and unconditional in one batch of 2B, jaxdiff.guidance) "
                   "counts once",
            "metrics": "rmse = sqrt(mean ||x - x_ref||^2 / D) to the PF-ODE solution from the "
                       "same x_T; sw2 = sliced Wasserstein-2 to fresh data; nll in nats"}
  benchmark.write_results(workdir, header, rows)
  print(benchmark.markdown_table(rows))
  print(f"wrote results.md, results.csv, results.json and rmse-*.png to {workdir}")


if __name__ == "__main__":
  app.run(main)
