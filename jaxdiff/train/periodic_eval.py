"""Sample quality during training: the config's `eval` block, run by the training loop.

Every eval.every steps and at the end, the loop samples eval.num samples from
each of eval.params ("raw", "ema" the first EMA, "ema:<decay>") with
`sample_run.run` -- one `sample_run.make_step` compiled for the whole run --
and judges them on the devices: by the evaluation classifier trained on the
real data (`jaxdiff.evaluation`; eval.classifier "auto" judges the digits) and,
where eval.inception_weights names a weights file, by Inception-v3 (`jaxdiff.fid`).
Their Frechet distance (Heusel et al. 2017, eq. 6) and a few more figures go
into the next metrics row as eval/<params>/<name> (`scalars`).
A latent model's samples are decoded by its autoencoder inside the same step
and judged as images of the data the autoencoder encoded (`latent.image_data`).

The samples' randomness is fixed for the whole run: sample i's x_T, label and
sampler noise derive from (seed, i) alone (`sample_run`), the seed derived once
from run.seed apart from the training keys (`eval_seed`). Every evaluation --
of every step, and of each params -- starts from the same x_T, so a curve
compares like with like, two params are a paired comparison, and a resumed run
evaluates exactly as the uninterrupted one did. A Frechet distance is biased
upwards at small N (Chong & Forsyth 2020): compare runs of the same eval.num.

The best checkpoint: the lowest `best_metric` (FID where Inception judges, else
the classifier's Frechet distance) over the params at a step. A step whose value
is the lowest so far is checkpointed with that value (also off the checkpoint
cadence), and the checkpoint manager keeps it besides the last keep_checkpoints
(`checkpoint.manager(best=...)`: pruning never deletes it). <workdir>/best.json
(`write_best`, by process 0, atomically) names its step, params and value; a
resumed run rewrites it from the kept checkpoints' saved values.
"""

import json
import pathlib
import time

import jax
import numpy as np
from jax.experimental import multihost_utils

from jaxdiff import evaluation, streamed, workdir
from jaxdiff.train import checkpoint, generate, latent, sample_run
from jaxdiff.train.experiment import Experiment

BEST = "best.json"
SALT = 0xE7A1  # Folded into the run's key for the evaluation's seed.
# What goes into the metrics rows, of each judge's `streamed.Running.quality`: {row name: key}.
CLASSIFIER_FIGURES = {"frechet_distance": "frechet_distance", "kid": "kid",
                      "confidence": "confidence", "class_entropy": "class_entropy",
                      "precision": "precision", "recall": "recall"}
INCEPTION_FIGURES = {"fid": "fid", "inception_kid": "kid", "inception_score": "inception_score",
                     "inception_precision": "precision", "inception_recall": "recall"}


def eval_seed(run_seed: int) -> int:
  """The evaluation's seed in [0, 2^32): a word of fold_in(PRNGKey(run_seed), SALT), apart
  from the training keys (split(PRNGKey(run_seed)))."""
  key = jax.random.fold_in(jax.random.PRNGKey(run_seed), SALT)
  return int(np.asarray(jax.random.key_data(key)).ravel()[-1])


def plan(experiment: Experiment) -> generate.SamplePlan:
  """The `generate.plan` of the eval block.

  Raises:
    ValueError naming a bad eval.sampler, eval.nfe or eval.guidance.
  """
  settings = experiment.run.eval
  try:
    return generate.plan(experiment, settings.sampler, settings.nfe,
                         guidance_scale=settings.guidance)
  except ValueError as error:
    raise ValueError(f"eval (sampler {settings.sampler!r}, nfe {settings.nfe}): "
                     f"{error}") from None


def check(experiment: Experiment):
  """Everything about the eval block that can be checked before anything is built or
  compiled: the sampler plan, the params, and that something judges the samples.

  Raises:
    ValueError or FileNotFoundError naming the field and what would be right.
  """
  settings = experiment.run.eval
  plan(experiment)
  for which in settings.params:
    settings.ema_key(which, experiment.ema_decays)
  source, _ = latent.image_data(experiment)  # A latent model's: its autoencoder's images.
  try:
    classifier = evaluation.wanted(source, settings.classifier)
  except ValueError:
    raise ValueError(f"eval.classifier 'yes': no evaluation classifier for the data source "
                     f"{source!r}; there is one for {list(evaluation.CLASSIFIED_SOURCES)} (use "
                     "eval.classifier 'no', with eval.inception_weights for images)") from None
  weights = settings.inception_weights
  if weights and not pathlib.Path(weights).is_file():
    raise FileNotFoundError(f"eval.inception_weights: no file {weights} (the Inception-v3 "
                            "weights, pt_inception-2015-12-05-6726825d.pth or its .npz)")
  if weights and not experiment.data.makes_images:
    raise ValueError(f"eval.inception_weights: Inception-v3 judges 8-bit images; the data "
                     f"source {source!r} holds points")
  if not classifier and not weights:
    hint = ("set eval.classifier 'yes'" if source in evaluation.CLASSIFIED_SOURCES
            else f"there is an evaluation classifier for {list(evaluation.CLASSIFIED_SOURCES)}"
            " only")
    raise ValueError(f"eval.every is {settings.every} but nothing judges the samples of the "
                     f"data source {source!r} with eval.classifier {settings.classifier!r} and no "
                     f"eval.inception_weights: {hint}, name Inception weights (8-bit images), "
                     "or set eval.every 0")


