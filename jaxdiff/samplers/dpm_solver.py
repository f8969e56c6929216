"""DPM-Solver and DPM-Solver++: exponential integrators of the probability-flow ODE.

Lu et al. 2022a, "DPM-Solver: A Fast ODE Solver for Diffusion Probabilistic
Model Sampling in Around 10 Steps" (NeurIPS), and Lu et al. 2022b,
"DPM-Solver++: Fast Solver for Guided Sampling of Diffusion Probabilistic
Models", for any process x_t = alpha_t x_0 + sigma_t eps.

Time variable. lambda = log(alpha / sigma) = process.log_snr / 2 (DPM-Solver's
lambda, half of jaxdiff's lam). As in the papers a step goes from s to t < s
(from t_{i-1} to t_i), h = lambda_t - lambda_s > 0; note that `loop.py` names
the same pair (t, s) the other way round.

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
                      D_2 = 2 (D1_0 - D1_1) / (r_0 + r_1),
                      x_t = first-order + B (c_1 D_1 + c_2 D_2).
The first multistep steps warm up with lower orders: step i uses the model
values it has, none at the start (nor one taken at alpha = 0, flow's t = 1).
Intermediate singlestep times are process.t_from_log_snr(2 lambda); the
differences use the lambda of the time actually evaluated.

Note on 3M: the reference code (and diffusers, k-diffusion) uses
D_2 = (D1_0 - D1_1) / (r_0 + r_1), which is h^2 g'' / 2, not h^2 g'': with
c_2 = h / 6 + O(h^2) the eps'' / x0'' term then carries half its weight, a local
error O(h^3) and a second-order method. Here D_2 carries the factor 2 and 3M
converges with order 3 (tests/test_dpm_solver.py measures both). The price:
where a step is much longer than the previous ones (r_0 << 1, e.g. the last
steps of a uniform-in-t grid) the larger, correct x0'' term also extrapolates
further; use lower_order_final or a log-SNR grid there.

The end t = 0 (sigma = 0, lambda = +inf). Every update is written so that its
first-order part is finite there: x_t -> alpha_0 x0_s, the references'
"denoise to zero". The higher-order limits do not exist (D_1 ~ h g' extrapolates
the Taylor polynomial to lambda = +inf, and singlestep intermediate times
would themselves be t = 0), so a step with infinite h -- into sigma_t = 0, or
out of alpha_s = 0 as flow matching's t = 1 -- is always first order: one
network call for singlestep, whatever the order. `lower_order_final` (multistep
and SDE only, as in the references) additionally lowers the last steps to
order min(order, steps left) when the grid has fewer than 10 steps.

SDE-DPM-Solver++ (`dpm_solver_sde`; Lu et al. 2022b and diffusers'
"sde-dpmsolver++"): the exact solution of the reverse SDE in data prediction,
  x_t = sigma_t / sigma_s e^{-h} x_s + 2 alpha_t int e^{-2 (lambda_t - lambda)} x0 dlambda
        + sigma_t sqrt(1 - e^{-2h}) z,
gives at first order x_t = alpha_t x0_s + sigma_t (e^{-h} eps_s + sqrt(1 - e^{-2h}) z)
-- DDPM with the posterior variance (DDIM eta = 1) -- and at second order
(2M, midpoint) adds alpha_t (1 - e^{-2h}) / 2 D1_0.

Dynamic thresholding (Saharia et al. 2022, "Imagen", sec. 2.3, which
DPM-Solver++ pairs with data prediction): s = max(quantile(|x0|, ratio), max_threshold) per
example and x0 <- clip(x0, -s, s) max_threshold / s, into [-max, max]; eps is
recomputed from the thresholded x0. At max_threshold = 1 this is Imagen's and
the reference code's rule exactly.
"""

import inspect

import jax
import jax.numpy as jnp

from jaxdiff import parameterization, sde
from jaxdiff.samplers import loop
from jaxdiff.schedules import Process

ALGORITHMS = ("dpmsolver", "dpmsolver++")
METHODS = ("singlestep", "multistep")
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


def _denoiser(denoise_fn, process: Process, prediction, clip_x0, thresholding, threshold_ratio,
              max_threshold):
  """loop.denoiser, then dynamic thresholding of x0 with eps recomputed from it."""
  denoise = loop.denoiser(denoise_fn, process, prediction, clip_x0)
  if not thresholding:
    return denoise

  def fn(x_t, t, cond):
    x0, _ = denoise(x_t, t, cond)
    x0 = dynamic_threshold(x0, threshold_ratio, max_threshold)
    return parameterization.to_x0_eps(process, "x0", x0, x_t, t)

  return fn


