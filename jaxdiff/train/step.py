"""The training objective and the train step.

`Objective` is what the network is trained to predict and how its error is
weighted, all from the core (`losses.diffusion_loss` on `schedules` and
`parameterization`): L_simple (eps; Ho et al. 2020, eq. 14), x0 or v targets,
denoising score matching with sigma^2 or likelihood weighting (Song et al.
2021), the flow-matching velocity (Lipman et al. 2023), and EDM's
preconditioned x0 with its weight (Karras et al. 2022, eq. 7-8).

`ConsistencyTraining` and `ConsistencyDistillation` train a consistency model
from data (Song & Dhariwal 2023, "Improved Techniques for Training Consistency
Models") or from a teacher (Song et al. 2023, "Consistency Models"), with the
losses of `consistency`; `ConsistencyTuning` trains one from data starting from
a diffusion model (Geng et al. 2024, "Consistency Models Made Easy").
`ProgressiveDistillation` trains a student to take one DDIM step where its
teacher takes two (Salimans & Ho 2022, alg. 2; `progressive`).
`AutoencoderObjective` trains the KL autoencoder of latent diffusion instead
(`models.autoencoder`; Rombach et al. 2022, sec. 3): reconstruction plus a small
KL (`losses.autoencoder_loss`). An objective draws a batch's noise, gives the
loss per example with its metrics, and initialises the network; the step knows
nothing else of it.

`make_train_step` builds the pure step (state, batch) -> (state, metrics):
one loss gradient, the optimizer update and every EMA (the constant decays'
and the power-function EMAs' beta_t, `phema`), with the step's key
fold_in(state.key, state.step) split into the loss's and dropout's; k steps
per call run as a lax.scan over k batches, except on the CPU, where they are
unrolled: XLA's CPU backend (jaxlib 0.10) leaves a convolution's kernel
gradient inside a while loop in a layout it runs ~30x slower (f01b_i01o->01bf
instead of b01f_01io->b01f; docs/training.md). `jit_train_step` compiles it once
with the state donated, shardings over the mesh (`sharding`), and
`models.compiler_options()`.
"""

import dataclasses
import functools
import math
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxdiff import consistency, losses, models, parameterization, progressive
from jaxdiff.schedules import FlowMatching, Process
from jaxdiff.train import optim, phema, ranges
from jaxdiff.train.state import TARGET_EMA, TrainState, ema_name, phema_name

PRECONDITIONINGS = ("none", "edm")


@dataclasses.dataclass(frozen=True)
class Objective:
  """The process, the network's prediction type and the loss on it.

  prediction: what the (preconditioned) network predicts; "x0" with EDM.
  target, weighting, reduce: as for `losses.diffusion_loss`.
  preconditioning: "none" (the network's output is the prediction) or "edm"
    (`parameterization.edm_preconditioned` around it).
  """

  process: Process
  prediction: str = "eps"
  target: str = "eps"
  weighting: str = "none"
  reduce: str = "mean"
  preconditioning: str = "none"

  def __post_init__(self):
    for name, value, valid in (("prediction", self.prediction, parameterization.PREDICTIONS),
                               ("target", self.target, parameterization.PREDICTIONS),
                               ("weighting", self.weighting, tuple(losses.WEIGHTINGS)),
                               ("reduce", self.reduce, tuple(losses.REDUCTIONS)),
                               ("preconditioning", self.preconditioning, PRECONDITIONINGS)):
      if value not in valid:
        raise ValueError(f"loss.{name} must be one of {list(valid)}, got {value!r}")
    if self.preconditioning == "edm" and self.prediction != "x0":
      raise ValueError("EDM preconditioning makes the network an x0 prediction: set "
                       f"loss.prediction = 'x0' (got {self.prediction!r})")

  def denoise_fn(self, network_fn):
    """(x_t, t, cond) -> the prediction, from the raw network (x, t, cond) -> output."""
    if self.preconditioning == "edm":
      return parameterization.edm_preconditioned(network_fn, self.process)
    return network_fn

  def told_fn(self, network_fn):
    """(x_t, t, t_told, cond) -> the prediction at (x_t, t) with the network's time input
    taken at t_told; the preconditioning around it keeps t (`jaxdiff.diagnostics`)."""

    def fn(x, t, t_told, cond=None):
      told = (parameterization.edm_c_noise(self.process, t_told)
              if self.preconditioning == "edm" else t_told)
      return self.denoise_fn(lambda x_in, _, c: network_fn(x_in, told, c))(x, t, cond)

    return fn

  def loss(self, network_fn, x0, key, cond=None, noise=None):
    """Per-example loss [B] and metrics (`losses.diffusion_loss`)."""
    return losses.diffusion_loss(self.denoise_fn(network_fn), self.process, x0, key, cond,
                                 prediction=self.prediction, target=self.target,
                                 weighting=self.weighting, reduce=self.reduce, noise=noise)

  def draw_noise(self, model, shape, key, step):
    """The draws of one training batch of images [B, ...] = shape: (t [B], eps)."""
    del model, step
    return losses.training_noise(self.process, shape, key)

  def train_loss(self, model, params, batch, noise, key_dropout, conditional: bool,
                 context=None):
    """Per-example loss [B] of a batch and the step's extra metrics (none)."""
    del context
    cond = batch["label"] if conditional else None
    loss, _ = self.loss(models.network_fn(model, params, key_dropout), batch["image"], None,
                        cond, noise)
    return loss, {}

  def init(self, model, key, x, cond):
    """The network's variables, traced on x [1, ...] at t = 1."""
    return model.init(key, x, jnp.ones((x.shape[0],)), cond, deterministic=True)


