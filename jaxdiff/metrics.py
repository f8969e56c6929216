"""Distribution-level sample metrics: sliced Wasserstein, Frechet distance, KID, Inception
Score, precision and recall, oracle metrics.

Sliced Wasserstein-2 (Rabin et al. 2011; Bonneel et al. 2015): the mean over
random unit directions theta of W2^2 between the 1-D projections <theta, x>,
which for equal sample sizes is the mean squared difference of the sorted
projections. Against the analytic oracle (`jaxdiff.oracle`) samples are also
scored by their negative log-likelihood under the true density and by how
well they recover the mixture weights.

Frechet distance (Dowson & Landau 1982; Heusel et al. 2017, eq. 6, the FID
when the features are Inception-v3's): the squared W2 distance between the
Gaussians N(mu1, S1) and N(mu2, S2) fitted to two sets of features,

  d^2 = ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^{1/2}).

S1 S2 is not symmetric, and the usual scipy.linalg.sqrtm of it (pytorch-fid)
can return complex values or lose accuracy when the covariances are near
singular. Here the trace term is computed from symmetric matrices only: with
A = S1^{1/2} and B = S2^{1/2} (symmetric PSD square roots by eigendecomposition)
the eigenvalues of S1 S2 = A (A S2) are those of A S2 A = (A B)(A B)^T, so

  Tr (S1 S2)^{1/2} = sum of the singular values of A B = ||A B||_*,

the nuclear norm (Uhlmann's fidelity of the Bures metric). The singular values
are found directly, not as square roots of eigenvalues, so small ones keep
their accuracy. The error reported with the distance is the worse relative
residual ||A A - S1||_F / ||S1||_F of the two square roots: rounding at 1e-15
for valid covariances, large when a covariance is not symmetric or has clearly
negative eigenvalues (which the square roots clip to zero).

Kernel distance (KID; Binkowski et al. 2018, sec. 4 and app. D): the squared
maximum mean discrepancy between the feature distributions with the cubic
polynomial kernel k(x, y) = (<x, y> / F + 1)^3, estimated without bias by the
U-statistic of two sets of m features each,

  MMD^2_u = 1/(m(m-1)) sum_{i != j} [k(x_i, x_j) + k(y_i, y_j)] - 2/m^2 sum_{i, j} k(x_i, y_j).

It has no bias at small N (unlike the Frechet distance), so it can be
negative. The sets are cut into disjoint blocks of m; the mean of the blocks'
estimates is the KID and their standard deviation over sqrt(blocks) its
standard error (the blocks are independent; the paper's 100 overlapping
subsets of 1000 estimate the same mean but not its error). Blocks of at most
1000, at least 10 of them.

Inception Score (Salimans et al. 2016, sec. 4): exp E_x KL(p(y|x) || p(y)),
p(y) the mean of the class probabilities over the set, on each of `splits`
disjoint parts, mean and standard deviation over the parts (as the paper's
code does with 10). 1 for one class always predicted or for uninformative
predictions, K for confident predictions spread evenly over K classes.

Improved precision and recall (Kynkaenniemi et al. 2019, eqs. 1-2): the
manifold of a set is the union of balls around each of its features, with
the radius the distance to its k-th nearest neighbour in the set (k = 3);
precision is the fraction of generated features inside the real manifold
(quality), recall the fraction of real features inside the generated one
(coverage).

Paired bootstrap of a Frechet-distance difference (Efron & Tibshirani 1993, ch. 13,
the percentile interval): two sample sets whose row i share their input (two samplers
from the same x_T) are resampled with the same indices i_1..i_N drawn with replacement,
both distances recomputed on each resample, and the mean and the 2.5/97.5 percentiles
of the differences reported; pairing removes the variance the two sets share. Against a
fixed reference N(mu_r, S_r), with B = S_r^{1/2} and the resample's rows X centred as
X_c (its mean m), the distance above needs no matrix square root per resample:

  d^2 = ||m - mu_r||^2 + ||X_c||_F^2 / (N - 1) + Tr S_r - 2 ||X_c B||_* / sqrt(N - 1),

since the eigenvalues of S S_r (S the resample's covariance) are those of
B S B = (X_c B)^T (X_c B) / (N - 1), so Tr (S S_r)^{1/2} is the sum of the singular values of X_c B / sqrt(N - 1), and X_c B is
the resampled rows of X B (computed once) centred: the square roots of the eigenvalues
of its Gram matrix on the smaller side (F x F or N x N), one per set and resample.
"""

