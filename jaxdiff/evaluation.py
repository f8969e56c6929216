"""Sample quality of an image model, judged by a classifier trained on the real images.

The judge is `jaxdiff.models.classifier.Classifier`, trained here on a labelled
split of a dataset (AdamW, Loshchilov & Hutter 2019, with a cosine decay, and
random translations of up to `max_shift` pixels). `quality` scores a set of
images [N, H, W, C] in [-1, 1] with it:

  confidence       the mean top-class probability, the "confident prediction"
                   half of the Inception Score (Salimans et al. 2016, sec. 4).
  class histogram  the predicted classes, their number present and the
                   normalized entropy H(p) / log K of the histogram p, its
                   "diverse classes" half (1 for a uniform histogram).
  Frechet distance of the Gaussian fitted to the classifier's penultimate
                   features to the one fitted to the reference split's
                   (Heusel et al. 2017, eq. 6; `jaxdiff.metrics`), with the
                   error of its matrix square roots. It is biased upwards
                   at small N (Chong & Forsyth 2020): compare sets of equal N.
  memorisation     the L2 distance in pixel space ([-1, 1]) from each image to
                   its nearest image of the reference (training) split, mean
                   and median, next to the same for the held-out split: samples
                   much closer to the training set than held-out real images
                   are copies (cf. Carlini et al. 2023, who count a sample
                   as extracted when it is this close to a training image).
  KID              the kernel distance of the features to the reference
                   split's, with its standard error (Binkowski et al. 2018):
                   unbiased, so comparable across N.
  Inception Score  of the classifier's probabilities (Salimans et al. 2016),
                   mean and standard deviation over 10 parts.
  precision, recall  of the features against the reference split's (its first
                   metrics.MAX_REAL_FEATURES; Kynkaenniemi et al. 2019, k = 3): the fraction of images
                   that look real, and of real images the set covers.

`reference_rows` scores the held-out real images and Gaussian noise, the two
ends of the scale. `wanted` is the programs' one rule of when to judge: their
--evaluate yes (data with a classifier only), auto (the digits) or no.
`reference` trains the classifier and computes the reference statistics once,
then loads them from a cache file
<cache>/evaluation/<kind>-<split>-<key>.npz, <cache> being the `cache_dir`
argument, else $JAXDIFF_CACHE, else ~/.cache/jaxdiff, and <key> a hash of
VERSION, the dataset's kind, splits and contents (SHA-256 of its images and
labels), the classifier's configuration and its training options. The file (no
pickle) holds the key in full, the classifier's parameters, the reference
features with their mean and covariance, the held-out accuracy and the held-out images'
nearest-training distances; it is written to a temporary file and renamed, so
it is complete or absent. What the reference rows score on the 8x8 digits:
docs/evaluation.md.
"""

import dataclasses
import functools
import hashlib
import json
import os
import pathlib
import time
import zipfile
from typing import Callable

import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxdiff import data, metrics, workdir
from jaxdiff.models.classifier import Classifier
from jaxdiff.models.compiler import compiler_options
from jaxdiff.progress import progress_bar

# Bump when a change makes earlier cache files wrong (training, features, statistics).
VERSION = 2
CACHE_ENV = "JAXDIFF_CACHE"
DEFAULT_CACHE = "~/.cache/jaxdiff"
# Images per forward pass when classifying, and per block of the nearest-neighbour search.
EVAL_BATCH = 500
NEAREST_BLOCK = 512
MIN_IMAGES = 20
# The data sources `reference` trains a classifier for: labelled 8-bit images with "train" and
# "test" splits (Fashion-MNIST and MNIST are "idx").
CLASSIFIED_SOURCES = ("digits", "idx")
# Those judged by default (--evaluate auto): the digits, whose classifier trains in seconds.
AUTOMATIC_SOURCES = ("digits",)


@dataclasses.dataclass(frozen=True)
class Training:
  """How the classifier is trained: AdamW with a cosine-decayed learning rate.

  Attributes:
    num_epochs: passes over the training split (its last partial batch dropped each epoch).
    batch_size: images per step.
    learning_rate: the initial learning rate, decayed to 0 by a cosine over the steps.
    weight_decay: AdamW's decoupled weight decay.
    max_shift: each training image is translated by up to this many pixels along each axis
      (edges repeated); 0 for none.
    seed: fixes the initialization, the batches, the translations and the dropout.
  """
  num_epochs: int = 30
  batch_size: int = 64
  learning_rate: float = 2e-3
  weight_decay: float = 1e-4
  max_shift: int = 1
  seed: int = 0


