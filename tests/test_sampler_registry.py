"""The contract every registered sampler keeps, tested once over the registry.

For each entry of jaxdiff.samplers.SAMPLERS: its declared options are checked
(unknown names, wrong types); bad grids and x_T are refused before anything
runs; info["nfe"] equals the network's evaluations and the declared NFE rule,
on grids ending at sigma = 0 and at t_min > 0; the rule inverts; NaN is
flagged with its step; a key is required exactly where the entry declares
noise (a deterministic entry gives the same x without one), and per-sample
keys give each row the noise of its own key, whatever the batch; and the
declared order holds on the smooth Gaussian mixture -- for a deterministic
sampler the slope of its error against the float64 PF-ODE solution, for a
stochastic one the law of its samples against the mixture's. An entry whose
order is NOT_A_SOLVER (the consistency sampler, right only for a consistency
function, not for the mixture's denoiser) is skipped there, with that reason,
and tested against its own exact function in its own file. A new sampler is
tested by adding it to the registry.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff import grids, samplers
from jaxdiff.samplers import SAMPLERS, base

from conftest import (OPTIMIZED, PROCESSES, SMOOTH, counting, pf_ode_reference, prior,
                      toy_denoise_fn)

NAMES = sorted(SAMPLERS)
ON_GRIDS = [name for name in NAMES if SAMPLERS[name].nfe is not None]
DETERMINISTIC = [name for name in ON_GRIDS if not SAMPLERS[name].stochastic(SAMPLERS[name].resolve({}))]
STOCHASTIC = [name for name in ON_GRIDS if name not in DETERMINISTIC]


def solvers(names):
  """The names of samplers that solve an equation of the denoiser they are given: those
  declaring NOT_A_SOLVER (the consistency sampler, exact only for a consistency function,
  tested in test_consistency_sampler.py) have no order on the PF-ODE and do not reach the
  mixture, so they are left out here."""
  return [name for name in names
          if SAMPLERS[name].order(SAMPLERS[name].resolve({})) is not base.NOT_A_SOLVER]


def vp_grid(num_steps, ends_at_zero):
  """num_steps steps uniform in log-SNR on VP, ending at t = 0 or at t_min: [N + 1]."""
  process = PROCESSES["vp"]
  if ends_at_zero:
    return grids.make_grid(process, "log_snr", num_steps)
  return grids.make_grid(process, "log_snr", num_steps + 1)[:-1]


@pytest.mark.parametrize("name", NAMES)
def test_inputs_nfe_and_nan(name):
  process, sampler = PROCESSES["vp"], SAMPLERS[name]
  x_T, key = prior("vp", 3), jax.random.PRNGKey(0)
  grid = vp_grid(3, True)
  # A concrete grid that increases, is out of order, leaves the domain or holds
  # NaN, and an x_T with a NaN row, are refused before anything runs.
  for bad_grid, message in ((grid[::-1], "strictly decrease.*grid\\[0\\] = 0 <="),
                            (grid.at[1].set(grid[0]), "strictly decrease"),
                            (grid.at[-1].set(-0.5), "strictly decrease|time domain"),
                            (grid.at[0].set(1.5), "time domain"),
                            (grid.at[1].set(jnp.nan), "NaN")):
    with pytest.raises(ValueError, match=message):
      sampler(toy_denoise_fn, process, x_T, key, bad_grid)
  with pytest.raises(ValueError, match="x_T holds NaN or inf in 1 of its 3 rows"):
    sampler(toy_denoise_fn, process, x_T.at[1, 0].set(jnp.inf), key, grid)

  # The counted NFE is the network's evaluations and the declared rule, on grids
  # ending at sigma = 0 and at t_min (the adaptive solver has no rule: one end).
  options = sampler.resolve({})
  stochastic = sampler.stochastic(options)
  for ends_at_zero in (True, False) if sampler.nfe is not None else (True,):
    grid = vp_grid(3, ends_at_zero)
    network, calls = counting(toy_denoise_fn)
    x, info = sampler(network, process, x_T, key, grid)
    jax.effects_barrier()
    assert int(info["nfe"]) == len(calls)
    if sampler.nfe is not None:
      assert len(calls) == sampler.nfe(3, ends_at_zero, options), ends_at_zero
    assert int(info["nonfinite_step"]) == -1 and bool(jnp.all(jnp.isfinite(x)))

  # A key is needed exactly where the entry declares noise; elsewhere None gives the same x.
  if stochastic:
    with pytest.raises(ValueError, match="needs a PRNG key"):
      sampler(toy_denoise_fn, process, x_T, None, grid)
    # One key per sample: row j's noise comes from key j alone, whatever the batch
    # (PC's default snr_norm="batch" couples the rows through its step size).
    keys = jax.vmap(jax.random.fold_in, (None, 0))(key, jnp.arange(3))
    own = {"snr_norm": "example"} if "snr_norm" in sampler.options else {}
    batch, _ = sampler(toy_denoise_fn, process, x_T, keys, grid, **own)
    alone, _ = sampler(toy_denoise_fn, process, x_T[1:2], keys[1:2], grid, **own)
    np.testing.assert_allclose(np.asarray(batch[1:2]), np.asarray(alone), rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="one per row of x_T \\(3\\), got 2"):
      sampler(toy_denoise_fn, process, x_T, keys[:2], grid)
  else:
    without, _ = sampler(network, process, x_T, None, grid)
    np.testing.assert_array_equal(np.asarray(x), np.asarray(without))

  broken = lambda x, t, cond: jnp.full_like(x, jnp.nan)
  _, info = sampler(broken, process, x_T, key, grid)
  assert int(info["nonfinite_step"]) == 0
  with pytest.raises(FloatingPointError, match="at step 0 "):
    samplers.raise_if_nonfinite(info, grid)


@pytest.mark.parametrize("name", NAMES)
def test_options_are_declared_and_checked(name):
  sampler = SAMPLERS[name]
  options = sampler.resolve({})  # Every default passes its own check.
  assert set(sampler.options) <= set(options)
  with pytest.raises(ValueError, match=f"'{name}' takes the options .*got unknown \\['bogus'\\]"):
    sampler.resolve({"bogus": 1})
  for option in sampler.options:
    with pytest.raises(ValueError, match=f"{option}"):
      sampler.resolve({option: object()})


@pytest.mark.parametrize("name", ON_GRIDS)
def test_nfe_rule_inverts(name):
  sampler = SAMPLERS[name]
  options = sampler.resolve({})
  for ends_at_zero in (True, False):
    spent = [sampler.nfe(n, ends_at_zero, options) for n in range(1, 6)]
    assert all(a < b for a, b in zip(spent, spent[1:])), spent
    for n, nfe in enumerate(spent, 1):
      assert sampler.num_steps(nfe, ends_at_zero=ends_at_zero) == n
    gaps = sorted(set(range(1, spent[-1])) - set(spent))
    if gaps:
      with pytest.raises(ValueError, match="nearest NFE that work"):
        sampler.num_steps(gaps[0], ends_at_zero=ends_at_zero)
  with pytest.raises(ValueError, match="nfe must be a positive integer"):
    sampler.num_steps(0)


# --------------------------------------------------------------------------
# The declared order, measured on the smooth mixture (VP, eps prediction).
# --------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnums=0, compiler_options=OPTIMIZED)
def solve(name, x_T, key, grid):
  process = PROCESSES["vp"]
  return SAMPLERS[name](SMOOTH.denoise_fn(process, "eps"), process, x_T, key, grid)


# Step counts N and 4N in the asymptotic regime and above float32's floor, by order.
STEPS = {1: (32, 128), 2: (16, 64), 3: (12, 48), 4: (6, 24)}


@pytest.mark.parametrize("name", solvers(DETERMINISTIC))
def test_declared_order_on_the_pf_ode(name):
  sampler = SAMPLERS[name]
  order = sampler.order(sampler.resolve({}))
  x_T = prior("vp", 32, seed=1)
  errors = []
  for num_steps in STEPS[order]:
    grid = vp_grid(num_steps, ends_at_zero=False)
    x_ref = pf_ode_reference("vp", x_T, float(grid[0]), float(grid[-1]))
    x, _ = solve(name, x_T, None, grid)
    errors.append(float(np.max(np.abs(np.asarray(x, np.float64) - x_ref))))
  slope = np.log(errors[0] / errors[1]) / np.log(4.0)
  assert abs(slope - order) < 0.4, (slope, errors)


@pytest.mark.parametrize("name", solvers(STOCHASTIC))
def test_stochastic_samplers_reach_the_mixture(name):
  """The mean and covariance of 4096 samples (N = 256 steps) are the mixture's,
  within 5 standard errors plus the O(1/N) bias of a weak first-order method."""
  num = 4096
  x_T = prior("vp", num, seed=2)
  x, info = solve(name, x_T, jax.random.PRNGKey(3), vp_grid(256, ends_at_zero=True))
  assert int(info["nonfinite_step"]) == -1
  data = np.asarray(SMOOTH.sample(jax.random.PRNGKey(4), 200_000), np.float64)
  x = np.asarray(x, np.float64)
  mean_se = np.sqrt(np.diag(np.cov(data.T)) / num)
  np.testing.assert_array_less(np.abs(x.mean(0) - data.mean(0)), 5 * mean_se + 0.02)
  np.testing.assert_allclose(np.cov(x.T), np.cov(data.T), atol=0.03)
