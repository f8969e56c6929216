"""Samples a trained model (--checkpoint; the oracle job is bench.py --job oracle).

  python sample.py --checkpoint runs/digits                    # UniPC, NFE 20, 1000 samples
  python sample.py --checkpoint runs/digits --sampler ddpm --nfe 1000 --num 64 --params raw
  python sample.py --checkpoint runs/fmnist --guidance 3 --labels 0,1,2

--checkpoint (a training workdir, its latest complete checkpoint, or one
<step>/ folder): the process, prediction and network come from the checkpoint;
any registered sampler runs at the asked NFE on the grid `--grid`, by default
the grid fit_grids.py fitted to this checkpoint for the sampler, its options and
the NFE where there is one (<step>/grids/, `jaxdiff.train.fitted_grids`; the log
line and results table name its file), else the one `jaxdiff.grids.default_for`
picks for the process (printed). The
samples go to a new folder (default <training workdir>/samples-<time>):
samples.npz (samples in [-1, 1] and x_T, labels), samples.png (a grid of the
first 100) and results.md / results.json (what ran, how long, and for data
with an evaluation classifier, its quality figures). Each call's samples
(--batch-size) are split over every device, with a progress bar over the
calls. Sampling with another process than the one trained needs --process and
warns.
"""

import json
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging

from jaxdiff import cli, evaluation, fid, grids, plots, schedules, workdir
from jaxdiff.benchmark import problems
from jaxdiff.train import generate, sharding

_WORKDIR = flags.DEFINE_string("workdir", None, "Output folder; default "
                               "<training workdir>/samples-<time>.")
_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "Sample this trained model: a training "
                                  "workdir, its checkpoints/ folder or one <step>/ folder.")
_SAMPLER = flags.DEFINE_string("sampler", "unipc", "A registered sampler.")
_NFE = flags.DEFINE_integer("nfe", 20, "Network evaluations per sample.")
_NUM = flags.DEFINE_integer("num", 1000, "Number of samples.")
_GRID = flags.DEFINE_string("grid", None, "A grid of jaxdiff.grids.GRIDS; default: the one "
                            "fit_grids.py fitted for the sampler, options and NFE where there "
                            "is one, else the one for the trained process (grids.default_for).")
_GRID_OPTIONS = flags.DEFINE_string("grid-options", "{}", "With --grid: the "
                                    "grid's options as JSON, e.g. '{\"rho\": 5}'.")
_OPTIONS = flags.DEFINE_string("options", "{}", "Sampler options as JSON, "
                               "e.g. '{\"order\": 3}'.")
_GUIDANCE = flags.DEFINE_float("guidance", 1.0, "Classifier-free guidance "
                               "scale w (1: the conditional model; conditional models only).")
_LABELS = flags.DEFINE_list("labels", None, "Class ids, cycled over the "
                            "samples (default 0, 1, ..., K-1, 0, ...).")
_PARAMS = flags.DEFINE_string("params", "ema", "'ema' (the first EMA), "
                              "'ema:<decay>' or 'raw'.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of x_T and the sampler's noise.")
_INIT_NOISE = flags.DEFINE_string("init-noise", None, "x_T from this .npy "
                                  "[num, *data shape] instead of the seed.")
_BATCH = flags.DEFINE_integer("batch-size", 500, "Samples per compiled call.")
_PROCESS = flags.DEFINE_string("process", None, "Sample with this process "
                               "(jaxdiff.schedules.PROCESSES) instead of the trained one; warns.")
_PROCESS_OPTIONS = flags.DEFINE_string("process-options", "{}", "Options of --process as JSON.")
_EVALUATE = flags.DEFINE_enum("evaluate", "auto", ["auto", "yes", "no"], "Judge the samples "
                              "with a classifier trained on the real data (jaxdiff.evaluation); "
                              "auto: for the digits, where it trains in seconds.")
_INCEPTION = flags.DEFINE_string("inception-weights", None, "For 8-bit images: "
                                 "also FID, KID, Inception Score and precision/recall in "
                                 "Inception-v3's features against the training data "
                                 "(jaxdiff.fid; its statistics cached), with this weights "
                                 "file: pt_inception-2015-12-05-6726825d.pth or its .npz "
                                 "(python3 -m jaxdiff.inception convert).")


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # Orbax logs every restore at INFO.
  if not _CHECKPOINT.value:
    raise SystemExit("sample.py needs --checkpoint DIR: a training workdir, its checkpoints/ "
                     "folder or one <step>/ folder (nothing was run); the analytic oracle's "
                     "sampler runs are python3 bench.py --job oracle")
  sample_checkpoint()


def load_checkpoint(path):
  """(checkpoint folder, Experiment, parameters) of --checkpoint: the --params, with --process
  applied (warned)."""

  def with_process(config):
    trained = (config["process"], config["process_options"])
    options = cli.json_object(_PROCESS_OPTIONS, schedules.PROCESSES.get(_PROCESS.value))
    warnings.warn(f"sampling with the process {_PROCESS.value} {options}; the network was "
                  f"trained with {trained[0]} {trained[1]}")
    return {**config, "process": _PROCESS.value, "process_options": options}

  return generate.load(path, _PARAMS.value, with_process if _PROCESS.value else None)


