"""Encoding a dataset once with latent diffusion's autoencoder: over the mesh, resumable.

A latent diffusion model trains on the latents of a fixed first stage
(Rombach et al. 2022, sec. 3). The images are encoded once, and what is kept is
each image's posterior q(z | x) = N(mean, diag exp(logvar)), not a sample: every
epoch then draws a fresh z, as LDM's first stage does on the fly, by reading an
array (`jaxdiff.data.latents_source`). The output folder holds

  latents.npy   float32 [N, h, w, 2c]: mean and logvar on the channel axis;
  labels.npy    int32 [N];
  latents.json  what they are, written last: the autoencoder's `latent.record`
                (with the scaling factor the latents are used with), the image
                data encoded, num, shape, stored, scaling_computed, and the
                latents' mean and standard deviation.

The scaling factor, unless given, is LATENT_STD / std(z), and the shift factor
the mean of z (else the autoencoder's own, or 0), over every element of
the encoded set with z ~ q(z | x) (Rombach et al.'s sec. 4.3.2 and app. G
rescale to unit variance; LATENT_STD = 0.5 gives the latents the spread of
images in [-1, 1] that every process here is tuned for, EDM's sigma_data, as
EDM2 does for Stable Diffusion's latents: Karras et al. 2024, their
training/encoders.py, final_std 0.5). By the law of total variance, over the
N h w c elements,

  Var(z) = Var(mean) + E[exp(logvar)],

computed exactly from running float64 sums of mean, mean^2 and exp(logvar):
no sampling.

The dataset is written once over the mesh by `write_once`: in global batches
split over the mesh's batch devices (and processes, each reading its own rows
of the source), the running sums saved with the progress, so that a run killed
at any moment and started again on the same folder with the same settings ends
with bitwise the latents and the scaling factor of an uninterrupted run.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxdiff import data, models
from jaxdiff.train import latent, sharding, write_once

# The standard deviation a computed scaling factor gives the latents: EDM's sigma_data.
LATENT_STD = 0.5


@dataclasses.dataclass(frozen=True)
class Job:
  """What to encode and how.

  Attributes:
    source: the data source's name (jaxdiff.data.SOURCES) and options: 8-bit images.
    options: its options.
    batch_size: images per compiled call over the whole mesh (rounded up to a multiple of
      the mesh's batch devices).
    scaling_factor: of the latents' record; None: computed, LATENT_STD / std(z).
    save_every: batches between saves of the progress (0: only at the end).
  """
  source: str
  options: dict
  batch_size: int = 500
  scaling_factor: float | None = None
  save_every: int = 10

  def __post_init__(self):
    if not isinstance(self.batch_size, int) or self.batch_size < 1:
      raise ValueError(f"--batch-size must be a positive integer, got {self.batch_size!r}")
    if not isinstance(self.save_every, int) or self.save_every < 0:
      raise ValueError(f"--save-every must be an integer >= 0, got {self.save_every!r}")
    if self.scaling_factor is not None and not (math.isfinite(self.scaling_factor)
                                                and self.scaling_factor > 0):
      raise ValueError(f"--scaling-factor must be a positive number, 'auto' or 'config', got "
                       f"{self.scaling_factor}")


def check_source(model, source) -> tuple:
  """The latent shape (h, w, c) of the source's images under the autoencoder.

  Raises:
    ValueError unless the source holds 8-bit images of the autoencoder's channels whose
    height and width its downsampling divides.
  """
  if not source.eight_bit:
    raise ValueError(f"{source.origin} holds points {tuple(source.shape)}, not images; the "
                     "autoencoder encodes 8-bit images")
  if source.shape[-1] != model.in_channels:
    raise ValueError(f"{source.origin} holds images of {source.shape[-1]} channels "
                     f"{tuple(source.shape)}; {model.describe()} encodes {model.in_channels}")
  return model.latent_shape(tuple(source.shape))


def make_step(model, mesh):
  """(params, images [G, H, W, C], labels [G]) -> (posterior [G, h, w, 2c], labels), the
  batch sharded over the mesh's batch axes, the parameters replicated; jitted once."""

  def step(params, images, labels):
    mean, logvar = model.apply({"params": params}, images, method="encode")
    return jnp.concatenate([mean, logvar], axis=-1), labels

  rows = NamedSharding(mesh, P(sharding.BATCH_AXES))
  return jax.jit(step, in_shardings=(sharding.replicated(mesh), rows, rows),
                 out_shardings=(rows, rows), compiler_options=models.compiler_options())


def _images(source, index):
  """Model-space images [len(index), H, W, C] of the records at index."""
  return data.to_model_space(np.stack([source[int(i)]["image"] for i in index]))


def scaling_of(sums: dict) -> tuple[float, float]:
  """(mean, std) of z ~ q(z | x) over every element, from the running sums: Var(z) =
  Var(mean) + E[exp(logvar)] (the law of total variance)."""
  n = sums["count"]
  mean = sums["mean"] / n
  variance = sums["mean_squared"] / n - mean**2 + sums["variance"] / n
  return mean, math.sqrt(variance)


def _add(sums: dict, posterior) -> dict:
  """The running float64 sums with a batch of posteriors [n, h, w, 2c] added."""
  mean, logvar = np.split(posterior.astype(np.float64), 2, axis=-1)
  return {"count": sums["count"] + mean.size, "mean": sums["mean"] + float(np.sum(mean)),
          "mean_squared": sums["mean_squared"] + float(np.sum(mean**2)),
          "variance": sums["variance"] + float(np.sum(np.exp(logvar)))}


def run(model, params, origin: dict, source, job: Job, mesh, out, *,
        progress: bool = True) -> dict:
  """Encodes every record of source with the autoencoder into the folder out (claimed by the
  caller), or continues its saved progress; returns latents.json's record.

  Args:
    model, params, origin: the autoencoder, as `latent.load` gives them.
    source: the images, a source of jaxdiff.data.SOURCES made from job.source and
      job.options.

  Raises:
    ValueError when the source does not fit the autoencoder, or out holds the progress of
    another run (naming what differs).
  """
  latent_shape = check_source(model, source)
  num = len(source)
  size = write_once.global_batch_size(job.batch_size, num, mesh)
  run_record = {"autoencoder": {"checkpoint": origin["checkpoint"], "params": origin["params"],
                                "fingerprint": latent.fingerprint(params)},
                "data": {"source": job.source, "options": job.options}, "num": num,
                "scaling_factor": job.scaling_factor}
  step = make_step(model, mesh)
  # Through the host, as sample_run: each process places its own copy.
  params = jax.device_put(jax.device_get(params), sharding.replicated(mesh))
  rows = NamedSharding(mesh, P(sharding.BATCH_AXES))

  def compute(index):
    images = jax.make_array_from_callback(
        (size, *source.shape), rows, lambda where: _images(source, index[where[0]]))
    labels = jax.make_array_from_callback(
        (size,), rows, lambda where: np.asarray([source[int(i)]["label"] for i in index[where]],
                                                np.int32))
    posterior, labels = step(params, images, labels)
    return {data.LATENTS: posterior, data.LATENT_LABELS: labels}

  columns = {data.LATENTS: (np.float32, (*latent_shape[:2], 2 * latent_shape[2])),
             data.LATENT_LABELS: (np.int32, ())}
  sums = write_once.write(
      out, run_record, columns, num, size, compute,
      state={"count": 0, "mean": 0.0, "mean_squared": 0.0, "variance": 0.0},
      accumulate=lambda sums, rows: _add(sums, rows[data.LATENTS]),
      save_every=job.save_every, progress=progress, desc="encoding")
  latent_mean, latent_std = scaling_of(sums)
  if job.scaling_factor is None:  # Centred, then scaled to std LATENT_STD (EDM2's encoder).
    scaling_factor, shift_factor = LATENT_STD / latent_std, latent_mean
  else:
    scaling_factor, shift_factor = job.scaling_factor, float(model.shift_factor or 0.0)
  record = {"autoencoder": latent.record(model, params, origin, scaling_factor, shift_factor,
                                         source.shape),
            "data": {"source": job.source, "options": job.options}, "num": num,
            "shape": list(latent_shape), "num_classes": int(source.num_classes),
            "stored": data.STORED, "scaling_computed": job.scaling_factor is None,
            "latent_mean": latent_mean, "latent_std": latent_std}
  write_once.finish(out, data.LATENTS_RECORD, record)
  return record
