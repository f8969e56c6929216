"""Latents encoded once (encode.py, jaxdiff.train.encode_run) and read back as a data source
(jaxdiff.data.latents_source): the posteriors and labels of every image, the scaling factor by
the law of total variance, bitwise resumption, and the source's draws of z ~ q(z | x)."""

import json
import subprocess
import sys

import jax
import numpy as np
import pytest

from jaxdiff import data
from jaxdiff.train import encode_run, latent, sharding

from conftest import ROOT

# The digits' 297 test images in 5 batches of 64 (the last one padded), progress every 2.
JOB = encode_run.Job("digits", {"split": "test"}, batch_size=64, save_every=2)


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
  assert not (out / encode_run.PROGRESS).exists()


def test_an_interrupted_encoding_continues_to_bitwise_the_uninterrupted_one(
    autoencoder, encoded, tmp_path, monkeypatch):
  source = data.make_source(JOB.source, **JOB.options)
  mesh = sharding.make_mesh({"data": -1})
  save = encode_run._save_progress

  def killed_after_two_batches(out, run_record, done, *rest):
    save(out, run_record, done, *rest)
    if done == 2:
      raise KeyboardInterrupt

  monkeypatch.setattr(encode_run, "_save_progress", killed_after_two_batches)
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