REFLOW_TIMES = ("uniform", "one")


@dataclasses.dataclass(frozen=True)
class Reflow(Objective):
  """Rectified flow's reflow (Liu, Gong & Liu 2022, "Flow Straight and Fast", eq. 1 on the
  coupling of sec. 2.2): flow matching on the process "flow" (x_t = t z + (1 - t) x0), but
  with eps = the batch's noise z, paired with x0 by the teacher's ODE (a "pairs" source,
  `jaxdiff.data.pairs_source`), not fresh noise: the flow learnt on this coupling is
  straighter than the teacher's, so few Euler steps follow it.

  times: "uniform", t ~ the process's training distribution U(t_min, 1) as flow matching
  draws it (reflow); "one", t = 1 only, their distillation to one step (sec. 2.3): the
  velocity at z alone is trained, x0 = z - v(z, 1) in one Euler step.
  The student starts from the teacher's parameters (the trainer copies them at step 0);
  the train step does not call the teacher.
  """

  prediction: str = "velocity"
  target: str = "velocity"
  times: str = "uniform"
  needs_teacher: ClassVar[bool] = True

  def __post_init__(self):
    super().__post_init__()
    if self.times not in REFLOW_TIMES:
      raise ValueError(f"loss.times must be one of {list(REFLOW_TIMES)} (reflow, or the "
                       f"distillation to one step at t = 1), got {self.times!r}")
    if not isinstance(self.process, FlowMatching):
      raise ValueError(f"loss.kind 'reflow' straightens the ODE of the process 'flow' "
                       f"(x_t = (1 - t) x0 + t z); this config's process is {self.process}: "
                       "set process = 'flow', process_options = {}")

  def draw_noise(self, model, shape, key, step):
    """t [B] of a batch of shape [B, ...]: U(t_min, 1) ("uniform") or 1 ("one")."""
    del model, step
    if self.times == "one":
      return jnp.full((shape[0],), self.process.t_max)
    return self.process.sample_train_time(key, (shape[0],))

  def train_loss(self, model, params, batch, noise, key_dropout, conditional: bool,
                 context=None):
    """Per-example loss [B] on the pairs: x_t between the batch's x0 ("image") and z
    ("noise")."""
    del context
    cond = batch["label"] if conditional else None
    loss, _ = self.loss(models.network_fn(model, params, key_dropout), batch["image"], None,
                        cond, (noise, batch["noise"]))
    return loss, {}


