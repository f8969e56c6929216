"""Forward processes x_t = alpha(t) x_0 + sigma(t) eps, eps ~ N(0, I).

Every process in jaxdiff is described by two scalar functions of time, alpha(t)
and sigma(t). Everything else -- log-SNR lam(t) = log(alpha^2 / sigma^2), its
inverse, the SDE drift f(t) = d log alpha / dt and squared diffusion
g^2(t) = d sigma^2 / dt - 2 f(t) sigma^2(t) (Kingma et al. 2021, "Variational
Diffusion Models", eq. 5-6 and appendix; Song et al. 2021, "Score-Based
Generative Modeling through SDEs", eq. 5) -- is derived here once, with
autodiff for the time derivatives.

Processes:
  * DiscreteDDPM  Ho et al. 2020: alpha_bar_i = prod_{j<=i} (1 - beta_j) for
                  i = 1..T, placed at t_i = i / T; log alpha_bar is linear in t
                  between the t_i, so continuous t works too (and the
                  T -> infinity limit of the linear schedule is VP below).
  * VP, SubVP, VE Song et al. 2021, eq. 11 and 29-33 (beta_min 0.1,
                  beta_max 20; sigma_min 0.01, sigma_max 50).
  * EDM           Karras et al. 2022: alpha = 1, sigma = t.
  * FlowMatching  Lipman et al. 2023 / Liu et al. 2023 (rectified flow):
                  alpha = 1 - t, sigma = t.

Time conventions: t = 0 is the data end. `t_min` and `t_max` are where
samplers end and start by default; `t_domain` is the closed interval on which
alpha and sigma are defined. Where alpha or sigma vanish at an end of the
domain (sigma(0) = 0 for VP, alpha(1) = 0 for flow matching), lam is +-inf
there and f is infinite for flow matching at t = 1; nothing is clipped
silently -- samplers simply never evaluate the network at t = 0 -- and
`sigma2` is written with expm1 so that g^2 stays finite at t = 0 for the VP
family.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math

import jax
import jax.numpy as jnp
import numpy as np


# --------------------------------------------------------------------------
# Beta schedules for the discrete DDPM process.
# --------------------------------------------------------------------------


def _linear_betas(num_steps, beta_start, beta_end):
  return np.linspace(beta_start, beta_end, num_steps, dtype=np.float64)


def _quadratic_betas(num_steps, beta_start, beta_end):
  return np.linspace(beta_start**0.5, beta_end**0.5, num_steps, dtype=np.float64) ** 2


def _sigmoid_betas(num_steps, beta_start, beta_end):
  s = 1.0 / (1.0 + np.exp(-np.linspace(-6.0, 6.0, num_steps, dtype=np.float64)))
  return s * (beta_end - beta_start) + beta_start


def _cosine_betas(num_steps, beta_start, beta_end, s=0.008, max_beta=0.999):
  """Nichol & Dhariwal 2021, eq. 17: alpha_bar(t) = cos^2((t/T + s)/(1 + s) pi/2)."""
  del beta_start, beta_end  # The cosine schedule has no endpoints to set.
  steps = np.arange(num_steps + 1, dtype=np.float64) / num_steps
  alpha_bar = np.cos((steps + s) / (1 + s) * np.pi / 2) ** 2
  return np.minimum(1.0 - alpha_bar[1:] / alpha_bar[:-1], max_beta)


BETA_SCHEDULES = {
    "linear": _linear_betas,
    "cosine": _cosine_betas,
    "quadratic": _quadratic_betas,
    "sigmoid": _sigmoid_betas,
}


def beta_schedule(name: str, num_steps: int, beta_start: float = 1e-4,
                  beta_end: float = 0.02) -> np.ndarray:
  """Betas [num_steps] (float64) of a named DDPM schedule.

  `linear` is Ho et al.'s np.linspace(beta_start, beta_end, T) without
  improved-diffusion's 1000/T rescaling; `quadratic` is linear in sqrt(beta);
  `sigmoid` is sigmoid(linspace(-6, 6)) scaled to [beta_start, beta_end], as in
  diffusers; `cosine` is Nichol & Dhariwal's with s = 0.008, clipped at 0.999.
  """
  if name not in BETA_SCHEDULES:
    raise ValueError(f"unknown beta schedule {name!r}; valid: {sorted(BETA_SCHEDULES)}")
  if not isinstance(num_steps, (int, np.integer)) or num_steps <= 0:
    raise ValueError(f"num_steps must be a positive integer, got {num_steps!r}")
  return BETA_SCHEDULES[name](int(num_steps), beta_start, beta_end)


# --------------------------------------------------------------------------
# The process description.
# --------------------------------------------------------------------------


def _elementwise_derivative(fn, t):
  """d fn(t) / dt for an elementwise fn, at every entry of t."""
  return jax.jvp(fn, (t,), (jnp.ones_like(t),))[1]


def _as_time(t):
  return jnp.asarray(t, dtype=jnp.float32)


@functools.partial(jax.jit, static_argnums=0)
def _bisect_log_snr(process, lam):
  """t with process.log_snr(t) = lam, by 64 halvings of process.t_domain."""
  lo = jnp.full_like(lam, process.t_domain[0])
  hi = jnp.full_like(lam, process.t_domain[1])

  def halve(_, bounds):
    lo, hi = bounds
    mid = 0.5 * (lo + hi)
    too_early = process.log_snr(mid) > lam  # lam decreases with t.
    return jnp.where(too_early, mid, lo), jnp.where(too_early, hi, mid)

  lo, hi = jax.lax.fori_loop(0, 64, halve, (lo, hi))
  return 0.5 * (lo + hi)


@dataclasses.dataclass(frozen=True)
class Process:
  """Base class: subclasses define `alpha` and `sigma`; the rest is derived.

  All methods take t of any shape (scalar or [B]) and act elementwise.
  Subclasses also set `t_min` and `t_max`, the default sampling interval.
  """

  t_min: float = dataclasses.field(init=False, default=0.0)
  t_max: float = dataclasses.field(init=False, default=1.0)
  # The closed interval on which alpha and sigma are defined.
  t_domain = (0.0, 1.0)

  def alpha(self, t):
    raise NotImplementedError

  def sigma(self, t):
    raise NotImplementedError

  def sigma2(self, t):
    """sigma(t)^2; overridden where a closed form is more accurate."""
    return jnp.square(self.sigma(t))

  def log_snr(self, t):
    """lam(t) = log(alpha^2 / sigma^2), decreasing in t."""
    t = _as_time(t)
    return 2.0 * jnp.log(self.alpha(t)) - jnp.log(self.sigma2(t))

  def t_from_log_snr(self, lam):
    """Inverse of `log_snr`, by bisection on `t_domain` (float32 accurate).

    Subclasses with a closed-form inverse override this.
    """
    return _bisect_log_snr(self, jnp.asarray(lam, jnp.float32))

  def noise_to_signal(self, t):
    """sigma(t) / alpha(t) = exp(-lam / 2): the noise level of x_t / alpha(t).

    It is EDM's sigma in the scaled form of Karras et al. 2022 (eq. 4 with
    s(t) = alpha(t)), where the PF-ODE reads dx~/dsigma~ = eps_hat.
    """
    t = _as_time(t)
    return self.sigma(t) / self.alpha(t)

  def t_from_noise_to_signal(self, ratio):
    """Inverse of `noise_to_signal` (ratio 0 gives lam = +inf, t = 0 where sigma(0) = 0)."""
    return self.t_from_log_snr(-2.0 * jnp.log(jnp.asarray(ratio, jnp.float32)))

  def f(self, t):
    """Drift coefficient f(t) = d log alpha / dt of dx = f x dt + g dw."""
    return _elementwise_derivative(lambda s: jnp.log(self.alpha(s)), _as_time(t))

  def g2(self, t):
    """Squared diffusion g(t)^2 = d sigma^2/dt - 2 f(t) sigma^2(t)."""
    t = _as_time(t)
    return _elementwise_derivative(self.sigma2, t) - 2.0 * self.f(t) * self.sigma2(t)

  def d_alpha(self, t):
    return _elementwise_derivative(self.alpha, _as_time(t))

  def d_sigma(self, t):
    return _elementwise_derivative(self.sigma, _as_time(t))

  def prior_std(self):
    """Std of the prior N(0, sigma(t_max)^2 I) that sampling starts from.

    This neglects alpha(t_max) x_0, which is ~1e-2 or less for the default
    settings of every process here (exactly 0 for flow matching).
    """
    with jax.ensure_compile_time_eval():  # A Python float, also under jit.
      return float(self.sigma(jnp.float32(self.t_max)))

  def sample_train_time(self, key, shape):
    """t drawn from the process's usual training distribution: U(t_min, t_max)."""
    return jax.random.uniform(key, shape, minval=self.t_min, maxval=self.t_max)

  def check_time(self, t, name="t"):
    """Raises ValueError if a concrete t lies outside `t_domain`.

    Traced values (inside jit) cannot be checked and pass through.
    """
    try:
      t = np.asarray(t)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
      return
    lo, hi = self.t_domain
    if t.size and (np.any(np.isnan(t)) or t.min() < lo or t.max() > hi):
      raise ValueError(f"{name} must lie in {type(self).__name__}'s time domain "
                       f"[{lo}, {hi}]; got values in [{t.min()}, {t.max()}]")


