"""DDIM sampling (Song, Meng & Ermon 2021, eq. 12 and 16), any process.

For x_t = alpha_t x_0 + sigma_t eps, one step from t to s < t is
  x_s = alpha_s x0_hat + sqrt(sigma_s^2 - c^2) eps_hat + c z,
  c   = eta sigma_s / sigma_t sqrt(sigma_t^2 - (alpha_t / alpha_s)^2 sigma_s^2),
i.e. c^2 = eta^2 times the posterior variance sigma_{t|s}^2 sigma_s^2 / sigma_t^2
(for VP, eq. 16: eta sqrt((1 - abar_s) / (1 - abar_t)) sqrt(1 - abar_t / abar_s)).
eta = 0 is deterministic, the first-order exponential integrator of the
probability-flow ODE (Lu et al. 2022, DPM-Solver-1); eta = 1 is ancestral
DDPM with the posterior variance (see `ddpm`). The last step adds no noise.
"""

import jax.numpy as jnp

from jaxdiff import sde
from jaxdiff.samplers import base


def step(ctx: base.Context, state, x_t, inputs: base.Inputs):
  """One call at t, then x_s = alpha_s x0_hat + sqrt(sigma_s^2 - c^2) eps_hat + c z."""
  process, eta, t, s = ctx.process, ctx.options["eta"], inputs.t, inputs.s
  x0, eps = ctx.denoise(x_t, t)
  alpha_ts, sigma2_ts = sde.transition(process, t, s)  # scalars
  sigma2_t, sigma_s = process.sigma2(t), process.sigma(s)
  # sigma_s is factored out of both square roots, free of cancellation
  # (sigma_t^2 - sigma_{t|s}^2 = alpha_{t|s}^2 sigma_s^2), and so that the
  # gradient in t stays finite where s = 0 (grids.learned differentiates it).
  c = eta * sigma_s * jnp.sqrt(sigma2_ts / sigma2_t)  # c^2: eta^2 x posterior variance
  direction = sigma_s * jnp.sqrt((1.0 - eta**2) + eta**2 * alpha_ts**2 * sigma_s**2 / sigma2_t)
  x_s = process.alpha(s) * x0 + direction * eps
  if inputs.key is not None:
    x_s = x_s + c * base.normal(inputs, x_t)
  return state, x_s


ddim = base.Sampler(
    name="ddim", init=base.no_state, step=step,
    options={"eta": base.Option(0.0, (int, float), "noise scale: 0 deterministic, 1 DDPM",
                                check=lambda eta: 0.0 <= eta <= 1.0, rule="in [0, 1]",
                                traced=True)},
    order=lambda options: 1,
    stochastic=lambda options: not base.concrete_zero(options["eta"]))
