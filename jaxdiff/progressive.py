"""Progressive distillation: a student that takes one DDIM step where its teacher takes two.

Salimans & Ho 2022, "Progressive Distillation for Fast Sampling of Diffusion
Models", alg. 2: on the student's grid of N steps, whose teacher runs the
nested grid of 2N steps (the 2N-step grid's even points are the N-step grid),
the teacher's two deterministic DDIM steps t -> t' -> t'' from x_t give x_t'',
and the student is trained to predict the x0 that makes its own single DDIM
step from t land on that x_t''. Each round halves the steps: the student of one
round is the teacher of the next.

Written, as `consistency`, in the scaled variable x~ = x / alpha(t) with noise
level s = sigma(t) / alpha(t) (`Process.noise_to_signal`), so that any process
x_t = alpha x_0 + sigma eps serves (for the paper's VP process their z / alpha).
There a DDIM step from s to s' with the prediction x0_hat is
    x~_s' = x0_hat + s' eps_hat,   eps_hat = (x~_s - x0_hat) / s,
and the target of alg. 2 (their x~, sec. 3) is
    x0~ = (x~_t'' - (s'' / s) x~_t) / (1 - s'' / s),
which is the teacher's x0 prediction at t' where s'' = 0 (a grid ending at 0:
their last step). x~_t / s is taken as x_t / sigma_t, finite where alpha_t = 0
(flow matching's t = 1).

The loss is the x0-space error weighted by the "truncated SNR"
max(alpha^2 / sigma^2, 1) = max(1 / s^2, 1) (sec. 4, their max(||x - x_hat||^2,
||eps - eps_hat||^2) for an x0 error), the student's step index n drawn
uniformly from 0..N - 1.

  * `grid_spec`, `grid`: the N-step grid of a distillation (`grids.make_grid`;
    by default the process's sampling grid, `grids.default_for`, ending at
    t_min, where karras, uniform, log_snr and quadratic grids nest; ending at 0
    they do not: the N points before 0 are not every other of the 2N).
  * `check_nested`: refuses a grid whose 2N-step version does not hold the
    N-step one at its even points.
  * `teacher_two_steps`: x_t'' from x_t by two DDIM steps of the teacher.
  * `target`: the x0 above.
  * `progressive_loss`: the weighted loss per example.
"""

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff import grids
from jaxdiff.parameterization import per_example
from jaxdiff.schedules import Process

NESTING_RTOL = 1e-5  # float32 times from two builders' arithmetic agree to ~1e-7.


def grid_spec(process: Process, name: str = "", options=None) -> tuple[str, dict]:
  """(grid name, options) of a distillation's grid for `grids.make_grid`: name with options,
  by default (name "") the process's sampling grid `grids.default_for`; the end is "t_min"
  unless options name another."""
  options = dict(options or {})
  if not name:
    name, defaults = grids.default_for(process)
    options = {**defaults, **options}
  return name, {"end": "t_min", **options}


def grid(process: Process, num_steps: int, name: str = "", options=None) -> np.ndarray:
  """The N-step grid float32 [N + 1] of a distillation (`grid_spec`); concrete inside a
  trace too (the train step's)."""
  with jax.ensure_compile_time_eval():
    name, options = grid_spec(process, name, options)
    return np.asarray(grids.make_grid(process, name, num_steps, **options), np.float32)


def check_nested(process: Process, num_steps: int, name: str = "", options=None):
  """Raises ValueError unless the 2N-step grid's even points are the N-step grid."""
  student, teacher = grid(process, num_steps, name, options), grid(process, 2 * num_steps,
                                                                   name, options)
  if not np.allclose(teacher[::2], student, rtol=NESTING_RTOL, atol=0.0):
    raise ValueError(f"loss.grid {name or 'default'!r} with options {dict(options or {})} does "
                     f"not nest: the {2 * num_steps}-step grid's even points "
                     f"{np.round(teacher[::2], 6).tolist()} are not the {num_steps}-step grid "
                     f"{np.round(student, 6).tolist()}, so the teacher's two steps would not "
                     "span the student's one; grids ending at t_min (loss.grid_options end "
                     "'t_min', the default) nest for karras, uniform, log_snr, quadratic")