@dataclasses.dataclass(frozen=True, eq=False)
class Reference:
  """A trained classifier with the statistics of the images it judges against.

  Attributes:
    name: the dataset and split, e.g. "digits train".
    model, params: the classifier.
    features: [M, F] the classifier's features of train_images.
    mu, sigma: their mean [F] and covariance [F, F].
    train_images: the reference split, float32 [M, H, W, C] in [-1, 1]; the classifier was
      trained on it and the memorisation guard measures distances to it.
    heldout_images: the held-out split, float32 [N, H, W, C] in [-1, 1].
    heldout_accuracy: the classifier's accuracy on the held-out split.
    heldout_nearest: [N] the distance of each held-out image to its nearest training image.
  """
  name: str
  model: Classifier
  params: dict
  features: np.ndarray
  mu: np.ndarray
  sigma: np.ndarray
  train_images: np.ndarray
  heldout_images: np.ndarray
  heldout_accuracy: float
  heldout_nearest: np.ndarray


def wanted(source: str, choice: str) -> bool:
  """Whether a program judges images of the data source `source` (a kind of data.SOURCES)
  with its classifier, for the program's --evaluate `choice`: "yes", "no", or "auto" (the
  AUTOMATIC_SOURCES only).

  Raises:
    ValueError naming --evaluate for "yes" on a source with no classifier.
  """
  if choice not in ("auto", "yes", "no"):
    raise ValueError(f"--evaluate must be auto, yes or no, got {choice!r}")
  if choice == "yes" and source not in CLASSIFIED_SOURCES:
    raise ValueError(f"--evaluate yes: no evaluation classifier for the data source {source!r}; "
                     f"there is one for {list(CLASSIFIED_SOURCES)} (use --evaluate no)")
  return choice == "yes" or (choice == "auto" and source in AUTOMATIC_SOURCES)


def source_arrays(source):
  """The images of a labelled 8-bit source in [-1, 1] (as `data.make_iterator` maps them).

  Returns:
    images float32 [N, H, W, C] in [-1, 1], labels int32 [N].
  """
  if not source.eight_bit or not source.num_classes:
    raise ValueError(f"the classifier learns labelled 8-bit images; {source.origin} holds "
                     f"{'images' if source.eight_bit else 'points'} with "
                     f"{source.num_classes} classes")
  return data.model_arrays(source)


def check_images(images, shape: tuple[int, ...]) -> np.ndarray:
  """images as float32 [N, *shape], N >= MIN_IMAGES, after checking them; raises ValueError saying what
  is wrong otherwise."""
  images = np.asarray(images)
  if images.dtype == np.uint8:
    raise ValueError(f"images must be floats in [-1, 1] (model space), got uint8 in "
                     f"[{images.min()}, {images.max()}]; map them with x / 127.5 - 1")
  if images.ndim != 4 or images.shape[1:] != tuple(shape):
    missing_channel = images.shape[1:] == tuple(shape[:-1])
    hint = "; add the channel axis with x[..., None]" if missing_channel else ""
    raise ValueError(f"images must be [N, {', '.join(map(str, shape))}] like the reference "
                     f"images, got shape {images.shape}{hint}")
  if images.shape[0] < MIN_IMAGES:
    raise ValueError(f"the metrics need at least {MIN_IMAGES} images (KID: 10 blocks of 2), got "
                     f"{images.shape[0]}")
  if not np.all(np.isfinite(images)):
    raise ValueError(f"images must be finite, got {np.sum(~np.isfinite(images))} NaN or inf "
                     f"values in {np.sum(~np.all(np.isfinite(images), axis=(1, 2, 3)))} images")
  if images.min() < -1 or images.max() > 1:
    raise ValueError(f"images must lie in [-1, 1] (model space), got values in "
                     f"[{images.min():.4g}, {images.max():.4g}]: clip samples with "
                     "np.clip(x, -1, 1) (data.to_uint8 clips the same way); 8-bit images map "
                     "with x / 127.5 - 1")
  return images.astype(np.float32)


def random_shift(key, x, max_shift: int):
  """Each image of x [B, H, W, C] translated by up to max_shift pixels per axis, edges repeated."""
  m = max_shift
  padded = jnp.pad(x, ((0, 0), (m, m), (m, m), (0, 0)), mode="edge")  # [B, H + 2m, W + 2m, C]
  offsets = jax.random.randint(key, (x.shape[0], 2), 0, 2 * m + 1)  # [B, 2]
  crop = lambda image, o: jax.lax.dynamic_slice(image, (o[0], o[1], 0), x.shape[1:])
  return jax.vmap(crop)(padded, offsets)


