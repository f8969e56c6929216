"""Inception statistics of a dataset: computed once, cached, and the metrics of a set against
them (FID 0 and full precision and recall for the dataset itself, far worse for noise), with
a random-weight network at 75x75 (the protocol's 299x299 resize is tested in test_inception)."""

import math

import numpy as np
import pytest

from jaxdiff import data, fid, inception

BATCH = 24  # One batch of every set: one compilation.


def he_state_dict(seed=0):
  """A random Inception state dict whose activations stay of order 1: He-scaled convolutions,
  unit batch-norm scales, positive running variances."""
  rng = np.random.default_rng(seed)
  out = {}
  for key, (*_, shape) in inception.torch_layout().items():
    if key.endswith("running_var"):
      value = rng.uniform(0.5, 1.5, shape)
    elif key.endswith("running_mean"):
      value = 0.1 * rng.standard_normal(shape)
    elif key.endswith("bn.weight"):
      value = np.ones(shape)
    elif key.endswith("weight"):  # Convolutions [out, in, kh, kw] and fc [out, in].
      value = rng.standard_normal(shape) * math.sqrt(2 / math.prod(shape[1:]))
    else:
      value = np.zeros(shape)
    out[key] = value.astype(np.float32)
  return out


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  """(weights file, npz data file, its images in [-1, 1], cache dir): 24 smooth random 75x75
  RGB images (KID needs 20)."""
  root = tmp_path_factory.mktemp("fid")
  weights = root / "inception.npz"
  np.savez(weights, **he_state_dict())
  rng = np.random.default_rng(1)
  coarse = rng.uniform(0, 255, (24, 5, 5, 3))
  images = np.repeat(np.repeat(coarse, 15, axis=1), 15, axis=2).astype(np.uint8)  # [24, 75, ...]
  np.savez(root / "images.npz", images=images)
  return weights, root / "images.npz", images / 127.5 - 1, root / "cache"


def reference(setup, log):
  weights, path, _, cache = setup
  return fid.reference("npz", weights, resize=False, max_features=20,
                       batch_size=BATCH, cache_dir=cache, log=log, path=str(path))


def test_reference_is_computed_once_then_loaded(setup):
  messages = []
  first = reference(setup, messages.append)
  assert "computing the Inception features of 24 npz all images" in messages[0]
  second = reference(setup, messages.append)
  assert "loaded the Inception statistics" in messages[-1]
  assert (first.num_images, first.features.shape) == (second.num_images, (20, 2048))
  np.testing.assert_array_equal(first.sigma, second.sigma)
  # The statistics are those of the features of every image.
  pool3, _ = inception.features(first.variables, setup[2], resize=False, batch_size=BATCH)
  np.testing.assert_allclose(first.mu, pool3.mean(axis=0), rtol=1e-5, atol=1e-6)


def test_the_dataset_scores_perfectly_and_noise_does_not(setup):
  ref = reference(setup, lambda *_: None)
  images = setup[2]
  same = fid.quality(images, ref, batch_size=BATCH)
  assert same["num_samples"] == same["num_reference"] == 24
  assert abs(same["fid"]) < 1e-6 * np.trace(ref.sigma)  # Identical statistics.
  # The 20 images of the reference's subset are on its manifold (the other 4 may be too), and
  # the subset lies in the images' own manifold.
  assert same["precision"] >= 20 / 24 and same["recall"] == 1.0
  noise = np.random.default_rng(2).uniform(-1, 1, images.shape).astype(np.float32)
  other = fid.quality(noise, ref, batch_size=BATCH)
  assert other["fid"] > 0.1 * np.trace(ref.sigma)
  # KID of a set with itself: near 0 (measured 0.06 of noise's with 10 blocks of 2).
  assert abs(same["kid"]) < 0.2 * other["kid"]
  assert other["kid"] > 3 * other["kid_error"]
  assert fid.format_quality(other).startswith("24 images against 24 npz all images: FID")


def test_points_are_refused(tmp_path):
  with pytest.raises(ValueError, match="8-bit images"):
    fid.source_images(data.make_source("toy", num_points=10))