class ConsistencyModel:
  """What both consistency objectives share: the network wrapped by
  `consistency.preconditioned` is a consistency function, an x0 prediction that the
  `consistency` sampler turns into samples in one or a few calls."""

  prediction: ClassVar[str] = "x0"
  preconditioning: ClassVar[str] = "edm"  # EDM's c_in and c_noise (`consistency`).
  told_fn = Objective.told_fn
  init = Objective.init

  def denoise_fn(self, network_fn):
    """(x_t, t, cond) -> the consistency function f(x_t, t) (`consistency.preconditioned`)."""
    return consistency.preconditioned(network_fn, self.process)

  def check_distance(self):
    if self.distance not in consistency.DISTANCES:
      raise ValueError(f"loss.distance must be one of {list(consistency.DISTANCES)}, got "
                       f"{self.distance!r}")


@dataclasses.dataclass(frozen=True)
class ConsistencyTraining(ConsistencyModel):
  """Consistency training with iCT's improved techniques (`consistency.consistency_loss`
  without a teacher): the pseudo-Huber distance (or "l2"), the interval index drawn from
  the discrete log-normal over the levels, the levels doubling along the exponential
  curriculum over curriculum_steps (iCT's K, their whole run), lambda = 1 / (s_{i+1} - s_i),
  and the student itself, not differentiated, as the target (no EMA teacher), with the
  student's dropout masks (iCT, sec. 3.2: the same dropout in both).
  """

  process: Process
  curriculum_steps: int
  distance: str = "pseudo_huber"
  scales: tuple = consistency.ICT_SCALES
  p_mean: float = consistency.ICT_P_MEAN
  p_std: float = consistency.ICT_P_STD
  target_decay: ClassVar[float] = 0.0
  needs_teacher: ClassVar[bool] = False

  def __post_init__(self):
    self.check_distance()
    ranges.integer("loss.curriculum_steps", self.curriculum_steps, 1)
    scales = tuple(self.scales)
    if (len(scales) != 2 or not all(isinstance(n, int) for n in scales)
        or not 1 <= scales[0] <= scales[1]):
      raise ValueError(f"loss.scales must be two integers (s0, s1), 1 <= s0 <= s1: the "
                       f"curriculum's first and last number of intervals, got {self.scales!r}")
    ranges.number("loss.p_std", self.p_std, "(0, inf)")
    object.__setattr__(self, "scales", scales)

  @property
  def max_scales(self) -> int:
    """The most levels the model is trained on: s1 + 1."""
    return self.scales[1] + 1

  def num_scales(self, step):
    """N(k): the curriculum's number of levels at training step k."""
    return consistency.ict_num_scales(step, self.curriculum_steps, self.scales)

  def draw_noise(self, model, shape, key, step):
    """(i [B], N [B], z [B, ...]): interval indices from the log-normal over the N(step)
    levels, N, and the noise shared by both levels."""
    del model
    key_i, key_z = jax.random.split(key)
    num_scales = self.num_scales(step)
    levels = consistency.level(self.process, jnp.arange(self.max_scales), num_scales)
    logits = consistency.lognormal_logits(levels, num_scales, self.p_mean, self.p_std)
    i = jax.random.categorical(key_i, logits, shape=(shape[0],))
    return i, jnp.full((shape[0],), num_scales), jax.random.normal(key_z, shape)

  def train_loss(self, model, params, batch, noise, key_dropout, conditional: bool,
                 context=None):
    """Per-example loss [B] and the step's number of levels N."""
    del context
    i, num_scales, z = noise
    cond = batch["label"] if conditional else None
    student = self.denoise_fn(models.network_fn(model, params, key_dropout))
    loss, _ = consistency.consistency_loss(student, student, self.process, batch["image"], i,
                                           num_scales, z, self.distance, cond=cond)
    return loss, {"num_scales": num_scales[0].astype(jnp.float32)}


