"""Identities of the beta schedules and of every process's alpha, sigma, lam, f, g^2."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff import schedules

ALL_PROCESSES = {
    "ddpm-linear": schedules.discrete_ddpm("linear", 1000),
    "ddpm-cosine": schedules.discrete_ddpm("cosine", 1000),
    "vp": schedules.VP(),
    "subvp": schedules.SubVP(),
    "ve": schedules.VE(),
    "edm": schedules.EDM(),
    "flow": schedules.FlowMatching(),
}


def interior_times(process, n=64):
  return jnp.linspace(process.t_min, process.t_max, n)[1:-1]


@pytest.mark.parametrize("name", sorted(schedules.BETA_SCHEDULES))
def test_alpha_bar_is_product_of_one_minus_beta(name):
  process = schedules.discrete_ddpm(name, 1000)
  alpha_bar = np.cumprod(1.0 - np.asarray(process.betas))  # Ho et al. eq. 4
  t = np.arange(1, 1001) / 1000
  np.testing.assert_allclose(np.asarray(process.alpha(t)) ** 2, alpha_bar, rtol=2e-5, atol=1e-9)
  np.testing.assert_allclose(np.asarray(process.sigma(t)) ** 2, 1 - alpha_bar, rtol=2e-5, atol=1e-7)


def test_beta_schedules_follow_their_papers():
  linear = schedules.beta_schedule("linear", 1000)
  assert linear[0] == pytest.approx(1e-4) and linear[-1] == pytest.approx(0.02)
  np.testing.assert_allclose(np.diff(linear), (0.02 - 1e-4) / 999)
  quadratic = schedules.beta_schedule("quadratic", 1000)
  np.testing.assert_allclose(np.diff(np.sqrt(quadratic)), (0.02**0.5 - 1e-4**0.5) / 999)
  # diffusers' "sigmoid": beta_i = beta_start + (beta_end - beta_start) sigmoid(x_i),
  # x_i = -6 + 12 i / (T - 1), i = 0..T-1.
  sigmoid = schedules.beta_schedule("sigmoid", 1000)
  x = -6.0 + 12.0 * np.arange(1000) / 999
  np.testing.assert_allclose(sigmoid, 1e-4 + (0.02 - 1e-4) / (1 + np.exp(-x)), rtol=1e-12)
  assert np.all(np.diff(sigmoid) > 0) and 1e-4 < sigmoid[0] < sigmoid[-1] < 0.02
  # Nichol & Dhariwal eq. 17: alpha_bar_t = f(t) / f(0), f(t) = cos^2((t/T + s)/(1 + s) pi/2).
  cosine = schedules.beta_schedule("cosine", 1000)
  f = np.cos((np.arange(1001) / 1000 + 0.008) / 1.008 * np.pi / 2) ** 2
  # The 0.999 clip binds only in the last few steps.
  np.testing.assert_allclose(np.cumprod(1 - cosine)[:990], (f[1:] / f[0])[:990], rtol=1e-9)
  assert cosine.max() == pytest.approx(0.999)


def test_ddpm_linear_tends_to_vp_sde():
  # beta_i = beta(i/T) / T with beta(t) = 0.1 + 19.9 t, up to the (i-1)/(T-1) vs i/T shift.
  t = np.linspace(0.0, 1.0, 101)
  ddpm, vp = schedules.discrete_ddpm("linear", 1000), schedules.VP(beta_min=0.1, beta_max=20.0)
  np.testing.assert_allclose(ddpm.alpha(t), vp.alpha(t), atol=2e-3)


@pytest.mark.parametrize("name", sorted(ALL_PROCESSES))
def test_log_snr_decreases_and_inverts(name):
  process = ALL_PROCESSES[name]
  t = interior_times(process)
  lam = process.log_snr(t)
  assert np.all(np.diff(np.asarray(lam)) < 0)
  np.testing.assert_allclose(process.t_from_log_snr(lam), t, rtol=2e-4, atol=1e-6)


def test_closed_form_inverse_agrees_with_bisection():
  for process in (schedules.discrete_ddpm("cosine"), schedules.VP(), schedules.VE(),
                  schedules.FlowMatching()):  # Bounded domains: bisection applies.
    lam = process.log_snr(interior_times(process))
    bisection = schedules.Process.t_from_log_snr(process, lam)
    np.testing.assert_allclose(process.t_from_log_snr(lam), bisection, rtol=1e-4, atol=1e-6)


def _sde_closed_forms():
  """(process, f(t), g^2(t)) from Song et al. 2021 eq. 11, 30-33 and the EDM / FM paths."""
  b0, b1 = 0.1, 20.0
  beta = lambda t: b0 + t * (b1 - b0)
  int_beta = lambda t: b0 * t + 0.5 * t**2 * (b1 - b0)
  smin, smax = 0.01, 50.0
  return {
      "vp": (schedules.VP(), lambda t: -0.5 * beta(t), beta),
      "subvp": (schedules.SubVP(), lambda t: -0.5 * beta(t),
                lambda t: beta(t) * (1 - np.exp(-2 * int_beta(t)))),
      "ve": (schedules.VE(), lambda t: 0 * t,
             lambda t: (smin * (smax / smin) ** t) ** 2 * 2 * math.log(smax / smin)),
      "edm": (schedules.EDM(), lambda t: 0 * t, lambda t: 2 * t),
      "flow": (schedules.FlowMatching(), lambda t: -1 / (1 - t), lambda t: 2 * t / (1 - t)),
  }


@pytest.mark.parametrize("name", sorted(_sde_closed_forms()))
def test_drift_and_diffusion_match_closed_forms(name):
  process, f, g2 = _sde_closed_forms()[name]
  t = interior_times(process)
  tt = np.asarray(t, np.float64)
  np.testing.assert_allclose(process.f(t), f(tt), rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(process.g2(t), g2(tt), rtol=1e-4, atol=1e-6)


def test_discrete_ddpm_drift_is_piecewise_constant_beta():
  # log alpha_bar is linear between knots, so f = -T beta_i / 2 approximately (log1p) inside step i.
  process = schedules.discrete_ddpm("linear", 1000)
  i = np.arange(1, 1000, 37)
  t = (i - 0.5) / 1000
  expected = 0.5 * 1000 * np.log1p(-np.asarray(process.betas)[i - 1])
  np.testing.assert_allclose(process.f(t), expected, rtol=1e-3)


@pytest.mark.parametrize("name", sorted(ALL_PROCESSES))
def test_finite_at_the_ends_of_the_time_range(name):
  process = ALL_PROCESSES[name]
  ends = jnp.array([process.t_min, process.t_min * 1.0001, 1e-6, process.t_max * 0.9999])
  for fn in (process.alpha, process.sigma, process.log_snr, process.f, process.g2):
    assert np.all(np.isfinite(fn(ends))), (name, fn.__name__)
  t_max = jnp.array([process.t_max])
  assert np.all(np.isfinite(process.alpha(t_max))) and np.all(np.isfinite(process.sigma(t_max)))
  if name != "flow":  # alpha(1) = 0 for flow matching: lam = -inf, f = -inf there.
    for fn in (process.log_snr, process.f, process.g2):
      assert np.all(np.isfinite(fn(t_max))), (name, fn.__name__)


def test_vp_family_diffusion_is_finite_at_zero():
  assert float(schedules.VP().g2(0.0)) == pytest.approx(0.1)
  assert np.isfinite(float(schedules.discrete_ddpm().g2(0.0)))


def test_prior_std():
  assert schedules.VE().prior_std() == pytest.approx(50.0)
  assert schedules.EDM().prior_std() == pytest.approx(80.0)
  assert schedules.FlowMatching().prior_std() == 1.0
  assert schedules.VP().prior_std() == pytest.approx(1.0, abs=1e-4)


def test_edm_train_time_is_log_normal():
  import jax
  t = schedules.EDM().sample_train_time(jax.random.PRNGKey(0), (20000,))
  log_t = np.log(np.asarray(t))
  assert log_t.mean() == pytest.approx(-1.2, abs=5 * 1.2 / np.sqrt(20000))
  assert log_t.std() == pytest.approx(1.2, rel=0.03)


def test_bad_input_names_the_parameter():
  with pytest.raises(ValueError, match="unknown process 'vpp'.*valid"):
    schedules.make_process("vpp")
  # A DDPM's options given to VP: named, with the valid ones (was a TypeError).
  with pytest.raises(ValueError, match=r"process 'vp' takes the options \['t_min', 't_max', "
                     r"'beta_min', 'beta_max'\], got unknown \['num_steps'\]"):
    schedules.make_process("vp", num_steps=1000)
  with pytest.raises(ValueError, match="unknown beta schedule 'cosin'"):
    schedules.discrete_ddpm("cosin")
  with pytest.raises(ValueError, match="num_steps must be a positive integer"):
    schedules.discrete_ddpm("linear", 0)
  with pytest.raises(ValueError, match="betas must lie in the open interval"):
    schedules.DiscreteDDPM(betas=(0.1, 1.0))
  with pytest.raises(ValueError, match="betas must be a non-empty"):
    schedules.DiscreteDDPM(betas=())
  with pytest.raises(ValueError, match=r"t must lie in VP's time domain \[0.0, 1.0\]"):
    schedules.VP().check_time(np.array([0.5, 1.5]))


@pytest.mark.parametrize("name", sorted(ALL_PROCESSES))
def test_noise_to_signal_inverts(name):
  process = ALL_PROCESSES[name]
  t = interior_times(process)
  ratio = process.noise_to_signal(t)
  np.testing.assert_allclose(ratio, np.exp(-0.5 * np.asarray(process.log_snr(t))), rtol=1e-5)
  np.testing.assert_allclose(process.t_from_noise_to_signal(ratio), t, rtol=2e-4, atol=1e-6)
