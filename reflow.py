"""Writes a flow teacher's (noise, sample) pairs once: the data of rectified flow's reflow.

  python reflow.py --teacher runs/digits-flow --out runs/digits-pairs     # 10000 pairs, UniPC 20
  python reflow.py --teacher runs/digits-flow --out runs/pairs-rk4 --sampler rk4 --nfe 40
  python reflow.py --teacher runs/digits-reflow --out runs/digits-pairs-2 # a 2-rectified flow's

--teacher: a jaxdiff workdir (or checkpoint folder) of a diffusion model trained on
the process "flow" (configs/digits_flow.py; or a reflow of one, whose pairs
train the next rectified flow or its distillation to one step); --params which of
its parameter sets. Each pair is noise z_i ~ N(0, I), a function of (--seed, i)
alone, and the endpoint x0 of the teacher's probability-flow ODE from it, solved
by --sampler at --nfe network calls (default: the teacher's default sampler,
UniPC at 20 calls, whose samples are the ones few-step models are compared
with; a sampler that draws noise is refused). A conditional teacher is given
the class i mod K.

--out receives noise.npy and samples.npy (float32 [N, ...], x0 in model space),
labels.npy and, last, pairs.json (the teacher's checkpoint, parameters and their
fingerprint, the sampler, NFE, grid, seed and num: `jaxdiff.train.reflow_run`); a
training config reads them with data.source "pairs", data.options {"path": OUT}
and loss.kind "reflow" with teacher.checkpoint the same teacher
(configs/digits_reflow.py).

The batch is split over every device of every process; the run saves its
progress every --save-every batches: killed, the same command continues it
(and ends with bitwise the pairs of an uninterrupted run); a folder that holds
another run, or finished pairs, is refused. Several processes run the same
command with --coordinator, --num-processes and --process-id and an --out they
all see; process 0 writes.
"""

import pathlib

from absl import app, flags, logging

from jaxdiff import cli, processes, workdir
from jaxdiff.train import generate, reflow_run, sharding, write_once

_TEACHER = flags.DEFINE_string("teacher", None, "The teacher: a jaxdiff workdir or checkpoint "
                               "of a diffusion model trained on the process 'flow'.")
_PARAMS = flags.DEFINE_string("params", "ema", "Which of its parameters: 'ema' (the first "
                              "EMA), 'ema:<decay>' or 'raw'.")
_OUT = flags.DEFINE_string("out", None, "The output folder (new or empty; or an unfinished "
                           "run of this command, which it continues).")
_NUM = flags.DEFINE_integer("num", 10000, "Number of pairs.")
_SAMPLER = flags.DEFINE_string("sampler", None, "A deterministic sampler of the zoo; default: "
                               "the teacher's default (unipc).")
_NFE = flags.DEFINE_integer("nfe", None, "Network calls of the ODE solve; default: the "
                            "teacher's default (20).")
_OPTIONS = flags.DEFINE_string("options", "{}", "Sampler options as JSON, e.g. "
                               "'{\"order\": 3}'.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the noise z.")
_BATCH = flags.DEFINE_integer("batch-size", 500, "Pairs per compiled call over every device "
                              "(rounded up to a multiple of the devices).")
_SAVE_EVERY = flags.DEFINE_integer("save-every", 10, "Save the progress every this many "
                                   "batches (and at the end).")


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # Orbax logs every restore at INFO.
  if not _TEACHER.value or not _OUT.value:
    raise SystemExit("reflow.py needs --teacher PATH (a diffusion model trained on the process "
                     "'flow') and --out DIR (nothing was run)")
  processes.start()
  try:
    job = reflow_run.Job(_NUM.value, _SAMPLER.value, _NFE.value, cli.json_object(_OPTIONS),
                         _SEED.value, _BATCH.value, _SAVE_EVERY.value)
    step_dir, teacher, params = generate.load(_TEACHER.value, _PARAMS.value)
    reflow_run.plan(teacher, job)
  except (ValueError, FileNotFoundError) as error:
    raise SystemExit(f"cannot write pairs: {error} (nothing was written)") from None
  mesh = sharding.make_mesh({"data": -1})
  out = pathlib.Path(_OUT.value)
  resume = (out / workdir.MARKER).is_file() and (out / write_once.PROGRESS).is_file()
  with processes.claimed_workdir(out, "pairs", resume) as out:
    try:
      record = reflow_run.run(step_dir, teacher, params, _PARAMS.value, job, mesh, out)
    except ValueError as error:
      raise SystemExit(f"cannot write pairs: {error}") from None
  print(f"wrote {record['num']} pairs {tuple(record['shape'])} of the teacher {step_dir} "
        f"({record['plan']}) to {out}; reflow on them with --config configs/digits_reflow.py "
        f"--config.data.options.path {out} --config.teacher.checkpoint {_TEACHER.value}")


if __name__ == "__main__":
  app.run(cli.exit_on_interrupt(main), flags_parser=cli.parse_flags)
