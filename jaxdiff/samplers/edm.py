"""The EDM sampler (Karras et al. 2022, "Elucidating the Design Space of
Diffusion-Based Generative Models", Alg. 2), any process.

Karras et al. eq. 4 writes x = s(t) x_tilde with x_tilde = x0 + sigma_tilde eps;
with s(t) = alpha(t) the scaled variables are
  sigma_tilde = sigma / alpha = exp(-lam / 2),   x_tilde = x / alpha,
and the probability-flow ODE becomes dx_tilde / dsigma_tilde = eps_hat(x_tilde;
sigma_tilde) = (x_tilde - D(x_tilde; sigma_tilde)) / sigma_tilde, the ODE of
Alg. 2 (eq. 1 with sigma(t) = t, the score from D by eq. 3). Step i, from
sigma_tilde_i to sigma_tilde_{i+1}:
  churn   gamma_i = min(S_churn / N, sqrt(2) - 1) if S_min <= sigma_tilde_i <= S_max else 0,
          sigma_hat = (1 + gamma_i) sigma_tilde_i,
          x_hat = x_tilde_i + sqrt(sigma_hat^2 - sigma_tilde_i^2) S_noise z,
          and the network sees time t_hat = t_from_log_snr(-2 log sigma_hat);
  Euler   x_tilde_{i+1} = x_hat + (sigma_tilde_{i+1} - sigma_hat) d_i,   d_i = eps_hat at sigma_hat;
  Heun    if sigma_tilde_{i+1} != 0: x_tilde_{i+1} = x_hat + (sigma_tilde_{i+1} - sigma_hat)
          (d_i + d'_i) / 2, d'_i = eps_hat of the Euler point at sigma_tilde_{i+1}.
The correction is skipped where the target noise level is 0, as in Alg. 2 and
k-diffusion's sample_heun (EDM's generate.py skips it on the last step only),
so a grid ending at t = 0 costs NFE = 2N - 1 (Karras's 18 steps: 35) and one
ending at sigma > 0 (e.g. `make_grid(...)[:-1]`, or a VE grid: sigma(0) =
sigma_min) costs 2N. For alpha = 1 (EDM, VE) x_tilde = x and this is Alg. 2
exactly. The Euler step alone is DDIM (eta = 0).

Requirements: alpha(grid[0]) > 0 (flow matching cannot start at t = 1, where
sigma_tilde is infinite), and with churn t_hat may lie beyond grid[0]: it must
stay in a range where the process's alpha and sigma are meaningful (VP, VE, EDM
extend past t_max; a DiscreteDDPM clamps at t = 1, so keep s_max below its
sigma_tilde(1) there). Karras's table 5 uses S_min = 0.01-0.05, S_max = 1-50.
"""

import math

import jax
import jax.numpy as jnp

from jaxdiff.samplers import loop
from jaxdiff.schedules import Process