def train_classifier(model: Classifier, source, training: Training = Training(), *,
                     log: Callable[[str], None] = print) -> dict:
  """The classifier's parameters after training on a labelled 8-bit image source.

  Batches come from `data.make_iterator` (seeded); the step, jitted once, minimizes the
  cross-entropy of translated images with dropout. A pure function of (model, source,
  training) up to the floating-point order of the device.

  Returns:
    The parameters (a dict of arrays).
  """
  if model.num_classes != source.num_classes:
    raise ValueError(f"the classifier has num_classes={model.num_classes}, {source.origin} "
                     f"has {source.num_classes} classes")
  if training.max_shift < 0 or training.num_epochs < 1:
    raise ValueError(f"training needs num_epochs >= 1 and max_shift >= 0, got {training}")
  num_steps = training.num_epochs * (len(source) // training.batch_size)
  iterator = data.make_iterator(source, batch_size=training.batch_size, seed=training.seed)
  key_init, key_train = jax.random.split(jax.random.PRNGKey(training.seed))
  init = jax.jit(functools.partial(model.init, train=False))  # One compilation, not one per op.
  params = init(key_init, jnp.zeros((1, *source.shape)))["params"]
  optimizer = optax.adamw(optax.cosine_decay_schedule(training.learning_rate, num_steps),
                          weight_decay=training.weight_decay)

  def loss_fn(params, image, label, key):
    key_shift, key_dropout = jax.random.split(key)
    if training.max_shift:
      image = random_shift(key_shift, image, training.max_shift)
    logits, _ = model.apply({"params": params}, image, train=True, rngs={"dropout": key_dropout})
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, label))

  def step(params, opt_state, batch, index):
    key = jax.random.fold_in(key_train, index)
    loss, grads = jax.value_and_grad(loss_fn)(params, batch["image"], batch["label"], key)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  step = jax.jit(step, donate_argnums=(0, 1), compiler_options=compiler_options())
  log(f"training the classifier on {len(source)} images of {source.origin}: {num_steps} steps "
      f"({training.num_epochs} epochs of batch {training.batch_size})")
  start = time.perf_counter()
  opt_state = optimizer.init(params)
  # A bar on a terminal, a line a minute in a log: the Fashion-MNIST classifier takes hours
  # on a small CPU.
  bar = progress_bar(num_steps, 0, enabled=True, every_seconds=60, desc="classifier")
  for index in range(num_steps):
    params, opt_state, loss = step(params, opt_state, next(iterator), index)
    bar.update(1)
  bar.close()
  log(f"trained in {time.perf_counter() - start:.0f} s, last batch's loss {float(loss):.4f}")
  return jax.device_get(params)


@functools.cache  # One compilation per classifier configuration.
def _jitted_apply(model: Classifier):
  return jax.jit(lambda params, x: model.apply({"params": params}, x, train=False),
                 compiler_options=compiler_options())


def classify(model: Classifier, params, images):
  """The classifier's output on images [N, H, W, C] in [-1, 1], dropout off.

  Returns:
    probabilities float32 [N, num_classes], features float32 [N, features].
  """
  apply = _jitted_apply(model)
  num = images.shape[0]
  padded = np.concatenate([images, np.zeros((-num % EVAL_BATCH, *images.shape[1:]),
                                            images.dtype)])  # One shape: one compilation.
  logits, features = zip(*(apply(params, padded[i:i + EVAL_BATCH])
                           for i in range(0, len(padded), EVAL_BATCH)))
  return (np.asarray(jax.nn.softmax(jnp.concatenate(logits)[:num])),
          np.asarray(jnp.concatenate(features)[:num]))


def nearest_distances(images, train_images) -> np.ndarray:
  """L2 distance [N] in pixel space from each of images [N, H, W, C] to its nearest image of
  train_images [M, H, W, C]: found by ||t||^2 - 2 <x, t> in float32 over blocks of images,
  then measured exactly as ||x - t|| (0 for an image of the training set)."""
  x = images.reshape(images.shape[0], -1).astype(np.float32)  # [N, D]
  t = train_images.reshape(train_images.shape[0], -1).astype(np.float32)  # [M, D]
  t_squared = np.sum(t**2, axis=1)  # [M]
  distances = np.empty(x.shape[0])
  for i in range(0, x.shape[0], NEAREST_BLOCK):
    block = x[i:i + NEAREST_BLOCK]  # [b, D]
    nearest = np.argmin(t_squared - 2 * block @ t.T, axis=1)  # [b]
    distances[i:i + NEAREST_BLOCK] = np.linalg.norm(block - t[nearest], axis=1)
  return distances


