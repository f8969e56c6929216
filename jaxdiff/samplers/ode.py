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
"DDIM" eq. 12, and of Karras et al. Alg. 1), one network call. So an S-stage
method spends NFE = S N on N steps ending at sigma > 0 and S N - (S - 1) on
steps ending at sigma = 0 (Heun 2N - 1, RK4 4N - 3); the jump is a `ctx.cond`
on the traced end time, so one compiled loop serves both ends. The network is
evaluated at grid[:N] and, for the intermediate stages, between them; flow
matching from t = 1 (alpha = 0) needs an "x0", "v" or "velocity" prediction.
The key is unused (None is accepted).

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
from jaxdiff.samplers import base


# --------------------------------------------------------------------------
# Fixed-step explicit Runge-Kutta methods in t.
# --------------------------------------------------------------------------


class Tableau(NamedTuple):
  """An explicit Butcher tableau: nodes c [S], weights b [S], the rows 2..S of
  the strict lower triangle a (row i holds i - 1 entries) and the method's order."""

  c: tuple
  a: tuple
  b: tuple
  order: int


TABLEAUS = {
    "euler": Tableau(c=(0.0,), a=(), b=(1.0,), order=1),
    "heun": Tableau(c=(0.0, 1.0), a=((1.0,),), b=(0.5, 0.5), order=2),
    "rk4": Tableau(c=(0.0, 0.5, 0.5, 1.0), a=((0.5,), (0.0, 0.5), (0.0, 0.0, 1.0)),
                   b=(1 / 6, 1 / 3, 1 / 3, 1 / 6), order=4),
}


def _runge_kutta_step(tableau: Tableau):
  """One step of the explicit RK method of `tableau` on dx/dt = v from t to s."""

  def step(ctx: base.Context, state, x_t, inputs: base.Inputs):
    process, t, s = ctx.process, inputs.t, inputs.s  # scalars, s < t
    h = s - t

    def velocity(x, t):  # v = alpha' x0_hat + sigma' eps_hat: [B, ...], one network call.
      x0, eps = ctx.denoise(x, t)
      return parameterization.from_x0_eps(process, "velocity", x0, eps, t), x0

    k_1, x0 = velocity(x_t, t)  # Stage 1, shared by both branches.

    def jump():  # To sigma(s) = 0: x_s = alpha_s x0_hat, the stage-1 call only.
      return (process.alpha(s) * x0).astype(x_t.dtype)

    def stages():  # k_i = v(x_t + h sum_j a_ij k_j, t + c_i h), i = 2..S.
      k = [k_1]
      for c_i, a_i in zip(tableau.c[1:], tableau.a):
        x_i = x_t + h * sum(a_ij * k_j for a_ij, k_j in zip(a_i, k) if a_ij)
        k.append(velocity(x_i, t + c_i * h)[0])
      x_s = x_t + h * sum(b_i * k_i for b_i, k_i in zip(tableau.b, k))
      return x_s.astype(x_t.dtype)

    # Traced: under jit one compiled loop serves grids ending at sigma = 0 or not.
    return state, ctx.cond(process.sigma(s) == 0, jump, stages)

  return step


def _runge_kutta_nfe(stages: int):
  """S N calls, S N - (S - 1) where the last step is the one-call jump to sigma = 0."""

  def nfe(num_steps: int, ends_at_zero: bool, options: dict) -> int:
    del options
    return stages * num_steps - (stages - 1) * int(ends_at_zero)

  return nfe


def _runge_kutta(name: str):
  """The registry entry running TABLEAUS[name]: no options, no noise (key may be None)."""
  tableau = TABLEAUS[name]
  return base.Sampler(name=name, init=base.no_state, step=_runge_kutta_step(tableau), options={},
                      order=lambda options: tableau.order, stochastic=lambda options: False,
                      nfe=_runge_kutta_nfe(len(tableau.c)))


euler = _runge_kutta("euler")
heun = _runge_kutta("heun")
rk4 = _runge_kutta("rk4")


# --------------------------------------------------------------------------
# Adaptive step size, on device with diffrax, in (sigma~, x~).
# --------------------------------------------------------------------------

SOLVERS = {"tsit5": "Tsit5", "dopri5": "Dopri5", "dopri8": "Dopri8"}  # diffrax's classes.
SOLVER_ORDERS = {"tsit5": 5, "dopri5": 5, "dopri8": 8}  # Of the solution each step keeps.


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


def adaptive_run(ctx: base.Context, x_T, key):
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
  The options (`adaptive`): solver, rtol and atol (the controller's tolerances
  on x~, RMS norm over the batch's finite entries: a row that turned NaN/inf
  stays NaN in x_0 without steering the others' steps), max_steps (accepted
  and rejected, before giving up).

  Returns:
    x_0 [B, ...] at grid[-1], and info {"nfe", "nonfinite_step" (0 if the
    result is NaN/inf or the solver failed, e.g. at max_steps; else -1),
    "num_steps" (accepted), "num_rejected"}, all int32.
  """
  del key  # The ODE is deterministic.
  process, grid, options = ctx.process, ctx.grid, ctx.options
  import diffrax  # pylint: disable=import-outside-toplevel  # Here: 0.5 s at every start-up.
  ode_solver = getattr(diffrax, SOLVERS[options["solver"]])()

  def eps_hat(sigma_tilde, x_tilde, args):  # dx~/dsigma~: [B, ...]
    del args
    t = process.t_from_noise_to_signal(sigma_tilde)  # sigma~ = 0 -> t = 0.
    return ctx.denoise(process.alpha(t) * x_tilde, t)[1]

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
    raise NotImplementedError(f"{options['solver']}: expected a first-same-as-last Runge-Kutta "
                              f"solver with state (first_step, f_0), got {expected}")

  controller = diffrax.PIDController(rtol=options["rtol"], atol=options["atol"],
                                     norm=_finite_rms_norm)
  solution = diffrax.diffeqsolve(
      term, ode_solver, t0=sigma_0, t1=sigma_1, dt0=0.01 * (sigma_1 - sigma_0), y0=x_tilde_0,
      stepsize_controller=controller, max_steps=options["max_steps"],
      solver_state=solver_state, throw=False)
  x = (process.alpha(grid[-1]) * solution.ys[-1]).astype(x_T.dtype)

  num_steps = solution.stats["num_steps"]  # Accepted plus rejected.
  nfe = 1 + (tableau.num_stages - 1) * num_steps  # f_0, then stages 2..S per step.
  ok = (solution.result == diffrax.RESULTS.successful) & base.all_finite(x)
  info = {"nfe": jnp.int32(nfe),
          "nonfinite_step": base.first_nonfinite_step(ok[None]),
          "num_steps": jnp.int32(solution.stats["num_accepted_steps"]),
          "num_rejected": jnp.int32(solution.stats["num_rejected_steps"])}
  return x, info


def _positive(value) -> bool:
  return value > 0


adaptive = base.Sampler(
    name="adaptive", init=None, step=None, run=adaptive_run, nfe=None,
    options={
        "solver": base.Option("tsit5", (str,), "diffrax's embedded pair",
                              choices=tuple(sorted(SOLVERS))),
        "rtol": base.Option(1e-5, (int, float), "the controller's relative tolerance on x~",
                            check=_positive, rule="> 0"),
        "atol": base.Option(1e-5, (int, float), "the controller's absolute tolerance on x~",
                            check=_positive, rule="> 0"),
        "max_steps": base.Option(4096, (int,), "the most steps, accepted and rejected",
                                 check=_positive, rule="a positive integer"),
    },
    order=lambda options: SOLVER_ORDERS[options["solver"]], stochastic=lambda options: False)
