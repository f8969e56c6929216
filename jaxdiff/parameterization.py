"""Conversions between what a network predicts, for any process.

With x_t = alpha x_0 + sigma eps (alpha, sigma at time t, primes d/dt):
  eps       the noise (Ho et al. 2020)
  x0        the clean data
  v         alpha eps - sigma x_0 (Salimans & Ho 2022, sec. 4); for processes
            with alpha^2 + sigma^2 != 1 the inverse below divides by it
  score     grad log p_t(x_t) = -eps / sigma (Tweedie; Song et al. 2021)
  velocity  dx_t/dt = alpha' x_0 + sigma' eps, the flow-matching target
            (Lipman et al. 2023); it is also the probability-flow ODE drift
            (see `sde.pf_ode_drift`: f x - g^2 score / 2 reduces to it).
Every prediction is turned into the pair (x0, eps), which any other can be
built from. A prediction cannot be inverted where its coefficient vanishes:
x0 from eps at alpha = 0, eps from x0 at sigma = 0.

EDM preconditioning (Karras et al. 2022, "Elucidating the Design Space...",
Table 1 and eq. 7) wraps a raw network F into an x0 prediction,
  D(x~; s) = c_skip(s) x~ + c_out(s) F(c_in(s) x~; c_noise(s)),
  c_skip = sd^2 / (s^2 + sd^2), c_out = s sd / sqrt(s^2 + sd^2),
  c_in = 1 / sqrt(s^2 + sd^2), c_noise = log(s) / 4,
written for any process in its scaled variables x~ = x / alpha and s =
sigma / alpha (their eq. 4 with s(t) = alpha(t)); for alpha = 1 (EDM, VE) it is
their formula. sd = sigma_data = 0.5 for data in [-1, 1]. Its loss weight
lambda(s) = (s^2 + sd^2) / (s sd)^2 on the x0 error makes the effective
target of F unit-variance at every noise level (eq. 8 and app. B.6).
"""

import jax.numpy as jnp


from jaxdiff.schedules import Process
from jaxdiff.sde import per_example


def _coefficients(process: Process, t, x, prediction):
  """alpha, sigma, alpha', sigma' at t, shaped to broadcast against x.

  Only the velocity needs the derivatives; elsewhere they are None.
  """
  derivatives = (process.d_alpha(t), process.d_sigma(t)) if prediction == "velocity" else ()
  coefficients = (process.alpha(t), process.sigma(t), *derivatives)
  return tuple(per_example(c, x) for c in coefficients) + (None,) * (2 - len(derivatives))


def _from_eps(out, x, a, s, da, ds):
  return (x - s * out) / a, out


def _from_x0(out, x, a, s, da, ds):
  return out, (x - a * out) / s


def _from_v(out, x, a, s, da, ds):
  norm = a**2 + s**2
  return (a * x - s * out) / norm, (s * x + a * out) / norm


def _from_score(out, x, a, s, da, ds):
  eps = -s * out
  return (x - s * eps) / a, eps


def _from_velocity(out, x, a, s, da, ds):
  det = a * ds - s * da  # Solves [a s; a' s'] [x0; eps] = [x; out].
  return (ds * x - s * out) / det, (a * out - da * x) / det


_TO_X0_EPS = {
    "eps": _from_eps,
    "x0": _from_x0,
    "v": _from_v,
    "score": _from_score,
    "velocity": _from_velocity,
}

_FROM_X0_EPS = {
    "eps": lambda x0, eps, a, s, da, ds: eps,
    "x0": lambda x0, eps, a, s, da, ds: x0,
    "v": lambda x0, eps, a, s, da, ds: a * eps - s * x0,
    "score": lambda x0, eps, a, s, da, ds: -eps / s,
    "velocity": lambda x0, eps, a, s, da, ds: da * x0 + ds * eps,
}

PREDICTIONS = tuple(_TO_X0_EPS)


def _check(prediction):
  if prediction not in _TO_X0_EPS:
    raise ValueError(f"unknown prediction type {prediction!r}; valid: {list(PREDICTIONS)}")


def to_x0_eps(process: Process, prediction: str, output, x_t, t):
  """(x0, eps) [B, ...] implied by a network output of the given type at (x_t, t)."""
  _check(prediction)
  return _TO_X0_EPS[prediction](output, x_t, *_coefficients(process, t, x_t, prediction))


def from_x0_eps(process: Process, prediction: str, x0, eps, t):
  """The quantity of the given type for x_t = alpha x0 + sigma eps: [B, ...]."""
  _check(prediction)
  return _FROM_X0_EPS[prediction](x0, eps, *_coefficients(process, t, x0, prediction))


def convert(process: Process, output, x_t, t, source: str, target: str):
  """Re-expresses a `source`-type prediction at (x_t, t) as a `target`-type one."""
  x0, eps = to_x0_eps(process, source, output, x_t, t)
  return from_x0_eps(process, target, x0, eps, t)


def x0_eps_fn(denoise_fn, process: Process, prediction: str):
  """Wraps denoise_fn(x, t, cond) -> prediction into (x, t, cond) -> (x0, eps)."""
  _check(prediction)

  def fn(x, t, cond=None):
    return to_x0_eps(process, prediction, denoise_fn(x, t, cond), x, t)

  return fn


EDM_SIGMA_DATA = 0.5  # Karras et al. 2022: the std of data scaled to [-1, 1].


def edm_preconditioned(network_fn, process: Process, sigma_data: float = EDM_SIGMA_DATA):
  """Wraps a raw network F(x_in, c_noise [B], cond) into the x0 prediction D (Table 1).

  Returns:
    (x_t [B, ...], t [B], cond) -> x0_hat [B, ...]: a "x0" prediction for samplers
    and losses.
  """

  def fn(x, t, cond=None):
    alpha = per_example(process.alpha(t), x)
    s = process.noise_to_signal(t)  # [B]
    s_x = per_example(s, x)
    x_tilde = x / alpha
    norm = jnp.sqrt(s_x**2 + sigma_data**2)
    out = network_fn(x_tilde / norm, edm_c_noise(process, t), cond)
    return sigma_data**2 / norm**2 * x_tilde + s_x * sigma_data / norm * out

  return fn


def edm_c_noise(process: Process, t):
  """The time the preconditioned network is told: c_noise = ln(sigma / alpha) / 4 [B]."""
  return jnp.log(process.noise_to_signal(t)) / 4.0


def edm_loss_weight(process: Process, t, sigma_data: float = EDM_SIGMA_DATA):
  """lambda = (s^2 + sd^2) / (s sd)^2, s = sigma / alpha: [B], for the x0 error (eq. 8)."""
  s2 = jnp.square(process.noise_to_signal(t))
  return (s2 + sigma_data**2) / (s2 * sigma_data**2)