@dataclasses.dataclass(frozen=True)
class ConsistencyTuning(ConsistencyModel):
  """Easy consistency tuning (ECT; Geng et al. 2024; `consistency.ect_levels` and
  `consistency.ect_loss`): consistency training in continuous time, started from a trained
  EDM diffusion model, the teacher, whose parameters only start the student (the trainer
  copies them at step 0; the step never calls it). The gap s - r starts at the diffusion
  model's (r = s_min for most s: its own denoising loss) and is divided by q every
  stage_steps steps (their d); the student is its own target, with its dropout masks, as
  in iCT. ECT's CIFAR-10 settings: q = 2, k = 8, b = 1, iCT's log-normal P_mean = -1.1,
  P_std = 2.
  """

  process: Process
  stage_steps: int
  q: float = consistency.ECT_Q
  k: float = consistency.ECT_K
  b: float = consistency.ECT_B
  distance: str = "pseudo_huber"
  p_mean: float = consistency.ICT_P_MEAN
  p_std: float = consistency.ICT_P_STD
  target_decay: ClassVar[float] = 0.0
  needs_teacher: ClassVar[bool] = True
  max_scales: ClassVar[float] = math.inf  # Continuous time: any grid of noise levels.

  def __post_init__(self):
    self.check_distance()
    ranges.integer("loss.stage_steps", self.stage_steps, 1)
    ranges.number("loss.q", self.q, "(1, inf)")
    ranges.number("loss.k", self.k, "[0, inf)")
    ranges.number("loss.b", self.b, "[0, inf)")
    ranges.number("loss.p_std", self.p_std, "(0, inf)")

  def stage(self, step):
    """The stage at training step k: floor(k / stage_steps)."""
    return jnp.asarray(step, jnp.int32) // self.stage_steps

  def draw_noise(self, model, shape, key, step):
    """(s [B], r [B], z [B, ...]): ECT's levels at the step's stage, the noise both share."""
    del model
    key_s, key_z = jax.random.split(key)
    s, r = consistency.ect_levels(self.process, jax.random.normal(key_s, (shape[0],)),
                                  self.stage(step), self.q, self.k, self.b, self.p_mean,
                                  self.p_std)
    return s, r, jax.random.normal(key_z, shape)

  def train_loss(self, model, params, batch, noise, key_dropout, conditional: bool,
                 context=None):
    """Per-example loss [B] and the mean relative gap (s - r) / s of the step."""
    del context
    s, r, z = noise
    cond = batch["label"] if conditional else None
    student = self.denoise_fn(models.network_fn(model, params, key_dropout))
    loss = consistency.ect_loss(student, self.process, batch["image"], s, r, z, self.distance,
                                cond)
    return loss, {"relative_gap": jnp.mean((s - r) / s)}


@dataclasses.dataclass(frozen=True)
class ConsistencyDistillation(ConsistencyModel):
  """Consistency distillation (Song et al. 2023, alg. 2; `consistency.consistency_loss`
  with the teacher): the interval index uniform over num_scales levels (their N = 18 on
  CIFAR-10), the teacher's Euler or Heun step between them, lambda = 1, and as the target
  an EMA of the student of decay target_decay (their mu = 0.95 on CIFAR-10), or the student
  itself, not differentiated, at target_decay 0 (iCT's advice for training). The distance
  is the pseudo-Huber of iCT or "l2"; no LPIPS (its VGG weights cannot be had offline).
  The student starts from the teacher's parameters (the trainer copies them at step 0).
  """

  process: Process
  num_scales: int = 18
  distance: str = "pseudo_huber"
  solver: str = "heun"
  target_decay: float = 0.95
  needs_teacher: ClassVar[bool] = True
  calls_teacher: ClassVar[bool] = True  # The step takes the teacher's parameters.

  def __post_init__(self):
    self.check_distance()
    ranges.integer("loss.num_scales", self.num_scales, 2)
    if self.solver not in ("euler", "heun"):
      raise ValueError(f"loss.solver (the teacher's ODE step) must be 'euler' or 'heun', got "
                       f"{self.solver!r}")
    ranges.number("loss.target_decay", self.target_decay, "[0, 1)")

  @property
  def max_scales(self) -> int:
    return self.num_scales

  def draw_noise(self, model, shape, key, step):
    """(i [B] uniform in 0..N - 2, z [B, ...])."""
    del model, step
    key_i, key_z = jax.random.split(key)
    return (jax.random.randint(key_i, (shape[0],), 0, self.num_scales - 1),
            jax.random.normal(key_z, shape))

  def train_loss(self, model, params, batch, noise, key_dropout, conditional: bool,
                 context=None):
    """Per-example loss [B]; context holds the teacher and the target's parameters."""
    i, z = noise
    cond = batch["label"] if conditional else None
    student = self.denoise_fn(models.network_fn(model, params, key_dropout))
    target_params = params if context.target_params is None else context.target_params
    target = self.denoise_fn(models.network_fn(model, target_params, key_dropout))
    loss, _ = consistency.consistency_loss(student, target, self.process, batch["image"], i,
                                           self.num_scales, z, self.distance,
                                           teacher_x0_fn=context.teacher_x0_fn,
                                           solver=self.solver, cond=cond)
    return loss, {}


