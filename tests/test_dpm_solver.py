"""Tests for DPM-Solver, DPM-Solver++ and SDE-DPM-Solver++: order 1 == DDIM and
SDE order 1 == DDPM, the papers' update formulas recomputed in float64, 3M with
the reference weight against diffusers' DPMSolverMultistepScheduler, the order
of every multistep step (warm-up, lower_order_final below 10 steps), empirical
convergence orders (both 3M weights) against a float64 diffrax solution of the
PF-ODE equal to the declared ones, the exact first-order step into t = 0,
thresholding, the SDE sampler reproducing the mixture, NFE rules and errors.
NFE counting and tracing, and the order of the default configuration, are the
registry contract's (tests/test_sampler_registry.py)."""

import functools

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff import grids, oracle, samplers, sde
from jaxdiff.samplers import ddim, ddpm
from jaxdiff.samplers.dpm_solver import dpm_solver, dpm_solver_sde, dynamic_threshold

import conftest
from conftest import OPTIMIZED, PROCESSES

# A smooth oracle (stds >= 0.2) for the ODE tests and the ring for the SDE one. (Not
# conftest's SMOOTH: the errors measured below are this mixture's.)
SMOOTH = oracle.GaussianMixture(np.array([0.3, 0.7]), np.array([[0.6, -0.3], [-0.4, 0.5]]),
                                np.array([0.25, 0.3]))
RING = oracle.ring()  # 8 modes, radius 0.7, std 0.08.
MIXTURES = {"smooth": SMOOTH, "ring": RING}
T = 1000  # conftest's PROCESSES["ddpm"] is the linear DDPM of T steps.
SAMPLERS = {"dpm_solver": dpm_solver, "dpm_solver_sde": dpm_solver_sde, "ddim": ddim,
            "ddpm": ddpm}
OPTIONS = ("order", "method", "algorithm", "weight_3m", "lower_order_final", "variance")


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3), static_argnames=OPTIONS,
                   compiler_options=OPTIMIZED)
def sample(sampler_name, process_name, mixture_name, prediction, x_T, key, grid, **options):
  """A sampler run with the oracle's exact denoiser; jitted once per static setup."""
  process = PROCESSES[process_name]
  denoise_fn = MIXTURES[mixture_name].denoise_fn(process, prediction)
  return SAMPLERS[sampler_name](denoise_fn, process, x_T, key, grid, prediction=prediction,
                               **options)


prior = functools.partial(conftest.prior, seed=4)  # The measured numbers below are seed 4's.


def max_error(x, y):
  return float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))


# --------------------------------------------------------------------------
# The probability-flow ODE of VP, solved in float64, and the convergence runs.
# --------------------------------------------------------------------------


@functools.cache
def _pf_ode_solution(process_name, t_max):
  """x_T [64, 2] and the PF-ODE solutions {t_min: [64, 2], 0: [64, 2]} from t_max.

  Tsit5 in float64 at rtol = atol = 1e-10 with the exact score (alpha and sigma
  stay float32 functions of float32 t, as in the samplers).
  """
  process = PROCESSES[process_name]
  x_T = prior(process_name, 64)

  def drift(t, x, args):
    return sde.pf_ode_drift(process, x, t, SMOOTH.score(process, x, t))

  t0, t_min = float(np.float32(t_max)), float(np.float32(process.t_min))
  with jax.enable_x64(True):
    solution = diffrax.diffeqsolve(
        diffrax.ODETerm(drift), diffrax.Tsit5(), t0=t0, t1=0.0, dt0=-t0 / 100,
        y0=jnp.asarray(np.asarray(x_T), jnp.float64), saveat=diffrax.SaveAt(ts=[t_min, 0.0]),
        stepsize_controller=diffrax.PIDController(rtol=1e-10, atol=1e-10), max_steps=100_000)
    return x_T, dict(zip((process.t_min, 0.0), np.asarray(solution.ys)))


def _vp_grid(num_steps):
  """num_steps steps uniform in log-SNR from t_max to t_min (no jump to 0): [num_steps + 1]."""
  return grids.make_grid(PROCESSES["vp"], "log_snr", num_steps + 1)[:-1]


def _vp_run(num_steps, **options):
  """dpm_solver from the ODE test's x_T over _vp_grid(num_steps); shared compilations."""
  x_T, _ = _pf_ode_solution("vp", PROCESSES["vp"].t_max)
  return sample("dpm_solver", "vp", "smooth", "eps", x_T, None, _vp_grid(num_steps), **options)