@dataclasses.dataclass(frozen=True)
class DiscreteDDPM(Process):
  """Discrete-time DDPM with betas [T]; step i = 1..T sits at t = i / T."""

  betas: tuple[float, ...] = ()

  def __post_init__(self):
    betas = np.asarray(self.betas, np.float64)
    if betas.ndim != 1 or betas.size == 0:
      raise ValueError(f"betas must be a non-empty 1-D sequence, got shape {betas.shape}")
    if not np.all((betas > 0) & (betas < 1)):
      bad = betas[~((betas > 0) & (betas < 1))]
      raise ValueError(f"betas must lie in the open interval (0, 1); got e.g. {bad[:3]}")
    object.__setattr__(self, "t_min", 1.0 / betas.size)

  @property
  def num_steps(self) -> int:
    return len(self.betas)

  @functools.cached_property
  def _log_alpha_bar_knots(self):
    """log alpha_bar at t = 0, 1/T, ..., 1 (float64 cumulative sum, then f32)."""
    log_alpha_bar = np.concatenate([[0.0], np.cumsum(np.log1p(-np.asarray(self.betas)))])
    return log_alpha_bar.astype(np.float32)

  def _log_alpha_bar(self, t):
    knots_t = jnp.linspace(0.0, 1.0, self.num_steps + 1)
    return jnp.interp(_as_time(t), knots_t, self._log_alpha_bar_knots)

  def alpha(self, t):
    return jnp.exp(0.5 * self._log_alpha_bar(t))

  def sigma2(self, t):
    return -jnp.expm1(self._log_alpha_bar(t))

  def sigma(self, t):
    return jnp.sqrt(self.sigma2(t))

  def t_from_log_snr(self, lam):
    # alpha_bar = sigmoid(lam), and log alpha_bar is piecewise linear in t, so
    # interpolating t against the decreasing knots of log alpha_bar is exact.
    log_alpha_bar = -jax.nn.softplus(-jnp.asarray(lam, jnp.float32))
    knots_t = jnp.linspace(0.0, 1.0, self.num_steps + 1)
    return jnp.interp(-log_alpha_bar, -self._log_alpha_bar_knots, knots_t)

  def sample_train_time(self, key, shape):
    """Uniform over the T steps: t = i / T, i ~ U{1, ..., T} (Ho et al. Alg. 1)."""
    i = jax.random.randint(key, shape, 1, self.num_steps + 1)
    return i.astype(jnp.float32) / self.num_steps


