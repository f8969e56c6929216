"""Ancestral DDPM sampling (Ho et al. 2020, Alg. 2 and eq. 6-7), any process.

Each step from t to s < t draws x_s ~ N(mu(x_t, x0_hat), var I), with mu the
mean of the posterior q(x_s | x_t, x_0 = x0_hat) (`sde.posterior`) and
  "beta_tilde":  var = sigma_{t|s}^2 sigma_s^2 / sigma_t^2, the posterior
                 variance (Ho et al. eq. 7, "fixedsmall");
  "beta":        var = sigma_{t|s}^2, the forward transition variance
                 (Ho et al. sec. 3.2, sigma_t^2 = beta_t, "fixedlarge").
On a sub-sequence of the training steps the betas are those the grid implies,
1 - alpha_t^2 / alpha_s^2, as in Nichol & Dhariwal 2021's respacing (sec. 4).
The last step adds no noise (Alg. 2, line 3).
"""

import jax.numpy as jnp

from jaxdiff import sde
from jaxdiff.samplers import base

VARIANCES = ("beta_tilde", "beta")


def step(ctx: base.Context, state, x_t, inputs: base.Inputs):
  """One call at t, then x_s ~ N(posterior mean, var)."""
  process, t, s = ctx.process, inputs.t, inputs.s
  x0, _ = ctx.denoise(x_t, t)
  mean, var = sde.posterior(process, x_t, x0, t, s)  # [B, ...], scalar
  if ctx.options["variance"] == "beta":
    var = sde.transition(process, t, s)[1]
  return state, mean + jnp.sqrt(var) * base.normal(inputs, x_t)


ddpm = base.Sampler(
    name="ddpm", init=base.no_state, step=step,
    options={"variance": base.Option("beta_tilde", (str,), "the step variance: posterior "
                                     "(beta_tilde) or transition (beta)", choices=VARIANCES)},
    order=lambda options: 1, stochastic=lambda options: True)
