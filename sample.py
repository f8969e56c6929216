"""Samples a trained model (--checkpoint; the oracle job is bench.py --job oracle).

  python sample.py --checkpoint runs/digits                    # UniPC, NFE 20, 1000 samples
  python sample.py --checkpoint runs/digits --sampler ddpm --nfe 1000 --num 64 --params raw
  python sample.py --checkpoint runs/fmnist --guidance 3 --labels 0,1,2
  python sample.py --checkpoint runs/digits --num 50000 --workdir runs/digits-50k   # resumable

--checkpoint (a training workdir, its latest complete checkpoint, or one
<step>/ folder): the process, prediction and network come from the checkpoint;
any registered sampler runs at the asked NFE on the grid `--grid`, by default
the grid fit_grids.py fitted to this checkpoint for the sampler, its options and
the NFE where there is one (<step>/grids/, `jaxdiff.train.fitted_grids`; the log
line and results table name its file), else the one `jaxdiff.grids.default_for`
picks for the process (printed). Sampling with another process than the one
trained needs --process and warns.

The run (`jaxdiff.train.sample_run`) goes over global batches of --batch-size
samples spread over every device of every process; sample i's x_T, label and
sampler noise derive from (--seed, i) alone, so the samples do not depend on
the devices or the batch size. Each batch is judged on the devices right after
sampling -- by the classifier trained on the real data (`jaxdiff.evaluation`)
and, with --inception-weights, by Inception-v3 -- and only its statistics stay
(`jaxdiff.streamed`): host memory does not grow with --num. The output folder
(default <training workdir>/samples-<time>) receives progress.npz and
progress.json every --save-every batches (the statistics so far, the kept
samples and features): a run that is killed continues from its last saved
batch when the same command is run again with --workdir naming that folder,
and ends with the same statistics, bitwise. At the end: samples.npz (the first
--save-images samples in [-1, 1], their x_T and labels), samples.png (a grid of
the first 100) and results.md / results.json (what ran, how long, the quality
figures). Several processes run the same command with --coordinator,
--num-processes and --process-id (as train.py) and a --workdir they all see;
process 0 writes.
"""

import json
import pathlib
import warnings

import jax
import numpy as np
from absl import app, flags, logging

from jaxdiff import (cli, data, evaluation, fid, grids, plots, processes, schedules, streamed,
                    workdir)
from jaxdiff.train import generate, latent, sample_run, sharding

_WORKDIR = flags.DEFINE_string("workdir", None, "Output folder; default "
                               "<training workdir>/samples-<time>.")
_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "Sample this trained model: a training "
                                  "workdir, its checkpoints/ folder or one <step>/ folder.")
_SAMPLER = flags.DEFINE_string("sampler", None, "A registered sampler; default: consistency "
                                "for a consistency model, ddim for a progressive-distillation "
                                "model, euler for a reflow, else unipc.")
_NFE = flags.DEFINE_integer("nfe", None, "Network evaluations per sample; default: 1 for a "
                            "consistency model or a reflow distilled to one step, 2 for a "
                            "reflow, the steps of a progressive-distillation model, else 20.")
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
_PARAMS = cli.define_params()
_SEED = flags.DEFINE_integer("seed", 0, "Seed of x_T and the sampler's noise.")
_BATCH = flags.DEFINE_integer("batch-size", 500, "Samples per compiled call over every "
                              "device (rounded up to a multiple of the devices; a last batch "
                              "that --num does not fill is padded, its extra samples dropped).")
_SAVE_IMAGES = flags.DEFINE_integer("save-images", 100, "Keep the first this many samples in "
                                    "samples.npz (x_T and labels with them).")
_KEEP_FEATURES = flags.DEFINE_integer("keep-features", 5000, "KID, precision/recall and paired "
                                      "comparisons use the first this many samples' features.")
_SAVE_EVERY = flags.DEFINE_integer("save-every", 10, "Save the progress every this many "
                                   "batches (and at the end).")
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
  processes.start()
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


def checkpoint_labels(built):
  """The --labels as a tuple of class ids (None: the default 0, 1, ..., K - 1), checked."""
  if _LABELS.value is None:
    return None
  if not built.conditional:
    raise ValueError("--labels needs a class-conditional model; this one was trained without")
  try:
    ids = tuple(int(v) for v in _LABELS.value)
  except ValueError:
    raise ValueError(f"--labels must be integers, got {_LABELS.value}") from None
  if not all(0 <= i < built.data.num_classes for i in ids):
    raise ValueError(f"--labels must lie in [0, {built.data.num_classes}), got {list(ids)}")
  return ids


