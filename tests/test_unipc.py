"""Tests for UniPC (Zhao et al. 2023): the phi functions against float64 closed
forms; order 1 without corrector is DDIM; the empirical convergence orders of
UniP-p (p) and UniPC-p (p + 1) against a diffrax solution of the
probability-flow ODE; the corrector's gain at no NFE; the ends of the grid
where the log-SNR is infinite; agreement with a float64 transcription of
diffusers' update formulas (and with diffusers itself when installed); errors."""

import functools
import math

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate

from jaxdiff import grids, oracle, sde
from jaxdiff.samplers import ddim
from jaxdiff.samplers.unipc import _phi, unipc

from conftest import OPTIMIZED, PROCESSES, prior, toy_denoise_fn

T = 1000  # conftest's PROCESSES["ddpm"] is the linear DDPM of T steps.
# A smooth oracle (stds >= 0.35): the denoiser varies slowly in log-SNR, so the
# high orders show at step counts whose errors stay above float32 rounding. (Not
# conftest's SMOOTH: the slopes and errors measured below are this mixture's.)
MIXTURE = oracle.GaussianMixture(weights=np.array([0.3, 0.7]),
                                 means=np.array([[-0.6, 0.4], [0.5, -0.3]]),
                                 stds=np.array([0.35, 0.4]))
OPTIONS = ("order", "variant", "predict_x0", "corrector", "lower_order_final")
# The oracle's eps on the DDPM, for the host-side loops of the diffusers tests.
DDPM_EPS = jax.jit(MIXTURE.denoise_fn(PROCESSES["ddpm"], "eps"))


@functools.partial(jax.jit, static_argnums=(0, 1, 2), static_argnames=OPTIONS,
                   compiler_options=OPTIMIZED)
def sample(sampler_name, process_name, prediction, x_T, grid, **options):
  """UniPC or DDIM (eta = 0) with the oracle's exact denoiser; jitted once per setup."""
  process = PROCESSES[process_name]
  sampler = {"unipc": unipc, "ddim": ddim}[sampler_name]
  return sampler(MIXTURE.denoise_fn(process, prediction), process, x_T, jax.random.PRNGKey(0),
                 grid, prediction=prediction, **options)


# --------------------------------------------------------------------------
# The exponential-integrator functions phi_k.
# --------------------------------------------------------------------------


def test_phi_functions_match_float64_closed_forms():
  """phi_k(x) = (e^x - sum_{j<k} x^j / j!) / x^k = int_0^1 e^{(1-u) x} u^{k-1} / (k-1)! du,
  phi_k(0) = 1 / k!, for k = 1..4 (UniPC-3 uses up to phi_4), on both sides of the switch
  between the Taylor series and the recursion at |x| = 1 and for both signs of x
  (hh = -h < 0 with the data prediction, h > 0 with the noise prediction)."""
  xs = np.array([-4.0, -2.0, -1.0, -0.999, -0.7, -0.3, -0.05, -1e-3, 0.0, 1e-3, 0.05, 0.3,
                 0.7, 0.999, 1.0, 2.0, 4.0])
  phis = np.asarray(jax.jit(lambda x: jnp.stack(_phi(x, 4)))(jnp.asarray(xs, jnp.float32)))
  for k in range(1, 5):
    # The closed form in float64 where it does not cancel badly, the integral everywhere.
    big = np.abs(xs) >= 0.3
    taylor_head = sum(xs[big] ** j / math.factorial(j) for j in range(k))
    np.testing.assert_allclose(phis[k - 1, big], (np.exp(xs[big]) - taylor_head) / xs[big] ** k,
                               rtol=5e-6, err_msg=f"phi_{k}")
    integral = [integrate.quad(lambda u: math.exp((1 - u) * x) * u ** (k - 1), 0.0, 1.0,
                               epsabs=0.0, epsrel=1e-12)[0] / math.factorial(k - 1) for x in xs]
    np.testing.assert_allclose(phis[k - 1], integral, rtol=5e-6, err_msg=f"phi_{k}")
    assert phis[k - 1, xs == 0.0] == pytest.approx(1 / math.factorial(k), rel=1e-7)


