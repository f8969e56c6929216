"""Tests for Restart sampling and DPM-Solver++(3M) SDE: each against a float64 numpy
re-derivation of its paper's update with the same denoiser and the same noise, on a
grid ending at sigma = 0 and one ending at sigma > 0, their NFE rules, and their
samples of the Gaussian-mixture oracle against the mixture in distribution.

(The same inputs were run through k-diffusion's sample_dpmpp_3m_sde and the official
restart_sampler outside the project: see the commit that added this file.)
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff import grids, oracle
from jaxdiff.samplers import SAMPLERS

from conftest import PROCESSES, prior

MIXTURE = oracle.ring()  # 8 modes, radius 0.7, std 0.08, D = 2.
PROCESS = PROCESSES["vp"]


@functools.partial(jax.jit, static_argnums=0)
def sample_oracle(name, x_T, key, grid):
  """The sampler with the oracle's exact denoiser and default options."""
  return SAMPLERS[name](MIXTURE.denoise_fn(PROCESS), PROCESS, x_T, key, grid)


@jax.jit
def _x0(x, t):
  return MIXTURE.x0_eps(PROCESS, x, jnp.full(x.shape[:1], t))[0]


def x0_hat(x_tilde, t):
  """The oracle's x0 [B, D] at x = alpha(t) x~, in float64."""
  x = jnp.asarray(x_tilde * float(PROCESS.alpha(t)), jnp.float32)
  return np.asarray(_x0(x, t), np.float64)


def normal(key, shape):
  return np.asarray(jax.random.normal(key, shape), np.float64)


def test_dpm_solver_3m_sde_is_the_reference_update():
  """k-diffusion's form in x~ = x / alpha and sigma~ (Lu et al. 2022b, data prediction):
  x~ <- e^{-2h} x~ + (1 - e^{-2h}) x0 + phi_2 D_1 - phi_3 D_2 + sigma~_s sqrt(1 - e^{-2h}) z,
  eta = 1; the step into sigma = 0 is x~ <- x0; no noise on the last step."""
  x_T, key = prior("vp", 5, seed=1), jax.random.PRNGKey(2)
  grid = grids.make_grid(PROCESS, "log_snr", 6)
  for g in (grid, grid[:-1]):  # Ending at sigma = 0 and at t_min.
    times = np.asarray(g, np.float64)
    sigma = np.asarray(PROCESS.noise_to_signal(g), np.float64)
    x = np.asarray(x_T, np.float64) / float(PROCESS.alpha(g[0]))
    history = []  # (x0, lambda) of the steps so far, newest first.
    for i in range(len(times) - 1):
      x0 = x0_hat(x, times[i])
      if sigma[i + 1] == 0:
        x = x0
        break
      lam, lam_next = -np.log(sigma[i]), -np.log(sigma[i + 1])
      h = lam_next - lam
      big_h = 2 * h
      phi_2 = 1 + np.expm1(-big_h) / big_h
      phi_3 = phi_2 / big_h - 0.5
      x = np.exp(-big_h) * x - np.expm1(-big_h) * x0
      if len(history) >= 2:
        (x0_1, lam_1), (x0_2, lam_2) = history[:2]
        r0, r1 = (lam - lam_1) / h, (lam_1 - lam_2) / h
        d1_0, d1_1 = (x0 - x0_1) / r0, (x0_1 - x0_2) / r1
        x = x + phi_2 * (d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)) - phi_3 * (d1_0 - d1_1) / (r0 + r1)
      elif history:
        (x0_1, lam_1), = history[:1]
        x = x + phi_2 * (x0 - x0_1) / ((lam - lam_1) / h)
      z = normal(jax.random.fold_in(key, i), x.shape) * (i < len(times) - 2)
      x = x + sigma[i + 1] * np.sqrt(-np.expm1(-2 * h)) * z
      history.insert(0, (x0, lam))
    expected = x * float(PROCESS.alpha(g[-1]))
    out, info = SAMPLERS["dpm_solver_3m_sde"](MIXTURE.denoise_fn(PROCESS), PROCESS, x_T, key, g)
    np.testing.assert_allclose(np.asarray(out), expected, rtol=1e-4, atol=2e-4)
    assert int(info["nfe"]) == len(times) - 1


