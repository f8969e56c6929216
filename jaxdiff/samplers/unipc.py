"""UniPC, the unified predictor-corrector sampler (Zhao et al. 2023), any process.

Zhao, Bai, Rao, Zhou & Lu 2023, "UniPC: A Unified Predictor-Corrector
Framework for Fast Sampling of Diffusion Models" (sec. 3, Alg. 1-3). It
integrates the probability-flow ODE in DPM-Solver's half log-SNR lambda =
log(alpha / sigma) = process.log_snr / 2 (half of jaxdiff's lam) from its exact
solution (DPM-Solver eq. 3.4 with the noise prediction, DPM-Solver++ sec. 4
with the data prediction). A step goes from s to t < s, h = lambda_t -
lambda_s > 0. With the data prediction m = x0_hat (predict_x0), hh = -h:
  x_t = sigma_t / sigma_s x_s - alpha_t expm1(hh) m_0
        - alpha_t B(hh) sum_k rho_k D_k,            D_k = (m_k - m_0) / r_k,
and with the noise prediction m = eps_hat, hh = h, the same with (sigma, alpha)
swapped. m_0 is the model output at s, m_k (k = 1..p-1) earlier outputs, at
r_k = (lambda_k - lambda_s) / h < 0. The first two terms are DDIM. B(h) is h
("bh1") or e^h - 1 ("bh2"), the paper's two choices.
  UniP-p, the predictor (Corollary 3.2: order p): rho_1..rho_{p-1} solve
    sum_k rho_k r_k^(i-1) = i! hh phi_{i+1}(hh) / B(hh),  i = 1..p-1,
    phi_k the exponential-integrator functions, phi_1(x) = expm1(x) / x.
  UniC-p, the corrector (Theorem 3.1: order p + 1): once the network has been
    called at the predicted x_t, the step from s is taken again with one more
    term, the output m_t at t itself (r = 1, D = m_t - m_0), and i = 1..p.
As in the references (wl-zhao/UniPC `multistep_uni_pc_bh_update`, diffusers
`UniPCMultistepScheduler`), UniP-2 takes rho_1 = 1/2 and UniC-1 rho_t = 1/2,
the h -> 0 limits, which keep the orders (so bh1 and bh2 differ only in
steps taken by UniP-2 or UniC-1: elsewhere B(hh) rho does not depend on B);
m_t, taken at the uncorrected x_t, stays in the history, so the corrector
costs no network call; no corrector follows the last step, so NFE = N. Step i
runs at order min(order, i + 1) (the multistep warm-up), and with
lower_order_final at min(., N - i) too (the references' default, which
steadies few-step sampling; its order-1 last step has a local error O(h^2),
small when that step is at low noise, where the data prediction hardly
changes with lambda).

The order declared in the registry is p + 1 with the corrector and p without,
as the references claim and as measured with lower_order_final off. With it on
(the default), the order-1 last step caps the asymptotic global order at 2,
but its constant is small enough that the cap does not show at usable N: on
the oracle's VP log-SNR grid ending at t_min, N = 16 -> 48 -> 144, the
measured rates are 1.9-2.0 (UniPC-1), 2.9-3.0 (UniPC-2) and 3.3-3.5 (UniPC-3).

Infinite h. At the end t = 0 (sigma = 0, lambda = +inf: the default grids'
last point) the exact x_0 is alpha_0 times the limit of the data prediction as
lambda -> +inf, which any extrapolating polynomial of degree >= 1 sends to
infinity (each D_k divides by r_k -> 0). So a step with an infinite h is taken
at order 1 whatever lower_order_final says; its limit is DDIM's last step x_0
= alpha_0 x0_hat, with the noise prediction's sigma_t expm1(h) evaluated as
alpha_t sigma_s / alpha_s - sigma_t. A start at alpha = 0 (lambda = -inf, flow
matching from t = 1) is likewise an order-1 step, without corrector, and that
point never enters a later step's history; it needs the data prediction (with
predict_x0=False, alpha_t / alpha_s is infinite there).
"""

import functools
import math

import jax.numpy as jnp

from jaxdiff.samplers import base
from jaxdiff.schedules import Process

VARIANTS = ("bh1", "bh2")
ORDERS = (1, 2, 3)


