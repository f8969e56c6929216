"""The NFE benchmark: samplers x grids x NFE on the analytic oracle (jaxdiff.benchmark).

  python bench.py                                          # configs/benchmark.py
  python bench.py --config configs/benchmark_quick.py --workdir runs/quick
  python bench.py --peers --config.nfes '(5, 10, 15, 20)'  # with diffusers' schedulers
  python bench.py --oracle mixture.npz --init-noise x_T.npy --save-samples

Every configuration is checked (names, options, NFE values; each traced once
with jax.eval_shape, nothing compiled) before the workdir is claimed; a mistake
exits non-zero with every mistake listed. The workdir is a new folder, never one
that holds files (jaxdiff.workdir). Rows are appended to results.jsonl as they
finish; at the end come results.md (rmse tables: configurations x NFE),
results.csv and results.json (one row per run, with a header of versions,
process, oracles and seeds), rmse-<oracle>.png and, with --save-samples,
samples/<oracle>/*.npz. An interrupted benchmark leaves its finished rows and
the file INCOMPLETE; the same command with --workdir DIR --resume runs only
what is missing.
"""

import json
import pathlib

import jax
from absl import app, flags

from jaxdiff import cli, parameterization, schedules, workdir
from jaxdiff.benchmark import problems, report, runs

_CONFIG = cli.define_config("configs/benchmark.py", "Benchmark configuration.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Output folder; default runs/bench-<time>.")
_INIT_NOISE = flags.DEFINE_string("init-noise", None,
                                  "x_T [num_samples, D] from this .npy instead of the seed.")
_ORACLE = flags.DEFINE_string("oracle", None, "Mixture .npz (weights [K], means [K, D], stds "
                              "[K]) replacing the configured oracles.")
_SAVE_SAMPLES = flags.DEFINE_bool("save-samples", False, "Write x_T, the reference and every "
                                  "run's samples as .npz.")
_PEERS = flags.DEFINE_bool("peers", False, "Also run the configured diffusers schedulers.")
_RESUME = flags.DEFINE_bool("resume", False, "Finish the interrupted benchmark in --workdir: "
                            "same flags, only the missing runs.")
SETTINGS = "settings.json"  # What a resumed benchmark must agree with.


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


def main(argv):
  del argv
  config = _CONFIG.value
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


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
