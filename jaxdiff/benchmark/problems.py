"""The benchmark's problems: oracle mixtures, x_T, and the reference PF-ODE solution.

A `Problem` is what every run of one benchmark table shares: a process, an
oracle mixture (`jaxdiff.oracle`; named in `ORACLES`, or read from an .npz
file), a prediction type and x_T (drawn from the seed, or read from an .npy
file). A file is read without unpickling and checked (shape, numbers, finite)
into a ValueError that names it.

The reference solves the PF-ODE in the variables of Karras et al. 2022
("Elucidating the Design Space...", eq. 4 with s(t) = alpha(t), sigma(t) -> sigma/alpha):
with the noise-to-signal ratio sigma~ = sigma / alpha = exp(-lam / 2) and
x~ = x / alpha,
  dx~ / dsigma~ = eps_hat(alpha x~, t(sigma~)),    t(sigma~) = t_from_log_snr(-2 log sigma~),
which is smooth down to sigma~ = 0 (the data end), so it is integrated exactly to
t = 0 (Song et al. 2021, eq. 13, after the change of variables of Lu et al. 2022,
"DPM-Solver", sec. 3.1). DDIM is the Euler method of this ODE (Karras et al. sec. 3).
"""

import dataclasses
import functools
import inspect

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff import oracle
from jaxdiff.samplers import ode
from jaxdiff.schedules import Process

# --------------------------------------------------------------------------
# The problem: a process, an oracle mixture, a prediction type and x_T.
# --------------------------------------------------------------------------


def random_mixture(dim: int = 64, num_modes: int = 10, scale: float = 1.0,
                   std_range=(0.1, 0.3), seed: int = 0) -> oracle.GaussianMixture:
  """A seeded mixture: means scale * U[-1, 1]^D, stds U(std_range), Dirichlet(5) weights."""
  for name, value in (("dim", dim), ("num_modes", num_modes)):
    if not isinstance(value, (int, np.integer)) or value < 1:
      raise ValueError(f"random_mixture: {name} must be a positive integer, got {value!r}")
  if len(std_range) != 2 or not 0 < std_range[0] <= std_range[1]:
    raise ValueError(f"random_mixture: std_range must be (low, high) with 0 < low <= high, "
                     f"got {std_range!r}")
  rng = np.random.default_rng(seed)
  weights = rng.dirichlet(np.full(num_modes, 5.0))
  means = scale * rng.uniform(-1.0, 1.0, (num_modes, dim))
  stds = rng.uniform(std_range[0], std_range[1], num_modes)
  return oracle.GaussianMixture(weights / weights.sum(), means, stds)


ORACLES = {"ring": oracle.ring, "random": random_mixture}


def make_oracle(name: str, **options) -> oracle.GaussianMixture:
  """A named oracle mixture: "ring" (oracle.ring) or "random" (random_mixture)."""
  if name not in ORACLES:
    raise ValueError(f"unknown oracle {name!r}; valid: {sorted(ORACLES)}")
  valid = list(inspect.signature(ORACLES[name]).parameters)
  unknown = sorted(set(options) - set(valid))
  if unknown:
    raise ValueError(f"oracle {name!r} takes the options {valid}, got unknown {unknown}")
  return ORACLES[name](**options)


def _load_numeric(path, what: str, keys=None):
  """The array of an .npy file (keys None) or the named arrays of an .npz file,
  each numeric, or a ValueError naming the file and what it must hold."""
  kind = ".npy file (np.save) of one array" if keys is None else f".npz file (np.savez) of {keys}"
  try:
    loaded = np.load(path)  # allow_pickle=False: never unpickles.
    is_npz = hasattr(loaded, "files")
    if is_npz != (keys is not None):
      raise ValueError(f"got {'an .npz' if is_npz else 'an .npy'} file")
    arrays = {k: loaded[k] for k in keys if k in loaded.files} if is_npz else {"array": loaded}
  except (OSError, EOFError, ValueError) as error:
    raise ValueError(f"cannot read {what} {path} ({type(error).__name__}: {error}); it must be "
                     f"an {kind} of numbers") from error
  for name, a in arrays.items():
    if not np.issubdtype(a.dtype, np.number):
      raise ValueError(f"{what} {path}: {name} must hold numbers, got dtype {a.dtype}")
  return arrays if is_npz else arrays["array"]


