"""A tiny DDPM on the 2-D toy and on the digits: the loss and the samples over training
(Ho et al. 2020).

Trains configs/toy2d.py (a residual MLP on the checkerboard) and --config
(default configs/train_base.py's cosine DDPM U-Net on the digits; --config.x
overrides), each for --train-steps (default: the config's own), into
<study>/toy and <study>/digits, with five pictures of the first EMA's samples
over training (train.py's own, samples/step-<n>.png: fixed x_T, UniPC at 20
NFE as configured).

Writes training.png: per data set its loss curve (train.py's metrics.jsonl,
the mean over each log_every window) and the five pictures in step order.
"""

import json

import matplotlib
import matplotlib.image

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from configs import toy2d  # noqa: E402
from jaxdiff.train import trainer  # noqa: E402
from studies import common  # noqa: E402

PICTURES = 5


def prepare(options: common.Options, config):
  configs = {"toy": toy2d.get_config(), "digits": config}
  return None, {name: trainer.prepare(common.shortened(c, options.train_steps, PICTURES))
                for name, c in configs.items()}


def run(prepared, options: common.Options, out) -> str:
  del options
  _, variants = prepared
  rows, curves = [], {}
  for name, variant in variants.items():
    print(f"training on the {name}", flush=True)
    common.train(variant, out / name)
    metrics = [json.loads(line) for line in (out / name / "metrics.jsonl").read_text().splitlines()]
    curves[name] = ([m["step"] for m in metrics], [m["loss"] for m in metrics])
    pictures = sorted((out / name / "samples").glob("step-*.png"),
                      key=lambda path: int(path.stem.split("-")[1]))
    rows.append({"images": name, "steps": variant[0].run.num_steps,
                 "first_loss": metrics[0]["loss"], "final_loss": metrics[-1]["loss"],
                 "pictures": [str(path.relative_to(out)) for path in pictures]})
  plot_training(curves, {r["images"]: [out / p for p in r["pictures"]] for r in rows},
                out / "training.png")
  common.write_results(out, rows)
  lines = ["| data | steps | loss, first window | loss, last window |", "|---|---|---|---|"]
  lines += [f"| {r['images']} | {r['steps']} | {r['first_loss']:.4f} | {r['final_loss']:.4f} |"
            for r in rows]
  return f"# training: in {out}\n\n" + "\n".join(lines) + "\n"


def plot_training(curves, pictures, path):
  """A row per data set: its loss curve, then its pictures over training."""
  cols = 1 + max(len(p) for p in pictures.values())
  fig, axes = plt.subplots(len(curves), cols, figsize=(2.6 * cols, 2.6 * len(curves)),
                           squeeze=False)
  for row, (name, (steps, losses)) in zip(axes, curves.items()):
    row[0].plot(steps, losses)
    row[0].set(yscale="log", xlabel="step", ylabel="loss", title=name)
    for ax in row[1:]:
      ax.axis("off")
    for ax, picture in zip(row[1:], pictures[name]):
      ax.imshow(matplotlib.image.imread(picture), cmap="gray")
      ax.set_title(picture.stem.replace("-", " "), fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
