"""A trained network: its checkpoint loaded, its denoiser, samples by a sampler of the zoo.

`load` rebuilds a checkpoint's Experiment from the config and DataSpec stored
with it and restores its parameters, reading the state once, or reconstructs a
post-hoc EMA at its step from the run's snapshots (`phema`): the one place where
the programs that use a checkpoint (sample.py, bpd.py, study.py) read one.
`check_data` compares data read for a checkpoint with the shape it was
trained on, and `check_sampling` a run's counts with the host's memory.
`denoise_fn` is a trained model's denoiser, the one that every program using a
checkpoint calls (sampling, bits per dimension, the studies): the network
(dropout off) wrapped by the experiment's objective (EDM preconditioning where
trained with it). `make_sample_fn` returns a function (params, x_T, key,
labels) -> (x_0, info) to jit once: that denoiser, classifier-free guidance
(`guidance.guided_denoise_fn`, the null class num_classes) for a conditional
model at w != 1, and the registered sampler on its grid for the NFE (by
default the one fitted to the checkpoint, `fitted_grids`, where there is one, else
for a progressive-distillation student the grid it was distilled on, for a reflow
steps of equal length in t, else `grids.default_for` the process), from
x_T ~ N(0, sigma(grid[0])^2).
"""

import dataclasses
import math
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
from tqdm import tqdm

from jaxdiff import grids, guidance, models, progressive, samplers
from jaxdiff.train import (checkpoint, fitted_grids, optim, phema, sharding,
                           state as train_state, step)
from jaxdiff.train.experiment import DataSpec, Experiment

CONSISTENCY = "consistency"  # The sampler of consistency models (`samplers.consistency`).
# The intermediate noise level s = sigma / alpha of two-step consistency sampling by default:
# iCT's and ECT's 0.821 for data in [-1, 1] (Song & Dhariwal 2023, sec. 5; Geng et al. 2024).
CONSISTENCY_MID_LEVEL = 0.821
# In more steps, the Karras grid's rho (for processes whose default grid is Karras): 30 puts
# the re-noising levels lower than rho = 7 does (at 4 steps s = 7.9, 0.64 and 0.041 against
# 17.5, 2.5 and 0.17), where the digits' consistency models sample better (docs/distillation.md).
CONSISTENCY_RHO = 30.0
# The sampler of a reflow: Euler on the probability-flow ODE, x_s = x_t + (s - t) v (on the
# process "flow", ddim's step is the same one).
REFLOW_SAMPLER = "euler"
SEEDS = 2**32  # Seeds lie in [0, 2^32): jax.random.PRNGKey folds 2^32 + s onto s.


def load(path, which: str = "ema", override=None) -> tuple[pathlib.Path, Experiment, dict]:
  """(step folder, Experiment, parameters) of a checkpoint: a training workdir or its
  checkpoints/ folder (the newest complete step whose state reads and matches its checksums;
  one that does not is skipped with a warning, `checkpoint.read_newest`), or one <step>/
  folder. The Experiment is rebuilt from the config and DataSpec stored with it; the state
  is read once, and the parameters picked from it.

  which: the first EMA ("ema"), an EMA by its decay ("ema:0.999"), the raw optimizer
    iterate ("raw"), or the post-hoc EMA of a relative width ("phema:0.08"): reconstructed
    at the checkpoint's step from the run's snapshots saved up to it (`phema.reconstruct`;
    the checkpoint's own arrays are not read).
  override: config (plain dict) -> the config to build instead (sample.py's --process);
    None: the config as trained.

  Raises:
    FileNotFoundError saying what was looked for, or why no checkpoint there reads;
    ValueError from Experiment.from_config or naming a `which` the checkpoint lacks, a
    sigma_rel its snapshots cannot represent (and the range they can), or a run that kept
    no snapshots: before anything is read or compiled.
  """

  def build(record):
    config = record["config"] if override is None else override(record["config"])
    experiment = Experiment.from_config(config, DataSpec.from_record(record["data"]))
    ema_names = [train_state.ema_name(decay) for decay in experiment.ema_decays]
    kind, _, name = which.partition(":")
    if kind == "phema":
      _check_phema(experiment, name)
    elif which != "raw" and (kind != "ema" or (name and name not in ema_names)):
      raise ValueError(f"params must be 'raw', 'ema', one of "
                       f"{['ema:' + n for n in ema_names]} or 'phema:<sigma_rel>', got "
                       f"{which!r}")
    return experiment

  def restore(step_dir, experiment):
    optimizer = optim.make_optimizer(experiment.optimizer, experiment.run.num_steps)
    state = checkpoint.restore_state(step_dir, jax.eval_shape(experiment.init_fn(optimizer)))
    if which == "raw":
      return state.params
    return state.ema[which.partition(":")[2] or train_state.ema_name(experiment.ema_decays[0])]

  if which.partition(":")[0] == "phema":
    step_dir = checkpoint.find(path)
    experiment = build(checkpoint.read_run(step_dir))
    return step_dir, experiment, _reconstruct(step_dir, experiment, float(which[6:]))
  return checkpoint.read_newest(path, build, restore)