def checkpoint_inputs(built, plan):
  """(x_T [num, ...], labels [num] or None) from the flags, checked."""
  num = _NUM.value
  generate.check_sampling(built, num, _BATCH.value, _SEED.value)
  if _INIT_NOISE.value:
    x_T = problems.load_init_noise(_INIT_NOISE.value, (num, *built.data.shape))
  else:
    x_T = generate.prior_noise(built, plan, jax.random.fold_in(jax.random.PRNGKey(_SEED.value), 0),
                               num)
  if _LABELS.value is None:
    return x_T, generate.default_labels(built, num)
  if not built.conditional:
    raise ValueError("--labels needs a class-conditional model; this one was trained without")
  try:
    ids = [int(v) for v in _LABELS.value]
  except ValueError:
    raise ValueError(f"--labels must be integers, got {_LABELS.value}") from None
  if not all(0 <= i < built.data.num_classes for i in ids):
    raise ValueError(f"--labels must lie in [0, {built.data.num_classes}), got {ids}")
  return x_T, jnp.asarray(np.resize(ids, num), jnp.int32)


def sample_checkpoint():
  """Samples a trained model as the flags say; writes the new output folder."""
  try:
    step_dir, built, params = load_checkpoint(_CHECKPOINT.value)
    plan = generate.plan(built, _SAMPLER.value, _NFE.value, grid=_GRID.value,
                         grid_options=cli.json_object(_GRID_OPTIONS, grids.GRIDS.get(_GRID.value)),
                         guidance_scale=_GUIDANCE.value,
                         options=cli.json_object(_OPTIONS), step_dir=step_dir)
    x_T, labels = checkpoint_inputs(built, plan)
    judged = evaluation.wanted(built.run.data.source, _EVALUATE.value)
    # The data's Inception statistics first: a bad weights file fails before sampling.
    inception_ref = (fid.reference(built.run.data.source, _INCEPTION.value,
                                   **built.run.data.options) if _INCEPTION.value else None)
  except (ValueError, FileNotFoundError) as error:
    raise SystemExit(f"cannot sample: {error} (nothing was written)") from None
  print(f"sampling {step_dir}: {plan.describe()}, {_NUM.value} samples, params {_PARAMS.value}",
        flush=True)
  train_dir = step_dir.parent.parent
  with workdir.claim(_WORKDIR.value, "samples", parent=train_dir) as out:
    start = time.perf_counter()
    x_0, nfe = generate.sample_in_batches(built, plan, params, x_T, labels,
                                          jax.random.PRNGKey(_SEED.value), _BATCH.value,
                                          mesh=sharding.make_mesh({"data": -1}))
    seconds = time.perf_counter() - start
    np.savez(out / "samples.npz", samples=x_0, x_T=np.asarray(x_T),
             labels=np.asarray(labels) if labels is not None else np.zeros(0, np.int32))
    if built.data.eight_bit:
      plots.save_image_grid(x_0[:100], out / "samples.png")
    else:
      plots.plot_samples_2d({"samples": x_0[:, :2]}, out / "samples.png",
                            extent=float(np.nanmax(np.abs(x_0[:, :2]))) * 1.1)
    row = {"checkpoint": str(step_dir), "sampler": plan.sampler, "nfe": nfe,
           "grid": plan.grid_name + "".join(f" {k}={v:.4g}" for k, v in plan.grid_options.items()),
           "steps": len(plan.grid) - 1, "guidance": plan.guidance_scale, "params": _PARAMS.value,
           "num_samples": len(x_0), "seed": _SEED.value, "seconds": seconds}
    table = workdir.markdown_table(list(row), [list(row.values())])
    quality = evaluate(built, x_0) if judged else {}
    if quality:
      table += "\n\n" + quality_table(quality)
    inception_quality = (fid.quality(np.clip(x_0, -1.0, 1.0), inception_ref)
                         if inception_ref is not None else None)
    if inception_quality:
      table += "\n\nInception-v3 (jaxdiff.fid): " + fid.format_quality(inception_quality)
    (out / "results.json").write_text(json.dumps(
        {"rows": [row], "quality": quality, "inception": inception_quality}, indent=1))
    (out / "results.md").write_text(table + "\n")
    print(table)
    print(f"\nwrote samples.npz, samples.png and results.md to {out}")


def evaluate(built, x_0):
  """{set name: jaxdiff.evaluation.quality} for the samples (all, and as many as the held-out
  split, since the Frechet distance depends on N), the held-out real images and noise."""
  options = {k: v for k, v in built.run.data.options.items() if k != "split"}
  reference = evaluation.reference(built.run.data.source, **options)
  images = np.clip(x_0, -1.0, 1.0)  # As the PNGs (data.to_uint8) show them.
  rows = {f"samples ({len(x_0)})": evaluation.quality(images, reference)}
  held_out = len(reference.heldout_images)
  if len(x_0) > held_out:
    rows[f"samples (first {held_out})"] = evaluation.quality(images[:held_out], reference)
  return {**rows, **evaluation.reference_rows(reference)}


def quality_table(quality):
  """The quality rows as a markdown table, the number of images in every row."""
  rows = [{"images": name, "N": q["num_samples"], "confidence": q["confidence"],
           "classes": q["classes_present"], "class entropy": q["class_entropy"],
           "Frechet distance": q["frechet_distance"],
           "KID": f"{q['kid']:.4f} +- {q['kid_error']:.4f}",
           "Inception Score": q["inception_score"], "precision": q["precision"],
           "recall": q["recall"],
           "nearest-train distance": q["nearest_train_mean"]} for name, q in quality.items()]
  first = next(iter(quality.values()))
  return (f"Judged by a classifier trained on {first['num_reference']} {first['reference']} "
          "images (jaxdiff.evaluation): Frechet distance and KID (+- its standard error) of "
          "its features to theirs, its Inception Score, precision and recall (k = 3), mean "
          "distance of each image to its nearest training image (held-out real images: "
          f"{first['heldout_nearest_train_mean']:.3g}).\n\n"
          + workdir.markdown_table(list(rows[0]), [list(row.values()) for row in rows]))


if __name__ == "__main__":
  app.run(cli.exit_on_interrupt(main), flags_parser=cli.parse_flags)