def discrete_ddpm(schedule: str = "linear", num_steps: int = 1000, beta_start: float = 1e-4,
                  beta_end: float = 0.02) -> DiscreteDDPM:
  """A DiscreteDDPM with a named beta schedule (see `beta_schedule`)."""
  betas = beta_schedule(schedule, num_steps, beta_start, beta_end)
  return DiscreteDDPM(betas=tuple(betas.tolist()))


@dataclasses.dataclass(frozen=True)
class VP(Process):
  """Variance preserving SDE, beta(t) = beta_min + t (beta_max - beta_min)."""

  beta_min: float = 0.1
  beta_max: float = 20.0
  t_min: float = 1e-3
  t_max: float = 1.0

  def log_alpha(self, t):
    t = _as_time(t)
    return -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

  def alpha(self, t):
    return jnp.exp(self.log_alpha(t))

  def sigma2(self, t):
    return -jnp.expm1(2.0 * self.log_alpha(t))

  def sigma(self, t):
    return jnp.sqrt(self.sigma2(t))

  def t_from_log_snr(self, lam):
    # alpha^2 = sigmoid(lam), so int_0^t beta = softplus(-lam) =: c; solve the
    # quadratic 0.5 (b1 - b0) t^2 + b0 t = c in its cancellation-free form.
    c = jax.nn.softplus(-jnp.asarray(lam, jnp.float32))
    b0, db = self.beta_min, self.beta_max - self.beta_min
    return 2.0 * c / (b0 + jnp.sqrt(b0**2 + 2.0 * db * c))


