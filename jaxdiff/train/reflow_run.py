"""A teacher's (noise, sample) pairs written once for reflow: over the mesh, resumable.

Rectified flow's reflow (Liu, Gong & Liu 2022, "Flow Straight and Fast",
sec. 2.2, the k-rectified flow) trains a new flow on the coupling (z, x0) that
the teacher's ODE defines: z ~ N(0, I) at t = 1 and x0 the end at t = 0 of the
probability-flow ODE dx/dt = v(x, t) from it. Solved once here with a
deterministic sampler of the zoo and kept, the pairs are the data of
`step.Reflow` (`jaxdiff.data.pairs_source`). The output folder holds

  noise.npy    float32 [N, ...]: z, a function of (seed, i) alone:
               normal(fold_in(PRNGKey(seed), i));
  samples.npy  float32 [N, ...]: x0, the teacher's sample from z, in model space;
  labels.npy   int32 [N]: the class a conditional teacher was given, i mod K
               (0 for an unconditional one);
  pairs.json   what they are, written last: the teacher (checkpoint, params and
               their fingerprint), the sampler, NFE and grid, seed, num, and the
               teacher's data (shape, classes, whether images; the data its
               samples are judged against).

The teacher is a checkpoint of the process "flow" (sigma(1) = 1, so the ODE
starts at x_T = z). The default sampler is the teacher's own default,
`generate.default_sampler` (UniPC at 20 network calls for a diffusion model):
the pairs' x0 then follow the distribution of the teacher's 20-call samples,
the figure few-step models are compared with, at the cost of 20 calls a pair.
A sampler that draws noise is refused: a pair is the ODE's endpoint.

The writing is `write_once`'s: global batches over the mesh's batch devices
(and processes), progress.json every save_every batches; killed and started
again with the same settings, a run ends bitwise equal to an uninterrupted one.
"""

import dataclasses
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxdiff import data, models, samplers
from jaxdiff.train import generate, latent, sharding, write_once
from jaxdiff.train.experiment import Experiment
from jaxdiff.train.step import Objective


@dataclasses.dataclass(frozen=True)
class Job:
  """What pairs to write and how.

  Attributes:
    num: pairs.
    sampler, nfe: the ODE's sampler and network calls; None: the teacher's default
      (`generate.default_sampler`).
    options: the sampler's options.
    seed: of the noise, z_i = normal(fold_in(PRNGKey(seed), i)).
    batch_size: pairs per compiled call over the whole mesh (rounded up to a multiple of the
      mesh's batch devices).
    save_every: batches between saves of the progress (0: only at the end).
  """

  num: int = 10000
  sampler: str | None = None
  nfe: int | None = None
  options: dict = dataclasses.field(default_factory=dict)
  seed: int = 0
  batch_size: int = 500
  save_every: int = 10

  def __post_init__(self):
    for flag, value, low in (("--num", self.num, 1), ("--batch-size", self.batch_size, 1),
                             ("--save-every", self.save_every, 0)):
      if not isinstance(value, int) or value < low:
        raise ValueError(f"{flag} must be an integer >= {low}, got {value!r}")
    generate.check_seed(self.seed)


def plan(teacher: Experiment, job: Job) -> generate.SamplePlan:
  """The teacher's ODE solve: job's sampler and NFE (default the teacher's) on the default
  grid of its process.

  Raises:
    ValueError where the teacher is not a diffusion model of the process "flow" starting at
    sigma = 1, or the sampler draws noise or does not fit the NFE.
  """
  if not isinstance(teacher.objective, Objective):
    raise ValueError(f"the teacher must be a diffusion model; this checkpoint's objective is "
                     f"{type(teacher.objective).__name__}")
  process = teacher.config["process"]
  if process != "flow":
    raise ValueError(f"reflow straightens the ODE of the process 'flow'; the teacher was "
                     f"trained on {process!r}: train it with process = 'flow' "
                     "(configs/digits_flow.py)")
  default_sampler, default_nfe = generate.default_sampler(teacher)
  sampler = job.sampler or default_sampler
  sample_plan = generate.plan(teacher, sampler, default_nfe if job.nfe is None else job.nfe,
                              options=job.options)
  entry = samplers.get_sampler(sampler)
  if (entry.stochastic(entry.resolve(dict(job.options)))
      and len(sample_plan.grid) - 1 > entry.noiseless_steps):
    raise ValueError(f"the sampler {sampler!r} draws noise; a pair is the endpoint of the "
                     "teacher's ODE: use a deterministic one (e.g. unipc, heun, euler)")
  sigma_start = float(teacher.process.sigma(sample_plan.grid[0]))
  if sigma_start != 1.0:
    raise ValueError(f"the teacher's ODE starts at sigma = {sigma_start:.6g}; the pairs' z is "
                     "the noise at sigma = 1 (t_max = 1 of the process 'flow')")
  return sample_plan


