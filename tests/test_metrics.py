"""Sliced Wasserstein against cases with known answers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff import metrics

from conftest import OPTIMIZED


def test_sliced_wasserstein_of_a_shift():
  # Shifting by a vector m moves every projection by <theta, m>: SW2^2 = E[<theta, m>^2] = |m|^2 / D.
  key = jax.random.PRNGKey(0)
  x = jax.random.normal(key, (500, 4))
  m = jnp.array([1.0, -2.0, 0.5, 0.0])
  sw = jax.jit(metrics.sliced_wasserstein, static_argnames="num_projections",
               compiler_options=OPTIMIZED)(jax.random.PRNGKey(1), x, x + m, num_projections=20000)
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


def test_kernel_distance_is_the_polynomial_mmd_of_two_gaussians():
  # In one dimension k(x, y) = (x y + 1)^3 = 1 + 3 xy + 3 x^2 y^2 + x^3 y^3, so
  # MMD^2 = 3 (m1 - n1)^2 + 3 (m2 - n2)^2 + (m3 - n3)^2 with m_i, n_i the moments E x^i:
  # for N(a, 1) m1 = a, m2 = a^2 + 1, m3 = a^3 + 3a.
  a = 0.5
  expected = 3 * a**2 + 3 * (a**2)**2 + (a**3 + 3 * a)**2
  rng = np.random.default_rng(0)
  x, y = rng.standard_normal((20000, 1)) + a, rng.standard_normal((20000, 1))
  kid, error, blocks = metrics.kernel_distance(x, y)
  assert blocks == 20 and 0 < error < 0.1 * expected
  assert abs(kid - expected) < 4 * error
  # Two sets of one distribution: unbiased, so within its error of 0 (and it may be negative).
  kid, error, blocks = metrics.kernel_distance(rng.standard_normal((300, 8)),
                                               rng.standard_normal((500, 8)))
  assert blocks == 10 and abs(kid) < 4 * error


def test_kernel_distance_blocks_are_the_u_statistic():
  # Each block's estimate is the paper's U-statistic, written here term by term.
  rng = np.random.default_rng(1)
  x, y = rng.standard_normal((20, 3)), rng.standard_normal((30, 3)) + 0.3
  k = lambda u, v: (np.dot(u, v) / 3 + 1) ** 3
  estimates = []
  for b in range(10):
    xs, ys = x[2 * b:2 * b + 2], y[2 * b:2 * b + 2]
    within = k(xs[0], xs[1]) + k(xs[1], xs[0]) + k(ys[0], ys[1]) + k(ys[1], ys[0])
    cross = sum(k(u, v) for u in xs for v in ys)
    estimates.append(within / 2 - 2 * cross / 4)
  kid, error, blocks = metrics.kernel_distance(x, y)
  assert blocks == 10
  np.testing.assert_allclose(kid, np.mean(estimates), rtol=1e-12)
  np.testing.assert_allclose(error, np.std(estimates, ddof=1) / np.sqrt(10), rtol=1e-12)
  with pytest.raises(ValueError, match="at least 20 features per set"):
    metrics.kernel_distance(x[:19], y)
  with pytest.raises(ValueError, match="features of one size"):
    metrics.kernel_distance(x, y[:, :2])


def test_inception_score_of_known_predictions():
  # Confident predictions spread evenly over K classes: exp(log K) = K in every part.
  one_hot = np.eye(4)[np.arange(40) % 4]
  assert metrics.inception_score(one_hot) == pytest.approx((4.0, 0.0), abs=1e-12)
  # Uninformative predictions, or one class always: 1.
  assert metrics.inception_score(np.full((40, 4), 0.25)) == pytest.approx((1.0, 0.0))
  assert metrics.inception_score(np.eye(4)[np.zeros(40, int)]) == pytest.approx((1.0, 0.0))
  # p(y|x) = (1 - e) one-hot + e / K with uniform classes: KL = sum_y p log(K p) per image.
  e, K = 0.3, 4
  p = (1 - e) * one_hot + e / K
  row = p[0]
  assert metrics.inception_score(p)[0] == pytest.approx(np.exp(np.sum(row * np.log(K * row))))
  with pytest.raises(ValueError, match="rows summing to 1"):
    metrics.inception_score(np.ones((10, 4)))


def test_precision_and_recall_of_a_dropped_mode():
  # Real: clusters A (30 points) and B (10 points, far away); generated: exactly A's points.
  # Every generated point is a real one (precision 1); the real A points are generated ones,
  # B lies outside every generated ball: recall 30 / 40.
  rng = np.random.default_rng(2)
  cluster_a, cluster_b = rng.standard_normal((30, 5)), rng.standard_normal((10, 5)) + 100
  real = np.concatenate([cluster_a, cluster_b])
  assert metrics.precision_recall(real, cluster_a) == (1.0, 0.75)
  assert metrics.precision_recall(real, real) == (1.0, 1.0)
  # Generated points far from the real ones: neither on the other's manifold.
  assert metrics.precision_recall(cluster_a, cluster_a + 100) == (0.0, 0.0)
  with pytest.raises(ValueError, match="more than k = 3 rows"):
    metrics.precision_recall(real, cluster_a[:3])


def test_frechet_distance_agrees_with_pytorch_fid():
  """pytorch-fid's calculate_frechet_distance (the test extra "fid-reference"), in float64."""
  fid_score = pytest.importorskip("pytorch_fid.fid_score")
  rng = np.random.default_rng(5)
  x, y = rng.standard_normal((2, 1000, 32))
  y = 0.8 * y + 0.3
  mu1, sigma1 = x.mean(axis=0), np.cov(x, rowvar=False)
  mu2, sigma2 = y.mean(axis=0), np.cov(y, rowvar=False)
  d, _ = metrics.frechet_distance(mu1, sigma1, mu2, sigma2)
  assert d == pytest.approx(fid_score.calculate_frechet_distance(mu1, sigma1, mu2, sigma2),
                            rel=1e-8)


