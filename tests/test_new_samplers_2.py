"""Tests for DEIS and SA-Solver: each against diffusers' scheduler on its own grid
(SA-Solver with the same injected noise), DEIS's empirical convergence order
against a float64 diffrax solution of the probability-flow ODE and its
first-order end at sigma = 0, SA-Solver's samples in distribution against the
oracle's mixture, and the declarations. NFE counting, the input checks and the
NaN flags are the registry-wide contract test's (tests/test_sampler_registry.py)."""

import functools

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff import grids, oracle, sde
from jaxdiff.samplers import SAMPLERS

import conftest
from conftest import OPTIMIZED, PROCESSES

T = 1000  # conftest's PROCESSES["ddpm"] is the linear DDPM of T steps.
# A smooth oracle (stds >= 0.35): the denoiser varies slowly in log-SNR, so
# third order shows at step counts whose errors stay above float32 rounding.
# (Not conftest's SMOOTH: the errors measured below are this mixture's.)
MIXTURE = oracle.GaussianMixture(weights=np.array([0.3, 0.7]),
                                 means=np.array([[-0.6, 0.4], [0.5, -0.3]]),
                                 stds=np.array([0.35, 0.4]))
OPTIONS = ("order", "lower_order_final", "predictor_order", "corrector_order", "tau",
           "tau_interval")


@functools.partial(jax.jit, static_argnums=(0, 1), static_argnames=OPTIONS,
                   compiler_options=OPTIMIZED)
def sample(name, process_name, x_T, key, grid, **options):
  """A registry sampler with the oracle's exact eps; jitted once per setup."""
  process = PROCESSES[process_name]
  return SAMPLERS[name](MIXTURE.denoise_fn(process, "eps"), process, x_T, key, grid, **options)


prior = functools.partial(conftest.prior, seed=3)  # The measured numbers below are seed 3's.


# --------------------------------------------------------------------------
# Parity with diffusers on its own grid.
# --------------------------------------------------------------------------

DDPM_EPS = jax.jit(MIXTURE.denoise_fn(PROCESSES["ddpm"], "eps"))


def _run_diffusers(scheduler, x_T, noise=None):
  """diffusers' sampling loop with the oracle's eps: (its grid in our t [N + 1], x_0)."""
  torch = pytest.importorskip("torch")
  scheduler.set_timesteps(10)
  # Its training step n sits at our t = (n + 1) / T; it ends at alphas_cumprod[0], t = 1 / T.
  grid = np.append((scheduler.timesteps.numpy() + 1) / T, 1.0 / T)
  x = torch.tensor(np.asarray(x_T, np.float64))
  for n in scheduler.timesteps:
    t_vec = jnp.full((x_T.shape[0],), (int(n) + 1) / T, jnp.float32)
    eps = torch.tensor(np.asarray(DDPM_EPS(jnp.asarray(x.numpy(), jnp.float32), t_vec, None),
                                  np.float64))
    x = scheduler.step(eps, n, x).prev_sample
  return jnp.asarray(grid, jnp.float32), x.numpy()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # diffusers' numpy 2 usage.
@pytest.mark.parametrize("order, lower_order_final", [(3, True)])  # (2, False) too, measured below.
def test_deis_matches_diffusers(order, lower_order_final):
  diffusers = pytest.importorskip("diffusers")
  scheduler = diffusers.DEISMultistepScheduler(
      num_train_timesteps=T, beta_schedule="linear", solver_order=order,
      lower_order_final=lower_order_final)
  x_T = prior("ddpm", 16)
  grid, expected = _run_diffusers(scheduler, x_T)
  x, info = sample("deis", "ddpm", x_T, None, grid, order=order,
                   lower_order_final=lower_order_final)
  assert int(info["nfe"]) == 10
  # Measured max difference 2.1e-6 (3, True) and 7.2e-7 (2, False), |x| <= 1.4:
  # float32 against diffusers' float64. (Order 3 without lower_order_final, whose
  # last step extrapolates over its longest h: 1.6e-5.)
  np.testing.assert_allclose(np.asarray(x), expected, atol=1e-5)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("predictor_order, corrector_order", [(3, 3)])  # Others: measured below.
def test_sa_solver_matches_diffusers_with_the_same_noise(predictor_order, corrector_order,
                                                         monkeypatch):
  diffusers = pytest.importorskip("diffusers")
  torch = pytest.importorskip("torch")
  from diffusers.schedulers import scheduling_sasolver  # pylint: disable=import-outside-toplevel

  x_T, key = prior("ddpm", 16), jax.random.PRNGKey(7)
  # Step i's z, as base.normal draws it: diffusers' randn_tensor returns them in turn.
  noise = iter([np.asarray(jax.random.normal(jax.random.fold_in(key, i), x_T.shape), np.float64)
                for i in range(10)])
  monkeypatch.setattr(scheduling_sasolver, "randn_tensor",
                      lambda shape, **kwargs: torch.tensor(next(noise)))
  # Its default tau_func: 1 on training steps 200..800, i.e. t in [0.2, 0.8] here.
  scheduler = diffusers.SASolverScheduler(num_train_timesteps=T, beta_schedule="linear",
                                          predictor_order=predictor_order,
                                          corrector_order=corrector_order)
  grid, expected = _run_diffusers(scheduler, x_T)
  x, info = sample("sa_solver", "ddpm", x_T, key, grid, predictor_order=predictor_order,
                   corrector_order=corrector_order)
  assert int(info["nfe"]) == 10
  # Measured max difference 2.0e-6 (3, 3) and 1.8e-6 (2, 2), |x| <= 1.4 (also
  # 2.2e-6, 1.8e-6, 1.9e-6, 1.9e-6 for (1, 1), (4, 4), (3, 1), (1, 3)).
  np.testing.assert_allclose(np.asarray(x), expected, atol=1e-5)


