"""Sliced Wasserstein against cases with known answers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff import metrics


def test_sliced_wasserstein_of_a_shift():
  # Shifting by a vector m moves every projection by <theta, m>: SW2^2 = E[<theta, m>^2] = |m|^2 / D.
  key = jax.random.PRNGKey(0)
  x = jax.random.normal(key, (500, 4))
  m = jnp.array([1.0, -2.0, 0.5, 0.0])
  sw = metrics.sliced_wasserstein(jax.random.PRNGKey(1), x, x + m, num_projections=20000)
  assert float(sw) == pytest.approx(float(jnp.linalg.norm(m)) / 2.0, rel=0.02)
  assert float(metrics.sliced_wasserstein(key, x, x)) == 0.0


def test_sliced_wasserstein_shrinks_with_sample_size():
  sw = []
  for n in (100, 10000):
    kx, ky = jax.random.split(jax.random.PRNGKey(n))
    sw.append(float(metrics.sliced_wasserstein(kx, jax.random.normal(kx, (n, 2)),
                                               jax.random.normal(ky, (n, 2)))))
  assert sw[1] < sw[0] / 3  # Monte-Carlo error ~ n^{-1/2}: 10x expected, 3x required.
  with pytest.raises(ValueError, match=r"\[N, D\] with equal N"):
    metrics.sliced_wasserstein(jax.random.PRNGKey(0), np.zeros((3, 2)), np.zeros((4, 2)))


def test_oracle_metrics_separate_true_from_collapsed_samples():
  from jaxdiff import oracle
  mixture = oracle.ring()
  key = jax.random.PRNGKey(4)
  true = metrics.oracle_metrics(key, mixture, mixture.sample(jax.random.PRNGKey(5), 4000))
  # One mode only: weight error 1 - 1/8, and a much larger SW2.
  collapsed = metrics.oracle_metrics(key, mixture, jnp.tile(mixture.means[:1], (4000, 1)))
  assert true["weight_error"] < 5 * np.sqrt(1 / 8 * 7 / 8 / 4000)
  assert collapsed["weight_error"] == pytest.approx(7 / 8)
  assert collapsed["sw2"] > 10 * true["sw2"]
  # Mean NLL of true samples estimates the entropy: one mode's entropy plus log 8 (modes
  # are well separated), with the 2-D Gaussian entropy log(2 pi e s^2).
  entropy = np.log(2 * np.pi * np.e * 0.08**2) + np.log(8)
  assert true["nll"] == pytest.approx(entropy, abs=0.05)


def random_rotation(rng, dim):
  q, r = np.linalg.qr(rng.standard_normal((dim, dim)))
  return q * np.sign(np.diag(r))


def test_frechet_distance_of_1d_gaussians():
  # W2^2 between N(m1, s1^2) and N(m2, s2^2) is (m1 - m2)^2 + (s1 - s2)^2.
  d, error = metrics.frechet_distance([0.5], [[4.0]], [-1.0], [[0.25]])
  assert d == pytest.approx(1.5**2 + (2.0 - 0.5)**2, rel=1e-12)
  assert error < 1e-14


def test_frechet_distance_of_commuting_covariances_is_rotation_invariant():
  # Covariances Q diag(a) Q^T and Q diag(b) Q^T commute: the trace term is sum sqrt(a b), so
  # d^2 = ||mu1 - mu2||^2 + sum (sqrt(a) - sqrt(b))^2 whatever the rotation Q.
  rng = np.random.default_rng(0)
  a, b = rng.uniform(0.1, 5.0, 6), rng.uniform(0.1, 5.0, 6)
  mu1, mu2 = rng.standard_normal(6), rng.standard_normal(6)
  expected = np.sum((mu1 - mu2)**2) + np.sum((np.sqrt(a) - np.sqrt(b))**2)
  assert metrics.frechet_distance(mu1, np.diag(a), mu2, np.diag(b))[0] == pytest.approx(
      expected, rel=1e-12)
  q = random_rotation(rng, 6)
  d, error = metrics.frechet_distance(q @ mu1, q @ np.diag(a) @ q.T, q @ mu2,
                                      q @ np.diag(b) @ q.T)
  assert d == pytest.approx(expected, rel=1e-10)
  assert error < 1e-13


def test_frechet_distance_of_identical_statistics_is_zero():
  rng = np.random.default_rng(1)
  x = rng.standard_normal((50, 20))
  sigma = x.T @ x / 50  # [20, 20], full rank
  d, error = metrics.frechet_distance(np.ones(20), sigma, np.ones(20), sigma)
  assert abs(d) < 1e-10 * np.trace(sigma)
  assert error < 1e-13


def test_frechet_distance_agrees_with_scipy_sqrtm():
  # The trace term against scipy's Schur-method square root of the non-symmetric S1 S2.
  import scipy.linalg
  rng = np.random.default_rng(2)
  for dim in (3, 16, 64):
    x, y = rng.standard_normal((2, dim, 2 * dim))
    sigma1, sigma2 = x @ x.T / dim + 0.1 * np.eye(dim), y @ y.T / dim
    mu1, mu2 = rng.standard_normal((2, dim))
    trace_sqrt = np.trace(scipy.linalg.sqrtm(sigma1 @ sigma2)).real
    expected = (np.sum((mu1 - mu2)**2) + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_sqrt)
    d, error = metrics.frechet_distance(mu1, sigma1, mu2, sigma2)
    assert d == pytest.approx(expected, rel=1e-9)
    assert error < 1e-12


def test_frechet_distance_of_singular_covariances():
  # Rank-deficient covariances (features from fewer samples than dimensions, dead units):
  # S1 = diag(a, 0, 0), S2 = diag(b, c, 0) give (sqrt(a) - sqrt(b))^2 + c, rotated or not.
  q = random_rotation(np.random.default_rng(3), 3)
  sigma1, sigma2 = np.diag([2.0, 0.0, 0.0]), np.diag([0.5, 3.0, 0.0])
  d, error = metrics.frechet_distance(np.zeros(3), q @ sigma1 @ q.T, np.zeros(3),
                                      q @ sigma2 @ q.T)
  assert d == pytest.approx((np.sqrt(2.0) - np.sqrt(0.5))**2 + 3.0, rel=1e-7)
  assert error < 1e-7  # Eigenvalues at rounding level (~1e-16) of either sign are clipped.


def test_frechet_distance_reports_an_invalid_covariance():
  # A covariance with eigenvalue -1 has no real square root: the clipped one shows it.
  d, error = metrics.frechet_distance(np.zeros(2), np.diag([1.0, -1.0]), np.zeros(2), np.eye(2))
  assert error > 0.5
  with pytest.raises(ValueError, match=r"means \[F\] and covariances \[F, F\] of one F"):
    metrics.frechet_distance(np.zeros(3), np.eye(3), np.zeros(2), np.eye(2))
  with pytest.raises(ValueError, match="non-finite"):
    metrics.frechet_distance(np.zeros(2), np.eye(2), np.array([0.0, np.nan]), np.eye(2))


def test_feature_statistics_estimate_the_gaussian_and_its_distance():
  # Features [x, 2x + 1]: covariance [[v, 2v], [2v, 4v]] with v the unbiased variance of x.
  x = np.array([0.0, 1.0, 2.0, 5.0])
  v = np.sum((x - 2.0)**2) / 3
  mu, sigma = metrics.feature_statistics(np.stack([x, 2 * x + 1], axis=1))
  np.testing.assert_allclose(mu, [2.0, 5.0], rtol=1e-15)
  np.testing.assert_allclose(sigma, [[v, 2 * v], [2 * v, 4 * v]], rtol=1e-15)
  # Samples of N(0, diag(1, 4)) and N([1, 0], diag(4, 1)): d^2 = 1 + (1 - 2)^2 + (2 - 1)^2 = 3,
  # estimated to within the sampling error at N = 40000 (about 0.03 here).
  rng = np.random.default_rng(4)
  stats1 = metrics.feature_statistics(rng.standard_normal((40000, 2)) * [1.0, 2.0])
  stats2 = metrics.feature_statistics(rng.standard_normal((40000, 2)) * [2.0, 1.0] + [1.0, 0.0])
  assert metrics.frechet_distance(*stats1, *stats2)[0] == pytest.approx(3.0, abs=0.1)
  with pytest.raises(ValueError, match=r"\[N, F\] with N >= 2"):
    metrics.feature_statistics(np.zeros((1, 3)))
