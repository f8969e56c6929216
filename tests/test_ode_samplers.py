"""Tests for the probability-flow ODE solvers (euler, heun, rk4, adaptive) and
iPNDM: convergence orders against a float64 scipy solution of the PF-ODE of a
smooth Gaussian mixture on EDM and flow matching (VP's, with the default
options, is the registry test's); the adaptive solver's accuracy and its exact
NFE; the exact jump at sigma = 0; iPNDM against the reference formula and DDIM;
counted NFE and one trace per stage; errors."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.integrate import solve_ivp

import conftest
from jaxdiff import grids, sde
from jaxdiff.samplers import num_steps_for, ode
from jaxdiff.samplers.ddim import ddim
from jaxdiff.samplers.ipndm import ipndm

from conftest import PROCESSES, counting, pf_ode_reference, smooth_x0_eps, toy_denoise_fn
from conftest import SMOOTH as MIXTURE  # Smooth data: the asymptotic regime starts at small N.

prior = functools.partial(conftest.prior, seed=1)  # The measured numbers below are seed 1's.
# Prediction type and grid per process; flow matching starts at 0.999 (alpha > 0).
SETUPS = {"vp": ("eps", "log_snr", {}), "edm": ("x0", "karras", {}),
          "flow": ("velocity", "log_snr", {"t_max": 0.999})}
SAMPLERS = {"euler": ode.euler, "heun": ode.heun, "rk4": ode.rk4, "ipndm": ipndm,
            "adaptive": ode.adaptive, "ddim": ddim}


@functools.partial(jax.jit, static_argnums=(0, 1, 2),
                   static_argnames=("max_order", "solver", "rtol", "atol"))
def solve(sampler_name, process_name, prediction, x_T, grid, **options):
  """A sampler with the oracle's exact denoiser; jitted once per static setup and shape."""
  process = PROCESSES[process_name]
  return SAMPLERS[sampler_name](MIXTURE.denoise_fn(process, prediction), process, x_T,
                                jax.random.PRNGKey(0), grid, prediction=prediction, **options)


@functools.cache
def reference(process_name, t_0, t_1):
  """x_T [32, 2] and x at t_1 from x_T at t_0 on the float64 PF-ODE (conftest)."""
  x_T = prior(process_name, 32)
  return x_T, pf_ode_reference(process_name, x_T, t_0, t_1)


def max_error(x, x_ref):
  return float(np.max(np.abs(np.asarray(x, np.float64) - x_ref)))


# --------------------------------------------------------------------------
# Convergence orders on VP, EDM and flow matching.
# --------------------------------------------------------------------------


def ode_grid(process_name, num_steps, length):
  """num_steps steps from t_max to t_min > 0 (no jump to 0), padded to [length + 1].

  The padding repeats t_min: zero-length steps leave x unchanged (up to float32
  rounding of alpha x0 + sigma eps for iPNDM), and one padded shape serves every
  num_steps, so each (process, sampler) compiles once.
  """
  _, grid_name, options = SETUPS[process_name]
  grid = grids.make_grid(PROCESSES[process_name], grid_name, num_steps + 1, **options)[:-1]
  return jnp.concatenate([grid, jnp.full(length - num_steps, grid[-1])])


# (order p, steps N): N spans a factor 4 in the asymptotic regime, above the
# float32 floor. Fitted slopes of log error vs log N (N = 20..80, 10..40, 5..20,
# 10..40), and the max error at the largest N, measured here:
#            euler         heun          rk4           ipndm
#   vp       1.08  1.2e-2  1.91  1.2e-3  3.73  4.9e-5  2.00  2.7e-3
#   edm      0.96  3.8e-2  2.15  1.1e-2  3.74  6.5e-4  2.04  3.6e-3
#   flow     0.96  4.6e-2  1.97  5.3e-3  4.00  1.3e-4  1.88  5.8e-3
# iPNDM (max_order 4) is second order: its Euler first step leaves an O(h^2)
# error, and its fixed Adams-Bashforth coefficients on a non-uniform grid an
# O(h^3) local one (with max_order 2 and 3 the slopes were 1.86 and 1.71 on
# vp for N = 10..80, with max_order 1, DDIM, 0.96).
ORDERS = {"euler": (1, (20, 40, 80)), "heun": (2, (10, 20, 40)), "rk4": (4, (5, 10, 20)),
          "ipndm": (2, (10, 20, 40))}


