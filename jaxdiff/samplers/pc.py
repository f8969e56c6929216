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

All three are `base.Sampler` entries of weak order 1 (Euler-Maruyama's weak
order; the Langevin corrector does not raise it) that draw noise. NFE = N for
the predictors alone, N (1 + M) for pc, whichever the grid's end: the
corrector's calls are counted by `ctx.repeat` as they run.

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
from jaxdiff.samplers import base
from jaxdiff.schedules import Process


def _score(process: Process, x0, eps, t):
  """grad log p_t from the network's (x0, eps) at time t: [B, ...]."""
  return parameterization.from_x0_eps(process, "score", x0, eps, t)


# --------------------------------------------------------------------------
# The predictors: x_s from x_t, the network's (x0, eps) at t and noise z.
# --------------------------------------------------------------------------


def euler_maruyama_update(process: Process, x_t, x0, eps, t, s, z):
  """x_s = x_t - (t - s) [f(t) x_t - g(t)^2 score] + g(t) sqrt(t - s) z: [B, ...]."""
  drift = sde.reverse_sde_drift(process, x_t, t, _score(process, x0, eps, t))  # [B, ...]
  return x_t - (t - s) * drift + jnp.sqrt(process.g2(t) * (t - s)) * z


def reverse_diffusion_update(process: Process, x_t, x0, eps, t, s, z):
  """x_s = (2 - alpha_{t|s}) x_t + sigma_{t|s}^2 score + sigma_{t|s} z (eq. 46): [B, ...]."""
  alpha_ts, sigma2_ts = sde.transition(process, t, s)  # scalars
  # x_s = x_t - f_i(x_t) + G_i^2 score + G_i z, f_i(x) = (alpha_{t|s} - 1) x, G_i = sigma_{t|s}.
  score = _score(process, x0, eps, t)
  return (2.0 - alpha_ts) * x_t + sigma2_ts * score + jnp.sqrt(sigma2_ts) * z


PREDICTORS = {
    "reverse_diffusion": reverse_diffusion_update,
    "euler_maruyama": euler_maruyama_update,
}


def _predictor_step(predictor: str):
  """The step of a predictor run alone: one call at t, noise from fold_in(key, i)."""

  def step(ctx: base.Context, state, x_t, inputs: base.Inputs):
    x0, eps = ctx.denoise(x_t, inputs.t)
    z = base.normal(inputs, x_t)  # Zeros on the last step.
    return state, PREDICTORS[predictor](ctx.process, x_t, x0, eps, inputs.t, inputs.s, z)

  return step


def _predictor_sampler(name: str):
  return base.Sampler(name=name, init=base.no_state, step=_predictor_step(name), options={},
                      order=lambda options: 1, stochastic=lambda options: True)


# Euler-Maruyama on the reverse SDE (eq. 6); f and g^2 must be finite on grid[:-1].
euler_maruyama = _predictor_sampler("euler_maruyama")
# Song et al.'s reverse-diffusion predictor (appendix E, eq. 46).
reverse_diffusion = _predictor_sampler("reverse_diffusion")


# --------------------------------------------------------------------------
# The Langevin corrector (Alg. 4-5).
# --------------------------------------------------------------------------

SNR_NORMS = ("example", "batch")