def _check_phema(experiment: Experiment, sigma_rel: str):
  """Refuses "phema:<sigma_rel>" for a run that kept no snapshots, or a sigma_rel that is
  not a number in (0, 12^-1/2)."""
  if not experiment.snapshot_every:
    raise ValueError(f"params 'phema:{sigma_rel}' needs the post-hoc EMA snapshots of a run "
                     f"trained with ema.phema_sigma_rels and ema.snapshot_every > 0; this one "
                     f"kept none (phema_sigma_rels {experiment.phema_sigma_rels}, "
                     f"snapshot_every {experiment.snapshot_every})")
  try:
    phema.sigma_rel_to_gamma(float(sigma_rel))
  except ValueError as error:
    raise ValueError(f"params 'phema:{sigma_rel}': {error}") from None


def _reconstruct(step_dir, experiment: Experiment, sigma_rel: float):
  """The post-hoc EMA of sigma_rel at the checkpoint's step from the snapshots of its
  workdir (<workdir>/phema/), on this process's first device."""
  workdir = pathlib.Path(step_dir).parent.parent
  optimizer = optim.make_optimizer(experiment.optimizer, experiment.run.num_steps)
  abstract = jax.eval_shape(experiment.init_fn(optimizer)).params
  snapshots = phema.saved(workdir, abstract)
  step = int(pathlib.Path(step_dir).name)
  if not any(s.step <= step for s in snapshots):
    raise ValueError(f"params 'phema:{sigma_rel}': no post-hoc EMA snapshot at or before step "
                     f"{step} in {workdir / phema.DIRECTORY}")
  return phema.reconstruct(snapshots, sigma_rel, step)


def check_data(experiment: Experiment, source) -> None:
  """Refuses a data source whose records have another shape than the checkpoint's data.

  Raises:
    ValueError naming both shapes.
  """
  shape = DataSpec.of(source).shape
  if shape != experiment.data.shape:
    raise ValueError(f"{getattr(source, 'origin', 'the data')} has records of shape {shape}; "
                     f"the checkpoint was trained on {experiment.data.shape}")


def check_seed(seed: int) -> None:
  """Raises ValueError naming --seed unless it lies in [0, SEEDS)."""
  if not 0 <= seed < SEEDS:
    raise ValueError(f"--seed must be an integer in [0, 2**32), got {seed}")


def host_memory_bytes() -> int:
  """The memory the host can give without swapping: MemAvailable of /proc/meminfo, where
  there is one, else its free physical pages."""
  try:
    with open("/proc/meminfo", encoding="ascii") as meminfo:
      for line in meminfo:
        if line.startswith("MemAvailable:"):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def check_sampling(experiment: Experiment, num: int, batch_size: int, seed: int, *,
                   available: int | None = None) -> None:
  """Refuses a sampling run's counts before anything is written: num samples (at least 1, x_T
  and the samples, float32 on the host, within the available memory), batch_size samples per
  call (at least 1) and the seed (`check_seed`).

  available: bytes the host can give; default `host_memory_bytes()`.

  Raises:
    ValueError naming the flag (--num, --batch-size, --seed, as sample.py and study.py call
    them) and what would be right.
  """
  if num < 1:
    raise ValueError(f"--num must be a positive integer, got {num}")
  if batch_size < 1:
    raise ValueError(f"--batch-size must be a positive integer, got {batch_size}")
  check_seed(seed)
  per_sample = 2 * 4 * math.prod(experiment.data.shape)  # x_T and its sample, float32.
  available = host_memory_bytes() if available is None else available
  if num * per_sample > available:
    raise ValueError(f"--num {num} needs {num * per_sample / 2**30:.3g} GiB on the host for "
                     f"x_T and the samples; {available / 2**30:.3g} GiB are available: at most "
                     f"{available // per_sample} samples fit")