def _phi(x, num):
  """[phi_1(x), ..., phi_num(x)], phi_k(x) = sum_{j >= 0} x^j / (j + k)!, scalars.

  The recursion phi_{k+1} = (phi_k - 1 / k!) / x loses ~|x|^-k of float32's
  precision for small |x|; there the Taylor series (12 terms, error < 1e-9
  for |x| < 1) is used instead.
  """
  small = jnp.abs(x) < 1.0
  x_big = jnp.where(small, 1.0, x)  # Keeps the unused branch finite.
  phi, recursion = jnp.expm1(x_big) / x_big, []
  for k in range(1, num + 1):
    recursion.append(phi)
    phi = (phi - 1.0 / math.factorial(k)) / x_big
  series = []
  for k in range(1, num + 1):
    terms = 12
    value = jnp.full_like(x, 1.0 / math.factorial(terms - 1 + k))
    for j in range(terms - 2, -1, -1):  # Horner.
      value = value * x + 1.0 / math.factorial(j + k)
    series.append(value)
  return [jnp.where(small, s, r) for s, r in zip(series, recursion)]


def _solve_leading(r, b, k):
  """rho [n] with sum_j rho_j r_j^i = b_i for i, j < k, and rho_j = 0 for j >= k.

  The k x k system (k traced, <= n <= 3) is padded to n x n with the identity
  so that the step's order can vary inside the scan, and solved by unrolled
  elimination: its leading minors are Vandermonde determinants of distinct
  nodes, nonzero, so no pivoting is needed.
  """
  n = r.shape[0]
  active = jnp.arange(n) < k  # [n]
  rows, power = [], jnp.ones_like(r)
  for i in range(n):
    rows.append([jnp.where(active[i] & active[j], power[j], float(i == j)) for j in range(n)])
    power = power * r
  rhs = [jnp.where(active[i], b[i], 0.0) for i in range(n)]
  for p in range(n):  # Forward elimination.
    for i in range(p + 1, n):
      factor = rows[i][p] / rows[p][p]
      rows[i] = [a - factor * c for a, c in zip(rows[i], rows[p])]
      rhs[i] = rhs[i] - factor * rhs[p]
  rho = [None] * n
  for i in reversed(range(n)):  # Back substitution.
    rho[i] = (rhs[i] - sum(rows[i][j] * rho[j] for j in range(i + 1, n))) / rows[i][i]
  return jnp.stack(rho)


def _uni_step(process: Process, x_s, t_s, t, lambda_s, lambda_t, m_0, m_hist, lambda_hist, order_k,
              m_t=None, *, predict_x0: bool, variant: str):
  """UniP-k from (x_s, s) to t, or UniC-k when m_t, the output at t, is given.

  Args:
    x_s: [B, ...] the point at s; t_s, t, lambda_s, lambda_t: scalars.
    m_0: [B, ...] the model output at s; m_hist [P - 1, B, ...] earlier ones,
      newest first, at half log-SNRs lambda_hist [P - 1] (P the sampler's order).
    order_k: traced int in 1..P, the step's order before the checks below.
    m_t: [B, ...] or None.

  Returns:
    x at t [B, ...].
  """
  alpha_s, sigma_s, alpha_t, sigma_t = (
      f(u) for u in (t_s, t) for f in (process.alpha, process.sigma))
  # a multiplies x, c the model output: data prediction (a, c) = (sigma, alpha).
  a_s, a_t, c_s, c_t = ((sigma_s, sigma_t, alpha_s, alpha_t) if predict_x0 else
                        (alpha_s, alpha_t, sigma_s, sigma_t))
  h = lambda_t - lambda_s
  finite = jnp.isfinite(h)  # False at sigma_t = 0 or alpha_s = 0.
  hh = jnp.where(finite, -h if predict_x0 else h, 1.0)

  # Order 1 (DDIM): c_t expm1(hh) = a_t c_s / a_s - c_t, that form in the limit.
  c_expm1 = jnp.where(finite, c_t * jnp.expm1(hh), a_t * c_s / a_s - c_t)
  x_t = (a_t / a_s) * x_s - c_expm1 * m_0
  num_hist = m_hist.shape[0]
  if num_hist == 0 and m_t is None:
    return x_t

  # History usable at this order: finite lambda, newest first; none if h is infinite.
  usable = jnp.cumprod((jnp.arange(num_hist) < order_k - 1) & jnp.isfinite(lambda_hist)) > 0
  num_used = jnp.where(finite, jnp.sum(usable), 0)  # = k - 1 after the checks.
  r = jnp.where(usable, (lambda_hist - lambda_s) / jnp.where(finite, h, 1.0), -1.0)  # [P - 1]

  # b_i = i! hh phi_{i+1}(hh) / B(hh), i = 1..P, with B = hh or expm1(hh) = hh phi_1.
  phis = _phi(hh, num_hist + 2)
  b = jnp.stack([math.factorial(i) * phis[i] for i in range(1, num_hist + 2)])
  if variant == "bh2":
    b = b / phis[0]
  big_b = hh if variant == "bh1" else jnp.expm1(hh)

  if m_t is None:  # UniP: unknowns rho_1..rho_{k-1}; UniP-2 takes rho_1 = 1/2.
    rho_hist = _solve_leading(r, b[:num_hist], num_used)
    rho_hist = jnp.where(num_used == 1, jnp.zeros_like(rho_hist).at[0].set(0.5), rho_hist)
    correction = 0.0
  else:  # UniC: unknowns (rho_t, rho_1..rho_{k-1}) at (1, r_1..); UniC-1 takes rho_t = 1/2.
    rho = _solve_leading(jnp.concatenate([jnp.ones((1,), r.dtype), r]), b, num_used + 1)
    rho = jnp.where(num_used == 0, jnp.zeros_like(rho).at[0].set(0.5), rho)
    rho_hist, correction = rho[1:], rho[0] * (m_t - m_0)

  # sum_k rho_k D_k over the used history, weights rho_k / r_k: [P - 1].
  weights = jnp.where(jnp.arange(num_hist) < num_used, rho_hist / r, 0.0)
  residual = jnp.tensordot(weights, m_hist - m_0, axes=1) + correction
  return x_t - c_t * big_b * residual