def _check_thresholds(threshold_ratio, max_threshold):
  if not 0.0 < threshold_ratio <= 1.0:
    raise ValueError(f"threshold_ratio must lie in (0, 1], got {threshold_ratio!r}")
  if not max_threshold > 0.0:
    raise ValueError(f"max_threshold must be positive, got {max_threshold!r}")


def _check_choice(name, value, valid):
  if value not in valid:
    raise ValueError(f"unknown {name} {value!r}; valid: {list(valid)}")


def _check_order(order, valid):
  if isinstance(order, bool) or order not in valid:
    raise ValueError(f"order must be one of {list(valid)}, got {order!r}")


def _step_inputs(grid):
  """i, s, t for every step: [N] each."""
  return jnp.arange(grid.shape[0] - 1), grid[:-1], grid[1:]


def _finish(scan_out):
  (x, nfe, *_), finite = scan_out
  return x, {"nfe": nfe, "nonfinite_step": loop.first_nonfinite_step(finite)}


# --------------------------------------------------------------------------
# Singlestep DPM-Solver-1/2/3 and DPM-Solver++(1S/2S/3S).
# --------------------------------------------------------------------------


def _singlestep(denoise, process: Process, algorithm, order, x_T, grid, cond):
  """Singlestep order `order`: `order` network calls per step (1 where h = inf)."""
  pick = (lambda x0, eps: x0) if algorithm == "dpmsolver++" else (lambda x0, eps: eps)

  def intermediate(s, h, r):
    """The time at lambda_s + r h, and the r it actually has."""
    lambda_s = _lambda(process, s)
    s_r = process.t_from_log_snr(2.0 * (lambda_s + r * h))
    return s_r, (_lambda(process, s_r) - lambda_s) / h

  def higher_order(x0_s, eps_s, s, t):
    """Alg. 1 (order 2) and Alg. 2 (order 3) of DPM-Solver, either prediction."""
    g_s = pick(x0_s, eps_s)
    h, b, phi, c1, _ = _expansion(process, algorithm, s, t)
    s1, r1 = intermediate(s, h, SINGLESTEP_R[order][0])
    g_1 = pick(*denoise(_first_order(process, x0_s, eps_s, s1), s1, cond))
    if order == 2:
      correction = b * phi / (2.0 * r1) * (g_1 - g_s)
    else:
      s2, r2 = intermediate(s, h, SINGLESTEP_R[order][1])
      _, b2, _, c1_2, _ = _expansion(process, algorithm, s, s2)
      u2 = _first_order(process, x0_s, eps_s, s2) + b2 * c1_2 * (r2 / r1) * (g_1 - g_s)
      g_2 = pick(*denoise(u2, s2, cond))
      correction = b * c1 / r2 * (g_2 - g_s)
    return _first_order(process, x0_s, eps_s, t) + correction, jnp.int32(order - 1)

  def first_order(x0_s, eps_s, s, t):
    return _first_order(process, x0_s, eps_s, t), jnp.int32(0)

  def step(carry, inputs):
    x_s, nfe = carry
    _, s, t = inputs
    x0_s, eps_s = denoise(x_s, s, cond)  # [B, ...] each
    if order == 1:
      x_t, extra = first_order(x0_s, eps_s, s, t)
    else:  # A step with infinite h (into sigma = 0) is first order: no calls at t = 0.
      h = _lambda(process, t) - _lambda(process, s)
      x_t, extra = jax.lax.cond(jnp.isfinite(h), higher_order, first_order, x0_s, eps_s, s, t)
    x_t = x_t.astype(x_s.dtype)
    return (x_t, nfe + 1 + extra), loop.all_finite(x_t)

  return _finish(jax.lax.scan(step, (x_T, jnp.int32(0)), _step_inputs(grid)))


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