def cache_path(cache_dir, kind: str, split: str, key: dict) -> pathlib.Path:
  """<cache>/evaluation/<kind>-<split>-<16 hex digits of the key's hash>.npz."""
  root = pathlib.Path(cache_dir or os.environ.get(CACHE_ENV) or DEFAULT_CACHE).expanduser()
  digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
  return root / "evaluation" / f"{kind}-{split}-{digest}.npz"


def load_cached(path: pathlib.Path, key: dict):
  """The cached arrays of `key` at path, or None (with the reason) if absent or not the key's."""
  if not path.is_file():
    return None, "none cached"
  try:
    with np.load(path, allow_pickle=False) as stored:
      arrays = dict(stored)
    stored_key = json.loads(str(arrays.pop("key")))
  except (OSError, ValueError, KeyError, zipfile.BadZipFile) as error:  # Not a cache file.
    return None, f"unreadable ({type(error).__name__}: {error})"
  if stored_key != key:
    return None, "written for another configuration (hash collision)"
  return arrays, None


def save_cached(path: pathlib.Path, key: dict, params, **arrays):
  """Writes the key, the parameters (as params/<module>/<name>) and arrays to path atomically."""
  flat = {f"params/{name}": np.asarray(value)
          for name, value in flax.traverse_util.flatten_dict(params, sep="/").items()}
  workdir.write_atomically(path, lambda f: np.savez(
      f, key=np.array(json.dumps(key, sort_keys=True)), **flat, **arrays))


def reference(kind: str = "digits", *, split: str = "train", heldout_split: str = "test",
              model: Classifier | None = None, training: Training = Training(), cache_dir=None,
              log: Callable[[str], None] = print, **source_options) -> Reference:
  """The classifier and reference statistics of a dataset: loaded from the cache, or trained,
  computed and cached.

  Args:
    kind, source_options: the data source, `data.make_source(kind, split=..., **options)`,
      e.g. "digits", or "idx" for Fashion-MNIST; it must have splits.
    split: the reference split: the classifier trains on it, its features give the
      reference statistics, the memorisation guard measures distances to it.
    heldout_split: the split giving the held-out accuracy and the held-out rows.
    model: the classifier; default `Classifier(num_classes=<the source's>)`.
    training: how the classifier is trained.
    cache_dir: the cache's root (files go to <cache_dir>/evaluation/); default $JAXDIFF_CACHE,
      else ~/.cache/jaxdiff.
    log: receives one line on loading, several on computing.

  Returns:
    The Reference.
  """
  sources = {s: data.make_source(kind, split=s, **source_options) for s in (split, heldout_split)}
  (train_images, train_labels), (heldout_images, heldout_labels) = (
      source_arrays(sources[s]) for s in (split, heldout_split))
  if model is None:
    model = Classifier(num_classes=sources[split].num_classes)
  contents = hashlib.sha256()
  for array in (train_images, train_labels, heldout_images, heldout_labels):
    contents.update(array.tobytes())
  key = {"version": VERSION, "kind": kind, "split": split, "heldout_split": heldout_split,
         "contents": contents.hexdigest(),
         "model": {f.name: getattr(model, f.name) for f in dataclasses.fields(model)
                   if f.name not in ("parent", "name")},
         "training": dataclasses.asdict(training)}
  key = json.loads(json.dumps(key))  # Tuples as lists, as they read back.
  path = cache_path(cache_dir, kind, split, key)
  name = f"{kind} {split}"
  arrays, reason = load_cached(path, key)
  if arrays is not None:
    log(f"evaluation: loaded the {name} classifier and statistics from {path}")
    params = flax.traverse_util.unflatten_dict(
        {k.removeprefix("params/"): v for k, v in arrays.items() if k.startswith("params/")},
        sep="/")
    return Reference(name, model, params, arrays["features"], arrays["mu"], arrays["sigma"],
                     train_images,
                     heldout_images, float(arrays["heldout_accuracy"]),
                     arrays["heldout_nearest"])

  log(f"evaluation: {path}: {reason}; computing the {name} classifier and statistics")
  params = train_classifier(model, sources[split], training, log=log)
  features = classify(model, params, train_images)[1]
  mu, sigma = metrics.feature_statistics(features)
  probabilities, _ = classify(model, params, heldout_images)
  accuracy = float(np.mean(np.argmax(probabilities, axis=1) == heldout_labels))
  heldout_nearest = nearest_distances(heldout_images, train_images)
  save_cached(path, key, params, features=features, mu=mu, sigma=sigma,
              heldout_accuracy=accuracy, heldout_nearest=heldout_nearest)
  log(f"evaluation: held-out accuracy {accuracy:.4f} on {len(heldout_labels)} {kind} "
      f"{heldout_split} images; wrote {path}")
  return Reference(name, model, params, features, mu, sigma, train_images, heldout_images,
                   accuracy, heldout_nearest)


