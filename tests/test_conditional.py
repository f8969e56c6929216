"""Inpainting, colorization and SDEdit against the closed forms of the Gaussian-mixture oracle.

Given known coordinates y_k, the conditional of a mixture of isotropic Gaussians reweights its
components by N(y_k; mu_k, s_k^2) and leaves each component's unknown coordinates as they were.
For one isotropic Gaussian (independent coordinates) inpainting samples that conditional; for
the mixture it approximates it: replacement alone keeps the weights near the prior's, RePaint's
resampling moves them most of the way to the posterior's (see jaxdiff/conditional.py).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff import conditional, grids, oracle, schedules

from conftest import OPTIMIZED

PROCESS = schedules.make_process("ddpm", schedule="cosine")
D, KNOWN = 8, 2  # Dimensions; the first KNOWN are known.
MIXTURE = oracle.GaussianMixture(jnp.array([0.5, 0.5]), jnp.array([[0.5] * D, [-0.5] * D]),
                                 jnp.array([0.4, 0.4]))
Y_KNOWN = 0.15  # Both known coordinates: mildly for the first component.


def posterior_weight_of_the_first_component():
  log_w = -np.sum((Y_KNOWN - np.array([[0.5] * KNOWN, [-0.5] * KNOWN]))**2, axis=1) / (2 * 0.16)
  w = np.exp(log_w - log_w.max())
  return w[0] / w.sum()  # 0.7186


@pytest.fixture(scope="module")
def inpainted():
  """{resample: samples [4000, D]} for resample 1 and 20, 100 steps, the exact denoiser."""
  y = jnp.zeros((4000, D)).at[:, :KNOWN].set(Y_KNOWN)
  mask = jnp.zeros(D).at[:KNOWN].set(1.0)
  grid = grids.make_grid(PROCESS, "uniform", 100)
  denoise = MIXTURE.denoise_fn(PROCESS, "eps")
  out = {}
  for resample in (1, 20):
    run = jax.jit(lambda key: conditional.inpaint(denoise, PROCESS, y, mask, key, grid,
                                                  resample=resample),
                  compiler_options=OPTIMIZED)
    x, info = run(jax.random.PRNGKey(0))
    assert int(info["nfe"]) == 100 * resample
    out[resample] = np.asarray(x)
  return out


def test_inpainting_keeps_the_known_coordinates_exactly(inpainted):
  for x in inpainted.values():
    np.testing.assert_array_equal(x[:, :KNOWN], np.float32(Y_KNOWN))


def test_resampling_moves_the_weights_towards_the_conditional(inpainted):
  w = posterior_weight_of_the_first_component()  # 0.867; the prior's is 0.5.
  first = {r: x[:, KNOWN:].mean(axis=1) > 0 for r, x in inpainted.items()}  # [4000] each
  # Measured (standard error 0.007): replacement alone 0.58 (0.57 with 1000 steps: more steps do
  # not help), 20 resamplings 0.72. Neither is exact: the weights are decided while the known
  # coordinates are still noisy.
  assert w - first[1].mean() > 0.2
  assert w - first[20].mean() < w - first[1].mean() - 0.1
  # Within each component the unknown coordinates keep its mean (their spread is 0.35, not
  # 0.4: 100 steps of DDPM alone give 0.48 for a 0.5 Gaussian, and the approximation).
  x = inpainted[20][:, KNOWN:]
  for sign, rows in ((1, first[20]), (-1, ~first[20])):
    np.testing.assert_allclose(x[rows].mean(), sign * 0.5, atol=0.02)


def test_inpainting_samples_the_conditional_of_independent_coordinates():
  # One isotropic Gaussian: the unknown coordinates are N(mu, s^2) whatever the known ones are
  # (1000 steps: at 100, DDPM's own discretization narrows the spread by 3%).
  gaussian = oracle.GaussianMixture(jnp.array([1.0]), jnp.full((1, 4), 0.3), jnp.array([0.5]))
  y = jnp.full((8000, 4), -0.9)
  grid = grids.make_grid(PROCESS, "uniform", 1000)
  x, _ = jax.jit(lambda key: conditional.inpaint(
      gaussian.denoise_fn(PROCESS, "eps"), PROCESS, y, jnp.array([1.0, 1.0, 0.0, 0.0]), key,
      grid), compiler_options=OPTIMIZED)(jax.random.PRNGKey(4))
  unknown = np.asarray(x)[:, 2:]
  np.testing.assert_allclose(unknown.mean(axis=0), 0.3, atol=4 * 0.5 / np.sqrt(8000))
  np.testing.assert_allclose(unknown.std(axis=0), 0.5, rtol=0.02)


def test_colorization_keeps_the_gray_component():
  basis = conditional.colorization_basis(3)
  np.testing.assert_allclose(basis @ basis.T, np.eye(3), atol=1e-12)
  np.testing.assert_allclose(basis[0], np.full(3, 3**-0.5))
  mixture = oracle.GaussianMixture(jnp.array([0.5, 0.5]), jnp.array([[0.5, 0.0, -0.5],
                                                                       [-0.5, 0.5, 0.0]]),
                                   jnp.array([0.3, 0.3]))
  y = jax.random.uniform(jax.random.PRNGKey(1), (64, 3), minval=-1, maxval=1)
  grid = grids.make_grid(PROCESS, "uniform", 20)
  x, _ = conditional.inpaint(mixture.denoise_fn(PROCESS, "eps"), PROCESS, y,
                             jnp.array([1.0, 0.0, 0.0]), jax.random.PRNGKey(2), grid,
                             basis=basis)
  np.testing.assert_allclose(np.asarray(x).mean(axis=1), np.asarray(y).mean(axis=1), atol=1e-5)
  assert np.abs(np.asarray(x - y)).max() > 0.1  # The colors are generated, not copied.


def test_sdedit_draws_from_the_posterior_given_the_noised_guide():
  # One Gaussian N(mu, s^2 I): x_t0 ~ N(alpha y, sigma^2 I), x_0 | x_t0 ~ N(mu + alpha s^2 / v
  # (x_t0 - alpha mu), s^2 sigma^2 / v I) with v = alpha^2 s^2 + sigma^2, so the output has mean
  # mu + alpha^2 s^2 / v (y - mu) and variance s^2 sigma^2 / v + (alpha s^2 / v)^2 sigma^2.
  mu, s, t0 = 0.3, 0.5, 0.5
  gaussian = oracle.GaussianMixture(jnp.array([1.0]), jnp.full((1, 2), mu), jnp.array([s]))
  alpha, sigma = float(PROCESS.alpha(t0)), float(PROCESS.sigma(t0))
  v = alpha**2 * s**2 + sigma**2
  y = jnp.full((8000, 2), -0.8)
  grid = grids.make_grid(PROCESS, "uniform", 100, t_max=t0)
  x, info = jax.jit(lambda key: conditional.sdedit(gaussian.denoise_fn(PROCESS, "eps"), PROCESS,
                                                   y, key, grid))(jax.random.PRNGKey(3))
  assert int(info["nfe"]) == 100
  mean = mu + alpha**2 * s**2 / v * (-0.8 - mu)
  var = s**2 * sigma**2 / v + (alpha * s**2 / v) ** 2 * sigma**2
  x = np.asarray(x)
  np.testing.assert_allclose(x.mean(axis=0), mean, atol=4 * np.sqrt(var / 8000))
  np.testing.assert_allclose(x.var(axis=0), var, rtol=0.05)


def test_bad_masks_and_grids_are_refused():
  y, grid = jnp.zeros((4, D)), grids.make_grid(PROCESS, "uniform", 10)
  denoise = MIXTURE.denoise_fn(PROCESS, "eps")
  with pytest.raises(ValueError, match=r"mask must have the shape of y \(4, 8\)"):
    conditional.inpaint(denoise, PROCESS, y, jnp.ones(3), jax.random.PRNGKey(0), grid)
  with pytest.raises(ValueError, match="mask must hold 0"):
    conditional.inpaint(denoise, PROCESS, y, jnp.full(D, 0.5), jax.random.PRNGKey(0), grid)
  with pytest.raises(ValueError, match="must end at t = 0"):
    conditional.inpaint(denoise, PROCESS, y, jnp.ones(D), jax.random.PRNGKey(0), grid[:-1])
  with pytest.raises(ValueError, match="resample must be a positive integer"):
    conditional.inpaint(denoise, PROCESS, y, jnp.ones(D), jax.random.PRNGKey(0), grid,
                        resample=0)
