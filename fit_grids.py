"""Fits a sampler's grid to a trained model at each NFE (LD3), saved beside the checkpoint.

  python3 fit_grids.py --checkpoint runs/digits --sampler unipc --nfe 4,5,6,8,10
  python3 fit_grids.py --checkpoint runs/digits --sampler ddim --nfe 10 --options '{"eta": 0}'

The teacher is the model's own probability-flow ODE solution from the same x_T:
--teacher-sampler (unipc) at --teacher-nfe (100) on the process's default grid
(`grids.default_for`). --num starts x_T are drawn with the key
fold_in(PRNGKey(--seed), 1), apart from the x_T sample.py draws with the same
seed (fold_in(..., 0)); the last --held-out fraction of them judges the fits.
For each NFE, `grids.learned_table` (Tong et al. 2024, LD3, made robust) fits
the sampler's grid from the default grid, the --starts grids on its ends and
--perturbed perturbed copies, keeps the one of lowest held-out error (never
worse than the default grid's), and keeps the table monotone in NFE. Each grid
goes to <step dir>/grids/<sampler>-<options hash>-nfe<NFE>.json
(`jaxdiff.train.fitted_grids`), where `sample.py --checkpoint` finds it; an
existing file is refused unless --force. Unconditional models only.
"""

import jax
import numpy as np
from absl import app, flags, logging

from jaxdiff import cli, grids, samplers, workdir
from jaxdiff.progress import progress_bar
from jaxdiff.train import fitted_grids, generate

_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "A training workdir, its checkpoints/ "
                                  "folder or one <step>/ folder.", required=True)
_SAMPLER = flags.DEFINE_string("sampler", "unipc", "The registered sampler to fit grids for.")
_NFE = flags.DEFINE_list("nfe", None, "The NFE values, e.g. 5,8,10.", required=True)
_OPTIONS = flags.DEFINE_string("options", "{}", "The sampler's options as JSON, as for "
                               "sample.py, e.g. '{\"order\": 2}'.")
_NUM = flags.DEFINE_integer("num", 512, "Pairs (x_T, teacher solution) to fit and judge on.")
_HELD_OUT = flags.DEFINE_float("held-out", 0.25, "The fraction of the pairs that judges.")
_STARTS = flags.DEFINE_list("starts", ["log_snr", "karras"], "Grids of jaxdiff.grids.GRIDS "
                            "started from beside the default one (on its first and last "
                            "network times; the default itself and those that do not build "
                            "for the process are left out).")
_PERTURBED = flags.DEFINE_integer("perturbed", 1, "Perturbed copies of the default grid "
                                  "started from.")
_ITERATIONS = flags.DEFINE_integer("iterations", 100, "Adam steps of each start's fit.")
_FIT_BATCH = flags.DEFINE_integer("fit-batch-size", 16, "Pairs per Adam step.")
_LEARNING_RATE = flags.DEFINE_float("learning-rate", 0.05, "Adam's learning rate (cosine "
                                    "decayed) in the logits of the time ratios.")
_TEACHER = flags.DEFINE_string("teacher-sampler", "unipc", "The teacher's sampler (an ODE "
                               "sampler, default options).")
_TEACHER_NFE = flags.DEFINE_integer("teacher-nfe", 100, "The teacher's NFE.")
_BATCH = flags.DEFINE_integer("batch-size", 500, "Teacher samples per compiled call at most "
                               "(the pairs split into calls of equal size).")
_PARAMS = cli.define_params()
_SEED = flags.DEFINE_integer("seed", 0, "Seed of x_T (fold_in 1), the fits' draws (fold_in 2).")
_FORCE = flags.DEFINE_bool("force", False, "Replace fitted grids that exist.")


def nfe_values() -> list[int]:
  """--nfe as increasing distinct positive integers."""
  try:
    nfes = sorted({int(v) for v in _NFE.value})
  except ValueError:
    raise ValueError(f"--nfe must be positive integers, e.g. --nfe 5,8,10; got "
                     f"{','.join(_NFE.value)}") from None
  if not nfes or nfes[0] < 1:
    raise ValueError(f"--nfe must be positive integers, e.g. --nfe 5,8,10; got {nfes}")
  return nfes


def other_starts(built, init_grid) -> list:
  """The --starts grids [N + 1] on init_grid's first and last network times."""
  ends = {"t_max": float(init_grid[0]), "t_min": float(init_grid[-2])}
  default, _ = grids.default_for(built.process)
  starts = []
  for name in _STARTS.value:
    if name == default:
      continue
    if name not in grids.GRIDS:
      raise ValueError(f"--starts: unknown grid {name!r}; valid: {sorted(grids.GRIDS)}")
    try:
      grid = np.asarray(grids.make_grid(built.process, name, len(init_grid) - 1, **ends))
    except (ValueError, TypeError):  # Not for this process (e.g. the diffusers spacings).
      continue
    if grid[-1] == init_grid[-1]:
      starts.append(grid)
  return starts


