"""Sample quality accumulated batch by batch: statistics that add over batches, devices and
processes, so that 50,000 samples are judged in the memory of one batch.

A `Judge` is a feature network with the statistics of the real images it compares
against: the classifier of `jaxdiff.evaluation` (the digits, Fashion-MNIST) or
Inception-v3 (`jaxdiff.fid`, FID). `batch_sums` runs inside the compiled sampling
step, right after the sampler, and returns sums over a batch's valid rows:

  count, sum of (f - mu_ref), sum of (f - mu_ref)(f - mu_ref)^T
      the features' mean and covariance (Heusel et al. 2017, eq. 6), centred on
      the reference mean so that float32 sums do not cancel;
  sum of max_y p(y|x), the histogram of argmax_y p(y|x)
      the confidence and the class histogram;
  per part of the Inception Score: count, sum of p(y|x), sum of sum_y p log p
      IS = exp(E_x KL(p(y|x) || p(y))) = exp(mean sum p log p - sum p(y) log p(y))
      over the same 10 contiguous parts (np.array_split) as `metrics.inception_score`
      (Salimans et al. 2016);

and per sample its features and, for a judge with training images, the pixel distance
to the nearest of them (the memorisation guard of `jaxdiff.evaluation`). `Running`
adds the batches on the host in float64, in batch order (so a run resumed from its
saved `Running` ends bitwise where an uninterrupted one does), keeps every sample's
nearest distance (4 bytes each) and the features of the first `keep` samples, on which
KID (Binkowski et al. 2018) and precision/recall (Kynkaenniemi et al. 2019) are
computed, and gives the same dict as `evaluation.quality` or `fid.quality`: exactly
their numbers, to float32 rounding, when num <= keep.
"""

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff import evaluation, fid, inception, metrics

IS_PARTS = 10  # As metrics.inception_score.


@dataclasses.dataclass(frozen=True, eq=False)
class Judge:
  """A feature network and the reference statistics it judges against.

  Attributes:
    kind: "classifier" (keys as `evaluation.quality`) or "inception" (as `fid.quality`).
    apply: (variables, images [B, H, W, C] in [-1, 1]) -> (features [B, F], logits [B, K]).
    variables: its parameters, passed to the compiled step as an argument.
    mu, sigma: the reference features' mean [F] and covariance [F, F].
    features: [M', F] reference features for KID and precision/recall.
    reference, num_reference: the reference's name and number of images.
    train_images: [M, H, W, C] for the nearest-training distances, or None.
    heldout_nearest: [N_h] the held-out real images' nearest-training distances, or None.
  """
  kind: str
  apply: Callable
  variables: Any
  mu: np.ndarray
  sigma: np.ndarray
  features: np.ndarray
  reference: str
  num_reference: int
  train_images: Any = None
  heldout_nearest: Any = None

  @classmethod
  def classifier(cls, ref: evaluation.Reference) -> "Judge":
    """The evaluation classifier of `evaluation.reference`."""
    def apply(params, images):
      logits, features = ref.model.apply({"params": params}, images, train=False)
      return features, logits

    return cls("classifier", apply, ref.params, ref.mu, ref.sigma, ref.features, ref.name,
               ref.train_images.shape[0], ref.train_images, ref.heldout_nearest)

  @classmethod
  def inception(cls, ref: fid.Reference) -> "Judge":
    """Inception-v3 with the statistics of `fid.reference`."""
    return cls("inception", inception.InceptionV3(resize=ref.resize).apply, ref.variables,
               ref.mu, ref.sigma, ref.features, ref.name, ref.num_images)

  def arguments(self):
    """What the compiled step takes of the judge: (variables, mu [F], train images or None)."""
    return (self.variables, np.asarray(self.mu, np.float32),
            None if self.train_images is None else np.asarray(self.train_images, np.float32))