# (method, algorithm, order, weight_3m, step counts N and 4N). Observed max
# errors at t_min over 64 x 2 coordinates and the slopes they give (one more
# step count in between changes a fitted slope by < 0.1):
CONVERGENCE_CASES = [
    ("multistep", "dpmsolver++", 1, "reference", (64, 256)),  # 4.98e-2, 1.34e-2: 0.95
    ("multistep", "dpmsolver", 2, "reference", (32, 128)),  # 1.60e-2, 1.16e-3: 1.89
    ("multistep", "dpmsolver++", 2, "reference", (32, 128)),  # 6.43e-3, 3.85e-4: 2.03
    ("singlestep", "dpmsolver", 2, "reference", (32, 128)),  # 5.73e-3, 3.38e-4: 2.04
    ("singlestep", "dpmsolver++", 2, "reference", (32, 128)),  # 1.06e-2, 7.55e-4: 1.91
    ("multistep", "dpmsolver", 3, "taylor", (32, 128)),  # 3.61e-3, 5.70e-5: 2.99
    ("multistep", "dpmsolver++", 3, "taylor", (32, 128)),  # 2.76e-3, 4.44e-5: 2.98
    ("multistep", "dpmsolver++", 3, "reference", (32, 128)),  # 3.38e-3, 1.30e-4: 2.35
    ("singlestep", "dpmsolver", 3, "reference", (16, 64)),  # 7.85e-4, 1.26e-5: 2.98
    ("singlestep", "dpmsolver++", 3, "reference", (16, 64)),  # 2.83e-3, 5.72e-5: 2.82
]
D2_FACTOR = {"reference": 1.0, "taylor": 2.0}


def _slope(steps, errors):
  return np.log(errors[0] / errors[1]) / np.log(steps[1] / steps[0])


# --------------------------------------------------------------------------
# Order 1 is DDIM; SDE order 1 is DDPM with the posterior variance.
# --------------------------------------------------------------------------


def test_order_one_is_ddim():
  x_T, _ = _pf_ode_solution("vp", PROCESSES["vp"].t_max)
  x_ddim, _ = sample("ddim", "vp", "smooth", "eps", x_T, jax.random.PRNGKey(0), _vp_grid(64))
  for method in ("singlestep", "multistep"):
    for algorithm in ("dpmsolver", "dpmsolver++"):
      x, info = _vp_run(64, order=1, method=method, algorithm=algorithm)
      assert int(info["nfe"]) == 64 and int(info["nonfinite_step"]) == -1
      assert max_error(x, x_ddim) < 1e-5, (method, algorithm)  # Observed <= 2.4e-7.
  # Flow matching from t = 1 (alpha = 0, lambda = -inf) to t = 0 (sigma = 0).
  grid = grids.make_grid(PROCESSES["flow"], "uniform", 12)
  x_T, key = prior("flow", 32), jax.random.PRNGKey(0)
  x_ddim, _ = sample("ddim", "flow", "smooth", "velocity", x_T, key, grid)
  x, info = sample("dpm_solver", "flow", "smooth", "velocity", x_T, key, grid, order=1,
                   algorithm="dpmsolver")
  assert int(info["nfe"]) == 12 and int(info["nonfinite_step"]) == -1
  assert max_error(x, x_ddim) < 1e-5


def test_sde_order_one_is_ddpm_posterior_variance():
  grid = grids.make_grid(PROCESSES["vp"], "uniform", 20)
  x_T, key = prior("vp", 32), jax.random.PRNGKey(1)
  x_ddpm, _ = sample("ddpm", "vp", "ring", "eps", x_T, key, grid, variance="beta_tilde")
  x_sde, info = sample("dpm_solver_sde", "vp", "ring", "eps", x_T, key, grid, order=1)
  assert int(info["nfe"]) == 20
  assert max_error(x_sde, x_ddpm) < 1e-5  # Same noise, same posterior; observed 2e-7.


# --------------------------------------------------------------------------
# The papers' update formulas, recomputed in float64 with the official
# coefficients (noise: alpha_t / alpha_s, sigma_t (e^h - 1); data: sigma_t /
# sigma_s, alpha_t (e^{-h} - 1)) on VP.
# --------------------------------------------------------------------------


def _schedule(t):
  """alpha, sigma, lambda = log(alpha / sigma) at t, float64 from the float32 process."""
  process = PROCESSES["vp"]
  alpha, sigma = (float(f(jnp.float32(t))) for f in (process.alpha, process.sigma))
  return alpha, sigma, (np.inf if sigma == 0 else np.log(alpha / sigma))


def _model(x, t, algorithm, mixture=SMOOTH):
  """The oracle's x0 or eps at float32 x, returned in float64."""
  x0, eps = mixture.x0_eps(PROCESSES["vp"], jnp.asarray(x, jnp.float32), jnp.float32(t))
  return np.asarray(x0 if algorithm == "dpmsolver++" else eps, np.float64)


def _time_at(lam):
  return float(PROCESSES["vp"].t_from_log_snr(jnp.float32(2.0 * lam)))