def _eps(process: Process, x, t, x0_hat):
  """The DDIM direction eps_hat = (x_t - alpha_t x0_hat) / sigma_t = (x~_t - x0_hat) / s_t."""
  return (x - per_example(process.alpha(t), x) * x0_hat) / per_example(process.sigma(t), x)


def teacher_two_steps(x0_fn, process: Process, x, t, t_mid, t_next, cond=None):
  """x~ at t_next [B, ...] (scaled: x_t'' / alpha(t'')) from x_t [B, ...] at t [B] by the
  teacher's DDIM steps t -> t_mid -> t_next [B], x0_fn(x_t, t, cond) its x0 prediction."""
  x0_hat = x0_fn(x, t, cond)
  x_tilde_mid = x0_hat + per_example(process.noise_to_signal(t_mid), x) * _eps(process, x, t,
                                                                              x0_hat)
  x_mid = per_example(process.alpha(t_mid), x) * x_tilde_mid
  x0_mid = x0_fn(x_mid, t_mid, cond)
  return x0_mid + per_example(process.noise_to_signal(t_next), x) * _eps(process, x_mid, t_mid,
                                                                         x0_mid)


def target(x0_fn, process: Process, x, t, t_mid, t_next, cond=None):
  """The student's x0 target [B, ...] at x_t [B, ...], t [B]: the x0 whose one DDIM step
  from t lands on the teacher's two-step x~_t'' (alg. 2), (x~'' - (s''/s) x~_t) / (1 - s''/s)."""
  x_tilde_next = teacher_two_steps(x0_fn, process, x, t, t_mid, t_next, cond)
  s_next = per_example(process.noise_to_signal(t_next), x)
  x_tilde_over_s = x / per_example(process.sigma(t), x)  # x~_t / s_t, finite at alpha_t = 0.
  ratio = s_next * per_example(process.alpha(t) / process.sigma(t), x)  # s'' / s
  return (x_tilde_next - s_next * x_tilde_over_s) / (1.0 - ratio)


def truncated_snr(process: Process, t):
  """max(alpha^2 / sigma^2, 1) [B] at t [B] (sec. 4)."""
  return jnp.maximum(jnp.exp(process.log_snr(t)), 1.0)


def progressive_loss(student_x0_fn, teacher_x0_fn, process: Process, x0, n, eps, student_grid,
                     teacher_grid, cond=None):
  """Per-example loss [B] of the student's x0 against the two-step target, and its weight.

  Args:
    student_x0_fn, teacher_x0_fn: (x_t [B, ...], t [B], cond) -> the x0 prediction; the
      teacher is not differentiated.
    process: the forward process.
    x0: data [B, ...]; eps: the noise [B, ...] ~ N(0, I) of x_t = alpha x0 + sigma eps.
    n: the student's step indices [B] in 0..N - 1 (from student_grid[n] to [n + 1]).
    student_grid: the nested N-step grid [N + 1]; teacher_grid: the 2N-step one [2N + 1].

  Returns:
    (loss [B], weight [B]): weight * mean over the dimensions of (x0_hat - x0~)^2.
  """
  student_grid, teacher_grid = jnp.asarray(student_grid), jnp.asarray(teacher_grid)
  t, t_mid, t_next = student_grid[n], teacher_grid[2 * n + 1], student_grid[n + 1]
  x = per_example(process.alpha(t), x0) * x0 + per_example(process.sigma(t), x0) * eps
  x0_target = jax.lax.stop_gradient(target(teacher_x0_fn, process, x, t, t_mid, t_next, cond))
  weight = truncated_snr(process, t)
  error = jnp.square(student_x0_fn(x, t, cond) - x0_target).reshape(x0.shape[0], -1)
  return weight * jnp.mean(error, axis=1), weight
