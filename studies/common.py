"""What the studies share: their options, loading a checkpoint, the judge, the tables."""

import dataclasses
import json
import pathlib

import numpy as np

from jaxdiff import evaluation, fid, workdir
from jaxdiff.inception import BATCH as INCEPTION_BATCH
from jaxdiff.train import generate, latent, trainer

SHOWN = 10  # Samples per row of the pictures.


@dataclasses.dataclass(frozen=True)
class Options:
  """study.py's command line, checked (see its flags)."""

  checkpoint: str | None
  num: int
  batch_size: int
  seed: int
  evaluate: str  # "auto" (the digits), "yes" or "no".
  nfes: tuple[int, ...]
  samplers: tuple[str, ...]
  reference_nfe: int
  resample: int
  steps: int
  scales: tuple[float, ...]
  inception_weights: str | None  # Inception-v3 weights: FID beside the classifier's scores.
  sampler: str  # The one sampler of the guidance, classifier and embedding studies,
  nfe: int  # at this NFE.
  train_steps: int | None
  students: tuple[str, ...] = ()  # few_step: the students' training workdirs.
  params: str = "ema"  # --checkpoint's parameters, as `generate.load` takes them.
  student_params: tuple[str, ...] = ()  # few_step: one per student, or one for all; "ema".


def load(options: Options):
  """(step folder, Experiment, parameters) of --checkpoint (`generate.load`, the --params
  choice), with the options that depend on it checked:
  --evaluate against its data (`evaluation.wanted`), --num, --batch-size and --seed
  (`generate.check_sampling`)."""
  if options.checkpoint is None:
    raise ValueError("this study needs --checkpoint, a training workdir")
  step_dir, built, params = generate.load(options.checkpoint, options.params)
  evaluation.wanted(latent.image_data(built)[0], options.evaluate)
  generate.check_sampling(built, options.num, options.batch_size, options.seed)
  return step_dir, built, params


def with_params(model, params: str) -> str:
  """A model's name in a table or title, with its parameters where they are not the first EMA."""
  return f"{model}" + ("" if params == "ema" else f" ({params})")


@dataclasses.dataclass(frozen=True)
class Judge:
  """What scores a study's images: the evaluation classifier of the data (digits,
  Fashion-MNIST: `jaxdiff.evaluation`) and/or Inception-v3 against the data's statistics
  (`jaxdiff.fid`, from --inception-weights: CIFAR-10 and the like)."""

  classifier: object = None  # evaluation.Reference
  inception: object = None  # fid.Reference
  inception_batch: int = INCEPTION_BATCH  # Images per Inception forward pass.

  def scores(self, images) -> dict:
    """The quality row of images in [-1, 1] (clipped): the classifier's Frechet distance,
    KID, confidence, classes present and their entropy, the mean pixel distance to the
    nearest training image; Inception's FID and Inception Score."""
    images = np.clip(images, -1, 1)
    row = {}
    if self.classifier is not None:
      q = evaluation.quality(images, self.classifier)
      row.update(frechet_distance=q["frechet_distance"], kid=q["kid"], kid_error=q["kid_error"],
                 confidence=q["confidence"], classes=q["classes_present"],
                 class_entropy=q["class_entropy"], nearest_train=q["nearest_train_mean"])
    if self.inception is not None:
      q = fid.quality(images, self.inception, batch_size=self.inception_batch)
      row.update(fid=q["fid"], inception_score=q["inception_score"])
    return row

  def target_class(self, images, labels) -> dict:
    """{"target_class": how often the classifier names the requested label}, or {} without
    a classifier."""
    if self.classifier is None:
      return {}
    probabilities, _ = evaluation.classify(self.classifier.model, self.classifier.params,
                                           np.clip(images, -1, 1))
    return {"target_class": float(np.mean(np.argmax(probabilities, axis=1)
                                          == np.asarray(labels)))}


def judge(built, options: Options) -> Judge | None:
  """The study's judge (None: nothing scores) of the images the model makes (a latent
  model's: those its autoencoder encoded, `latent.image_data`): the evaluation classifier
  where --evaluate says so ("auto": for the digits), Inception with --inception-weights."""
  source, source_options = latent.image_data(built)
  data_options = {k: v for k, v in source_options.items() if k != "split"}
  use_classifier = evaluation.wanted(source, options.evaluate)
  found = Judge(
      evaluation.reference(source, **data_options) if use_classifier else None,
      fid.reference(source, options.inception_weights, **source_options)
      if options.inception_weights else None)
  return found if found.classifier is not None or found.inception is not None else None


def quality_key(rows) -> tuple[str, str]:
  """The Frechet distance the rows have: (key, axis label) of the classifier's, else FID."""
  if "frechet_distance" in rows[0]:
    return "frechet_distance", f"Frechet distance (classifier features, N = {rows[0]['num']})"
  return "fid", f"FID (Inception-v3, N = {rows[0]['num']})"


COLUMNS = ("images", "schedule", "sampler", "w", "nfe", "grid", "num", "frechet_distance", "kid",
           "fid", "inception_score", "confidence", "classes", "class_entropy", "nearest_train",
           "target_class", "time_sensitivity", "class_sensitivity", "distance_to_original",
           "distance_to_guide", "original_class_kept", "seconds")


def markdown(rows, held_out=None) -> str:
  """rows as a table (the COLUMNS they have), and the held-out real images' row."""
  columns = [c for c in COLUMNS if c in rows[0]]
  cell = lambda row, c: f"{row[c]:.4f} +- {row['kid_error']:.4f}" if c == "kid" else row[c]
  table = workdir.markdown_table(columns, [[cell(row, c) for c in columns] for row in rows])
  if held_out is not None:
    table += (f"\n\nHeld-out real images: N = {held_out['num_samples']}, Frechet distance "
              f"{held_out['frechet_distance']:.3f}, KID {held_out['kid']:.4f} +- "
              f"{held_out['kid_error']:.4f} (the Frechet distance grows as N falls: compare "
              "rows of equal N).")
  return table + "\n"


def write_results(out: pathlib.Path, rows, **extra):
  """results.json: the rows (written as the study goes, and at its end)."""
  (out / "results.json").write_text(json.dumps({"rows": rows, **extra}, indent=1))


def shortened(config, train_steps: int | None, pictures: int = 5):
  """A copy of a training config with num_steps = train_steps (where given), a checkpoint at
  the end only and `pictures` pictures of samples over training."""
  config = config.copy_and_resolve_references()
  if train_steps is not None:
    config.num_steps = train_steps
  k = config.steps_per_call
  config.checkpoint_every = config.num_steps
  config.sample_every = max(k, config.num_steps // pictures // k * k)
  config.log_every = max(k, min(config.log_every, config.sample_every) // k * k)
  return config


def train(prepared, workdir: pathlib.Path):
  """Trains trainer.prepare's (Experiment, source, held-out, mesh) in a new folder."""
  built, source, held_out, mesh = prepared
  workdir.mkdir()
  trainer.train(built, source, workdir, mesh, held_out=held_out)
