"""DEIS, the multistep exponential integrator (Zhang & Chen 2023), any process.

Zhang & Chen 2023, "Fast Sampling of Diffusion Models with Exponential
Integrator" (ICLR), sec. 3-4. The probability-flow ODE of x_t = alpha_t x_0 +
sigma_t eps, written in rho = sigma / alpha, is d(x / alpha) / d rho = eps
(eq. 6-8: its linear part solved exactly, the exponential integrator). With
DPM-Solver's half log-SNR lambda = log(alpha / sigma) = process.log_snr / 2
(rho = e^{-lambda}), a step from t to s < t, h = lambda_s - lambda_t > 0, is
exactly
  x_s = alpha_s / alpha_t x_t - sigma_s int_0^h e^v eps(lambda_s - v) dv.
AB-DEIS (eq. 14-15) replaces eps by the polynomial through the network's eps
at the last k grid times (the current one and k - 1 earlier ones, an Adams-
Bashforth extrapolation) and integrates each Lagrange basis polynomial against
the exponential weight exactly. The polynomial's variable is log rho (=
-lambda): diffusers' DEISMultistepScheduler ("log-rho multistep deis", the
reference this module matches), the DEIS paper's rhoAB-DEIS with log rho for
rho. In w = v / h in [0, 1], the eps at lambda_j sits at the node
u_j = (lambda_s - lambda_j) / h (u_0 = 1 for the current time, u_j > 1 before)
and
  x_s = alpha_s x0_t + sigma_s eps_t
        - sigma_s h sum_{j >= 1} W_j(-h) (eps_j - eps_t),
  W_j(a) = int_0^1 e^{-a w} l_j(w) dw,  l_j the Lagrange basis of the nodes,
(the k = 1 term, sum_j W_j = int e^{-aw}, is written as DDIM, alpha_s x0_t +
sigma_s eps_t, DEIS-1). k nodes give a local error O(h^{k+1}): global order k.

Steps. Step i uses k = min(order, i + 1) nodes (the multistep warm-up), and
with lower_order_final on grids of fewer than 15 steps at most N - i (the
last step first order, the one before at most second), as diffusers does.

The end at sigma = 0 (lambda = +inf, h infinite: the default grids' last
point): log rho is -inf there and the extrapolating polynomial has no limit,
so a step with an infinite h is first order whatever the options: DDIM's
x_0 = alpha_0 x0_hat, the references' "denoise to zero" (as dpm_solver and
unipc do). A start at alpha = 0 (flow matching's t = 1, lambda = -inf) is
likewise a first-order step, and that time never enters a later step's
nodes. NFE = N on either kind of grid end.

`exponential_weights` (the W_j for any a) is shared with SA-Solver
(`sa_solver.py`), whose steps are the same Lagrange integrals against
e^{-(1 + tau^2) v}.
"""

import math

import jax.numpy as jnp

from jaxdiff.samplers import base

ORDERS = (1, 2, 3)
# lower_order_final applies to grids with fewer steps than this (diffusers' DEIS).
LOWER_ORDER_FINAL_STEPS = 15


def exponential_moments(a, num: int):
  """[I_0(a), ..., I_{num-1}(a)], I_m(a) = int_0^1 e^{-a w} w^m dw, for scalar a.

  The recursion I_m = (m I_{m-1} - e^{-a}) / a multiplies the error of I_0 by
  m! / |a|^m, so for |a| < 1 the Taylor series (16 terms, error < |a|^16 / 16!)
  is used instead.
  """
  small = jnp.abs(a) < 1.0
  a_big = jnp.where(small, 1.0, a)  # Keeps the unused branch finite.
  moment, recursion = -jnp.expm1(-a_big) / a_big, []
  for m in range(num):
    recursion.append(moment)
    moment = ((m + 1) * moment - jnp.exp(-a_big)) / a_big
  series = []
  for m in range(num):  # sum_j (-a)^j / (j! (m + j + 1)), Horner.
    terms = 16
    value = jnp.full_like(a, 1.0 / (math.factorial(terms - 1) * (m + terms)))
    for j in range(terms - 2, -1, -1):
      value = value * (-a) + 1.0 / (math.factorial(j) * (m + j + 1))
    series.append(value)
  return [jnp.where(small, s, r) for s, r in zip(series, recursion)]