def _multistep(denoise, process: Process, kind, order, lower_order_final, x_T, key, grid, cond):
  """Multistep scan; the carry holds the history (g_1, g_2) at (lambda_1, lambda_2).

  kind: "dpmsolver", "dpmsolver++" (ODE) or "sde" (SDE-DPM-Solver++, data prediction).
  An empty history slot has lambda = -inf.
  """
  num_steps = grid.shape[0] - 1
  data_prediction = kind != "dpmsolver"

  def step(carry, inputs):
    x_s, nfe, g_1, g_2, lambda_1, lambda_2 = carry
    i, s, t = inputs
    x0_s, eps_s = denoise(x_s, s, cond)
    g_0 = x0_s if data_prediction else eps_s  # [B, ...]
    lambda_0 = _lambda(process, s)
    if kind == "sde":
      h = _lambda(process, t) - lambda_0
      z = jax.random.normal(jax.random.fold_in(key, i), x_s.shape, x_s.dtype)
      z = jnp.where(i < num_steps - 1, z, jnp.zeros_like(z))  # No noise on the last step.
      b, phi = process.alpha(t), -jnp.expm1(-2.0 * h)  # B, 1 - e^{-2h}
      x_t = process.alpha(t) * x0_s + process.sigma(t) * (jnp.exp(-h) * eps_s + jnp.sqrt(phi) * z)
    else:
      h, b, phi, c1, c2 = _expansion(process, kind, s, t)
      x_t = _first_order(process, x0_s, eps_s, t)
    step_order = _step_order(order, num_steps, lower_order_final, i, h, lambda_1, lambda_2)
    if order >= 2:
      r0 = _step_ratio(step_order >= 2, lambda_0, lambda_1, h)
      d1_0 = (g_0 - g_1) / r0
      x_t = x_t + jnp.where(step_order == 2, 0.5 * b * phi, 0.0) * d1_0
    if order >= 3:
      r1 = _step_ratio(step_order >= 3, lambda_1, lambda_2, h)
      d1_1 = (g_1 - g_2) / r1
      d1 = d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1)
      d2 = 2.0 * (d1_0 - d1_1) / (r0 + r1)  # h^2 g''; the references omit the 2.
      x_t = x_t + jnp.where(step_order == 3, b, 0.0) * (c1 * d1 + c2 * d2)
    x_t = x_t.astype(x_s.dtype)
    return (x_t, nfe + 1, g_0, g_1, lambda_0, lambda_1), loop.all_finite(x_t)

  zeros, empty = jnp.zeros_like(x_T), jnp.float32(-jnp.inf)
  init = (x_T, jnp.int32(0), zeros, zeros, empty, empty)
  return _finish(jax.lax.scan(step, init, _step_inputs(grid)))


# --------------------------------------------------------------------------
# Public samplers.
# --------------------------------------------------------------------------


def dpm_solver(denoise_fn, process: Process, x_T, key, grid, *, prediction: str = "eps",
               cond=None, clip_x0: bool = False, order: int = 2, method: str = "multistep",
               algorithm: str = "dpmsolver++", lower_order_final: bool = True,
               thresholding: bool = False, threshold_ratio: float = 0.995,
               max_threshold: float = 1.0):
  """DPM-Solver / DPM-Solver++ of the probability-flow ODE from grid[0] to grid[-1].

  Args:
    denoise_fn: (x [B, ...], t [B], cond) -> network output of type `prediction`.
    process: the forward process.
    x_T: [B, ...] sample at grid[0].
    key: PRNG key (unused: the solver is deterministic).
    grid: [N + 1] strictly decreasing times (see `jaxdiff.grids`).
    prediction: one of parameterization.PREDICTIONS.
    cond: passed to denoise_fn unchanged.
    clip_x0: clip the predicted x0 to [-1, 1].
    order: 1, 2 or 3; order 1 is DDIM (eta = 0) for either algorithm.
    method: "singlestep" (`order` network calls per step; a step into sigma = 0
      is first order, one call) or "multistep" (one call per step).
    algorithm: "dpmsolver" (noise prediction) or "dpmsolver++" (data prediction).
    lower_order_final: multistep only: lower the last steps' orders when N < 10.
    thresholding: dynamic thresholding of x0 (see `dynamic_threshold`).
    threshold_ratio, max_threshold: its quantile and bound.

  Returns:
    x_0 [B, ...] at grid[-1], and info {"nfe": int32, "nonfinite_step": int32}.
  """
  del key
  _check_order(order, (1, 2, 3))
  _check_choice("method", method, METHODS)
  _check_choice("algorithm", algorithm, ALGORITHMS)
  _check_thresholds(threshold_ratio, max_threshold)
  grid = loop.check_inputs(x_T, grid, process)
  denoise = _denoiser(denoise_fn, process, prediction, clip_x0, thresholding, threshold_ratio,
                      max_threshold)
  if method == "singlestep":
    return _singlestep(denoise, process, algorithm, order, x_T, grid, cond)
  return _multistep(denoise, process, algorithm, order, lower_order_final, x_T, None, grid, cond)


