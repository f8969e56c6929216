"""A diffusion model trained on an autoencoder's latents (Rombach et al. 2022): what
trainer.prepare refuses, the samples decoded to images in the sampling step and judged as
images, and sample.py on the autoencoder's own checkpoint (its reconstructions, the floor).

The latents are the tiny_autoencoder's (8x8x1 digits -> 4x4x2), held in memory by
`LatentArrays` and registered as the "latents" source for the module."""

import dataclasses
import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff import data, metrics, streamed
from jaxdiff.train import experiment, generate, latent, sample_run, sharding, trainer

from conftest import ROOT, tiny_config

NUM_LATENTS = 128


@dataclasses.dataclass(frozen=True, eq=False)
class LatentArrays:
  """x_latent [N, h, w, c] in memory with their labels and the autoencoder's record, as the
  latents source promises (shape, eight_bit False, num_classes, autoencoder, origin)."""

  latents: np.ndarray
  labels: np.ndarray
  autoencoder: dict
  num_classes: int = 10
  eight_bit: bool = False
  origin: str = "test latents"

  @property
  def shape(self):
    return self.latents.shape[1:]

  def __len__(self):
    return len(self.latents)

  def __getitem__(self, index):
    return {"image": self.latents[index], "label": self.labels[index]}


@pytest.fixture(scope="module")
def latents(tiny_autoencoder, digits_train):
  """The "latents" source (path ignored): the posterior means of NUM_LATENTS digits, scaled to
  unit standard deviation."""
  model, params, origin = latent.load(tiny_autoencoder)
  images, labels = data.model_arrays(digits_train, NUM_LATENTS)
  mean, _ = jax.jit(lambda p, x: model.apply({"params": p}, x, method="encode"))(params, images)
  scaling = 1 / float(np.std(mean))
  record = latent.record(model, params, origin, scaling, 0.0, images.shape[1:])
  source = LatentArrays(np.asarray(mean) * scaling, labels, record)
  with pytest.MonkeyPatch.context() as patch:
    patch.setitem(data.SOURCES, "latents", lambda path, source=source: source)
    yield source


def latent_config(tiny_autoencoder, **overrides):
  """The tiny digits U-Net on the latents, conditional, its autoencoder named."""
  return tiny_config("digits", **{"num_steps": 10, "sample_every": 10, "samples__num": 4,
                                  "model__conditional": True, "data__source": "latents",
                                  "data__options": {"path": "unused"},
                                  "autoencoder__checkpoint": str(tiny_autoencoder),
                                  **overrides})


@pytest.fixture(scope="module")
def latent_run(latents, tiny_autoencoder, tmp_path_factory):
  """(workdir, Experiment) of a finished 10-step latent run."""
  built, source, _, mesh = trainer.prepare(latent_config(tiny_autoencoder))
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
    latents, tiny_autoencoder, monkeypatch, overrides, change, message):
  if change is not None:
    monkeypatch.setitem(data.SOURCES, "latents", lambda path: with_record(latents, **change))
  with pytest.raises(ValueError) as error:
    trainer.prepare(latent_config(tiny_autoencoder, **overrides))
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
