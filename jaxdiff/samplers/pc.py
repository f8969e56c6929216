"""Reverse-SDE samplers and predictor-corrector sampling, any process.

Song et al. 2021, "Score-Based Generative Modeling through Stochastic
Differential Equations", sec. 4.2-4.3 and appendix E-G (Alg. 1-5); reference
code yang-song/score_sde `sampling.py`.

The reverse SDE (eq. 6) is dx = [f(t) x - g(t)^2 score] dt + g(t) dw_bar, with
score = grad log p_t = -eps / sigma (`parameterization`). One step goes from t
to s < t, consecutive grid times:

  euler_maruyama     x_s = x_t - (t - s) [f(t) x_t - g(t)^2 score] + g(t) sqrt(t - s) z.
  reverse_diffusion  appendix E, eq. 45-46 (arXiv v2 numbering): the reverse of
                     the discretized forward step x_t = x_s + f_i(x_s) + G_i z, here
                     the exact transition q(x_t | x_s) = N(alpha_{t|s} x_s, sigma_{t|s}^2 I)
                     (`sde.transition`), so f_i(x) = (alpha_{t|s} - 1) x, G_i = sigma_{t|s}:
                       x_s = (2 - alpha_{t|s}) x_t + sigma_{t|s}^2 score + sigma_{t|s} z.
                     On DDPM steps alpha_{t|s} = sqrt(1 - beta_i), G_i = sqrt(beta_i);
                     for VE alpha_{t|s} = 1, G_i = sqrt(sigma_t^2 - sigma_s^2): Song's
                     VP and VE discretizations.
  langevin           the corrector of Alg. 4 (VE) and 5 (VP), M steps at a fixed t:
                       eps_i = 2 alpha_i (r ||z|| / ||score||)^2,
                       x <- x + eps_i score + sqrt(2 eps_i) z,
                     with Song's alpha_i = 1 (VE) or 1 - beta_i (VP), generalized
                     here to alpha_{t|s}^2 of the step's transition t -> s (1 for VE
                     and EDM, 1 - beta_i on DDPM steps).
  pc                 Alg. 1 as score_sde runs it: at each grid time t, M Langevin
                     steps at t, then one predictor step t -> s. NFE = N (1 + M).

The Langevin norms: snr_norm="example" takes ||z|| and ||score|| per example,
as Alg. 4-5 write them, so no example's step depends on the rest of the batch;
snr_norm="batch" uses their batch means, as score_sde's code does (there also
averaged over devices). Per example the step is 2 alpha_i r^2 ||z||^2 / ||score||^2,
and ||score||^2 ~ chi^2_D / var near a mode: in D <= 4 dimensions its inverse has
infinite mean or variance, and a few examples take huge steps and are thrown far
off (measured on the 2-D ring oracle: within-mode std 0.5-2 instead of 0.08);
so "batch", which works in any dimension, is the default. For images (D in the
thousands) the two agree.

The last step adds no noise and returns the predictor's mean (score_sde's
`noise_removal` / "denoise"). Step i draws its noise from fold_in(key, i); pc
splits that key into the corrector's (one fold_in per Langevin step) and the
predictor's.

Defaults: snr r = 0.16 is score_sde's CIFAR-10 setting (default_cifar10_configs),
used by its VE configs with the reverse-diffusion predictor and the Langevin
corrector; its 256x256 configs (LSUN, FFHQ, CelebA-HQ) use 0.075, and its
released VP configs sample without a corrector (Euler-Maruyama or ancestral).
Euler-Maruyama needs finite f and g^2 on the grid: flow matching (f = -1/(1-t))
cannot start at t = 1.
"""

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff import parameterization, sde
from jaxdiff.samplers import loop
from jaxdiff.schedules import Process


def _score(process: Process, x0, eps, t):
  """grad log p_t from the network's (x0, eps) at time t: [B, ...]."""
  return parameterization.from_x0_eps(process, "score", x0, eps, t)