def quality(images, ref: Reference) -> dict:
  """Scores images [N, H, W, C] in [-1, 1] (N >= MIN_IMAGES) against the reference.

  Returns:
    A JSON-serializable dict: num_samples N; confidence, the mean top-class probability;
    class_histogram [num_classes] counts of the predicted classes; classes_present;
    class_entropy, the histogram's entropy over log(num_classes), in [0, 1];
    frechet_distance of the features to the reference statistics, frechet_sqrt_error (the
    relative error of its matrix square roots), reference (its name) and num_reference (its
    number of images); nearest_train_mean and nearest_train_median, the pixel-space distance
    to the nearest training image, next to heldout_nearest_train_mean and
    heldout_nearest_train_median, the same for the held-out split; kid, kid_error and
    kid_blocks; inception_score and inception_score_std; precision and recall.
  """
  images = check_images(images, ref.train_images.shape[1:])
  probabilities, features = classify(ref.model, ref.params, images)
  counts = np.bincount(np.argmax(probabilities, axis=1), minlength=ref.model.num_classes)  # [K]
  p = counts[counts > 0] / images.shape[0]
  distance, sqrt_error = metrics.frechet_distance(*metrics.feature_statistics(features), ref.mu,
                                                  ref.sigma)
  nearest = nearest_distances(images, ref.train_images)  # [N]
  kid, kid_error, kid_blocks = metrics.kernel_distance(features, ref.features)
  inception_score, inception_score_std = metrics.inception_score(probabilities)
  precision, recall = metrics.precision_recall(ref.features, features)
  return {
      "num_samples": images.shape[0],
      "confidence": float(np.mean(np.max(probabilities, axis=1))),
      "class_histogram": counts.tolist(),
      "classes_present": int(np.sum(counts > 0)),
      "class_entropy": float(-np.sum(p * np.log(p)) / np.log(ref.model.num_classes)),
      "frechet_distance": distance,
      "frechet_sqrt_error": sqrt_error,
      "reference": ref.name,
      "num_reference": ref.train_images.shape[0],
      "nearest_train_mean": float(np.mean(nearest)),
      "nearest_train_median": float(np.median(nearest)),
      "heldout_nearest_train_mean": float(np.mean(ref.heldout_nearest)),
      "heldout_nearest_train_median": float(np.median(ref.heldout_nearest)),
      "kid": kid, "kid_error": kid_error, "kid_blocks": kid_blocks,
      "inception_score": inception_score, "inception_score_std": inception_score_std,
      "precision": precision, "recall": recall,
  }


def reference_rows(ref: Reference, num: int | None = None, seed: int = 0) -> dict[str, dict]:
  """`quality` of the two ends of the scale: {"held-out": the first num held-out real images
  (all of them where num is None or larger), "noise": as many images of standard Gaussian
  noise clipped to [-1, 1]}. At the samples' num the rows are comparable with theirs (the
  Frechet distance is biased by N), and they cost what the samples' row costs: the 10,000
  held-out images of Fashion-MNIST took minutes of nearest-neighbour search each."""
  heldout = ref.heldout_images[:num]
  noise = np.random.default_rng(seed).standard_normal(heldout.shape)
  return {"held-out": quality(heldout, ref), "noise": quality(np.clip(noise, -1, 1), ref)}


def format_quality(row: dict) -> str:
  """One line of a `quality` dict, the number of images next to every statistic."""
  return (f"{row['num_samples']} images: confidence {row['confidence']:.3f}, "
          f"{row['classes_present']}/{len(row['class_histogram'])} classes (entropy "
          f"{row['class_entropy']:.3f}), Frechet distance {row['frechet_distance']:.2f} to "
          f"{row['num_reference']} {row['reference']} images (sqrt error "
          f"{row['frechet_sqrt_error']:.0e}), nearest-training distance mean "
          f"{row['nearest_train_mean']:.2f} / median {row['nearest_train_median']:.2f} "
          f"(held-out {row['heldout_nearest_train_mean']:.2f} / "
          f"{row['heldout_nearest_train_median']:.2f}), KID {row['kid']:.4f} +- "
          f"{row['kid_error']:.4f}, Inception Score {row['inception_score']:.2f} +- "
          f"{row['inception_score_std']:.2f}, precision {row['precision']:.3f}, recall "
          f"{row['recall']:.3f}")
