"""Latent diffusion (Rombach et al. 2022) on the tiny_autoencoder (8x8x1 digits -> 4x4x2).

Latents encoded once (encode.py, jaxdiff.train.encode_run) and read back as a data source
(jaxdiff.data.latents_source): the posteriors and labels of every image, the scaling factor by
the law of total variance, bitwise resumption, and the source's draws of z ~ q(z | x). A
diffusion model trained on them: what trainer.prepare refuses, the samples decoded to images
in the sampling step and judged as images (by sample.py and by the studies), and sample.py on
the autoencoder's own checkpoint (its reconstructions, the floor)."""

import dataclasses
import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff import data, metrics, streamed
from jaxdiff.train import encode_run, generate, latent, sample_run, sharding, trainer, write_once

from conftest import ROOT, tiny_config
from studies import common
from studies import samplers as study_samplers

# The digits' 297 test images in 5 batches of 64 (the last one padded), progress every 2.
JOB = encode_run.Job("digits", {"split": "test"}, batch_size=64, save_every=2)


def test_an_autoencoder_run_learns_to_reconstruct_and_logs_its_latents(tiny_autoencoder):
  rows = [json.loads(line)
          for line in (tiny_autoencoder / "metrics.jsonl").read_text().splitlines()]
  assert [row["step"] for row in rows] == [5, 10, 15, 20]
  assert rows[-1]["reconstruction"] < 0.7 * rows[0]["reconstruction"]
  for row in rows:  # The loss is the summed L1 plus 1e-6 KL: 64 pixels.
    assert row["kl"] > 0 and row["latent_std"] > 0 and abs(row["latent_mean"]) < 10
  assert (tiny_autoencoder / "samples" / "step-20.png").exists()


@pytest.fixture(scope="module")
def autoencoder(tiny_autoencoder):
  return latent.load(tiny_autoencoder, "ema")


@pytest.fixture(scope="module")
def encoded(autoencoder, tmp_path_factory):
  """The folder of an uninterrupted encoding of JOB, and its record."""
  out = tmp_path_factory.mktemp("latents")
  source = data.make_source(JOB.source, **JOB.options)
  record = encode_run.run(*autoencoder, source, JOB, sharding.make_mesh({"data": -1}), out,
                          progress=False)
  return out, record


def test_scaling_factor_is_half_over_the_std_of_z_by_the_law_of_total_variance():
  rng = np.random.default_rng(0)
  mean = rng.normal(0.7, 2.0, (2, 9, 3, 3, 2))  # Two batches of posteriors.
  logvar = rng.normal(-1.0, 0.5, mean.shape)
  sums = {"count": 0, "mean": 0.0, "mean_squared": 0.0, "variance": 0.0}
  for m, v in zip(mean, logvar):
    sums = encode_run._add(sums, np.concatenate([m, v], -1).astype(np.float32))
  m, v = mean.astype(np.float32).astype(np.float64), logvar.astype(np.float32)
  expected = np.sqrt(np.var(m) + np.mean(np.exp(v.astype(np.float64))))
  assert encode_run.scaling_of(sums) == pytest.approx((np.mean(m), expected), rel=1e-12)
  # It is the std of z ~ q(z | x) over the whole set: 200 draws of every element.
  z = m + np.exp(v / 2) * rng.standard_normal((200, *m.shape))
  assert encode_run.scaling_of(sums)[1] == pytest.approx(np.std(z), rel=0.01)


def test_encoding_stores_every_images_posterior_its_label_and_the_scaling(autoencoder,
                                                                           encoded):
  model, params, origin = autoencoder
  out, record = encoded
  source = data.make_source("digits", split="test")
  posterior, labels = np.load(out / data.LATENTS), np.load(out / data.LATENT_LABELS)
  images, expected_labels = data.model_arrays(source)
  mean, logvar = jax.jit(lambda x: model.apply({"params": params}, x, method="encode"))(images)
  np.testing.assert_allclose(posterior, np.concatenate([mean, logvar], -1), atol=2e-5)
  np.testing.assert_array_equal(labels, expected_labels)
  m, v = np.split(posterior.astype(np.float64), 2, -1)
  std = np.sqrt(np.var(m) + np.mean(np.exp(v)))
  assert record["latent_std"] == pytest.approx(std, rel=1e-9)
  assert record["autoencoder"]["scaling_factor"] == pytest.approx(0.5 / std, rel=1e-9)
  assert record["autoencoder"]["shift_factor"] == pytest.approx(np.mean(m), rel=1e-9)
  assert record["autoencoder"]["fingerprint"] == latent.fingerprint(params)
  assert record["autoencoder"]["checkpoint"] == origin["checkpoint"]
  assert (record["num"], record["shape"], record["num_classes"]) == (297, [4, 4, 2], 10)
  assert record["scaling_computed"] and record["stored"] == data.STORED
  assert json.loads((out / data.LATENTS_RECORD).read_text()) == record
  assert not (out / write_once.PROGRESS).exists()


