"""The classic experiments on a trained model, one command each.

  python3 study.py samplers --checkpoint runs/digits            # DDIM vs DDPM (and UniPC)
  python3 study.py samplers --checkpoint runs/digits --num 297 --nfes 10,20,50
  python3 study.py edit --checkpoint runs/digits                # inpainting and SDEdit

samplers: Song et al. 2021 ("DDIM", table 1): the deterministic DDIM sampler
  at 20-50 steps comes close to ancestral DDPM at 1000, where DDPM at few
  steps does not. The same trained model and the same x_T (seed) for every
  row: DDPM (ancestral, eta = 1), DDIM (eta = 0) and UniPC (Zhao et al. 2023)
  at each NFE of --nfes, and DDPM at 1000 as the reference, each on the grid
  `grids.default_for` the process (printed). For 8-bit image data with an
  evaluation classifier (`jaxdiff.evaluation`: the digits; Fashion-MNIST with
  --evaluate yes) every row is scored: the classifier's Frechet distance,
  KID, confidence and class coverage at N = --num, next to the held-out real
  images at their own N.

edit: controllable generation with the unconditional model
  (`jaxdiff.conditional`) on --num held-out images (the source's test split):
  inpainting of the lower half by replacement alone and with RePaint's
  resampling (--resample), and SDEdit from a degraded guide (2x2 blocks
  averaged, then Gaussian noise of std 0.3) from three noise levels sigma /
  alpha = 0.25, 0.5, 1, each on the process's default grid (`grids.default_for`)
  with --steps steps. Scored
  where there is an evaluation classifier: how often the edited image is
  classified as the original's label (inpainting should restore the digit),
  the classifier's confidence (does it look like a digit?), and the mean
  distances to the original and to the guide (SDEdit trades the second for
  realism as t0 grows).

Writes a new folder (default <training workdir>/study-<name>-<time>):
results.md / results.json, and for samplers: quality.png (the Frechet
distance against NFE, DDPM-1000 and held-out real as lines) and samples.png
(the first 10 samples of every row, one row each, same x_T); for edit:
edits.png (10 columns; rows: original, masked input, inpainted, inpainted with
resampling, guide, SDEdit at each start time).
"""

import json
import time

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
from absl import app, flags, logging

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from jaxdiff import cli, conditional, data, evaluation, grids, plots, workdir  # noqa: E402
from jaxdiff.train import checkpoint, experiment, sampling, sharding  # noqa: E402
from jaxdiff.train.step import network_fn  # noqa: E402

STUDIES = ("samplers", "edit")
_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "A training workdir, its checkpoints/ "
                                  "folder or one <step>/ folder.", required=True)
_NUM = flags.DEFINE_integer("num", 500, "Samples per row.")
_NFES = flags.DEFINE_list("nfes", ["10", "20", "50", "100"], "NFEs of the few-step rows.")
_SAMPLERS = flags.DEFINE_list("samplers", ["ddpm", "ddim", "unipc"], "Samplers of the zoo.")
_REFERENCE_NFE = flags.DEFINE_integer("reference-nfe", 1000, "NFE of the DDPM reference row.")
_BATCH = flags.DEFINE_integer("batch-size", 500, "Samples per compiled call.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of x_T and the samplers' noise.")
_EVALUATE = flags.DEFINE_enum("evaluate", "auto", ["auto", "yes", "no"], "Score the rows with "
                              "jaxdiff.evaluation's classifier; auto: for the digits.")
_RESAMPLE = flags.DEFINE_integer("resample", 10, "edit: RePaint's repeats of each step.")
_STEPS = flags.DEFINE_integer("steps", 100, "edit: ancestral steps of inpainting and SDEdit.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Output folder (new); default "
                               "<training workdir>/study-<name>-<time>.")
SHOWN = 10  # Samples per row of samples.png.


def load(path):
  step_dir = checkpoint.find(path)
  record = checkpoint.read_run(step_dir)
  spec = record["data"]
  built = experiment.Experiment.from_config(record["config"], experiment.DataSpec(
      tuple(spec["shape"]), spec["num_classes"], spec["eight_bit"]))
  return step_dir, built


def sampler_plans(built):
  """The plans of the samplers study, every choice checked: each sampler at each of --nfes,
  then DDPM at --reference-nfe."""
  try:
    nfes = [int(nfe) for nfe in _NFES.value]
  except ValueError:
    raise ValueError(f"--nfes must be integers, got {_NFES.value}") from None
  runs = [(name, nfe) for name in _SAMPLERS.value for nfe in nfes]
  return [sampling.plan(built, name, nfe) for name, nfe in runs + [("ddpm", _REFERENCE_NFE.value)]]


