"""Sample quality in Inception-v3's feature space: FID, KID, Inception Score, precision/recall.

The metrics of published image-generation results (CIFAR-10, ImageNet, ...):
the Frechet distance of the 2048-d pool3 features (FID; Heusel et al. 2017),
their kernel distance (KID; Binkowski et al. 2018), the Inception Score of the
1008-way class probabilities (Salimans et al. 2016) and improved precision and
recall (Kynkaenniemi et al. 2019, k = 3), computed by `jaxdiff.metrics` from
`jaxdiff.inception`'s network with the weights file the user supplies (the
file pytorch-fid and most papers use; see that module).

The dataset's side is computed once and cached (`reference`): the features of
every image of a split give the mean and covariance; the features of a fixed
random subset of at most max_features images stay for KID and precision/recall
(50,000 x 2048 float32 would be 400 MB). The cache file
<cache>/evaluation/inception-<kind>-<split>-<hash>.npz is keyed by VERSION, the
dataset's kind, options and contents (SHA-256 of its images), the weights file's
SHA-256, the resize flag and max_features, and written atomically (the
helpers of `jaxdiff.evaluation`).

FID depends on N (biased upwards at small N; Chong & Forsyth 2020): compare
sets of equal N, and always read the N printed beside it (50,000 samples
against the training set is the usual protocol).
"""

import dataclasses
import hashlib
import json
from typing import Callable

import jax
import numpy as np

from jaxdiff import data, evaluation, inception, metrics

VERSION = 1


@dataclasses.dataclass(frozen=True, eq=False)
class Reference:
  """A dataset split's Inception statistics, with the network that computed them.

  Attributes:
    name: "<kind> <split>" ("all" for a source without splits).
    variables: the Inception-v3 variables (`inception.load_weights`).
    resize: whether images are resized to 299x299 before the network (the FID protocol).
    num_images: M, the images of the split.
    mu, sigma: mean [2048] and covariance [2048, 2048] of their pool3 features.
    features: [min(M, max_features), 2048] the pool3 features of a fixed random subset.
  """
  name: str
  variables: dict
  resize: bool
  num_images: int
  mu: np.ndarray
  sigma: np.ndarray
  features: np.ndarray


def source_images(source) -> np.ndarray:
  """The images of an 8-bit source in [-1, 1], float32 [N, H, W, C]."""
  if not source.eight_bit:
    raise ValueError(f"Inception features are of 8-bit images; {source.origin} holds points")
  return data.model_arrays(source)[0]


def reference(kind: str, weights, *, resize: bool = True, max_features: int = 10_000,
              batch_size: int = inception.BATCH, cache_dir=None,
              log: Callable[[str], None] = print, **source_options) -> Reference:
  """The Inception statistics of `data.make_source(kind, **source_options)` (e.g. split="train"):
  loaded from the cache, or computed and cached.

  Args:
    weights: the Inception weights file (`inception.load_weights`: .pth or converted .npz).
    resize: resize to 299x299 (the FID protocol; off only for tests and studies at other
      sizes, >= 75x75).
    max_features: the subset kept for KID and precision/recall.
  """
  variables = inception.load_weights(weights)
  images = source_images(data.make_source(kind, **source_options))
  split = source_options.get("split", "all")
  key = {"version": VERSION, "kind": kind, "options": source_options,
         "contents": hashlib.sha256(images.tobytes()).hexdigest(),
         "weights": inception.sha256(weights), "resize": resize, "max_features": max_features}
  key = json.loads(json.dumps(key))
  name = f"{kind} {split}"
  path = evaluation.cache_path(cache_dir, f"inception-{kind}", split, key)
  arrays, reason = evaluation.load_cached(path, key)
  if arrays is not None:
    log(f"fid: loaded the Inception statistics of {name} from {path}")
    return Reference(name, variables, resize, len(images), arrays["mu"], arrays["sigma"],
                     arrays["features"])
  log(f"fid: {path}: {reason}; computing the Inception features of {len(images)} {name} "
      "images")
  pool3, _ = inception.features(variables, images, batch_size=batch_size, resize=resize,
                                progress=True)
  mu, sigma = metrics.feature_statistics(pool3)
  subset = np.sort(np.random.default_rng(0).permutation(len(images))[:max_features])
  features = pool3[subset]
  evaluation.save_cached(path, key, {}, mu=mu, sigma=sigma, features=features)
  log(f"fid: wrote {path}")
  return Reference(name, variables, resize, len(images), mu, sigma, features)


def quality(images, ref: Reference, batch_size: int = inception.BATCH) -> dict:
  """FID, KID, Inception Score, precision and recall of images [N, H, W, C] in [-1, 1].

  Returns:
    A JSON-serializable dict: num_samples N, reference and num_reference (M); fid and
    fid_sqrt_error (the relative error of its matrix square roots); kid, kid_error,
    kid_blocks; inception_score, inception_score_std (10 parts); precision, recall (against
    the reference's feature subset, num_pr_reference of them).
  """
  pool3, logits = inception.features(ref.variables, images, batch_size=batch_size,
                                     resize=ref.resize, progress=True)
  fid, sqrt_error = metrics.frechet_distance(*metrics.feature_statistics(pool3), ref.mu,
                                             ref.sigma)
  kid, kid_error, kid_blocks = metrics.kernel_distance(pool3, ref.features)
  inception_score, inception_score_std = metrics.inception_score(
      np.asarray(jax.nn.softmax(logits.astype(np.float64), axis=1)))
  precision, recall = metrics.precision_recall(ref.features, pool3)
  return {"num_samples": len(pool3), "reference": ref.name, "num_reference": ref.num_images,
          "fid": fid, "fid_sqrt_error": sqrt_error,
          "kid": kid, "kid_error": kid_error, "kid_blocks": kid_blocks,
          "inception_score": inception_score, "inception_score_std": inception_score_std,
          "precision": precision, "recall": recall, "num_pr_reference": len(ref.features)}


def format_quality(row: dict) -> str:
  """One line of a `quality` dict, N and M beside the metrics."""
  return (f"{row['num_samples']} images against {row['num_reference']} {row['reference']} "
          f"images: FID {row['fid']:.2f} (sqrt error {row['fid_sqrt_error']:.0e}), KID "
          f"{row['kid']:.4f} +- {row['kid_error']:.4f}, Inception Score "
          f"{row['inception_score']:.2f} +- {row['inception_score_std']:.2f}, precision "
          f"{row['precision']:.3f}, recall {row['recall']:.3f} (against "
          f"{row['num_pr_reference']})")
