"""DPM-Solver and DPM-Solver++: exponential integrators of the probability-flow ODE.

Lu et al. 2022a, "DPM-Solver: A Fast ODE Solver for Diffusion Probabilistic
Model Sampling in Around 10 Steps" (NeurIPS), and Lu et al. 2022b,
"DPM-Solver++: Fast Solver for Guided Sampling of Diffusion Probabilistic
Models", for any process x_t = alpha_t x_0 + sigma_t eps.

Time variable. lambda = log(alpha / sigma) = process.log_snr / 2 (DPM-Solver's
lambda, half of jaxdiff's lam). As in the papers a step goes from s to t < s
(from t_{i-1} to t_i), h = lambda_t - lambda_s > 0; `base.Inputs` names the
same pair the other way round (inputs.t is where the step starts), so each step
reads s, t = inputs.t, inputs.s.

Exact solutions of the PF-ODE from s to t:
  noise prediction, "dpmsolver" (DPM-Solver eq. 3.4):
    x_t = alpha_t / alpha_s x_s - alpha_t int_{lambda_s}^{lambda_t} e^{-lambda} eps(lambda) dlambda
  data prediction, "dpmsolver++" (DPM-Solver++ sec. 4):
    x_t = sigma_t / sigma_s x_s + sigma_t int_{lambda_s}^{lambda_t} e^{lambda} x0(lambda) dlambda.
With g the model (eps or x0) and its Taylor expansion g(lambda_s + u) =
sum_k (u / h)^k / k! D_k, D_k ~ h^k d^k g / dlambda^k (DPM-Solver eq. 3.5), both read
  x_t = [alpha_t x0_s + sigma_t eps_s] + B (c_1 D_1 + c_2 D_2),
where the bracket is the k = 0 term: DPM-Solver-1 (eq. 3.7) and DPM-Solver++'s
first-order update, both DDIM with eta = 0, written through the pair
(x0, eps) predicted at s (sigma_t (e^h - 1) = alpha_t sigma_s / alpha_s (1 - e^{-h})
turns eq. 3.7 into it). With phi = 1 - e^{-h} = -expm1(-h):
  "dpmsolver++":  B = alpha_t,                    c_1 = 1 - phi / h,      c_2 = 1/2 - c_1 / h
  "dpmsolver":    B = -alpha_t sigma_s / alpha_s, c_1 = phi / h - e^{-h}, c_2 = c_1 / h - e^{-h}/2
(c_k is the integral of the weight e^{-(h - u)} resp. e^{-u} against (u / h)^k / k!;
B c_0 with c_0 = phi is the model's coefficient in the first-order update.)

Methods (the "dpmsolver" correction types of the reference code):
  singlestep order 2  DPM-Solver-2 (Alg. 1) / DPM-Solver++(2S) (Alg. 1), r_1 = 1/2:
                      u = first-order step to s_1, lambda_{s_1} = lambda_s + r_1 h;
                      x_t = first-order + B c_0 / (2 r_1) (g(u, s_1) - g_s).
  singlestep order 3  DPM-Solver-3 (Alg. 2) and its data-prediction analogue,
                      r_1 = 1/3, r_2 = 2/3: u_2 = first-order step to s_2
                      + B_2 c_1(r_2 h) r_2 / r_1 (g(u_1, s_1) - g_s);
                      x_t = first-order + B c_1 / r_2 (g(u_2, s_2) - g_s).
  multistep order 2   DPM-Solver++(2M) (Alg. 2) / multistep DPM-Solver-2:
                      x_t = first-order + B c_0 / 2 D1_0, D1_0 = (g_0 - g_1) / r_0,
                      r_0 = h_0 / h with h_0 the previous step.
  multistep order 3   3M (DPM-Solver++ appendix): D1_0, D1_1 = (g_1 - g_2) / r_1,
                      D_1 = D1_0 + r_0 / (r_0 + r_1) (D1_0 - D1_1),
                      D_2 = w (D1_0 - D1_1) / (r_0 + r_1),
                      x_t = first-order + B (c_1 D_1 + c_2 D_2).
The first multistep steps warm up with lower orders: step i uses the model
values it has, none at the start (nor one taken at alpha = 0, flow's t = 1).
Intermediate singlestep times are process.t_from_log_snr(2 lambda); the
differences use the lambda of the time actually evaluated.

The weight w of 3M's second difference (option `weight_3m`). D_2 estimates
h^2 g'' only with w = 2 ("taylor": the Taylor expansion above, exactly).
The official code (LuChengTHU/dpm-solver), diffusers' DPMSolverMultistepScheduler
and k-diffusion's sample_dpmpp_3m_sde use w = 1 ("reference"): with
c_2 = h / 6 + O(h^2) the g'' term then carries half its weight, a local error
O(h^3) and a method of global order 2. Measured on the oracle (VP, log-SNR
grid to t_min, max error against a float64 PF-ODE solution, slopes from 32 to
128 steps; tests/test_dpm_solver.py): "taylor" 2.98 (dpmsolver++) and 2.99
(dpmsolver); "reference" 2.35 and 2.17, tending to 2 (2.09 and 2.06 from 128
to 256 steps). "reference" is the default all the same: at the step counts people
sample with (10-20), against exact solutions of held-out mixtures, it was the
more accurate in 10 of 16 cells (issue 24) -- where a step is much longer
than the previous ones (r_0 << 1, e.g. the last steps of a uniform-in-t grid)
the correct, larger g'' term also extrapolates further -- and the published
numbers of DPM-Solver++ are for it. Samplers declare 3M's order as the one it
converges with: 2 for "reference", 3 for "taylor".

The end t = 0 (sigma = 0, lambda = +inf). Every update is written so that its
first-order part is finite there: x_t -> alpha_0 x0_s, the references'
"denoise to zero". The higher-order limits do not exist (D_1 ~ h g' extrapolates
the Taylor polynomial to lambda = +inf, and singlestep intermediate times
would themselves be t = 0), so a step with infinite h -- into sigma_t = 0, or
out of alpha_s = 0 as flow matching's t = 1 -- is always first order: one
network call for singlestep, whatever the order (the NFE rule counts the step
into sigma = 0; a grid starting at alpha = 0 saves order - 1 calls more, which
info["nfe"] counts). `lower_order_final` (multistep and SDE only, as in the
references) additionally lowers the last steps to order min(order, steps left)
when the grid has fewer than 10 steps.

SDE-DPM-Solver++ (`dpm_solver_sde`; Lu et al. 2022b and diffusers'
"sde-dpmsolver++"): the exact solution of the reverse SDE in data prediction,
  x_t = sigma_t / sigma_s e^{-h} x_s + 2 alpha_t int e^{-2 (lambda_t - lambda)} x0 dlambda
        + sigma_t sqrt(1 - e^{-2h}) z,
gives at first order x_t = alpha_t x0_s + sigma_t (e^{-h} eps_s + sqrt(1 - e^{-2h}) z)
-- DDPM with the posterior variance (DDIM eta = 1) -- and at second order
(2M, midpoint) adds alpha_t (1 - e^{-2h}) / 2 D1_0. Both are declared weak
order 1: 2M extrapolates x0 along a path with Brownian increments of size
sqrt(h), and no higher order is claimed for it (none is measured here).

Dynamic thresholding (Saharia et al. 2022, "Imagen", sec. 2.3, which
DPM-Solver++ pairs with data prediction): s = max(quantile(|x0|, ratio), max_threshold) per
example and x0 <- clip(x0, -s, s) max_threshold / s, into [-max, max]; eps is
recomputed from the thresholded x0. At max_threshold = 1 this is Imagen's and
the reference code's rule exactly.
"""

