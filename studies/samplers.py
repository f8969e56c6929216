"""DDIM against DDPM (and UniPC) by NFE on one trained model (Song et al. 2021, "DDIM", table 1).

The deterministic DDIM sampler at 20-50 steps comes close to ancestral DDPM at
1000, where DDPM at few steps does not. The same trained model and the same
x_T (seed) for every row: each sampler of --samplers at each NFE of --nfes and
DDPM at --reference-nfe as the reference, each on the grid `grids.default_for`
the process. Scored by the evaluation classifier where there is one.

Writes quality.png (the Frechet distance against NFE, DDPM at the reference
NFE and held-out real images as lines) and samples.png (the first 10 samples
of every row, one row each, same x_T).
"""

import time

import jax
import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from jaxdiff import evaluation, plots  # noqa: E402
from jaxdiff.train import generate, latent, sharding  # noqa: E402
from studies import common  # noqa: E402


def plans(built, options: common.Options):
  """Each sampler at each NFE, then DDPM at the reference NFE; every choice checked."""
  runs = [(name, nfe) for name in options.samplers for nfe in options.nfes]
  return [generate.plan(built, name, nfe)
          for name, nfe in runs + [("ddpm", options.reference_nfe)]]


def sample_rows(built, params, sample_plans, options: common.Options, score, *, labels=None,
                guides=None, fields=None, on_row=lambda rows: None):
  """Each plan from one x_T (options.num samples, options.seed), spread over the devices, with
  its guide of `guides` where given (`generate.make_sample_fn`); returns the rows (each
  starting with its dict of `fields`, then score(samples)'s) and the first SHOWN samples of
  each. A latent model's samples are its autoencoder's decoded images."""
  key_noise, key_sampler = jax.random.split(jax.random.PRNGKey(options.seed))
  x_T = generate.prior_noise(built, sample_plans[0], key_noise, options.num)
  if labels is None:
    labels = generate.default_labels(built, options.num)
  mesh = sharding.make_mesh({"data": -1})
  decoder = None if built.data.autoencoder is None else latent.decoder(built.data.autoencoder)
  rows, shown = [], []
  for sample_plan, guide, given in zip(sample_plans, guides or [None] * len(sample_plans),
                                      fields or [{}] * len(sample_plans)):
    print(f"{sample_plan.describe()}: {options.num} samples", flush=True)
    start = time.perf_counter()
    x_0, nfe = generate.sample_in_batches(built, sample_plan, params, x_T, labels, key_sampler,
                                          options.batch_size, mesh=mesh, guide=guide,
                                          decoder=decoder)
    row = {**given, "sampler": sample_plan.sampler, "nfe": nfe,
           "grid": sample_plan.grid_name, "num": len(x_0),
           "seconds": round(time.perf_counter() - start, 1)}
    row.update(score(x_0))
    rows.append(row)
    shown.append(np.clip(x_0[:common.SHOWN], -1, 1))
    on_row(rows)
  return rows, shown


def prepare(options: common.Options):
  """Everything checked before the study's folder is claimed."""
  step_dir, built, params = common.load(options)
  return step_dir, built, params, plans(built, options)


def run(prepared, options: common.Options, out) -> str:
  step_dir, built, params, sample_plans = prepared
  judge = common.judge(built, options)
  rows, shown = sample_rows(
      built, params, sample_plans, options, lambda x_0: {} if judge is None else judge.scores(x_0),
      on_row=lambda rows: common.write_results(out, rows))
  if built.data.makes_images:
    plots.save_image_grid(np.concatenate(shown), out / "samples.png", cols=common.SHOWN)
  held_out = None
  if judge is not None and judge.classifier is not None:
    held_out = evaluation.quality(judge.classifier.heldout_images, judge.classifier)
  if judge is not None:
    plot_quality(rows, held_out, out / "quality.png")
  common.write_results(out, rows, held_out=held_out)
  model = common.with_params(step_dir, options.params)
  return f"# samplers: {model}\n\n" + common.markdown(rows, held_out)


def plot_quality(rows, held_out, path):
  """The Frechet distance against NFE per sampler; DDPM at the reference NFE and (with the
  classifier) held-out real images as horizontal lines."""
  key, label = common.quality_key(rows)
  fig, ax = plt.subplots(figsize=(6, 4))
  reference = rows[-1]
  for name in dict.fromkeys(r["sampler"] for r in rows[:-1]):
    mine = [r for r in rows[:-1] if r["sampler"] == name]
    ax.plot([r["nfe"] for r in mine], [r[key] for r in mine], "o-", label=name)
  ax.axhline(reference[key], color="k", ls="--", label=f"ddpm, NFE {reference['nfe']}")
  if held_out is not None and key == "frechet_distance":
    ax.axhline(held_out[key], color="gray", ls=":",
               label=f"held-out real (N = {held_out['num_samples']})")
  ax.set(xscale="log", yscale="log", xlabel="NFE", ylabel=label)
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
