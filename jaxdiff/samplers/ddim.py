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
from jaxdiff.samplers import loop
from jaxdiff.schedules import Process


def ddim(denoise_fn, process: Process, x_T, key, grid, *, prediction: str = "eps",
         cond=None, eta=0.0, clip_x0: bool = False):
  """DDIM from grid[0] to grid[-1].

  Args:
    denoise_fn: (x [B, ...], t [B], cond) -> network output of type `prediction`.
    process: the forward process.
    x_T: [B, ...] sample at grid[0].
    key: PRNG key for the per-step noise; may be None when eta = 0.
    grid: [N + 1] strictly decreasing times (see `jaxdiff.grids`).
    prediction: one of parameterization.PREDICTIONS.
    cond: passed to denoise_fn unchanged.
    eta: noise scale in [0, 1]; may be traced.
    clip_x0: clip the predicted x0 to [-1, 1].

  Returns:
    x_0 [B, ...] at grid[-1], and info {"nfe": int32}.
  """
  if isinstance(eta, (int, float)) and not 0.0 <= eta <= 1.0:
    raise ValueError(f"eta must lie in [0, 1], got {eta!r}")
  if key is None and not (isinstance(eta, (int, float)) and eta == 0):
    loop.require_key(key, f"ddim with eta = {eta!r} (not a concrete 0)")

  def update(x_t, x0, eps, t, s, z):
    del x_t
    alpha_ts, sigma2_ts = sde.transition(process, t, s)  # scalars
    sigma2_t, sigma_s = process.sigma2(t), process.sigma(s)
    # sigma_s is factored out of both square roots, free of cancellation
    # (sigma_t^2 - sigma_{t|s}^2 = alpha_{t|s}^2 sigma_s^2), and so that the
    # gradient in t stays finite where s = 0 (grids.learned differentiates it).
    c = eta * sigma_s * jnp.sqrt(sigma2_ts / sigma2_t)  # c^2: eta^2 x posterior variance
    direction = sigma_s * jnp.sqrt((1.0 - eta**2) + eta**2 * alpha_ts**2 * sigma_s**2 / sigma2_t)
    return process.alpha(s) * x0 + direction * eps + c * z

  return loop.sample_loop(update, denoise_fn, process, x_T, key, grid, prediction=prediction,
                          cond=cond, clip_x0=clip_x0)


ddim_num_steps = loop.one_call_per_step  # One network call per grid step.