import jax.numpy as jnp

from jaxdiff import parameterization, sde
from jaxdiff.samplers import base
from jaxdiff.schedules import Process

ALGORITHMS = ("dpmsolver", "dpmsolver++")
METHODS = ("singlestep", "multistep")
WEIGHTS_3M = ("reference", "taylor")
# The weight w of 3M's D_2 (see the module docstring); multiplying by 1 is exact.
D2_WEIGHT = {"reference": 1.0, "taylor": 2.0}
# lambda fractions of the intermediate times of singlestep DPM-Solver-2 and -3.
SINGLESTEP_R = {2: (1.0 / 2.0,), 3: (1.0 / 3.0, 2.0 / 3.0)}
# lower_order_final applies to grids with fewer steps than this (DPM-Solver's sampler).
LOWER_ORDER_FINAL_STEPS = 10


def _lambda(process: Process, t):
  """DPM-Solver's lambda = log(alpha / sigma) = lam / 2; +inf where sigma = 0."""
  return 0.5 * process.log_snr(t)


def _first_order(process: Process, x0, eps, t):
  """DPM-Solver-1 = DPM-Solver++ first order = DDIM: alpha_t x0 + sigma_t eps."""
  return process.alpha(t) * x0 + process.sigma(t) * eps


def _expansion(process: Process, algorithm: str, s, t):
  """(h, B, c_0, c_1, c_2) of the step s -> t (scalars; see the module docstring).

  Finite for finite h; callers use only the first-order update where h = inf.
  """
  h = _lambda(process, t) - _lambda(process, s)
  phi = -jnp.expm1(-h)  # 1 - e^{-h}
  if algorithm == "dpmsolver++":
    b = process.alpha(t)
    c1 = 1.0 - phi / h
    c2 = 0.5 - c1 / h
  else:
    b = -process.alpha(t) * process.sigma(s) / process.alpha(s)
    c1 = phi / h - jnp.exp(-h)
    c2 = c1 / h - 0.5 * jnp.exp(-h)
  return h, b, phi, c1, c2