def resumable(path) -> bool:
  """Whether --workdir holds an unfinished sample.py run to take up (its progress.json)."""
  path = pathlib.Path(path or "")
  return bool(path.parts) and (path / workdir.MARKER).is_file() and (
      path / sample_run.RECORD).is_file()


def sample_checkpoint():
  """Samples a trained model as the flags say; writes (or continues) the output folder."""
  try:
    step_dir, built, params = load_checkpoint(_CHECKPOINT.value)
    if built.trains_autoencoder:
      return reconstruct_checkpoint(step_dir, built, params)
    default_sampler, default_nfe = generate.default_sampler(built)
    sampler = _SAMPLER.value or default_sampler
    nfe = default_nfe if _NFE.value is None else _NFE.value
    plan = generate.plan(built, sampler, nfe, grid=_GRID.value,
                         grid_options=cli.json_object(_GRID_OPTIONS, grids.GRIDS.get(_GRID.value)),
                         guidance_scale=_GUIDANCE.value,
                         options=cli.json_object(_OPTIONS), step_dir=step_dir)
    job = sample_run.Job(_NUM.value, _BATCH.value, _SEED.value, checkpoint_labels(built),
                         _SAVE_IMAGES.value, _KEEP_FEATURES.value, _SAVE_EVERY.value)
    # A latent model's decoded samples are judged as images of the data its autoencoder
    # encoded.
    judged = streamed.judges(*latent.image_data(built), _EVALUATE.value, _INCEPTION.value)
    sample_run.check_judged(job, judged)
  except (ValueError, FileNotFoundError) as error:
    raise SystemExit(f"cannot sample: {error} (nothing was written)") from None
  mesh = sharding.make_mesh({"data": -1})
  size = sample_run.global_batch_size(job, mesh)
  writes = jax.process_index() == 0
  if writes:
    print(f"sampling {step_dir}: {plan.describe()}, {job.num} samples in batches of {size} "
          f"over {mesh.devices.size} devices, params {_PARAMS.value}", flush=True)
    few_step = generate.few_step_kind(built)
    if _SAMPLER.value is None and few_step:
      print(f"{few_step}: {plan.sampler} at NFE {plan.nfe} by default (--sampler and --nfe "
            "choose others)", flush=True)
    if job.num % size:
      print(f"--num {job.num} is not a multiple of the batch {size}: the last batch samples "
            f"{size - job.num % size} extra samples, which are dropped", flush=True)
  train_dir = step_dir.parent.parent
  resume = resumable(_WORKDIR.value)
  record = {"checkpoint": str(step_dir.resolve()), "params": _PARAMS.value,
            "sampler": plan.sampler, "nfe": plan.nfe, "options": plan.options,
            "guidance": plan.guidance_scale}
  with processes.claimed_workdir(_WORKDIR.value, "samples", resume, parent=train_dir) as out:
    if writes:
      print(f"writing to {out}; if stopped, the same command with --workdir {out} continues",
            flush=True)
    try:
      result = sample_run.run(built, plan, params, job, mesh, judges=judged, out=out,
                              record=record)
    except ValueError as error:
      raise SystemExit(f"cannot sample: {error}") from None
    if writes:
      write_results(out, built, plan, step_dir, job, result)