@pytest.mark.parametrize("process_name", ["edm", "flow"])  # VP's: test_sampler_registry.py.
@pytest.mark.parametrize("sampler_name", list(ORDERS))
def test_convergence_order(sampler_name, process_name):
  order, steps = ORDERS[sampler_name]
  prediction = SETUPS[process_name][0]
  errors = []
  for num_steps in steps:
    grid = ode_grid(process_name, num_steps, steps[-1])
    x_T, x_ref = reference(process_name, float(grid[0]), float(grid[-1]))
    x, info = solve(sampler_name, process_name, prediction, x_T, grid)
    assert int(info["nonfinite_step"]) == -1
    errors.append(max_error(x, x_ref))
  slope = -np.polyfit(np.log(steps), np.log(errors), 1)[0]
  print(f"{sampler_name} {process_name}: errors {errors} slope {slope:.2f}")
  assert abs(slope - order) < 0.4, (slope, errors)


def test_flow_from_t_one_with_velocity():
  """Flow matching from t = 1 (alpha = 0) with a velocity prediction, in t."""
  process_name, (prediction, _, _) = "flow", SETUPS["flow"]
  x_T = prior(process_name, 32)
  t_1 = float(np.float32(PROCESSES[process_name].t_min))  # Where ode_grid ends.

  def velocity(t, x):  # alpha = 1 - t, sigma = t: v = -x0 + eps, finite at t = 1.
    x0, eps = smooth_x0_eps(x.reshape(x_T.shape), 1 - t, t)
    return (eps - x0).ravel()

  solution = solve_ivp(velocity, (1.0, t_1), np.asarray(x_T, np.float64).ravel(),
                       method="DOP853", rtol=1e-10, atol=1e-10)
  x_ref = solution.y[:, -1].reshape(x_T.shape)
  # N = 20, measured 0.174 (euler), 0.021 (heun), 1.25e-4 (rk4), 0.024 (ipndm,
  # whose first step is DDIM's, x_s = alpha_s x0 + sigma_s eps, at alpha_t = 0).
  for sampler_name, bound in (("euler", 0.3), ("heun", 0.04), ("rk4", 3e-4), ("ipndm", 0.05)):
    length = ORDERS[sampler_name][1][-1]  # The shape compiled for test_convergence_order.
    grid = ode_grid(process_name, 20, length).at[0].set(1.0)
    x, info = solve(sampler_name, process_name, prediction, x_T, grid)
    assert int(info["nonfinite_step"]) == -1
    assert max_error(x, x_ref) < bound, sampler_name


# --------------------------------------------------------------------------
# The adaptive solver: accuracy against float64 and exact NFE.
# --------------------------------------------------------------------------


# At rtol = atol = 1e-6 in float32, measured max errors over 32 x 2 coordinates:
#   vp tsit5 2.6e-6, edm dopri8 6.4e-7, flow (from 0.999) dopri5 2.6e-6.
# The float32 floor is ~1e-6 (tighter tolerances do not go below it).
@pytest.mark.parametrize("process_name, solver", [("vp", "tsit5"), ("edm", "dopri8"),
                                                  ("flow", "dopri5")])
def test_adaptive_matches_float64_and_counts_nfe(process_name, solver):
  process = PROCESSES[process_name]
  t_0 = SETUPS[process_name][2].get("t_max", process.t_max)
  grid = jnp.asarray([t_0, 0.0], jnp.float32)  # To t = 0 itself.
  x_T, x_ref = reference(process_name, t_0, 0.0)
  traces = []

  def network(x, t, cond):
    traces.append(1)  # Python side effect: runs only while tracing.
    return MIXTURE.denoise_fn(process, "eps")(x, t, cond)

  counted, calls = counting(network)
  sampler = jax.jit(lambda x_T, grid: ode.adaptive(
      counted, process, x_T, None, grid, solver=solver, rtol=1e-6, atol=1e-6))
  x, info = sampler(x_T, grid)
  jax.effects_barrier()
  error = max_error(x, x_ref)
  print(f"adaptive {solver} {process_name}: error {error:.2e}, "
        f"{ {k: int(v) for k, v in info.items()} }, {len(traces)} traces")
  assert error < 1e-5
  assert int(info["nonfinite_step"]) == -1
  # NFE = 1 + (S - 1) (accepted + rejected), S = 7 (Tsit5, Dopri5) or 14 (Dopri8).
  stages = {"tsit5": 7, "dopri5": 7, "dopri8": 14}[solver]
  num_traces = len(traces)  # 5 here: f_0, the state check, three inside diffrax.
  for start in (None, 0.5 * t_0):  # Another interval: new steps, no new trace.
    if start is not None:
      calls.clear()
      _, info = sampler(x_T, grid.at[0].set(start))
      jax.effects_barrier()
    num_steps = int(info["num_steps"]) + int(info["num_rejected"])
    assert int(info["nfe"]) == len(calls) == 1 + (stages - 1) * num_steps
  assert len(traces) == num_traces