@dataclasses.dataclass(frozen=True)
class ProgressiveDistillation:
  """Progressive distillation (Salimans & Ho 2022, alg. 2; `progressive.progressive_loss`):
  the student learns to take student_steps N DDIM steps where its teacher took 2N on the
  nested grid (`progressive.grid` of grid and grid_options: by default the process's
  sampling grid ending at t_min, the one `generate.plan` gives a progressive model), its
  x0 error weighted by the truncated SNR. The student keeps its teacher's prediction and
  preconditioning (`teacher.check` compares them) and starts from the teacher's parameters
  (the trainer copies them at step 0); a round's student is the next round's teacher.
  """

  process: Process
  student_steps: int
  prediction: str = "eps"
  preconditioning: str = "none"
  grid: str = ""
  grid_options: dict = dataclasses.field(default_factory=dict)
  target_decay: ClassVar[float] = 0.0
  needs_teacher: ClassVar[bool] = True
  calls_teacher: ClassVar[bool] = True  # The step takes the teacher's parameters.
  denoise_fn = Objective.denoise_fn
  told_fn = Objective.told_fn
  init = Objective.init

  def __post_init__(self):
    Objective(self.process, prediction=self.prediction, target=self.prediction,
              preconditioning=self.preconditioning)  # Checks both.
    ranges.integer("loss.student_steps", self.student_steps, 1)
    object.__setattr__(self, "grid_options", dict(self.grid_options))
    progressive.check_nested(self.process, self.student_steps, self.grid, self.grid_options)

  def grid_of(self, num_steps: int):
    """The distillation's grid [num_steps + 1] (`progressive.grid`)."""
    return progressive.grid(self.process, num_steps, self.grid, self.grid_options)

  def draw_noise(self, model, shape, key, step):
    """(n [B] uniform in 0..N - 1, eps [B, ...])."""
    del model, step
    key_n, key_eps = jax.random.split(key)
    return (jax.random.randint(key_n, (shape[0],), 0, self.student_steps),
            jax.random.normal(key_eps, shape))

  def train_loss(self, model, params, batch, noise, key_dropout, conditional: bool,
                 context=None):
    """Per-example loss [B]; context holds the teacher's x0 prediction (dropout off)."""
    n, eps = noise
    cond = batch["label"] if conditional else None
    student = parameterization.x0_eps_fn(
        self.denoise_fn(models.network_fn(model, params, key_dropout)), self.process,
        self.prediction)
    loss, _ = progressive.progressive_loss(
        lambda x, t, c: student(x, t, c)[0], context.teacher_x0_fn, self.process,
        batch["image"], n, eps, self.grid_of(self.student_steps),
        self.grid_of(2 * self.student_steps), cond)
    return loss, {}


class StepContext(NamedTuple):
  """What an objective's loss may read beside the batch: the consistency target's EMA
  parameters (None: the student's) and the teacher's x0 prediction (x_t, t, cond) -> x0
  (None: no teacher)."""

  target_params: Any = None
  teacher_x0_fn: Any = None