def _step_order(i, num_steps: int, order: int, lower_order_final: bool):
  """The order of step i (traced int32; 0 for i < 0): the warm-up and the final ramp."""
  step_order = jnp.minimum(order, i + 1)
  if lower_order_final:
    step_order = jnp.minimum(step_order, num_steps - i)
  return step_order


def init(ctx: base.Context, x_T):
  """(x_prev, ms, lambdas): the corrected point at the previous grid time (x_T
  before the first step), and the model outputs ms [P, B, ...] at half
  log-SNRs lambdas [P], newest first (zeros until the warm-up fills them)."""
  order = ctx.options["order"]
  return x_T, jnp.zeros((order,) + x_T.shape, x_T.dtype), jnp.zeros((order,), jnp.float32)


def step(ctx: base.Context, state, x_t, inputs: base.Inputs):
  """One call at t = grid[i]: UniC on the step grid[i - 1] -> t, then UniP from t to s.

  x_t is the predicted (uncorrected) point at t; the corrector takes the step
  from grid[i - 1] again with the output at x_t, and that output stays in the
  history, so the corrector costs no call.
  """
  x_prev, ms, lambdas = state
  process, options, i, t, s = ctx.process, ctx.options, inputs.i, inputs.t, inputs.s
  half_log_snr = lambda u: 0.5 * process.log_snr(u)  # DPM-Solver's lambda.
  update = functools.partial(_uni_step, process, predict_x0=options["predict_x0"],
                             variant=options["variant"])
  order_of = functools.partial(_step_order, num_steps=ctx.num_steps, order=options["order"],
                               lower_order_final=options["lower_order_final"])
  lambda_t = half_log_snr(t)
  x0, eps = ctx.denoise(x_t, t)
  m = x0 if options["predict_x0"] else eps  # [B, ...]

  # UniC on the step t_{i-1} -> t_i with m_i, at that step's order (0: no step before).
  if options["corrector"]:
    t_prev = ctx.grid[jnp.maximum(i - 1, 0)]
    order_corr = order_of(i - 1)
    x_corr = update(x_prev, t_prev, t, lambdas[0], lambda_t, ms[0], ms[1:], lambdas[1:],
                    order_corr, m_t=m)
    apply = (order_corr > 0) & jnp.isfinite(lambda_t - lambdas[0])
    x_t = jnp.where(apply, x_corr, x_t).astype(x_t.dtype)

  # Shift the history, then UniP from t_i to t_{i+1}.
  ms = jnp.concatenate([m[None], ms[:-1]])
  lambdas = jnp.concatenate([lambda_t[None], lambdas[:-1]])
  x_s = update(x_t, t, s, lambda_t, half_log_snr(s), ms[0], ms[1:], lambdas[1:], order_of(i))
  return (x_t, ms, lambdas), x_s.astype(x_t.dtype)


def _order(options) -> int:
  """UniP-p: p; UniPC-p: p + 1, lower_order_final or not (see the module docstring)."""
  return options["order"] + options["corrector"]


unipc = base.Sampler(
    name="unipc", init=init, step=step,
    options={
        "order": base.Option(2, (int,), "p, the predictor's order (UniC raises it by one)",
                             choices=ORDERS),
        "variant": base.Option("bh2", (str,), "B(h): bh1 = h, bh2 = e^h - 1", choices=VARIANTS),
        "predict_x0": base.Option(True, (bool,), "integrate the data prediction (else the "
                                  "noise prediction)"),
        "corrector": base.Option(True, (bool,), "UniC after every step but the last (no "
                                 "extra call)"),
        "lower_order_final": base.Option(True, (bool,), "step i runs at order <= N - i "
                                         "(order 1 on the last)"),
    },
    order=_order, stochastic=lambda options: False)