def judges(source: str, options: dict, classifier: str = "auto", inception_weights=None, *,
           log=print) -> dict:
  """{name: Judge} of a data source (`data.make_source(source, **options)`): "classifier",
  the evaluation classifier where `evaluation.wanted(source, classifier)` (its reference
  trained or loaded from the cache), and "inception", Inception-v3 with the statistics of
  `fid.reference` where inception_weights names a file. The one place the programs (sample.py,
  sweep.py, training's eval block) build their judges.

  Raises:
    ValueError naming --evaluate yes on data without a classifier, or a bad weights file;
    FileNotFoundError for a missing weights file.
  """
  out = {}
  if evaluation.wanted(source, classifier):
    out["classifier"] = Judge.classifier(evaluation.reference(
        source, log=log, **{k: v for k, v in options.items() if k != "split"}))
  if inception_weights:
    out["inception"] = Judge.inception(fid.reference(source, inception_weights, log=log,
                                                     **options))
  return out


def main_judge(judged: dict) -> str:
  """The judge whose Frechet distance ranks results: Inception-v3's (FID) where there is one,
  else the classifier's."""
  return "inception" if "inception" in judged else "classifier"


def inception_part(index, num: int):
  """The part [B] of the Inception Score that sample `index` [B] falls in: np.array_split of
  num samples into min(IS_PARTS, num) contiguous parts, the first num % parts one longer."""
  parts = min(IS_PARTS, num)
  size, longer = divmod(num, parts)
  boundary = longer * (size + 1)
  return jnp.where(index < boundary, index // (size + 1),
                   longer + (index - boundary) // max(size, 1))


def nearest_distances(images, train_images):
  """L2 distance [B] from each of images [B, ...] to its nearest of train_images [M, ...]:
  the argmin of ||t||^2 - 2 <x, t>, then ||x - t|| measured exactly, as
  `evaluation.nearest_distances`."""
  x = images.reshape(images.shape[0], -1)
  t = train_images.reshape(train_images.shape[0], -1)
  nearest = jnp.argmin(jnp.sum(t**2, axis=1) - 2 * x @ t.T, axis=1)  # [B]
  return jnp.linalg.norm(x - t[nearest], axis=1)


def batch_sums(judge: Judge, arguments, images, index, valid, num: int):
  """The judge's sums over the valid rows of a batch, and its per-sample outputs.

  Args:
    arguments: `judge.arguments()` (device arrays inside the compiled step).
    images: [B, H, W, C] in [-1, 1] (clipped by the caller).
    index: [B] the samples' global indices; valid: [B] bool, False for padding rows.
    num: the run's number of samples (the Inception Score's parts).

  Returns:
    (sums, per_sample): sums as the module docstring lists them (float32); per_sample
    {"features": [B, F]} and, with training images, {"nearest": [B]}.
  """
  variables, mu, train_images = arguments
  features, logits = judge.apply(variables, images)
  features, logits = features.astype(jnp.float32), logits.astype(jnp.float32)
  weight = valid.astype(jnp.float32)  # [B]
  centred = (features - mu) * weight[:, None]  # [B, F]
  p = jax.nn.softmax(logits, axis=1)  # [B, K]
  in_part = (inception_part(index, num)[:, None] == jnp.arange(min(IS_PARTS, num)))
  in_part = in_part * weight[:, None]  # [B, parts]
  p_log_p = jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.maximum(p, 1e-30)), 0.0), axis=1)  # [B]
  sums = {"count": jnp.sum(weight),
          "feature_sum": jnp.sum(centred, axis=0),
          "feature_outer": centred.T @ centred,
          "confidence_sum": jnp.sum(weight * jnp.max(p, axis=1)),
          "class_counts": weight @ jax.nn.one_hot(jnp.argmax(p, axis=1), p.shape[1]),
          "part_count": jnp.sum(in_part, axis=0),
          "part_p_sum": in_part.T @ p,
          "part_p_log_p_sum": in_part.T @ p_log_p}
  per_sample = {"features": features}
  if train_images is not None:
    per_sample["nearest"] = nearest_distances(images, train_images)
  return sums, per_sample