# --------------------------------------------------------------------------
# The last step to sigma = 0, NFE and tracing.
# --------------------------------------------------------------------------


@pytest.mark.parametrize("sampler_name", ["euler", "heun", "rk4"])
@pytest.mark.parametrize("process_name", ["vp", "edm"])
def test_step_to_sigma_zero_is_the_x0_jump(sampler_name, process_name):
  process = PROCESSES[process_name]
  prediction = SETUPS[process_name][0]
  # [t_0, ..., t_0, t_1, t_2, 0]: zero-length steps at t_0 pad the grid to the
  # shape compiled for test_convergence_order; then two steps and the jump to 0.
  length = ORDERS[sampler_name][1][-1] + 1
  grid = grids.make_grid(process, "karras", 3)
  grid = jnp.concatenate([jnp.full(length - 4, grid[0]), grid])
  x_T = prior(process_name, 32)
  x, info = solve(sampler_name, process_name, prediction, x_T, grid)
  # The same run stopped at t_2 (one more zero-length step instead of the jump).
  x_before, _ = solve(sampler_name, process_name, prediction, x_T, grid.at[-1].set(grid[-2]))
  x0_hat = MIXTURE.x0_eps(process, x_before, jnp.full(x_T.shape[:1], grid[-2]))[0]
  np.testing.assert_allclose(np.asarray(x), np.asarray(process.alpha(0.0) * x0_hat), atol=2e-6)
  stages = len(ode.TABLEAUS[sampler_name].c)
  assert int(info["nfe"]) == stages * (length - 2) + 1


@pytest.mark.parametrize("sampler_name, stages", [("euler", 1), ("heun", 2), ("rk4", 4)])
def test_nfe_counted_and_network_traced_once_per_stage(sampler_name, stages):
  traces = []

  def fn(x, t, cond):
    traces.append(1)  # Python side effect: runs only while tracing.
    return toy_denoise_fn(x, t, cond)

  network, calls = counting(fn)
  sampler = jax.jit(functools.partial(SAMPLERS[sampler_name], network, PROCESSES["vp"]))
  x_T, key = prior("vp", 3), jax.random.PRNGKey(0)
  vp, ve = PROCESSES["vp"], PROCESSES["ve"]
  # Same length, new grid values: one compilation; whether the last step jumps
  # (sigma(0) = 0) is read from the traced grid.
  ends_at_zero = grids.make_grid(vp, "uniform", 6)  # [7], 6 steps, the last to 0.
  ends_at_t_min = grids.make_grid(vp, "log_snr", 7)[:-1]  # [7], 6 steps to t_min.
  jump = stages - 1  # Calls a jump saves.
  for grid, expected in ((ends_at_zero, 6 * stages - jump), (ends_at_t_min, 6 * stages)):
    calls.clear()
    x, info = sampler(x_T, key, grid)
    jax.effects_barrier()
    assert bool(jnp.all(jnp.isfinite(x)))
    assert int(info["nfe"]) == len(calls) == expected
  assert len(traces) == stages
  sampler(x_T, key, grids.make_grid(vp, "uniform", 11))  # A new length: one more trace.
  assert len(traces) == 2 * stages
  if not jump:
    return
  # VE has sigma(0) = 0.01: its step to t = 0 is an ordinary step.
  network, calls = counting(toy_denoise_fn)
  _, info = SAMPLERS[sampler_name](network, ve, x_T, key,
                                   grids.make_grid(ve, "uniform", 6))
  jax.effects_barrier()
  assert int(info["nfe"]) == len(calls) == 6 * stages


@pytest.mark.parametrize("sampler_name, stages", [("euler", 1), ("heun", 2), ("rk4", 4),
                                                   ("ipndm", 1)])
def test_nfe_rule(sampler_name, stages):
  """N inverts the counted NFE = S N - (S - 1) on grids ending at 0 (S = 1 for iPNDM),
  and S N on grids ending at sigma > 0 (no jump)."""
  for nfe in range(1, 14):
    if (nfe - 1) % stages:
      below = nfe - (nfe - 1) % stages
      with pytest.raises(ValueError, match=rf"cannot spend exactly nfe={nfe} on a grid ending at "
                                           rf"sigma = 0; nearest NFE that work: {below} or "
                                           rf"{below + stages}$"):
        num_steps_for(sampler_name, nfe)
    else:
      assert stages * num_steps_for(sampler_name, nfe) - (stages - 1) == nfe
  with pytest.raises(ValueError, match="nfe must be a positive integer"):
    num_steps_for(sampler_name, 0)
  if sampler_name in ode.TABLEAUS:
    entry = SAMPLERS[sampler_name]
    assert entry.num_steps(3 * stages, ends_at_zero=False) == 3
    if stages > 1:
      with pytest.raises(ValueError, match=rf"sigma > 0; nearest NFE that work: {3 * stages} or "
                                           rf"{4 * stages}$"):
        entry.num_steps(3 * stages + 1, ends_at_zero=False)