def _paper_singlestep(x, s, t, order, algorithm):
  """DPM-Solver-2/3 (Alg. 1, 2) and DPM-Solver++(2S) (Alg. 1) / its third-order analogue."""
  a_s, s_s, l_s = _schedule(s)
  a_t, s_t, l_t = _schedule(t)
  h = l_t - l_s
  g_s = _model(x, s, algorithm)
  rs = (0.5,) if order == 2 else (1 / 3, 2 / 3)
  times = [_time_at(l_s + r * h) for r in rs]
  (a_1, s_1, _), *rest = [_schedule(u) for u in times]
  if algorithm == "dpmsolver":
    u_1 = a_1 / a_s * x - s_1 * np.expm1(rs[0] * h) * g_s
    d_1 = _model(u_1, times[0], algorithm) - g_s
    if order == 2:
      return a_t / a_s * x - s_t * np.expm1(h) * g_s - s_t / (2 * rs[0]) * np.expm1(h) * d_1
    (a_2, s_2, _), (r_1, r_2) = rest[0], rs
    u_2 = (a_2 / a_s * x - s_2 * np.expm1(r_2 * h) * g_s
           - s_2 * r_2 / r_1 * (np.expm1(r_2 * h) / (r_2 * h) - 1) * d_1)
    d_2 = _model(u_2, times[1], algorithm) - g_s
    return a_t / a_s * x - s_t * np.expm1(h) * g_s - s_t / r_2 * (np.expm1(h) / h - 1) * d_2
  u_1 = s_1 / s_s * x - a_1 * np.expm1(-rs[0] * h) * g_s
  g_1 = _model(u_1, times[0], algorithm)
  if order == 2:
    d = (1 - 1 / (2 * rs[0])) * g_s + 1 / (2 * rs[0]) * g_1
    return s_t / s_s * x - a_t * np.expm1(-h) * d
  (a_2, s_2, _), (r_1, r_2) = rest[0], rs
  u_2 = (s_2 / s_s * x - a_2 * np.expm1(-r_2 * h) * g_s
         + r_2 / r_1 * a_2 * (np.expm1(-r_2 * h) / (r_2 * h) + 1) * (g_1 - g_s))
  g_2 = _model(u_2, times[1], algorithm)
  return (s_t / s_s * x - a_t * np.expm1(-h) * g_s
          + a_t / r_2 * (np.expm1(-h) / h + 1) * (g_2 - g_s))


def _paper_multistep(x, s, t, history, step_order, algorithm, d2_factor, z=None):
  """2M (DPM-Solver++ Alg. 2 / multistep DPM-Solver-2), 3M, SDE-DPM-Solver++(2M).

  history: [(lambda, g)] newest first, g_0 at s. d2_factor: 3M's weight w
  (1 the references', 2 Taylor's); z (SDE only) is the step's noise.
  """
  a_s, s_s, l_s = _schedule(s)
  a_t, s_t, l_t = _schedule(t)
  h = l_t - l_s
  g = [gi for _, gi in history]
  r = [(history[k][0] - history[k + 1][0]) / h for k in range(step_order - 1)]
  if z is not None:  # diffusers' sde-dpmsolver++, midpoint.
    d = g[0] + (0.5 * (g[0] - g[1]) / r[0] if step_order == 2 else 0)
    return (s_t / s_s * np.exp(-h) * x + a_t * (1 - np.exp(-2 * h)) * d
            + s_t * np.sqrt(1 - np.exp(-2 * h)) * z)
  if algorithm == "dpmsolver":  # Noise prediction; e^{+h}.
    lin, b, e = a_t / a_s, -s_t, np.expm1(h)
    phi_2, phi_3 = e / h - 1, (e - h) / h**2 - 0.5
  else:  # Data prediction; e^{-h}.
    lin, b, e = s_t / s_s, -a_t, np.expm1(-h)
    phi_2, phi_3 = -(e / h + 1), (e + h) / h**2 - 0.5
  x_t = lin * x + b * e * g[0]
  if step_order == 2:
    x_t = x_t + 0.5 * b * e * (g[0] - g[1]) / r[0]
  elif step_order == 3:
    d1_0, d1_1 = (g[0] - g[1]) / r[0], (g[1] - g[2]) / r[1]
    d1 = d1_0 + r[0] / (r[0] + r[1]) * (d1_0 - d1_1)
    d2 = d2_factor * (d1_0 - d1_1) / (r[0] + r[1])
    x_t = x_t + b * phi_2 * d1 + b * phi_3 * d2
  return x_t


