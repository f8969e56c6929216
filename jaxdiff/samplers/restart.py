"""Restart sampling (Xu, Deng, Wang, Ziming, Tegmark & Jaakkola 2023, "Restart
Sampling for Improving Generative Processes", Alg. 1), any process.

The probability-flow ODE is solved backward with Heun's method, and once the
main grid reaches the lower end sigma_min of a restart interval [sigma_min,
sigma_max], the sampler K times jumps forward by the exact forward process and
solves the ODE back down the interval:
  restart k = 1..K:
    x~ <- x~ + sqrt(sigma_max^2 - sigma_min^2) S_noise z          (Alg. 1, the forward jump)
    x~ <- Heun from sigma_max to sigma_min on its own Karras grid   (the backward ODE)
The forward jump adds the contracted error back as fresh noise; the ODE then
contracts it again (the paper's Theorem 2), while the ODE's discretization error
stays that of Heun.

Variables. As in `edm`, Karras et al.'s scaled variables sigma~ = sigma / alpha
(`process.noise_to_signal`) and x~ = x / alpha, in which the ODE reads
dx~ / dsigma~ = eps_hat and the forward jump is x~ + sqrt(sigma~_max^2 - sigma~_min^2) z.
For alpha = 1 (EDM, VE) these are the official code's variables exactly.

The conventions of the official code (Newbeeer/diffusion_restart_sampling,
benchmarks/generate_restart.py), kept here:
  - the main steps are EDM's Heun (Karras et al. Alg. 2) without churn, the step
    into sigma = 0 Euler (one call);
  - the restart interval's lower end is the main grid point whose sigma~ is
    nearest to `restart_sigma_min` (among the grid points after the first with
    sigma > 0), entered after the main step that lands on it;
  - the backward ODE of each restart runs on `restart_steps` steps of a Karras
    grid with exponent `rho` from `restart_sigma_max` down to that grid point
    (the official N_Restart counts its points: restart_steps + 1), each a Heun
    step of two calls, with EDM's churn gamma = `restart_gamma` at the
    inner points whose sigma~ lies in [s_min, s_max] (their default 0.05 on
    [0.01, 1]), noise scaled by s_noise;
  - the defaults are the paper's CIFAR-10 configuration (Table 3, the first line
    of the official params_cifar10_vp.txt): interval [0.06, 0.30], K = 2,
    N_Restart = 3 points, S_noise = 1.003.
Noise: main step i draws nothing; its restarts use key_k = fold_in(fold_in(key,
i), k), the forward jump fold_in(key_k, 0) and inner step j's churn
fold_in(key_k, j + 1).

NFE. 2N - 1 main calls on a grid ending at sigma = 0 (2N otherwise), plus
K x 2 x restart_steps; a one-step grid into sigma = 0 has no point to restart at
and costs 1. Order: the noise is added exactly and the ODE parts are Heun, so
the law of x_0 converges with Heun's order, 2 (weak order); the sampler is
stochastic. Requirements as for `edm`: alpha(grid[0]) > 0, and the network is
called at sigma~ up to (1 + restart_gamma) restart_sigma_max, which must map
to a time of the process (`t_from_noise_to_signal`).
"""

import jax.numpy as jnp

from jaxdiff.samplers import base


def init(ctx: base.Context, x_T):
  """The restart index (int32): main step i restarts where i + 1 equals it.

  It is the index in 1..N of the grid point with sigma > 0 whose sigma~ is nearest
  to restart_sigma_min, or -1 where there is none (traced where the grid is).
  """
  del x_T
  options = ctx.options
  sigma_tilde = ctx.process.noise_to_signal(ctx.grid[1:])  # [N]
  candidate = sigma_tilde > 0  # Every point after the first but one at sigma = 0.
  distance = jnp.where(candidate, jnp.abs(sigma_tilde - options["restart_sigma_min"]), jnp.inf)
  index = jnp.where(jnp.any(candidate), jnp.argmin(distance) + 1, -1).astype(jnp.int32)
  lower = base.concrete(jnp.where(index > 0, sigma_tilde[index - 1], 0.0))
  if lower is not None and not float(lower) < options["restart_sigma_max"]:
    raise ValueError(
        f"restart: the restart interval's lower end is the grid point nearest to "
        f"restart_sigma_min={options['restart_sigma_min']!r}, here sigma/alpha = "
        f"{float(lower):.6g}, and restart_sigma_max={options['restart_sigma_max']!r} must "
        "exceed it; raise restart_sigma_max or use a grid with a point nearer to "
        "restart_sigma_min")
  return index


