"""Samples a trained model (--checkpoint), or the analytic Gaussian-mixture oracle.

  python sample.py --checkpoint runs/digits                    # UniPC, NFE 20, 1000 samples
  python sample.py --checkpoint runs/digits --sampler ddpm --nfe 1000 --num 64 --params raw
  python sample.py --checkpoint runs/fmnist --guidance 3 --labels 0,1,2
  python sample.py                                   # the oracle: configs/base.py
  python sample.py --config configs/cosine.py --workdir runs/cosine
  python sample.py --config.num_samples 1000

With --checkpoint (a training workdir, its latest complete checkpoint, or one
<step>/ folder): the process, prediction and network come from the checkpoint;
any registered sampler runs at the asked NFE on the grid `--grid`, by default
the one `jaxdiff.grids.default_for` picks for the process (printed). The
samples go to a new folder (default <training workdir>/samples-<time>):
samples.npz (samples in [-1, 1] and x_T, labels), samples.png (a grid of the
first 100) and results.md / results.json (what ran, how long, and for data
with an evaluation classifier, its quality figures). Each call's samples
(--batch-size) are split over every device, with a progress bar over the
calls. Sampling with another process than the one trained needs --process and
warns.

Without --checkpoint, the oracle job:
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
import warnings

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging

from jaxdiff import (benchmark, cli, evaluation, fid, grids, metrics, oracle, parameterization,
                     plots, samplers, schedules, sde, workdir)
from jaxdiff.train import checkpoint, experiment, sampling, sharding

_CONFIG = cli.define_config("configs/base.py", "Sampling configuration.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Output folder; default runs/sample-<time>, "
                               "or <training workdir>/samples-<time> with --checkpoint.")
_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "Sample this trained model: a training "
                                  "workdir, its checkpoints/ folder or one <step>/ folder.")
_SAMPLER = flags.DEFINE_string("sampler", "unipc", "With --checkpoint: a registered sampler.")
_NFE = flags.DEFINE_integer("nfe", 20, "With --checkpoint: network evaluations per sample.")
_NUM = flags.DEFINE_integer("num", 1000, "With --checkpoint: number of samples.")
_GRID = flags.DEFINE_string("grid", None, "With --checkpoint: a grid of jaxdiff.grids.GRIDS; "
                            "default: the one for the trained process (grids.default_for).")
_GRID_OPTIONS = flags.DEFINE_string("grid-options", "{}", "With --checkpoint and --grid: the "
                                    "grid's options as JSON, e.g. '{\"rho\": 5}'.")
_OPTIONS = flags.DEFINE_string("options", "{}", "With --checkpoint: sampler options as JSON, "
                               "e.g. '{\"order\": 3}'.")
_GUIDANCE = flags.DEFINE_float("guidance", 1.0, "With --checkpoint: classifier-free guidance "
                               "scale w (1: the conditional model; conditional models only).")
_LABELS = flags.DEFINE_list("labels", None, "With --checkpoint: class ids, cycled over the "
                            "samples (default 0, 1, ..., K-1, 0, ...).")
_PARAMS = flags.DEFINE_string("params", "ema", "With --checkpoint: 'ema' (the first EMA), "
                              "'ema:<decay>' or 'raw'.")
_SEED = flags.DEFINE_integer("seed", 0, "With --checkpoint: seed of x_T and the sampler's noise.")
_INIT_NOISE = flags.DEFINE_string("init-noise", None, "With --checkpoint: x_T from this .npy "
                                  "[num, *data shape] instead of the seed.")
_BATCH = flags.DEFINE_integer("batch-size", 500, "With --checkpoint: samples per compiled call.")
_PROCESS = flags.DEFINE_string("process", None, "With --checkpoint: sample with this process "
                               "(jaxdiff.schedules.PROCESSES) instead of the trained one; warns.")
_PROCESS_OPTIONS = flags.DEFINE_string("process-options", "{}", "Options of --process as JSON.")
_EVALUATE = flags.DEFINE_enum("evaluate", "auto", ["auto", "yes", "no"], "With --checkpoint: "
                              "judge the samples with a classifier trained on the real data "
                              "(jaxdiff.evaluation); auto: for the digits, where it trains in "
                              "seconds.")
_INCEPTION = flags.DEFINE_string("inception-weights", None, "With --checkpoint (8-bit images): "
                                 "also FID, KID, Inception Score and precision/recall in "
                                 "Inception-v3's features against the training data "
                                 "(jaxdiff.fid; its statistics cached), with this weights "
                                 "file: pt_inception-2015-12-05-6726825d.pth or its .npz "
                                 "(python3 -m jaxdiff.inception convert).")
EVALUATED_SOURCES = ("digits", "idx")  # Labelled 8-bit image sources jaxdiff.evaluation knows.


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
  logging.set_verbosity(logging.WARNING)  # Orbax logs every restore at INFO.
  if _CHECKPOINT.value:
    sample_checkpoint()
    return
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


# --------------------------------------------------------------------------
# A trained model.
# --------------------------------------------------------------------------


def load_experiment(path):
  """(checkpoint folder, Experiment) of --checkpoint, with --process applied (warned)."""
  step_dir = checkpoint.find(path)
  record = checkpoint.read_run(step_dir)
  config = record["config"]
  if _PROCESS.value:
    trained = (config["process"], config["process_options"])
    config = {**config, "process": _PROCESS.value,
              "process_options": cli.json_object(_PROCESS_OPTIONS,
                                                  schedules.PROCESSES.get(_PROCESS.value))}
    warnings.warn(f"sampling with the process {_PROCESS.value} {config['process_options']}; the "
                  f"network was trained with {trained[0]} {trained[1]}")
  spec = record["data"]
  data_spec = experiment.DataSpec(tuple(spec["shape"]), spec["num_classes"], spec["eight_bit"])
  return step_dir, experiment.Experiment.from_config(config, data_spec)


def checkpoint_inputs(built, plan):
  """(x_T [num, ...], labels [num] or None) from the flags, checked."""
  num = _NUM.value
  if num < 1:
    raise ValueError(f"--num must be a positive integer, got {num}")
  if _INIT_NOISE.value:
    x_T = benchmark.load_init_noise(_INIT_NOISE.value, (num, *built.data.shape))
  else:
    x_T = sampling.prior_noise(built, plan, jax.random.fold_in(jax.random.PRNGKey(_SEED.value), 0),
                               num)
  if _LABELS.value is None:
    return x_T, sampling.default_labels(built, num)
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
    step_dir, built = load_experiment(_CHECKPOINT.value)
    plan = sampling.plan(built, _SAMPLER.value, _NFE.value, grid=_GRID.value,
                         grid_options=cli.json_object(_GRID_OPTIONS, grids.GRIDS.get(_GRID.value)),
                         guidance_scale=_GUIDANCE.value,
                         options=cli.json_object(_OPTIONS, samplers.get_sampler(_SAMPLER.value).fn))
    x_T, labels = checkpoint_inputs(built, plan)
    params = sampling.load_params(step_dir, built, _PARAMS.value)
    # The data's Inception statistics first: a bad weights file fails before sampling.
    inception_ref = (fid.reference(built.run.data_source, _INCEPTION.value,
                                   **built.run.data_options) if _INCEPTION.value else None)
  except (ValueError, FileNotFoundError) as error:
    raise SystemExit(f"cannot sample: {error} (nothing was written)") from None
  print(f"sampling {step_dir}: {plan.describe()}, {_NUM.value} samples, params {_PARAMS.value}",
        flush=True)
  train_dir = step_dir.parent.parent
  with workdir.claim(_WORKDIR.value, "samples", parent=train_dir) as out:
    start = time.perf_counter()
    x_0, nfe = sampling.sample_in_batches(built, plan, params, x_T, labels,
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
    table = markdown_table([row])
    quality = evaluate(built, x_0)
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
  split, since the Frechet distance depends on N), the held-out real images and noise; {}
  where the flag and the data say not to."""
  source = built.run.data_source
  wanted = _EVALUATE.value == "yes" or (_EVALUATE.value == "auto" and source == "digits")
  if not wanted:
    return {}
  if source not in EVALUATED_SOURCES or not built.data.eight_bit:
    raise SystemExit(f"--evaluate yes: no evaluation classifier for the source {source!r}; "
                     f"it knows {list(EVALUATED_SOURCES)}")
  options = {k: v for k, v in built.run.data_options.items() if k != "split"}
  reference = evaluation.reference(source, **options)
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
          f"{first['heldout_nearest_train_mean']:.3g}).\n\n" + markdown_table(rows))


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