def reconstruct_checkpoint(step_dir, built, params):
  """Judges an autoencoder's reconstructions of --num held-out images of its data (the floor
  of any latent model of them); writes reconstructions.png (each original beside its
  reconstruction), reconstructions.npz and results.md / results.json."""
  try:
    options, held_out = data.held_out_options(built.run.data.source, built.run.data.options)
    source = data.make_source(built.run.data.source, **options)
    if not 1 <= _NUM.value <= len(source):
      raise ValueError(f"--num must lie in [1, {len(source)}] (the held-out images: "
                       f"{held_out}), got {_NUM.value}")
    job = sample_run.Job(_NUM.value, _BATCH.value, 0, None, _SAVE_IMAGES.value,
                         _KEEP_FEATURES.value)
    judged = streamed.judges(built.run.data.source, options, _EVALUATE.value, _INCEPTION.value)
    sample_run.check_judged(job, judged)
  except (ValueError, FileNotFoundError) as error:
    raise SystemExit(f"cannot reconstruct: {error} (nothing was written)") from None
  images, _ = data.model_arrays(source, _NUM.value)
  mesh = sharding.make_mesh({"data": -1})
  writes = jax.process_index() == 0
  if writes:
    print(f"reconstructing {_NUM.value} images of {built.run.data.source} ({held_out}) with "
          f"the autoencoder {step_dir}, params {_PARAMS.value}", flush=True)
  with processes.claimed_workdir(_WORKDIR.value, "reconstructions", False,
                                 parent=step_dir.parent.parent) as out:
    result = sample_run.reconstruct(built, params, images, job, mesh, judges=judged)
    if not writes:
      return
    np.savez(out / "reconstructions.npz", reconstructions=result.images, images=result.x_T)
    pairs = np.stack([result.x_T[:50], result.images[:50]], axis=1)
    plots.save_image_grid(pairs.reshape(-1, *images.shape[1:]), out / "reconstructions.png",
                          cols=2 * int(np.ceil(np.sqrt(len(pairs) / 2))))
    row = {"checkpoint": str(step_dir), "params": _PARAMS.value,
           "data": f"{built.run.data.source} {options}", "num_images": _NUM.value,
           "seconds": result.seconds, "images_per_second": result.sampled / result.seconds}
    write_tables(out, built, row, result, "reconstructions",
                 "The autoencoder's reconstructions (the posterior means decoded) of held-out "
                 "images: the floor of any latent model of these images.\n\n")
    print(f"\nwrote reconstructions.npz, reconstructions.png and results.md to {out}")


def write_results(out, built, plan, step_dir, job, result):
  """samples.npz, samples.png and results.md / results.json of a finished run."""
  np.savez(out / "samples.npz", samples=result.images, x_T=result.x_T,
           labels=result.labels if result.labels is not None else np.zeros(0, np.int32))
  if built.data.makes_images:
    plots.save_image_grid(result.images[:100], out / "samples.png")
  else:
    plots.plot_samples_2d({"samples": result.images[:, :2]}, out / "samples.png",
                          extent=float(np.nanmax(np.abs(result.images[:, :2]))) * 1.1)
  row = {"checkpoint": str(step_dir), "sampler": plan.sampler, "nfe": result.nfe,
         "grid": " ".join([plan.grid_name, *plan.grid_option_words()]),
         "steps": len(plan.grid) - 1, "guidance": plan.guidance_scale, "params": _PARAMS.value,
         "num_samples": job.num, "seed": job.seed, "seconds": result.seconds,
         "samples_per_second": result.sampled / result.seconds}
  write_tables(out, built, row, result, "samples")
  print(f"\nwrote samples.npz, samples.png and results.md to {out}")


def write_tables(out, built, row: dict, result, name: str, preamble: str = ""):
  """results.md and results.json: the run's row and the judges' figures of its images
  (`name`: samples or reconstructions); printed."""
  table = preamble + workdir.markdown_table(list(row), [list(row.values())])
  quality, inception_quality = {}, None
  if "classifier" in result.running:
    quality = evaluate(built, result.running["classifier"], name)
    table += "\n\n" + quality_table(quality)
  if "inception" in result.running:
    inception_quality = result.running["inception"].quality()
    table += "\n\nInception-v3 (jaxdiff.fid): " + fid.format_quality(inception_quality)
  (out / "results.json").write_text(json.dumps(
      {"rows": [row], "quality": quality, "inception": inception_quality}, indent=1,
      default=workdir.json_default))
  (out / "results.md").write_text(table + "\n")
  print(table)


def evaluate(built, running, name: str = "samples"):
  """{set name: quality} of the samples (`streamed.Running.quality`; a latent model's
  decoded), the held-out real images and noise (`evaluation.reference_rows`)."""
  source, options = latent.image_data(built)
  options = {k: v for k, v in options.items() if k != "split"}
  reference = evaluation.reference(source, **options)
  samples = running.quality()
  return {f"{name} ({samples['num_samples']})": samples,
          **evaluation.reference_rows(reference, samples["num_samples"])}


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