@dataclasses.dataclass(frozen=True)
class SubVP(VP):
  """Sub-VP SDE (Song et al. 2021, eq. 33): same mean as VP, sigma = 1 - alpha^2."""

  def sigma(self, t):
    return -jnp.expm1(2.0 * self.log_alpha(t))

  def sigma2(self, t):
    return jnp.square(self.sigma(t))

  t_from_log_snr = Process.t_from_log_snr


@dataclasses.dataclass(frozen=True)
class VE(Process):
  """Variance exploding SDE: alpha = 1, sigma = sigma_min (sigma_max/sigma_min)^t."""

  sigma_min: float = 0.01
  sigma_max: float = 50.0
  t_min: float = 1e-5
  t_max: float = 1.0

  def alpha(self, t):
    return jnp.ones_like(_as_time(t))

  def sigma(self, t):
    return self.sigma_min * (self.sigma_max / self.sigma_min) ** _as_time(t)

  def t_from_log_snr(self, lam):
    log_sigma = -0.5 * jnp.asarray(lam, jnp.float32)
    return (log_sigma - math.log(self.sigma_min)) / math.log(self.sigma_max / self.sigma_min)


@dataclasses.dataclass(frozen=True)
class EDM(Process):
  """Karras et al. 2022: alpha = 1, sigma = t; trained with ln sigma ~ N(P_mean, P_std^2)."""

  t_min: float = 0.002
  t_max: float = 80.0
  p_mean: float = -1.2
  p_std: float = 1.2
  t_domain = (0.0, math.inf)

  def alpha(self, t):
    return jnp.ones_like(_as_time(t))

  def sigma(self, t):
    return _as_time(t)

  def t_from_log_snr(self, lam):
    return jnp.exp(-0.5 * jnp.asarray(lam, jnp.float32))

  def sample_train_time(self, key, shape):
    return jnp.exp(self.p_mean + self.p_std * jax.random.normal(key, shape))


@dataclasses.dataclass(frozen=True)
class FlowMatching(Process):
  """Linear interpolation path (rectified flow): alpha = 1 - t, sigma = t."""

  t_min: float = 1e-3
  t_max: float = 1.0

  def alpha(self, t):
    return 1.0 - _as_time(t)

  def sigma(self, t):
    return _as_time(t)

  def t_from_log_snr(self, lam):
    return jax.nn.sigmoid(-0.5 * jnp.asarray(lam, jnp.float32))


PROCESSES = {
    "ddpm": discrete_ddpm,
    "vp": VP,
    "subvp": SubVP,
    "ve": VE,
    "edm": EDM,
    "flow": FlowMatching,
}


def make_process(name: str, **kwargs) -> Process:
  """Builds a process by name, e.g. make_process("ddpm", schedule="cosine")."""
  if name not in PROCESSES:
    raise ValueError(f"unknown process {name!r}; valid: {sorted(PROCESSES)}")
  valid = [p.name for p in inspect.signature(PROCESSES[name]).parameters.values()]
  unknown = sorted(set(kwargs) - set(valid))
  if unknown:
    raise ValueError(f"process {name!r} takes the options {valid}, got unknown {unknown}")
  return PROCESSES[name](**kwargs)
