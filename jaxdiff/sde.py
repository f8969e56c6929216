"""Marginals, posteriors, SDEs and the probability-flow ODE of a `Process`.

For x_t = alpha(t) x_0 + sigma(t) eps the forward SDE is
  dx = f(t) x dt + g(t) dw                       (Song et al. 2021, eq. 5)
its reverse is
  dx = [f(t) x - g(t)^2 score(x, t)] dt + g(t) dw_bar          (eq. 6)
and the probability-flow ODE with the same marginals is
  dx/dt = f(t) x - 1/2 g(t)^2 score(x, t)                      (eq. 13).
Between two times s < t, x_t | x_s ~ N(alpha_{t|s} x_s, sigma_{t|s}^2 I) with
alpha_{t|s} = alpha_t / alpha_s and sigma_{t|s}^2 = sigma_t^2 - alpha_{t|s}^2
sigma_s^2, and the posterior q(x_s | x_t, x_0) is Gaussian (Kingma et al.
2021, eq. 30-33; Ho et al. 2020, eq. 6-7 is the case s = t - 1/T of a DDPM).

Times are scalars or per-example vectors [B]; x is [B, ...].
"""

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.schedules import Process


def per_example(c, x):
  """Reshapes a scalar or per-example [B] coefficient to broadcast against x [B, ...]."""
  c = jnp.asarray(c)
  if c.ndim == 0:
    return c
  if c.ndim != 1 or c.shape[0] != x.shape[0]:
    raise ValueError(f"shape mismatch: time/coefficient of shape {c.shape} for x of shape "
                     f"{x.shape}; expected a scalar or shape ({x.shape[0]},)")
  return c.reshape(c.shape + (1,) * (x.ndim - 1))


def q_sample(process: Process, x0, t, eps):
  """x_t = alpha(t) x_0 + sigma(t) eps, one-shot noising (Ho et al. eq. 4)."""
  process.check_time(t)
  return per_example(process.alpha(t), x0) * x0 + per_example(process.sigma(t), x0) * eps


def transition(process: Process, t, s):
  """(alpha_{t|s}, sigma_{t|s}^2) of q(x_t | x_s) for s <= t."""
  alpha_ts = process.alpha(t) / process.alpha(s)
  sigma2_ts = process.sigma2(t) - alpha_ts**2 * process.sigma2(s)
  return alpha_ts, jnp.maximum(sigma2_ts, 0.0)  # >= 0 up to rounding.


def posterior(process: Process, x_t, x0, t, s):
  """Mean and variance of q(x_s | x_t, x_0) for s < t.

  mean = alpha_s sigma_{t|s}^2 / sigma_t^2 x_0 + alpha_{t|s} sigma_s^2 / sigma_t^2 x_t,
  var  = sigma_{t|s}^2 sigma_s^2 / sigma_t^2   (beta-tilde in Ho et al.).

  Returns:
    mean [B, ...] and variance (scalar or broadcastable to x).
  """
  process.check_time(t)
  process.check_time(s, "s")
  alpha_ts, sigma2_ts = transition(process, t, s)
  sigma2_t, sigma2_s = process.sigma2(t), process.sigma2(s)
  coef_x0 = process.alpha(s) * sigma2_ts / sigma2_t
  coef_xt = alpha_ts * sigma2_s / sigma2_t
  mean = per_example(coef_x0, x_t) * x0 + per_example(coef_xt, x_t) * x_t
  return mean, per_example(sigma2_ts * sigma2_s / sigma2_t, x_t)


def drift_diffusion(process: Process, x, t):
  """Forward SDE: drift f(t) x [B, ...] and diffusion g(t) (scalar or [B])."""
  return per_example(process.f(t), x) * x, jnp.sqrt(process.g2(t))


def reverse_sde_drift(process: Process, x, t, score):
  """f(t) x - g(t)^2 score: drift of the reverse-time SDE (Song et al. eq. 6)."""
  return per_example(process.f(t), x) * x - per_example(process.g2(t), x) * score


def pf_ode_drift(process: Process, x, t, score):
  """f(t) x - g(t)^2 score / 2: the probability-flow ODE (Song et al. eq. 13)."""
  return per_example(process.f(t), x) * x - 0.5 * per_example(process.g2(t), x) * score


def prior_sample(process: Process, key, shape):
  """x_T ~ N(0, sigma(t_max)^2 I)."""
  return process.prior_std() * jax.random.normal(key, shape)


def prior_log_prob(process: Process, x):
  """log N(x; 0, sigma(t_max)^2 I) summed over all but the batch axis: [B]."""
  std = process.prior_std()
  log_density = -0.5 * (x / std) ** 2 - np.log(std) - 0.5 * np.log(2 * np.pi)
  return jnp.sum(log_density.reshape(x.shape[0], -1), axis=-1)
