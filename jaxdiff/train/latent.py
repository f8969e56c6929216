"""Latent diffusion's first stage as the programs use it (Rombach et al. 2022, sec. 3-4).

A latent model is an ordinary diffusion model whose data are the latents of a
KL autoencoder (`models.autoencoder.AutoencoderKL`): an image x is encoded to
the posterior q(z | x) = N(mean, diag exp(logvar)), and the model sees

    x_latent = scaling_factor * (z - shift_factor),    z ~ q(z | x),

with scaling_factor about 1 / std(z) so that the latents have roughly unit
variance, as the noise schedules assume (their sec. 4.3.2 and app. G; Stable
Diffusion's 0.18215). A sample x_latent is decoded by the decoder at
z = x_latent / scaling_factor + shift_factor.

The autoencoder is a jaxdiff checkpoint of a run that trained one
(`Experiment.trains_autoencoder`, any of its parameter sets) or a diffusers
`AutoencoderKL` folder (`weights.load_diffusers`). `record` describes it for
the latents encoded with it and for every checkpoint trained on them (the
`autoencoder` of their `DataSpec`): where it is, which parameters, their
`fingerprint`, the scaling, and the image data it encoded; `decoder` loads it
back from that record and refuses parameters that have changed since.
"""

import dataclasses
import hashlib
import json
import pathlib

import jax
import numpy as np
from flax import traverse_util

from jaxdiff import data, weights
from jaxdiff.train import generate


@dataclasses.dataclass(frozen=True)
class LatentSpace:
  """An autoencoder and the affine map between its latents z and the model's x_latent."""

  model: object  # An AutoencoderKL.
  scaling_factor: float
  shift_factor: float = 0.0

  def encode(self, params, images):
    """Images [B, H, W, C] in [-1, 1] -> the posterior (mean, logvar) [B, h, w, c] of z."""
    return self.model.apply({"params": params}, images, method="encode")

  def to_model(self, z):
    """Latents z -> the diffusion model's x_latent."""
    return self.scaling_factor * (z - self.shift_factor)

  def decode(self, params, x_latent):
    """The diffusion model's x_latent [B, h, w, c] -> images [B, H, W, C] (not clipped)."""
    z = x_latent / self.scaling_factor + self.shift_factor
    return self.model.apply({"params": params}, z, method="decode")


def is_diffusers_folder(path) -> bool:
  """Whether path is a diffusers model folder (a config.json naming its class)."""
  config = pathlib.Path(path) / "config.json"
  return config.is_file() and "_class_name" in json.loads(config.read_text())


def load(path, which: str = "ema"):
  """(AutoencoderKL, params, origin) of an autoencoder: a diffusers AutoencoderKL folder or
  a jaxdiff checkpoint of an autoencoder's run (`generate.load` with `which` of its
  parameters). origin: {"checkpoint": the diffusers folder or the checkpoint's step folder,
  absolute; "params": which ("" for diffusers); "data": the image data it was trained on,
  {"source", "options"} (None for diffusers)}.

  Raises:
    FileNotFoundError where path holds neither; ValueError where it holds another model.
  """
  path = pathlib.Path(path).absolute()
  if is_diffusers_folder(path):
    model, params = weights.load_diffusers(path)
    if not hasattr(model, "latent_shape"):
      raise ValueError(f"{path} holds a diffusers {type(model).__name__}, not an "
                       "AutoencoderKL")
    return model, params, {"checkpoint": str(path), "params": "", "data": None}
  step_dir, experiment, params = generate.load(path, which)
  if not experiment.trains_autoencoder:
    raise ValueError(f"{step_dir} is a checkpoint of a {experiment.model.describe()}, not of "
                     "an autoencoder's run (model.name 'autoencoder_kl')")
  data = experiment.config["data"]
  return experiment.model, params, {"checkpoint": str(pathlib.Path(step_dir).absolute()),
                                    "params": which,
                                    "data": {"source": data["source"],
                                             "options": data["options"]}}


def fingerprint(params) -> str:
  """A hash of the parameters' names, shapes, dtypes and bytes: 16 hex digits."""
  digest = hashlib.sha256()
  for path, value in sorted(traverse_util.flatten_dict(jax.device_get(params), sep="/").items()):
    value = np.ascontiguousarray(value)
    digest.update(f"{path}:{value.dtype}:{value.shape};".encode())
    digest.update(value.tobytes())
  return digest.hexdigest()[:16]


