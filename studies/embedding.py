"""A dead time embedding, found by the conditioning diagnostic (`jaxdiff.diagnostics`).

A network that ignores t still trains and its loss hides it; its samples are
blurs. The study takes a trained model and the same model with its time
embedding zeroed (every parameter of its `time_embed` module: the network's
output then no longer depends on t) and reports for both the diagnostic's time
and class sensitivity (train.py warns below diagnostics.DEAD) on --num
training images, and the quality of --num samples by --sampler at --nfe from
one x_T.

Writes samples.png (a row of 10 samples per model, the same x_T).
"""

import jax
import numpy as np

from jaxdiff import data, diagnostics, models, plots
from jaxdiff.train import generate
from studies import common, samplers


def prepare(options: common.Options):
  step_dir, built, params = common.load(options)
  return step_dir, built, params, generate.plan(built, options.sampler, options.nfe)


def run(prepared, options: common.Options, out) -> str:
  step_dir, built, healthy, sample_plan = prepared
  judge = common.judge(built, options)
  variants = {"trained": healthy,
              "time embedding zeroed": diagnostics.zero_module(healthy, "time_embed")}
  source = data.make_source(built.run.data.source, **built.run.data.options)
  x0, labels = data.model_arrays(source, options.num)
  labels = labels if built.conditional else None

  @jax.jit
  def sensitivity(params):
    told_fn = built.objective.told_fn(models.network_fn(built.model, params))
    return diagnostics.sensitivity(told_fn, built.process, x0, jax.random.PRNGKey(options.seed),
                                   labels, built.data.num_classes)

  rows, shown = [], []
  for name, params in variants.items():
    found = {k: float(v) for k, v in sensitivity(params).items()}
    print(f"{name}: time sensitivity {found['time']:.3g}, class sensitivity "
          f"{found['class']:.3g}", flush=True)
    score = lambda x_0: {} if judge is None else judge.scores(x_0)
    new_rows, new_shown = samplers.sample_rows(
        built, params, [sample_plan], options, score,
        fields=[{"images": name, "time_sensitivity": found["time"],
                 "class_sensitivity": found["class"]}])
    rows += new_rows
    shown += new_shown
    common.write_results(out, rows)
  if built.data.makes_images:
    plots.save_image_grid(np.concatenate(shown), out / "samples.png", cols=common.SHOWN)
  model = common.with_params(step_dir, options.params)
  return (f"# embedding: {model}, {sample_plan.describe()}\n\n" + common.markdown(rows)
          + f"\ntrain.py warns below a time sensitivity of {diagnostics.DEAD}.\n")