def checked_inputs():
  """(step_dir, built, params, options, plans per NFE, teacher plan, paths), all checked
  before anything runs."""
  if not 0 < _HELD_OUT.value < 1:
    raise ValueError(f"--held-out must be a fraction in (0, 1), got {_HELD_OUT.value}")
  for flag in (_NUM, _PERTURBED, _ITERATIONS, _FIT_BATCH, _BATCH):
    if flag.value < (0 if flag is _PERTURBED else 1):
      raise ValueError(f"--{flag.name} must be a positive integer, got {flag.value}")
  generate.check_seed(_SEED.value)
  nfes = nfe_values()
  step_dir, built, params = generate.load(_CHECKPOINT.value, _PARAMS.value)
  if built.conditional:
    raise ValueError("fit_grids.py fits grids for unconditional models; this one was trained "
                     "with labels")
  options = cli.json_object(_OPTIONS)
  plans = [generate.plan(built, _SAMPLER.value, nfe, options=options) for nfe in nfes]
  steps = [len(p.grid) - 1 for p in plans]
  if len(set(steps)) < len(steps):
    raise ValueError(f"--nfe {','.join(map(str, nfes))} give the grid lengths {steps} for "
                     f"{_SAMPLER.value}: ask for NFE values of distinct lengths")
  teacher = generate.plan(built, _TEACHER.value, _TEACHER_NFE.value)
  paths = [fitted_grids.path_for(step_dir, _SAMPLER.value, options, nfe) for nfe in nfes]
  existing = [str(p) for p in paths if p.exists()]
  if existing and not _FORCE.value:
    raise FileExistsError(f"fitted grids exist: {', '.join(existing)}; pass --force to "
                          "replace them")
  return step_dir, built, params, options, plans, teacher, paths


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # Orbax logs every read at INFO.
  try:
    step_dir, built, params, options, plans, teacher, paths = checked_inputs()
  except (ValueError, FileNotFoundError, FileExistsError) as error:
    raise SystemExit(f"cannot fit: {error} (nothing was written)") from None
  key = jax.random.PRNGKey(_SEED.value)
  print(f"fitting {_SAMPLER.value} {options} grids for {step_dir} at NFE "
        f"{', '.join(str(p.nfe) for p in plans)}: teacher {teacher.describe()}, {_NUM.value} "
        f"pairs ({_HELD_OUT.value:g} held out)", flush=True)
  x_T = generate.prior_noise(built, plans[0], jax.random.fold_in(key, 1), _NUM.value)
  # Calls of equal size, the fewest of at most --batch-size: 512 pairs at 500 run as
  # 2 x 256, not as 2 x 500 with 488 padded rows (an ODE teacher: the split changes nothing).
  calls = -(-_NUM.value // _BATCH.value)
  x_ref, _ = generate.sample_in_batches(built, teacher, params, x_T, None, key,
                                        -(-_NUM.value // calls))

  denoise = generate.denoise_fn(built, params)
  sampler = samplers.get_sampler(_SAMPLER.value)
  def sample_fn(x, grid):  # [B, ...], [N + 1] -> x_0 [B, ...]
    return sampler(denoise, built.process, x, key, grid, prediction=built.objective.prediction,
                   **options)[0]

  init_grids = [p.grid for p in plans]
  bar = progress_bar(len(plans), 0, enabled=True, every_seconds=30)
  rows = []

  def save(i, grid, info):  # As each fit ends: an interrupted run keeps the grids it fitted.
    plan, path = plans[i], paths[i]
    fitted_grids.save(path, {
        "grid": np.asarray(grid).tolist(), "process": fitted_grids.process_fingerprint(
            built.process), "sampler": plan.sampler,
        "options": fitted_grids.canonical_options(plan.sampler, options), "nfe": plan.nfe,
        "rmse": info["rmse"], "rmse_init": info["rmse_init"], "start": info["start"],
        "monotone": info["monotone"], "init_grid": np.asarray(plan.grid).tolist(),
        "init": plan.describe(), "teacher": teacher.describe(), "num_pairs": _NUM.value,
        "num_held_out": info["num_held_out"], "iterations": _ITERATIONS.value,
        "checkpoint": str(step_dir), "params": _PARAMS.value, "seed": _SEED.value},
        force=_FORCE.value)
    rows.append([plan.nfe, len(grid) - 1, f"{info['rmse_init']:.4g}", f"{info['rmse']:.4g}",
                 info["start"], path.name])
    bar.set_postfix(nfe=plan.nfe, rmse=f"{info['rmse_init']:.4g} -> {info['rmse']:.4g}")
    bar.update(1)

  grids.learned_table(
      sample_fn, x_T, x_ref, init_grids, key=jax.random.fold_in(key, 2),
      starts=[other_starts(built, g) for g in init_grids], on_fit=save,
      num_perturbed=_PERTURBED.value, held_out=_HELD_OUT.value,
      num_iterations=_ITERATIONS.value, batch_size=_FIT_BATCH.value,
      learning_rate=_LEARNING_RATE.value)
  bar.close()
  print(workdir.markdown_table(["NFE", "steps", "held-out RMSE, default grid",
                                "held-out RMSE, fitted", "won", "file"], rows))
  print(f"\nwrote {len(rows)} fitted grid(s) to {paths[0].parent}")


if __name__ == "__main__":
  app.run(cli.exit_on_interrupt(main), flags_parser=cli.parse_flags)