@dataclasses.dataclass(frozen=True)
class AutoencoderObjective:
  """The KL autoencoder's loss (`losses.autoencoder_loss`): reconstruction (the config's
  loss.reconstruction, "l1" or "l2") plus loss.kl_weight times the posterior's KL.

  No perceptual (LPIPS) term: its VGG weights cannot be had offline here. No adversarial
  term: at the small resolutions trained here the L1 reconstruction is sharp enough for
  the diffusion model's samples to be limited by the diffusion model, which the
  reconstructions' own score (`sample.py --checkpoint` of the autoencoder) shows.
  """

  reconstruction: str = "l1"
  kl_weight: float = 1e-6

  def __post_init__(self):
    if self.reconstruction not in losses.RECONSTRUCTIONS:
      raise ValueError(f"loss.reconstruction must be one of {list(losses.RECONSTRUCTIONS)}, "
                       f"got {self.reconstruction!r}")
    ranges.number("loss.kl_weight", self.kl_weight, "[0, inf)")

  def draw_noise(self, model, shape, key, step):
    """The posterior's draw eps [B, h, w, c] for images [B, H, W, C] = shape."""
    del step
    return jax.random.normal(key, (shape[0], *model.latent_shape(shape[1:])))

  def train_loss(self, model, params, batch, noise, key_dropout, conditional: bool,
                 context=None):
    """Per-example loss [B] and the batch's reconstruction error per pixel, KL, and the
    latents' mean and standard deviation (which set the diffusion model's scaling factor)."""
    del key_dropout, conditional, context
    x = batch["image"]
    reconstruction, mean, logvar = model.apply({"params": params}, x, noise)
    loss, parts = losses.autoencoder_loss(x, reconstruction, mean, logvar,
                                          kind=self.reconstruction, kl_weight=self.kl_weight)
    z = mean + jnp.exp(0.5 * logvar) * noise
    return loss, {"reconstruction": jnp.mean(parts["reconstruction"]),
                  "kl": jnp.mean(parts["kl"]), "latent_mean": jnp.mean(z),
                  "latent_std": jnp.std(z)}

  def init(self, model, key, x, cond):
    """The autoencoder's variables, traced on x [1, H, W, C]."""
    del cond
    return model.init(key, x)