# --------------------------------------------------------------------------
# Order 1 without the corrector is DDIM.
# --------------------------------------------------------------------------


@pytest.mark.parametrize("process_name, prediction, grid_name, predict_x0", [
    ("vp", "eps", "log_snr", True),  # Ends at t = 0: lambda = +inf.
    ("vp", "eps", "log_snr", False),
    ("flow", "velocity", "uniform", True)])  # Starts at t = 1: lambda = -inf.
def test_order_one_without_corrector_is_ddim(process_name, prediction, grid_name, predict_x0):
  grid = grids.make_grid(PROCESSES[process_name], grid_name, 20)
  x_T = prior(process_name, 64)
  x_ddim, _ = sample("ddim", process_name, prediction, x_T, grid)
  x_unipc, info = sample("unipc", process_name, prediction, x_T, grid, order=1, corrector=False,
                         predict_x0=predict_x0)
  # Algebraically equal (sigma_t / sigma_s x + alpha_t (1 - e^-h) x0 is DDIM's
  # alpha_t x0 + sigma_t eps); float32 rounding differs by <= 8.3e-7 here (|x| ~ 1).
  np.testing.assert_allclose(np.asarray(x_unipc), np.asarray(x_ddim), atol=5e-6)
  assert int(info["nfe"]) == 20 and int(info["nonfinite_step"]) == -1


# --------------------------------------------------------------------------
# Convergence to the probability-flow ODE.
# --------------------------------------------------------------------------


@functools.cache
def _pf_ode_solution(process_name):
  """x_T [64, 2] at t_max and the PF-ODE solution at t_min and 0: {t: [64, 2]}.

  Tsit5 at rtol = atol = 1e-8 agrees with Dopri8 at 1e-7 to ~1e-6 (float32).
  The drift is f x - g^2 score / 2 (Song et al. eq. 13); for flow matching,
  whose f = -1 / (1 - t) is infinite at t = 1, it is the equal velocity
  alpha' x0 + sigma' eps, finite there (and infinite for VP at t = 0).
  """
  process = PROCESSES[process_name]
  x_T = prior(process_name, 64, seed=4)
  if process_name == "flow":
    velocity = MIXTURE.denoise_fn(process, "velocity")
    drift = lambda t, x, args: velocity(x, t)
  else:
    drift = lambda t, x, args: sde.pf_ode_drift(process, x, t, MIXTURE.score(process, x, t))
  t_max, t_min = (float(np.float32(t)) for t in (process.t_max, process.t_min))
  solution = diffrax.diffeqsolve(
      diffrax.ODETerm(drift), diffrax.Tsit5(), t0=t_max, t1=0.0, dt0=-t_max / 100, y0=x_T,
      saveat=diffrax.SaveAt(ts=[t_min, 0.0]),
      stepsize_controller=diffrax.PIDController(rtol=1e-8, atol=1e-8), max_steps=10_000)
  return x_T, {t_min: solution.ys[0], 0.0: solution.ys[1]}


def _rms(x, y):
  return float(jnp.sqrt(jnp.mean((x - y) ** 2)))


@functools.cache
def _vp_error(num_steps, order, corrector):
  """RMS error at t_min of UniPC on a log-SNR grid of num_steps steps ending at t_min."""
  process = PROCESSES["vp"]
  x_T, x_ode = _pf_ode_solution("vp")
  x_ode = x_ode[float(np.float32(process.t_min))]
  grid = grids.make_grid(process, "log_snr", num_steps + 1)[:-1]
  x, info = sample("unipc", "vp", "eps", x_T, grid, order=order, corrector=corrector,
                   lower_order_final=False)
  assert int(info["nfe"]) == num_steps
  return _rms(x, x_ode)


COARSE, FINE = 16, 48


# Measured slopes log(e_16 / e_48) / log 3 (float32, rms over 64 x 2 points)
# here: UniP-1..3 0.96, 1.96, 2.93; UniPC-1..3 1.92, 2.88, 3.82; over x_T
# seeds 0-5 UniP 0.96-0.98, 1.96-1.99, 2.85-2.93 and UniPC 1.92-1.94,
# 2.87-2.92, 3.78-3.90. UniPC-3 is still pre-asymptotic at N = 16: a float64
# run of the same formulas on this mixture reaches 3.9 only between N = 32 and
# 64, where float32 rounding (~1e-6) begins to show. Within 0.3, each order is
# told apart from its neighbours.
@pytest.mark.parametrize("order, corrector, expected", [
    (1, False, 1), (2, False, 2), (3, False, 3), (1, True, 2), (2, True, 3), (3, True, 4)])
