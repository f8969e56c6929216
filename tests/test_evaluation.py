"""The evaluation classifier, its cache, and `quality` on real digits, noise and copies.

One short training (SHORT: 6 epochs of batch 32 on the 1500 train digits, about 96% on the
held-out ones) into a temporary cache serves every test.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff import data, evaluation
from jaxdiff.models.classifier import Classifier

SHORT = evaluation.Training(num_epochs=6, batch_size=32, learning_rate=3e-3)


def quiet(message):
  del message


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
  return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def ref(cache):
  return evaluation.reference("digits", training=SHORT, cache_dir=cache, log=quiet)


def test_classifier_takes_8x8_and_28x28_images():
  model = Classifier()
  for size in (8, 28):
    (logits, features), _ = jax.eval_shape(
        lambda x: model.init_with_output(jax.random.PRNGKey(0), x, train=False),
        jnp.zeros((2, size, size, 1)))
    assert logits.shape == (2, 10) and features.shape == (2, 32)
  with pytest.raises(ValueError, match=r"H and W divisible by 2\^2 = 4"):
    jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x, train=False),
                   jnp.zeros((2, 10, 10, 1)))


def test_classifier_learns_digits(ref):
  # SHORT reaches about 96% on the 297 held-out digits (the default training about 99%).
  assert ref.heldout_accuracy > 0.9
  assert ref.train_images.shape == (1500, 8, 8, 1) and ref.heldout_images.shape == (297, 8, 8, 1)


def test_cache_returns_the_reference_without_training(ref, cache, monkeypatch, tmp_path):
  def train_classifier(*args, **kwargs):
    raise AssertionError("trained again")

  monkeypatch.setattr(evaluation, "train_classifier", train_classifier)
  messages = []
  again = evaluation.reference("digits", training=SHORT, cache_dir=cache, log=messages.append)
  assert len(messages) == 1 and messages[0].startswith("evaluation: loaded")
  assert jax.tree.structure(again.params) == jax.tree.structure(ref.params)
  for a, b in zip(jax.tree.leaves(again.params), jax.tree.leaves(ref.params)):
    np.testing.assert_array_equal(a, b)
  for field in ("mu", "sigma", "heldout_nearest", "train_images", "heldout_images"):
    np.testing.assert_array_equal(getattr(again, field), getattr(ref, field))
  assert again.heldout_accuracy == ref.heldout_accuracy
  # $JAXDIFF_CACHE names the same cache when no cache_dir is given.
  monkeypatch.setenv(evaluation.CACHE_ENV, str(cache))
  evaluation.reference("digits", training=SHORT, log=quiet)
  # Another training seed or another classifier is another key: it trains.
  for options in ({"training": dataclasses.replace(SHORT, seed=1)},
                  {"training": SHORT, "model": Classifier(features=16)}):
    with pytest.raises(AssertionError, match="trained again"):
      evaluation.reference("digits", cache_dir=cache, log=quiet, **options)
  assert len(list((cache / "evaluation").glob("digits-train-*.npz"))) == 1
  # A damaged file (here cut short, in a copy of the cache) is reported and computed again.
  (path,) = (cache / "evaluation").glob("*.npz")
  (tmp_path / "evaluation").mkdir()
  (tmp_path / "evaluation" / path.name).write_bytes(path.read_bytes()[:1000])
  messages = []
  with pytest.raises(AssertionError, match="trained again"):
    evaluation.reference("digits", training=SHORT, cache_dir=tmp_path, log=messages.append)
  assert "unreadable (BadZipFile" in messages[0]


def test_held_out_digits_score_well_and_noise_badly(ref):
  rows = evaluation.reference_rows(ref)
  real, noise = rows["held-out"], rows["noise"]
  assert real["num_samples"] == noise["num_samples"] == 297
  assert real["num_reference"] == 1500
  assert real["classes_present"] == 10 and real["class_entropy"] > 0.97
  assert sum(real["class_histogram"]) == 297
  assert real["confidence"] > 0.8
  assert noise["frechet_distance"] > 10 * real["frechet_distance"]
  # KID: unbiased, so held-out real digits sit within their standard error of 0 (the
  # classifier's unnormalized features make it noisy at N = 297), noise several errors
  # above it. Real digits look real and cover the training digits; noise covers little.
  assert real["kid_blocks"] == noise["kid_blocks"] == 10
  assert abs(real["kid"]) < 3 * real["kid_error"] and noise["kid"] > 3 * noise["kid_error"]
  assert min(real["precision"], real["recall"]) > 0.85
  assert noise["precision"] < 0.8 and noise["recall"] < 0.3
  fewer = evaluation.reference_rows(ref, 100)
  assert fewer["held-out"]["num_samples"] == fewer["noise"]["num_samples"] == 100
  assert fewer["held-out"]["class_histogram"] == evaluation.quality(
      ref.heldout_images[:100], ref)["class_histogram"]
  # Inception Score: confident predictions spread over the classes; noise's far lower.
  assert real["inception_score"] > 2 * noise["inception_score"]
  assert max(real["frechet_sqrt_error"], noise["frechet_sqrt_error"]) < 1e-10
  # The held-out row's nearest-training distances are the cached ones, noise is much farther.
  assert real["nearest_train_mean"] == pytest.approx(real["heldout_nearest_train_mean"])
  assert noise["nearest_train_mean"] > 2 * real["nearest_train_mean"]
  assert evaluation.format_quality(real).startswith("297 images: confidence")
  assert "to 1500 digits train images" in evaluation.format_quality(real)


def test_one_class_shows_as_collapsed(ref):
  # 100 training images of the digit 3: one class predicted (a stray other or two from this
  # briefly trained classifier), entropy near 0, a large distance.
  source = data.make_source("digits", split="train")
  threes = ref.train_images[source.labels == 3][:100]
  row = evaluation.quality(threes, ref)
  held_out = evaluation.quality(ref.heldout_images[:100], ref)
  assert row["classes_present"] <= 3 and row["class_entropy"] < 0.1
  assert row["frechet_distance"] > 5 * held_out["frechet_distance"]
  # Precision stays high (they are real digits), recall and the Inception Score collapse.
  assert row["precision"] > 0.9 and row["recall"] < 0.5 * held_out["recall"]
  assert row["inception_score"] < 1.5


def test_memorisation_guard_finds_training_images(ref):
  row = evaluation.quality(ref.train_images[:200], ref)
  assert row["nearest_train_mean"] == 0.0 and row["nearest_train_median"] == 0.0
  assert row["heldout_nearest_train_median"] > 1.0
  # Against a brute-force minimum over all training images.
  x = ref.heldout_images[:20]
  brute = np.sqrt(np.min(np.sum((x[:, None] - ref.train_images[None])**2, axis=(2, 3, 4)), axis=1))
  np.testing.assert_allclose(evaluation.nearest_distances(x, ref.train_images), brute, rtol=1e-6)
  np.testing.assert_allclose(ref.heldout_nearest[:20], brute, rtol=1e-6)


def test_wrong_inputs_raise_clear_errors(ref, tmp_path):
  x = ref.heldout_images
  with pytest.raises(ValueError, match=r"\[N, 8, 8, 1\].*add the channel axis"):
    evaluation.quality(x[..., 0], ref)
  with pytest.raises(ValueError, match=r"\[N, 8, 8, 1\].*got shape \(4, 28, 28, 1\)"):
    evaluation.quality(np.zeros((4, 28, 28, 1)), ref)
  with pytest.raises(ValueError, match=r"uint8.*x / 127.5 - 1"):
    evaluation.quality(data.to_uint8(x), ref)
  with pytest.raises(ValueError, match=r"\[-1, 1\].*np.clip"):
    evaluation.quality(1.5 * x, ref)
  with pytest.raises(ValueError, match="NaN or inf values in 1 images"):
    evaluation.quality(np.where(np.arange(297)[:, None, None, None] == 5, np.nan, x), ref)
  with pytest.raises(ValueError, match="at least 20 images"):
    evaluation.quality(x[:19], ref)
  with pytest.raises(ValueError, match="num_classes=5.*10 classes"):
    evaluation.reference("digits", model=Classifier(num_classes=5), cache_dir=tmp_path, log=quiet)
  with pytest.raises(ValueError, match="labelled 8-bit images"):
    evaluation.source_arrays(data.make_source("toy", num_points=10))


def test_the_programs_judge_data_with_a_classifier_the_digits_by_default():
  assert evaluation.wanted("digits", "auto") and evaluation.wanted("idx", "yes")
  assert not evaluation.wanted("idx", "auto")  # Fashion-MNIST's classifier takes minutes.
  assert not any(evaluation.wanted(source, "no") for source in ("digits", "idx", "toy"))
  assert not evaluation.wanted("toy", "auto")
  with pytest.raises(ValueError, match=r"--evaluate yes: no evaluation classifier for the data "
                     r"source 'toy'; there is one for \['digits', 'idx'\]"):
    evaluation.wanted("toy", "yes")
