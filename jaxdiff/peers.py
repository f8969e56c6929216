"""diffusers' PyTorch schedulers as peers in the NFE benchmark, on the same problem.

The peers run a discrete T-step DDPM (`schedules.DiscreteDDPM`): the scheduler is
built with trained_betas = the process's betas, so alphas_cumprod[n] is our
alpha(t)^2 at t = (n + 1) / T (diffusers' index n is Ho et al.'s step n + 1). The
model is the oracle's exact denoiser, called through numpy from torch at that
t, returning eps, v or x0 per the scheduler's prediction_type. Each peer starts
from the same x_T (times scheduler.init_noise_sigma, since x_T ~ N(0, ~1) and
the Euler-type schedulers integrate x / alpha), honours scale_model_input,
counts its model calls, and records where it ends: the noise-to-signal ratio
sigma / alpha of its last step (0 for final_sigmas_type "zero" and
set_alpha_to_one; sqrt(beta_1 / (1 - beta_1)) for "sigma_min" and
alphas_cumprod[0]).

Schedulers: DDIM (Song et al. 2021), DPM-Solver(++) multistep and singlestep
(Lu et al. 2022a, 2022b), UniPC (Zhao et al. 2023), Euler and Heun in the EDM
formulation (Karras et al. 2022, Alg. 1-2), DEIS (Zhang & Chen 2023) and PNDM
(Liu et al. 2022). torch and diffusers are imported lazily, only here.
"""

import functools
import inspect
import sys
import time
import types
from importlib import metadata

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.benchmark.problems import Problem
from jaxdiff.benchmark.runs import Entry, UnreachableNFE

SCHEDULERS = ("DDIMScheduler", "DPMSolverMultistepScheduler", "DPMSolverSinglestepScheduler",
              "UniPCMultistepScheduler", "EulerDiscreteScheduler", "HeunDiscreteScheduler",
              "DEISMultistepScheduler", "PNDMScheduler")
PREDICTION_TYPES = {"eps": "epsilon", "v": "v_prediction", "x0": "sample"}
INSTALL_HINT = "install the peers extra: pip install -e '.[peers]'"


def torchvision_models_on_cpu_torch():
  """Lets torchvision's models import beside a CPU build of torch.

  The registries reachable here hold CUDA builds of torchvision only (pytorch-fid needs
  torchvision); beside the peers' CPU torch its C extension (detection ops such as nms,
  which neither pytorch-fid's Inception nor diffusers use) does not load, and `import
  torchvision` fails in torchvision._meta_registrations, which registers fake kernels of
  those ops. The models are plain Python and import with that module left out, which this
  does when the installed builds differ (read from their metadata, nothing imported).
  """
  try:
    torch, torchvision = metadata.version("torch"), metadata.version("torchvision")
  except metadata.PackageNotFoundError:
    return
  if torch.endswith("+cpu") and not torchvision.endswith("+cpu"):
    name = "torchvision._meta_registrations"
    sys.modules.setdefault(name, types.ModuleType(name))


def import_peers():
  """(torch, diffusers), or an ImportError that says how to install them."""
  torchvision_models_on_cpu_torch()  # diffusers' model classes import torchvision.
  try:
    import diffusers  # pylint: disable=import-outside-toplevel
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError as error:
    raise ImportError(f"the diffusers peers need torch and diffusers ({error}); "
                      f"{INSTALL_HINT}") from error
  return torch, diffusers


def make_scheduler(process, name: str, prediction: str = "eps", **options):
  """The diffusers scheduler `name` for a DiscreteDDPM process, without clipping.

  Clipping/thresholding of x0 is switched off (our samplers run with
  clip_x0=False; the oracle's data are not confined to [-1, 1]); `options`
  override any other keyword of the scheduler.
  """
  _, diffusers = import_peers()
  betas = getattr(process, "betas", None)
  if betas is None:
    raise ValueError(f"diffusers peers need a discrete process with betas (a DiscreteDDPM), "
                     f"got {type(process).__name__}")
  if name not in SCHEDULERS:
    raise ValueError(f"unknown peer {name!r}; valid: {list(SCHEDULERS)}")
  if prediction not in PREDICTION_TYPES:
    raise ValueError(f"diffusers peers support predictions {list(PREDICTION_TYPES)}, "
                     f"got {prediction!r}")
  cls = getattr(diffusers, name)
  keywords = inspect.signature(cls.__init__).parameters
  unknown = sorted(set(options) - set(keywords) - {"self"})
  if unknown:
    raise ValueError(f"{name} takes no options {unknown}; valid: "
                     f"{sorted(set(keywords) - {'self', 'num_train_timesteps', 'trained_betas'})}")
  defaults = {k: v for k, v in (("clip_sample", False), ("thresholding", False)) if k in keywords}
  return cls(num_train_timesteps=len(betas), trained_betas=np.asarray(betas, np.float64),
             prediction_type=PREDICTION_TYPES[prediction], **{**defaults, **options})