def _euler_maruyama_update(process: Process):
  def update(x_t, x0, eps, t, s, z):
    drift = sde.reverse_sde_drift(process, x_t, t, _score(process, x0, eps, t))  # [B, ...]
    return x_t - (t - s) * drift + jnp.sqrt(process.g2(t) * (t - s)) * z

  return update


def _reverse_diffusion_update(process: Process):
  def update(x_t, x0, eps, t, s, z):
    alpha_ts, sigma2_ts = sde.transition(process, t, s)  # scalars
    # x_s = x_t - f_i(x_t) + G_i^2 score + G_i z, f_i(x) = (alpha_{t|s} - 1) x, G_i = sigma_{t|s}.
    score = _score(process, x0, eps, t)
    return (2.0 - alpha_ts) * x_t + sigma2_ts * score + jnp.sqrt(sigma2_ts) * z

  return update


PREDICTORS = {
    "reverse_diffusion": _reverse_diffusion_update,
    "euler_maruyama": _euler_maruyama_update,
}


def _predictor_update(process: Process, predictor: str):
  if predictor not in PREDICTORS:
    raise ValueError(f"unknown predictor {predictor!r}; valid: {sorted(PREDICTORS)}")
  return PREDICTORS[predictor](process)


def euler_maruyama(denoise_fn, process: Process, x_T, key, grid, *, prediction: str = "eps",
                   cond=None, clip_x0: bool = False):
  """Euler-Maruyama on the reverse SDE (Song et al. eq. 6) from grid[0] to grid[-1].

  Args:
    denoise_fn: (x [B, ...], t [B], cond) -> network output of type `prediction`.
    process: the forward process; f and g^2 must be finite on grid[:-1].
    x_T: [B, ...] sample at grid[0].
    key: PRNG key; step i draws its noise from fold_in(key, i).
    grid: [N + 1] strictly decreasing times (see `jaxdiff.grids`).
    prediction: one of parameterization.PREDICTIONS.
    cond: passed to denoise_fn unchanged.
    clip_x0: clip the predicted x0 to [-1, 1].

  Returns:
    x_0 [B, ...] at grid[-1], and info {"nfe": int32 (= N), "nonfinite_step": int32}.
  """
  loop.require_key(key, "euler_maruyama")
  return loop.sample_loop(_euler_maruyama_update(process), denoise_fn, process, x_T, key, grid,
                          prediction=prediction, cond=cond, clip_x0=clip_x0)


def reverse_diffusion(denoise_fn, process: Process, x_T, key, grid, *, prediction: str = "eps",
                      cond=None, clip_x0: bool = False):
  """Song et al.'s reverse-diffusion predictor (appendix E, eq. 46), grid[0] to grid[-1].

  Args and returns as for `euler_maruyama`; NFE = N.
  """
  loop.require_key(key, "reverse_diffusion")
  return loop.sample_loop(_reverse_diffusion_update(process), denoise_fn, process, x_T, key,
                          grid, prediction=prediction, cond=cond, clip_x0=clip_x0)


euler_maruyama_num_steps = loop.one_call_per_step  # One network call per grid step.
reverse_diffusion_num_steps = loop.one_call_per_step


def _check_steps(name, value):
  if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 0:
    raise ValueError(f"{name} must be a non-negative integer, got {value!r}")


SNR_NORMS = ("example", "batch")


def _check_snr_norm(snr_norm):
  if snr_norm not in SNR_NORMS:
    raise ValueError(f"unknown snr_norm {snr_norm!r}; valid: {list(SNR_NORMS)}")


