"""Consistency models: the consistency function and the losses that train it.

A consistency function f(x_t, t) maps every point of a probability-flow ODE
trajectory to the trajectory's point at the boundary time eps, so that one
network call turns noise into a sample (Song, Dhariwal, Chen & Sutskever 2023,
"Consistency Models"; Song & Dhariwal 2023, "Improved Techniques for Training
Consistency Models", "iCT"). Everything here is written, as EDM's
preconditioning (`parameterization.edm_preconditioned`), in the scaled
variable x~ = x / alpha(t) and its noise level s = sigma(t) / alpha(t)
(`Process.noise_to_signal`), so that any process x_t = alpha x_0 + sigma eps
serves; for the EDM process (alpha = 1, s = sigma = t) every formula is the
papers' own. The boundary is the process's t_min (eps = 0.002 for EDM).

  * `preconditioned`: the boundary-condition parameterization (CM, eq. 5 and
    app. C) f = c_skip(s) x~ + c_out(s) F(c_in(s) x~, c_noise(t)), with
    c_skip = sd^2 / ((s - s_min)^2 + sd^2), c_out = sd (s - s_min) /
    sqrt(sd^2 + s^2): f(x, t_min) = x exactly. c_in and c_noise are EDM's, so
    that a student initialised from an EDM teacher starts from its denoiser
    (the two parameterizations agree away from s_min).
  * `level`: the discretization s_1 = s_min < ... < s_N = s_max of Karras et
    al. 2022, eq. 5 (rho = 7), N possibly traced (iCT's curriculum changes it
    during training).
  * `ict_num_scales`: iCT's exponential curriculum, N(k) = min(s0 2^floor(k /
    K'), s1) + 1 with K' = floor(K / (log2 floor(s1 / s0) + 1)) (iCT, eq. 9).
  * `lognormal_logits`: iCT's discrete log-normal distribution of the interval
    index, p(i) proportional to erf((ln s_{i+1} - P_mean) / (sqrt 2 P_std)) -
    erf((ln s_i - P_mean) / (sqrt 2 P_std)) (iCT, eq. 10).
  * `pseudo_huber`: d(x, y) = sqrt(||x - y||^2 + c^2) - c, c = 0.00054 sqrt(d)
    (iCT, sec. 3.3), and `squared_l2`, the original paper's metric.
  * `teacher_step`: one Euler or Heun step of the teacher's PF-ODE
    dx~/ds = (x~ - D(x, t)) / s between adjacent levels, per example
    (consistency distillation, CM alg. 2; Karras et al. 2022, alg. 1).
  * `consistency_distance`: d(f(x~_s, s), stopgrad f^-(x~_r, r)) between two
    points of one trajectory at levels r < s, x~_s = x_0 + s z.
  * `consistency_loss`: lambda d(f(x~_{i+1}, s_{i+1}), stopgrad f^-(x~_i, s_i)).
    Training (iCT, sec. 3.1-3.4): x~_{i+1} = x_0 + s_{i+1} z and x~_i = x_0 +
    s_i z with the same z, lambda = 1 / (s_{i+1} - s_i), f^- the student
    itself. Distillation (CM, alg. 2): x~_i is the teacher's ODE step from
    x~_{i+1}, lambda = 1, f^- the student's EMA or the student.
  * `ect_levels`: easy consistency tuning (Geng, Pokle, Luo, Lin & Kolter 2024,
    "Consistency Models Made Easy", "ECT") in continuous time: s log-normal
    (iCT's P_mean, P_std) and r = s (1 - n(s) / q^(stage + 1)), n(s) = 1 + k
    sigmoid(-b s) (their eq. 18), clipped to s_min, where f is the identity.
    At stage 0 most r are s_min and the loss is the diffusion model's own
    denoising loss; every stage divides s - r by q. Its loss (`ect_loss`) is
    EDM's weight (s^2 + sd^2) / (s sd)^2, ECT's "SNR(t) + k", times the
    distance, f^- the student itself.
"""

import math

import jax
import jax.numpy as jnp

from jaxdiff import parameterization
from jaxdiff.parameterization import per_example
from jaxdiff.schedules import Process

RHO = 7.0  # Karras et al. 2022's discretization exponent, kept by both papers.
# iCT's curriculum (s0, s1) and noise distribution (P_mean, P_std), their sec. 3.4-3.5.
ICT_SCALES = (10, 1280)
ICT_P_MEAN, ICT_P_STD = -1.1, 2.0
HUBER_C = 0.00054  # iCT's pseudo-Huber c per sqrt(dimension), for CIFAR-10's c = 0.03.
DISTANCES = ("pseudo_huber", "l2")
ECT_Q, ECT_K, ECT_B = 2.0, 8.0, 1.0  # ECT's q, k and b (their CIFAR-10 settings, eq. 18).


def boundary_range(process: Process) -> tuple[float, float]:
  """(s_min, s_max): the noise-to-signal ratios at the process's t_min and t_max."""
  with jax.ensure_compile_time_eval():
    return (float(process.noise_to_signal(jnp.float32(process.t_min))),
            float(process.noise_to_signal(jnp.float32(process.t_max))))


