"""Distribution-level sample metrics that need no feature network.

Sliced Wasserstein-2 (Rabin et al. 2011; Bonneel et al. 2015): the mean over
random unit directions theta of W2^2 between the 1-D projections <theta, x>,
which for equal sample sizes is the mean squared difference of the sorted
projections. Against the analytic oracle (`jaxdiff.oracle`) samples are also
scored by their negative log-likelihood under the true density and by how
well they recover the mixture weights.
"""

import jax
import jax.numpy as jnp

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