def dpm_solver_sde(denoise_fn, process: Process, x_T, key, grid, *, prediction: str = "eps",
                   cond=None, clip_x0: bool = False, order: int = 2,
                   lower_order_final: bool = True, thresholding: bool = False,
                   threshold_ratio: float = 0.995, max_threshold: float = 1.0):
  """SDE-DPM-Solver++(1) / (2M) of the reverse SDE from grid[0] to grid[-1].

  Order 1 is ancestral DDPM with the posterior variance (DDIM eta = 1). Step i
  draws its noise from fold_in(key, i); the last step adds none.

  Args:
    denoise_fn, process, x_T, grid, prediction, cond, clip_x0, thresholding,
      threshold_ratio, max_threshold: as for `dpm_solver`.
    key: PRNG key for the per-step noise.
    order: 1 or 2 (multistep, one network call per step).
    lower_order_final: lower the last step to first order when N < 10.

  Returns:
    x_0 [B, ...] at grid[-1], and info {"nfe": int32, "nonfinite_step": int32}.
  """
  _check_order(order, (1, 2))
  loop.require_key(key, "dpm_solver_sde")
  _check_thresholds(threshold_ratio, max_threshold)
  grid = loop.check_inputs(x_T, grid, process)
  denoise = _denoiser(denoise_fn, process, prediction, clip_x0, thresholding, threshold_ratio,
                      max_threshold)
  return _multistep(denoise, process, "sde", order, lower_order_final, x_T, key, grid, cond)


# --------------------------------------------------------------------------
# NFE -> grid length.
# --------------------------------------------------------------------------


def _check_options(sampler, options):
  """Options that do not change the NFE are accepted if `sampler` takes them."""
  valid = set(inspect.signature(sampler).parameters) - {"denoise_fn", "process", "x_T", "key",
                                                          "grid"}
  unknown = sorted(set(options) - valid)
  if unknown:
    raise ValueError(f"unknown options {unknown} for {sampler.__name__}; valid: {sorted(valid)}")


def dpm_solver_num_steps(nfe: int, *, order: int = 2, method: str = "multistep",
                         ends_at_sigma_zero: bool = True, **options) -> int:
  """Grid length N (steps; the grid is [N + 1]) that spends exactly `nfe` network calls.

  multistep: N = nfe. singlestep order k: k calls per step, except that a step
  into sigma = 0 is first order, so nfe = k (N - 1) + 1 on a grid ending where
  sigma = 0 (`grids.make_grid`'s end t = 0, for every process but VE) and
  nfe = k N otherwise (e.g. `make_grid(...)[:-1]`, ending at t_min).
  The sampler's other options are accepted and do not change the count.

  Raises:
    ValueError where no N spends exactly `nfe`, naming the NFE values that
    work and the nearest ones with their N.
  """
  loop.one_call_per_step(nfe)  # nfe must be a positive integer.
  _check_order(order, (1, 2, 3))
  _check_choice("method", method, METHODS)
  _check_options(dpm_solver, options)
  if method == "multistep" or order == 1:
    return int(nfe)
  first = 1 if ends_at_sigma_zero else order  # The NFE of N = 1; each further step adds `order`.
  if nfe >= first and (nfe - first) % order == 0:
    return (nfe - first) // order + 1
  below = first + (nfe - first) // order * order if nfe > first else None
  above = first if below is None else below + order
  nearest = " and ".join(f"nfe={v} (N={(v - first) // order + 1})"
                         for v in (below, above) if v is not None)
  end = "where sigma = 0" if ends_at_sigma_zero else "where sigma > 0"
  raise ValueError(
      f"singlestep DPM-Solver of order {order} on a grid ending {end} can spend "
      f"nfe = {first}, {first + order}, {first + 2 * order}, ... ({order} per step"
      f"{', 1 for the step into sigma = 0' if ends_at_sigma_zero else ''}), not nfe={nfe}; "
      f"nearest: {nearest}")


def dpm_solver_sde_num_steps(nfe: int, **options) -> int:
  """Grid length N for `dpm_solver_sde`: one network call per step, N = nfe."""
  _check_options(dpm_solver_sde, options)
  return loop.one_call_per_step(nfe)