@dataclasses.dataclass(frozen=True)
class SamplePlan:
  """A sampler run on a trained model: what it runs and on which grid."""

  sampler: str
  nfe: int
  grid_name: str
  grid_options: dict
  grid: jax.Array  # [N + 1]
  guidance_scale: float
  options: dict

  def grid_option_words(self) -> list[str]:
    """The grid's options as "name=value" (numbers to 4 significant digits)."""
    return [f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
            for k, v in self.grid_options.items()]

  def describe(self) -> str:
    grid_options = "".join(f", {word}" for word in self.grid_option_words())
    words = [f"{self.sampler}", f"NFE {self.nfe}", f"{self.grid_name} grid ({len(self.grid) - 1} "
             f"steps{grid_options})", *(f"{k}={v}" for k, v in self.options.items())]
    if self.guidance_scale != 1.0:
      words.append(f"guidance w = {self.guidance_scale:g}")
    return ", ".join(words)


def plan(experiment: Experiment, sampler: str, nfe: int, *, grid: str | None = None,
         grid_options=None, guidance_scale: float = 1.0, options=None,
         step_dir=None) -> SamplePlan:
  """Checks the sampler, its options and the NFE, and builds the grid: the named one
  with grid_options; else the grid fitted for this sampler, options and NFE where step_dir
  (the checkpoint's) holds one (`fitted_grids`, grid name "fitted <file name>"); else the
  grid a progressive-distillation student was distilled on (`progressive.grid_spec`); else
  `grids.default_for` the process, for a reflow cut into steps of equal length in t, for
  consistency sampling ending at t_min, through s = CONSISTENCY_MID_LEVEL in two steps and,
  on a Karras grid, with rho = CONSISTENCY_RHO in more.

  Raises:
    ValueError naming the offending choice, or the fitted grid file that does not fit.
  """
  options = dict(options or {})
  samplers.check_options(sampler, options)
  _check_consistency(experiment, sampler, nfe)
  fitted = None if step_dir is None else fitted_grids.path_for(step_dir, sampler, options, nfe)
  use_fitted = grid is None and fitted is not None and fitted.exists()
  # A reflow's straight flow: by default N steps of equal length in t, ending at 0.
  even = grid is None and is_reflow(experiment)
  consistency_default = grid is None and not use_fitted and sampler == CONSISTENCY
  if grid is None and is_progressive_model(experiment):  # The grid it was distilled on.
    grid, grid_options = progressive.grid_spec(experiment.process, experiment.objective.grid,
                                               experiment.objective.grid_options)
  elif grid is None:
    grid, grid_options = grids.default_for(experiment.process)
    if sampler == CONSISTENCY:  # Its last call is at t_min: a grid to 0 would waste one.
      grid_options = {**grid_options, "end": "t_min"}
      if grid == "karras":
        grid_options["rho"] = CONSISTENCY_RHO
  grid_options = dict(grid_options or {})
  # Where the grid ends (sigma = 0 or not, e.g. end="t_min") does not depend on N; a fitted
  # grid ends where the default grid it was fitted against does.
  end = float(grids.make_grid(experiment.process, grid, 1, **grid_options)[-1])
  ends_at_zero = samplers.base.ends_at_zero(experiment.process, end)
  num_steps = samplers.num_steps_for(sampler, nfe, options, ends_at_zero=ends_at_zero)
  if even and num_steps > 1:  # The uniform grid's N points from t_max down to t_max / N.
    grid_options = {**grid_options, "t_min": float(experiment.process.t_max) / num_steps}
  if use_fitted:
    grid, grid_options = f"fitted {fitted.name}", {}
    times = fitted_grids.load(fitted, experiment.process, sampler, options, nfe, num_steps)
  else:
    times = grids.make_grid(experiment.process, grid, num_steps, **grid_options)
  if consistency_default and num_steps == 2:
    grid, grid_options = "consistency two-step", {"s_mid": CONSISTENCY_MID_LEVEL}
    t_mid = experiment.process.t_from_noise_to_signal(jnp.float32(CONSISTENCY_MID_LEVEL))
    times = jnp.asarray(times).at[1].set(t_mid)
  times = samplers.check_grid(times, experiment.process, num_steps)
  if not math.isfinite(guidance_scale):
    raise ValueError(f"guidance w must be a finite number, got {guidance_scale}")
  if guidance_scale != 1.0 and not experiment.conditional:
    raise ValueError(f"guidance w = {guidance_scale} needs a class-conditional model; this one "
                     "was trained without labels")
  return SamplePlan(sampler, nfe, grid, grid_options, times, float(guidance_scale), options)