def exponential_weights(nodes, a, k):
  """W [P]: W_j = int_0^1 e^{-a w} l_j(w) dw for j < k, 0 for j >= k.

  l_j is the Lagrange basis polynomial of the first k nodes (l_j(u_i) =
  [i = j]). k is traced (1 <= k <= P, the step's order inside the scan): the
  weights of every k are formed (scalars, cheap) and the one asked for kept.

  Args:
    nodes: [P] distinct normalized times u_j (scalars; entries j >= k unused).
    a: scalar, the exponential rate in w.
    k: int, traced or not, the number of nodes used.
  """
  num = nodes.shape[0]
  moments = exponential_moments(a, num)
  by_order = []
  for order in range(1, num + 1):
    weights = []
    for j in range(order):
      poly = [1.0]  # Coefficients of l_j in powers of w.
      for i in range(order):
        if i == j:
          continue
        scale = nodes[j] - nodes[i]
        shifted = [0.0] + poly  # w * poly
        poly = [(hi - nodes[i] * lo) / scale for hi, lo in zip(shifted, poly + [0.0])]
      weights.append(sum(c * moments[m] for m, c in enumerate(poly)))
    by_order.append(jnp.stack(weights + [jnp.zeros_like(a)] * (num - order)))
  return jnp.stack(by_order)[k - 1]


def num_usable(lambdas):
  """How many leading entries of a history's lambdas [P] are finite (newest first).

  A history starts filled with -inf, so this is also the multistep warm-up; a
  time with alpha = 0 (lambda = -inf) ends the usable history there.
  """
  return jnp.sum(jnp.cumprod(jnp.isfinite(lambdas)))


def init(ctx: base.Context, x_T):
  """eps history [P - 1, B, ...] (newest first) and its lambdas [P - 1], all -inf."""
  size = ctx.options["order"] - 1
  return jnp.zeros((size,) + x_T.shape, x_T.dtype), jnp.full((size,), -jnp.inf, jnp.float32)


def step(ctx: base.Context, state, x_t, inputs: base.Inputs):
  """One call at t, then AB-DEIS with k nodes from t to s."""
  process, order = ctx.process, ctx.options["order"]
  eps_hist, lambda_hist = state  # [P - 1, B, ...], [P - 1]
  t, s = inputs.t, inputs.s
  x0, eps = ctx.denoise(x_t, t)
  lambda_t, lambda_s = 0.5 * process.log_snr(t), 0.5 * process.log_snr(s)
  h = lambda_s - lambda_t
  finite = jnp.isfinite(h)  # False into sigma = 0 or out of alpha = 0.

  # DEIS-1 (DDIM), finite at both ends.
  x_s = process.alpha(s) * x0 + process.sigma(s) * eps
  if order > 1:
    k = jnp.minimum(order, 1 + num_usable(lambda_hist))
    if ctx.options["lower_order_final"] and ctx.num_steps < LOWER_ORDER_FINAL_STEPS:
      k = jnp.minimum(k, ctx.num_steps - inputs.i)
    k = jnp.where(finite, k, 1)
    h_safe = jnp.where(finite, h, 1.0)
    spare = 2.0 + jnp.arange(order - 1, dtype=jnp.float32)  # Distinct, for unused nodes.
    usable = jnp.arange(order - 1) < k - 1
    u_hist = jnp.where(usable, (lambda_s - lambda_hist) / h_safe, spare)  # [P - 1]
    weights = exponential_weights(jnp.concatenate([jnp.ones((1,)), u_hist]), -h_safe, k)
    correction = jnp.tensordot(weights[1:], eps_hist - eps, axes=1)  # [B, ...]
    x_s = x_s - process.sigma(s) * h_safe * correction
    eps_hist = jnp.concatenate([eps[None], eps_hist[:-1]])
    lambda_hist = jnp.concatenate([lambda_t[None], lambda_hist[:-1]])
  return (eps_hist, lambda_hist), x_s


deis = base.Sampler(
    name="deis", init=init, step=step,
    options={
        "order": base.Option(2, (int,), "k, the number of eps values the polynomial "
                             "interpolates (global order k)", choices=ORDERS),
        "lower_order_final": base.Option(True, (bool,), "below 15 steps, step i uses at most "
                                         "N - i nodes (diffusers' default)"),
    },
    order=lambda options: options["order"],
    stochastic=lambda options: False)
