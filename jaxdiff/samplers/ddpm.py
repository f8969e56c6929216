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
from jaxdiff.samplers import loop
from jaxdiff.schedules import Process

VARIANCES = ("beta_tilde", "beta")


def ddpm(denoise_fn, process: Process, x_T, key, grid, *, prediction: str = "eps",
         cond=None, variance: str = "beta_tilde", clip_x0: bool = False):
  """Ancestral sampling from grid[0] to grid[-1].

  Args:
    denoise_fn: (x [B, ...], t [B], cond) -> network output of type `prediction`.
    process: the forward process.
    x_T: [B, ...] sample at grid[0].
    key: PRNG key for the per-step noise.
    grid: [N + 1] strictly decreasing times (see `jaxdiff.grids`).
    prediction: one of parameterization.PREDICTIONS.
    cond: passed to denoise_fn unchanged.
    variance: "beta_tilde" (posterior) or "beta" (transition) step variance.
    clip_x0: clip the predicted x0 to [-1, 1].

  Returns:
    x_0 [B, ...] at grid[-1], and info {"nfe": int32}.
  """
  if variance not in VARIANCES:
    raise ValueError(f"unknown variance {variance!r}; valid: {list(VARIANCES)}")
  loop.require_key(key, "ddpm")

  def update(x_t, x0, eps, t, s, z):
    del eps
    mean, var = sde.posterior(process, x_t, x0, t, s)  # [B, ...], scalar
    if variance == "beta":
      var = sde.transition(process, t, s)[1]
    return mean + jnp.sqrt(var) * z

  return loop.sample_loop(update, denoise_fn, process, x_T, key, grid, prediction=prediction,
                          cond=cond, clip_x0=clip_x0)


ddpm_num_steps = loop.one_call_per_step  # One network call per grid step.
