"""DPM-Solver++(3M) SDE: the third-order multistep solver of the reverse SDE in data
prediction (Lu et al. 2022b, "DPM-Solver++", sec. 4 and its appendix; Gonzalez et al.
and k-diffusion's `sample_dpmpp_3m_sde`, which this follows), any process.

Time variable: lambda = log(alpha / sigma) = process.log_snr / 2, as in `dpm_solver`;
a step goes from t to s < t with h = lambda_s - lambda_t > 0. With eta in [0, 1]
interpolating between the probability-flow ODE (eta = 0) and the reverse SDE
(eta = 1), the exact solution from t to s in data prediction is
  x_s = sigma_s / sigma_t e^{-eta h} x_t
        + alpha_s int_0^h (1 + eta) e^{-(1 + eta)(h - u)} x0(lambda_t + u) du
        + sigma_s sqrt(1 - e^{-2 eta h}) z,
the ODE's with h replaced by H = (1 + eta) h in the weights. Expanding x0 in
Taylor terms D_k ~ h^k d^k x0 / dlambda^k gives, with phi = 1 - e^{-H},
  x_s = alpha_s x0_t + sigma_s (e^{-eta h} eps_t + sqrt(1 - e^{-2 eta h}) S_noise z)
        + alpha_s (c_1 D_1 + c_2 D_2),   c_1 = 1 - phi / H,  c_2 = 1/2 - c_1 / H,
(the bracket is DDIM with c^2 = 1 - e^{-2 eta h} of sigma_s^2; in k-diffusion's
variables x / alpha and sigma / alpha it reads e^{-H} x + phi x0, its phi_2 = c_1,
phi_3 = -c_2). From the history (x0_t, x0_1, x0_2) at (lambda_t, lambda_1,
lambda_2), r_0 = (lambda_t - lambda_1) / h, r_1 = (lambda_1 - lambda_2) / h:
  D1_0 = (x0_t - x0_1) / r_0,  D1_1 = (x0_1 - x0_2) / r_1,
  order 3: D_1 = D1_0 + r_0 / (r_0 + r_1) (D1_0 - D1_1),  D_2 = (D1_0 - D1_1) / (r_0 + r_1);
  order 2: D_1 = D1_0, D_2 = 0;  order 1: D_1 = D_2 = 0.
D_2 is k-diffusion's (and the official 3M's): half the Taylor term h^2 x0'' (see
`dpm_solver`'s note on 3M), so with eta = 0 this is a second-order ODE solver.
The first two steps warm up with orders 1 and 2 (history only at finite lambda:
none at the start, nor one taken at alpha = 0, flow matching's t = 1).

The end at sigma = 0 (lambda = +inf, h = inf): as in `dpm_solver_sde`, the step
there is first order, x_s = alpha_s x0_t -- k-diffusion's final "denoising step"
x = denoised exactly, and one call like every step. On a grid ending at
sigma > 0 (the reference solvers' convention) the last step is third order and
adds no noise (`base.normal`'s mask of every ancestral sampler), where k-diffusion
would add sigma_min-sized noise. Step i draws z from fold_in(key, i).

Order: 2 for eta = 0 (above). For eta > 0 the history x0_1, x0_2 lies on a
Brownian path, so D1_0 carries O(sqrt(h)) noise and only the first-order
(DDIM-like, exact-noise) part is consistent at higher order: weak order 1 is
what is declared (not shown to be higher).
"""

import jax.numpy as jnp

from jaxdiff.samplers import base
from jaxdiff.samplers.dpm_solver import _lambda  # lambda = log(alpha / sigma) = lam / 2


def init(ctx: base.Context, x_T):
  """History (x0_1, x0_2) [B, ...] at (lambda_1, lambda_2); an empty slot has lambda = -inf."""
  del ctx
  zeros, empty = jnp.zeros_like(x_T), jnp.float32(-jnp.inf)
  return zeros, zeros, empty, empty


def step(ctx: base.Context, state, x_t, inputs: base.Inputs):
  """One call at t; the third-order multistep update (lower orders while warming up,
  first order into sigma = 0)."""
  process, eta, t, s = ctx.process, ctx.options["eta"], inputs.t, inputs.s
  x0_1, x0_2, lambda_1, lambda_2 = state
  x0, eps = ctx.denoise(x_t, t)
  lambda_t, lambda_s = _lambda(process, t), _lambda(process, s)
  h = lambda_s - lambda_t
  finite = jnp.isfinite(h)

  # First order: DDIM with the SDE's noise (exact for x0 constant in lambda).
  z = 0.0 if inputs.key is None else base.normal(inputs, x_t) * ctx.options["s_noise"]
  eta_h = jnp.where(eta > 0, eta * h, 0.0)  # 0 where eta = 0, also at h = inf.
  noise_std = jnp.sqrt(-jnp.expm1(-2.0 * eta_h))  # sqrt(1 - e^{-2 eta h})
  x_s = process.alpha(s) * x0 + process.sigma(s) * (jnp.exp(-eta_h) * eps + noise_std * z)

  # Warm-up and the step into sigma = 0 lower the order; unused slots and h = inf are
  # replaced before dividing, so neither values nor gradients hold inf or NaN.
  order = jnp.where(finite, 1 + jnp.isfinite(lambda_1).astype(jnp.int32)
                    + jnp.isfinite(lambda_2).astype(jnp.int32), 1)
  h_safe = jnp.where(finite, h, 1.0)
  big_h = (1.0 + eta) * h_safe  # H
  c1 = 1.0 + jnp.expm1(-big_h) / big_h  # 1 - phi / H
  c2 = 0.5 - c1 / big_h
  r0 = jnp.where(order >= 2, lambda_t - lambda_1, 1.0) / h_safe
  r1 = jnp.where(order >= 3, lambda_1 - lambda_2, 1.0) / h_safe
  d1_0 = (x0 - x0_1) / r0
  d1_1 = (x0_1 - x0_2) / r1
  d1 = jnp.where(order >= 3, d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1), d1_0)
  d2 = (d1_0 - d1_1) / (r0 + r1)  # Half of h^2 x0'': k-diffusion's weight.
  correction = (jnp.where(order >= 2, c1, 0.0) * d1 + jnp.where(order >= 3, c2, 0.0) * d2)
  x_s = x_s + process.alpha(s) * correction
  return (x0, x0_1, lambda_t, lambda_1), x_s


dpm_solver_3m_sde = base.Sampler(
    name="dpm_solver_3m_sde", init=init, step=step,
    options={
        "eta": base.Option(1.0, (int, float), "0: the probability-flow ODE, 1: the reverse SDE",
                           check=lambda eta: eta >= 0, rule=">= 0", traced=True),
        "s_noise": base.Option(1.0, (int, float), "scale of the injected noise",
                               check=lambda v: v >= 0, rule=">= 0"),
    },
    order=lambda options: 2 if base.concrete_zero(options["eta"]) else 1,
    stochastic=lambda options: not base.concrete_zero(options["eta"]))