def test_convergence_order(order, corrector, expected):
  """UniP-p has order p (Corollary 3.2), UniPC-p order p + 1 (Theorem 3.1).

  lower_order_final is off, so that every step after the warm-up runs at the
  full order (its order-1 last step has a local error O(h^2)).
  """
  options = dict(order=order, corrector=corrector, lower_order_final=False)
  assert unipc.order(unipc.resolve(options)) == expected  # The registry's declaration.
  coarse, fine = _vp_error(COARSE, order, corrector), _vp_error(FINE, order, corrector)
  slope = math.log(coarse / fine) / math.log(FINE / COARSE)
  assert abs(slope - expected) < 0.3, (coarse, fine, slope)


@pytest.mark.parametrize("order", [1, 2, 3])
def test_corrector_changes_the_result_and_reduces_the_error(order):
  # Measured error ratios UniP / UniPC at N = 16 and 48, at the same NFE:
  # p = 1: 2.30, 6.59; p = 2: 1.53, 4.23; p = 3: 1.18, 3.11.
  for num_steps, factor in ((COARSE, 1.05), (FINE, 2.0)):
    error_p, error_pc = _vp_error(num_steps, order, False), _vp_error(num_steps, order, True)
    assert error_pc * factor < error_p, (num_steps, error_p, error_pc)


# --------------------------------------------------------------------------
# Infinite log-SNR at the ends of the grid.
# --------------------------------------------------------------------------


@pytest.mark.parametrize("process_name, prediction, grid_name, lower_order_final, tolerance", [
    ("vp", "eps", "log_snr", False, 2e-3), ("vp", "eps", "log_snr", True, 2e-3),
    ("flow", "velocity", "uniform", True, 0.03)])
def test_infinite_log_snr_ends(process_name, prediction, grid_name, lower_order_final,
                               tolerance):
  """Grids ending at t = 0 (lambda = +inf), and flow matching's t = 1 (lambda = -inf).

  A step with an infinite h is taken at order 1, so UniPC-3 stays finite and
  accurate even with lower_order_final off (an order-3 step to lambda = +inf
  would divide by r_k = 0). Measured rms errors at N = 24: VP 6.7e-4 / 6.3e-4
  (lower_order_final off / on), flow 1.0e-2. On flow's uniform grid the step
  from t = 0.044 to t_min = 0.001 spans 3.8 in lambda; without
  lower_order_final UniPC-3 extrapolates over it from steps of 0.5 and misses
  by 0.23 (rms), so that case is not run.
  """
  process = PROCESSES[process_name]
  grid = grids.make_grid(process, grid_name, 24)
  x_T, x_ode = _pf_ode_solution(process_name)
  x_ode = x_ode[0.0]
  x, info = sample("unipc", process_name, prediction, x_T, grid, order=3,
                   lower_order_final=lower_order_final)
  assert int(info["nonfinite_step"]) == -1
  assert _rms(x, x_ode) < tolerance


# --------------------------------------------------------------------------
# diffusers' UniPCMultistepScheduler: a float64 transcription of its update
# formulas, and the library itself when installed.
# --------------------------------------------------------------------------