def num_inference_steps(scheduler, nfe: int) -> int:
  """The num_inference_steps whose timesteps (one model call each) number exactly nfe."""
  if not isinstance(nfe, (int, np.integer)) or nfe < 1:
    raise ValueError(f"nfe must be a positive integer, got {nfe!r}")
  reachable = {}
  for steps in range(1, min(nfe + 2, scheduler.config.num_train_timesteps) + 1):
    try:
      scheduler.set_timesteps(steps)
    except (ValueError, IndexError):  # E.g. PNDM's Runge-Kutta warm-up needs N >= 4.
      continue
    reachable.setdefault(len(scheduler.timesteps), steps)
  if nfe not in reachable:
    nearest = sorted(reachable, key=lambda n: abs(n - nfe))[:2]
    raise ValueError(f"{type(scheduler).__name__} cannot spend exactly {nfe} model calls; "
                     f"it can spend {sorted(reachable)[:8]}..., nearest {sorted(nearest)}")
  return reachable[nfe]


def final_noise_level(scheduler) -> float:
  """sigma / alpha where the scheduler's last step lands."""
  if hasattr(scheduler, "sigmas"):
    return float(scheduler.sigmas[-1])
  # DDIM, PNDM: the last step goes to n - T // N, or to final_alpha_cumprod below 0.
  prev = int(scheduler.timesteps[-1]) - (scheduler.config.num_train_timesteps
                                         // scheduler.num_inference_steps)
  alpha_bar = float(scheduler.alphas_cumprod[prev] if prev >= 0 else scheduler.final_alpha_cumprod)
  return float(np.sqrt((1.0 - alpha_bar) / alpha_bar))


def timestep_spacing(name: str, options) -> str:
  """The spacing a peer uses: options["timestep_spacing"], else its class default."""
  if "timestep_spacing" in options:
    return options["timestep_spacing"]
  _, diffusers = import_peers()
  parameter = inspect.signature(getattr(diffusers, name, object).__init__).parameters.get(
      "timestep_spacing")
  return "linspace (fixed)" if parameter is None else parameter.default


def torch_model(eps_fn, num_train_steps: int, calls: list):
  """(x torch [B, D], timestep n) -> torch output of eps_fn(x, t = (n + 1) / T); counts calls."""
  torch, _ = import_peers()

  def model(x, timestep):
    calls.append(float(timestep))
    t = (float(timestep) + 1.0) / num_train_steps
    return torch.from_numpy(np.array(eps_fn(x.numpy(), np.float32(t))))

  return model


def sample(scheduler, model, x_T, steps: int, seed: int = 0):
  """diffusers' denoising loop: x_T [B, D] numpy -> x_0 numpy [B, D]."""
  torch, _ = import_peers()
  scheduler.set_timesteps(steps)
  accepts_generator = "generator" in inspect.signature(scheduler.step).parameters
  extra = {"generator": torch.Generator().manual_seed(seed)} if accepts_generator else {}
  x = torch.from_numpy(np.array(x_T, np.float32)) * scheduler.init_noise_sigma
  for timestep in scheduler.timesteps:
    model_input = scheduler.scale_model_input(x, timestep)
    x = scheduler.step(model(model_input, timestep), timestep, x, **extra).prev_sample
  return x.numpy()


def peer_entries(problem: Problem, peers):
  """Entries for benchmark.runs.run_benchmark, one per (scheduler name, options) in `peers`."""
  import_peers()
  process, num_train_steps = problem.process, len(getattr(problem.process, "betas", ()))
  network = jax.jit(lambda x, t: problem.denoise_fn(x, jnp.full(x.shape[:1], t), None))

  @functools.cache
  def compile_s():  # At the first run, shared by every peer: one oracle compilation.
    start = time.perf_counter()
    jax.block_until_ready(network(np.asarray(problem.x_T), np.float32(1.0)))
    return time.perf_counter() - start

  def entry(name, options):
    # A fresh scheduler for each use: diffusers' schedulers keep state between calls.
    fresh = lambda: make_scheduler(process, name, problem.prediction, **options)
    fresh()  # Unknown names and options fail here, before anything runs.

    def check(nfe):
      try:
        num_inference_steps(fresh(), nfe)
      except ValueError as error:
        raise UnreachableNFE(str(error)) from error

    def run(nfe):
      steps = num_inference_steps(fresh(), nfe)
      network_compile_s = compile_s()  # Before the clock starts.
      calls = []
      model = torch_model(network, num_train_steps, calls)
      start = time.perf_counter()
      scheduler = fresh()
      x = sample(scheduler, model, problem.x_T, steps, seed=problem.seed)
      run_s = time.perf_counter() - start
      x_other = sample(fresh(), torch_model(network, num_train_steps, []), problem.x_T, steps,
                       seed=problem.seed + 1)
      sigma_end = final_noise_level(scheduler)
      t_end = 0.0 if sigma_end == 0 else float(process.t_from_log_snr(-2.0 * np.log(sigma_end)))
      times = [(t + 1.0) / num_train_steps for t in calls] + [t_end]
      return jnp.asarray(x), {"nfe_counted": len(calls), "steps": steps, "times": times,
                              "sigma_end": sigma_end, "compile_s": network_compile_s, "run_s": run_s,
                              "stochastic": not np.array_equal(x, x_other, equal_nan=True)}

    rest = {k: v for k, v in options.items() if k != "timestep_spacing"}
    return Entry("diffusers", name.removesuffix("Scheduler"), rest, timestep_spacing(name, options),
                 {}, run, check)

  return [entry(peer["name"], dict(peer.get("options", {}))) for peer in peers]