def dynamic_threshold(x0, ratio: float = 0.995, max_threshold: float = 1.0):
  """Imagen's dynamic thresholding, into [-max_threshold, max_threshold].

  Args:
    x0: [B, ...] predicted data.
    ratio: the quantile of |x0| (per example) that sets the threshold s.
    max_threshold: the floor of s and the bound of the result.

  Returns:
    [B, ...]: clip(x0, -s, s) * max_threshold / s, s = max(quantile, max_threshold).
  """
  flat = jnp.abs(x0).reshape(x0.shape[0], -1)  # [B, D]
  s = jnp.maximum(jnp.quantile(flat, ratio, axis=1), max_threshold)  # [B]
  s = sde.per_example(s, x0)
  return jnp.clip(x0, -s, s) * (max_threshold / s)


def _model(ctx: base.Context, x, t):
  """ctx.denoise, then (option thresholding) x0 thresholded and eps recomputed from it."""
  x0, eps = ctx.denoise(x, t)  # [B, ...] each
  if not ctx.options["thresholding"]:
    return x0, eps
  x0 = dynamic_threshold(x0, ctx.options["threshold_ratio"], ctx.options["max_threshold"])
  return parameterization.to_x0_eps(ctx.process, "x0", x0, x, t)


def _pick(algorithm: str, x0, eps):
  """The model g the updates extrapolate: x0 for DPM-Solver++, eps for DPM-Solver."""
  return x0 if algorithm == "dpmsolver++" else eps


# --------------------------------------------------------------------------
# Singlestep DPM-Solver-1/2/3 and DPM-Solver++(1S/2S/3S).
# --------------------------------------------------------------------------


def singlestep(ctx: base.Context, state, x_s, inputs: base.Inputs):
  """One step of order k: k network calls, 1 where h = inf (into sigma = 0)."""
  process, order, algorithm = ctx.process, ctx.options["order"], ctx.options["algorithm"]
  s, t = inputs.t, inputs.s  # The papers' names: from s to t < s.

  def intermediate(h, r):
    """The time at lambda_s + r h, and the r it actually has."""
    lambda_s = _lambda(process, s)
    s_r = process.t_from_log_snr(2.0 * (lambda_s + r * h))
    return s_r, (_lambda(process, s_r) - lambda_s) / h

  def higher_order(x0_s, eps_s):
    """Alg. 1 (order 2) and Alg. 2 (order 3) of DPM-Solver, either prediction."""
    g_s = _pick(algorithm, x0_s, eps_s)
    h, b, phi, c1, _ = _expansion(process, algorithm, s, t)
    s1, r1 = intermediate(h, SINGLESTEP_R[order][0])
    g_1 = _pick(algorithm, *_model(ctx, _first_order(process, x0_s, eps_s, s1), s1))
    if order == 2:
      correction = b * phi / (2.0 * r1) * (g_1 - g_s)
    else:
      s2, r2 = intermediate(h, SINGLESTEP_R[order][1])
      _, b2, _, c1_2, _ = _expansion(process, algorithm, s, s2)
      u2 = _first_order(process, x0_s, eps_s, s2) + b2 * c1_2 * (r2 / r1) * (g_1 - g_s)
      g_2 = _pick(algorithm, *_model(ctx, u2, s2))
      correction = b * c1 / r2 * (g_2 - g_s)
    return _first_order(process, x0_s, eps_s, t) + correction

  def first_order(x0_s, eps_s):
    return _first_order(process, x0_s, eps_s, t)

  x0_s, eps_s = _model(ctx, x_s, s)  # [B, ...] each
  if order == 1:
    return state, first_order(x0_s, eps_s)
  h = _lambda(process, t) - _lambda(process, s)  # A step with h = inf is first order.
  return state, ctx.cond(jnp.isfinite(h), higher_order, first_order, x0_s, eps_s)