def skip_and_out(s, s_min: float, sigma_data: float = parameterization.EDM_SIGMA_DATA):
  """(c_skip, c_out) at noise level s: 1 and 0 at s = s_min (CM, app. C)."""
  c_skip = sigma_data**2 / ((s - s_min) ** 2 + sigma_data**2)
  c_out = sigma_data * (s - s_min) / jnp.sqrt(sigma_data**2 + s**2)
  return c_skip, c_out


def preconditioned(network_fn, process: Process,
                   sigma_data: float = parameterization.EDM_SIGMA_DATA):
  """Wraps a raw network F(x_in, c_noise [B], cond) into the consistency function.

  Returns:
    (x_t [B, ...], t [B], cond) -> f(x_t, t) [B, ...], the trajectory's point at t_min
    in the scaled variable: an "x0" prediction for the samplers (`samplers.consistency`).
  """
  s_min, _ = boundary_range(process)

  def fn(x, t, cond=None):
    s = per_example(process.noise_to_signal(t), x)
    x_tilde = x / per_example(process.alpha(t), x)
    out = network_fn(x_tilde / jnp.sqrt(s**2 + sigma_data**2),
                     parameterization.edm_c_noise(process, t), cond)
    c_skip, c_out = skip_and_out(s, s_min, sigma_data)
    return c_skip * x_tilde + c_out * out

  return fn


def level(process: Process, i, num_scales, rho: float = RHO):
  """Noise level s_i, i = 0..N - 1, of the N-point discretization from s_min to s_max
  (Karras et al. 2022, eq. 5, in increasing order); i and N may be traced."""
  s_min, s_max = boundary_range(process)
  ramp = jnp.asarray(i, jnp.float32) / (jnp.asarray(num_scales, jnp.float32) - 1.0)
  return (s_min ** (1 / rho) + ramp * (s_max ** (1 / rho) - s_min ** (1 / rho))) ** rho


def time_of(process: Process, s):
  """The time t at noise level s (the identity for EDM)."""
  return process.t_from_noise_to_signal(s)


def ict_num_scales(step, total_steps: int, scales=ICT_SCALES):
  """iCT's N(k) = min(s0 2^floor(k / K'), s1) + 1 at training step k (traced or not)."""
  s0, s1 = scales
  k_prime = math.floor(total_steps / (math.log2(math.floor(s1 / s0)) + 1))
  doublings = jnp.asarray(step, jnp.int32) // max(k_prime, 1)
  return jnp.minimum(s0 * 2 ** jnp.minimum(doublings, 30), s1) + 1


def lognormal_logits(s_levels, num_scales, p_mean: float = ICT_P_MEAN,
                     p_std: float = ICT_P_STD):
  """Log-probabilities [M - 1] of the interval index i (s_i to s_{i+1}) over the first
  N = num_scales of the levels s_levels [M]; -inf from i = N - 1 on."""
  cdf = jax.scipy.special.erf((jnp.log(s_levels) - p_mean) / (math.sqrt(2.0) * p_std))
  mass = cdf[1:] - cdf[:-1]
  valid = jnp.arange(mass.shape[0]) < num_scales - 1
  return jnp.where(valid, jnp.log(jnp.maximum(mass, 1e-30)), -jnp.inf)


def pseudo_huber(x, y, c=None):
  """sqrt(||x - y||^2 + c^2) - c per example [B]; c = HUBER_C sqrt(dimension) by default."""
  dim = math.prod(x.shape[1:])
  c = HUBER_C * math.sqrt(dim) if c is None else c
  squared = jnp.sum(jnp.square(x - y).reshape(x.shape[0], -1), axis=1)
  return jnp.sqrt(squared + c**2) - c


def squared_l2(x, y):
  """||x - y||^2 / dimension per example [B] (CM's squared l2, scaled by a constant)."""
  return jnp.mean(jnp.square(x - y).reshape(x.shape[0], -1), axis=1)


def distance(name: str, x, y):
  """The metric `name` of DISTANCES between x and y [B, ...], per example [B]."""
  if name not in DISTANCES:
    raise ValueError(f"distance must be one of {list(DISTANCES)}, got {name!r}")
  return pseudo_huber(x, y) if name == "pseudo_huber" else squared_l2(x, y)


def teacher_step(x0_fn, process: Process, x, t, t_next, solver: str = "heun", cond=None):
  """x at t_next < t [B] from x at t [B] by one step of the teacher's PF-ODE.

  In the scaled variable the ODE is dx~/ds = (x~ - D) / s, D = x0_fn(x, t, cond) the
  teacher's x0 prediction (Karras et al. 2022, eq. 4 with s(t) = alpha(t)); "euler" is one
  call, "heun" two (their alg. 1; t_next > 0 here, so the correction is always taken).
  """
  if solver not in ("euler", "heun"):
    raise ValueError(f"the teacher's solver must be 'euler' or 'heun', got {solver!r}")
  s, s_next = (per_example(process.noise_to_signal(u), x) for u in (t, t_next))
  x_tilde = x / per_example(process.alpha(t), x)
  d = (x_tilde - x0_fn(x, t, cond)) / s
  x_euler = x_tilde + (s_next - s) * d
  alpha_next = per_example(process.alpha(t_next), x)
  if solver == "euler":
    return alpha_next * x_euler
  d_next = (x_euler - x0_fn(alpha_next * x_euler, t_next, cond)) / s_next
  return alpha_next * (x_tilde + (s_next - s) * 0.5 * (d + d_next))


