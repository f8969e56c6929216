"""Trains a diffusion model.

  python3 train.py --config configs/digits.py --workdir runs/digits
  python3 train.py --config configs/toy2d.py --workdir runs/toy --config.num_steps 500

Everything the config names (data, process, loss, model, optimizer, mesh) is
built and checked before the workdir is claimed (`trainer.prepare`: every range
and seed, the batch against the mesh and the data, the network's shapes on the
data, the sampler of the pictures); a mistake exits with a one-line error and
nothing written. The workdir (default runs/train-<time>)
then receives train_config.json (the config and the data's shape), the
checkpoints (checkpoints/<step>/), metrics.jsonl and TensorBoard events
(tensorboard/; with --config.bpd.every N also held-out bits/dim, with
--config.eval.every N the samples' Frechet distance, and best.json naming the
best checkpoint), and pictures of EMA samples (samples/step-<n>.png). Running
the same command again in the same workdir resumes from the latest complete
checkpoint, exactly; a config that differs in more than num_steps and the
cadences is refused, naming the differences. While it runs, the workdir holds
INCOMPLETE (jaxdiff.workdir). Sample a trained model with
`python3 sample.py --checkpoint DIR`.

Several processes (one per host, or several on one machine) run the same
command with --coordinator, --num-processes and --process-id (or the
JAX_COORDINATOR_ADDRESS environment variable; --distributed alone detects TPU
pods, SLURM and Open MPI), and a --workdir on a filesystem they share: the
mesh spans every process's devices, each process reads its own shard of the
data, process 0 claims the workdir and writes logs and pictures, and Orbax
writes checkpoints from all of them.
"""

import json
import pathlib

import jax
from absl import app, flags, logging

from jaxdiff import cli, processes
from jaxdiff.train import checkpoint, host_memory, periodic_eval, trainer

_CONFIG = cli.define_config("configs/digits.py", "Training configuration.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Training folder; default runs/train-<time>. "
                               "A folder of an earlier run with the same config is resumed.")
_PROGRESS_SECONDS = flags.DEFINE_float(
    "progress-seconds", 30.0, "Where standard error is not a terminal (a batch job's log), "
    "write a progress line (step, loss, steps/s, ETA) every this many seconds instead of a bar.",
    lower_bound=0.0)


def build(config):
  """trainer.prepare's (Experiment, data source, held-out source or None, mesh) and the judges
  of the periodic sample quality (None where eval.every is 0; their reference statistics
  computed or loaded here, before the workdir is claimed), or SystemExit naming what is wrong
  (a TypeError: a config value of the wrong type)."""
  try:
    built, source, held_out, mesh = trainer.prepare(config)
    log = print if jax.process_index() == 0 else lambda line: None
    judges = periodic_eval.judges(built, log=log) if built.run.eval.every else None
    return built, source, held_out, mesh, judges
  except (ValueError, TypeError, FileNotFoundError, KeyError) as error:
    raise SystemExit(f"invalid training configuration: {error} (nothing was written)") from None


def earlier_run(path, built):
  """True when `path` holds an earlier run of this config; SystemExit when it holds one
  of another config."""
  record = pathlib.Path(path or "") / trainer.RECORD
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
  processes.start()
  host_memory.keep_cpu_temporaries()  # Before anything starts the backends.
  built, source, held_out, mesh, judges = build(_CONFIG.value)
  resume = earlier_run(_WORKDIR.value, built)
  with processes.claimed_workdir(_WORKDIR.value, "train", resume) as out:
    try:
      summary = trainer.train(built, source, out, mesh, held_out=held_out, judges=judges,
                              progress_seconds=_PROGRESS_SECONDS.value)
    except (trainer.ConfigMismatch, FloatingPointError, checkpoint.WriteError) as error:
      raise SystemExit(str(error)) from None
  if jax.process_index() != 0:
    return
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
  app.run(cli.exit_on_interrupt(main), flags_parser=cli.parse_flags)