def _diffusers_update(x, outputs, lambdas, alpha_t, sigma_t, alpha_s, sigma_s, lambda_t, order,
                      predict_x0, variant, output_t=None):
  """multistep_uni_p_bh_update (output_t None) or multistep_uni_c_bh_update, float64.

  outputs/lambdas: the model outputs and half log-SNRs so far, oldest first;
  the step goes from the last of them to lambda_t.
  """
  h = lambda_t - lambdas[-1]
  m0 = outputs[-1]
  rks = [(lambdas[-(k + 1)] - lambdas[-1]) / h for k in range(1, order)]
  d1s = [(outputs[-(k + 1)] - m0) / rk for k, rk in enumerate(rks, start=1)]
  rks = np.array(rks + [1.0])
  hh = -h if predict_x0 else h
  h_phi_1 = np.expm1(hh)
  b_h = hh if variant == "bh1" else np.expm1(hh)
  h_phi_k, factorial, rows, b = h_phi_1 / hh - 1.0, 1, [], []
  for i in range(1, order + 1):  # R_p and g_p / B(h) of the paper.
    rows.append(rks ** (i - 1))
    b.append(h_phi_k * factorial / b_h)
    factorial *= i + 1
    h_phi_k = h_phi_k / hh - 1.0 / factorial
  rows, b = np.stack(rows), np.array(b)
  if predict_x0:
    x_t = sigma_t / sigma_s * x - alpha_t * h_phi_1 * m0
    scale = alpha_t * b_h
  else:
    x_t = alpha_t / alpha_s * x - sigma_t * h_phi_1 * m0
    scale = sigma_t * b_h
  if output_t is None:  # UniP: rho = 1/2 at order 2.
    rhos = [0.5] if order == 2 else (np.linalg.solve(rows[:-1, :-1], b[:-1]) if d1s else [])
    return x_t - scale * sum((r * d for r, d in zip(rhos, d1s)), np.zeros_like(x))
  rhos = [0.5] if order == 1 else np.linalg.solve(rows, b)  # UniC: rho = 1/2 at order 1.
  residual = sum((r * d for r, d in zip(rhos[:-1], d1s)), rhos[-1] * (output_t - m0))
  return x_t - scale * residual


def _diffusers_transcription(x_T, grid, alphas, sigmas, order, variant, predict_x0,
                             lower_order_final):
  """The loop of UniPCMultistepScheduler.step, float64, with the oracle's eps."""
  with np.errstate(divide="ignore"):
    lambdas = np.log(alphas) - np.log(sigmas)  # Half log-SNR; +inf at sigma = 0.
  num_steps = len(grid) - 1
  x, outputs, last_x, last_order = np.asarray(x_T, np.float64), [], None, None
  for i in range(num_steps):
    t_vec = jnp.full((x.shape[0],), grid[i], jnp.float32)
    eps = np.asarray(DDPM_EPS(jnp.asarray(x, jnp.float32), t_vec, None), np.float64)
    output = (x - sigmas[i] * eps) / alphas[i] if predict_x0 else eps
    if i > 0:  # The corrector of step i - 1 -> i, at the previous predictor's order.
      x = _diffusers_update(last_x, outputs, list(lambdas[:i]), alphas[i], sigmas[i],
                            alphas[i - 1], sigmas[i - 1], lambdas[i], last_order, predict_x0,
                            variant, output_t=output)
    outputs.append(output)
    step_order = min(order, num_steps - i) if lower_order_final else order
    last_order, last_x = min(step_order, i + 1), x
    x = _diffusers_update(x, outputs, list(lambdas[:i + 1]), alphas[i + 1], sigmas[i + 1],
                          alphas[i], sigmas[i], lambdas[i + 1], last_order, predict_x0, variant)
  return x


# diffusers' defaults but order 3; and bh1 with the noise prediction.
DIFFUSERS_CASES = {"order3_bh2_x0": dict(order=3, variant="bh2", predict_x0=True,
                                         lower_order_final=True, final_sigmas_type="zero"),
                   "order2_bh1_eps": dict(order=2, variant="bh1", predict_x0=False,
                                          lower_order_final=False,
                                          final_sigmas_type="sigma_min")}


def _diffusers_grid(num_steps, final_sigmas_type):
  """diffusers' UniPC "linspace" timesteps n, at t = (n + 1) / T, then its final sigma."""
  n = np.linspace(0, T - 1, num_steps + 1).round()[::-1][:-1]
  end = 0.0 if final_sigmas_type == "zero" else 1.0 / T  # sigma_min: diffusers' step 0.
  return np.append((n + 1) / T, end)