import jax
import jax.numpy as jnp
import numpy as np
import scipy.spatial

from jaxdiff.oracle import GaussianMixture


def sliced_wasserstein(key, x, y, num_projections: int = 256):
  """Sliced W2 distance (the square root of the mean W2^2) between x and y [N, D]."""
  if x.ndim != 2 or x.shape != y.shape:
    raise ValueError(f"x and y must both be [N, D] with equal N, got {x.shape} and {y.shape}")
  theta = jax.random.normal(key, (x.shape[1], num_projections))
  theta = theta / jnp.linalg.norm(theta, axis=0, keepdims=True)  # [D, P]
  px, py = jnp.sort(x @ theta, axis=0), jnp.sort(y @ theta, axis=0)  # [N, P]
  return jnp.sqrt(jnp.mean((px - py) ** 2))


def oracle_metrics(key, mixture: GaussianMixture, x):
  """Scores samples x [N, D] against the true mixture.

  Returns:
    {"nll": mean -log p_0(x) in nats, "sw2": sliced W2 to N fresh true samples,
     "weight_error": max_k |fraction of x assigned to component k - w_k|}.
  """
  key_data, key_proj = jax.random.split(key)
  reference = mixture.sample(key_data, x.shape[0])
  counts = jnp.bincount(mixture.assign(x), length=mixture.weights.shape[0])
  return {
      "nll": float(-jnp.mean(mixture.log_prob(x))),
      "sw2": float(sliced_wasserstein(key_proj, x, reference)),
      "weight_error": float(jnp.max(jnp.abs(counts / x.shape[0] - mixture.weights))),
  }


def _check_features(name, features) -> np.ndarray:
  """features [N, F] as float64, after checking them."""
  features = np.asarray(features, np.float64)
  if features.ndim != 2 or features.shape[0] < 2:
    raise ValueError(f"{name} must be [N, F] with N >= 2 rows, got shape {features.shape}")
  if not np.all(np.isfinite(features)):
    raise ValueError(f"{name} must be finite, got {np.sum(~np.isfinite(features))} non-finite "
                     "values")
  return features


def feature_statistics(features):
  """The mean mu [F] and covariance sigma [F, F] (divided by N - 1) of features [N, F], float64."""
  features = _check_features("features", features)
  return features.mean(axis=0), np.cov(features, rowvar=False).reshape(features.shape[1], -1)


def _psd_sqrt(sigma):
  """The symmetric PSD square root of sigma [F, F] (negative eigenvalues clipped) and its
  relative residual ||A A - sigma||_F / ||sigma||_F."""
  eigenvalues, vectors = np.linalg.eigh(sigma)
  root = (vectors * np.sqrt(np.maximum(eigenvalues, 0.0))) @ vectors.T
  scale = np.linalg.norm(sigma)
  return root, np.linalg.norm(root @ root - sigma) / scale if scale > 0 else 0.0


def frechet_distance(mu1, sigma1, mu2, sigma2):
  """The Frechet distance between N(mu1, sigma1) and N(mu2, sigma2), in float64.

  Args:
    mu1, mu2: means [F].
    sigma1, sigma2: covariances [F, F] (symmetric positive semi-definite).

  Returns:
    (d^2 = ||mu1 - mu2||^2 + Tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^{1/2}) as a float, the
    relative error of the matrix square roots behind it; see the module docstring).
  """
  mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
  sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
  dim = mu1.shape[0] if mu1.ndim == 1 else -1
  if mu2.shape != (dim,) or sigma1.shape != (dim, dim) or sigma2.shape != (dim, dim):
    raise ValueError(f"frechet_distance takes means [F] and covariances [F, F] of one F, got "
                     f"mu1 {mu1.shape}, sigma1 {sigma1.shape}, mu2 {mu2.shape}, sigma2 "
                     f"{sigma2.shape}")
  if not all(np.all(np.isfinite(a)) for a in (mu1, sigma1, mu2, sigma2)):
    raise ValueError("frechet_distance got non-finite means or covariances")
  root1, error1 = _psd_sqrt(sigma1)
  root2, error2 = _psd_sqrt(sigma2)
  trace_sqrt = np.sum(np.linalg.svd(root1 @ root2, compute_uv=False))  # Tr (S1 S2)^{1/2}
  distance = np.sum((mu1 - mu2)**2) + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_sqrt
  return float(distance), float(max(error1, error2))