def langevin_update(process: Process, x, x0, eps, t, z, alpha_i, snr, snr_norm: str):
  """One Langevin step at time t: x + eps_i score + sqrt(2 eps_i) z, [B, ...].

  eps_i = 2 alpha_i (r ||z|| / ||score||)^2 with the norms per example or
  their batch means (snr_norm, see the module docstring).
  """
  score = _score(process, x0, eps, t)  # g in Alg. 4: [B, ...]
  # Step size from the target signal-to-noise ratio r: [B] (or scalar for "batch").
  grad_norm = jnp.linalg.norm(score.reshape(x.shape[0], -1), axis=-1)
  noise_norm = jnp.linalg.norm(z.reshape(x.shape[0], -1), axis=-1)
  if snr_norm == "batch":  # score_sde's code: one step size for the batch.
    grad_norm, noise_norm = jnp.mean(grad_norm), jnp.mean(noise_norm)
  step_size = sde.per_example(2.0 * alpha_i * (snr * noise_norm / grad_norm) ** 2, x)
  return (x + step_size * score + jnp.sqrt(2.0 * step_size) * z).astype(x.dtype)


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
  if not isinstance(num_steps, (int, np.integer)) or isinstance(num_steps, bool) or num_steps < 0:
    raise ValueError(f"num_steps must be a non-negative integer, got {num_steps!r}")
  if snr_norm not in SNR_NORMS:
    raise ValueError(f"unknown snr_norm {snr_norm!r}; valid: {list(SNR_NORMS)}")
  process.check_time(t)
  denoise = base.denoiser(denoise_fn, process, prediction, clip_x0)
  alpha_i = 1.0 if s is None else sde.transition(process, t, s)[0] ** 2
  t = jnp.asarray(t, jnp.float32)

  def step(carry, j):
    x, nfe = carry
    x0, eps = denoise(x, t, cond)
    z = base.standard_normal(base.fold_in(key, j), x)
    x = langevin_update(process, x, x0, eps, t, z, alpha_i, snr, snr_norm)
    return (x, nfe + 1), base.all_finite(x)

  (x, nfe), finite = jax.lax.scan(step, (x_t, jnp.int32(0)), jnp.arange(num_steps))
  return x, {"nfe": nfe, "nonfinite_step": base.first_nonfinite_step(finite)}


# --------------------------------------------------------------------------
# Predictor-corrector sampling (Alg. 1).
# --------------------------------------------------------------------------


def pc_step(ctx: base.Context, state, x_t, inputs: base.Inputs):
  """M Langevin steps at t (alpha_i = alpha_{t|s}^2), then one predictor step t -> s.

  fold_in(key, i) is split into the corrector's key (Langevin step j: its
  fold_in(., j)) and the predictor's.
  """
  process, options, t, s = ctx.process, ctx.options, inputs.t, inputs.s
  key_corrector, key_predictor = base.split(inputs.key)
  alpha_i = sde.transition(process, t, s)[0] ** 2

  def corrector(j, x):  # One Langevin step, one network call.
    x0, eps = ctx.denoise(x, t)
    z = base.standard_normal(base.fold_in(key_corrector, j), x)
    return langevin_update(process, x, x0, eps, t, z, alpha_i, options["snr"],
                           options["snr_norm"])

  x_t = ctx.repeat(options["corrector_steps"], corrector, x_t)
  x0, eps = ctx.denoise(x_t, t)
  z = base.normal(inputs._replace(key=key_predictor), x_t)  # Zeros on the last step.
  return state, PREDICTORS[options["predictor"]](process, x_t, x0, eps, t, s, z)


pc = base.Sampler(
    name="pc", init=base.no_state, step=pc_step,
    options={
        "predictor": base.Option("reverse_diffusion", (str,), "the predictor (eq. 46 or "
                                 "Euler-Maruyama)", choices=tuple(PREDICTORS)),
        "corrector_steps": base.Option(1, (int,), "M Langevin steps per grid time; 0 gives "
                                       "the predictor alone", check=lambda m: m >= 0,
                                       rule="a non-negative integer"),
        "snr": base.Option(0.16, (int, float), "Song's r in the Langevin step size",
                           check=lambda r: r >= 0, rule=">= 0", traced=True),
        "snr_norm": base.Option("batch", (str,), "per-example or batch-mean norms in the "
                                "Langevin step size", choices=SNR_NORMS),
    },
    order=lambda options: 1, stochastic=lambda options: True,
    nfe=lambda num_steps, ends_at_zero, options: num_steps * (1 + options["corrector_steps"]))