def _paper_chain(x_T, grid, method, order, algorithm, lower_order_final=True, key=None,
                 d2_factor=1.0, mixture=SMOOTH):
  """The whole sampler in float64. Orders as DPM-Solver's sampler (warm-up,
  lower_order_final below 10 steps) and diffusers' (first order into sigma = 0)."""
  grid = np.asarray(grid, np.float64)
  x, history, n = np.asarray(x_T, np.float64), [], len(grid) - 1
  with np.errstate(divide="ignore", invalid="ignore"):  # h = inf into sigma = 0.
    for i, (s, t) in enumerate(zip(grid[:-1], grid[1:])):
      if method == "singlestep":
        x = _paper_singlestep(x, s, t, order, algorithm)
        continue
      history = [(_schedule(s)[2], _model(x, s, algorithm, mixture))] + history[:2]
      step_order = min(order, i + 1, n - i if lower_order_final and n < 10 else order)
      step_order = 1 if _schedule(t)[1] == 0 else step_order
      z = None
      if key is not None:
        z = np.asarray(jax.random.normal(jax.random.fold_in(key, i), x.shape)) * (i < n - 1)
      x = _paper_multistep(x, s, t, history, step_order, algorithm, d2_factor, z)
  return x


@pytest.mark.parametrize("method, algorithm, order, weight_3m, steps",
                         [case for case in CONVERGENCE_CASES if case[2] > 1])
def test_matches_paper_updates(method, algorithm, order, weight_3m, steps):
  x, info = _vp_run(steps[0], order=order, method=method, algorithm=algorithm,
                    weight_3m=weight_3m)
  assert int(info["nfe"]) == steps[0] * (order if method == "singlestep" else 1)
  x_T, _ = _pf_ode_solution("vp", PROCESSES["vp"].t_max)
  expected = _paper_chain(x_T, _vp_grid(steps[0]), method, order, algorithm,
                          d2_factor=D2_FACTOR[weight_3m])
  # float32 against float64 through 32-64 network calls: observed <= 2.8e-6.
  np.testing.assert_allclose(np.asarray(x), expected, atol=3e-5)


def test_lower_order_final_matches_paper_orders():
  """6 steps of 3M: orders [1, 2, 3, 3, 2, 1], or [1, 2, 3, 3, 3, 3] without it."""
  grid = grids.make_grid(PROCESSES["vp"], "log_snr", 7)[:-1]
  x_T = prior("vp", 8, seed=2)
  x = {}
  for lower_order_final in (True, False):
    x[lower_order_final], _ = sample("dpm_solver", "vp", "smooth", "eps", x_T, None, grid,
                                     order=3, algorithm="dpmsolver",
                                     lower_order_final=lower_order_final)
    expected = _paper_chain(x_T, grid, "multistep", 3, "dpmsolver", lower_order_final,
                            d2_factor=1.0)
    np.testing.assert_allclose(np.asarray(x[lower_order_final]), expected, atol=2e-5)
  assert max_error(x[True], x[False]) > 1e-3  # The option matters (observed 0.017).


@pytest.mark.parametrize("num_steps, lower_order_final, orders", [
    (6, True, [1, 2, 3, 3, 2, 1]),
    (6, False, [1, 2, 3, 3, 3, 3]),
    (9, True, [1, 2, 3, 3, 3, 3, 3, 2, 1]),
    (10, True, [1, 2, 3, 3, 3, 3, 3, 3, 3, 3]),
])
def test_multistep_order_of_every_step(num_steps, lower_order_final, orders):
  """3M's order chain, step by step: the warm-up 1, 2, then 3, and with lower_order_final,
  only for N < 10 steps, min(3, N - i) at step i = 0..N-1 (the DPM-Solver authors' sampler,
  LuChengTHU/dpm-solver `sample`: `if lower_order_final and steps < 10`). A network whose
  x0 = (lambda, lambda^2) ignores x is recorded at every call; each step's result is matched
  against the paper's order-1, 2 and 3 updates from the recorded point and the history."""
  process, grid = PROCESSES["vp"], _vp_grid(num_steps)
  calls = []

  def recorded_net(x, t, cond):
    lam = 0.5 * process.log_snr(t)[:, None]  # [B, 1]
    jax.debug.callback(lambda x: calls.append(np.asarray(x, np.float64)), x, ordered=True)
    return jnp.concatenate([lam, lam**2], axis=1)

  x_T = prior("vp", 2, seed=5)
  x, _ = dpm_solver(recorded_net, process, x_T, None, grid, prediction="x0", order=3,
                    lower_order_final=lower_order_final)
  jax.effects_barrier()
  points = calls + [np.asarray(x, np.float64)]  # x at grid[0], ..., grid[N]
  lams = [_schedule(t)[2] for t in np.asarray(grid, np.float64)]
  g = lambda lam: np.full((2, 2), [lam, lam**2])
  used = []
  for i, (s, t) in enumerate(zip(np.asarray(grid[:-1]), np.asarray(grid[1:]))):
    history = [(lam, g(lam)) for lam in lams[i::-1][:3]]  # Newest first.
    errors = [max_error(points[i + 1], _paper_multistep(points[i], s, t, history, k,
                                                         "dpmsolver++", d2_factor=1.0))
              for k in range(1, len(history) + 1)]
    used.append(int(np.argmin(errors)) + 1)
    assert min(errors) < 1e-4 < sorted(errors + [1.0])[1], (i, errors)  # One clear match.
  assert used == orders
  assert len(calls) == num_steps