def judges(experiment: Experiment, *, log=print) -> dict:
  """{name: streamed.Judge} of the eval block (`streamed.judges`), after `check`.

  Raises:
    ValueError or FileNotFoundError as `check`, or naming a bad weights file.
  """
  check(experiment)
  run = experiment.run
  return streamed.judges(*latent.image_data(experiment), run.eval.classifier,
                         run.eval.inception_weights, log=log)


def best_metric(judged: dict) -> str:
  """The figure the best checkpoint is chosen by: the Frechet distance of
  `streamed.main_judge` ("fid" for Inception-v3's, else "frechet_distance")."""
  return "fid" if streamed.main_judge(judged) == "inception" else "frechet_distance"


def scalars(quality: dict) -> dict:
  """{row name: float} of one params's {judge name: `Running.quality()`}."""
  figures = {"classifier": CLASSIFIER_FIGURES, "inception": INCEPTION_FIGURES}
  return {name: float(quality[judge][key]) for judge, q in quality.items()
          for name, key in figures[judge].items()}


class Evaluator:
  """The eval block over a run: `evaluate(state, step)` samples and judges each params, and
  keeps the best value so far (seeded from the kept checkpoints by `resume`)."""

  def __init__(self, experiment: Experiment, mesh, judged: dict, *, progress: bool = False,
               decoder=None):
    settings = experiment.run.eval
    self.experiment, self.mesh, self.judges, self.progress = experiment, mesh, judged, progress
    self.metric = best_metric(judged)
    self.plan = plan(experiment)
    # keep_features = num: KID and precision/recall over every sample; no images kept.
    self.job = sample_run.Job(settings.num, settings.batch_size,
                              eval_seed(experiment.run.seed), save_images=0,
                              keep_features=settings.num, save_every=0)
    self.ema_keys = {which: settings.ema_key(which, experiment.ema_decays)
                     for which in settings.params}
    # A latent model's autoencoder (`latent.decoder`), loaded once for the run.
    self.decoder = decoder
    if experiment.data.autoencoder is not None and decoder is None:
      self.decoder = latent.decoder(experiment.data.autoencoder)
    self.step_fn = sample_run.make_step(experiment, self.plan, self.job, mesh, judged,
                                        self.decoder)
    self.best = None  # {"step", "params", "value"} of the lowest value so far.

  def resume(self, checkpoints, folder):
    """Takes the best so far from the kept checkpoints' saved values (`checkpoint.best`; a
    run's own later evaluations are redone), and rewrites best.json (process 0)."""
    found = checkpoint.best(checkpoints, self.metric)
    record = None
    if found is not None:
      step, value = found
      record = {"step": step, "params": checkpoints.metrics(step).get("params"),
                "value": value}
    self.best = record
    if jax.process_index() == 0:
      write_best(folder, self.metric, record)

  def evaluate(self, state, step: int) -> tuple[dict, dict, bool]:
    """Samples and judges each params of the state at `step`.

    Returns:
      (row, metrics, is_best): row {"eval/<params>/<name>": float, "eval/seconds"} for the
      metrics row; metrics {best_metric: lowest value, "params": its params} to save with a
      checkpoint; is_best whether that value is the lowest so far (the same in every
      process).
    """
    start, row, values = time.perf_counter(), {}, {}
    for which, key in self.ema_keys.items():
      params = state.params if key is None else state.ema[key]
      result = sample_run.run(self.experiment, self.plan, params, self.job, self.mesh,
                              judges=self.judges, progress=self.progress,
                              step_fn=self.step_fn, decoder=self.decoder)
      figures = scalars({name: running.quality() for name, running in result.running.items()})
      row.update({f"eval/{which}/{name}": value for name, value in figures.items()})
      values[which] = figures[self.metric]
    row["eval/seconds"] = time.perf_counter() - start
    which = min(values, key=values.get)
    value = values[which]
    is_best = self.best is None or value < self.best["value"]
    if jax.process_count() > 1:  # Every process saves the checkpoint, or none does.
      is_best = bool(multihost_utils.broadcast_one_to_all(np.int32(is_best)))
    if is_best:
      self.best = {"step": step, "params": which, "value": value}
    # (A string beside the value: Orbax stores the metrics as JSON.)
    return row, {self.metric: value, "params": which}, is_best


def write_best(folder, metric: str, record: dict | None):
  """<workdir>/best.json, {"metric", "step", "params", "value", "checkpoint"}, through a
  temporary file renamed into place; removed where there is no best (record None)."""
  path = pathlib.Path(folder) / BEST
  if record is None:
    path.unlink(missing_ok=True)
    return
  text = json.dumps({"metric": metric, **record,
                     "checkpoint": f"{checkpoint.DIRECTORY}/{record['step']}"}, indent=1)
  workdir.write_atomically(path, lambda f: f.write((text + "\n").encode()))
