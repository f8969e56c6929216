"""The scan shared by the first-order samplers (DDPM, DDIM).

Each step goes from t to s < t, a consecutive pair of the grid: one network
call at t gives the pair (x0, eps) through `parameterization`, then the
sampler's update maps (x_t, x0, eps, z) to x_s, with z ~ N(0, I) drawn from
fold_in(key, i) at step i and set to zero at the last step (Ho et al. 2020,
Alg. 2, line 3). Samplers that share this loop therefore draw the same noise
for the same key and grid.
"""

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff import parameterization
from jaxdiff.schedules import Process


def concrete(value):
  """value as a NumPy array, or None when it is traced (inside jit) and cannot be read."""
  try:
    return np.asarray(value)
  except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
    return None


def check_grid(grid, process: Process, num_steps=None):
  """The grid as float32 [N + 1], checked where its values are known.

  Always: 1-D with at least two times (and N = num_steps when given). When the
  grid is concrete (not traced inside jit): finite, strictly decreasing and
  inside the process's time domain. Under jit only the shape can be checked;
  call this once on the concrete grid before jitting a sampler (the entry
  points and the benchmark do) -- it costs nothing per step.

  Raises:
    ValueError naming what is wrong and what a grid must be.
  """
  grid = jnp.asarray(grid, jnp.float32)
  if grid.ndim != 1 or grid.shape[0] < 2:
    raise ValueError(f"grid must be 1-D with at least 2 times [N + 1], got shape {grid.shape}")
  if num_steps is not None and grid.shape[0] != num_steps + 1:
    raise ValueError(f"grid must hold N + 1 = {num_steps + 1} times for N = {num_steps} steps, "
                     f"got {grid.shape[0]}")
  times = concrete(grid)
  if times is None:
    return grid
  if not np.all(np.isfinite(times)):
    raise ValueError(f"grid holds NaN or inf: {times}")
  if not np.all(np.diff(times) < 0):
    i = int(np.argmax(np.diff(times) >= 0))
    raise ValueError(f"grid must strictly decrease from where sampling starts to where it ends "
                     f"(e.g. [t_max, ..., 0], see jaxdiff.grids), but grid[{i}] = {times[i]:.6g} "
                     f"<= grid[{i + 1}] = {times[i + 1]:.6g}")
  process.check_time(times, "grid")
  return grid


def check_x_T(x_T):
  """Raises ValueError when a concrete x_T [B, ...] holds NaN or inf (traced: unchecked).

  A single non-finite row would otherwise give NaN rows in the samples (and, in
  an adaptive solver, steer the step size of the whole batch).
  """
  values = concrete(x_T)
  if values is not None and not np.all(np.isfinite(values)):
    rows = np.flatnonzero(~np.isfinite(values.reshape(values.shape[0], -1)).all(axis=1))
    raise ValueError(f"x_T holds NaN or inf in {rows.size} of its {values.shape[0]} rows "
                     f"(first: {rows[:5].tolist()}); the starting noise must be finite")


def check_inputs(x_T, grid, process: Process):
  """check_x_T(x_T) and check_grid(grid, process): every sampler's input check."""
  check_x_T(x_T)
  return check_grid(grid, process)


def require_key(key, sampler: str):
  """Raises a clear ValueError when a sampler that draws noise got key=None."""
  if key is None:
    raise ValueError(f"{sampler} draws noise and needs a PRNG key (jax.random.PRNGKey(seed)), "
                     "got key=None")


def denoiser(denoise_fn, process: Process, prediction: str, clip_x0: bool):
  """(x_t [B, ...], t scalar, cond) -> (x0, eps) [B, ...], one network call.

  With clip_x0, x0 is clipped to [-1, 1] and eps recomputed as
  (x_t - alpha x0) / sigma (Ho et al. 2020's and diffusers' clip_sample).
  """

  def checked_fn(x_t, t, cond):
    out = denoise_fn(x_t, t, cond)
    if out.shape != x_t.shape:
      raise ValueError(f"denoise_fn returned shape {out.shape} for x of shape {x_t.shape}")
    return out

  x0_eps = parameterization.x0_eps_fn(checked_fn, process, prediction)

  def fn(x_t, t, cond):
    t_vec = jnp.full((x_t.shape[0],), t, jnp.float32)  # [B]
    x0, eps = x0_eps(x_t, t_vec, cond)
    if clip_x0:
      x0, eps = parameterization.to_x0_eps(process, "x0", jnp.clip(x0, -1.0, 1.0), x_t, t_vec)
    return x0, eps

  return fn


def sample_loop(update, denoise_fn, process: Process, x_T, key, grid, *, prediction: str,
                cond, clip_x0: bool):
  """Runs x_s = update(x_t, x0, eps, t, s, z) over the grid's consecutive pairs.

  Args:
    update: (x_t, x0, eps, t, s, z) -> x_s, all arrays [B, ...], t and s scalars.
    denoise_fn, process, prediction, cond, clip_x0: as for `denoiser`.
    x_T: [B, ...] start at grid[0].
    key: PRNG key; step i draws its noise from fold_in(key, i). None: no noise
      (z = 0), for updates that ignore it.
    grid: [N + 1] strictly decreasing times (`check_grid`).

  Returns:
    x at grid[N] [B, ...] and info {"nfe": int32 number of network calls}.
  """
  grid = check_inputs(x_T, grid, process)
  denoise = denoiser(denoise_fn, process, prediction, clip_x0)
  num_steps = grid.shape[0] - 1

  def step(carry, inputs):
    x_t, nfe = carry
    i, t, s = inputs
    x0, eps = denoise(x_t, t, cond)
    nfe = nfe + 1
    if key is None:
      z = jnp.zeros_like(x_t)
    else:
      z = jax.random.normal(jax.random.fold_in(key, i), x_t.shape, x_t.dtype)
      z = jnp.where(i < num_steps - 1, z, jnp.zeros_like(z))  # No noise on the last step.
    x_s = update(x_t, x0, eps, t, s, z).astype(x_t.dtype)
    return (x_s, nfe), all_finite(x_s)

  steps = (jnp.arange(num_steps), grid[:-1], grid[1:])  # i, t, s: [N] each
  (x, nfe), finite = jax.lax.scan(step, (x_T, jnp.int32(0)), steps)
  return x, {"nfe": nfe, "nonfinite_step": first_nonfinite_step(finite)}


def one_call_per_step(nfe: int) -> int:
  """Grid length N for samplers that call the network once per step: N = NFE."""
  if not isinstance(nfe, (int, np.integer)) or nfe < 1:
    raise ValueError(f"nfe must be a positive integer, got {nfe!r}")
  return int(nfe)


def all_finite(x):
  """Scalar bool: no NaN or inf in x. Emit it from a sampler's scan, one per step."""
  return jnp.all(jnp.isfinite(x))


def first_nonfinite_step(finite):
  """Index of the first False in the per-step flags [N], or -1: int32."""
  return jnp.where(jnp.all(finite), -1, jnp.argmin(finite)).astype(jnp.int32)


def raise_if_nonfinite(info, grid):
  """Host-side check of a sampler's info: names the step and time where NaN/inf appeared."""
  step = int(info["nonfinite_step"])
  if step >= 0:
    grid = np.asarray(grid)
    raise FloatingPointError(
        f"sampling produced NaN or inf at step {step} (from t = {grid[step]:.6g} to "
        f"t = {grid[step + 1]:.6g}); check the network, the grid and the prediction type")
