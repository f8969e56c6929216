"""An analytic oracle: Gaussian-mixture data with an exact denoiser.

Data p_0(x) = sum_k w_k N(x; mu_k, s_k^2 I) in D dimensions. Under any process
x_t = alpha x_0 + sigma eps the marginal stays a mixture,
  p_t(x) = sum_k w_k N(x; alpha mu_k, v_k I),   v_k = alpha^2 s_k^2 + sigma^2,
so its score, and by Tweedie's formula the ideal denoiser, are exact:
  score(x)      = sum_k r_k(x) (alpha mu_k - x) / v_k,
  E[x_0 | x_t]  = sum_k r_k(x) (mu_k + alpha s_k^2 / v_k (x - alpha mu_k)),
  E[eps | x_t]  = -sigma score(x),
with responsibilities r_k(x) = softmax_k(log w_k + log N(x; alpha mu_k, v_k I)).
Samplers run with this denoiser follow the true reverse process, so their
errors are the discretization errors alone. Taking the components as classes,
r_k(x) = p(k | x_t) is the exact noisy classifier (`class_log_prob`) of
classifier guidance (`jaxdiff.classifier_guidance`).
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff import parameterization
from jaxdiff.schedules import Process
from jaxdiff.sde import per_example


@dataclasses.dataclass(frozen=True, eq=False)
class GaussianMixture:
  """weights [K] (summing to 1), means [K, D], stds [K] (isotropic, > 0).

  Points are [B, D]; hashing is by identity, so an instance can be closed over
  by jitted functions.
  """

  weights: jax.Array
  means: jax.Array
  stds: jax.Array

  def __post_init__(self):
    weights, means, stds = (np.asarray(a, np.float32) for a in
                            (self.weights, self.means, self.stds))
    if means.ndim != 2:
      raise ValueError(f"means must be [K, D], got shape {means.shape}")
    k = means.shape[0]
    if weights.shape != (k,) or stds.shape != (k,):
      raise ValueError(f"weights and stds must be [K] = [{k}] to match means {means.shape}; "
                       f"got {weights.shape} and {stds.shape}")
    for name, a in (("weights", weights), ("means", means), ("stds", stds)):
      if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} must be finite, got NaN or inf at indices "
                         f"{np.argwhere(~np.isfinite(a))[:5].tolist()}")
    if np.any(weights <= 0) or abs(weights.sum() - 1) > 1e-5:
      raise ValueError(f"weights must be positive and sum to 1, got {weights}")
    if np.any(stds <= 0):
      raise ValueError(f"stds must be positive, got {stds}")
    for name, a in (("weights", weights), ("means", means), ("stds", stds)):
      object.__setattr__(self, name, jnp.asarray(a))

  @property
  def dim(self) -> int:
    return self.means.shape[1]

  def sample(self, key, num):
    """num points [num, D] from the data distribution."""
    key_k, key_z = jax.random.split(key)
    k = jax.random.choice(key_k, self.weights.shape[0], (num,), p=self.weights)
    z = jax.random.normal(key_z, (num, self.dim))
    return self.means[k] + self.stds[k, None] * z

  def _check_points(self, x):
    if x.ndim != 2 or x.shape[1] != self.dim:
      raise ValueError(f"points must be [B, {self.dim}] for this mixture, got {x.shape}")

  def _components(self, process: Process, x, t):
    """Per-component means alpha mu_k [B?, K, D], variances v_k and log-densities [B, K]."""
    self._check_points(x)
    alpha = per_example(process.alpha(t), x)[..., None]  # [B, 1, 1] or []
    sigma2 = per_example(process.sigma2(t), x)[..., None]
    mean = alpha * self.means  # [B, K, D] or [K, D]
    var = alpha[..., 0] ** 2 * self.stds**2 + sigma2[..., 0]  # [B, K] or [K]
    sq_dist = jnp.sum((x[:, None, :] - mean) ** 2, axis=-1)  # [B, K]
    log_n = -0.5 * sq_dist / var - 0.5 * self.dim * jnp.log(2 * jnp.pi * var)
    return alpha, mean, var, jnp.log(self.weights) + log_n

  def _data_log_joint(self, x):
    """log w_k + log N(x; mu_k, s_k^2 I): [B, K]."""
    self._check_points(x)
    var = self.stds**2
    sq_dist = jnp.sum((x[:, None, :] - self.means) ** 2, axis=-1)
    return jnp.log(self.weights) - 0.5 * sq_dist / var - 0.5 * self.dim * jnp.log(2 * jnp.pi * var)

  def log_prob(self, x, process: Process | None = None, t=0.0):
    """log p_t(x) [B]; the data density when no process is given."""
    log_joint = self._data_log_joint(x) if process is None else self._components(process, x, t)[-1]
    return jax.nn.logsumexp(log_joint, axis=-1)

  def class_log_prob(self, process: Process, x, t):
    """log p(k | x_t): [B, K], the exact noisy classifier whose classes are the components.

    It is log r_k(x), the log of the responsibilities, so that grad_x of it is the
    score of component k minus the score of the mixture (classifier guidance).
    """
    return jax.nn.log_softmax(self._components(process, x, t)[-1], axis=-1)

  def assign(self, x):
    """Index [B] of the component most likely to have produced each data point."""
    return jnp.argmax(self._data_log_joint(x), axis=-1)

  def score(self, process: Process, x, t):
    """grad_x log p_t(x): [B, D]."""
    return self._score_and_x0(process, x, t)[0]

  def x0_eps(self, process: Process, x, t):
    """E[x_0 | x_t] and E[eps | x_t]: [B, D] each."""
    score, x0 = self._score_and_x0(process, x, t)
    return x0, -per_example(process.sigma(t), x) * score

  def _score_and_x0(self, process, x, t):
    alpha, mean, var, log_joint = self._components(process, x, t)
    r = jax.nn.softmax(log_joint, axis=-1)  # [B, K]
    residual = x[:, None, :] - mean  # [B, K, D]
    score = -jnp.sum((r / var)[..., None] * residual, axis=1)
    gain = alpha[..., 0] * self.stds**2 / var  # [B, K]
    x0 = jnp.sum(r[..., None] * (self.means + gain[..., None] * residual), axis=1)
    return score, x0

  def denoise_fn(self, process: Process, prediction: str = "eps"):
    """The ideal network: (x, t, cond) -> prediction of the given type."""

    def fn(x, t, cond=None):
      del cond
      x0, eps = self.x0_eps(process, x, t)
      return parameterization.from_x0_eps(process, prediction, x0, eps, t)

    return fn


def ring(num_modes: int = 8, radius: float = 0.7, std: float = 0.08, dim: int = 2):
  """num_modes equal-weight modes on a circle of the given radius in the first two axes."""
  if not isinstance(num_modes, (int, np.integer)) or num_modes < 1:
    raise ValueError(f"ring: num_modes must be a positive integer, got {num_modes!r}")
  if not isinstance(dim, (int, np.integer)) or dim < 2:
    raise ValueError(f"ring: dim must be an integer >= 2 (the circle lies in the first two "
                     f"axes), got {dim!r}")
  angles = 2 * np.pi * np.arange(num_modes) / num_modes
  means = np.zeros((num_modes, dim), np.float32)
  means[:, 0], means[:, 1] = radius * np.cos(angles), radius * np.sin(angles)
  return GaussianMixture(np.full(num_modes, 1.0 / num_modes), means, np.full(num_modes, std))
