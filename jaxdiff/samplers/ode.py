"""Solvers of the probability-flow ODE: fixed-step Runge-Kutta and adaptive.

The probability-flow ODE of x_t = alpha(t) x_0 + sigma(t) eps (Song et al. 2021,
"Score-Based Generative Modeling through SDEs", eq. 13),
  dx/dt = f(t) x - g(t)^2 score / 2,
is, written with the denoiser's (x0_hat, eps_hat), the velocity
  dx/dt = v(x, t) = alpha'(t) x0_hat(x, t) + sigma'(t) eps_hat(x, t)
(`parameterization`, "velocity"), finite wherever the denoiser is.

Fixed step, on the given grid (Butcher tableaus: Hairer, Norsett & Wanner,
"Solving Ordinary Differential Equations I", sec. II.1):
  * euler  1 stage, first order;
  * heun   2 stages, the explicit trapezoid (Karras et al. 2022, "Elucidating
           the Design Space of Diffusion-Based Generative Models", Alg. 1 in t);
  * rk4    the classic 4-stage method, midpoints at (t + s) / 2.
A step whose end s has sigma(s) = 0 -- the usual last step to t = 0, where
sigma'(s) is infinite for the VP family -- is instead the exact first-order
jump x_s = alpha_s x0_hat(x_t) (the last step of DDIM, Song et al. 2021
"DDIM" eq. 12, and of Karras et al. Alg. 1), one network call.

Adaptive: diffrax's Tsit5, Dopri5 or Dopri8 with a PID step-size controller,
in the scaled variables of Karras et al. 2022, eq. 4 with s(t) = alpha(t):
  x~ = x / alpha,  sigma~ = sigma / alpha = exp(-lam / 2),
  dx~/dsigma~ = eps_hat(alpha x~, t(sigma~)),  t(sigma~) = t_from_log_snr(-2 log sigma~),
smooth down to sigma~ = 0 (Lu et al. 2022, "DPM-Solver", sec. 3.1, in these
variables DDIM is the Euler method), so it is integrated to t = 0 itself.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxdiff import parameterization
from jaxdiff.samplers import loop
from jaxdiff.schedules import Process


# --------------------------------------------------------------------------
# Fixed-step explicit Runge-Kutta methods in t.
# --------------------------------------------------------------------------


class Tableau(NamedTuple):
  """An explicit Butcher tableau: nodes c [S], weights b [S] and the rows 2..S of
  the strict lower triangle a (row i holds i - 1 entries)."""

  c: tuple
  a: tuple
  b: tuple


TABLEAUS = {
    "euler": Tableau(c=(0.0,), a=(), b=(1.0,)),
    "heun": Tableau(c=(0.0, 1.0), a=((1.0,),), b=(0.5, 0.5)),
    "rk4": Tableau(c=(0.0, 0.5, 0.5, 1.0), a=((0.5,), (0.0, 0.5), (0.0, 0.0, 1.0)),
                   b=(1 / 6, 1 / 3, 1 / 3, 1 / 6)),
}


def _runge_kutta(tableau: Tableau, denoise_fn, process: Process, x_T, grid, *, prediction,
                 cond, clip_x0):
  """Runs the explicit RK method of `tableau` on dx/dt = v over the grid's steps."""
  grid = loop.check_inputs(x_T, grid, process)
  denoise = loop.denoiser(denoise_fn, process, prediction, clip_x0)

  def velocity(x, t):  # v = alpha' x0_hat + sigma' eps_hat: [B, ...], one network call.
    x0, eps = denoise(x, t, cond)
    return parameterization.from_x0_eps(process, "velocity", x0, eps, t), x0

  def step(carry, inputs):
    x_t, nfe = carry
    t, s = inputs  # scalars, s < t
    h = s - t
    k_1, x0 = velocity(x_t, t)  # Stage 1, shared by both branches.

    def jump():  # To sigma(s) = 0: x_s = alpha_s x0_hat, the stage-1 call only.
      return (process.alpha(s) * x0).astype(x_t.dtype), jnp.int32(1)

    def stages():  # k_i = v(x_t + h sum_j a_ij k_j, t + c_i h), i = 2..S.
      k = [k_1]
      for c_i, a_i in zip(tableau.c[1:], tableau.a):
        x_i = x_t + h * sum(a_ij * k_j for a_ij, k_j in zip(a_i, k) if a_ij)
        k.append(velocity(x_i, t + c_i * h)[0])
      x_s = x_t + h * sum(b_i * k_i for b_i, k_i in zip(tableau.b, k))
      return x_s.astype(x_t.dtype), jnp.int32(len(k))

    x_s, calls = jax.lax.cond(process.sigma(s) == 0, jump, stages)
    return (x_s, nfe + calls), loop.all_finite(x_s)

  (x, nfe), finite = jax.lax.scan(step, (x_T, jnp.int32(0)), (grid[:-1], grid[1:]))
  return x, {"nfe": nfe, "nonfinite_step": loop.first_nonfinite_step(finite)}