# --------------------------------------------------------------------------
# iPNDM: the reference's formula, and DDIM at max_order = 1.
# --------------------------------------------------------------------------


def test_ipndm_is_the_reference_formula():
  """zju-pi/diff-sampler's ipndm_sampler in EDM's sigma, recomputed in float64.

  d_i = (x_i - D(x_i, sigma_i)) / sigma_i and x_{i+1} = x_i + (sigma_{i+1} - sigma_i)
  sum_j c_j d_{i-j}, fixed Adams-Bashforth coefficients, warm start, to sigma = 0.
  """
  process = PROCESSES["edm"]
  grid = grids.make_grid(process, "karras", 7)  # 7 steps, the last to 0.
  x_T = prior("edm", 6)
  x0_fn = lambda x, t: np.tanh(x) / (1.0 + t**2)  # A stand-in x0 prediction.
  x, ds = np.asarray(x_T, np.float64), []
  sigmas = np.asarray(grid, np.float64)
  coefficients = [[1], [3 / 2, -1 / 2], [23 / 12, -16 / 12, 5 / 12],
                  [55 / 24, -59 / 24, 37 / 24, -9 / 24]]
  for i, (sigma, sigma_next) in enumerate(zip(sigmas[:-1], sigmas[1:])):
    ds.insert(0, (x - x0_fn(x, sigma)) / sigma)
    c = coefficients[min(i, 3)]
    x = x + (sigma_next - sigma) * sum(c_j * d_j for c_j, d_j in zip(c, ds))
  out, info = ipndm(lambda x, t, cond: jnp.tanh(x) / (1.0 + sde.per_example(t, x) ** 2),
                    process, x_T, None, grid, prediction="x0")
  np.testing.assert_allclose(np.asarray(out), x, rtol=1e-5, atol=1e-5)  # Measured 1.6e-6.
  assert int(info["nfe"]) == 7


def test_ipndm_first_order_is_ddim():
  process = PROCESSES["vp"]
  grid = grids.make_grid(process, "log_snr", 8)  # Ends at 0.
  x_T = prior("vp", 16)
  x_ipndm, info = ipndm(MIXTURE.denoise_fn(process, "eps"), process, x_T, None, grid,
                        max_order=1)
  x_ddim, _ = ddim(MIXTURE.denoise_fn(process, "eps"), process, x_T, jax.random.PRNGKey(0), grid)
  # The same float32 operations: measured difference 0.
  np.testing.assert_allclose(np.asarray(x_ipndm), np.asarray(x_ddim), atol=2e-6)
  assert int(info["nfe"]) == 8


# --------------------------------------------------------------------------
# Errors.
# --------------------------------------------------------------------------


def test_errors():
  process = PROCESSES["vp"]
  x_T, grid = prior("vp", 3), grids.make_grid(process, "uniform", 4)
  with pytest.raises(ValueError, match=r"unknown solver 'rk45' for adaptive; valid: "
                                       r"\['dopri5', 'dopri8', 'tsit5'\]"):
    ode.adaptive(toy_denoise_fn, process, x_T, None, grid, solver="rk45")
  with pytest.raises(ValueError, match="adaptive picks its own steps"):
    ode.adaptive.num_steps(10)
  with pytest.raises(ValueError, match=r"unknown max_order 5 for ipndm; valid: \[1, 2, 3, 4\]"):
    ipndm(toy_denoise_fn, process, x_T, None, grid, max_order=5)
  for name in ("euler", "heun", "rk4", "ipndm", "adaptive"):
    with pytest.raises(ValueError, match="grid must be 1-D"):
      SAMPLERS[name](toy_denoise_fn, process, x_T, None, grid[:1])
    with pytest.raises(ValueError, match="grid must lie in VP's time domain"):
      SAMPLERS[name](toy_denoise_fn, process, x_T, None, grid + 1.0)
    with pytest.raises(ValueError, match="unknown prediction type 'noise'"):
      SAMPLERS[name](toy_denoise_fn, process, x_T, None, grid, prediction="noise")
