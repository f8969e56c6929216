"""The classifier-free guidance sweep (Ho & Salimans 2022, fig. 1 and table 1).

A class-conditional model trained with label dropout sampled from the same x_T
and noise at each guidance scale w of --scales (w = 0: the unconditional
model, w = 1: the conditional one; `jaxdiff.guidance`), with the labels 0, 1,
2, ... as in training's pictures, by --sampler at --nfe. Guidance trades
diversity for fidelity: as w grows the classifier grows more confident and
names the requested class more often (target_class), while the Frechet
distance first falls and then rises as the samples leave the data's spread
(Ho & Salimans' FID/IS trade-off).

Writes sweep.png (a row per w, the same 10 seeds and labels 0..9 in every row)
and quality.png (Frechet distance, confidence and target-class accuracy
against w).
"""

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from jaxdiff import plots  # noqa: E402
from jaxdiff.train import generate  # noqa: E402
from studies import common, samplers  # noqa: E402


def prepare(options: common.Options):
  step_dir, built, params = common.load(options)
  if not built.conditional:
    raise ValueError("the guidance study takes a class-conditional model (trained with "
                     "--config.model.conditional True); this one was trained without labels")
  sample_plans = [generate.plan(built, options.sampler, options.nfe, guidance_scale=w)
                  for w in options.scales]
  return step_dir, built, params, sample_plans


def run(prepared, options: common.Options, out) -> str:
  step_dir, built, params, sample_plans = prepared
  judge = common.judge(built, options)
  labels = generate.default_labels(built, options.num)
  score = lambda x_0: ({} if judge is None
                       else {**judge.scores(x_0), **judge.target_class(x_0, labels)})

  rows, shown = samplers.sample_rows(
      built, params, sample_plans, options, score, labels=labels,
      fields=[{"w": sample_plan.guidance_scale} for sample_plan in sample_plans],
      on_row=lambda rows: common.write_results(out, rows))
  if built.data.makes_images:
    plots.plot_guidance_sweep(np.stack(shown), options.scales, out / "sweep.png")
  if judge is not None:
    plot_quality(rows, out / "quality.png")
  common.write_results(out, rows)
  model = common.with_params(step_dir, options.params)
  return f"# guidance: {model}, {sample_plans[0].describe()}\n\n" + common.markdown(rows)


def plot_quality(rows, path):
  """The Frechet distance (left axis) and, with a classifier, its confidence and target-class
  accuracy (right) against w."""
  w = [r["w"] for r in rows]
  key, label = common.quality_key(rows)
  fig, ax = plt.subplots(figsize=(6, 4))
  ax.plot(w, [r[key] for r in rows], "o-", color="C0", label=label.split(" (")[0])
  ax.set(xlabel="guidance scale w", ylabel=label)
  if "confidence" in rows[0]:
    right = ax.twinx()
    right.plot(w, [r["confidence"] for r in rows], "s--", color="C1", label="confidence")
    right.plot(w, [r["target_class"] for r in rows], "^--", color="C2", label="target class")
    right.set(ylabel="fraction", ylim=(0, 1.02))
  fig.legend(loc="lower right", bbox_to_anchor=(0.88, 0.15))
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