# --------------------------------------------------------------------------
# Multistep: DPM-Solver-2M/3M, DPM-Solver++(2M/3M), SDE-DPM-Solver++(1/2M).
# --------------------------------------------------------------------------


def _step_order(order, num_steps, lower_order_final, i, h, lambda_1, lambda_2):
  """Order of step i (traced int32).

  Warm-up: only history at finite lambda counts (none at the start, nor the
  start of flow matching, alpha = 0); lower_order_final; 1 wherever h = inf.
  """
  usable = 1 + jnp.isfinite(lambda_1).astype(jnp.int32) + jnp.isfinite(lambda_2).astype(jnp.int32)
  step_order = jnp.minimum(order, usable)
  if lower_order_final and num_steps < LOWER_ORDER_FINAL_STEPS:
    step_order = jnp.minimum(step_order, num_steps - i)
  return jnp.where(jnp.isfinite(h), step_order, 1)


def _step_ratio(used, lambda_a, lambda_b, h):
  """(lambda_a - lambda_b) / h where `used`, else 1.

  An unused history slot has lambda = -inf and the step into sigma = 0 has
  h = inf; both are replaced before the division, not after, so that neither
  the value nor its gradient in the grid (grids.learned) holds inf or NaN.
  """
  return jnp.where(used, lambda_a - lambda_b, 1.0) / jnp.where(used, h, 1.0)


def empty_history(ctx: base.Context, x_T):
  """The multistep state (g_1, g_2, lambda_1, lambda_2): the model at the two
  previous times, newest first; an empty slot has lambda = -inf."""
  zeros, empty = jnp.zeros_like(x_T), jnp.float32(-jnp.inf)
  return zeros, zeros, empty, empty


def _multistep(kind: str, ctx: base.Context, state, x_s, inputs: base.Inputs):
  """One multistep step, one network call.

  kind: "dpmsolver", "dpmsolver++" (ODE) or "sde" (SDE-DPM-Solver++, data prediction).
  """
  process, order, options = ctx.process, ctx.options["order"], ctx.options
  g_1, g_2, lambda_1, lambda_2 = state
  i, s, t = inputs.i, inputs.t, inputs.s  # The papers' names: from s to t < s.
  x0_s, eps_s = _model(ctx, x_s, s)
  g_0 = eps_s if kind == "dpmsolver" else x0_s  # [B, ...]
  lambda_0 = _lambda(process, s)
  if kind == "sde":
    h = _lambda(process, t) - lambda_0
    z = base.normal(inputs, x_s)  # Zeros on the last step.
    b, phi = process.alpha(t), -jnp.expm1(-2.0 * h)  # B, 1 - e^{-2h}
    x_t = process.alpha(t) * x0_s + process.sigma(t) * (jnp.exp(-h) * eps_s + jnp.sqrt(phi) * z)
  else:
    h, b, phi, c1, c2 = _expansion(process, kind, s, t)
    x_t = _first_order(process, x0_s, eps_s, t)
  step_order = _step_order(order, ctx.num_steps, options["lower_order_final"], i, h, lambda_1,
                           lambda_2)
  if order >= 2:
    r0 = _step_ratio(step_order >= 2, lambda_0, lambda_1, h)
    d1_0 = (g_0 - g_1) / r0
    x_t = x_t + jnp.where(step_order == 2, 0.5 * b * phi, 0.0) * d1_0
  if order >= 3:
    r1 = _step_ratio(step_order >= 3, lambda_1, lambda_2, h)
    d1_1 = (g_1 - g_2) / r1
    d1 = d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1)
    d2 = D2_WEIGHT[options["weight_3m"]] * (d1_0 - d1_1) / (r0 + r1)  # h^2 g'' at w = 2
    x_t = x_t + jnp.where(step_order == 3, b, 0.0) * (c1 * d1 + c2 * d2)
  return (g_0, g_1, lambda_0, lambda_1), x_t