def consistency_distance(student_fn, target_fn, process: Process, x0, s, r, z, metric: str,
                         *, teacher_x0_fn=None, solver: str = "heun", cond=None):
  """d(f(x~_s, s), stopgrad f^-(x~_r, r)) per example [B], levels r < s [B].

  The student sees x~_s = x0 + s z (scaled). The target's input at r is, without a teacher
  (consistency training and tuning), x0 + r z with the same z; with one (distillation), the
  teacher's ODE step from s to r. The target is never differentiated (target_fn is the
  student itself for iCT and ECT, its EMA for CM's distillation).

  Args:
    student_fn, target_fn: (x_t [B, ...], t [B], cond) -> f(x_t, t) (`preconditioned`).
    process: the forward process.
    x0: data [B, ...].
    s, r: the student's and the target's noise levels [B], s_min <= r < s.
    z: the noise [B, ...] ~ N(0, I).
    metric: one of DISTANCES.
    teacher_x0_fn: (x_t, t, cond) -> the teacher's x0 prediction; None: no teacher.
    solver: the teacher's step, "euler" or "heun".
  """
  t_s, t_r = time_of(process, s), time_of(process, r)
  x_s = per_example(process.alpha(t_s), x0) * (x0 + per_example(s, x0) * z)
  if teacher_x0_fn is None:
    x_r = per_example(process.alpha(t_r), x0) * (x0 + per_example(r, x0) * z)
  else:
    x_r = teacher_step(teacher_x0_fn, process, x_s, t_s, t_r, solver, cond)
  target = jax.lax.stop_gradient(target_fn(jax.lax.stop_gradient(x_r), t_r, cond))
  return distance(metric, student_fn(x_s, t_s, cond), target)


def consistency_loss(student_fn, target_fn, process: Process, x0, i, num_scales, z, metric: str,
                     *, teacher_x0_fn=None, solver: str = "heun", cond=None):
  """Per-example consistency loss [B] between adjacent levels i and i + 1, and its weight.

  `consistency_distance` from level i + 1 to level i, weighted without a teacher
  (consistency training) by lambda = 1 / (s_{i+1} - s_i) (iCT, sec. 3.1), with one
  (distillation) by 1 (CM, alg. 2).

  Args:
    i: interval indices [B] in 0..N - 2; num_scales: N [B] or a scalar.
    the others: as `consistency_distance`'s.

  Returns:
    (loss [B], weight [B]).
  """
  s_i, s_next = level(process, i, num_scales), level(process, i + 1, num_scales)
  weight = 1.0 / (s_next - s_i) if teacher_x0_fn is None else jnp.ones_like(s_i)
  return weight * consistency_distance(student_fn, target_fn, process, x0, s_next, s_i, z,
                                       metric, teacher_x0_fn=teacher_x0_fn, solver=solver,
                                       cond=cond), weight


def ect_levels(process: Process, normal, stage, q: float = ECT_Q, k: float = ECT_K,
               b: float = ECT_B, p_mean: float = ICT_P_MEAN, p_std: float = ICT_P_STD):
  """ECT's pair of levels (s [B], r [B]) from standard normals [B] at stage (may be traced).

  s = exp(P_mean + P_std normal) clipped to [s_min, s_max]; r = s (1 - n(s) / q^(stage +
  1)), n(s) = 1 + k sigmoid(-b s), clipped below at s_min (ECT, eq. 18; their code clips
  at 0, where their f is the identity: ours is the identity at s_min).
  """
  s_min, s_max = boundary_range(process)
  s = jnp.clip(jnp.exp(p_mean + p_std * normal), s_min, s_max)
  shrink = (1.0 + k * jax.nn.sigmoid(-b * s)) / jnp.power(q, jnp.asarray(stage, jnp.float32) + 1)
  return s, jnp.maximum(s * (1.0 - shrink), s_min)


def ect_loss(student_fn, process: Process, x0, s, r, z, metric: str, cond=None,
             sigma_data: float = parameterization.EDM_SIGMA_DATA):
  """ECT's loss [B]: (s^2 + sd^2) / (s sd)^2 d(f(x~_s, s), stopgrad f(x~_r, r)), the student
  its own target (`consistency_distance`)."""
  weight = parameterization.edm_loss_weight(process, time_of(process, s), sigma_data)
  return weight * consistency_distance(student_fn, student_fn, process, x0, s, r, z, metric,
                                       cond=cond)
