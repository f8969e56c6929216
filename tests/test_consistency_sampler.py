"""Tests for the consistency sampler (Song et al. 2023, Algorithm 1) with the exact
consistency function of Gaussian data: its samples have the law at the boundary
time t_min in one, two and four steps, on EDM and VP; one re-noising step against
a hand computation; the NFE, the key rules and the grid refusal. The contract
checks (options, bad grids and x_T, NFE against the declared rule on both grid
ends, NaN flags) are the registry-wide test's (tests/test_sampler_registry.py).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff import grids, schedules, sde
from jaxdiff.samplers import SAMPLERS

from conftest import counting

CONSISTENCY = SAMPLERS["consistency"]
# Gaussian data x_0 ~ N(MU, S0^2), per dimension: [D].
MU = np.array([0.5, -0.3, 0.0, 0.2])
S0 = np.array([0.3, 0.5, 0.2, 0.4])
# t_min far above the defaults (0.002, 1e-3), so that the boundary law
# N(MU, S0^2 + s_min^2) is many standard errors from the data's N(MU, S0^2): a
# sampler that lost s_min, or alpha, would fail. VP's alpha(t_min) = 0.985.
PROCESSES = {"edm": schedules.make_process("edm", t_min=0.2),
             "vp": schedules.make_process("vp", t_min=0.05)}


def s_min_of(process):
  return float(process.noise_to_signal(process.t_min))


def gaussian_consistency_fn(process):
  """The exact consistency function of N(MU, S0^2) data, an x0 prediction.

  In x~ = x / alpha, s = sigma / alpha the PF-ODE dx~/ds = (x~ - E[x_0 | x~]) / s
  has the flow x~ - MU proportional to sqrt(S0^2 + s^2), so the trajectory
  through x_t reaches s_min at x~_min = MU + (x~_t - MU) sqrt(S0^2 + s_min^2) /
  sqrt(S0^2 + s(t)^2): the output (the x0 whose noisy version at t_min is the
  trajectory's point, x_{t_min} = alpha(t_min) x~_min).
  """
  s_min = s_min_of(process)

  def f(x_t, t, cond):  # x_t [B, D], t [B] -> [B, D]
    del cond
    alpha, s = (sde.per_example(c, x_t) for c in (process.alpha(t), process.noise_to_signal(t)))
    return MU + (x_t / alpha - MU) * jnp.sqrt((S0**2 + s_min**2) / (S0**2 + s**2))

  return f


def start(process, grid, num, seed):
  """x at grid[0]: N(0, sigma(grid[0])^2), the prior that ignores alpha x_0: [num, D]."""
  return float(process.sigma(grid[0])) * jax.random.normal(jax.random.PRNGKey(seed),
                                                           (num, MU.size))


@pytest.mark.parametrize("process_name", ["edm", "vp"])
def test_one_two_and_four_steps_reach_the_boundary_law(process_name):
  """20,000 samples' mean and variance, per dimension, are N(MU, S0^2 + s_min^2)'s
  within 5 standard errors (mean: sqrt(v / n); variance: v sqrt(2 / (n - 1))); the
  mean also within the prior's missing alpha(t_0) MU, which the first call shrinks to
  |MU| sqrt(v / (S0^2 + s(t_0)^2)) (at most 0.5 standard errors here) and the later
  calls shrink further. The grids are the process's default, ending at t_min."""
  process, num = PROCESSES[process_name], 20_000
  f = gaussian_consistency_fn(process)
  # The boundary condition: f is the identity in x~ at t_min.
  x = jnp.asarray(np.random.default_rng(0).standard_normal((3, MU.size)), jnp.float32)
  np.testing.assert_allclose(f(x, jnp.full((3,), process.t_min), None),
                             x / process.alpha(process.t_min), rtol=1e-6)
  boundary_var = S0**2 + s_min_of(process)**2  # [D]
  assert np.all(np.sqrt(2 / num) * boundary_var * 5 < boundary_var - S0**2)  # It can fail.
  name, options = grids.default_for(process)
  for num_steps in (1, 2, 4):
    grid = grids.make_grid(process, name, num_steps, end="t_min", **options)
    x, info = CONSISTENCY(f, process, start(process, grid, num, num_steps), jax.random.PRNGKey(1),
                          grid, prediction="x0")
    assert int(info["nfe"]) == num_steps and int(info["nonfinite_step"]) == -1
    x = np.asarray(x, np.float64)
    s_T = float(process.noise_to_signal(grid[0]))
    prior_bias = np.abs(MU) * np.sqrt(boundary_var / (S0**2 + s_T**2))
    np.testing.assert_array_less(np.abs(x.mean(0) - MU),
                                 5 * np.sqrt(boundary_var / num) + prior_bias)
    np.testing.assert_array_less(np.abs(x.var(0) - boundary_var),
                                 5 * boundary_var * np.sqrt(2 / (num - 1)))


def test_renoising_step_by_hand():
  """Two steps on VP, t_0 > t_1 > t_min, against numpy in float64: x~ = f(x_0, t_0),
  x_1 = alpha(t_1) (x~ + sqrt(s(t_1)^2 - s_min^2) z) with z from fold_in(key, 0) (the
  step's key), then f(x_1, t_1) -- the same whether the grid ends at t_min or at 0."""
  process = PROCESSES["vp"]
  f, key = gaussian_consistency_fn(process), jax.random.PRNGKey(7)
  t_0, t_1 = np.float32(0.8), np.float32(0.3)
  x_T = start(process, jnp.array([t_0]), 5, seed=3)
  z = np.asarray(jax.random.normal(jax.random.fold_in(key, 0), x_T.shape), np.float64)

  alpha = lambda t: float(process.alpha(t))
  s = lambda t: float(process.noise_to_signal(t))
  s_min = s(process.t_min)

  def f_np(x, t):
    return MU + (x / alpha(t) - MU) * np.sqrt((S0**2 + s_min**2) / (S0**2 + s(t)**2))

  x_1 = alpha(t_1) * (f_np(np.asarray(x_T, np.float64), t_0) + np.sqrt(s(t_1)**2 - s_min**2) * z)
  expected = f_np(x_1, t_1)
  for end in (process.t_min, 0.0):
    x, _ = CONSISTENCY(f, process, x_T, key, jnp.array([t_0, t_1, end]), prediction="x0")
    np.testing.assert_allclose(np.asarray(x), expected, rtol=1e-5, atol=1e-6)


def test_nfe_keys_and_grid_refusal():
  process = PROCESSES["edm"]
  f = gaussian_consistency_fn(process)
  x_T, key = start(process, jnp.array([80.0]), 4, seed=0), jax.random.PRNGKey(0)
  # One call per step, whatever the end; one step draws no noise and takes key=None.
  for num_steps in (1, 2, 4):
    network, calls = counting(f)
    grid = grids.make_grid(process, "karras", num_steps, end="t_min")
    CONSISTENCY(network, process, x_T, key, grid, prediction="x0")
    jax.effects_barrier()
    assert len(calls) == num_steps == CONSISTENCY.num_steps(num_steps)
  one_step = grids.make_grid(process, "karras", 1)
  without, _ = CONSISTENCY(f, process, x_T, None, one_step, prediction="x0")
  with_key, _ = CONSISTENCY(f, process, x_T, key, one_step, prediction="x0")
  np.testing.assert_array_equal(np.asarray(without), np.asarray(with_key))
  with pytest.raises(ValueError, match="draws noise on grids of more than 1 step and needs"):
    CONSISTENCY(f, process, x_T, None, grid, prediction="x0")

  # Per-sample keys: a row's noise is its own key's; equal rows with equal keys agree.
  keys = jax.random.split(key, 4)
  keys = keys.at[1].set(keys[0])  # [4, 2]: rows 0 and 1 share a key.
  x, _ = CONSISTENCY(f, process, jnp.tile(x_T[:1], (4, 1)), keys, grid, prediction="x0")
  x = np.asarray(x)
  np.testing.assert_array_equal(x[0], x[1])
  assert np.all(x[0] != x[2])

  # An inner time below t_min (0.2 here) is refused before anything is traced.
  with pytest.raises(ValueError, match=r"t_min = 0.2 .*grid\[2\] = 0.1;.*end='t_min'"):
    CONSISTENCY(f, process, x_T, key, jnp.array([80.0, 1.0, 0.1, 0.0]), prediction="x0")
