"""Log-likelihoods through the probability-flow ODE, and bits per dimension.

The probability-flow ODE dx/dt = v(x, t) (Song et al. 2021, eq. 13; for
x_t = alpha x_0 + sigma eps its drift is the velocity v = alpha' x0_hat + sigma'
eps_hat of the model's prediction, `parameterization`) carries p_t into p_T, and
the instantaneous change of variables (Chen et al. 2018, thm. 1; Song et al.,
eq. 39) gives, along a solution from x(t_min) = x to x(T),

  log p_{t_min}(x) = log p_T(x(T)) + int_{t_min}^T div v(x(t), t) dt.

Both are integrated together on device with diffrax (Tsit5 and a PID
controller, as the zoo's `adaptive` sampler), jitted and batched. The
divergence is exact (one Jacobian-vector product per dimension: small
dimensions) or the Hutchinson-Skilling estimate eps^T (dv/dx) eps with
Rademacher or Gaussian probes eps, drawn once per solve and averaged over
`num_probes` (FFJORD, Grathwohl et al. 2019; Song et al., app. D.2): unbiased,
its error shrinking as 1 / sqrt(num_probes). log p_T is the prior N(0,
sigma(T)^2 I) (`sde.prior_log_prob`) unless another is given.

Bits per dimension of 8-bit images (`bits_per_dim`): model space is x / 127.5
- 1 for x in {0..255}. Uniform dequantization (Theis et al. 2016) evaluates the
density at y = (x + u) / 128 - 1, u ~ U[0, 1)^D (`dequantize`): the 256 bins of
width 2 / 256 tile [-1, 1), so the discrete log-likelihood is at least
E_u log p(y) + D log(2 / 256), and in bits per dimension

  bpd = -log p(y) / (D ln 2) + 7,

the "+7" that score_sde writes as `7 - inverse_scaler(-1)` (8 for data kept in
[0, 1]). Variational dequantization (Ho et al. 2019) is not implemented.
"""

import math

import jax
import jax.numpy as jnp

from jaxdiff import parameterization, sde
from jaxdiff.schedules import Process

DIVERGENCES = ("exact", "hutchinson")
RTOL = ATOL = 1e-5  # The ODE's default tolerances, score_sde's (Song et al. 2021).
PROBES = ("rademacher", "gaussian")
# Bits per dimension added for 8-bit data in [-1, 1]: log2(256 / 2) (see the docstring).
EIGHT_BIT_OFFSET = 7.0


def exact_divergence(fn, x):
  """div fn at x [B, ...], for fn acting on each row alone: [B], one JVP per dimension."""
  shape = x.shape[1:]
  dims = math.prod(shape)

  def diagonal(d):  # d(fn_d)/d(x_d) of every row at once.
    basis = jnp.zeros(dims, x.dtype).at[d].set(1.0).reshape(shape)
    _, tangent = jax.jvp(fn, (x,), (jnp.broadcast_to(basis, x.shape),))
    return tangent.reshape(x.shape[0], dims)[:, d]

  return jnp.sum(jax.lax.map(diagonal, jnp.arange(dims)), axis=0)


def hutchinson_divergence(fn, x, probes):
  """The Hutchinson-Skilling estimate of div fn at x [B, ...]: the mean over probes
  [P, B, ...] of eps^T (dfn/dx) eps, per row: [B]."""

  def estimate(eps):
    _, tangent = jax.jvp(fn, (x,), (eps,))
    return jnp.sum((eps * tangent).reshape(x.shape[0], -1), axis=-1)

  return jnp.mean(jax.vmap(estimate)(probes), axis=0)


def draw_probes(key, shape, num_probes: int, kind: str = "rademacher"):
  """num_probes probes of `shape` with E[eps eps^T] = I: Rademacher (+-1) or N(0, I)."""
  if kind not in PROBES:
    raise ValueError(f"probes must be one of {PROBES}, got {kind!r}")
  if not isinstance(num_probes, int) or num_probes < 1:
    raise ValueError(f"num_probes must be a positive integer, got {num_probes!r}")
  if kind == "gaussian":
    return jax.random.normal(key, (num_probes, *shape))
  return jax.random.rademacher(key, (num_probes, *shape), jnp.float32)