# --------------------------------------------------------------------------
# DEIS: empirical order against the exact PF-ODE solution; the end at sigma = 0.
# --------------------------------------------------------------------------


@functools.cache
def _pf_ode_solution():
  """x_T [64, 2] and the VP PF-ODE solutions {t_min, 0: [64, 2]} (Tsit5, float64, 1e-10)."""
  process = PROCESSES["vp"]
  x_T = prior("vp", 64, seed=4)

  def drift(t, x, args):
    return sde.pf_ode_drift(process, x, t, MIXTURE.score(process, x, t))

  t_max, t_min = float(np.float32(process.t_max)), float(np.float32(process.t_min))
  with jax.enable_x64(True):
    solution = diffrax.diffeqsolve(
        diffrax.ODETerm(drift), diffrax.Tsit5(), t0=t_max, t1=0.0, dt0=-t_max / 100,
        y0=jnp.asarray(np.asarray(x_T), jnp.float64), saveat=diffrax.SaveAt(ts=[t_min, 0.0]),
        stepsize_controller=diffrax.PIDController(rtol=1e-10, atol=1e-10), max_steps=100_000)
  return x_T, np.asarray(solution.ys)


def _deis_error(order, num_steps, to_zero=False):
  """Max error of DEIS on num_steps log-SNR-uniform steps to t_min (or on to 0)."""
  x_T, (at_t_min, at_zero) = _pf_ode_solution()
  grid = grids.make_grid(PROCESSES["vp"], "log_snr", num_steps + 1)  # [..., t_min, 0]
  grid = grid if to_zero else grid[:-1]
  x, _ = sample("deis", "vp", x_T, None, grid, order=order, lower_order_final=False)
  return float(np.max(np.abs(np.asarray(x, np.float64) - (at_zero if to_zero else at_t_min))))


# Order 2 is the default: with lower_order_final off or on (it acts below 15 steps only)
# the same runs at these N, measured by test_sampler_registry.py.
@pytest.mark.parametrize("order, steps", [(1, (32, 128)), (3, (16, 64))])
def test_deis_convergence_order_is_the_declared_order(order, steps):
  errors = [_deis_error(order, n) for n in steps]
  slope = np.log(errors[0] / errors[1]) / np.log(steps[1] / steps[0])
  assert SAMPLERS["deis"].order({"order": order}) == order
  assert abs(slope - order) < 0.25, (errors, slope)


def test_deis_steps_into_sigma_zero_at_first_order():
  """On to t = 0 the last step is DEIS-1, alpha_0 x0_hat: finite, and its local
  error (at t_min, where x0_hat hardly moves) is no larger than the error at t_min."""
  error_t_min = _deis_error(3, 16)
  error_zero = _deis_error(3, 16, to_zero=True)
  assert np.isfinite(error_zero) and error_zero < 2 * error_t_min + 1e-4


# --------------------------------------------------------------------------
# SA-Solver: samples in distribution; declarations.
# --------------------------------------------------------------------------


def test_sa_solver_samples_the_mixture():
  """4096 samples, tau = 1 everywhere (the reverse SDE), 20 steps to t = 0: mean and
  covariance within 4 standard errors of the mixture's."""
  process, num = PROCESSES["vp"], 4096
  x_T, key = prior("vp", num, seed=5), jax.random.PRNGKey(11)
  grid = grids.make_grid(process, "log_snr", 20)
  x, info = sample("sa_solver", "vp", x_T, key, grid, predictor_order=3, corrector_order=3,
                   tau=1.0, tau_interval=(0.0, 1.0))
  x = np.asarray(x, np.float64)
  assert int(info["nfe"]) == 20 and int(info["nonfinite_step"]) == -1
  weights, means, stds = MIXTURE.weights, MIXTURE.means, MIXTURE.stds
  mean = weights @ means
  cov = sum(w * (s**2 * np.eye(2) + np.outer(m, m)) for w, m, s in zip(weights, means, stds))
  cov = cov - np.outer(mean, mean)
  stderr = np.sqrt(np.diag(cov) / num)
  np.testing.assert_array_less(np.abs(x.mean(0) - mean), 4 * stderr)
  np.testing.assert_allclose(np.cov(x.T), cov, atol=4 * np.sqrt(2 / num) * cov.max())


def test_declarations():
  deis, sa = SAMPLERS["deis"], SAMPLERS["sa_solver"]
  assert not deis.stochastic(deis.resolve({}))
  assert sa.stochastic(sa.resolve({})) and not sa.stochastic(sa.resolve({"tau": 0.0}))
  assert sa.order(sa.resolve({"predictor_order": 3, "corrector_order": 4})) == 4
  assert sa.order(sa.resolve({"predictor_order": 3, "corrector_order": 1})) == 1
  for ends_at_zero in (True, False):
    assert deis.num_steps(7, {"order": 3}, ends_at_zero=ends_at_zero) == 7
    assert sa.num_steps(7, {"corrector_order": 4}, ends_at_zero=ends_at_zero) == 7
  with pytest.raises(ValueError, match=r"unknown order 4 for deis; valid: \[1, 2, 3\]"):
    deis.resolve({"order": 4})
  with pytest.raises(ValueError, match="sa_solver option tau must be >= 0"):
    sa.resolve({"tau": -1.0})
  with pytest.raises(ValueError, match="tau_interval must be a pair"):
    sa.resolve({"tau_interval": (0.8, 0.2)})
  with pytest.raises(ValueError, match="needs a PRNG key"):
    sa(MIXTURE.denoise_fn(PROCESSES["vp"], "eps"), PROCESSES["vp"], prior("vp", 2), None,
       grids.make_grid(PROCESSES["vp"], "log_snr", 4))
