"""Distribution-level sample metrics: sliced Wasserstein, Frechet distance, oracle metrics.

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
"""

import jax
import jax.numpy as jnp
import numpy as np

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


def feature_statistics(features):
  """The mean mu [F] and covariance sigma [F, F] (divided by N - 1) of features [N, F], float64."""
  features = np.asarray(features, np.float64)
  if features.ndim != 2 or features.shape[0] < 2:
    raise ValueError(f"features must be [N, F] with N >= 2 rows, got shape {features.shape}")
  if not np.all(np.isfinite(features)):
    raise ValueError(f"features must be finite, got {np.sum(~np.isfinite(features))} non-finite "
                     "values")
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
