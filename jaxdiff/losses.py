"""Training losses and the discrete-time variational bound.

Denoising loss (`diffusion_loss`). Draw t per example from the process's
training distribution, eps ~ N(0, I), x_t = alpha(t) x_0 + sigma(t) eps, and
compare the network's output, re-expressed as a `target` (eps, x0, v, score,
velocity; see `parameterization`), with the true target:
  loss = lambda(t) * reduce_{non-batch} (target_hat - target)^2.
  * Ho et al. 2020, eq. 14 (sec. 3.4): L_simple is the eps target, lambda = 1,
    reduce = mean (Ho's mean_flat) with t uniform over the T steps.
  * Song et al. 2021, "Score-Based Generative Modeling through SDEs", eq. 7:
    denoising score matching with weighting lambda(t); lambda = sigma^2 on the
    score target is their default, E ||sigma s_theta + z||^2.
  * Song, Durkan, Murray & Ermon 2021, "Maximum Likelihood Training of
    Score-Based Diffusion Models", thm. 1: lambda = g(t)^2 on the score target
    (likelihood weighting) bounds the negative log-likelihood.
  * Salimans & Ho 2022, "Progressive Distillation", sec. 4: the v target.
  * Karras et al. 2022 ("EDM"), eq. 8: the x0 target of the preconditioned
    network (`parameterization.edm_preconditioned`) with lambda = (s^2 +
    sd^2) / (s sd)^2, s = sigma / alpha ("edm"; sd = 0.5); its process
    `schedules.EDM` draws ln sigma ~ N(-1.2, 1.2^2).

Autoencoder loss (`autoencoder_loss`; Rombach et al. 2022, "Latent Diffusion",
sec. 3 and app. G, their KL-regularised first stage as in their code's
LPIPSWithDiscriminator with the perceptual and adversarial terms off): per
example, the reconstruction error summed over pixels (L1 or squared) plus
kl_weight * KL(q(z | x) || N(0, I)), q(z | x) = N(mean, diag exp(logvar));
their kl_weight is 1e-6, which keeps the latents close to the data's
information rather than to N(0, I) (the scaling factor rescales them later).

Variational bound (`vlb_terms`, Ho et al. 2020, eq. 5, with the discretized
decoder of eq. 13, sec. 3.3; bits/dim as in Nichol & Dhariwal 2021), on a grid
0 = t_0 < t_1 < ... < t_T:
  L = KL(q(x_T | x_0) || p(x_T))                                   prior
    + sum_{i=2}^T KL(q(x_{i-1} | x_i, x_0) || p(x_{i-1} | x_i))      diffusion
    - log p(x_0 | x_1)                                             decoder,
where p(x_{i-1} | x_i) has the posterior mean at the model's x0_hat and a fixed
variance: the posterior's beta-tilde ("fixedsmall") or the transition's
sigma_{t|s}^2 (beta, "fixedlarge"). As in Ho et al.'s reference code, the first
step's variance, which is 0 for beta-tilde, is replaced by the second step's
posterior variance in both cases; it is the decoder's variance.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import log_ndtr

from jaxdiff import parameterization, sde
from jaxdiff.schedules import Process

WEIGHTINGS = {
    "none": lambda process, t: jnp.ones_like(t),
    "sigma2": lambda process, t: process.sigma2(t),
    "likelihood": lambda process, t: process.g2(t),
    "edm": parameterization.edm_loss_weight,
}

REDUCTIONS = {"mean": jnp.mean, "sum": jnp.sum}

# Variance of p(x_{s} | x_t) from (process, t, s, posterior variance).
VARIANCES = {
    "beta_tilde": lambda process, t, s, posterior_var: posterior_var,
    "beta": lambda process, t, s, posterior_var: sde.transition(process, t, s)[1],
}


def _check_choice(kind, name, valid):
  if name not in valid:
    raise ValueError(f"unknown {kind} {name!r}; valid: {list(valid)}")


def _check_cond(x0, cond):
  if getattr(cond, "ndim", 0) >= 1 and cond.shape[0] != x0.shape[0]:
    raise ValueError(f"cond has batch size {cond.shape[0]} but x0 has {x0.shape[0]} "
                     f"(x0 {x0.shape}, cond {cond.shape})")


def _reduce_flat(fn, x):
  """fn over all but the batch axis: [B, ...] -> [B]."""
  return fn(x.reshape(x.shape[0], -1), axis=-1)


def training_noise(process: Process, shape, key):
  """The draws of one training batch of x0.shape = shape: t [B] ~
  process.sample_train_time and eps ~ N(0, I) of that shape."""
  key_t, key_eps = jax.random.split(key)
  return process.sample_train_time(key_t, (shape[0],)), jax.random.normal(key_eps, shape)


def diffusion_loss(denoise_fn, process: Process, x0, key, cond=None, *, prediction="eps",
                   target="eps", weighting="none", reduce="mean", noise=None):
  """Weighted denoising loss per example.

  Args:
    denoise_fn: (x_t [B, ...], t [B], cond) -> output [B, ...] of type `prediction`.
    process: the forward process; t ~ process.sample_train_time.
    x0: data [B, ...].
    key: PRNG key of the draws (`training_noise`); None when noise is given.
    cond: passed through to denoise_fn; an array must have batch size B.
    prediction: what the network outputs, one of parameterization.PREDICTIONS.
    target: the space the squared error is taken in, same choices.
    weighting: a key of WEIGHTINGS, lambda(t).
    reduce: "mean" or "sum" over the non-batch axes.
    noise: (t [B], eps [B, ...]) drawn by the caller instead (gradient accumulation
      draws them for the whole batch and splits them with it).

  Returns:
    loss [B] and metrics {"loss": mean loss, "t": t [B], "weight": lambda(t) [B]}.
  """
  _check_choice("prediction", prediction, parameterization.PREDICTIONS)
  _check_choice("target", target, parameterization.PREDICTIONS)
  _check_choice("weighting", weighting, WEIGHTINGS)
  _check_choice("reduce", reduce, REDUCTIONS)
  x0 = jnp.asarray(x0, jnp.float32)
  _check_cond(x0, cond)
  # Forward process at a random time per example.
  t, eps = training_noise(process, x0.shape, key) if noise is None else noise
  x_t = sde.q_sample(process, x0, t, eps)

  # Network output and truth, both in the target space (no round trip if equal).
  output = denoise_fn(x_t, t, cond)
  if prediction != target:
    output = parameterization.convert(process, output, x_t, t, prediction, target)
  truth = parameterization.from_x0_eps(process, target, x0, eps, t)

  weight = WEIGHTINGS[weighting](process, t)  # [B]
  loss = weight * _reduce_flat(REDUCTIONS[reduce], jnp.square(output - truth))
  return loss, {"loss": jnp.mean(loss), "t": t, "weight": weight}


RECONSTRUCTIONS = {"l1": jnp.abs, "l2": jnp.square}


def autoencoder_loss(x, reconstruction, mean, logvar, *, kind: str = "l1",
                     kl_weight: float = 1e-6):
  """The KL autoencoder's loss per example (module docstring).

  Args:
    x, reconstruction: images [B, H, W, C].
    mean, logvar: the posterior q(z | x) [B, h, w, c].
    kind: the reconstruction error, a key of RECONSTRUCTIONS.
    kl_weight: the weight of the KL term.

  Returns:
    loss [B] and metrics {"reconstruction": the error per pixel [B], "kl": the KL [B]}.
  """
  _check_choice("reconstruction", kind, RECONSTRUCTIONS)
  error = _reduce_flat(jnp.sum, RECONSTRUCTIONS[kind](reconstruction - x))  # [B]
  kl = gaussian_kl(mean, jnp.exp(logvar), 0.0, 1.0)  # [B]
  pixels = np.prod(x.shape[1:])
  return error + kl_weight * kl, {"reconstruction": error / pixels, "kl": kl}


# --------------------------------------------------------------------------
# The variational bound.
# --------------------------------------------------------------------------


def gaussian_kl(mean1, var1, mean2, var2):
  """KL(N(mean1, var1 I) || N(mean2, var2 I)) summed over non-batch axes: [B].

  The means are [B, ...]; the variances are scalars or broadcast against them.
  The variance part, (r - 1 - log r) / 2 with r = var1 / var2, is written as
  (expm1(u) - u) / 2 with u = log r, which is exact at r = 1.
  """
  log_ratio = jnp.log(var1) - jnp.log(var2)
  elementwise = 0.5 * (jnp.expm1(log_ratio) - log_ratio + jnp.square(mean1 - mean2) / var2)
  return _reduce_flat(jnp.sum, jnp.broadcast_to(elementwise, jnp.shape(mean1)))


def _log_normal_mass(center, half_width):
  """log(Phi(center + half_width) - Phi(center - half_width)), elementwise, stable."""
  # By symmetry the interval can be moved into the lower tail, where log_ndtr
  # keeps its accuracy.
  center = -jnp.abs(center)
  lower, upper = center - half_width, center + half_width
  # For a narrow interval log_ndtr(lower) - log_ndtr(upper) cancels; there the
  # midpoint rule is accurate to a relative (2 half_width)^2 / 24 (center^2 - 1).
  narrow = half_width < 5e-4
  log_ratio = jnp.where(narrow, -1.0, log_ndtr(lower) - log_ndtr(upper))
  wide_mass = log_ndtr(upper) + jnp.log(-jnp.expm1(log_ratio))
  narrow_mass = -0.5 * jnp.square(center) - 0.5 * math.log(2 * math.pi) + jnp.log(2 * half_width)
  return jnp.where(narrow, narrow_mass, wide_mass)


def discretized_gaussian_log_prob(x, mean, std, num_bins=256):
  """log P(x's bin) under N(mean, std^2), data binned on [-1, 1] (Ho et al. eq. 13).

  Bins have width 2 / (num_bins - 1) around the levels -1, ..., 1; the extreme
  bins extend to -inf and +inf.

  Args:
    x: data [B, ...] in [-1, 1]; mean: [B, ...]; std: broadcastable, > 0.

  Returns:
    log-probabilities (nats), elementwise [B, ...].
  """
  half_width = 1.0 / (num_bins - 1)
  center, half = (x - mean) / std, half_width / std  # In units of std.
  return jnp.where(x < -1.0 + half_width, log_ndtr(center + half),
                   jnp.where(x > 1.0 - half_width, log_ndtr(-(center - half)),
                             _log_normal_mass(center, jnp.broadcast_to(half, center.shape))))


def _concrete(x):
  """x as a numpy array, or None where it is traced (inside jit) and cannot be checked."""
  try:
    return np.asarray(x)
  except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
    return None


def _check_times(process, times):
  """times must be a 1-D increasing grid in (0, ...] with at least 2 points."""
  process.check_time(times, "times")
  times = _concrete(times)
  if times is not None and (times.ndim != 1 or times.size < 2 or times[0] <= 0
                            or np.any(np.diff(times) <= 0)):
    raise ValueError("times must be a 1-D strictly increasing grid t_1 < ... < t_T with "
                     f"t_1 > 0 and T >= 2; got {times!r}")


def _check_data_range(x0):
  x = _concrete(x0)
  if x is not None and x.size and (np.any(np.isnan(x)) or x.min() < -1 or x.max() > 1):
    raise ValueError(f"the discretized decoder needs x0 in [-1, 1]; got [{x.min()}, {x.max()}]")


def vlb_terms(denoise_fn, process: Process, x0, key, times, *, prediction="eps",
              variance="beta_tilde", cond=None):
  """Terms of the discrete-time variational bound (Ho et al. eq. 5), in nats.

  One lax.scan over the T steps, one network call per step, fresh noise
  x_{t_i} = q_sample(x0, t_i, eps_i) with eps_i from fold_in(key, i).

  Args:
    denoise_fn: (x_t [B, ...], t [B], cond) -> output of type `prediction`.
    process: the forward process.
    x0: data [B, ...] in [-1, 1] (256 levels for an exact discrete likelihood).
    key: PRNG key.
    times: [T] increasing, t_1 > 0 (t_0 = 0 implied), T >= 2; for a
      DiscreteDDPM with T steps, arange(1, T + 1) / T.
    prediction: the network's output type (parameterization.PREDICTIONS).
    variance: "beta_tilde" (posterior variance) or "beta" (transition variance).
    cond: passed through to denoise_fn.

  Returns:
    {"prior", "diffusion", "decoder", "total", "bpd": [B] each;
     "terms": [B, T] (decoder first, then the KL of step i = 2..T);
     "nfe": network evaluations (int)}.
  """
  _check_choice("prediction", prediction, parameterization.PREDICTIONS)
  _check_choice("variance", variance, VARIANCES)
  _check_times(process, times)
  x0 = jnp.asarray(x0, jnp.float32)
  _check_data_range(x0)
  _check_cond(x0, cond)
  x0_eps = parameterization.x0_eps_fn(denoise_fn, process, prediction)
  times = jnp.asarray(times, jnp.float32)  # [T]
  prev_times = jnp.concatenate([jnp.zeros(1), times[:-1]])  # [T]
  batch = x0.shape[0]
  # Variance at the first step: the second step's posterior variance (Ho et al.).
  first_var = sde.posterior(process, x0, x0, times[1], times[0])[1]

  def step(nfe, inputs):
    i, t, s = inputs
    eps = jax.random.normal(jax.random.fold_in(key, i), x0.shape)
    x_t = sde.q_sample(process, x0, t, eps)
    x0_hat, _ = x0_eps(x_t, jnp.full((batch,), t), cond)
    # q(x_s | x_t, x0) and p(x_s | x_t) = q(x_s | x_t, x0_hat) with a fixed variance.
    mean_q, var_q = sde.posterior(process, x_t, x0, t, s)
    mean_p, _ = sde.posterior(process, x_t, x0_hat, t, s)
    first = i == 0
    var_q = jnp.where(first, first_var, var_q)
    var_p = jnp.where(first, first_var, VARIANCES[variance](process, t, s, var_q))
    term = jax.lax.cond(
        first,
        lambda: -_reduce_flat(jnp.sum, discretized_gaussian_log_prob(x0, mean_p, jnp.sqrt(var_p))),
        lambda: gaussian_kl(mean_q, var_q, mean_p, var_p))
    return nfe + 1, term

  num_steps = times.shape[0]
  nfe, terms = jax.lax.scan(step, jnp.zeros((), jnp.int32),
                            (jnp.arange(num_steps), times, prev_times))  # terms [T, B]

  # Prior: KL(N(alpha_T x0, sigma_T^2) || N(0, prior_std^2)).
  prior_var = process.prior_std() ** 2
  t_last = times[-1]
  prior = gaussian_kl(process.alpha(t_last) * x0, process.sigma2(t_last),
                      jnp.zeros_like(x0), prior_var)
  decoder, diffusion = terms[0], jnp.sum(terms[1:], axis=0)
  total = prior + diffusion + decoder
  num_dims = math.prod(x0.shape[1:])
  return {"prior": prior, "diffusion": diffusion, "decoder": decoder, "total": total,
          "bpd": total / (num_dims * math.log(2.0)), "terms": terms.T, "nfe": nfe}

