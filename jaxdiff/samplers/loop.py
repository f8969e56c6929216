"""The scan of the samplers not yet ported to `base` (temporary, issue 24)."""

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.samplers.base import (all_finite, check_inputs, concrete, denoiser,  # noqa: F401
                                   first_nonfinite_step, raise_if_nonfinite, require_key)
from jaxdiff.schedules import Process


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
