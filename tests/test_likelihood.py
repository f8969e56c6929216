"""Likelihoods: the probability-flow ODE against the oracle's exact log-density,
the divergence estimators, dequantization and bits per dimension."""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff import likelihood, oracle, schedules

MIXTURE = oracle.ring(num_modes=4, radius=0.6, std=0.15)
PROCESSES = {"vp": schedules.VP(), "subvp": schedules.SubVP(), "ve": schedules.VE()}


@pytest.fixture(scope="module")
def points():
  return MIXTURE.sample(jax.random.PRNGKey(0), 8)


def exact_run(process, points, **kw):
  """The ODE with the oracle's score, its prior the exact p_T (isolates the solver)."""
  return jax.jit(lambda x: likelihood.ode_log_likelihood(
      MIXTURE.denoise_fn(process), process, x,
      prior_log_prob=lambda z: MIXTURE.log_prob(z, process, process.t_max), **kw))(points)


@pytest.mark.parametrize("name", sorted(PROCESSES))
def test_ode_log_likelihood_is_the_exact_log_density(name, points):
  process = PROCESSES[name]
  out = exact_run(process, points)
  truth = MIXTURE.log_prob(points, process, process.t_min)
  assert bool(jnp.all(out["ok"]))
  # Tsit5 at rtol = atol = 1e-5 on (x, delta log p): measured 1.5e-5 (VP) to 5.5e-5
  # (sub-VP) nats, while the divergence integral is 0.5 to 11 nats.
  np.testing.assert_allclose(out["log_likelihood"], truth, atol=5e-4)
  # The flow carried the points to where p_T puts them: far from the data's scale.
  assert float(jnp.std(out["x_T"])) > 0.5 * process.prior_std()


def test_the_default_prior_costs_what_p_T_differs_from_it(points):
  process = PROCESSES["vp"]
  out = jax.jit(lambda x: likelihood.ode_log_likelihood(MIXTURE.denoise_fn(process), process,
                                                        x))(points)
  truth = MIXTURE.log_prob(points, process, process.t_min)
  # VP at t = 1 keeps alpha = 6.6e-3 of x_0: p_T is N(0, I) to ~1e-5 nats here.
  np.testing.assert_allclose(out["log_likelihood"], truth, atol=5e-4)


@pytest.mark.parametrize("probes", likelihood.PROBES)
def test_hutchinson_is_unbiased_within_its_sampling_error(probes, points):
  process = PROCESSES["vp"]
  copies = 64  # Each copy of a point draws its own probe: independent estimates.
  x = jnp.repeat(points[:4], copies, axis=0)
  out = jax.jit(lambda x, key: likelihood.ode_log_likelihood(
      MIXTURE.denoise_fn(process), process, x, key, divergence="hutchinson", probes=probes,
      prior_log_prob=lambda z: MIXTURE.log_prob(z, process, process.t_max)))(
          x, jax.random.PRNGKey(1))
  estimates = np.asarray(out["log_likelihood"]).reshape(4, copies)
  truth = np.asarray(MIXTURE.log_prob(points[:4], process, process.t_min))
  standard_error = estimates.std(axis=1, ddof=1) / math.sqrt(copies)
  assert np.all(standard_error > 1e-4)  # The probes vary the estimate.
  assert np.all(np.abs(estimates.mean(axis=1) - truth) < 4 * standard_error + 5e-4)


def test_divergences_of_a_linear_map_are_its_trace():
  a = jnp.array([[0.5, -2.0], [3.0, -1.5]])
  fn = lambda x: x @ a.T
  x = jnp.ones((3, 2))
  np.testing.assert_allclose(likelihood.exact_divergence(fn, x), -1.0, rtol=1e-6)
  # All four sign vectors: E[eps^T A eps] = tr(A) exactly.
  signs = jnp.array(list(itertools.product([-1.0, 1.0], repeat=2)))
  probes = jnp.broadcast_to(signs[:, None, :], (4, 3, 2))
  np.testing.assert_allclose(likelihood.hutchinson_divergence(fn, x, probes), -1.0, rtol=1e-6)


def test_uniform_8_bit_data_has_8_bits_per_dim():
  # Dequantized data under the uniform density on [-1, 1)^D: log p = -D log 2.
  num_dims = 3 * 8 * 8
  np.testing.assert_allclose(
      likelihood.bits_per_dim(-num_dims * math.log(2.0), num_dims), 8.0, rtol=1e-6)
  np.testing.assert_allclose(
      likelihood.bits_per_dim(-num_dims * math.log(2.0), num_dims, eight_bit=False), 1.0,
      rtol=1e-6)


def test_dequantized_points_fill_their_own_bin():
  images = np.arange(256, dtype=np.uint8).reshape(4, 8, 8, 1)
  y = np.asarray(likelihood.dequantize(images, jax.random.PRNGKey(0)))
  assert y.min() >= -1 and y.max() < 1
  np.testing.assert_array_equal(np.floor((y + 1) * 128).astype(np.uint8), images)


@pytest.mark.parametrize("call, message", [
    (lambda: likelihood.dequantize(np.zeros((2, 4), np.float32), jax.random.PRNGKey(0)),
     "dequantize takes uint8 images"),
    (lambda: likelihood.ode_log_likelihood(MIXTURE.denoise_fn(PROCESSES["vp"]), PROCESSES["vp"],
                                           jnp.zeros((2, 2)), divergence="hutchinson"),
     "the Hutchinson divergence draws probes: pass a PRNG key"),
    (lambda: likelihood.ode_log_likelihood(MIXTURE.denoise_fn(PROCESSES["vp"]), PROCESSES["vp"],
                                           jnp.zeros((2, 2)), divergence="trace"),
     "divergence must be one of"),
    (lambda: likelihood.draw_probes(jax.random.PRNGKey(0), (2,), 0), "num_probes must be"),
    (lambda: likelihood.draw_probes(jax.random.PRNGKey(0), (2,), 1, "uniform"),
     "probes must be one of"),
    (lambda: likelihood.ode_log_likelihood(MIXTURE.denoise_fn(PROCESSES["vp"]), PROCESSES["vp"],
                                           jnp.zeros((2,))), "x must be a batch"),
])
def test_bad_input_is_refused(call, message):
  with pytest.raises(ValueError, match=message):
    call()