def edm_heun(denoise_fn, process: Process, x_T, key, grid, *, prediction: str = "eps",
             cond=None, clip_x0: bool = False, s_churn=0.0, s_min=0.0, s_max=math.inf,
             s_noise=1.0):
  """Karras et al. Alg. 2 (Heun, optional churn) from grid[0] to grid[-1].

  Args:
    denoise_fn: (x [B, ...], t [B], cond) -> network output of type `prediction`.
    process: the forward process.
    x_T: [B, ...] sample at grid[0].
    key: PRNG key; step i draws its churn noise from fold_in(key, i). May be
      None when s_churn = 0.
    grid: [N + 1] strictly decreasing times (see `jaxdiff.grids`; "karras" is
      eq. 5 in sigma_tilde).
    prediction, cond, clip_x0: as for the other samplers.
    s_churn, s_min, s_max, s_noise: Karras's S_churn, S_tmin, S_tmax (bounds
      on sigma_tilde_i) and S_noise; s_churn = 0 is deterministic. May be traced.

  Returns:
    x_0 [B, ...] at grid[-1], and info {"nfe": int32 (2N - 1 when the grid ends
    at sigma = 0, else 2N), "nonfinite_step": int32}.
  """
  if isinstance(s_churn, (int, float)) and not s_churn >= 0:
    raise ValueError(f"s_churn must be >= 0, got {s_churn!r}")
  if not (isinstance(s_churn, (int, float)) and s_churn == 0):
    loop.require_key(key, f"edm_heun with s_churn = {s_churn!r} (not a concrete 0)")
  grid = loop.check_inputs(x_T, grid, process)
  denoise = loop.denoiser(denoise_fn, process, prediction, clip_x0)
  num_steps = grid.shape[0] - 1
  sigma_tilde = process.noise_to_signal(grid)  # [N + 1]

  def d(x_tilde, t):
    """dx_tilde / dsigma_tilde = eps_hat, from one network call at x = alpha(t) x_tilde."""
    return denoise(process.alpha(t) * x_tilde, t, cond)[1]

  def step(carry, inputs):
    x_cur, nfe = carry  # x_tilde_i [B, ...]
    i, t_cur, t_next, sigma_cur, sigma_next = inputs
    # Churn: raise the noise level to sigma_hat = (1 + gamma) sigma_cur.
    in_range = (s_min <= sigma_cur) & (sigma_cur <= s_max)
    gamma = jnp.where(in_range, jnp.minimum(s_churn / num_steps, math.sqrt(2.0) - 1.0), 0.0)
    sigma_hat = sigma_cur * (1.0 + gamma)
    z = (jnp.zeros_like(x_cur) if key is None  # No churn: z is unused.
         else jax.random.normal(jax.random.fold_in(key, i), x_cur.shape, x_cur.dtype))
    # sqrt(sigma_hat^2 - sigma_cur^2), free of cancellation.
    x_hat = x_cur + sigma_cur * jnp.sqrt(gamma * (2.0 + gamma)) * s_noise * z
    t_hat = jnp.where(gamma > 0, process.t_from_noise_to_signal(sigma_hat), t_cur)
    # Euler step from sigma_hat to sigma_next.
    h = sigma_next - sigma_hat
    d_cur = d(x_hat, t_hat)
    x_next = x_hat + h * d_cur

    # Heun correction unless sigma_next = 0.
    def heun(x_next):
      return x_hat + h * (0.5 * d_cur + 0.5 * d(x_next, t_next))

    correct = sigma_next > 0
    x_next = jax.lax.cond(correct, heun, lambda x: x, x_next).astype(x_cur.dtype)
    return (x_next, nfe + 1 + correct.astype(jnp.int32)), loop.all_finite(x_next)

  steps = (jnp.arange(num_steps), grid[:-1], grid[1:], sigma_tilde[:-1], sigma_tilde[1:])
  x_tilde_T = x_T / process.alpha(grid[0])
  (x_tilde, nfe), finite = jax.lax.scan(step, (x_tilde_T, jnp.int32(0)), steps)
  x = (process.alpha(grid[-1]) * x_tilde).astype(x_T.dtype)
  return x, {"nfe": nfe, "nonfinite_step": loop.first_nonfinite_step(finite)}


def edm_heun_num_steps(nfe: int, *, final_euler: bool = True, **sampler_options) -> int:
  """Grid length N for `edm_heun`: NFE = 2N - 1, or 2N with final_euler=False.

  final_euler: the grid ends at sigma = 0 (t = 0 for every process here but
  VE), so the last step is Euler; False for grids ending at sigma > 0. Other
  sampler options (s_churn, ...) do not change the NFE and are ignored.
  """
  del sampler_options
  nfe = loop.one_call_per_step(nfe)  # Checks that nfe is a positive integer.
  extra = 1 if final_euler else 0  # NFE = 2N - extra
  if (nfe + extra) % 2:
    rule = "odd NFE = 2N - 1 (grid ending at sigma = 0)" if final_euler else (
        "even NFE = 2N (grid ending at sigma > 0)")
    nearest = " or ".join(f"{n} (N = {(n + extra) // 2})" for n in (nfe - 1, nfe + 1)
                          if (n + extra) // 2 >= 1)
    raise ValueError(f"edm_heun meets only {rule}; nfe={nfe} is not one, nearest: {nearest}")
  return (nfe + extra) // 2