def ode_log_likelihood(denoise_fn, process: Process, x, key=None, *, prediction: str = "eps",
                       cond=None, divergence: str = "exact", probes: str = "rademacher",
                       num_probes: int = 1, t_min: float | None = None,
                       t_max: float | None = None, prior_log_prob=None, rtol: float = RTOL,
                       atol: float = ATOL, max_steps: int = 4096):
  """log p_{t_min}(x) [B] in nats by the probability-flow ODE (module docstring).

  Args:
    denoise_fn: (x_t, t, cond) -> prediction of type `prediction`.
    process: the forward process.
    x: points [B, ...] at t_min (model space; `dequantize` 8-bit data first).
    key: PRNG key of the Hutchinson probes; unused (may be None) when exact.
    cond: passed to denoise_fn.
    divergence: "exact" (dimensions times the cost) or "hutchinson".
    probes, num_probes: the Hutchinson probes' law and how many are averaged.
    t_min, t_max: the interval; by default the process's.
    prior_log_prob: x(T) [B, ...] -> log p_T [B]; by default N(0, sigma(T)^2 I).
    rtol, atol: the step-size controller's tolerances on (x, delta log p), each record
      solved with its own step sizes (vmapped): its log-likelihood does not depend on the
      rest of the batch, nor on how the batch is spread over devices.
    max_steps: the most steps (accepted and rejected) before giving up.

  Returns:
    {"log_likelihood": [B], "prior": log p_T(x(T)) [B], "delta": the divergence
    integral [B], "x_T": x(T) [B, ...], "nfe": each record's network evaluations [B]
    (int32), "ok":
    True where the solver succeeded and the result is finite [B]}.
  """
  import diffrax  # pylint: disable=import-outside-toplevel  # Here: 0.5 s at every start-up.
  if divergence not in DIVERGENCES:
    raise ValueError(f"divergence must be one of {DIVERGENCES}, got {divergence!r}")
  if divergence == "hutchinson" and key is None:
    raise ValueError("the Hutchinson divergence draws probes: pass a PRNG key")
  x = jnp.asarray(x, jnp.float32)
  if x.ndim < 2:
    raise ValueError(f"x must be a batch [B, ...] of points, got shape {x.shape}")
  t_min = process.t_min if t_min is None else t_min
  t_max = process.t_max if t_max is None else t_max
  if not 0 <= t_min < t_max:
    raise ValueError(f"need 0 <= t_min < t_max, got t_min={t_min}, t_max={t_max}")
  x0_eps = parameterization.x0_eps_fn(denoise_fn, process, prediction)
  probes_per_row = (None if divergence == "exact"
                    else jnp.swapaxes(draw_probes(key, x.shape, num_probes, probes), 0, 1))

  def solve(x_row, probes_row, cond_row):
    """One record's ODE, as a batch of one: its own step sizes, whatever the batch holds."""

    def vector_field(t, state, args):
      del args
      x_t, _ = state  # [1, ...]
      t_batch = jnp.full((1,), t)

      def velocity(x_t):
        x0, eps = x0_eps(x_t, t_batch, cond_row)
        return parameterization.from_x0_eps(process, "velocity", x0, eps, t_batch)

      if divergence == "exact":
        return velocity(x_t), exact_divergence(velocity, x_t)
      return velocity(x_t), hutchinson_divergence(velocity, x_t, probes_row[:, None])

    solution = diffrax.diffeqsolve(
        diffrax.ODETerm(vector_field), diffrax.Tsit5(), t0=t_min, t1=t_max,
        dt0=0.01 * (t_max - t_min), y0=(x_row[None], jnp.zeros(1, jnp.float32)),
        stepsize_controller=diffrax.PIDController(rtol=rtol, atol=atol), max_steps=max_steps,
        throw=False)
    x_T, delta = (y[-1, 0] for y in solution.ys)
    # Tsit5 evaluates 6 new stages per step (first-same-as-last), plus the first.
    nfe = 1 + 6 * solution.stats["num_steps"]
    return x_T, delta, nfe, solution.result == diffrax.RESULTS.successful

  cond_rows = None if cond is None else jnp.asarray(cond)[:, None]  # [B, 1, ...]
  x_T, delta, nfe, solved = jax.vmap(solve, in_axes=(0, None if probes_per_row is None else 0,
                                                     None if cond is None else 0))(
      x, probes_per_row, cond_rows)
  prior = (sde.prior_log_prob(process, x_T) if prior_log_prob is None
           else prior_log_prob(x_T))
  log_likelihood = prior + delta
  ok = solved & jnp.isfinite(log_likelihood)
  return {"log_likelihood": log_likelihood, "prior": prior, "delta": delta, "x_T": x_T,
          "nfe": nfe.astype(jnp.int32), "ok": ok}


def dequantize(images_uint8, key):
  """Uniformly dequantized model-space points y = (x + u) / 128 - 1, u ~ U[0, 1)^D."""
  images = jnp.asarray(images_uint8)  # Also inside jit.
  if images.dtype != jnp.uint8:
    raise ValueError(f"dequantize takes uint8 images (0..255), got dtype {images.dtype}; "
                     "map model-space images back with jaxdiff.data.to_uint8")
  u = jax.random.uniform(key, images.shape)
  return (images.astype(jnp.float32) + u) / 128.0 - 1.0


def bits_per_dim(log_likelihood, num_dims: int, eight_bit: bool = True):
  """-log p / (D ln 2), plus 7 for dequantized 8-bit data in [-1, 1] (module docstring)."""
  bpd = -jnp.asarray(log_likelihood) / (num_dims * math.log(2.0))
  return bpd + EIGHT_BIT_OFFSET if eight_bit else bpd