def test_an_interrupted_encoding_continues_to_bitwise_the_uninterrupted_one(
    autoencoder, encoded, tmp_path, monkeypatch, killed_after_two_saves):
  source = data.make_source(JOB.source, **JOB.options)
  mesh = sharding.make_mesh({"data": -1})
  with pytest.raises(KeyboardInterrupt):
    encode_run.run(*autoencoder, source, JOB, mesh, tmp_path, progress=False)
  monkeypatch.undo()
  # A kill at any later moment leaves rows after the saved ones half written: spoil them.
  spoiled = np.load(tmp_path / data.LATENTS, mmap_mode="r+")
  spoiled[2 * 64:] = np.nan
  spoiled.flush()
  other = encode_run.Job(JOB.source, JOB.options, batch_size=32)
  with pytest.raises(ValueError, match="differs in global_batch: 64 there, 32 here"):
    encode_run.run(*autoencoder, source, other, mesh, tmp_path, progress=False)
  record = encode_run.run(*autoencoder, source, JOB, mesh, tmp_path, progress=False)
  out, expected = encoded
  assert record == expected
  for name in (data.LATENTS, data.LATENT_LABELS, data.LATENTS_RECORD):
    assert (tmp_path / name).read_bytes() == (out / name).read_bytes(), name


def test_latents_source_draws_z_from_the_posterior_and_resumes_bitwise(encoded):
  out, record = encoded
  source = data.make_source("latents", path=str(out))
  assert (source.shape, source.eight_bit, source.num_classes) == ((4, 4, 2), False, 10)
  assert source.autoencoder == record["autoencoder"]
  posterior = np.load(out / data.LATENTS)
  scaling, shift = record["autoencoder"]["scaling_factor"], record["autoencoder"]["shift_factor"]
  mean, logvar = np.split(posterior, 2, -1)
  # x_latent = scaling (mean + exp(logvar / 2) eps - shift), eps from the rng.
  eps = np.random.default_rng(3).standard_normal(mean[:5].shape, dtype=np.float32)
  drawn = source.draw({"image": posterior[:5], "label": np.zeros(5)}, np.random.default_rng(3))
  np.testing.assert_allclose(drawn["image"], scaling * (mean[:5] + np.exp(logvar[:5] / 2) * eps
                                                        - shift), rtol=1e-6, atol=1e-6)
  x, labels = data.model_arrays(source, 7)  # The means, no draw.
  np.testing.assert_allclose(x, scaling * (mean[:7] - shift), rtol=1e-6)
  np.testing.assert_array_equal(labels, np.load(out / data.LATENT_LABELS)[:7])

  iterator = data.make_iterator(source, batch_size=100, seed=5)
  batches = [next(iterator) for _ in range(4)]  # Into the second epoch (2 batches each).
  assert batches[0]["image"].shape == (100, 4, 4, 2) and batches[0]["image"].dtype == np.float32
  restored = data.make_iterator(source, batch_size=100, seed=5)
  next(restored)
  state = restored.get_state()
  resumed = data.make_iterator(source, batch_size=100, seed=5)
  resumed.set_state(state)
  for expected in batches[1:]:
    got = next(resumed)
    np.testing.assert_array_equal(got["image"], expected["image"])
    np.testing.assert_array_equal(got["label"], expected["label"])
  # A fresh z every epoch; standardised, the draws are N(0, I) around the means.
  assert not np.array_equal(np.sort(batches[0]["image"].ravel()),
                            np.sort(batches[2]["image"].ravel()))
  other = next(data.make_iterator(source, batch_size=100, seed=6))
  assert not np.array_equal(other["image"], batches[0]["image"])