def is_consistency_model(experiment: Experiment) -> bool:
  """Whether the model is a consistency function (`step.ConsistencyModel`)."""
  return isinstance(experiment.objective, step.ConsistencyModel)


def is_reflow(experiment: Experiment) -> bool:
  """Whether the model is a rectified flow trained on a teacher's pairs (`step.Reflow`)."""
  return isinstance(experiment.objective, step.Reflow)


def is_progressive_model(experiment: Experiment) -> bool:
  """Whether the model is a progressive-distillation student (`step.ProgressiveDistillation`)."""
  return isinstance(experiment.objective, step.ProgressiveDistillation)


def few_step_kind(experiment: Experiment) -> str | None:
  """What few-step generator the model is, in words ("a consistency model", ...), for the
  messages that name the sampler chosen for it; None for a diffusion model."""
  if is_consistency_model(experiment):
    return "a consistency model"
  if is_progressive_model(experiment):
    return (f"a progressive-distillation model of {experiment.objective.student_steps} DDIM "
            "steps, on the grid it was distilled on")
  if is_reflow(experiment):
    return f"a reflow (loss.times {experiment.objective.times!r}), Euler on its straightened flow"
  return None


def default_sampler(experiment: Experiment) -> tuple[str, int]:
  """(sampler, NFE) where none is asked for: one-step consistency sampling for a consistency
  model; DDIM at the student's steps for a progressive-distillation model (on the grid it
  was distilled on, `plan`); Euler on the flow ODE for a reflow (Liu et al. 2022, sec. 2.3),
  in one call where distilled to one step (loss.times "one", trained at t = 1 alone) and in
  two otherwise; UniPC at 20 network calls for a diffusion model."""
  if is_consistency_model(experiment):
    return CONSISTENCY, 1
  if is_progressive_model(experiment):
    return "ddim", experiment.objective.student_steps
  if is_reflow(experiment):
    return REFLOW_SAMPLER, 1 if experiment.objective.times == "one" else 2
  return "unipc", 20


def _check_consistency(experiment: Experiment, sampler: str, nfe: int):
  """Refuses the consistency sampler on a diffusion model, or for more steps than the
  consistency model has noise levels."""
  if sampler != CONSISTENCY:
    return
  if not is_consistency_model(experiment):
    raise ValueError("the consistency sampler needs a consistency model (loss.kind "
                     "'consistency_training', 'consistency_distillation' or "
                     "'consistency_tuning'); this checkpoint is "
                     "a diffusion model: use another sampler (e.g. unipc)")
  levels = experiment.objective.max_scales
  if isinstance(nfe, int) and nfe > levels:
    raise ValueError(f"consistency sampling with nfe={nfe} steps needs as many noise levels, "
                     f"but this consistency model was trained on {levels}: ask for at most "
                     f"{levels}")


def denoise_fn(experiment: Experiment, params):
  """(x_t [B, ...], t [B], cond) -> the trained model's prediction [B, ...] of type
  experiment.objective.prediction: the network (`models.network_fn`, dropout off) inside
  the objective's preconditioning (EDM's where trained with it)."""
  return experiment.objective.denoise_fn(models.network_fn(experiment.model, params))


def make_sample_fn(experiment: Experiment, sample_plan: SamplePlan, guide=None):
  """(params, x_T [B, ...], key, labels [B] or None) -> (x_0 [B, ...], info).

  guide: (denoise_fn) -> a denoise_fn that takes the labels as its cond, wrapped around the
    model last (classifier guidance of an unconditional model,
    `classifier_guidance.classifier_guided_denoise_fn`); None: none.
  """
  sampler = samplers.get_sampler(sample_plan.sampler)
  null_class = experiment.data.num_classes

  def sample(params, x_T, key, labels):
    denoise = denoise_fn(experiment, params)
    if experiment.conditional and sample_plan.guidance_scale != 1.0:
      denoise = guidance.guided_denoise_fn(denoise, sample_plan.guidance_scale, null_class)
    if guide is not None:
      denoise = guide(denoise)
    return sampler(denoise, experiment.process, x_T, key, sample_plan.grid,
                   prediction=experiment.objective.prediction,
                   cond=labels if experiment.conditional or guide is not None else None,
                   **sample_plan.options)

  return sample