def judge(built):
  """The evaluation classifier of the model's data (without its split option), or None where
  --evaluate says not to judge."""
  source = built.run.data_source
  if not (_EVALUATE.value == "yes" or (_EVALUATE.value == "auto" and source == "digits")):
    return None
  options = {k: v for k, v in built.run.data_options.items() if k != "split"}
  return evaluation.reference(source, **options)


def samplers_study(step_dir, built, plans, out):
  """The plans on one x_T, each row scored where there is a classifier; returns the rows and
  the held-out row."""
  params = sampling.load_params(step_dir, built, "ema")
  reference = judge(built)
  key_noise, key_sampler = jax.random.split(jax.random.PRNGKey(_SEED.value))
  x_T = sampling.prior_noise(built, plans[0], key_noise, _NUM.value)
  labels = sampling.default_labels(built, _NUM.value)
  mesh = sharding.make_mesh({"data": -1})
  rows, shown = [], []
  for sample_plan in plans:
    print(f"{sample_plan.describe()}: {_NUM.value} samples", flush=True)
    start = time.perf_counter()
    x_0, nfe = sampling.sample_in_batches(built, sample_plan, params, x_T, labels, key_sampler,
                                          _BATCH.value, mesh=mesh)
    row = {"sampler": sample_plan.sampler, "nfe": nfe, "grid": sample_plan.grid_name,
           "num": len(x_0), "seconds": round(time.perf_counter() - start, 1)}
    if reference is not None:
      q = evaluation.quality(np.clip(x_0, -1, 1), reference)
      row.update(frechet_distance=q["frechet_distance"], kid=q["kid"], kid_error=q["kid_error"],
                 confidence=q["confidence"], classes=q["classes_present"],
                 class_entropy=q["class_entropy"])
    rows.append(row)
    shown.append(np.clip(x_0[:SHOWN], -1, 1))
    (out / "results.json").write_text(json.dumps({"rows": rows}, indent=1))  # As it goes.
  if built.data.eight_bit:
    plots.save_image_grid(np.concatenate(shown), out / "samples.png", cols=SHOWN)
  held_out = None
  if reference is not None:
    held_out = evaluation.quality(reference.heldout_images, reference)
    plot_quality(rows, held_out, out / "quality.png")
  (out / "results.json").write_text(json.dumps({"rows": rows, "held_out": held_out}, indent=1))
  return rows, held_out


SDEDIT_NOISE = (0.25, 0.5, 1.0)  # SDEdit's starting noise levels sigma / alpha (data in [-1, 1]).