def load_mixture(path) -> oracle.GaussianMixture:
  """A mixture from an .npz file with arrays weights [K], means [K, D], stds [K]."""
  arrays = _load_numeric(path, "oracle file", ("weights", "means", "stds"))
  missing = {"weights", "means", "stds"} - set(arrays)
  if missing:
    raise ValueError(f"oracle file {path} lacks arrays {sorted(missing)}; it needs weights "
                     f"[K], means [K, D] and stds [K], got {sorted(arrays)}")
  try:
    return oracle.GaussianMixture(arrays["weights"], arrays["means"], arrays["stds"])
  except ValueError as error:
    raise ValueError(f"oracle file {path}: {error}") from error


def check_init_noise(x_T, shape, source="x_T"):
  """x_T as float32 [num_samples, D], or a ValueError naming the expected shape."""
  x_T = np.asarray(x_T)
  if x_T.shape != tuple(shape):
    raise ValueError(f"{source} must have shape [num_samples, D] = {list(shape)}, got "
                     f"{list(x_T.shape)}")
  if not np.all(np.isfinite(x_T)):
    raise ValueError(f"{source} holds NaN or inf")
  return jnp.asarray(x_T, jnp.float32)


def load_init_noise(path, shape):
  """x_T [num_samples, D] from an .npy file, its shape checked."""
  return check_init_noise(_load_numeric(path, "init noise"), shape, source=f"init noise {path}")


@dataclasses.dataclass(frozen=True, eq=False)
class Problem:
  """What every run of one benchmark table shares.

  name: the oracle's label; x_T: [num_samples, D] at process.t_max; key: the
  samplers' noise key; eval_key: the key of the metrics' fresh data.
  """

  name: str
  process: Process
  mixture: oracle.GaussianMixture
  prediction: str
  x_T: jax.Array
  key: jax.Array
  eval_key: jax.Array
  seed: int

  @property
  def denoise_fn(self):
    return self.mixture.denoise_fn(self.process, self.prediction)


def make_problem(name, process, mixture, prediction, num_samples, seed, x_T=None) -> Problem:
  """Draws x_T from the prior with `seed` unless given; keys split as in bench.py --job oracle."""
  key_prior, key_sample, key_eval = jax.random.split(jax.random.PRNGKey(seed), 3)
  shape = (num_samples, mixture.dim)
  if x_T is None:
    x_T = jax.random.normal(key_prior, shape) * process.prior_std()
  return Problem(name, process, mixture, prediction, check_init_noise(x_T, shape), key_sample,
                 key_eval, seed)


# --------------------------------------------------------------------------
# The reference: the PF-ODE in (sigma~, x~), Tsit5 to sigma~ = 0; for grid fits too.
# --------------------------------------------------------------------------


def reference_solution(denoise_fn, process: Process, x_T, t_start=None, *,
                       prediction: str = "eps", cond=None, rtol: float = 1e-6,
                       atol: float = 1e-6, max_steps: int = 16384):
  """Solves the PF-ODE from t_start to t = 0 exactly: `samplers.ode.adaptive` (Tsit5).

  Args:
    denoise_fn: (x [B, ...], t [B], cond) -> network output of type `prediction`;
      it must give a finite eps at t = 0 (an eps prediction does).
    process: the forward process.
    x_T: [B, ...] at t_start (process.t_max by default).
    rtol, atol: the step controller's tolerances, on x~ = x / alpha.

  Returns:
    x_0 [B, ...] at t = 0 (NaN where the solver failed, e.g. at max_steps).
  """
  t_start = process.t_max if t_start is None else t_start
  x_0, info = ode.adaptive(denoise_fn, process, x_T, None, jnp.array([t_start, 0.0]),
                           prediction=prediction, cond=cond, rtol=rtol, atol=atol,
                           max_steps=max_steps)
  return jnp.where(info["nonfinite_step"] < 0, x_0, jnp.nan)


@functools.partial(jax.jit, static_argnums=(0, 1), static_argnames=("rtol", "atol"))
def oracle_reference(mixture, process, x_T, rtol=1e-6, atol=1e-6):
  """reference_solution with the mixture's exact eps from process.t_max: [B, D]."""
  return reference_solution(mixture.denoise_fn(process, "eps"), process, x_T, rtol=rtol, atol=atol)


@functools.lru_cache(maxsize=None)
def training_pairs(problem: Problem, num_pairs: int):
  """(x_T, x_ref) [num_pairs, D] for fitting grids: x_T from the prior with the key
  fold_in(PRNGKey(seed), 1), independent of the benchmark's x_T, and its reference."""
  key = jax.random.fold_in(jax.random.PRNGKey(problem.seed), 1)
  x_T = jax.random.normal(key, (num_pairs, problem.mixture.dim)) * problem.process.prior_std()
  return x_T, oracle_reference(problem.mixture, problem.process, x_T)