def record(model, params, origin: dict, scaling_factor: float, shift_factor: float,
           image_shape) -> dict:
  """What latents and the checkpoints trained on them store of their autoencoder."""
  return {**origin, "fingerprint": fingerprint(params), "scaling_factor": float(scaling_factor),
          "shift_factor": float(shift_factor),
          "image_shape": [int(n) for n in image_shape],
          "latent_shape": [int(n) for n in model.latent_shape(tuple(image_shape))]}


def decoder(autoencoder: dict):
  """(LatentSpace, params) of a DataSpec's autoencoder record, loaded from where it was.

  Raises:
    ValueError where its parameters are no longer those the latents were made with.
  """
  model, params, _ = load(autoencoder["checkpoint"], autoencoder["params"] or "ema")
  found = fingerprint(params)
  if found != autoencoder["fingerprint"]:
    raise ValueError(f"the autoencoder at {autoencoder['checkpoint']} (params "
                     f"{autoencoder['params'] or 'diffusers'}) has changed since the latents "
                     f"were encoded: fingerprint {found}, recorded {autoencoder['fingerprint']}")
  return LatentSpace(model, autoencoder["scaling_factor"], autoencoder["shift_factor"]), params


def image_data(experiment) -> tuple[str, dict]:
  """(source, options) of the images an experiment's samples are judged against: for a
  latent model the image data its autoencoder encoded (its record's "data"; "" and {} where
  the record names none, as for a diffusers folder); for a model of a teacher's pairs
  (reflow) the data its teacher's samples are judged against (pairs.json's); else the
  run's own data."""
  if experiment.run.data.source == "pairs":
    judged = data.pairs_source(**experiment.run.data.options).record["image_data"]
    return judged["source"], dict(judged["options"])
  record = experiment.data.autoencoder
  if record is None:
    return experiment.run.data.source, dict(experiment.run.data.options)
  if not record.get("data"):
    return "", {}
  return record["data"]["source"], dict(record["data"]["options"])


def check_named(named, data, source: str):
  """Refuses a run whose data and named autoencoder disagree, before anything compiles.

  named: the config's autoencoder section (`experiment.NamedCheckpoint`: checkpoint, ""
    for none, and params); data: the run's DataSpec, whose `autoencoder` is the record of
    the autoencoder that encoded its latents (None: images or points); source: the config's
    data.source, for the messages.

  Raises:
    ValueError naming what disagrees and what would be right: latents without an
    autoencoder named, an autoencoder named beside data that are not latents, latents
    encoded by another autoencoder (the fingerprints differ: both named), an autoencoder
    whose latents have another shape than the data's records. FileNotFoundError where the
    named autoencoder is not there.
  """
  record = data.autoencoder
  if not named.checkpoint:
    if record is not None:
      raise ValueError(f"data.source {source!r} holds latents of the autoencoder at "
                       f"{record['checkpoint']} (params {record['params'] or 'diffusers'}); "
                       "name it: autoencoder.checkpoint = that path (the samples are decoded "
                       "with it)")
    return
  if record is None:
    raise ValueError(f"autoencoder.checkpoint names {named.checkpoint}, but data.source "
                     f"{source!r} holds no latents: encode the images with encode.py and "
                     "train on data.source 'latents' with data.options.path the encoded "
                     "folder, or set autoencoder.checkpoint '' for a model of the data itself")
  model, params, origin = load(named.checkpoint, named.params)
  found = fingerprint(params)
  if found != record["fingerprint"]:
    raise ValueError(f"the latents of data.source {source!r} were encoded by the autoencoder "
                     f"at {record['checkpoint']} (params {record['params'] or 'diffusers'}, "
                     f"fingerprint {record['fingerprint']}); autoencoder.checkpoint names "
                     f"{origin['checkpoint']} (params {origin['params'] or 'diffusers'}, "
                     f"fingerprint {found}), another one: name the one that encoded them, or "
                     "encode the data with this one")
  latent_shape = tuple(model.latent_shape(tuple(record["image_shape"])))
  if latent_shape != tuple(data.shape):
    raise ValueError(f"the autoencoder at {origin['checkpoint']} makes latents of shape "
                     f"{list(latent_shape)} of images {record['image_shape']}; the records of "
                     f"data.source {source!r} have shape {list(data.shape)}")