def test_latents_source_refusals(encoded, tmp_path):
  out, _ = encoded
  with pytest.raises(FileNotFoundError, match=r"no latents.json in .*python3 encode.py "
                     r"--autoencoder"):
    data.make_source("latents", path=str(tmp_path))
  with pytest.raises(ValueError, match="a flipped image's latent is not the flipped latent"):
    data.make_iterator(data.make_source("latents", path=str(out)), batch_size=8, seed=0,
                       random_flip=True)


def test_encode_py_writes_the_latents(tiny_autoencoder, encoded, tmp_path):
  out = tmp_path / "latents"
  command = [sys.executable, "encode.py", "--autoencoder", str(tiny_autoencoder), "--out",
             str(out), "--options", '{"split": "test"}', "--batch-size", "64"]
  result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "wrote 297 latents (4, 4, 2)" in result.stdout
  expected, _ = encoded
  np.testing.assert_allclose(np.load(out / data.LATENTS), np.load(expected / data.LATENTS),
                             atol=1e-6)
  record = json.loads((out / data.LATENTS_RECORD).read_text())
  assert record["data"] == {"source": "digits", "options": {"split": "test"}}


# --------------------------------------------------------------------------
# A diffusion model on the latents.
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def latents(encoded):
  """The latents source of the encoded test digits."""
  return data.make_source("latents", path=str(encoded[0]))


def latent_config(tiny_autoencoder, latents_dir, **overrides):
  """The tiny digits U-Net on the latents, conditional, its autoencoder named."""
  return tiny_config("digits", **{"num_steps": 10, "sample_every": 10, "samples__num": 4,
                                  "model__conditional": True, "data__source": "latents",
                                  "data__options": {"path": str(latents_dir)},
                                  "autoencoder__checkpoint": str(tiny_autoencoder),
                                  **overrides})


@pytest.fixture(scope="module")
def latent_run(encoded, tiny_autoencoder, tmp_path_factory):
  """(workdir, Experiment) of a finished 10-step latent run."""
  built, source, _, mesh = trainer.prepare(latent_config(tiny_autoencoder, encoded[0]))
  workdir = tmp_path_factory.mktemp("latent")
  trainer.train(built, source, workdir, mesh, show_progress=False)
  return workdir, built


def pixel_judge(real_images) -> streamed.Judge:
  """A judge of 8x8x1 images by their pixels (the identity as feature network, one class);
  it takes nothing else."""

  def apply(variables, images):
    assert images.shape[1:] == (8, 8, 1), images.shape
    return images.reshape(images.shape[0], -1), jnp.zeros((images.shape[0], 1))

  features = real_images.reshape(len(real_images), -1)
  mu, sigma = metrics.feature_statistics(features)
  return streamed.Judge("inception", apply, {}, mu, sigma, features, "digits pixels",
                        len(features))


def test_latent_samples_are_decoded_in_the_step_and_judged_as_images(latent_run, digits_train):
  workdir, built = latent_run
  assert built.data.shape == (4, 4, 2) and built.data.image_shape == (8, 8, 1)
  record = json.loads((workdir / trainer.RECORD).read_text())
  assert record["data"]["autoencoder"]["fingerprint"] == built.data.autoencoder["fingerprint"]
  assert (workdir / "samples" / "step-10.png").exists()  # Decoded: an image grid.

  step_dir, loaded, params = generate.load(workdir)
  assert loaded.data == built.data  # The checkpoint records the autoencoder.
  plan = generate.plan(loaded, "unipc", 4)  # Deterministic: x_0 follows from x_T alone.
  mesh = sharding.make_mesh({"data": 1}, jax.devices()[:1])
  job = sample_run.Job(20, 8, 0, save_images=20, keep_features=20)
  real = data.model_arrays(digits_train, 200)[0]
  result = sample_run.run(loaded, plan, params, job, mesh, judges={"pixels": pixel_judge(real)},
                          progress=False)
  assert result.images.shape == (20, 8, 8, 1) and result.x_T.shape == (20, 4, 4, 2)
  space, decoder_params = latent.decoder(loaded.data.autoencoder)
  x_0, _ = generate.make_sample_fn(loaded, plan)(params, result.x_T, jax.random.PRNGKey(9),
                                                 result.labels)
  np.testing.assert_allclose(result.images, space.decode(decoder_params, x_0), atol=1e-4)
  # The judge saw those images, clipped: its running mean of the features is theirs.
  quality = result.running["pixels"].quality()
  assert quality["num_samples"] == 20 and np.isfinite(quality["fid"])
  statistics = result.running["pixels"].statistics()
  np.testing.assert_allclose(statistics[0], np.clip(result.images, -1, 1).reshape(20, -1).mean(0),
                             atol=1e-5)