def make_decoded_sample_fn(experiment: Experiment, sample_plan: SamplePlan, space=None,
                           guide=None):
  """(params, decoder params, x_T, key, labels) -> (x_0, info): `make_sample_fn`'s samples,
  decoded to images by space (a latent model's `latent.LatentSpace`; None: not decoded)
  in the same call, the decoder's params an argument rather than constants of the program."""
  sample_fn = make_sample_fn(experiment, sample_plan, guide)

  def sample(params, decoder_params, x_T, key, labels):
    x_0, info = sample_fn(params, x_T, key, labels)
    return (x_0 if space is None else space.decode(decoder_params, x_0)), info

  return sample


def prior_noise(experiment: Experiment, sample_plan: SamplePlan, key, num: int):
  """x_T [num, *data shape] ~ N(0, sigma(t)^2 I) at the plan's first time t."""
  sigma = experiment.process.sigma(sample_plan.grid[0])
  return sigma * jax.random.normal(key, (num, *experiment.data.shape))


def default_labels(experiment: Experiment, num: int):
  """0, 1, ..., num_classes - 1, 0, 1, ... for a conditional model; None otherwise."""
  if not experiment.conditional:
    return None
  return jnp.arange(num, dtype=jnp.int32) % experiment.data.num_classes


def sample_in_batches(experiment: Experiment, sample_plan: SamplePlan, params, x_T, labels, key,
                      batch_size: int, *, mesh=None, guide=None, decoder=None,
                      progress: bool = True):
  """All of x_T [num, ...] sampled in calls of batch_size (one compilation; the last
  batch padded), chunk i with the sampler key fold_in(key, i); guide as for make_sample_fn.
  decoder: (latent.LatentSpace, its params) of a latent model (`latent.decoder`), whose
  samples are then decoded to images in the same call; None keeps the model's own space.

  With a mesh, each call's rows are split over its batch axes (batch_size rounded
  up to a multiple of their devices) and the parameters replicated: the samples are
  those of one device at the same batch_size, up to the order of float32 sums (a
  stochastic sampler's noise depends on batch_size, not on the devices).

  Returns:
    (samples float32 numpy [num, ...], decoded where a decoder is given; NFE per sample).

  Raises:
    FloatingPointError naming the step where a batch turned NaN/inf.
  """
  num = x_T.shape[0]
  batch_size = min(batch_size, num)
  space, decoder_params = decoder or (None, None)
  shardings = {}
  if mesh is not None:
    devices = sharding.batch_devices(mesh)
    batch_size = -(-batch_size // devices) * devices
    rows = NamedSharding(mesh, P(sharding.BATCH_AXES))
    every = sharding.replicated(mesh)
    shardings = {"in_shardings": (every, every, rows, every, None if labels is None else rows),
                 "out_shardings": (rows, every)}
    params, decoder_params = jax.device_put((params, decoder_params), every)
  sample = jax.jit(make_decoded_sample_fn(experiment, sample_plan, space, guide),
                   compiler_options=models.compiler_options(), **shardings)
  pad = -num % batch_size
  x_T = jnp.concatenate([x_T, jnp.zeros((pad, *x_T.shape[1:]), x_T.dtype)])
  if labels is not None:
    labels = jnp.concatenate([labels, jnp.zeros((pad,), labels.dtype)])
  out, nfe = [], 0
  for i in tqdm(range(0, num, batch_size), desc="sampling", unit="batch", disable=not progress):
    x_0, info = sample(params, decoder_params, x_T[i:i + batch_size],
                       jax.random.fold_in(key, i // batch_size),
                       None if labels is None else labels[i:i + batch_size])
    samplers.raise_if_nonfinite(info, sample_plan.grid)
    out.append(np.asarray(x_0))
    nfe = int(info["nfe"])
  return np.concatenate(out)[:num], nfe
