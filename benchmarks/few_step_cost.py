"""The training cost of each few-step generator against its teacher's, on this machine.

  PYTHONPATH=. python3 benchmarks/few_step_cost.py
  PYTHONPATH=. python3 benchmarks/few_step_cost.py --repeats 3 --steps 4 --configs digits_cd

Issue 27's time goal: a one- or two-step model may cost at most 3x the teacher's
own training. Each config's train step (the step train.py compiles, `trainer.step_parts`,
the teacher's parameters passed where its loss calls the teacher) is timed on one fixed batch of
the digits, in blocks of --steps calls that take turns with the teacher's
(configs/digits.py), so that a drift of the machine's load hits both alike. Printed per
config: wall and CPU seconds per step (medians over --repeats rounds), its steps
(config.num_steps), and its cost against the teacher's whole run as the median over
rounds of

  (its seconds per step x its steps) / (the teacher's seconds per step x the teacher's steps),

in wall and in CPU time. What a config's own step does not do is not counted: the
periodic evaluation and pictures (the same in both), and the teacher's training itself.
Progressive distillation runs its config once per round (five rounds from 16 steps to 1).
A reflow's step is flow matching on batches that carry their noise: configs/digits_flow.py's
step stands for it (its pairs come from a data source this benchmark does not write), and
writing the pairs (reflow.py) is timed by running it.
The teacher's network is initialised, not trained: a step's time does not depend on the
values of its parameters.
"""

import argparse
import importlib
import os
import statistics
import sys
import time

import jax
import numpy as np

from jaxdiff import data
from jaxdiff.train import experiment, optim, sharding, trainer

TEACHER = "digits"


def build(config_name: str):
  """(Experiment, the teacher's Experiment where its step calls the teacher, else None) of
  configs/<config_name>.py (a reflow's or consistency tuning's teacher only starts it)."""
  config = importlib.import_module(f"configs.{config_name}").get_config()
  source = data.make_source(config.data.source, **config.data.options)
  spec = experiment.DataSpec.of(source)
  built = experiment.Experiment.from_config(config, spec)
  if not getattr(built.objective, "calls_teacher", False):
    return built, None
  teacher_config = importlib.import_module(f"configs.{TEACHER}").get_config()
  return built, experiment.Experiment.from_config(teacher_config, spec)


def step_call(config_name: str, mesh):
  """(fn, num_steps): fn() runs one train step of the config on a fixed batch."""
  built, teacher_experiment = build(config_name)
  init, state_sharding, train_step = trainer.step_parts(built, mesh, teacher_experiment)
  source = data.make_source(built.run.data.source, **built.run.data.options)
  batch = next(trainer.batches(built, source))
  batches = jax.tree.map(lambda a: np.asarray(a)[None], batch)
  batches = sharding.global_batch(batches, sharding.batch_sharding(mesh))
  extra = ()
  if teacher_experiment is not None:
    teacher_init = teacher_experiment.init_fn(optim.make_optimizer(
        teacher_experiment.optimizer, teacher_experiment.run.num_steps))
    extra = (jax.device_put(teacher_init().params, state_sharding.params),)
  state = [jax.device_put(init(), state_sharding)]

  def fn():
    state[0], metrics = train_step(state[0], batches, *extra)
    return metrics

  return fn, built.run.num_steps


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--configs", default="digits_cd,digits_ct,digits_ect,digits_pd,digits_flow",
                      help="Comma-separated configs/ modules to set against configs/digits.py.")
  parser.add_argument("--repeats", type=int, default=5, help="Timed rounds.")
  parser.add_argument("--steps", type=int, default=5, help="Train steps per timed block.")
  args = parser.parse_args()
  mesh = sharding.make_mesh({"data": 1}, jax.devices()[:1])
  names = [TEACHER, *args.configs.split(",")]
  calls, num_steps = {}, {}
  for name in names:
    start = time.perf_counter()
    calls[name], num_steps[name] = step_call(name, mesh)
    jax.block_until_ready(calls[name]())
    print(f"{name}: built, compiled and one step in {time.perf_counter() - start:.1f} s",
          file=sys.stderr)
  wall, cpu = {n: [] for n in names}, {n: [] for n in names}
  print(f"load average before: {os.getloadavg()[0]:.2f}", file=sys.stderr)
  for _ in range(args.repeats):
    for name in names:
      start, start_cpu = time.perf_counter(), time.process_time()
      for _ in range(args.steps):
        out = calls[name]()
      jax.block_until_ready(out)
      wall[name].append((time.perf_counter() - start) / args.steps)
      cpu[name].append((time.process_time() - start_cpu) / args.steps)
  print(f"load average after: {os.getloadavg()[0]:.2f}; jax {jax.__version__}, "
        f"{os.cpu_count()} CPUs")
  print("| config | s/step (wall) | CPU s/step | steps | run / teacher's run (wall) | (CPU) |")
  print("|---|---|---|---|---|---|")
  for name in names:
    ratios = [statistics.median([t[name][i] * num_steps[name] / (t[TEACHER][i] * num_steps[TEACHER])
                                 for i in range(args.repeats)]) for t in (wall, cpu)]
    print(f"| {name} | {statistics.median(wall[name]):.3f} | {statistics.median(cpu[name]):.3f} "
          f"| {num_steps[name]} | {ratios[0]:.2f} | {ratios[1]:.2f} |")


if __name__ == "__main__":
  main()