def polynomial_mmd2(x, y) -> float:
  """The unbiased MMD^2 U-statistic of x [m, F] and y [m, F] with the cubic polynomial kernel."""
  dim = x.shape[1]
  k_xx, k_yy, k_xy = ((a @ b.T / dim + 1) ** 3 for a, b in ((x, x), (y, y), (x, y)))  # [m, m]
  m = x.shape[0]
  within = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
  return float(within - 2 * k_xy.mean())


def kernel_distance(features1, features2, max_block: int = 1000,
                    min_blocks: int = 10) -> tuple[float, float, int]:
  """KID between two sets of features [N1, F] and [N2, F], with its standard error.

  Both sets are cut into B = max(min_blocks, ceil(N / max_block)) blocks of m = N // B
  features, N the smaller set's size (rows beyond B m unused).

  Returns:
    (KID, its standard error, B).
  """
  x = _check_features("features1", features1)
  y = _check_features("features2", features2)
  if x.shape[1] != y.shape[1]:
    raise ValueError(f"the two sets must have features of one size, got {x.shape[1]} and "
                     f"{y.shape[1]}")
  smaller = min(x.shape[0], y.shape[0])
  blocks = max(min_blocks, -(-smaller // max_block))
  m = smaller // blocks
  if m < 2 or min_blocks < 2:
    raise ValueError(f"KID needs at least {2 * max(min_blocks, 2)} features per set "
                     f"({max(min_blocks, 2)} blocks of 2), got {x.shape[0]} and {y.shape[0]}")
  estimates = np.array([polynomial_mmd2(x[i * m:(i + 1) * m], y[i * m:(i + 1) * m])
                        for i in range(blocks)])
  return float(estimates.mean()), float(np.std(estimates, ddof=1) / np.sqrt(blocks)), blocks


def inception_score(probabilities, splits: int = 10) -> tuple[float, float]:
  """The Inception Score of class probabilities [N, K] (rows summing to 1).

  Returns:
    (mean, standard deviation) over `splits` disjoint parts (fewer when N < splits).
  """
  p = np.asarray(probabilities, np.float64)
  if p.ndim != 2 or not np.all(np.isfinite(p)) or np.any(p < 0) or not np.allclose(
      p.sum(axis=1), 1, atol=1e-4):
    raise ValueError("inception_score takes class probabilities [N, K]: finite, non-negative, "
                     f"rows summing to 1 (softmax of logits); got shape {p.shape}")
  scores = []
  for part in np.array_split(p, min(splits, p.shape[0])):
    marginal = part.mean(axis=0)  # p(y) [K]
    kl = np.sum(part * (np.log(np.maximum(part, 1e-30)) - np.log(np.maximum(marginal, 1e-30))),
                axis=1)  # [n]: 0 log 0 = 0
    scores.append(np.exp(kl.mean()))
  return float(np.mean(scores)), float(np.std(scores))


# Rows of a distance matrix computed at once by _radii and _inside: their memory is
# DISTANCE_BLOCK x the other set's size, not N x M.
DISTANCE_BLOCK = 256
# The real features that precision and recall measure against: the first 10,000 (all of the
# digits' 1500). Their k-NN radii cost the square of the count: minutes at 60,000 on a
# 2-core CPU, for every judged set. Kynkaenniemi et al. 2019 compare equal sets, so more
# real features than samples add little.
MAX_REAL_FEATURES = 10_000


def _radii(features, k: int) -> np.ndarray:
  """[N] distance from each feature to its k-th nearest other feature of the set."""
  # Column 0 of each sorted row: the feature itself. The column is copied: a view would keep
  # its block's whole distance matrix alive.
  return np.concatenate([
      np.partition(scipy.spatial.distance.cdist(features[i:i + DISTANCE_BLOCK], features),
                   k, axis=1)[:, k].copy()
      for i in range(0, len(features), DISTANCE_BLOCK)])


def _inside(points, centres, radii) -> np.ndarray:
  """[P] whether each point lies in a ball of the manifold (centres [C, F], radii [C])."""
  return np.concatenate([
      np.any(scipy.spatial.distance.cdist(points[i:i + DISTANCE_BLOCK], centres) <= radii,
             axis=1)
      for i in range(0, len(points), DISTANCE_BLOCK)])


def precision_recall(real_features, generated_features, k: int = 3) -> tuple[float, float]:
  """Improved precision and recall of generated features [N, F] against real ones [M, F]
  (the first MAX_REAL_FEATURES of them).

  Returns:
    (precision: the fraction of generated features on the real manifold, recall: the
    fraction of real features on the generated manifold).
  """
  real = _check_features("real_features", real_features)
  fake = _check_features("generated_features", generated_features)
  if real.shape[1] != fake.shape[1] or min(real.shape[0], fake.shape[0]) <= k:
    raise ValueError(f"precision_recall needs sets of one feature size and more than k = {k} "
                     f"rows each, got {real.shape} and {fake.shape}")
  real = real[:MAX_REAL_FEATURES]
  precision = _inside(fake, real, _radii(real, k)).mean()
  recall = _inside(real, fake, _radii(fake, k)).mean()
  return float(precision), float(recall)


def _frechet_to_reference(features, projected, index, mu_ref, trace_ref) -> np.ndarray:
  """The Frechet distance [R] of each resample features[index[r]] (index [R, N]) to the
  reference, with projected = features B (B = S_ref^{1/2}); see the module docstring."""
  n = index.shape[1]
  out = np.empty(index.shape[0])
  for r, rows in enumerate(index):
    x = features[rows]  # [N, F]
    mean = x.mean(axis=0)
    y = projected[rows]
    y_c = y - y.mean(axis=0)
    gram = y_c.T @ y_c if y_c.shape[1] <= n else y_c @ y_c.T  # The smaller side.
    trace_sqrt = np.sum(np.sqrt(np.maximum(np.linalg.eigvalsh(gram), 0.0))) / np.sqrt(n - 1)
    out[r] = (np.sum((mean - mu_ref)**2) + np.sum((x - mean)**2) / (n - 1) + trace_ref
              - 2 * trace_sqrt)
  return out


def paired_frechet_bootstrap(features1, features2, mu_ref, sigma_ref, *,
                             num_resamples: int = 1000, seed: int = 0) -> dict:
  """The difference d1 - d2 of the Frechet distances of two paired feature sets to one
  reference, with a paired bootstrap percentile interval (module docstring).

  Args:
    features1, features2: [N, F]; row i of both comes from the same input (sample i).
    mu_ref, sigma_ref: the reference's mean [F] and covariance [F, F].
    num_resamples: R, the bootstrap resamples (indices drawn by numpy's default_rng(seed)).

  Returns:
    {"distance1", "distance2", "difference": on the N rows as given; "mean", "low", "high":
    the mean and the 2.5th and 97.5th percentiles of the R resampled differences;
    "num_samples": N, "num_resamples": R, "seed"}.
  """
  x1 = _check_features("features1", features1)
  x2 = _check_features("features2", features2)
  mu_ref, sigma_ref = np.asarray(mu_ref, np.float64), np.asarray(sigma_ref, np.float64)
  if x1.shape != x2.shape or mu_ref.shape != x1.shape[1:] or sigma_ref.shape != x1.shape[1:] * 2:
    raise ValueError(f"paired features must be two [N, F] sets of one shape with a reference "
                     f"mean [F] and covariance [F, F], got {x1.shape}, {x2.shape}, "
                     f"{mu_ref.shape}, {sigma_ref.shape}")
  if not isinstance(num_resamples, int) or num_resamples < 2:
    raise ValueError(f"num_resamples must be an integer >= 2, got {num_resamples!r}")
  root, _ = _psd_sqrt(sigma_ref)
  trace_ref = np.trace(sigma_ref)
  n = x1.shape[0]
  index = np.random.default_rng(seed).integers(0, n, (num_resamples, n))  # [R, N]
  everything = np.arange(n)[None]
  d1, d2 = (_frechet_to_reference(x, x @ root, np.concatenate([everything, index]), mu_ref,
                                  trace_ref) for x in (x1, x2))
  differences = d1[1:] - d2[1:]
  low, high = np.percentile(differences, [2.5, 97.5])
  return {"distance1": float(d1[0]), "distance2": float(d2[0]),
          "difference": float(d1[0] - d2[0]), "mean": float(differences.mean()),
          "low": float(low), "high": float(high), "num_samples": n,
          "num_resamples": num_resamples, "seed": seed}