@functools.cache
def _unipc_on_diffusers_case(name):
  """x_T [16, 2] (float64), the grid [11], and UniPC's sample on DDPM-linear."""
  options = dict(DIFFUSERS_CASES[name])
  grid = _diffusers_grid(10, options.pop("final_sigmas_type"))
  x_T = prior("ddpm", 16, seed=3)
  x, _ = sample("unipc", "ddpm", "eps", x_T, jnp.asarray(grid, jnp.float32), **options)
  return np.asarray(x_T, np.float64), grid, np.asarray(x, np.float64)


@pytest.mark.parametrize("name", list(DIFFUSERS_CASES))
def test_matches_float64_transcription_of_diffusers(name):
  x_T, grid, x = _unipc_on_diffusers_case(name)
  options = {k: v for k, v in DIFFUSERS_CASES[name].items() if k != "final_sigmas_type"}
  alpha_bar = np.append(1.0, np.cumprod(1.0 - np.asarray(PROCESSES["ddpm"].betas)))
  alpha_bar = alpha_bar[np.round(grid * T).astype(int)]  # Step n + 1 sits at t = (n + 1) / T.
  expected = _diffusers_transcription(x_T, grid, np.sqrt(alpha_bar), np.sqrt(1 - alpha_bar),
                                      **options)
  # Measured max difference 3.1e-7 (order3_bh2_x0), 1.1e-6 (order2_bh1_eps),
  # |x| <= 1.1: float32 against float64.
  np.testing.assert_allclose(x, expected, atol=1e-5)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # diffusers' numpy 2 usage.
@pytest.mark.parametrize("name", list(DIFFUSERS_CASES))
def test_matches_diffusers(name):
  diffusers = pytest.importorskip("diffusers")
  torch = pytest.importorskip("torch")
  x_T, grid, x = _unipc_on_diffusers_case(name)
  options = DIFFUSERS_CASES[name]
  scheduler = diffusers.UniPCMultistepScheduler(
      num_train_timesteps=T, beta_schedule="linear", solver_order=options["order"],
      solver_type=options["variant"], predict_x0=options["predict_x0"],
      lower_order_final=options["lower_order_final"],
      final_sigmas_type=options["final_sigmas_type"])
  scheduler.set_timesteps(10)
  np.testing.assert_allclose((scheduler.timesteps.numpy() + 1) / T, grid[:-1])
  sample_t = torch.tensor(x_T)
  for n in scheduler.timesteps:
    t_vec = jnp.full((x_T.shape[0],), (int(n) + 1) / T, jnp.float32)
    eps = DDPM_EPS(jnp.asarray(sample_t.numpy(), jnp.float32), t_vec, None)
    sample_t = scheduler.step(torch.tensor(np.asarray(eps, np.float64)), n, sample_t).prev_sample
  # Measured max difference 4.4e-7 (order3_bh2_x0) and 1.6e-6 (order2_bh1_eps).
  np.testing.assert_allclose(x, sample_t.numpy(), atol=1e-5)


# --------------------------------------------------------------------------
# Errors.
# --------------------------------------------------------------------------


def test_errors():
  process = PROCESSES["vp"]
  x_T, key = prior("vp", 3), jax.random.PRNGKey(0)
  grid = grids.make_grid(process, "uniform", 4)
  for order, message in ((0, r"unknown order 0 for unipc; valid: \[1, 2, 3\]"),
                         (4, r"unknown order 4 for unipc"),
                         (2.0, r"unipc option order must be of type int, got 2.0 \(float\)"),
                         (True, r"unipc option order must be of type int, got True \(bool\)")):
    with pytest.raises(ValueError, match=message):
      unipc(toy_denoise_fn, process, x_T, key, grid, order=order)
    with pytest.raises(ValueError, match=message):
      unipc.num_steps(10, {"order": order})
  with pytest.raises(ValueError, match=r"unknown variant 'bh3' for unipc; valid: \['bh1', 'bh2'\]"):
    unipc(toy_denoise_fn, process, x_T, key, grid, variant="bh3")
  with pytest.raises(ValueError, match="unknown prediction type 'noise'"):
    unipc(toy_denoise_fn, process, x_T, key, grid, prediction="noise")
  with pytest.raises(ValueError, match="grid must be 1-D"):
    unipc(toy_denoise_fn, process, x_T, key, grid[:1])