def make_step(teacher: Experiment, sample_plan, key, mesh):
  """(params, index int32 [G]) -> (z, x0 [G, ...], labels [G], info): the noise of each
  record, the teacher's ODE endpoint from it, the labels; rows sharded over the mesh's
  batch axes, the parameters replicated; jitted once."""
  sample_fn = generate.make_sample_fn(teacher, sample_plan)
  num_classes = teacher.data.num_classes

  def step(params, index):
    z = jax.vmap(lambda i: jax.random.normal(jax.random.fold_in(key, i),
                                             teacher.data.shape))(index)  # [G, ...]
    labels = index % num_classes if teacher.conditional else jnp.zeros_like(index)
    x0, info = sample_fn(params, z, None, labels)  # From x_T = sigma(1) z = z.
    return z, x0, labels, info

  rows = NamedSharding(mesh, P(sharding.BATCH_AXES))
  every = sharding.replicated(mesh)
  return jax.jit(step, in_shardings=(every, rows), out_shardings=(rows, rows, rows, every),
                 compiler_options=models.compiler_options())


def run(step_dir, teacher: Experiment, params, which: str, job: Job, mesh, out, *,
        progress: bool = True) -> dict:
  """Writes job.num pairs of the teacher into the folder out (claimed by the caller), or
  continues its saved progress; returns pairs.json's record.

  Args:
    step_dir, teacher, params: the teacher's checkpoint as `generate.load` gives it, with
      `which` of its parameter sets.

  Raises:
    ValueError as `plan`, or when out holds the progress of another run (naming what
    differs).
  """
  sample_plan = plan(teacher, job)
  shape = tuple(teacher.data.shape)
  size = write_once.global_batch_size(job.batch_size, job.num, mesh)
  origin = {"checkpoint": str(pathlib.Path(step_dir).absolute()), "params": which,
            "fingerprint": latent.fingerprint(params)}
  ode = {"sampler": sample_plan.sampler, "nfe": sample_plan.nfe,
         "options": sample_plan.options, "grid": [float(t) for t in sample_plan.grid]}
  run_record = {"teacher": origin, **ode, "seed": job.seed, "num": job.num}
  step = make_step(teacher, sample_plan, jax.random.PRNGKey(job.seed), mesh)
  # Through the host, as sample_run: each process places its own copy.
  params = jax.device_put(jax.device_get(params), sharding.replicated(mesh))
  rows = NamedSharding(mesh, P(sharding.BATCH_AXES))

  def compute(index):
    index = jax.make_array_from_callback((size,), rows,
                                         lambda where: index[where].astype(np.int32))
    z, x0, labels, info = step(params, index)
    samplers.raise_if_nonfinite(jax.device_get(info), sample_plan.grid)
    return {data.PAIRS_NOISE: z, data.PAIRS_SAMPLES: x0, data.PAIRS_LABELS: labels}

  columns = {data.PAIRS_NOISE: (np.float32, shape), data.PAIRS_SAMPLES: (np.float32, shape),
             data.PAIRS_LABELS: (np.int32, ())}
  write_once.write(out, run_record, columns, job.num, size, compute,
                   save_every=job.save_every, progress=progress, desc="pairs")
  image_source, image_options = latent.image_data(teacher)
  record = {**run_record, "plan": sample_plan.describe(), "shape": list(shape),
            "num_classes": teacher.data.num_classes, "conditional": teacher.conditional,
            "eight_bit": teacher.data.eight_bit, "autoencoder": teacher.data.autoencoder,
            "image_data": {"source": image_source, "options": image_options},
            "stored": data.PAIRS_STORED}
  write_once.finish(out, data.PAIRS_RECORD, record)
  return record
