"""The optimizer, its learning-rate schedule and the EMA of the parameters.

  optimizer  clip by global norm (Pascanu et al. 2013) -> AdamW (Loshchilov &
             Hutter 2019: weight decay decoupled from the Adam update, applied
             as lr * wd * theta) whose learning rate follows `learning_rate_schedule`;
             Ho et al. 2020 (app. B) train CIFAR-10 with Adam at 2e-4, warm-up
             5000 steps, clip 1.0.
  schedule   linear warm-up from 0 to the peak over warmup_steps, then constant
             or a cosine decay to end_learning_rate at the last step.
  EMA        theta_ema <- d_n theta_ema + (1 - d_n) theta after each step, with
             the warmed-up decay d_n = min(d, (1 + n) / (10 + n)) at update n
             (TensorFlow's ExponentialMovingAverage with num_updates, used by
             Ho et al.'s and Song et al.'s code), so that the average is not
             dominated by the random initialisation early on.
"""

import dataclasses

import jax
import jax.numpy as jnp
import optax

from jaxdiff.train import ranges

SCHEDULES = ("constant", "cosine")


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
  """What `make_optimizer` builds (the fields of a training config's `optim`)."""

  learning_rate: float = 2e-4
  warmup_steps: int = 0
  schedule: str = "constant"
  end_learning_rate: float = 0.0  # Where "cosine" ends, at the last step.
  b1: float = 0.9
  b2: float = 0.999
  eps: float = 1e-8
  weight_decay: float = 0.0
  decay_norms_and_biases: bool = False
  grad_clip: float | None = 1.0

  def __post_init__(self):
    if self.schedule not in SCHEDULES:
      raise ValueError(f"optim.schedule must be one of {SCHEDULES}, got {self.schedule!r}")
    ranges.number("optim.learning_rate", self.learning_rate, "(0, inf)")
    ranges.integer("optim.warmup_steps", self.warmup_steps, 0)
    ranges.number("optim.end_learning_rate", self.end_learning_rate, "[0, inf)")
    ranges.number("optim.b1", self.b1, "[0, 1)")  # Adam's moment decays.
    ranges.number("optim.b2", self.b2, "[0, 1)")
    ranges.number("optim.eps", self.eps, "(0, inf)")
    ranges.number("optim.weight_decay", self.weight_decay, "[0, inf)")
    if self.grad_clip is not None:
      ranges.number("optim.grad_clip", self.grad_clip, "(0, inf)")  # None: no clipping.


def learning_rate_schedule(config: OptimizerConfig, num_steps: int):
  """step -> learning rate: linear warm-up, then constant or cosine to the last step."""
  peak = config.learning_rate
  warmup = optax.linear_schedule(0.0, peak, config.warmup_steps) if config.warmup_steps else None
  if config.schedule == "constant":
    after = optax.constant_schedule(peak)
  else:
    after = optax.cosine_decay_schedule(peak, max(num_steps - config.warmup_steps, 1),
                                        alpha=config.end_learning_rate / peak)
  if warmup is None:
    return after
  return optax.join_schedules([warmup, after], [config.warmup_steps])


def decay_mask(params):
  """True for the parameters weight decay applies to: every array of two or more
  dimensions (kernels, embeddings); False for the vectors (biases, norm scales)."""
  return jax.tree.map(lambda p: p.ndim > 1, params)


def clip_by_global_norm(max_norm: float) -> optax.GradientTransformation:
  """g -> g * min(1, max_norm / |g|), |g| the global norm: optax.clip_by_global_norm's
  map applied as one scalar factor. optax selects and divides element by element,
  which on a CPU costs nearly as much as the rest of the AdamW + EMA update
  (docs/training.md, "Training speed")."""

  def update(updates, state, params=None):
    del params
    scale = jnp.minimum(1.0, max_norm / optax.tree_utils.tree_norm(updates))
    return jax.tree.map(lambda g: g * scale.astype(g.dtype), updates), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def make_optimizer(config: OptimizerConfig, num_steps: int):
  """clip -> AdamW with the schedule; weight decay masked unless decay_norms_and_biases."""
  adamw = optax.adamw(learning_rate_schedule(config, num_steps), b1=config.b1, b2=config.b2,
                      eps=config.eps, weight_decay=config.weight_decay,
                      mask=None if config.decay_norms_and_biases else decay_mask)
  if config.grad_clip is None:
    return adamw
  return optax.chain(clip_by_global_norm(config.grad_clip), adamw)


def ema_decay(decay: float, update: jax.Array, warmup: bool = True):
  """The decay used at EMA update `update` (0-based): min(decay, (1 + n) / (10 + n))."""
  if not warmup:
    return jnp.float32(decay)
  n = jnp.asarray(update, jnp.float32)
  return jnp.minimum(jnp.float32(decay), (1.0 + n) / (10.0 + n))


def ema_update(ema_params, params, decay):
  """decay * ema + (1 - decay) * params, leaf by leaf."""
  return jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema_params, params)