def test_sde_matches_diffusers_2m_update():
  """10 steps of SDE-DPM-Solver++(2M) to t = 0, as test_sde_reproduces_mixture."""
  x_T, key = prior("vp", 4000, seed=8), jax.random.PRNGKey(9)
  grid = grids.make_grid(PROCESSES["vp"], "log_snr", 10)
  x, _ = sample("dpm_solver_sde", "vp", "ring", "eps", x_T, key, grid, order=2)
  expected = _paper_chain(x_T, grid, "multistep", 2, "dpmsolver++", key=key, mixture=RING)
  np.testing.assert_allclose(np.asarray(x), expected, atol=5e-5)  # Observed 5e-6.


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # diffusers' numpy 2 usage.
def test_3m_reference_weight_matches_diffusers():
  """DPMSolverMultistepScheduler(solver_order=3), dpmsolver++, 9 "linspace" steps of
  DDPM-linear into sigma = 0: orders [1, 2, 3, 3, 3, 3, 3, 2, 1] in both (its
  lower_order_final lowers the last two steps below 15 steps; ours min(3, N - i) below 10)."""
  diffusers = pytest.importorskip("diffusers")
  torch = pytest.importorskip("torch")
  scheduler = diffusers.DPMSolverMultistepScheduler(
      num_train_timesteps=T, beta_schedule="linear", solver_order=3,
      algorithm_type="dpmsolver++", lower_order_final=True, final_sigmas_type="zero")
  scheduler.set_timesteps(9)
  grid = np.append((scheduler.timesteps.numpy() + 1) / T, 0.0)  # Index n sits at t = (n + 1) / T.
  x_T = prior("ddpm", 16, seed=3)
  eps_fn = jax.jit(SMOOTH.denoise_fn(PROCESSES["ddpm"], "eps"))
  x_t = torch.tensor(np.asarray(x_T, np.float64))
  for n in scheduler.timesteps:
    t_vec = jnp.full((x_T.shape[0],), (int(n) + 1) / T, jnp.float32)
    eps = eps_fn(jnp.asarray(x_t.numpy(), jnp.float32), t_vec, None)
    x_t = scheduler.step(torch.tensor(np.asarray(eps, np.float64)), n, x_t).prev_sample
  errors = {}
  for weight_3m in ("reference", "taylor"):
    x, _ = sample("dpm_solver", "ddpm", "smooth", "eps", x_T, None, jnp.asarray(grid, jnp.float32),
                  order=3, weight_3m=weight_3m)
    errors[weight_3m] = max_error(x, x_t.numpy())
  # Measured 3.4e-7 (reference, float32 against diffusers' float64) and 1.6e-3 (taylor).
  assert errors["reference"] < 1e-5 < 1e-3 < errors["taylor"], errors


# --------------------------------------------------------------------------
# Convergence to the probability-flow ODE.
# --------------------------------------------------------------------------


def _is_default(case):
  method, algorithm, order, weight_3m, _ = case
  options = dict(order=order, method=method, algorithm=algorithm, weight_3m=weight_3m)
  return dpm_solver.resolve(options) == dpm_solver.resolve({})


# The default configuration's order is measured by test_sampler_registry.py.
@pytest.mark.parametrize("method, algorithm, order, weight_3m, steps",
                         [case for case in CONVERGENCE_CASES if not _is_default(case)])
def test_convergence_order_is_the_declared_one(method, algorithm, order, weight_3m, steps):
  options = dict(order=order, method=method, algorithm=algorithm, weight_3m=weight_3m)
  _, x_ode = _pf_ode_solution("vp", PROCESSES["vp"].t_max)
  errors = [max_error(_vp_run(n, **options)[0], x_ode[PROCESSES["vp"].t_min]) for n in steps]
  # The float64 reference is good to ~1e-8 and float32 sampling to ~1e-6, both
  # far below the smallest error. The references' 3M tends to 2 from above.
  declared = dpm_solver.order(dpm_solver.resolve(options))
  assert declared - 0.3 < _slope(steps, errors) < declared + 0.4, errors


# --------------------------------------------------------------------------
# The step into t = 0 (sigma = 0, lambda = +inf) is the exact first-order limit.
# --------------------------------------------------------------------------


