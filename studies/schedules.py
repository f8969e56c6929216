"""Linear against cosine noise schedule (Nichol & Dhariwal 2021, sec. 3.2 and fig. 3).

Ho et al.'s linear betas destroy a small image's information well before the
last step: the end of the forward process is nearly pure noise and adds little,
and sampling with fewer steps suffers most. The cosine schedule spreads the
log-SNR evenly. The study trains the same network twice with --config (default
configs/train_base.py's cosine DDPM; --config.x overrides, --train-steps the
length), once per schedule, into <study>/linear and <study>/cosine, and
samples both from one x_T with each of --samplers at each of --nfes on
diffusers' "trailing" grid (uniform strides from step T, as the paper's
respacing) with the predicted x0 clipped to [-1, 1] (as their samplers do),
scored by the evaluation classifier.

Writes quality.png (Frechet distance against NFE, one line per schedule and
sampler) and samples.png (the first 10 samples of each row).
"""

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from jaxdiff import plots  # noqa: E402
from jaxdiff.train import generate, trainer  # noqa: E402
from studies import common, samplers  # noqa: E402

SCHEDULES = ("linear", "cosine")
GRID = "trailing"
# The predicted x0 clipped to the data's [-1, 1], as Ho et al.'s and Nichol & Dhariwal's
# samplers do (diffusers' clip_sample): the cosine schedule's clipped last betas put step T at
# alpha = 5e-5, where x0 = (x - sigma eps) / alpha multiplies the network's error by 2e4;
# unclipped, both samplers gave the cosine model a Frechet distance of about 100 at every NFE.
CLIP = {"clip_x0": True}


def prepare(options: common.Options, config):
  if config.process != "ddpm":
    raise ValueError(f"the schedules study compares DDPM schedules; --config trains "
                     f"{config.process!r}")
  variants = {}
  for schedule in SCHEDULES:
    variant = common.shortened(config, options.train_steps)
    variant.process_options.schedule = schedule
    variants[schedule] = trainer.prepare(variant)
    plans(variants[schedule][0], options)  # Checked now, before anything is trained.
  return None, variants


def plans(built, options: common.Options):
  """Each sampler at each NFE on the GRID, its x0 prediction clipped to [-1, 1] (CLIP)."""
  return [generate.plan(built, name, nfe, grid=GRID, options=CLIP) for name in options.samplers
          for nfe in options.nfes]


def run(prepared, options: common.Options, out) -> str:
  _, variants = prepared
  rows, shown = [], []
  for schedule, variant in variants.items():
    print(f"training the {schedule} schedule's model", flush=True)
    common.train(variant, out / schedule)
    _, _, params = generate.load(out / schedule)
    built = variant[0]
    judge = common.judge(built, options)
    sample_plans = plans(built, options)
    score = lambda x_0: {} if judge is None else judge.scores(x_0)
    new_rows, new_shown = samplers.sample_rows(
        built, params, sample_plans, options, score,
        fields=[{"schedule": schedule}] * len(sample_plans),
        on_row=lambda new: common.write_results(out, rows + new))
    rows += new_rows
    shown += new_shown
  if variants["linear"][0].data.makes_images:
    plots.save_image_grid(np.concatenate(shown), out / "samples.png", cols=common.SHOWN)
  if "frechet_distance" in rows[0] or "fid" in rows[0]:
    plot_quality(rows, out / "quality.png")
  common.write_results(out, rows)
  return f"# schedules: trained in {out}, {GRID} grid\n\n" + common.markdown(rows)


def plot_quality(rows, path):
  key, label = common.quality_key(rows)
  fig, ax = plt.subplots(figsize=(6, 4))
  names = list(dict.fromkeys(r["sampler"] for r in rows))
  for schedule, sampler in dict.fromkeys((r["schedule"], r["sampler"]) for r in rows):
    mine = [r for r in rows if (r["schedule"], r["sampler"]) == (schedule, sampler)]
    style = ("o-", "s--", "^:", "d-.")[names.index(sampler) % 4]  # Color: schedule.
    ax.plot([r["nfe"] for r in mine], [r[key] for r in mine], style,
            color=f"C{SCHEDULES.index(schedule)}", label=f"{schedule}, {sampler}")
  ax.set(xscale="log", yscale="log", xlabel="NFE", ylabel=label)
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
