"""Tests for jaxdiff.grids: shapes and ends, the defining spacing of each
builder, diffusers' published spacings, and errors on bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff import grids, schedules

T = 1000
CONTINUOUS = ("uniform", "log_snr", "quadratic", "karras")
SPACINGS = ("linspace", "leading", "trailing")


PROCESSES = {name: schedules.make_process(name)
             for name in ("ddpm", "vp", "subvp", "ve", "edm", "flow")}


def _options(process_name, grid_name):
  # Flow matching has alpha(1) = 0, so log-SNR-based grids need t_max < 1.
  if process_name == "flow" and grid_name in ("log_snr", "karras"):
    return {"t_max": 0.99}
  return {}


@pytest.mark.parametrize("num_steps", [1, 7])
@pytest.mark.parametrize("grid_name", CONTINUOUS)
@pytest.mark.parametrize("process_name", list(PROCESSES))
def test_continuous_grids_shape_ends_decreasing(process_name, grid_name, num_steps):
  process = PROCESSES[process_name]
  options = _options(process_name, grid_name)
  grid = np.asarray(grids.make_grid(process, grid_name, num_steps, **options))
  assert grid.dtype == np.float32 and grid.shape == (num_steps + 1,)
  assert np.all(np.diff(grid) < 0)
  assert grid[0] == np.float32(options.get("t_max", process.t_max))
  assert grid[-1] == 0.0
  if num_steps > 1:
    assert grid[-2] == np.float32(process.t_min)


@pytest.mark.parametrize("grid_name", CONTINUOUS)
@pytest.mark.parametrize("process_name", ["ddpm", "ve", "flow"])
def test_t_min_end_is_the_same_rule_on_one_more_point(process_name, grid_name):
  # N calls on N + 1 points from t_max to t_min, no jump to 0: the default
  # grid of N + 1 steps without its final 0.
  process = PROCESSES[process_name]
  options = _options(process_name, grid_name)
  for num_steps in (1, 6):
    grid = np.asarray(grids.make_grid(process, grid_name, num_steps, end="t_min", **options))
    assert grid.dtype == np.float32 and grid.shape == (num_steps + 1,)
    assert grid[0] == np.float32(options.get("t_max", process.t_max))
    assert grid[-1] == np.float32(process.t_min) and np.all(np.diff(grid) < 0)
    longer = np.asarray(grids.make_grid(process, grid_name, num_steps + 1, **options))
    np.testing.assert_array_equal(grid, longer[:-1])


def test_t_min_end_is_the_reference_solvers_time_steps():
  # DPM-Solver's and UniPC's get_time_steps(skip_type, t_T=1, t_0=1/T, N) for
  # a discrete DDPM: N + 1 times, uniform in t or in sqrt(t).
  process, num_steps = PROCESSES["ddpm"], 5
  expected = {"uniform": np.linspace(1.0, 1 / T, num_steps + 1),
              "quadratic": np.linspace(1.0, np.sqrt(1 / T), num_steps + 1) ** 2}
  for name, times in expected.items():
    np.testing.assert_allclose(grids.make_grid(process, name, num_steps, end="t_min"), times,
                               rtol=1e-6)


@pytest.mark.parametrize("grid_name", SPACINGS)
def test_spacings_shape_ends_decreasing(grid_name):
  process = PROCESSES["ddpm"]
  for num_steps in (1, 10, 61, 333, T):
    grid = np.asarray(grids.make_grid(process, grid_name, num_steps))
    assert grid.shape == (num_steps + 1,) and grid.dtype == np.float32
    assert np.all(np.diff(grid) < 0) and grid[-1] == 0.0
    # Every network time is one of the training steps t = i / T, i in 1..T.
    steps = grid[:-1] * T
    np.testing.assert_allclose(steps, np.round(steps), atol=1e-3)
    assert 1 <= np.round(steps).min() and np.round(steps).max() <= T


def _diffusers_indices(spacing, num_train, num_steps, steps_offset=0):
  """The published diffusers formulas (DDIMScheduler.set_timesteps), plain numpy."""
  if spacing == "linspace":
    return np.linspace(0, num_train - 1, num_steps).round()[::-1].astype(np.int64)
  if spacing == "leading":
    ratio = num_train // num_steps
    return (np.arange(0, num_steps) * ratio).round()[::-1].astype(np.int64) + steps_offset
  ratio = num_train / num_steps
  return np.round(np.arange(num_train, 0, -ratio)).astype(np.int64) - 1


# Lin et al. 2024, table 2 (T = 1000, 10 steps).
PUBLISHED_10 = {
    "linspace": [999, 888, 777, 666, 555, 444, 333, 222, 111, 0],
    "leading": [900, 800, 700, 600, 500, 400, 300, 200, 100, 0],
    "trailing": [999, 899, 799, 699, 599, 499, 399, 299, 199, 99],
}


@pytest.mark.parametrize("num_steps", [10, 50])
@pytest.mark.parametrize("spacing", SPACINGS)
def test_diffusers_spacings_match_published(spacing, num_steps):
  n = _diffusers_indices(spacing, T, num_steps)
  if num_steps == 10:
    np.testing.assert_array_equal(n, PUBLISHED_10[spacing])
  expected = np.append((n + 1) / T, 0.0).astype(np.float32)  # diffusers index n is t = (n+1)/T.
  grid = np.asarray(grids.diffusers_spacing(T, num_steps, spacing))
  np.testing.assert_array_equal(grid, expected)


def test_leading_steps_offset_as_stable_diffusion():
  # steps_offset=1 (Stable Diffusion's config): indices 901, 801, ..., 1.
  grid = np.asarray(grids.diffusers_spacing(T, 10, "leading", steps_offset=1))
  expected = np.append((_diffusers_indices("leading", T, 10, 1) + 1) / T, 0.0)
  np.testing.assert_array_equal(grid, expected.astype(np.float32))
  assert np.isclose(grid[0], 902 / T) and np.isclose(grid[-2], 2 / T)


def test_trailing_drops_diffusers_spurious_last_index():
  # For T=1000, N=61 diffusers' float arange yields 62 indices, the last -1.
  assert len(_diffusers_indices("trailing", T, 61)) == 62
  grid = np.asarray(grids.diffusers_spacing(T, 61, "trailing"))
  np.testing.assert_array_equal(grid[:-1], ((_diffusers_indices("trailing", T, 61) + 1) / T)[:61]
                                .astype(np.float32))


def test_uniform_on_full_ddpm_is_every_training_step():
  process = PROCESSES["ddpm"]
  grid = np.asarray(grids.make_grid(process, "uniform", T))
  np.testing.assert_allclose(grid, np.arange(T, -1, -1) / T, atol=1e-6)
  np.testing.assert_array_equal(grid, np.asarray(grids.make_grid(process, "linspace", T)))


def test_quadratic_uniform_in_sqrt_t():
  grid = np.asarray(grids.time_quadratic(1.0, 1e-3, 20), np.float64)
  np.testing.assert_allclose(np.diff(np.sqrt(grid[:-1])), (np.sqrt(1e-3) - 1) / 19, rtol=1e-4)


@pytest.mark.parametrize("process_name", list(PROCESSES))
def test_log_snr_grid_has_equal_increments(process_name):
  process = PROCESSES[process_name]
  options = _options(process_name, "log_snr")
  grid = grids.make_grid(process, "log_snr", 25, **options)
  lam = np.asarray(process.log_snr(grid[:-1]), np.float64)
  dlam = np.diff(lam)
  # Float32 times: lam(t) has relative error ~1e-7 * |t dlam/dt|; 1e-3 of a step is ample.
  np.testing.assert_allclose(dlam, dlam.mean(), rtol=1e-3)


@pytest.mark.parametrize("process_name", ["ddpm", "vp", "edm", "flow"])
def test_karras_rho_one_is_linear_in_noise_to_signal(process_name):
  process = PROCESSES[process_name]
  grid = grids.make_grid(process, "karras", 16, rho=1.0, **_options(process_name, "karras"))
  nsr = np.asarray(process.sigma(grid[:-1]) / process.alpha(grid[:-1]), np.float64)
  np.testing.assert_allclose(np.diff(nsr), (nsr[-1] - nsr[0]) / 15, rtol=1e-3,
                             atol=1e-6 * nsr[0])


def test_karras_edm_is_eq5_in_sigma():
  process = PROCESSES["edm"]
  i = np.arange(18)
  rho, s_max, s_min = 7.0, 80.0, 0.002
  sigmas = (s_max ** (1 / rho) + i / 17 * (s_min ** (1 / rho) - s_max ** (1 / rho))) ** rho
  np.testing.assert_allclose(np.asarray(grids.karras(process, 18)), np.append(sigmas, 0.0),
                             rtol=2e-6)


def test_errors():
  ddpm, vp, flow = (PROCESSES[n] for n in ("ddpm", "vp", "flow"))
  with pytest.raises(ValueError, match="unknown grid 'nope'.*karras"):
    grids.make_grid(vp, "nope", 10)
  with pytest.raises(ValueError, match=r"grid 'uniform' takes the options \['t_max', 't_min', "
                     r"'end'\], got unknown \['rho'\]"):
    grids.make_grid(vp, "uniform", 10, rho=7)
  with pytest.raises(ValueError, match=r"'trailing' takes the options \['steps_offset'\]"):
    grids.make_grid(ddpm, "trailing", 10, t_min=0.1)
  for bad in (0, -3, 2.5):
    with pytest.raises(ValueError, match="num_steps"):
      grids.make_grid(vp, "uniform", bad)
  with pytest.raises(ValueError, match="num_steps"):
    grids.make_grid(ddpm, "karras", 0)
  for spacing in SPACINGS:
    with pytest.raises(ValueError, match=r"num_steps \(1001\).*num_train_steps \(1000\)"):
      grids.make_grid(ddpm, spacing, T + 1)
    with pytest.raises(ValueError, match="VP"):
      grids.make_grid(vp, spacing, 10)
  with pytest.raises(ValueError, match="steps_offset"):
    grids.make_grid(ddpm, "leading", 10, steps_offset=100)
  with pytest.raises(ValueError, match="spacing"):
    grids.diffusers_spacing(T, 10, "uniform")
  with pytest.raises(ValueError, match="t_max"):
    grids.make_grid(flow, "log_snr", 10)  # lam(1) = -inf for flow matching.
  with pytest.raises(ValueError, match="t_min"):
    grids.time_uniform(0.5, 0.7, 10)
  with pytest.raises(ValueError, match="rho"):
    grids.karras(vp, 10, rho=0.0)
  for name in CONTINUOUS:
    with pytest.raises(ValueError, match=r"unknown grid end 'sigma_min'; valid: \['zero', "
                       r"'t_min'\]"):
      grids.make_grid(ddpm, name, 10, end="sigma_min")
  with pytest.raises(ValueError, match=r"'trailing' takes the options \['steps_offset'\]"):
    grids.make_grid(ddpm, "trailing", 10, end="t_min")


def test_learned_finds_the_minimising_times_and_keeps_the_ends():
  # sample_fn scales x_T by t_1 + t_2^2 of the grid: the loss vanishes on the
  # curve t_1 + t_2^2 = 0.54 (e.g. t_1 = 0.5, t_2 = 0.2), which the fit must
  # reach from a uniform start, moving only the inner times.
  x_T = jax.random.normal(jax.random.PRNGKey(0), (64, 3))
  sample_fn = lambda x, grid: x * grid[1] + x * grid[2] ** 2
  x_ref = x_T * (0.5 + 0.2 ** 2)
  init = grids.time_uniform(1.0, 0.1, 4)
  grid, info = grids.learned(sample_fn, x_T, x_ref, init, key=jax.random.PRNGKey(1),
                             num_iterations=300, batch_size=16, learning_rate=0.1)
  assert grid[0] == init[0] and grid[-1] == 0.0 and np.all(np.diff(grid) < 0)
  assert info["rmse"] < 1e-3 * info["rmse_init"], info
  np.testing.assert_allclose(grid[1] + grid[2] ** 2, 0.54, atol=1e-3)


def test_learned_keeps_the_start_where_the_fit_fails_and_refuses_bad_input():
  x_T = jnp.ones((8, 2))
  init = grids.time_uniform(1.0, 0.1, 3)  # [1, 0.55, 0.1, 0]: the start is the optimum.
  grid, info = grids.learned(lambda x, grid: x * (grid[1] - 0.55), x_T, 0 * x_T, init,
                             key=jax.random.PRNGKey(0), num_iterations=5)
  np.testing.assert_array_equal(grid, init)
  assert info["rmse"] == info["rmse_init"] == 0.0
  with pytest.raises(ValueError, match="gradient of sample_fn in the grid is not finite"):
    grids.learned(lambda x, grid: x * jnp.sqrt(grid[-1] * grid[1]), x_T, x_T, init,
                  key=jax.random.PRNGKey(0))
  with pytest.raises(ValueError, match="init_grid must be a strictly decreasing"):
    grids.learned(lambda x, grid: x, x_T, x_T, init[::-1], key=jax.random.PRNGKey(0))
  with pytest.raises(ValueError, match="same shape"):
    grids.learned(lambda x, grid: x, x_T, x_T[:4], init, key=jax.random.PRNGKey(0))
  with pytest.raises(ValueError, match="start 1 must have init_grid's length 4 and ends"):
    grids.learned(lambda x, grid: x, x_T, x_T, init, key=jax.random.PRNGKey(0),
                  starts=[grids.time_uniform(0.9, 0.1, 3)])


def test_learned_keeps_the_start_that_does_best_on_the_held_out_pairs():
  # Scaling x_T by t_1: the fitted three quarters of the pairs want t_1 = 0.3, the held-out
  # quarter (the last 16) wants 0.55, the start's t_1. The fit reaches 0.3 on the pairs it
  # sees and the held-out pairs send it back to its start.
  x_T = jax.random.normal(jax.random.PRNGKey(0), (64, 2))
  x_ref = x_T * jnp.where(jnp.arange(64) < 48, 0.3, 0.55)[:, None]
  init = grids.time_uniform(1.0, 0.1, 3)  # [1, 0.55, 0.1, 0]
  grid, info = grids.learned(lambda x, grid: x * grid[1], x_T, x_ref, init,
                             key=jax.random.PRNGKey(1), num_iterations=100, batch_size=16,
                             learning_rate=0.1)
  np.testing.assert_array_equal(grid, init)
  assert (info["start"], info["num_held_out"], info["rmse"]) == ("init", 16, 0.0)
  assert info["fit_rmse"] == info["fit_rmse_init"] > 0.1
  # Of two starts in the two wells of g(t_1) = (t_1 - 0.3)^2 (t_1 - 0.8)^2 + 0.05 t_1, the
  # second one's fit reaches the deeper well, near 0.3, from which the first (near 0.8)
  # does not come out.
  g = lambda t: ((t - 0.3) * (t - 0.8)) ** 2 + 0.05 * t
  init = jnp.asarray([1.0, 0.85, 0.1, 0.0])
  grid, info = grids.learned(lambda x, grid: x * jnp.sqrt(g(grid[1])), x_T, 0 * x_T, init,
                             key=jax.random.PRNGKey(1), starts=[jnp.asarray([1, 0.35, 0.1, 0])],
                             num_perturbed=0, num_iterations=100, batch_size=16,
                             learning_rate=0.05)
  assert info["start"] == "start 1 fitted" and 0.2 < grid[1] < 0.3, (info, grid)
  assert info["rmse"] < 0.7 * info["rmse_init"]


def test_refine_splits_the_widest_intervals_and_keeps_every_time():
  # [1, 0.01] is split at 0.1; then of three equal ratios 10 the first, [1, 0.1].
  np.testing.assert_allclose(grids.refine(jnp.asarray([1.0, 0.01, 0.001, 0.0]), 5),
                             [1.0, 10 ** -0.5, 0.1, 0.01, 0.001, 0.0], rtol=1e-6)
  with pytest.raises(ValueError, match="the grid has 3 steps, more than num_steps = 2"):
    grids.refine(jnp.asarray([1.0, 0.01, 0.001, 0.0]), 2)


def test_learned_table_is_monotone_in_the_number_of_steps():
  # At N = 2 the error is sqrt((t_1 - 0.5)^2 + 1e-4) |x| (its least 0.01 |x|, at t_1 = 0.5);
  # at N = 3 it is sqrt(g(t_2)) |x| with g(t) = (t - 0.5)^2 ((t - 0.15)^2 + 1e-3), whose
  # global minimum 0 at t_2 = 0.5 lies beyond a local one, g(0.153) = 1.2e-4, that a fit from
  # t_2 = 0.1 falls into: worse than N = 2. The table refits N = 3 from the N = 2 grid
  # refined, [1, sqrt(t_1), t_1, 0], whose t_2 = t_1 = 0.5 is the global minimum.
  def sample_fn(x, grid):
    if len(grid) == 3:
      return x * jnp.sqrt((grid[1] - 0.5) ** 2 + 1e-4)
    return x * jnp.sqrt((grid[2] - 0.5) ** 2 * ((grid[2] - 0.15) ** 2 + 1e-3))

  x_T = jax.random.normal(jax.random.PRNGKey(0), (64, 2))
  inits = [grids.time_uniform(1.0, 0.1, 2), grids.time_uniform(1.0, 0.1, 3)]
  options = dict(num_perturbed=0, num_iterations=200, batch_size=16, learning_rate=0.05)
  key = jax.random.PRNGKey(1)
  alone = [grids.learned(sample_fn, x_T, 0 * x_T, init, key=key, **options)[1]["rmse"]
           for init in inits]
  assert alone[1] > alone[0]  # Fitted one by one: not monotone.
  (_, short), (grid, long) = grids.learned_table(sample_fn, x_T, 0 * x_T, inits, key=key,
                                                 **options)
  assert short["rmse"] == pytest.approx(alone[0], rel=0.01) and short["monotone"]
  assert long["start"] == "refined from N=2 fitted" and long["monotone"], long
  assert long["rmse"] < 0.1 * short["rmse"]
  np.testing.assert_allclose(grid[2], 0.5, atol=1e-2)
  with pytest.raises(ValueError, match="strictly increasing lengths"):
    grids.learned_table(sample_fn, x_T, x_T, inits[::-1], key=key)
