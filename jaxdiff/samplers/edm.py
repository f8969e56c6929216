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

import jax.numpy as jnp

from jaxdiff.samplers import base


def init(ctx: base.Context, x_T):
  """x_tilde = x_T / alpha(grid[0]), the variable Alg. 2 integrates, carried across steps."""
  return x_T / ctx.process.alpha(ctx.grid[0])


def step(ctx: base.Context, x_cur, x_t, inputs: base.Inputs):
  """Churn, Euler, and Heun's correction unless sigma_tilde at s is 0: x_tilde and x at s.

  x_t = alpha(t) x_cur is not read: x_tilde is carried as the state, so that the
  arithmetic is Alg. 2's.
  """
  del x_t
  process, options, t_cur, t_next = ctx.process, ctx.options, inputs.t, inputs.s
  s_churn, s_min, s_max, s_noise = (options[name] for name in ("s_churn", "s_min", "s_max",
                                                               "s_noise"))
  # Of the whole grid, then indexed: XLA's scalar exp rounds apart from its vector one,
  # and Alg. 2's sigma_tilde_i are one vector.
  sigma_tilde = process.noise_to_signal(ctx.grid)  # [N + 1]
  sigma_cur, sigma_next = sigma_tilde[inputs.i], sigma_tilde[inputs.i + 1]

  def d(x_tilde, t):
    """dx_tilde / dsigma_tilde = eps_hat, from one network call at x = alpha(t) x_tilde."""
    return ctx.denoise(process.alpha(t) * x_tilde, t)[1]

  # Churn: raise the noise level to sigma_hat = (1 + gamma) sigma_cur (on every
  # step in [S_min, S_max], the last one included, as in Alg. 2).
  in_range = (s_min <= sigma_cur) & (sigma_cur <= s_max)
  gamma = jnp.where(in_range, jnp.minimum(s_churn / ctx.num_steps, math.sqrt(2.0) - 1.0), 0.0)
  sigma_hat = sigma_cur * (1.0 + gamma)
  z = (jnp.zeros_like(x_cur) if inputs.key is None  # No churn: z is unused.
       else base.standard_normal(inputs.key, x_cur))
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

  x_next = ctx.cond(sigma_next > 0, heun, lambda x: x, x_next).astype(x_cur.dtype)
  return x_next, process.alpha(t_next) * x_next


def _nfe(num_steps: int, ends_at_zero: bool, options) -> int:
  """2N, less the correction skipped on a last step into sigma = 0."""
  del options
  return 2 * num_steps - int(ends_at_zero)


def _no_churn(options) -> bool:
  return base.concrete_zero(options["s_churn"])


def _non_negative(value) -> bool:
  return value >= 0


edm_heun = base.Sampler(
    name="edm_heun", init=init, step=step,
    options={
        "s_churn": base.Option(0.0, (int, float), "Karras's S_churn; 0 is deterministic",
                               check=_non_negative, rule=">= 0", traced=True),
        "s_min": base.Option(0.0, (int, float), "S_tmin, the lowest sigma_tilde_i churned",
                             traced=True),
        "s_max": base.Option(math.inf, (int, float), "S_tmax, the highest sigma_tilde_i "
                             "churned", traced=True),
        "s_noise": base.Option(1.0, (int, float), "S_noise, the churn noise's scale",
                               traced=True),
    },
    # Heun's 2; with churn the weak order 1 of its noise injection (a first-order splitting).
    order=lambda options: 2 if _no_churn(options) else 1,
    stochastic=lambda options: not _no_churn(options),
    nfe=_nfe)