def _heun(ctx: base.Context, x_tilde, t_cur, sigma_cur, t_next, sigma_next, gamma, key,
          final_euler):
  """One EDM step in scaled variables from sigma~_cur (churned up by gamma when a key is
  given) to sigma~_next: Heun, or with final_euler Euler where sigma~_next = 0."""
  process = ctx.process
  if key is not None:  # Churn: raise the noise level to sigma_hat = (1 + gamma) sigma~_cur.
    z = base.standard_normal(key, x_tilde)
    x_tilde = x_tilde + sigma_cur * jnp.sqrt(gamma * (2.0 + gamma)) * ctx.options["s_noise"] * z
    sigma_cur = (1.0 + gamma) * sigma_cur
    t_cur = jnp.where(gamma > 0, process.t_from_noise_to_signal(sigma_cur), t_cur)
  h = sigma_next - sigma_cur
  d_cur = ctx.denoise(process.alpha(t_cur) * x_tilde, t_cur)[1]  # dx~/dsigma~ = eps_hat
  x_euler = x_tilde + h * d_cur

  def heun(x_euler):
    d_next = ctx.denoise(process.alpha(t_next) * x_euler, t_next)[1]
    return x_tilde + h * 0.5 * (d_cur + d_next)

  if final_euler:
    return ctx.cond(sigma_next > 0, heun, lambda x: x, x_euler)
  return heun(x_euler)


def _restarts(ctx: base.Context, x_tilde, t_min, key):
  """K forward jumps from sigma~(t_min) to restart_sigma_max, each followed by the
  backward ODE on restart_steps Karras steps."""
  process, options = ctx.process, ctx.options
  num_inner, rho, gamma = options["restart_steps"], options["rho"], options["restart_gamma"]
  sigma_min, sigma_max = process.noise_to_signal(t_min), jnp.float32(options["restart_sigma_max"])
  ramp = jnp.arange(num_inner + 1, dtype=jnp.float32) / num_inner  # [M + 1]
  root_max, root_min = sigma_max ** (1.0 / rho), sigma_min ** (1.0 / rho)
  sigmas = (root_max + ramp * (root_min - root_max)) ** rho  # [M + 1], Karras et al. eq. 5
  times = process.t_from_noise_to_signal(sigmas).at[-1].set(t_min)  # [M + 1]
  churned = (options["s_min"] <= sigmas) & (sigmas <= options["s_max"])
  gammas = jnp.where(churned, gamma, 0.0)  # [M + 1]

  def restart(k, x_tilde):
    key_k = base.fold_in(key, k)
    z = base.standard_normal(base.fold_in(key_k, 0), x_tilde)
    x_tilde = x_tilde + jnp.sqrt(sigma_max**2 - sigma_min**2) * options["s_noise"] * z

    def inner(j, x_tilde):
      return _heun(ctx, x_tilde, times[j], sigmas[j], times[j + 1], sigmas[j + 1], gammas[j],
                   base.fold_in(key_k, j + 1), final_euler=False)

    return ctx.repeat(num_inner, inner, x_tilde)

  return ctx.repeat(options["restart_k"], restart, x_tilde)


def step(ctx: base.Context, index, x_t, inputs: base.Inputs):
  """A main Heun step from t to s, then the K restarts if s is the restart point."""
  process, t, s = ctx.process, inputs.t, inputs.s
  x_tilde = x_t / process.alpha(t)
  x_tilde = _heun(ctx, x_tilde, t, process.noise_to_signal(t), s, process.noise_to_signal(s),
                  0.0, None, final_euler=True)
  if ctx.options["restart_k"] > 0:
    x_tilde = ctx.cond(inputs.i + 1 == index, lambda x: _restarts(ctx, x, s, inputs.key),
                       lambda x: x, x_tilde)
  return index, process.alpha(s) * x_tilde


def nfe(num_steps: int, ends_at_zero: bool, options: dict) -> int:
  """2N - 1 (into sigma = 0) or 2N main calls, plus K x 2 x restart_steps."""
  if ends_at_zero and num_steps == 1:
    return 1  # No grid point with sigma > 0 to restart at.
  main = 2 * num_steps - (1 if ends_at_zero else 0)
  return main + options["restart_k"] * 2 * options["restart_steps"]


def _positive(value) -> bool:
  return value > 0


restart = base.Sampler(
    name="restart", init=init, step=step,
    options={
        "restart_sigma_min": base.Option(0.06, (int, float), "sigma/alpha of the restart "
                                         "interval's lower end (the nearest grid point is used)",
                                         check=_positive, rule="> 0"),
        "restart_sigma_max": base.Option(0.30, (int, float), "sigma/alpha of its upper end",
                                         check=_positive, rule="> 0"),
        "restart_k": base.Option(2, (int,), "K, the number of restarts",
                                 check=lambda k: k >= 0, rule=">= 0"),
        "restart_steps": base.Option(2, (int,), "Heun steps of each restart's backward ODE "
                                     "(the official N_Restart - 1)", check=_positive, rule=">= 1"),
        "restart_gamma": base.Option(0.05, (int, float), "EDM churn inside the restart",
                                     check=lambda g: 0 <= g <= 2**0.5 - 1,
                                     rule="in [0, sqrt(2) - 1]"),
        "s_min": base.Option(0.01, (int, float), "churn only at sigma/alpha >= s_min"),
        "s_max": base.Option(1.0, (int, float), "churn only at sigma/alpha <= s_max"),
        "s_noise": base.Option(1.003, (int, float), "scale of the restart and churn noise",
                               check=lambda v: v >= 0, rule=">= 0"),
        "rho": base.Option(7.0, (int, float), "exponent of each restart's Karras grid",
                           check=_positive, rule="> 0"),
    },
    order=lambda options: 2,
    stochastic=lambda options: options["restart_k"] > 0,
    nfe=nfe)
