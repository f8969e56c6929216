"""Marginals, posteriors and the probability-flow ODE against independent derivations."""

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff import oracle, parameterization, schedules, sde

from conftest import OPTIMIZED

PROCESSES = {
    "ddpm": schedules.discrete_ddpm("linear", 1000),
    "vp": schedules.VP(),
    "subvp": schedules.SubVP(),
    "ve": schedules.VE(),
    "edm": schedules.EDM(),
    "flow": schedules.FlowMatching(),
}


def test_one_shot_marginal_equals_running_the_chain():
  # x_i = sqrt(1 - beta_i) x_{i-1} + sqrt(beta_i) z (Ho et al. eq. 2), run for all T steps.
  process = schedules.discrete_ddpm("linear", 1000)
  betas = jnp.asarray(process.betas, jnp.float32)
  n = 20000
  x0 = jnp.tile(jnp.array([[-1.0, 0.3, 1.0]]), (n, 1))

  def step(x, inputs):
    beta, key = inputs
    x = jnp.sqrt(1 - beta) * x + jnp.sqrt(beta) * jax.random.normal(key, x.shape)
    return x, x[:, 0]

  keys = jax.random.split(jax.random.PRNGKey(0), 1000)
  chain = jax.jit(lambda x0, inputs: jax.lax.scan(step, x0, inputs), compiler_options=OPTIMIZED)
  x_T, trajectory = chain(x0, (betas, keys))
  for i in (1, 100, 500, 1000):
    x_i = trajectory[i - 1] if i < 1000 else x_T[:, 0]
    t = i / 1000
    mean, std = -float(process.alpha(t)), float(process.sigma(t))
    # Sample mean within 5 standard errors; sample variance within 5 of its standard errors.
    assert float(x_i.mean()) == pytest.approx(mean, abs=5 * std / np.sqrt(n))
    assert float(x_i.var()) == pytest.approx(std**2, rel=5 * np.sqrt(2 / (n - 1)))
  mean_T = sde.q_sample(process, x0[:1], 1.0, jnp.zeros((1, 3)))[0]
  np.testing.assert_allclose(x_T.mean(0), mean_T, atol=5 / np.sqrt(n))


@pytest.mark.parametrize("name", sorted(PROCESSES))
def test_transitions_compose_to_the_marginal(name):
  # Chaining q(x_t | x_s) over a grid reproduces alpha(t) and sigma(t)^2 of q(x_t | x_0).
  process = PROCESSES[name]
  grid = np.linspace(0.0, process.t_max, 9)[1:]
  alpha, var = float(process.alpha(grid[0])), float(process.sigma2(grid[0]))
  for s, t in zip(grid[:-1], grid[1:]):
    alpha_ts, sigma2_ts = sde.transition(process, t, s)
    alpha, var = alpha * float(alpha_ts), float(alpha_ts) ** 2 * var + float(sigma2_ts)
  assert alpha == pytest.approx(float(process.alpha(grid[-1])), rel=1e-4, abs=1e-6)
  assert var == pytest.approx(float(process.sigma2(grid[-1])), rel=1e-4)


def test_ddpm_posterior_matches_ho_et_al():
  # Ho et al. eq. 7, computed in float64 from the betas alone.
  process = schedules.discrete_ddpm("linear", 1000)
  betas = np.asarray(process.betas)
  alpha_bar = np.cumprod(1 - betas)
  i = np.array([2, 10, 500, 1000])
  ab_t, ab_s, beta_t = alpha_bar[i - 1], alpha_bar[i - 2], betas[i - 1]
  coef_x0 = np.sqrt(ab_s) * beta_t / (1 - ab_t)
  coef_xt = np.sqrt(1 - beta_t) * (1 - ab_s) / (1 - ab_t)
  beta_tilde = (1 - ab_s) / (1 - ab_t) * beta_t
  x0, x_t = jnp.ones((4, 1)), 2 * jnp.ones((4, 1))
  mean, var = sde.posterior(process, x_t, x0, i / 1000, (i - 1) / 1000)
  np.testing.assert_allclose(mean[:, 0], coef_x0 + 2 * coef_xt, rtol=2e-4)
  np.testing.assert_allclose(var[:, 0], beta_tilde, rtol=2e-3)


@pytest.mark.parametrize("name", sorted(PROCESSES))
def test_posterior_is_consistent_with_the_marginals(name):
  # Averaging q(x_s | x_t, x_0) over x_t ~ q(x_t | x_0) must give q(x_s | x_0):
  #   coef_x0 + coef_xt alpha_t = alpha_s  and  coef_xt^2 sigma_t^2 + var = sigma_s^2.
  process = PROCESSES[name]
  t = jnp.array([0.3, 0.7, 1.0]) * process.t_max
  s = 0.6 * t
  ones = jnp.ones((3, 1))
  coef_x0 = sde.posterior(process, 0 * ones, ones, t, s)[0][:, 0]
  coef_xt, var = (a[:, 0] for a in sde.posterior(process, ones, 0 * ones, t, s))
  np.testing.assert_allclose(coef_x0 + coef_xt * process.alpha(t), process.alpha(s), rtol=1e-5)
  np.testing.assert_allclose(coef_xt**2 * process.sigma2(t) + var, process.sigma2(s), rtol=1e-4)


