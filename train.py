"""Trains a diffusion model.

  python3 train.py --config configs/digits.py --workdir runs/digits
  python3 train.py --config configs/toy2d.py --workdir runs/toy --config.num_steps 500

Everything the config names (data, process, loss, model, optimizer, mesh) is
built and checked before the workdir is claimed; a mistake exits with a
one-line error and nothing written. The workdir (default runs/train-<time>)
then receives train_config.json (the config and the data's shape), the
checkpoints (checkpoints/<step>/), metrics.jsonl and TensorBoard events
(tensorboard/), and pictures of EMA samples (samples/step-<n>.png). Running
the same command again in the same workdir resumes from the latest complete
checkpoint, exactly; a config that differs in more than num_steps and the
cadences is refused, naming the differences. While it runs, the workdir holds
INCOMPLETE (jaxdiff.workdir). Sample a trained model with
`python3 sample.py --checkpoint DIR`.
"""

import json
import pathlib

from absl import app, flags, logging

from jaxdiff import cli, data, workdir
from jaxdiff.train import experiment, loop, sharding

_CONFIG = cli.define_config("configs/digits.py", "Training configuration.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Training folder; default runs/train-<time>. "
                               "A folder of an earlier run with the same config is resumed.")


def build(config):
  """(Experiment, data source, mesh), or SystemExit naming what is wrong."""
  try:
    settings = experiment.run_settings(config.to_dict())
    source = data.make_source(settings.data_source, **settings.data_options)
    built = experiment.Experiment.from_config(config, experiment.DataSpec.of(source))
    mesh = sharding.make_mesh(built.run.mesh)
    sharding.check_batch_size(mesh, built.run.batch_size, built.run.grad_accum)
  except (ValueError, FileNotFoundError, KeyError) as error:
    raise SystemExit(f"invalid training configuration: {error} (nothing was written)") from None
  return built, source, mesh


def earlier_run(path, built):
  """True when `path` holds an earlier run of this config; SystemExit when it holds one
  of another config."""
  record = pathlib.Path(path or "") / loop.RECORD
  if not path or not record.is_file():
    return False
  saved = json.loads(record.read_text())["config"]
  differences = built.differences(saved)
  if differences:
    raise SystemExit(f"{path} holds a training run of another configuration; it differs in: "
                     f"{'; '.join(differences)}. Pass the same config to resume it, or a new "
                     "--workdir (nothing was written)")
  return True


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO.
  built, source, mesh = build(_CONFIG.value)
  resume = earlier_run(_WORKDIR.value, built)
  with workdir.claim(_WORKDIR.value, "train", resume=resume) as out:
    try:
      summary = loop.train(built, source, out, mesh)
    except (loop.ConfigMismatch, FloatingPointError) as error:
      raise SystemExit(str(error)) from None
  if summary.step == summary.start_step:
    print(f"{out} is already trained to step {summary.step} (num_steps); nothing to do. Raise "
          f"--config.num_steps to train further.")
    return
  print(f"trained steps {summary.start_step}..{summary.step} in {summary.seconds:.0f} s, final "
        f"loss {summary.final_loss:.4f}\n"
        f"  checkpoint:  {summary.checkpoint}\n"
        f"  metrics:     {out / 'metrics.jsonl'} (TensorBoard: tensorboard --logdir "
        f"{out / 'tensorboard'})\n"
        f"  samples:     {out / 'samples'}\n"
        f"  sample it:   python3 sample.py --checkpoint {out}")


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