def with_record(source, **changes):
  """The source with its autoencoder record changed."""
  return dataclasses.replace(source, autoencoder={**source.autoencoder, **changes})


@pytest.mark.parametrize("overrides, change, message", [
    ({"data__source": "digits", "data__options": {}}, None,
     "data.source 'digits' holds no latents: encode the images with encode.py"),
    ({"autoencoder__checkpoint": ""}, None, "holds latents of the autoencoder at"),
    ({}, {"fingerprint": "0123456789abcdef"}, "were encoded by the autoencoder at"),
    ({}, {"image_shape": [16, 16, 1]}, "makes latents of shape [8, 8, 2] of images [16, 16, 1]"),
    ({"bpd__every": 5}, None, "bits/dim of a latent model would be in latent space"),
])
def test_a_latent_run_that_disagrees_with_its_autoencoder_is_refused_by_prepare(
    latents, encoded, tiny_autoencoder, monkeypatch, overrides, change, message):
  if change is not None:
    monkeypatch.setitem(data.SOURCES, "latents", lambda path: with_record(latents, **change))
  with pytest.raises(ValueError) as error:
    trainer.prepare(latent_config(tiny_autoencoder, encoded[0], **overrides))
  assert message in str(error.value)


def test_sample_py_judges_an_autoencoders_reconstructions(tiny_autoencoder, tmp_path):
  out = tmp_path / "reconstructions"
  result = subprocess.run(
      [sys.executable, str(ROOT / "sample.py"), "--checkpoint", str(tiny_autoencoder), "--num",
       "24", "--batch-size", "16", "--evaluate", "yes", "--workdir", str(out)], cwd=ROOT,
      capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  saved = np.load(out / "reconstructions.npz")
  held_out = data.model_arrays(data.make_source("digits", split="test"), 24)[0]
  np.testing.assert_array_equal(saved["images"], held_out)  # The test split, in order.
  assert saved["reconstructions"].shape == (24, 8, 8, 1)
  assert 0 < np.abs(saved["reconstructions"] - held_out).mean() < 1  # Reconstructed, roughly.
  quality = json.loads((out / "results.json").read_text())["quality"]
  assert quality["reconstructions (24)"]["num_samples"] == 24
  assert (out / "reconstructions.png").exists()
  assert "the floor of any latent model" in (out / "results.md").read_text()


def test_a_study_sees_a_latent_models_samples_decoded_and_judges_them_as_its_images(latent_run):
  workdir, _ = latent_run
  options = common.Options(
      checkpoint=str(workdir), num=6, batch_size=4, seed=0, evaluate="yes", nfes=(2,),
      samplers=("ddim",), reference_nfe=4, resample=1, steps=1, scales=(1.0,),
      inception_weights=None, sampler="ddim", nfe=2, train_steps=None)
  # Judged as the digits its autoencoder encoded: "latents" have no evaluation classifier.
  _, built, params = common.load(options)
  plan = generate.plan(built, "ddim", 2)
  seen = []
  _, shown = study_samplers.sample_rows(built, params, [plan], options,
                                        lambda images: seen.append(images) or {})
  assert seen[0].shape == (6, 8, 8, 1) and shown[0].shape == (6, 8, 8, 1)
  # The same x_T and sampler keys in the model's space, then decoded.
  key_noise, key_sampler = jax.random.split(jax.random.PRNGKey(options.seed))
  x_T = generate.prior_noise(built, plan, key_noise, options.num)
  x_latent, _ = generate.sample_in_batches(built, plan, params, x_T,
                                           generate.default_labels(built, options.num),
                                           key_sampler, options.batch_size, progress=False)
  assert x_latent.shape == (6, 4, 4, 2)
  space, decoder_params = latent.decoder(built.data.autoencoder)
  np.testing.assert_allclose(seen[0], space.decode(decoder_params, x_latent), atol=1e-4)
