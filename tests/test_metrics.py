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