def _fixed_step_sampler(name: str, title: str, nfe: str):
  """The public sampler running TABLEAUS[name]; only its docstring differs between methods."""

  def sampler(denoise_fn, process: Process, x_T, key, grid, *, prediction: str = "eps",
              cond=None, clip_x0: bool = False):
    del key
    return _runge_kutta(TABLEAUS[name], denoise_fn, process, x_T, grid, prediction=prediction,
                        cond=cond, clip_x0=clip_x0)

  sampler.__name__ = sampler.__qualname__ = name
  sampler.__doc__ = f"""{title}

  Args:
    denoise_fn: (x [B, ...], t [B], cond) -> network output of type `prediction`.
    process: the forward process.
    x_T: [B, ...] sample at grid[0].
    key: unused (the ODE is deterministic); kept for the common sampler signature.
    grid: [N + 1] strictly decreasing times (see `jaxdiff.grids`); the network
      is evaluated at grid[:N] and, for the intermediate stages, between them.
    prediction: one of parameterization.PREDICTIONS. Flow matching from
      t = 1 (alpha = 0) needs "x0", "v" or "velocity".
    cond: passed to denoise_fn unchanged.
    clip_x0: clip the predicted x0 to [-1, 1] at every evaluation.

  Returns:
    x_0 [B, ...] at grid[-1], and info {{"nfe": int32, "nonfinite_step": int32}}:
    {nfe} network calls, where a step to sigma = 0 costs one.
  """
  return sampler


euler = _fixed_step_sampler(
    "euler", "Euler's method on the PF-ODE in t, from grid[0] to grid[-1].", nfe="N")
heun = _fixed_step_sampler(
    "heun", "Heun's method (explicit trapezoid) on the PF-ODE in t, from grid[0] to grid[-1].",
    nfe="2N - 1 when grid[-1] has sigma = 0, else 2N")
rk4 = _fixed_step_sampler(
    "rk4", "The classic 4-stage Runge-Kutta method on the PF-ODE in t, grid[0] to grid[-1].",
    nfe="4N - 3 when grid[-1] has sigma = 0, else 4N")


def _num_steps_ending_at_zero(name: str, nfe: int) -> int:
  """Grid length N with S N - (S - 1) = nfe for an S-stage method whose last step jumps to 0."""
  loop.one_call_per_step(nfe)  # Checks nfe is a positive integer.
  stages = len(TABLEAUS[name].c)
  if (nfe - 1) % stages:
    below = nfe - (nfe - 1) % stages
    raise ValueError(
        f"{name} on a grid ending at t = 0 spends {stages} N - {stages - 1} network evaluations "
        f"(N steps, the last a 1-call jump to 0), so NFE must be 1 mod {stages}: "
        f"1, {1 + stages}, {1 + 2 * stages}, ...; got {nfe}, nearest {below} "
        f"(N = {(below - 1) // stages + 1}) and {below + stages} "
        f"(N = {(below - 1) // stages + 2})")
  return (nfe - 1) // stages + 1


def euler_num_steps(nfe: int) -> int:
  """N = NFE: one network call per step."""
  return loop.one_call_per_step(nfe)


def heun_num_steps(nfe: int) -> int:
  """N with 2N - 1 = NFE (odd NFE), for a grid ending at t = 0 as `grids` builds them."""
  return _num_steps_ending_at_zero("heun", nfe)


def rk4_num_steps(nfe: int) -> int:
  """N with 4N - 3 = NFE (NFE = 1 mod 4), for a grid ending at t = 0 as `grids` builds them."""
  return _num_steps_ending_at_zero("rk4", nfe)


# --------------------------------------------------------------------------
# Adaptive step size, on device with diffrax, in (sigma~, x~).
# --------------------------------------------------------------------------

SOLVERS = {"tsit5": "Tsit5", "dopri5": "Dopri5", "dopri8": "Dopri8"}  # diffrax's classes.


def _finite_rms_norm(scaled_error):
  """RMS over the finite entries of the controller's scaled error.

  diffrax's default RMS norm over the whole batch is NaN as soon as one row is:
  every step is then rejected and the step size collapses for all rows. Here a
  row that became NaN/inf keeps its NaN (and is flagged by nonfinite_step) but
  no longer decides the step size of the others.
  """
  finite = jnp.isfinite(scaled_error)
  total = jnp.sum(jnp.where(finite, jnp.square(scaled_error), 0.0))
  return jnp.sqrt(total / jnp.maximum(jnp.sum(finite), 1))