def test_restart_is_the_reference_algorithm():
  """Xu et al. Alg. 1 in EDM's x~, sigma~: Heun main steps (Euler into sigma = 0); at the
  grid point nearest 0.06, K = 2 times x~ += sqrt(0.3^2 - sigma~^2) S_noise z and Heun back
  on a 3-point Karras grid (rho 7) with churn gamma = 0.05 where sigma~ in [0.01, 1]."""
  x_T, key = prior("vp", 5, seed=3), jax.random.PRNGKey(4)
  grid = grids.make_grid(PROCESS, "karras", 6)
  t_of = lambda sig: float(PROCESS.t_from_noise_to_signal(jnp.float32(sig)))

  def heun(x, t, sig, t_next, sig_next):
    d = (x - x0_hat(x, t)) / sig
    x_next = x + (sig_next - sig) * d
    if sig_next == 0:
      return x_next
    return x + (sig_next - sig) * 0.5 * (d + (x_next - x0_hat(x_next, t_next)) / sig_next)

  for g in (grid, grid[:-1]):
    times = np.asarray(g, np.float64)
    sigma = np.asarray(PROCESS.noise_to_signal(g), np.float64)
    restart_at = 1 + np.argmin(np.where(sigma[1:] > 0, np.abs(sigma[1:] - 0.06), np.inf))
    x = np.asarray(x_T, np.float64) / float(PROCESS.alpha(g[0]))
    for i in range(len(times) - 1):
      x = heun(x, times[i], sigma[i], times[i + 1], sigma[i + 1])
      if i + 1 != restart_at:
        continue
      ramp = np.arange(3) / 2
      inner = (0.3 ** (1 / 7) + ramp * (sigma[i + 1] ** (1 / 7) - 0.3 ** (1 / 7))) ** 7
      for k in range(2):
        key_k = jax.random.fold_in(jax.random.fold_in(key, i), k)
        x = x + np.sqrt(0.3**2 - sigma[i + 1] ** 2) * 1.003 * normal(jax.random.fold_in(key_k, 0),
                                                                     x.shape)
        for j in range(2):
          sig_hat = 1.05 * inner[j]
          x = x + np.sqrt(sig_hat**2 - inner[j] ** 2) * 1.003 * normal(
              jax.random.fold_in(key_k, j + 1), x.shape)
          t_next = times[i + 1] if j == 1 else t_of(inner[j + 1])
          x = heun(x, t_of(sig_hat), sig_hat, t_next, inner[j + 1])
    expected = x * float(PROCESS.alpha(g[-1]))
    out, info = SAMPLERS["restart"](MIXTURE.denoise_fn(PROCESS), PROCESS, x_T, key, g)
    np.testing.assert_allclose(np.asarray(out), expected, rtol=1e-4, atol=2e-4)
    assert int(info["nfe"]) == 2 * (len(times) - 1) - (sigma[-1] == 0) + 2 * 2 * 2


def test_nfe_rules_and_errors():
  restart = SAMPLERS["restart"]
  assert restart.num_steps(19) == 6  # 2 * 6 - 1 + 2 * 2 * 2.
  assert restart.num_steps(20, ends_at_zero=False) == 6
  assert restart.num_steps(11, {"restart_k": 0}) == 6
  with pytest.raises(ValueError, match="cannot spend exactly nfe=18.*nearest NFE that work: 17 or 19"):
    restart.num_steps(18)
  assert SAMPLERS["dpm_solver_3m_sde"].num_steps(7) == 7
  x_T = prior("vp", 2, seed=0)
  grid = grids.make_grid(PROCESS, "karras", 6)
  # The grid point nearest to 0.06 is t = 0.001, sigma / alpha = 0.010486.
  with pytest.raises(ValueError, match="here sigma/alpha = 0.010486.*restart_sigma_max=0.005 must"):
    restart(MIXTURE.denoise_fn(PROCESS), PROCESS, x_T, jax.random.PRNGKey(0), grid,
            restart_sigma_max=0.005)
  with pytest.raises(ValueError, match="restart_k must be >= 0"):
    restart(MIXTURE.denoise_fn(PROCESS), PROCESS, x_T, jax.random.PRNGKey(0), grid, restart_k=-1)
  with pytest.raises(ValueError, match="needs a PRNG key"):
    SAMPLERS["dpm_solver_3m_sde"](MIXTURE.denoise_fn(PROCESS), PROCESS, x_T, None, grid)


# Log-SNR grids of NFE 27 and 20; their discretization errors in the covariance and the
# within-mode spread were 0.014 and 10-16% (restart), 0.007 and 14% (3M SDE) with 20000
# samples; 3M SDE at N = 10 gave 3 times the spread (its extrapolation from the first,
# long steps).
@pytest.mark.parametrize("name, num_steps", [("restart", 10), ("dpm_solver_3m_sde", 20)])
def test_samples_match_the_mixture(name, num_steps):
  """Mean, covariance and within-mode spread of 4000 samples against the mixture's,
  each within 5 standard errors of its estimate plus an allowance for discretization
  (0.01 for the mean, 0.03 for the covariance, 25% for the spread)."""
  num = 4000
  x_T = prior("vp", num, seed=5)
  x, _ = sample_oracle(name, x_T, jax.random.PRNGKey(6),
                       grids.make_grid(PROCESS, "log_snr", num_steps))
  x = np.asarray(x, np.float64)
  means, std = np.asarray(MIXTURE.means, np.float64), float(MIXTURE.stds[0])
  # Mixture: mean 0, covariance (radius^2 / 2 + std^2) I.
  cov = 0.7**2 / 2 + std**2
  np.testing.assert_array_less(np.abs(x.mean(0)), 5 * np.sqrt(cov / num) + 0.01)
  centered = x - x.mean(0)
  products = centered[:, :, None] * centered[:, None, :]  # [num, 2, 2]
  se = products.std(0) / np.sqrt(num)
  np.testing.assert_array_less(np.abs(products.mean(0) - cov * np.eye(2)), 5 * se + 0.03)
  # Within-mode: the squared distance to the nearest mode has mean 2 std^2 (chi^2_2).
  distance2 = ((x[:, None] - means) ** 2).sum(-1).min(1)
  assert abs(distance2.mean() - 2 * std**2) < 5 * distance2.std() / np.sqrt(num) + 0.5 * std**2