@pytest.mark.parametrize("process_name, prediction, t_max, method, algorithm", [
    ("vp", "eps", 1.0, "singlestep", "dpmsolver"),
    ("edm", "x0", 80.0, "multistep", "dpmsolver++")])
def test_final_step_to_zero(process_name, prediction, t_max, method, algorithm):
  process = PROCESSES[process_name]
  x_T, x_ode = _pf_ode_solution(process_name, t_max)
  grid = grids.make_grid(process, "log_snr", 65)  # 65 steps, the last to t = 0.
  options = dict(order=3, method=method, algorithm=algorithm)
  x, info = sample("dpm_solver", process_name, "smooth", prediction, x_T, None, grid, **options)
  assert int(info["nonfinite_step"]) == -1
  assert int(info["nfe"]) == (3 * 64 + 1 if method == "singlestep" else 65)
  assert int(info["nfe"]) == dpm_solver.nfe(65, True, dpm_solver.resolve(options))
  # The same solver stopped at t_min, then alpha_0 x0_hat (one more network call).
  x_min, _ = sample("dpm_solver", process_name, "smooth", prediction, x_T, None, grid[:-1],
                    **options)
  x0_hat, _ = SMOOTH.x0_eps(process, x_min, jnp.full((64,), grid[-2]))
  assert max_error(x, process.alpha(0.0) * x0_hat) < 1e-5  # Observed <= 2.4e-7.
  # Against the ODE at t = 0: the error at t_min carried over, plus that of the
  # first-order jump. For one Gaussian N(mu, s^2) the flow maps x (at sigma /
  # alpha = r) to mu + (x - mu) s / sqrt(s^2 + r^2) and x0_hat is mu + (x - mu)
  # s^2 / (s^2 + r^2): they differ by < (x - mu) r^2 / (2 s^2), |x - mu| < 4 s.
  ratio2 = float(process.sigma2(process.t_min) / process.alpha(process.t_min) ** 2)
  stds = np.asarray(SMOOTH.stds)
  jump = ratio2 / (2 * stds.min() ** 2) * 4 * stds.max()  # 1.1e-3 (VP), 3.8e-5 (EDM).
  error_min = max_error(x_min, x_ode[process.t_min])
  # Observed: VP 5.9e-4 (1.3e-5 at t_min), EDM 4.7e-4 (4.8e-4 at t_min).
  assert max_error(x, x_ode[0.0]) < error_min + jump


# --------------------------------------------------------------------------
# Dynamic thresholding.
# --------------------------------------------------------------------------


def test_dynamic_threshold_is_imagens_rule():
  x0 = 3.0 * jax.random.normal(jax.random.PRNGKey(0), (4, 50))
  x0 = x0.at[3].set(0.5 * jnp.tanh(x0[3]))  # An example already inside [-1, 1].
  for max_threshold in (1.0, 1.5):
    out = np.asarray(dynamic_threshold(x0, 0.9, max_threshold))
    s = np.maximum(np.quantile(np.abs(np.asarray(x0)), 0.9, axis=1), max_threshold)[:, None]
    np.testing.assert_allclose(out, np.clip(x0, -s, s) / s * max_threshold, rtol=1e-6)
    assert np.abs(out).max() <= max_threshold * (1 + 1e-6)
    np.testing.assert_allclose(out[3], x0[3], rtol=1e-6)  # Quantile below the bound: unchanged.