def edit_study(step_dir, built, out):
  """Inpainting (with and without resampling) and SDEdit on held-out images; returns the rows."""
  source = built.run.data_source
  options = {k: v for k, v in built.run.data_options.items() if k != "split"}
  held_out = data.make_source(source, split="test", **options)
  num = min(_NUM.value, len(held_out))
  y = jnp.asarray(data.to_model_space(np.stack([held_out[i]["image"] for i in range(num)])))
  labels = np.array([held_out[i]["label"] for i in range(num)])
  params = sampling.load_params(step_dir, built, "ema")
  denoise = built.objective.denoise_fn(network_fn(built.model, params))
  prediction = built.objective.prediction
  process = built.process
  height = built.data.shape[0]
  mask = jnp.zeros(built.data.shape).at[:height // 2].set(1.0)  # The upper half is known.
  # The process's default grid (Karras for EDM, log-SNR for DDPM), from its start to 0.
  grid_name, grid_options = grids.default_for(process)
  grid = grids.make_grid(process, grid_name, _STEPS.value, **grid_options)
  key = jax.random.PRNGKey(_SEED.value)

  results = {}
  for resample in (1, _RESAMPLE.value):
    run = jax.jit(lambda key: conditional.inpaint(denoise, process, y, mask, key, grid,
                                                  prediction=prediction, resample=resample)[0])
    results[f"inpaint, resample {resample}"] = np.asarray(run(key))
  # The guide: 2x2 blocks averaged, then noise; what SDEdit is for (a rough sketch of an image).
  blocks = y.reshape(num, height // 2, 2, -1, 2, y.shape[-1]).mean(axis=(2, 4))
  guide = jnp.repeat(jnp.repeat(blocks, 2, axis=1), 2, axis=2)
  guide = jnp.clip(guide + 0.3 * jax.random.normal(jax.random.fold_in(key, 1), y.shape), -1, 1)
  for noise in SDEDIT_NOISE:  # t0 where sigma / alpha = noise: log-SNR -2 ln(noise).
    t0 = float(process.t_from_log_snr(-2 * np.log(noise)))
    sdedit_grid = grids.make_grid(process, grid_name, _STEPS.value,
                                  **{**grid_options, "t_max": t0})
    run = jax.jit(lambda key: conditional.sdedit(denoise, process, guide, key, sdedit_grid,
                                                 prediction=prediction)[0])
    results[f"SDEdit from sigma/alpha = {noise:g}"] = np.asarray(run(key))

  reference = judge(built)
  rows = []
  for name, x in [("guide (input of SDEdit)", np.asarray(guide)), *results.items()]:
    x = np.clip(x, -1, 1)
    distance = lambda a: float(np.mean(np.linalg.norm((x - np.asarray(a)).reshape(num, -1),
                                                      axis=1)))
    row = {"images": name, "num": num, "distance_to_original": distance(y),
           "distance_to_guide": distance(guide)}
    if reference is not None:
      probabilities, _ = evaluation.classify(reference.model, reference.params, x)
      row["original_class_kept"] = float(np.mean(np.argmax(probabilities, axis=1) == labels))
      row["confidence"] = float(np.mean(np.max(probabilities, axis=1)))
    rows.append(row)
  masked = np.where(np.asarray(mask) == 1, np.asarray(y), 0.0)  # Unknown pixels shown gray.
  pictures = [np.asarray(y), masked, *list(results.values())[:2], np.asarray(guide),
              *list(results.values())[2:]]
  plots.save_image_grid(np.concatenate([np.clip(p[:SHOWN], -1, 1) for p in pictures]),
                        out / "edits.png", cols=SHOWN)
  (out / "results.json").write_text(json.dumps({"rows": rows}, indent=1))
  return rows


def plot_quality(rows, held_out, path):
  """Frechet distance against NFE per sampler; DDPM at the reference NFE and held-out real
  images as horizontal lines."""
  fig, ax = plt.subplots(figsize=(6, 4))
  reference = rows[-1]
  for name in dict.fromkeys(r["sampler"] for r in rows[:-1]):
    mine = [r for r in rows[:-1] if r["sampler"] == name]
    ax.plot([r["nfe"] for r in mine], [r["frechet_distance"] for r in mine], "o-", label=name)
  ax.axhline(reference["frechet_distance"], color="k", ls="--",
             label=f"ddpm, NFE {reference['nfe']}")
  ax.axhline(held_out["frechet_distance"], color="gray", ls=":",
             label=f"held-out real (N = {held_out['num_samples']})")
  ax.set(xscale="log", yscale="log", xlabel="NFE",
         ylabel=f"Frechet distance (classifier features, N = {reference['num']})")
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def markdown(rows, held_out):
  columns = [c for c in ("images", "sampler", "nfe", "grid", "num", "frechet_distance", "kid",
                         "confidence", "classes", "class_entropy", "distance_to_original",
                         "distance_to_guide", "original_class_kept", "seconds") if c in rows[0]]
  cell = lambda row, c: (f"{row[c]:.4f} +- {row['kid_error']:.4f}" if c == "kid"
                         else f"{row[c]:.3f}" if isinstance(row[c], float) else str(row[c]))
  lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
  lines += ["| " + " | ".join(cell(row, c) for c in columns) + " |" for row in rows]
  if held_out is not None:
    lines.append(f"\nHeld-out real images: N = {held_out['num_samples']}, Frechet distance "
                 f"{held_out['frechet_distance']:.3f}, KID {held_out['kid']:.4f} +- "
                 f"{held_out['kid_error']:.4f} (the Frechet distance grows as N falls: compare "
                 "rows of equal N).")
  return "\n".join(lines) + "\n"


def main(argv):
  if len(argv) != 2 or argv[1] not in STUDIES:
    raise app.UsageError(f"name one study: {' | '.join(STUDIES)}")
  logging.set_verbosity(logging.WARNING)  # Orbax logs every read at INFO.
  try:
    step_dir, built = load(_CHECKPOINT.value)
    if _NUM.value < evaluation.MIN_IMAGES:
      raise ValueError(f"--num must be at least {evaluation.MIN_IMAGES}, got {_NUM.value}")
    if argv[1] == "samplers":
      plans = sampler_plans(built)
    elif not built.data.eight_bit or built.conditional:
      raise ValueError("the edit study takes an unconditional model of 8-bit images")
  except (ValueError, FileNotFoundError) as error:
    raise SystemExit(f"cannot run the study: {error} (nothing was written)") from None
  with workdir.claim(_WORKDIR.value, f"study-{argv[1]}", parent=step_dir.parent.parent) as out:
    if argv[1] == "samplers":
      rows, held_out = samplers_study(step_dir, built, plans, out)
      table = f"# {argv[1]}: {step_dir}\n\n" + markdown(rows, held_out)
    else:
      table = f"# {argv[1]}: {step_dir}\n\n" + markdown(edit_study(step_dir, built, out), None)
    (out / "results.md").write_text(table)
  print(f"{table}\nwritten to {out}")


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