def _langevin_chain(denoise, process: Process, x, nfe, key, t, alpha_i, *, snr, snr_norm,
                    num_steps, cond):
  """num_steps Langevin steps at time t (Song et al. Alg. 4-5), one network call each.

  Args:
    denoise: (x, t scalar, cond) -> (x0, eps), see `loop.denoiser`.
    x: [B, ...]; nfe: int32 count of network calls so far.
    key: step j draws its noise from fold_in(key, j).
    t: scalar time; alpha_i: scalar step-size factor (Song's alpha_i).
    snr, snr_norm: r and where the norms are taken (see the module docstring).

  Returns:
    (x [B, ...], nfe) and the per-step finiteness flags [num_steps].
  """

  def step(carry, j):
    x, nfe = carry
    x0, eps = denoise(x, t, cond)
    score = _score(process, x0, eps, t)  # g in Alg. 4: [B, ...]
    z = jax.random.normal(jax.random.fold_in(key, j), x.shape, x.dtype)
    # Step size from the target signal-to-noise ratio r: [B] (or scalar for "batch").
    grad_norm = jnp.linalg.norm(score.reshape(x.shape[0], -1), axis=-1)
    noise_norm = jnp.linalg.norm(z.reshape(x.shape[0], -1), axis=-1)
    if snr_norm == "batch":  # score_sde's code: one step size for the batch.
      grad_norm, noise_norm = jnp.mean(grad_norm), jnp.mean(noise_norm)
    step_size = sde.per_example(2.0 * alpha_i * (snr * noise_norm / grad_norm) ** 2, x)
    x = (x + step_size * score + jnp.sqrt(2.0 * step_size) * z).astype(x.dtype)
    return (x, nfe + 1), loop.all_finite(x)

  return jax.lax.scan(step, (x, nfe), jnp.arange(num_steps))


def langevin(denoise_fn, process: Process, x_t, key, t, *, prediction: str = "eps", cond=None,
             clip_x0: bool = False, snr=0.16, snr_norm: str = "batch", num_steps: int = 1,
             s=None):
  """Langevin MCMC at a fixed time t with the signal-to-noise step-size rule.

  The corrector of Song et al. Alg. 4-5 on its own: it leaves p_t invariant
  up to the discretization error of the Langevin step.

  Args:
    denoise_fn: (x [B, ...], t [B], cond) -> network output of type `prediction`.
    process: the forward process.
    x_t: [B, ...] start.
    key: PRNG key; Langevin step j draws its noise from fold_in(key, j).
    t: scalar time (may be traced).
    prediction, cond, clip_x0: as for the samplers.
    snr: Song's r (may be traced).
    snr_norm: "example" (Alg. 4-5) or "batch" (score_sde's code) norms in the
      step size; see the module docstring.
    num_steps: M, the number of Langevin steps (static).
    s: the next grid time, if any: the step size is scaled by alpha_i =
      alpha_{t|s}^2 (Song's 1 - beta_i for VP, 1 for VE); 1 when None.

  Returns:
    x [B, ...] and info {"nfe": int32 (= num_steps), "nonfinite_step": first
    Langevin step that produced NaN/inf or -1}.
  """
  _check_steps("num_steps", num_steps)
  _check_snr_norm(snr_norm)
  process.check_time(t)
  denoise = loop.denoiser(denoise_fn, process, prediction, clip_x0)
  alpha_i = 1.0 if s is None else sde.transition(process, t, s)[0] ** 2
  t = jnp.asarray(t, jnp.float32)
  (x, nfe), finite = _langevin_chain(denoise, process, x_t, jnp.int32(0), key, t, alpha_i,
                                     snr=snr, snr_norm=snr_norm, num_steps=num_steps,
                                     cond=cond)
  return x, {"nfe": nfe, "nonfinite_step": loop.first_nonfinite_step(finite)}