def test_thresholding_clips_x0_in_the_sampler():
  process = PROCESSES["vp"]
  x_T = 3.0 * prior("vp", 16)

  def fn(x, t, cond):
    return 2.0 * x  # An x0 prediction far outside [-max, max].

  # Into t = 0 the step is alpha_0 x0 = x0: thresholded into [-1, 1], its ends reached.
  options = dict(prediction="x0", order=2, thresholding=True)
  x, _ = dpm_solver(fn, process, x_T, None, jnp.asarray([0.5, 0.0]), **options)
  np.testing.assert_allclose(np.asarray(x), dynamic_threshold(2.0 * x_T), rtol=1e-5)
  assert np.abs(np.asarray(x)).max() == pytest.approx(1.0, rel=1e-5)
  # One finite step: alpha_t x0 + sigma_t eps with eps recomputed from the
  # thresholded x0, here into [-1.5, 1.5].
  x0 = np.asarray(dynamic_threshold(2.0 * x_T, 0.995, 1.5))
  assert np.abs(x0).max() == pytest.approx(1.5, rel=1e-5)
  a_s, s_s, a_t, s_t = (float(f(u)) for u in (0.5, 0.2) for f in (process.alpha, process.sigma))
  x, _ = dpm_solver(fn, process, x_T, None, jnp.asarray([0.5, 0.2]), algorithm="dpmsolver",
                    max_threshold=1.5, **options)
  expected = a_t * x0 + s_t * (np.asarray(x_T) - a_s * x0) / s_s
  np.testing.assert_allclose(np.asarray(x), expected, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------
# SDE-DPM-Solver++ reproduces the mixture.
# --------------------------------------------------------------------------


def test_sde_reproduces_mixture():
  num = 4000
  process = PROCESSES["vp"]
  x_T, key = prior("vp", num, seed=8), jax.random.PRNGKey(9)
  means, weights, std = (np.asarray(a, np.float64) for a in (RING.means, RING.weights,
                                                             RING.stds[0]))
  # Multinomial and per-mode standard errors, 5 of each (4000 samples, ~500 a mode).
  se_w = np.sqrt(weights * (1 - weights) / num)
  mean_z = {}
  for num_steps in (10, 100):
    grid = grids.make_grid(process, "log_snr", num_steps)
    x, info = sample("dpm_solver_sde", "vp", "ring", "eps", x_T, key, grid, order=2)
    assert int(info["nfe"]) == num_steps
    x = np.asarray(x, np.float64)
    k = np.argmin(((x[:, None] - means) ** 2).sum(-1), axis=1)  # Nearest mode, [num].
    counts = np.bincount(k, minlength=len(means))
    np.testing.assert_array_less(np.abs(counts / num - weights), 5 * se_w)  # Observed <= 2.7.
    mode_means = np.stack([x[k == j].mean(0) for j in range(len(means))])
    mean_z[num_steps] = np.max(np.abs(mode_means - means) / (std / np.sqrt(counts)[:, None]))
  # Means: discretization bias dominates at 10 steps (observed 23 standard
  # errors) and is gone at 100 (observed 1.1).
  assert mean_z[100] < 5 < mean_z[10], mean_z
  # Spread: the last step returns E[x_0 | x_t] at t_min, within-mode std
  # alpha s^2 / sqrt(alpha^2 s^2 + sigma^2) = 0.0793; observed 0.0799 (+0.8%). The mean
  # of 16 sample stds (8 modes x 2 coordinates, n_k ~ 500 points, each with a relative
  # standard error 1 / sqrt(2 (n_k - 1))) has sqrt(sum_k 1 / (n_k - 1)) / 16 = 0.8%; 5 of them.
  alpha, sigma2 = float(process.alpha(process.t_min)), float(process.sigma2(process.t_min))
  expected = alpha * std**2 / np.sqrt(alpha**2 * std**2 + sigma2)
  spread = np.mean([x[k == j].std(0).mean() for j in range(len(means))])
  se = np.sqrt(np.sum(1.0 / (counts - 1))) / 16
  assert abs(spread / expected - 1) < 5 * se, (spread, se)


# --------------------------------------------------------------------------
# NaN reports, NFE rules, errors.
# --------------------------------------------------------------------------


def test_nonfinite_values_are_reported_with_their_step():
  process = PROCESSES["vp"]
  grid = grids.make_grid(process, "uniform", 10)
  broken = lambda x, t, cond: jnp.where(t[:, None] < 0.5, jnp.nan, x)
  first = int(np.argmax(np.asarray(grid[:-1]) < 0.5))  # The first step evaluated below 0.5.
  # Singlestep 2 also evaluates at the log-SNR midpoint of each step.
  midpoint = process.t_from_log_snr(0.5 * (process.log_snr(grid[first - 1])
                                           + process.log_snr(grid[first])))
  for method in ("singlestep", "multistep"):
    _, info = dpm_solver(broken, process, jnp.ones((4, 2)), None, grid, method=method)
    early = method == "singlestep" and float(midpoint) < 0.5
    assert int(info["nonfinite_step"]) == first - early
    with pytest.raises(FloatingPointError, match="sampling produced NaN"):
      samplers.raise_if_nonfinite(info, grid)


def test_num_steps_rules():
  singlestep = lambda order: {"order": order, "method": "singlestep"}
  assert dpm_solver.num_steps(7) == 7  # Multistep: one call per step.
  assert dpm_solver.num_steps(7, singlestep(1)) == 7
  assert dpm_solver.num_steps(10, singlestep(3)) == 4  # 3 * 3 + 1.
  assert dpm_solver.num_steps(9, singlestep(3), ends_at_zero=False) == 3
  assert samplers.num_steps_for("dpm_solver", 9, {**singlestep(2), "algorithm": "dpmsolver"}) == 5
  assert samplers.num_steps_for("dpm_solver_sde", 12, {"order": 2}) == 12
  with pytest.raises(ValueError, match=r"order=3, method='singlestep'.*cannot spend exactly "
                                       r"nfe=9 on a grid ending at sigma = 0; nearest NFE that "
                                       r"work: 7 or 10"):
    dpm_solver.num_steps(9, singlestep(3))
  with pytest.raises(ValueError, match=r"nfe=10 on a grid ending at sigma > 0.*work: 9 or 12"):
    dpm_solver.num_steps(10, singlestep(3), ends_at_zero=False)
  with pytest.raises(ValueError, match=r"nfe=2 on a grid ending at sigma > 0.*work: 3$"):
    dpm_solver.num_steps(2, singlestep(3), ends_at_zero=False)
  with pytest.raises(ValueError, match="nfe must be a positive integer"):
    dpm_solver.num_steps(0)
  with pytest.raises(ValueError, match=r"got unknown \['ordr'\]"):
    samplers.num_steps_for("dpm_solver", 5, {"ordr": 2})


def test_declared_orders():
  order = lambda entry, **options: entry.order(entry.resolve(options))
  assert order(dpm_solver) == 2 and order(dpm_solver, order=1) == 1
  assert order(dpm_solver, order=3) == 2  # 3M with the references' weight.
  assert order(dpm_solver, order=3, weight_3m="taylor") == 3
  assert order(dpm_solver, order=3, method="singlestep") == 3
  assert order(dpm_solver_sde) == 1
  assert not dpm_solver.stochastic(dpm_solver.resolve({}))
  assert dpm_solver_sde.stochastic(dpm_solver_sde.resolve({}))


def test_errors():
  process = PROCESSES["vp"]
  fn = SMOOTH.denoise_fn(process)
  x_T, grid = prior("vp", 3), grids.make_grid(process, "uniform", 4)
  for order, message in ((0, r"unknown order 0 for dpm_solver; valid: \[1, 2, 3\]"),
                         (4, r"unknown order 4"), (2.5, "option order must be of type int, got 2.5"),
                         (True, "option order must be of type int, got True")):
    with pytest.raises(ValueError, match=message):
      dpm_solver(fn, process, x_T, None, grid, order=order)
  with pytest.raises(ValueError, match=r"unknown order 3 for dpm_solver_sde; valid: \[1, 2\]"):
    dpm_solver_sde(fn, process, x_T, jax.random.PRNGKey(0), grid, order=3)
  with pytest.raises(ValueError, match="unknown method 'adaptive'.*singlestep"):
    dpm_solver(fn, process, x_T, None, grid, method="adaptive")
  with pytest.raises(ValueError, match="unknown algorithm 'sde-dpmsolver'.*dpmsolver\\+\\+"):
    dpm_solver(fn, process, x_T, None, grid, algorithm="sde-dpmsolver")
  with pytest.raises(ValueError, match=r"unknown weight_3m 'half'.*\['reference', 'taylor'\]"):
    dpm_solver(fn, process, x_T, None, grid, weight_3m="half")
  with pytest.raises(ValueError, match=r"threshold_ratio must be in \(0, 1\], got 1.5"):
    dpm_solver(fn, process, x_T, None, grid, thresholding=True, threshold_ratio=1.5)
  with pytest.raises(ValueError, match="max_threshold must be positive"):
    dpm_solver(fn, process, x_T, None, grid, thresholding=True, max_threshold=0.0)
  with pytest.raises(ValueError, match="unknown prediction type 'noise'"):
    dpm_solver(fn, process, x_T, None, grid, prediction="noise")
  with pytest.raises(ValueError, match="grid must be 1-D"):
    dpm_solver(fn, process, x_T, None, grid[:1])
  with pytest.raises(ValueError, match="grid must lie in VP's time domain"):
    dpm_solver_sde(fn, process, x_T, jax.random.PRNGKey(0),
                   grids.make_grid(PROCESSES["edm"], "karras", 4))


@pytest.mark.parametrize("sampler_name, options", [
    ("ddim", {}), ("dpm_solver", {"order": 2}), ("dpm_solver", {"order": 3}),
    ("dpm_solver_sde", {"order": 2})])
def test_gradient_in_the_grid_is_finite_into_sigma_zero(sampler_name, options):
  # grids.learned differentiates a sampler in its inner times; the empty history
  # (lambda = -inf) and the last step's h = inf must not leak NaN into it.
  process = PROCESSES["vp"]
  x_T = prior("vp", 16)
  grid = grids.make_grid(process, "log_snr", 5)

  def loss(inner):
    times = grid.at[1:-1].set(inner)
    x_0, _ = SAMPLERS[sampler_name](SMOOTH.denoise_fn(process, "eps"), process, x_T,
                                    jax.random.PRNGKey(0), times, **options)
    return jnp.mean(x_0**2)

  grad = jax.jit(jax.grad(loss))(grid[1:-1])
  assert np.all(np.isfinite(grad)) and np.any(grad != 0), grad
