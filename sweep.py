"""Evaluates a training run's checkpoints over samplers x NFE x guidance x parameters.

  python sweep.py --checkpoints runs/digits --samplers unipc,dpm_solver,ddim --nfe 5,10,20 \
      --num 1000 --workdir runs/digits-sweep
  python sweep.py --checkpoints runs/digits --steps every:5000 --params ema,phema:0.05,phema:0.1
  python sweep.py --checkpoints runs/fmnist --guidance 1,2,3 --compare guidance

Each cell (checkpoint step, --params choice, sampler, NFE, guidance w) samples --num
samples with the same --seed, so sample i starts from the same x_T in every cell, and
is judged as sample.py judges (the evaluation classifier, and Inception-v3 with
--inception-weights), in its own subfolder of --workdir, where a killed cell continues
from its saved progress (`jaxdiff.train.sweep`). A finished cell appends a row to
results.jsonl; the same command run again on the --workdir skips the finished cells
(more checkpoints or values on an axis add cells). Everything is checked before anything
samples: the checkpoints, every cell's sampler, NFE and guidance, and every --params choice
(as `generate.load` takes them: raw, ema, ema:<decay>, phema:<sigma_rel>).

Output: results.md (a table of the cells, and the paired comparisons along --compare:
the difference of two cells' Frechet distances with a bootstrap 95% interval over the
shared samples), results.json, quality-nfe.png (a line per sampler) and, where the axis
varies, quality-guidance.png, quality-step.png and quality-sigma-rel.png (two or more
phema:<sigma_rel> choices, the other --params as dashed lines).
"""

import pathlib

import jax
from absl import app, flags, logging

from jaxdiff import cli, processes
from jaxdiff.train import sample_run, sharding, sweep

_CHECKPOINTS = flags.DEFINE_string("checkpoints", None, "The training run: its workdir or its "
                                   "checkpoints/ folder.")
_STEPS = flags.DEFINE_string("steps", "last", "Which checkpoints: all, last, or every:K (the "
                             "steps that are multiples of K).")
_PARAMS = flags.DEFINE_list("params", ["ema"], "Parameter choices, each as generate.load takes "
                            "it: raw, ema, ema:<decay>, phema:<sigma_rel>.")
_SAMPLERS = flags.DEFINE_list("samplers", ["unipc"], "Registered samplers (default options).")
_NFE = flags.DEFINE_list("nfe", ["20"], "Network evaluations per sample.")
_GUIDANCE = flags.DEFINE_list("guidance", ["1"], "Classifier-free guidance weights w "
                              "(1: the conditional model; conditional models only).")
_NUM = flags.DEFINE_integer("num", 1000, "Samples per cell.")
_BATCH = flags.DEFINE_integer("batch-size", 500, "Samples per compiled call over every device.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of every cell's x_T and sampler noise.")
_KEEP_FEATURES = flags.DEFINE_integer("keep-features", 5000, "KID, precision/recall and the "
                                      "paired comparisons use the first this many samples.")
_SAVE_EVERY = flags.DEFINE_integer("save-every", 10, "A cell saves its progress every this many "
                                   "batches.")
_EVALUATE = flags.DEFINE_enum("evaluate", "auto", ["auto", "yes", "no"], "Judge with the "
                              "classifier trained on the real data (jaxdiff.evaluation); auto: "
                              "for the digits.")
_INCEPTION = flags.DEFINE_string("inception-weights", None, "Also FID with these Inception-v3 "
                                 "weights (as sample.py); the tables and plots then use FID.")
_COMPARE = flags.DEFINE_enum("compare", "sampler", [*sweep.AXES, "none"], "Paired comparisons "
                             "of the cells that differ along this axis only.")
_BOOTSTRAP = flags.DEFINE_integer("bootstrap", 1000, "Bootstrap resamples of a paired "
                                  "comparison.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Output folder (a sweep's folder to continue "
                               "it); default <training workdir>/sweep-<time>.")


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # Orbax logs every restore at INFO.
  if not _CHECKPOINTS.value:
    raise SystemExit("sweep.py needs --checkpoints DIR: a training workdir or its checkpoints/ "
                     "folder (nothing was run)")
  processes.start()
  try:
    nfes = [int(n) for n in _NFE.value]
    guidances = [float(w) for w in _GUIDANCE.value]
  except ValueError:
    raise SystemExit(f"cannot sweep: --nfe takes integers and --guidance numbers, got "
                     f"{_NFE.value} and {_GUIDANCE.value} (nothing was written)") from None
  if _BOOTSTRAP.value < 2:
    raise SystemExit(f"cannot sweep: --bootstrap must be at least 2, got {_BOOTSTRAP.value} "
                     "(nothing was written)")
  try:
    job = sample_run.Job(_NUM.value, _BATCH.value, _SEED.value, None, 0, _KEEP_FEATURES.value,
                         _SAVE_EVERY.value)
    prepared = sweep.prepare(_CHECKPOINTS.value, _STEPS.value, _PARAMS.value, _SAMPLERS.value,
                             nfes, guidances, job, _WORKDIR.value, evaluate=_EVALUATE.value,
                             inception_weights=_INCEPTION.value)
  except (ValueError, FileNotFoundError) as error:
    raise SystemExit(f"cannot sweep: {error} (nothing was written)") from None
  mesh = sharding.make_mesh({"data": -1})
  resume = bool(_WORKDIR.value) and (pathlib.Path(_WORKDIR.value) / sweep.SETTINGS).is_file()
  train_dir = next(iter(prepared.step_dirs.values())).parent.parent
  todo = prepared.todo()
  with processes.claimed_workdir(_WORKDIR.value, "sweep", resume, parent=train_dir) as out:
    if jax.process_index() == 0:
      print(f"sweeping {len(prepared.cells)} cells ({len(prepared.cells) - len(todo)} finished "
            f"earlier) of {_NUM.value} samples into {out}; if stopped, the same command with "
            f"--workdir {out} continues", flush=True)
    rows = sweep.run(prepared, out, mesh, bootstrap=_BOOTSTRAP.value,
                     compare=None if _COMPARE.value == "none" else _COMPARE.value)
    if jax.process_index() == 0:
      print((out / "results.md").read_text())
      print(f"wrote {len(rows)} rows, results.md and the plots to {out}")


if __name__ == "__main__":
  app.run(cli.exit_on_interrupt(main), flags_parser=cli.parse_flags)
