"""The Gaussian-mixture oracle: exact densities, scores and posterior means."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff import oracle, schedules, sde

PROCESSES = {
    "ddpm": schedules.discrete_ddpm("linear", 1000),
    "vp": schedules.VP(),
    "ve": schedules.VE(),
    "edm": schedules.EDM(),
    "flow": schedules.FlowMatching(),
}


def mixture_3d():
  return oracle.GaussianMixture(weights=[0.2, 0.5, 0.3],
                                means=[[0.5, 0.0, -0.5], [-0.5, 0.5, 0.0], [0.0, -0.6, 0.6]],
                                stds=[0.1, 0.2, 0.05])


@pytest.mark.parametrize("name", sorted(PROCESSES))
def test_score_is_gradient_of_log_density(name):
  process, mixture = PROCESSES[name], mixture_3d()
  x = jax.random.normal(jax.random.PRNGKey(0), (8, 3))
  t = jnp.linspace(0.05, 0.95, 8) * process.t_max
  grad = jax.grad(lambda x: jnp.sum(mixture.log_prob(x, process, t)))(x)
  np.testing.assert_allclose(mixture.score(process, x, t), grad, rtol=1e-4, atol=1e-4)


def test_single_gaussian_posterior_mean_is_the_wiener_filter():
  # One component: E[x0 | x_t] = mu + alpha s^2 / (alpha^2 s^2 + sigma^2) (x_t - alpha mu).
  process = schedules.VP()
  mu, s = np.array([0.3, -0.2]), 0.4
  single = oracle.GaussianMixture(weights=[1.0], means=[mu], stds=[s])
  x = jnp.array([[1.0, 2.0], [-0.5, 0.1]])
  t = jnp.array([0.2, 0.7])
  a, sig = np.asarray(process.alpha(t))[:, None], np.asarray(process.sigma(t))[:, None]
  expected = mu + a * s**2 / (a**2 * s**2 + sig**2) * (np.asarray(x) - a * mu)
  x0, eps = single.x0_eps(process, x, t)
  np.testing.assert_allclose(x0, expected, rtol=1e-5)
  np.testing.assert_allclose(eps, (np.asarray(x) - a * expected) / sig, rtol=1e-4)


def test_denoiser_is_the_posterior_mean():
  # E[x0 - E[x0|x_t]] = 0 and the residual is orthogonal to x_t, by Monte Carlo.
  process, mixture = schedules.VP(), mixture_3d()
  n = 50000
  k0, k1 = jax.random.split(jax.random.PRNGKey(2))
  x0 = mixture.sample(k0, n)
  t = jnp.full((n,), 0.4)
  x_t = sde.q_sample(process, x0, t, jax.random.normal(k1, x0.shape))
  residual = x0 - mixture.x0_eps(process, x_t, t)[0]
  tol = 5 * residual.std(0) / np.sqrt(n)
  assert np.all(np.abs(residual.mean(0)) < tol)
  cross = (residual * x_t).mean(0)
  assert np.all(np.abs(cross) < 5 * (residual * x_t).std(0) / np.sqrt(n))


def test_sampling_recovers_weights_and_means():
  mixture = mixture_3d()
  n = 40000
  x = mixture.sample(jax.random.PRNGKey(3), n)
  nearest = jnp.argmin(jnp.sum((x[:, None] - mixture.means) ** 2, -1), -1)
  w = np.asarray(mixture.weights)
  counts = np.bincount(np.asarray(nearest), minlength=3) / n
  np.testing.assert_allclose(counts, w, atol=5 * np.sqrt(w * (1 - w) / n).max())


def test_log_prob_normalizes_and_matches_data_density():
  mixture = oracle.ring()
  grid = np.linspace(-1.5, 1.5, 301)
  xx, yy = np.meshgrid(grid, grid)
  points = jnp.asarray(np.stack([xx.ravel(), yy.ravel()], -1))
  cell = (grid[1] - grid[0]) ** 2
  assert float(jnp.exp(mixture.log_prob(points)).sum() * cell) == pytest.approx(1.0, abs=1e-3)
  vp = schedules.VP()
  np.testing.assert_allclose(mixture.log_prob(points[:50], vp, 0.0), mixture.log_prob(points[:50]),
                             rtol=1e-5)


def test_bad_input():
  with pytest.raises(ValueError, match="sum to 1"):
    oracle.GaussianMixture([0.5, 0.6], [[0.0], [1.0]], [1.0, 1.0])
  with pytest.raises(ValueError, match=r"means must be \[K, D\]"):
    oracle.GaussianMixture([1.0], [0.0], [1.0])
  with pytest.raises(ValueError, match="stds must be positive"):
    oracle.GaussianMixture([1.0], [[0.0]], [0.0])
  with pytest.raises(ValueError, match=r"weights and stds must be \[K\]"):
    oracle.GaussianMixture([0.5, 0.5], [[0.0]], [1.0])
  with pytest.raises(ValueError, match=r"points must be \[B, 3\]"):
    mixture_3d().score(schedules.VP(), jnp.zeros((2, 2)), 0.5)
  # NaN passes both "sum to 1" and "positive" comparisons; it must still be refused.
  with pytest.raises(ValueError, match=r"weights must be finite, got NaN or inf at indices \[\[0\]\]"):
    oracle.GaussianMixture([np.nan, 1.0], [[0.0], [1.0]], [1.0, 1.0])
  with pytest.raises(ValueError, match="means must be finite"):
    oracle.GaussianMixture([1.0], [[np.inf]], [1.0])
  with pytest.raises(ValueError, match="stds must be finite"):
    oracle.GaussianMixture([1.0], [[0.0]], [np.nan])
  with pytest.raises(ValueError, match="num_modes must be a positive integer, got 0"):
    oracle.ring(num_modes=0)
  with pytest.raises(ValueError, match="dim must be an integer >= 2 .* got 1"):
    oracle.ring(dim=1)