def make_train_step(model, objective: Objective, optimizer, learning_rate_fn, ema_decays, *,
                    ema_warmup: bool = True, phema_sigma_rels=(), conditional: bool = False,
                    grad_accum: int = 1, scan: bool | None = None, teacher_x0=None):
  """The pure train step over k stacked batches.

  Args:
    model: a Flax module, called by the objective.
    objective: the loss: an Objective (a denoiser, called as model.apply(variables, x, t,
      cond, deterministic=...)), a consistency objective or an AutoencoderObjective. One
      whose target_decay > 0 has its target EMA kept in state.ema[TARGET_EMA], updated
      at that constant decay.
    optimizer: an optax GradientTransformation (`optim.make_optimizer`).
    learning_rate_fn: step -> learning rate, for the metrics.
    ema_decays: the EMA decays kept in state.ema.
    ema_warmup: warm the decays up (`optim.ema_decay`).
    phema_sigma_rels: the power-function EMAs kept in state.ema (`phema.beta`, their
      gamma solved once here, in float64).
    conditional: feed batch["label"] to the network as its class.
    grad_accum: split each batch into this many micro-batches and average their
      gradients: the same update as the whole batch (t and eps are drawn for the
      whole batch, then split) up to the order of the sums, except that dropout
      draws its masks per micro-batch.
    scan: run the k steps (and the micro-batches) as a lax.scan, compiled once
      whatever k, rather than unrolled; by default everywhere but on the CPU (see
      the module docstring).
    teacher_x0: (teacher_params, x_t, t, cond) -> the frozen teacher's x0 prediction, for
      an objective that calls_teacher; the step then takes the teacher's parameters.

  Returns:
    step(state, batches, teacher_params=None) -> (state, metrics): batches {"image": [k, B, ...],
    "label": [k, B]} make k updates; metrics hold [k] arrays: loss, grad_norm
    (before clipping), learning_rate, ema_decay/<name> and the objective's metrics
    (`AutoencoderObjective.train_loss`) of each step.
  """

  if scan is None:
    scan = jax.default_backend() != "cpu"
  gammas = {phema_name(s): float(phema.sigma_rel_to_gamma(s)) for s in phema_sigma_rels}

  target_decay = getattr(objective, "target_decay", 0.0)

  def loss_and_grads(params, batch, key, step, context):
    """((loss, objective's metrics), grads), averaged over the micro-batches."""
    key_loss, key_dropout = jax.random.split(key)
    noise = objective.draw_noise(model, batch["image"].shape, key_loss, step)

    def loss_fn(params, batch, noise, key_dropout):
      loss, metrics = objective.train_loss(model, params, batch, noise, key_dropout,
                                           conditional, context)
      return jnp.mean(loss), metrics

    value_and_grad = jax.value_and_grad(loss_fn, has_aux=True)
    if grad_accum == 1:
      return value_and_grad(params, batch, noise, key_dropout)
    # Micro-batch i: rows i::grad_accum of the batch, so that each stays split over all
    # devices like the batch (a contiguous block would sit on 1 / grad_accum of them).
    micro = jax.tree.map(lambda a: jnp.swapaxes(
        a.reshape(a.shape[0] // grad_accum, grad_accum, *a.shape[1:]), 0, 1), (batch, noise))

    def add(total, inputs):
      i, (micro_batch, micro_noise) = inputs
      value = value_and_grad(params, micro_batch, micro_noise,
                             jax.random.fold_in(key_dropout, i))
      return jax.tree.map(jnp.add, total, value), None

    shapes = jax.eval_shape(value_and_grad, params, batch, noise, key_dropout)
    total = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
    inputs = (jnp.arange(grad_accum), micro)
    if scan:
      total, _ = jax.lax.scan(add, total, inputs)
    else:
      for i in range(grad_accum):
        total, _ = add(total, jax.tree.map(lambda a, i=i: a[i], inputs))
    return jax.tree.map(lambda a: a / grad_accum, total)

  def one_step(state: TrainState, batch, teacher_params):
    key = jax.random.fold_in(state.key, state.step)
    context = StepContext(
        target_params=state.ema[TARGET_EMA] if target_decay else None,
        teacher_x0_fn=None if teacher_x0 is None else functools.partial(teacher_x0,
                                                                        teacher_params))
    (loss, objective_metrics), grads = loss_and_grads(state.params, batch, key, state.step,
                                                      context)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    decays = {ema_name(d): optim.ema_decay(d, state.step, ema_warmup) for d in ema_decays}
    # Update t = step + 1 of a power-function EMA (eq. 127).
    decays.update({name: phema.beta(gamma, state.step + 1) for name, gamma in gammas.items()})
    if target_decay:
      decays[TARGET_EMA] = jnp.float32(target_decay)
    ema = {name: optim.ema_update(state.ema[name], params, decay)
           for name, decay in decays.items()}
    metrics = {"loss": loss, "grad_norm": optax.tree_utils.tree_norm(grads),
               "learning_rate": jnp.asarray(learning_rate_fn(state.step), jnp.float32),
               **{f"ema_decay/{name}": decay for name, decay in decays.items()},
               **objective_metrics}
    new_state = state.replace(step=state.step + 1, params=params, ema=ema, opt_state=opt_state)
    return new_state, metrics

  def step(state: TrainState, batches, teacher_params=None):
    if scan:
      return jax.lax.scan(lambda st, b: one_step(st, b, teacher_params), state, batches)
    metrics = []
    for i in range(jax.tree.leaves(batches)[0].shape[0]):
      state, m = one_step(state, jax.tree.map(lambda b, i=i: b[i], batches), teacher_params)
      metrics.append(m)
    return state, jax.tree.map(lambda *m: jnp.stack(m), *metrics)

  return step


def jit_train_step(step, state_sharding, batch_sharding, replicated, teacher_sharding=None):
  """step jitted once: the state donated, in/out shardings over the mesh (the teacher's
  parameters, where the step takes them, sharded as teacher_sharding), the XLA options of
  `models.compiler_options()`."""
  shardings = (state_sharding, batch_sharding)
  if teacher_sharding is not None:
    shardings += (teacher_sharding,)
  return jax.jit(step, donate_argnums=0, in_shardings=shardings,
                 out_shardings=(state_sharding, replicated),
                 compiler_options=models.compiler_options())
