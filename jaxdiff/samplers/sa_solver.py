"""SA-Solver, the stochastic Adams predictor-corrector (Xue et al. 2023), any process.

Xue, Yi, Xu, Zhang, Chen, Zhang, Zhang, Li & Ma 2023, "SA-Solver: Stochastic
Adams Solver for Fast Sampling of Diffusion Models" (NeurIPS), sec. 4-5, in
data prediction. The family of reverse SDEs with noise scale tau(t) (eq. 6;
tau = 0 the probability-flow ODE, tau = 1 the reverse SDE) has, in DPM-Solver's
half log-SNR lambda = log(alpha / sigma) = process.log_snr / 2, the exact
solution from t to s < t, h = lambda_s - lambda_t > 0, c = 1 + tau^2 (eq. 11):
  x_s = sigma_s / sigma_t e^{-tau^2 h} x_t
        + c alpha_s int_0^h e^{-c v} x0(lambda_s - v) dv
        + sigma_s sqrt(1 - e^{-2 tau^2 h}) z.
The SA-Predictor (Alg. 1, eq. 13) replaces x0 by the polynomial in lambda
through the network's x0 at the last p grid times (Adams-Bashforth); the
SA-Corrector (eq. 15) retakes the same step once the network has been called
at the predicted point, with the polynomial through that output and the last
c - 1 before it (Adams-Moulton), the same z. In w = v / h with the nodes u_j
= (lambda_s - lambda_j) / h, both read
  x_s = sigma_s / sigma_t e^{-tau^2 h} x_t + alpha_s (1 - e^{-c h}) m_t
        + c alpha_s h sum_{j != t} W_j(c h) (m_j - m_t) + noise,
W_j the Lagrange weights of `deis.exponential_weights` and m_t the x0 at the
step's start. tau(t) = tau inside `tau_interval` and 0 outside, the reference
code's and diffusers' tau_func (there on training steps 200..800, i.e. t in
[0.2, 0.8] on a 1000-step DDPM); a step uses tau at its start time, and the
corrector the tau of the step it retakes.

As in the references (diffusers `SASolverScheduler`, which this module
matches): the output at the predicted point, before correction, enters the
history (the corrector costs no call; NFE = N); the last step is not
corrected; a two-node polynomial (predictor or corrector of order 2) gets
W_1 -= (1/2 - W(c h) + I_1(c h)) / r, r = u_1 - u_0, an O(h^3) change that
gives the mean of the two outputs weight 1/2 like UniPC's rho = 1/2; the
predictor at step i uses p_i = min(p, i + 1) nodes and the corrector of the
step into t_i c_i = min(c, i + 1), with lower_order_final also p_i <= N - i
and c_i <= N - i + 2. Orders with tau = 0: predictor p, corrector c, the
two together min(p + 1, c).

Infinite h (into sigma = 0, or out of alpha = 0 at flow matching's t = 1):
the step is first order, its limit x_s = alpha_s m_t + sigma_s (e^{-tau^2 h}
x_t / sigma_t + sqrt(...) z), which is alpha_0 x0_hat at sigma = 0; such a
step is not corrected and a time with alpha = 0 never enters a later step's
nodes. The last step adds no noise (`base.normal`), as diffusers' default tau
gives near t = 0.
"""

import jax.numpy as jnp

from jaxdiff.samplers import base
from jaxdiff.samplers.deis import exponential_moments, exponential_weights, num_usable

ORDERS = (1, 2, 3, 4)


def _tau(options, t):
  """tau(t): tau inside tau_interval, 0 outside (scalar)."""
  low, high = options["tau_interval"]
  return jnp.where((t >= low) & (t <= high), options["tau"], 0.0)


def _update(process, x_t, t, s, tau, nodes_lambda, ms, k, start, z):
  """x_s from x_t: the start term, the Adams sum over k nodes, the noise.

  Args:
    nodes_lambda: [P] lambdas of the outputs ms [P, B, ...]; ms[start] is the
      output at t itself (start 0 for the predictor, 1 for the corrector,
      whose ms[0] is the output at s).
    k: traced int, the nodes used (<= P); 1 where h is infinite.
  """
  lambda_t, lambda_s = 0.5 * process.log_snr(t), 0.5 * process.log_snr(s)
  sigma_t, alpha_s, sigma_s = process.sigma(t), process.alpha(s), process.sigma(s)
  h = lambda_s - lambda_t
  finite = jnp.isfinite(h)
  c = 1.0 + tau**2
  h_safe = jnp.where(finite, h, 1.0)
  # The exact linear part and the noise, finite for h = inf (tau^2 h = 0 where tau = 0).
  tau2_h = jnp.where(tau == 0.0, 0.0, tau**2 * h)
  decay = jnp.where(sigma_s == 0.0, 0.0, sigma_s / sigma_t * jnp.exp(-tau2_h))
  x_s = decay * x_t + alpha_s * -jnp.expm1(-c * h) * ms[start]
  x_s = x_s + sigma_s * jnp.sqrt(-jnp.expm1(-2.0 * tau2_h)) * z
  num = ms.shape[0]
  if num == 1:
    return x_s
  k = jnp.where(finite, k, 1)
  used = jnp.arange(num) < k
  spare = 3.0 + jnp.arange(num, dtype=jnp.float32)  # Distinct, for unused nodes.
  nodes = jnp.where(used, (lambda_s - nodes_lambda) / h_safe, spare)  # [P]
  weights = exponential_weights(nodes, c * h_safe, k)  # [P]
  # Two nodes: the references' O(h^3) change of the second weight.
  moments = exponential_moments(c * h_safe, 2)
  shift = (0.5 - moments[0] + moments[1]) / (nodes[1] - nodes[0])
  weights = weights.at[1].add(jnp.where(k == 2, -shift, 0.0))
  weights = weights.at[0].add(jnp.where(k == 2, shift, 0.0))
  weights = jnp.where(jnp.arange(num) == start, 0.0, weights)  # m_t is in the start term.
  adams = jnp.tensordot(weights, ms - ms[start], axes=1)  # [B, ...]
  return x_s + c * alpha_s * h_safe * adams