class Running:
  """The host's running totals of a sampling run (float64), its kept features and nearest
  distances; `arrays()` and `Running.restore` save and load it exactly."""

  def __init__(self, judge: Judge, num: int, keep: int):
    self.judge, self.num, self.keep = judge, num, min(keep, num)
    self.sums = None  # {name: float64 array}, after the first batch.
    self.features = np.zeros((self.keep, judge.mu.shape[0]), np.float32)
    self.nearest = (np.zeros(num, np.float32) if judge.train_images is not None else None)

  def add(self, sums, per_sample, start: int):
    """Adds one batch: its sums (host arrays) and the per-sample outputs of its rows
    [start, start + B) (numpy; padding rows past num are dropped)."""
    sums = {k: np.asarray(v, np.float64) for k, v in sums.items()}
    self.sums = sums if self.sums is None else {k: self.sums[k] + v for k, v in sums.items()}
    if start < self.keep:
      rows = per_sample["features"][:self.keep - start]
      self.features[start:start + len(rows)] = rows
    if self.nearest is not None:
      rows = per_sample["nearest"][:self.num - start]
      self.nearest[start:start + len(rows)] = rows

  def needs_features(self, start: int) -> bool:
    """Whether the batch starting at sample `start` holds kept features."""
    return start < self.keep

  def arrays(self) -> dict:
    """Everything as numpy arrays, for np.savez."""
    out = {f"sum/{k}": v for k, v in (self.sums or {}).items()}
    out["features"] = self.features
    if self.nearest is not None:
      out["nearest"] = self.nearest
    return out

  @classmethod
  def restore(cls, judge: Judge, num: int, keep: int, arrays) -> "Running":
    running = cls(judge, num, keep)
    sums = {k[4:]: np.asarray(arrays[k]) for k in arrays if k.startswith("sum/")}
    running.sums = sums or None
    running.features = np.asarray(arrays["features"])
    if running.nearest is not None:
      running.nearest = np.asarray(arrays["nearest"])
    return running

  def statistics(self):
    """(mean [F], covariance [F, F] divided by N - 1) of every sample's features, float64."""
    n, s1, s2 = self.sums["count"], self.sums["feature_sum"], self.sums["feature_outer"]
    mean = s1 / n
    return self.judge.mu + mean, (s2 - n * np.outer(mean, mean)) / (n - 1)

  def inception_score(self) -> tuple[float, float]:
    """(mean, standard deviation) over the parts, as `metrics.inception_score`."""
    n = self.sums["part_count"]
    marginal = self.sums["part_p_sum"] / n[:, None]  # p(y) per part [parts, K]
    entropy = np.sum(marginal * np.log(np.maximum(marginal, 1e-30)), axis=1)
    scores = np.exp(self.sums["part_p_log_p_sum"] / n - entropy)
    return float(np.mean(scores)), float(np.std(scores))

  def quality(self) -> dict:
    """The keys and numbers of `evaluation.quality` (classifier) or `fid.quality` (inception)
    over every sample; KID and precision/recall over the first `keep`, num_kept_features
    saying how many."""
    judge = self.judge
    mu, sigma = self.statistics()
    distance, sqrt_error = metrics.frechet_distance(mu, sigma, judge.mu, judge.sigma)
    kid, kid_error, kid_blocks = metrics.kernel_distance(self.features, judge.features)
    inception_score, inception_score_std = self.inception_score()
    precision, recall = metrics.precision_recall(judge.features, self.features)
    num = int(self.sums["count"])
    common = {"num_samples": num, "reference": judge.reference,
              "num_reference": judge.num_reference, "kid": kid, "kid_error": kid_error,
              "kid_blocks": kid_blocks, "inception_score": inception_score,
              "inception_score_std": inception_score_std, "precision": precision,
              "recall": recall, "num_kept_features": self.keep}
    if judge.kind == "inception":
      return {**common, "fid": distance, "fid_sqrt_error": sqrt_error,
              "num_pr_reference": len(judge.features)}
    counts = self.sums["class_counts"]
    p = counts[counts > 0] / num
    return {**common,
            "confidence": float(self.sums["confidence_sum"] / num),
            "class_histogram": [int(round(c)) for c in counts],
            "classes_present": int(np.sum(counts > 0)),
            "class_entropy": float(-np.sum(p * np.log(p)) / np.log(len(counts))),
            "frechet_distance": distance, "frechet_sqrt_error": sqrt_error,
            "nearest_train_mean": float(np.mean(self.nearest)),
            "nearest_train_median": float(np.median(self.nearest)),
            "heldout_nearest_train_mean": float(np.mean(judge.heldout_nearest)),
            "heldout_nearest_train_median": float(np.median(judge.heldout_nearest))}
