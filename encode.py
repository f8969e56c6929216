"""Encodes a dataset once with latent diffusion's autoencoder (the data of a latent model).

  python encode.py --autoencoder runs/fm-ae --out runs/fm-latents     # its own training data
  python encode.py --autoencoder runs/fm-ae --out runs/fm-test --options '{"split": "test"}'
  python encode.py --autoencoder sd-vae/ --source folder --options '{"path": "faces"}' \
      --out runs/faces-latents                                        # a diffusers folder

--autoencoder: a jaxdiff workdir (or checkpoint folder) of an autoencoder's run
(model.name "autoencoder_kl"; --params which of its parameter sets) or a diffusers
AutoencoderKL folder (config.json and safetensors). The images: by default the
data the autoencoder was trained on (its run's data.source and data.options);
--source names another source of jaxdiff.data.SOURCES, --options its options
(alone: changes to the autoencoder's, e.g. another split). A diffusers
autoencoder has no training data: pass both.

--out receives latents.npy (the posterior mean and log-variance of every image,
float32 [N, h, w, 2c]), labels.npy and, last, latents.json (what they are:
the autoencoder, its fingerprint and the scaling factor, the data); a training
config reads them with data.source "latents", data.options {"path": OUT}. The
scaling factor: --scaling-factor auto centres z on its mean (the shift factor) and
scales it to std 0.5 over the whole set
(`jaxdiff.train.encode_run`), config takes the diffusers config's (the default
for a diffusers folder; auto for a jaxdiff one), a number is used as given.

The batch is split over every device of every process; the run saves its
progress every --save-every batches: killed, the same command continues it
(and ends with bitwise the latents of an uninterrupted run); a folder that
holds another run, or finished latents, is refused. Several processes run the
same command with --coordinator, --num-processes and --process-id and an --out
they all see; process 0 writes.
"""

import pathlib

from absl import app, flags, logging

from jaxdiff import cli, data, processes, workdir
from jaxdiff.train import encode_run, latent, sharding, write_once

_AUTOENCODER = flags.DEFINE_string("autoencoder", None, "The autoencoder: a jaxdiff workdir or "
                                   "checkpoint of an autoencoder's run, or a diffusers "
                                   "AutoencoderKL folder.")
_PARAMS = flags.DEFINE_string("params", "ema", "Of a jaxdiff checkpoint: 'ema' (the first "
                              "EMA), 'ema:<decay>' or 'raw'.")
_OUT = flags.DEFINE_string("out", None, "The output folder (new or empty; or an unfinished "
                           "run of this command, which it continues).")
_SOURCE = flags.DEFINE_string("source", None, "A data source of jaxdiff.data.SOURCES; "
                              "default: the autoencoder's training data.")
_OPTIONS = flags.DEFINE_string("options", None, "The source's options as JSON; with no "
                               "--source, changes to the autoencoder's training data's, e.g. "
                               "'{\"split\": \"test\"}'.")
_BATCH = flags.DEFINE_integer("batch-size", 500, "Images per compiled call over every device "
                              "(rounded up to a multiple of the devices).")
_SCALING = flags.DEFINE_string("scaling-factor", None, "auto (0.5 / std of the latents, EDM's sigma_data), config "
                               "(the diffusers config's) or a number; default: config for a "
                               "diffusers folder, auto otherwise.")
_SAVE_EVERY = flags.DEFINE_integer("save-every", 10, "Save the progress every this many "
                                   "batches (and at the end).")


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # Orbax logs every restore at INFO.
  if not _AUTOENCODER.value or not _OUT.value:
    raise SystemExit("encode.py needs --autoencoder PATH (an autoencoder's run or a diffusers "
                     "AutoencoderKL folder) and --out DIR (nothing was run)")
  processes.start()
  try:
    model, params, origin = latent.load(_AUTOENCODER.value, _PARAMS.value)
    job = encode_run.Job(*data_settings(origin), _BATCH.value, scaling_factor(model, origin),
                         _SAVE_EVERY.value)
    source = data.make_source(job.source, **job.options)
    encode_run.check_source(model, source)
  except (ValueError, FileNotFoundError) as error:
    raise SystemExit(f"cannot encode: {error} (nothing was written)") from None
  mesh = sharding.make_mesh({"data": -1})
  out = pathlib.Path(_OUT.value)
  resume = (out / workdir.MARKER).is_file() and (out / write_once.PROGRESS).is_file()
  with processes.claimed_workdir(out, "latents", resume) as out:
    try:
      record = encode_run.run(model, params, origin, source, job, mesh, out)
    except ValueError as error:
      raise SystemExit(f"cannot encode: {error}") from None
  print(f"wrote {record['num']} latents {tuple(record['shape'])} of {source.origin} to {out}: "
        f"std {record['latent_std']:.4g}, scaling factor "
        f"{record['autoencoder']['scaling_factor']:.6g} "
        f"({'computed' if record['scaling_computed'] else 'given'}); train on them with "
        f"--config.data.source latents --config.data.options.path {out}")


def data_settings(origin) -> tuple[str, dict]:
  """(source, options) of the images: the flags over the autoencoder's training data."""
  options = None if _OPTIONS.value is None else cli.json_object(_OPTIONS)
  if _SOURCE.value is not None:
    return _SOURCE.value, options or {}
  if origin["data"] is None:
    raise ValueError(f"the diffusers autoencoder {origin['checkpoint']} has no training data "
                     "to encode: pass --source and --options, e.g. --source folder --options "
                     "'{\"path\": \"images\"}'")
  return origin["data"]["source"], {**origin["data"]["options"], **(options or {})}


def scaling_factor(model, origin) -> float | None:
  """--scaling-factor as a number, or None: computed from the latents."""
  value = _SCALING.value or ("config" if origin["data"] is None else "auto")
  if value == "auto":
    return None
  if value == "config":
    return float(model.scaling_factor)
  try:
    return float(value)
  except ValueError:
    raise ValueError(f"--scaling-factor must be auto, config or a positive number, got "
                     f"{value!r}") from None


if __name__ == "__main__":
  app.run(cli.exit_on_interrupt(main), flags_parser=cli.parse_flags)