@pytest.mark.parametrize("name", sorted(PROCESSES))
def test_pf_ode_drift_is_the_flow_velocity(name):
  # With the exact score, f x - g^2 score / 2 = alpha' E[x0|x] + sigma' E[eps|x].
  process = PROCESSES[name]
  mixture = oracle.ring()
  x = jax.random.normal(jax.random.PRNGKey(1), (16, 2))
  t = jnp.full((16,), 0.4 * process.t_max)
  drift = sde.pf_ode_drift(process, x, t, mixture.score(process, x, t))
  velocity = mixture.denoise_fn(process, "velocity")(x, t)
  np.testing.assert_allclose(drift, velocity, rtol=1e-4, atol=1e-4 * float(jnp.abs(velocity).max()))
  np.testing.assert_allclose(
      sde.reverse_sde_drift(process, x, t, mixture.score(process, x, t)) - drift,
      -0.5 * process.g2(t)[:, None] * mixture.score(process, x, t), rtol=1e-5)


@pytest.mark.parametrize("name", sorted(PROCESSES))
def test_pf_ode_transports_gaussian_marginals(name):
  # For data N(0, s^2 I), p_t = N(0, v(t) I) with v = alpha^2 s^2 + sigma^2 and the PF-ODE is
  # linear: solving it from t_max to t_min must scale x by sqrt(v(t_min) / v(t_max)).
  process = PROCESSES[name]
  s2 = 0.25

  def drift(t, x, _):
    v = process.alpha(t) ** 2 * s2 + process.sigma2(t)
    return sde.pf_ode_drift(process, x, jnp.full(x.shape[:1], t), -x / v)

  x_T = jnp.array([[1.0, -2.0]])
  t0, t1 = process.t_max, process.t_min
  if name == "flow":
    t0 = 0.999  # f is infinite at t = 1 for flow matching.
  solution = diffrax.diffeqsolve(
      diffrax.ODETerm(drift), diffrax.Tsit5(), t0, t1, -1e-3, x_T,
      stepsize_controller=diffrax.PIDController(rtol=1e-6, atol=1e-7), max_steps=100000)
  v = lambda t: float(process.alpha(t) ** 2 * s2 + process.sigma2(t))
  np.testing.assert_allclose(solution.ys[0], x_T * np.sqrt(v(t1) / v(t0)), rtol=1e-3)


def test_prior():
  process = schedules.VE()
  x = sde.prior_sample(process, jax.random.PRNGKey(0), (4000, 3))
  assert float(x.std()) == pytest.approx(50.0, rel=5 * np.sqrt(1 / (2 * 12000)))
  y = np.array([[0.5, -1.0, 20.0]])
  expected = np.sum(-0.5 * (y / 50.0) ** 2 - np.log(50.0 * np.sqrt(2 * np.pi)))
  assert float(sde.prior_log_prob(process, jnp.asarray(y))[0]) == pytest.approx(expected, rel=1e-6)


def test_drift_diffusion():
  process = schedules.VP()
  x = jnp.ones((2, 3))
  drift, g = sde.drift_diffusion(process, x, jnp.array([0.0, 1.0]))
  np.testing.assert_allclose(drift[:, 0], [-0.05, -10.0], rtol=1e-5)
  np.testing.assert_allclose(g, np.sqrt([0.1, 20.0]), rtol=1e-5)


def test_bad_input():
  process = schedules.VP()
  with pytest.raises(ValueError, match=r"shape mismatch.*\(3,\).*\(4, 2\)"):
    sde.q_sample(process, jnp.zeros((4, 2)), jnp.ones(3) * 0.5, jnp.zeros((4, 2)))
  with pytest.raises(ValueError, match="time domain"):
    sde.q_sample(process, jnp.zeros((4, 2)), 1.5, jnp.zeros((4, 2)))
  with pytest.raises(ValueError, match="s must lie in"):
    sde.posterior(process, jnp.zeros((1, 2)), jnp.zeros((1, 2)), 0.5, -0.1)
  with pytest.raises(ValueError, match="unknown prediction type 'epsilon'"):
    parameterization.to_x0_eps(process, "epsilon", jnp.zeros((1, 2)), jnp.zeros((1, 2)), 0.5)


def test_prior_is_jittable():
  process = schedules.VP()
  x = jax.jit(lambda key: sde.prior_sample(process, key, (3, 2)))(jax.random.PRNGKey(0))
  np.testing.assert_allclose(jax.jit(lambda x: sde.prior_log_prob(process, x))(x),
                             sde.prior_log_prob(process, x), rtol=1e-6)