def pc(denoise_fn, process: Process, x_T, key, grid, *, prediction: str = "eps", cond=None,
       clip_x0: bool = False, predictor: str = "reverse_diffusion", corrector_steps: int = 1,
       snr=0.16, snr_norm: str = "batch"):
  """Predictor-corrector sampling (Song et al. Alg. 1) from grid[0] to grid[-1].

  At each grid time t (step i, to s = grid[i + 1]): corrector_steps Langevin
  steps at t with alpha_i = alpha_{t|s}^2, then one predictor step t -> s whose
  network call is its own. The last predictor step adds no noise.

  Args:
    denoise_fn: (x [B, ...], t [B], cond) -> network output of type `prediction`.
    process: the forward process.
    x_T: [B, ...] sample at grid[0].
    key: PRNG key; step i uses fold_in(key, i), split into the corrector's and
      the predictor's keys.
    grid: [N + 1] strictly decreasing times (see `jaxdiff.grids`).
    prediction, cond, clip_x0: as for the other samplers.
    predictor: "reverse_diffusion" (Song et al. eq. 46) or "euler_maruyama".
    corrector_steps: M >= 0 Langevin steps per grid time (static); 0 gives the
      predictor alone.
    snr: Song's r for the Langevin step size (may be traced).
    snr_norm: "example" or "batch" norms in the Langevin step size (see the
      module docstring; use "batch" for data of a few dimensions).

  Returns:
    x_0 [B, ...] at grid[-1], and info {"nfe": int32 (= N (1 + M)), "nonfinite_step": int32}.
  """
  update = _predictor_update(process, predictor)
  _check_steps("corrector_steps", corrector_steps)
  _check_snr_norm(snr_norm)
  loop.require_key(key, "pc")
  grid = loop.check_inputs(x_T, grid, process)
  denoise = loop.denoiser(denoise_fn, process, prediction, clip_x0)
  num_steps = grid.shape[0] - 1

  def step(carry, inputs):
    x_t, nfe = carry
    i, t, s = inputs
    key_corrector, key_predictor = jax.random.split(jax.random.fold_in(key, i))
    # Corrector: M Langevin steps at t, alpha_i = alpha_{t|s}^2.
    alpha_i = sde.transition(process, t, s)[0] ** 2
    (x_t, nfe), _ = _langevin_chain(denoise, process, x_t, nfe, key_corrector, t, alpha_i,
                                    snr=snr, snr_norm=snr_norm, num_steps=corrector_steps,
                                    cond=cond)
    # Predictor: one step t -> s, noise-free on the last step.
    x0, eps = denoise(x_t, t, cond)
    nfe = nfe + 1
    z = jax.random.normal(key_predictor, x_t.shape, x_t.dtype)
    z = jnp.where(i < num_steps - 1, z, jnp.zeros_like(z))
    x_s = update(x_t, x0, eps, t, s, z).astype(x_t.dtype)
    return (x_s, nfe), loop.all_finite(x_s)

  steps = (jnp.arange(num_steps), grid[:-1], grid[1:])  # i, t, s: [N] each
  (x, nfe), finite = jax.lax.scan(step, (x_T, jnp.int32(0)), steps)
  return x, {"nfe": nfe, "nonfinite_step": loop.first_nonfinite_step(finite)}


def pc_num_steps(nfe: int, *, corrector_steps: int = 1, **sampler_options) -> int:
  """Grid length N for `pc`: NFE = N (1 + corrector_steps).

  Other sampler options (predictor, snr, ...) do not change the NFE and are ignored.
  """
  del sampler_options
  _check_steps("corrector_steps", corrector_steps)
  nfe = loop.one_call_per_step(nfe)  # Checks that nfe is a positive integer.
  per_step = 1 + int(corrector_steps)
  if nfe % per_step:
    lower, upper = per_step * (nfe // per_step), per_step * (nfe // per_step + 1)
    nearest = " or ".join(f"{n} (N = {n // per_step})" for n in (lower, upper) if n > 0)
    raise ValueError(f"pc with corrector_steps={corrector_steps} spends {per_step} network "
                     f"evaluations per grid step, so it meets only NFE = {per_step} N "
                     f"(multiples of {per_step}); nfe={nfe} is not one, nearest: {nearest}")
  return nfe // per_step