# --------------------------------------------------------------------------
# The registry entries.
# --------------------------------------------------------------------------


def init(ctx: base.Context, x_T):
  """Singlestep carries nothing but x; multistep its history."""
  if ctx.options["method"] == "singlestep":
    return base.no_state(ctx, x_T)
  return empty_history(ctx, x_T)


def step(ctx: base.Context, state, x_s, inputs: base.Inputs):
  """A singlestep or a multistep step of DPM-Solver / DPM-Solver++."""
  if ctx.options["method"] == "singlestep":
    return singlestep(ctx, state, x_s, inputs)
  return _multistep(ctx.options["algorithm"], ctx, state, x_s, inputs)


def sde_step(ctx: base.Context, state, x_s, inputs: base.Inputs):
  """A step of SDE-DPM-Solver++(1) or (2M)."""
  return _multistep("sde", ctx, state, x_s, inputs)


def nfe(num_steps: int, ends_at_zero: bool, options: dict) -> int:
  """multistep: N. singlestep order k: k calls a step, but one into sigma = 0."""
  order = options["order"]
  if options["method"] == "multistep" or order == 1:
    return num_steps
  return order * (num_steps - 1) + (1 if ends_at_zero else order)


def order_of(options: dict) -> int:
  """The order it converges with: 3M with the reference weight is second order."""
  if options["method"] == "multistep" and options["weight_3m"] == "reference":
    return min(options["order"], 2)
  return options["order"]


THRESHOLDING_OPTIONS = {
    "thresholding": base.Option(False, (bool,), "Imagen's dynamic thresholding of x0 "
                                "(dynamic_threshold), eps recomputed from it"),
    "threshold_ratio": base.Option(0.995, (int, float), "the quantile of |x0| that sets the "
                                   "threshold", check=lambda r: 0.0 < r <= 1.0, rule="in (0, 1]"),
    "max_threshold": base.Option(1.0, (int, float), "the threshold's floor and the bound of x0",
                                 check=lambda m: m > 0.0, rule="positive"),
}
LOWER_ORDER_FINAL = base.Option(True, (bool,), "multistep: lower the last steps to order "
                                f"min(order, steps left) on grids of < {LOWER_ORDER_FINAL_STEPS} "
                                "steps")

dpm_solver = base.Sampler(
    name="dpm_solver", init=init, step=step,
    options={
        "order": base.Option(2, (int,), "1 (DDIM), 2 or 3", choices=(1, 2, 3)),
        "method": base.Option("multistep", (str,), "singlestep (order calls a step) or "
                              "multistep (one call a step)", choices=METHODS),
        "algorithm": base.Option("dpmsolver++", (str,), "dpmsolver (noise prediction) or "
                                 "dpmsolver++ (data prediction)", choices=ALGORITHMS),
        "weight_3m": base.Option("reference", (str,), "multistep order 3: the weight of the "
                                 "second difference, the references' (order 2) or Taylor's "
                                 "(order 3)", choices=WEIGHTS_3M),
        "lower_order_final": LOWER_ORDER_FINAL,
        **THRESHOLDING_OPTIONS,
    },
    order=order_of, stochastic=lambda options: False, nfe=nfe)

dpm_solver_sde = base.Sampler(
    name="dpm_solver_sde", init=empty_history, step=sde_step,
    options={
        "order": base.Option(2, (int,), "1 (DDPM, posterior variance) or 2 (2M)",
                             choices=(1, 2)),
        "lower_order_final": LOWER_ORDER_FINAL,
        **THRESHOLDING_OPTIONS,
    },
    order=lambda options: 1, stochastic=lambda options: True)
