"""Multistep consistency sampling (Song, Dhariwal, Chen & Sutskever 2023,
"Consistency Models", Algorithm 1), any process.

A consistency function f(x_t, t) maps every point of a probability-flow ODE
trajectory to the trajectory's point at the boundary time eps = t_min, and is
the identity there (the boundary condition of Sec. 3, f(x, eps) = x). The
paper writes it for EDM (alpha = 1, sigma = t); for x_t = alpha(t) x_0 +
sigma(t) eps it reads in the scaled variables of Karras et al. 2022 (eq. 4),
x~ = x / alpha and s = sigma / alpha (`Process.noise_to_signal`), where every
process's PF-ODE is the same dx~/ds = eps_hat: f(x_t, t) is the trajectory's
x~ at s_min = s(t_min), a data point plus noise of std s_min. It reaches the
sampler as an x0 prediction ("the denoiser predicts x0"), with boundary
condition f(x_t, t_min) = x_t / alpha(t_min).

Algorithm 1, on a grid t_0 > t_1 > ... > t_N (t_0 = T, the inner times the
paper's tau_1 > ... > tau_{N-1}, each >= t_min):
  x~ = f(x_{t_0}, t_0)                                      line 2
  for n = 1 .. N - 1:
    x~_{t_n} = x~ + sqrt(s(t_n)^2 - s_min^2) z,  z ~ N(0, I)   lines 4-5
    x~ = f(alpha(t_n) x~_{t_n}, t_n)                         line 6
The re-noising is the forward process from s_min to s(t_n): where x~ has the
boundary law, x~_{t_n} has the law of x_{t_n} / alpha(t_n). The last call's x~
is the sample, whatever the grid's last time (0 or t_min): it is never
evaluated. N steps cost N network calls; one step from t_max is one-step
generation and draws no noise (key=None is accepted there).

A consistency sampler is not a solver of the denoiser it is given: with an
ordinary diffusion model's x0 prediction it returns a blurred mean, so it
declares no order (`base.NOT_A_SOLVER`).
"""

import jax.numpy as jnp
import numpy as np

from jaxdiff.samplers import base


def init(ctx: base.Context, x_T):
  """Refuses a concrete grid with a time below t_min before its last, where f is undefined."""
  del x_T
  times = base.concrete(ctx.grid)
  t_min = np.float32(ctx.process.t_min)
  if times is not None and np.any(times[:-1] < t_min):
    i = int(np.argmax(times[:-1] < t_min))
    raise ValueError(
        f"consistency sampling evaluates the consistency function at every grid time but "
        f"the last, so those must be >= the process's t_min = {ctx.process.t_min:g} (where "
        f"f is the identity), but grid[{i}] = {times[i]:.6g}; build the grid with "
        "end='t_min' (grids.make_grid(process, name, N, end='t_min'))")
  return ()


def step(ctx: base.Context, state, x_t, inputs: base.Inputs):
  """One call x~ = f(x_t, t); then x~ itself (last step) or alpha(s) (x~ + sqrt(s(s)^2 - s_min^2) z)."""
  process, s = ctx.process, inputs.s
  x_tilde, _ = ctx.denoise(x_t, inputs.t)  # [B, ...] the trajectory's x~ at s_min
  if inputs.key is None:  # Only a one-step grid comes without a key: this is its last step.
    return state, x_tilde
  s_min = process.noise_to_signal(process.t_min)
  renoise = jnp.sqrt(jnp.maximum(process.noise_to_signal(s)**2 - s_min**2, 0.0))
  x_s = process.alpha(s) * (x_tilde + renoise * base.standard_normal(inputs.key, x_tilde))
  return state, jnp.where(inputs.last, x_tilde, x_s)


consistency = base.Sampler(
    name="consistency", init=init, step=step, options={},
    order=lambda options: base.NOT_A_SOLVER,
    stochastic=lambda options: True,
    noiseless_steps=1)