def test_kid_agrees_with_scikit_learns_polynomial_kernel():
  """KID's blocks against the unbiased MMD^2 of scikit-learn's kernel (Binkowski et al.
  2018: (x.y / F + 1)^3), computed here from its definition."""
  from sklearn.metrics.pairwise import polynomial_kernel
  rng = np.random.default_rng(6)
  x, y = rng.standard_normal((2, 400, 16))
  y = y + 0.2
  kid, _, blocks = metrics.kernel_distance(x, y)
  m = 400 // blocks
  estimates = []
  for i in range(blocks):
    a, b = x[i * m:(i + 1) * m], y[i * m:(i + 1) * m]
    kernel = lambda p, q: polynomial_kernel(p, q, degree=3, gamma=1 / 16, coef0=1)
    k_aa, k_bb, k_ab = kernel(a, a), kernel(b, b), kernel(a, b)
    estimates.append((k_aa.sum() - np.trace(k_aa)) / (m * (m - 1))
                     + (k_bb.sum() - np.trace(k_bb)) / (m * (m - 1)) - 2 * k_ab.mean())
  assert blocks == 10 and kid == pytest.approx(np.mean(estimates), rel=1e-10)
  assert kid > 0  # A shift of 0.2 per feature is seen.


def paired_gaussians(n, shift1, shift2, dim=4, seed=0):
  """Two [n, dim] sets of N(shift, I) features whose rows share their draw (as two samplers
  share x_T), plus independent noise of their own."""
  rng = np.random.default_rng(seed)
  shared = rng.normal(size=(n, dim))
  own = lambda: shared * 0.8 + 0.6 * rng.normal(size=(n, dim))  # Unit variance.
  return own() + shift1, own() + shift2


def test_paired_bootstrap_of_the_frechet_difference():
  """Against the reference N(0, I): the full-set difference is that of frechet_distance; two
  sets of one Gaussian give an interval holding 0, shifted ones one that excludes it (the
  farther set worse), and the interval narrows as 1/sqrt(N) (width ratio 2 for 4x N)."""
  mu_ref, sigma_ref = np.zeros(4), np.eye(4)
  x1, x2 = paired_gaussians(400, 0.0, 0.0)
  same = metrics.paired_frechet_bootstrap(x1, x2, mu_ref, sigma_ref, num_resamples=200)
  direct = [metrics.frechet_distance(*metrics.feature_statistics(x), mu_ref, sigma_ref)[0]
            for x in (x1, x2)]
  assert same["difference"] == pytest.approx(direct[0] - direct[1], rel=1e-7, abs=1e-10)
  assert same["low"] < 0 < same["high"]
  assert same["num_resamples"] == 200 and same["num_samples"] == 400

  widths = []
  for n in (400, 1600):
    x1, x2 = paired_gaussians(n, 0.3, 0.5, seed=n)
    pair = metrics.paired_frechet_bootstrap(x1, x2, mu_ref, sigma_ref, num_resamples=200)
    assert pair["high"] < 0  # x2 is farther from the reference: d1 - d2 < 0.
    assert pair["low"] < pair["mean"] < pair["high"]
    widths.append(pair["high"] - pair["low"])
  assert widths[0] / widths[1] == pytest.approx(2.0, rel=0.3)
  with pytest.raises(ValueError, match="two \\[N, F\\] sets of one shape"):
    metrics.paired_frechet_bootstrap(x1, x2[:10], mu_ref, sigma_ref)