def init(ctx: base.Context, x_T):
  """The history of x0 outputs [M, B, ...] (newest first, M = max(p, c - 1)) at
  lambdas [M] (-inf: none yet), the last corrected point [B, ...], its time
  and the noise of the step taken from it [B, ...]."""
  size = max(ctx.options["predictor_order"], ctx.options["corrector_order"] - 1)
  return (jnp.zeros((size,) + x_T.shape, x_T.dtype), jnp.full((size,), -jnp.inf, jnp.float32),
          x_T, ctx.grid[0], jnp.zeros_like(x_T))


def step(ctx: base.Context, state, x_t, inputs: base.Inputs):
  """One call at t; SA-Corrector of the step into t; SA-Predictor from t to s."""
  process, options, n = ctx.process, ctx.options, ctx.num_steps
  p, c = options["predictor_order"], options["corrector_order"]
  ms, lambdas, x_prev, t_prev, z_prev = state
  t, s = inputs.t, inputs.s
  m_t, _ = ctx.denoise(x_t, t)
  lambda_t = 0.5 * process.log_snr(t)
  usable = num_usable(lambdas)  # Outputs before t that the polynomials may use.

  # SA-Corrector of the step t_prev -> t: nodes t, t_prev, ... (skipped at i = 0).
  k_corr = jnp.minimum(c, 1 + usable)
  if options["lower_order_final"]:
    k_corr = jnp.minimum(k_corr, n - inputs.i + 2)
  ms_corr = jnp.concatenate([m_t[None], ms[:c - 1]])
  lambdas_corr = jnp.concatenate([lambda_t[None], lambdas[:c - 1]])
  start = 1 if c > 1 else 0  # ms_corr[1] is the output at t_prev; c = 1 uses m_t alone.
  x_corr = _update(process, x_prev, t_prev, t, _tau(options, t_prev), lambdas_corr, ms_corr,
                   k_corr, start, z_prev)
  correct = (usable > 0) & jnp.isfinite(lambda_t - lambdas[0])
  x_t = jnp.where(correct, x_corr, x_t)

  # SA-Predictor from t to s: nodes t, then the history.
  ms = jnp.concatenate([m_t[None], ms[:-1]])
  lambdas = jnp.concatenate([lambda_t[None], lambdas[:-1]])
  k_pred = jnp.clip(num_usable(lambdas), 1, p)  # 0 at alpha = 0, where h is infinite.
  if options["lower_order_final"]:
    k_pred = jnp.minimum(k_pred, n - inputs.i)
  z = base.normal(inputs, x_t)
  x_s = _update(process, x_t, t, s, _tau(options, t), lambdas[:p], ms[:p], k_pred, 0, z)
  return (ms, lambdas, x_t, t, z), x_s


def _check_interval(interval) -> bool:
  return (len(interval) == 2 and all(isinstance(v, (int, float)) for v in interval)
          and interval[0] <= interval[1])


def _order(options) -> int:
  p, c = options["predictor_order"], options["corrector_order"]
  return min(p + 1, c)


sa_solver = base.Sampler(
    name="sa_solver", init=init, step=step,
    options={
        "predictor_order": base.Option(2, (int,), "p, the x0 values the predictor's polynomial "
                                       "interpolates", choices=ORDERS),
        "corrector_order": base.Option(2, (int,), "c, the x0 values the corrector's polynomial "
                                       "interpolates, the new one included", choices=ORDERS),
        "tau": base.Option(1.0, (int, float), "the noise scale inside tau_interval (0: the "
                           "probability-flow ODE, 1: the reverse SDE)",
                           check=lambda tau: tau >= 0.0, rule=">= 0"),
        "tau_interval": base.Option((0.2, 0.8), (tuple,), "the times (t_low, t_high) where "
                                    "tau applies; tau(t) = 0 outside",
                                    check=_check_interval, rule="a pair (t_low, t_high) of "
                                    "numbers with t_low <= t_high"),
        "lower_order_final": base.Option(True, (bool,), "step i predicts with at most N - i "
                                         "nodes and corrects with at most N - i + 2"),
    },
    order=_order,
    stochastic=lambda options: options["tau"] != 0)