def adaptive(denoise_fn, process: Process, x_T, key, grid, *, prediction: str = "eps",
             cond=None, clip_x0: bool = False, solver: str = "tsit5", rtol: float = 1e-5,
             atol: float = 1e-5, max_steps: int = 4096):
  """The PF-ODE from grid[0] to grid[-1] with an adaptive embedded Runge-Kutta pair.

  Integrates dx~/dsigma~ = eps_hat(alpha x~, t(sigma~)) (Karras et al. 2022,
  eq. 4) with diffrax and a PID controller on x~ = x / alpha. Only grid[0] and
  grid[-1] are used: the solver picks its own steps in between. grid[0] needs
  alpha > 0 (flow matching: start below t = 1). grid[-1] may be t = 0: sigma~ = 0
  there for every process with sigma(0) = 0, and the solver's last stage
  evaluates the network at t = 0 itself, so the prediction must give a finite
  eps there (eps, v and score do; x0 -- eps = (x - alpha x0) / sigma -- does
  not, nor does the VP family's velocity; end such runs at t_min > 0).

  The first stage f(sigma~_0, x~_0) is evaluated here and handed to these
  first-same-as-last solvers as their state, so that every step, accepted or
  rejected (even before the first accepted one), costs S - 1 calls, and
  NFE = 1 + (S - 1) (accepted + rejected steps) exactly (S = 7 for Tsit5 and
  Dopri5, 14 for Dopri8). The first trial step is 1% of the sigma~ interval.

  Args:
    denoise_fn, process, x_T, key (unused), prediction, cond, clip_x0: as for `euler`.
    grid: [N + 1] decreasing times; only grid[0] and grid[-1] are read.
    solver: "tsit5", "dopri5" or "dopri8".
    rtol, atol: the controller's tolerances on x~ (RMS norm over the batch's
      finite entries: a row that turned NaN/inf stays NaN in x_0 without
      steering the others' steps).
    max_steps: the most steps (accepted and rejected) before giving up.

  Returns:
    x_0 [B, ...] at grid[-1], and info {"nfe", "nonfinite_step" (0 if the
    result is NaN/inf or the solver failed, e.g. at max_steps; else -1),
    "num_steps" (accepted), "num_rejected"}, all int32.
  """
  del key
  if solver not in SOLVERS:
    raise ValueError(f"unknown diffrax solver {solver!r}; valid: {sorted(SOLVERS)}")
  grid = loop.check_inputs(x_T, grid, process)
  denoise = loop.denoiser(denoise_fn, process, prediction, clip_x0)
  import diffrax  # pylint: disable=import-outside-toplevel  # Here: 0.5 s at every start-up.
  ode_solver = getattr(diffrax, SOLVERS[solver])()

  def eps_hat(sigma_tilde, x_tilde, args):  # dx~/dsigma~: [B, ...]
    del args
    t = process.t_from_noise_to_signal(sigma_tilde)  # sigma~ = 0 -> t = 0.
    return denoise(process.alpha(t) * x_tilde, t, cond)[1]

  # sigma~ at both ends, x~ at the start.
  sigma_0, sigma_1 = process.noise_to_signal(grid[jnp.array([0, -1])])
  x_tilde_0 = x_T / process.alpha(grid[0])

  # First-same-as-last state (first_step = False, f_0) with f_0 evaluated here;
  # the layout is checked against the solver's own initial state.
  term = diffrax.ODETerm(eps_hat)
  tableau = ode_solver.tableau
  solver_state = (jnp.array(False), eps_hat(sigma_0, x_tilde_0, None))
  expected = jax.eval_shape(lambda: ode_solver.init(term, sigma_0, sigma_1, x_tilde_0, None))
  if not tableau.fsal or jax.tree.structure(expected) != jax.tree.structure(solver_state):
    raise NotImplementedError(f"{solver}: expected a first-same-as-last Runge-Kutta solver "
                              f"with state (first_step, f_0), got {expected}")

  solution = diffrax.diffeqsolve(
      term, ode_solver, t0=sigma_0, t1=sigma_1, dt0=0.01 * (sigma_1 - sigma_0), y0=x_tilde_0,
      stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol, norm=_finite_rms_norm),
      max_steps=max_steps, solver_state=solver_state, throw=False)
  x = (process.alpha(grid[-1]) * solution.ys[-1]).astype(x_T.dtype)

  num_steps = solution.stats["num_steps"]  # Accepted plus rejected.
  nfe = 1 + (tableau.num_stages - 1) * num_steps  # f_0, then stages 2..S per step.
  ok = (solution.result == diffrax.RESULTS.successful) & loop.all_finite(x)
  info = {"nfe": jnp.int32(nfe),
          "nonfinite_step": loop.first_nonfinite_step(ok[None]),
          "num_steps": jnp.int32(solution.stats["num_accepted_steps"]),
          "num_rejected": jnp.int32(solution.stats["num_rejected_steps"])}
  return x, info


def adaptive_num_steps(nfe: int) -> int:
  """Always raises: the adaptive solver's NFE follows from rtol/atol, not from a grid."""
  raise ValueError(f"adaptive picks its own steps from rtol and atol and meets no set NFE "
                   f"(asked for {nfe!r}); it reads only grid[0] and grid[-1], so pass any grid "
                   f"(e.g. N = 1) and read the NFE it spent from info['nfe']")
