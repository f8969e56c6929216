"""Controllable generation with an unconditional denoiser: inpainting, colorization, SDEdit.

Inpainting (Song et al. 2021, "Score-Based Generative Modeling through SDEs",
app. I.2, imputation; Lugmayr et al. 2022, "RePaint", Alg. 1): ancestral
sampling (`samplers.ddpm`'s step) in which, after every step t -> s, the known
pixels (mask = 1) are replaced by a fresh draw of the forward process from the
known image y, x_s^known = alpha(s) y + sigma(s) eps, so that the unknown pixels
are generated next to known ones at the same noise level. The replacement
alone conditions late (the unknown pixels have mostly settled before the known
ones stop being noise); RePaint's resampling repeats each step `resample`
times, going back to t by the forward transition q(x_t | x_s) =
N(alpha_{t|s} x_s, sigma_{t|s}^2 I) between repeats, which lets the two parts
agree. The grid ends at t = 0 (alpha = 1, sigma = 0), so the known pixels of
the result are y exactly. NFE = N * resample. Both are approximations: the
unconditional network gives the score of p_t(x_t) with the known part noised,
not of p_t(x_t^unknown | y). Where the coordinates are independent the result
is the exact conditional; on a two-component mixture whose posterior weight
given the known coordinates is 0.867 (tests/test_conditional.py), replacement
alone gives 0.58 and 20 resamplings 0.72.

Colorization (Song et al. 2021, app. I.3) is inpainting in an orthogonal basis
of the channels whose first vector is the gray direction (1, 1, 1) / sqrt(3):
the known part is the gray component (`colorization_basis`, `inpaint`'s basis).

SDEdit (Meng et al. 2022, "SDEdit", Alg. 1): a guide image y is noised to t0,
x_t0 = alpha(t0) y + sigma(t0) eps, and denoised by any sampler of the zoo on a
grid from t0 to 0; t0 trades faithfulness to y (small t0) for realism (t0 near
the end of the process). With the exact score and the ancestral sampler, the
result is a draw from p(x_0 | x_t0), averaged over the noise of x_t0.
"""

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff import samplers, sde
from jaxdiff.samplers import base
from jaxdiff.schedules import Process


def colorization_basis(channels: int = 3) -> np.ndarray:
  """An orthogonal [C, C] matrix whose first row is (1, ..., 1) / sqrt(C), the gray direction:
  x @ basis.T gives the gray component first, then C - 1 color components."""
  first = np.full((1, channels), 1 / np.sqrt(channels))
  # Complete to an orthonormal basis: QR of [first; identity] keeps the first direction.
  q, _ = np.linalg.qr(np.concatenate([first, np.eye(channels)]).T)
  basis = q[:, :channels].T
  return basis * np.sign(basis[0, 0])  # The first row positive, as constructed.


def _check(y, mask):
  if mask.shape != y.shape and mask.shape != y.shape[1:]:
    raise ValueError(f"mask must have the shape of y {y.shape} or of one example "
                     f"{y.shape[1:]}, got {mask.shape}")
  values = base.concrete(mask)
  if values is not None and not np.all((values == 0) | (values == 1)):
    raise ValueError("mask must hold 0 (unknown, generated) or 1 (known, kept) only")


def inpaint(denoise_fn, process: Process, y, mask, key, grid, *, prediction: str = "eps",
            cond=None, resample: int = 1, basis=None):
  """Samples the unknown part of y given its known part (mask = 1), RePaint-style.

  Args:
    denoise_fn: (x [B, ...], t [B], cond) -> network output of type `prediction`.
    process: the forward process.
    y: [B, ...] the known image (its unknown entries are ignored).
    mask: [B, ...] or [...]: 1 where y is known, 0 where it is generated.
    key: PRNG key.
    grid: [N + 1] strictly decreasing times ending at 0 (`jaxdiff.grids`).
    resample: RePaint's repeats of each step (1: replacement only).
    basis: optional orthogonal [C, C] matrix; the mask then applies to the coordinates
      x @ basis.T along the last (channel) axis (`colorization_basis`).

  Returns:
    x_0 [B, ...] (equal to y where mask = 1, in the basis's coordinates), and info
    {"nfe": int32}.
  """
  y = jnp.asarray(y, jnp.float32)
  mask = jnp.asarray(mask, jnp.float32)
  _check(y, mask)
  if resample < 1:
    raise ValueError(f"resample must be a positive integer, got {resample}")
  grid = base.check_inputs(y, grid, process)
  times = base.concrete(grid)
  if times is not None and times[-1] != 0:
    raise ValueError(f"inpaint's grid must end at t = 0 (where the known pixels are y), got "
                     f"{times[-1]}")
  to_basis = (lambda x: x) if basis is None else (lambda x: x @ jnp.asarray(basis).T)
  from_basis = (lambda x: x) if basis is None else (lambda x: x @ jnp.asarray(basis))
  y_coords = to_basis(y)
  denoise = base.denoiser(denoise_fn, process, prediction, clip_x0=False)
  key_T, key = jax.random.split(key)
  num_steps = grid.shape[0] - 1

  def step(carry, inputs):
    x_t, nfe = carry
    i, t, s = inputs
    keys = jax.random.split(jax.random.fold_in(key, i), 3 * resample).reshape(resample, 3, -1)

    def repeat(j, x_t):
      x0, _ = denoise(x_t, t, cond)
      mean, var = sde.posterior(process, x_t, x0, t, s)
      noise = jnp.where(i < num_steps - 1, jax.random.normal(keys[j, 0], y.shape), 0.0)
      x_unknown = to_basis(mean + jnp.sqrt(var) * noise)
      x_known = sde.q_sample(process, y_coords, s, jax.random.normal(keys[j, 1], y.shape))
      x_s = from_basis(mask * x_known + (1 - mask) * x_unknown)
      # Back to t for the next repeat: x_t ~ q(x_t | x_s).
      alpha_ts, var_ts = sde.transition(process, t, s)
      renoised = alpha_ts * x_s + jnp.sqrt(var_ts) * jax.random.normal(keys[j, 2], y.shape)
      return jnp.where(j < resample - 1, renoised, x_s)

    x_s = jax.lax.fori_loop(0, resample, repeat, x_t)
    return (x_s, nfe + resample), base.all_finite(x_s)

  x_T = process.sigma(grid[0]) * jax.random.normal(key_T, y.shape)
  steps = (jnp.arange(num_steps), grid[:-1], grid[1:])
  (x, nfe), finite = jax.lax.scan(step, (x_T, jnp.int32(0)), steps)
  return x, {"nfe": nfe, "nonfinite_step": base.first_nonfinite_step(finite)}


def sdedit(denoise_fn, process: Process, y, key, grid, *, sampler: str = "ddpm",
           prediction: str = "eps", cond=None, **options):
  """Noises the guide y [B, ...] to t0 = grid[0] and denoises it with a sampler of the zoo.

  Returns:
    x_0 [B, ...] and the sampler's info.
  """
  y = jnp.asarray(y, jnp.float32)
  grid = base.check_inputs(y, grid, process)
  key_noise, key_sampler = jax.random.split(key)
  x_t0 = sde.q_sample(process, y, grid[0], jax.random.normal(key_noise, y.shape))
  return samplers.get_sampler(sampler)(denoise_fn, process, x_t0, key_sampler, grid,
                                          prediction=prediction, cond=cond, **options)
