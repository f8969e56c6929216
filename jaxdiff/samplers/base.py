"""The sampler contract: one loop that every grid sampler runs in.

A sampler is a registry entry (`Sampler`) that declares what it is -- its
options with their types and defaults, its order, whether it draws noise, how
many network calls N steps cost -- and supplies two pure functions:

  init(ctx, x_T) -> state           what the sampler carries besides x (a
                                    multistep history; () for none);
  step(ctx, state, x_t, inputs) -> (state, x_s)
                                    one step from x_t [B, ...] at inputs.t to
                                    x_s at inputs.s < t, consecutive grid times.

`sample` owns everything else: the checks of the options, the grid and x_T
(before anything is traced), the key check for samplers that draw noise, the
`lax.scan` over the grid's consecutive pairs, the count of network calls, the
per-step finite flags and the info dict. The step calls the network only
through `ctx.denoise(x, t) -> (x0, eps)`, which counts each call as it is
traced; calls under `ctx.cond` (a data-dependent branch) or repeated by
`ctx.repeat` (an inner loop) are counted as they run, so info["nfe"] is
counted by the code, never assumed, and the contract test compares it to the
declared NFE rule.

Noise: step i gets inputs.key = fold_in(key, i) (None when the sampler was
given no key) and inputs.last (step i is the last one); `normal(inputs, like)`
draws z ~ N(0, I) from inputs.key and gives zeros on the last step (Ho et
al. 2020, Alg. 2, line 3), the mask every ancestral sampler shares. The key is
one PRNG key for the batch, or one per sample ([B] keys: uint32 [B, 2] or typed
[B]); steps derive and draw through `fold_in`, `split` and `standard_normal`,
which go row by row for per-sample keys, so that a sample's noise depends on
its own key alone, never on the batch or the devices it is drawn in.

The end of the grid. A grid either ends at a time where sigma = 0 (t = 0 for
every process but VE; `jaxdiff.grids`' default builders) or at t_min > 0
without a final jump (the reference solvers' convention, N calls on N + 1
points). `ends_at_zero(process, t)` is the one test of which; samplers that
take a cheaper last step into sigma = 0 (one call instead of a multi-stage
step, first order instead of an extrapolation) read it, and the NFE rule
takes it as an argument.

The checks, and when: the grid's shape (1-D, at least two times) always; its
values (finite, strictly decreasing, inside the process's time domain) and
x_T's (no NaN or inf) only where they are concrete. Inside jit they are traced
and pass unchecked, so call `check_grid(grid, process)` and `check_x_T(x_T)`
once outside jit (sample.py and the benchmark do): that costs nothing per
step. Options are checked by name, type and value before tracing; a traced
value is accepted only for options declared `traced`.
"""

import dataclasses
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff import parameterization
from jaxdiff.schedules import Process

def concrete(value):
  """value as a NumPy array, or None when it is traced (inside jit) and cannot be read."""
  try:
    return np.asarray(value)
  except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
    return None


def check_grid(grid, process: Process, num_steps=None):
  """The grid as float32 [N + 1], checked where its values are known.

  Always: 1-D with at least two times (and N = num_steps when given). When the
  grid is concrete (not traced inside jit): finite, strictly decreasing and
  inside the process's time domain. Under jit only the shape can be checked;
  call this once on the concrete grid before jitting a sampler (the entry
  points and the benchmark do) -- it costs nothing per step.

  Raises:
    ValueError naming what is wrong and what a grid must be.
  """
  grid = jnp.asarray(grid, jnp.float32)
  if grid.ndim != 1 or grid.shape[0] < 2:
    raise ValueError(f"grid must be 1-D with at least 2 times [N + 1], got shape {grid.shape}")
  if num_steps is not None and grid.shape[0] != num_steps + 1:
    raise ValueError(f"grid must hold N + 1 = {num_steps + 1} times for N = {num_steps} steps, "
                     f"got {grid.shape[0]}")
  times = concrete(grid)
  if times is None:
    return grid
  if not np.all(np.isfinite(times)):
    raise ValueError(f"grid holds NaN or inf: {times}")
  if not np.all(np.diff(times) < 0):
    i = int(np.argmax(np.diff(times) >= 0))
    raise ValueError(f"grid must strictly decrease from where sampling starts to where it ends "
                     f"(e.g. [t_max, ..., 0], see jaxdiff.grids), but grid[{i}] = {times[i]:.6g} "
                     f"<= grid[{i + 1}] = {times[i + 1]:.6g}")
  process.check_time(times, "grid")
  return grid


def check_x_T(x_T):
  """Raises ValueError when a concrete x_T [B, ...] holds NaN or inf (traced: unchecked).

  A single non-finite row would otherwise give NaN rows in the samples (and, in
  an adaptive solver, steer the step size of the whole batch).
  """
  values = concrete(x_T)
  if values is not None and not np.all(np.isfinite(values)):
    rows = np.flatnonzero(~np.isfinite(values.reshape(values.shape[0], -1)).all(axis=1))
    raise ValueError(f"x_T holds NaN or inf in {rows.size} of its {values.shape[0]} rows "
                     f"(first: {rows[:5].tolist()}); the starting noise must be finite")


def check_inputs(x_T, grid, process: Process):
  """check_x_T(x_T) and check_grid(grid, process): every sampler's input check."""
  check_x_T(x_T)
  return check_grid(grid, process)


def require_key(key, sampler: str):
  """Raises a clear ValueError when a sampler that draws noise got key=None."""
  if key is None:
    raise ValueError(f"{sampler} draws noise and needs a PRNG key (jax.random.PRNGKey(seed)), "
                     "got key=None")


def denoiser(denoise_fn, process: Process, prediction: str, clip_x0: bool):
  """(x_t [B, ...], t scalar, cond) -> (x0, eps) [B, ...], one network call.

  With clip_x0, x0 is clipped to [-1, 1] and eps recomputed as
  (x_t - alpha x0) / sigma (Ho et al. 2020's and diffusers' clip_sample).
  """

  def checked_fn(x_t, t, cond):
    out = denoise_fn(x_t, t, cond)
    if out.shape != x_t.shape:
      raise ValueError(f"denoise_fn returned shape {out.shape} for x of shape {x_t.shape}")
    return out

  x0_eps = parameterization.x0_eps_fn(checked_fn, process, prediction)

  def fn(x_t, t, cond):
    t_vec = jnp.full((x_t.shape[0],), t, jnp.float32)  # [B]
    x0, eps = x0_eps(x_t, t_vec, cond)
    if clip_x0:
      x0, eps = parameterization.to_x0_eps(process, "x0", jnp.clip(x0, -1.0, 1.0), x_t, t_vec)
    return x0, eps

  return fn


def all_finite(x):
  """Scalar bool: no NaN or inf in x. Emit it from a sampler's scan, one per step."""
  return jnp.all(jnp.isfinite(x))


def first_nonfinite_step(finite):
  """Index of the first False in the per-step flags [N], or -1: int32."""
  return jnp.where(jnp.all(finite), -1, jnp.argmin(finite)).astype(jnp.int32)


def raise_if_nonfinite(info, grid):
  """Host-side check of a sampler's info: names the step and time where NaN/inf appeared."""
  step = int(info["nonfinite_step"])
  if step >= 0:
    grid = np.asarray(grid)
    raise FloatingPointError(
        f"sampling produced NaN or inf at step {step} (from t = {grid[step]:.6g} to "
        f"t = {grid[step + 1]:.6g}); check the network, the grid and the prediction type")


# --------------------------------------------------------------------------
# The registry entry and its declarations.
# --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Option:
  """One sampler option: its default, the Python types a concrete value may have,
  and the values it may take.

  choices: the allowed values (for strings and small integer sets), or None.
  check: a predicate on a concrete value, with `rule` the words for it
    ("in [0, 1]"); None where the type says enough.
  traced: a JAX array (e.g. a traced eta) is accepted, unchecked.
  """

  default: Any
  types: tuple
  doc: str
  choices: Optional[tuple] = None
  check: Optional[Callable[[Any], bool]] = None
  rule: str = ""
  traced: bool = False

  def validate(self, sampler: str, name: str, value):
    """Raises ValueError naming the option, the value and what it may be."""
    if self.traced and isinstance(value, (jax.Array, np.ndarray)) and concrete(value) is None:
      return
    if isinstance(value, (jax.Array, np.ndarray, np.generic)) and np.ndim(value) == 0:
      if not self.traced:
        raise ValueError(f"{sampler} option {name}={value!r} must be a Python value of type "
                         f"{_type_words(self.types)}, not an array")
      value = np.asarray(value).item()
    is_bool = isinstance(value, bool)
    if not isinstance(value, self.types) or (is_bool and bool not in self.types):
      raise ValueError(f"{sampler} option {name} must be of type {_type_words(self.types)}, "
                       f"got {value!r} ({type(value).__name__})")
    if self.choices is not None and value not in self.choices:
      raise ValueError(f"unknown {name} {value!r} for {sampler}; valid: {list(self.choices)}")
    if self.check is not None and not self.check(value):
      raise ValueError(f"{sampler} option {name} must be {self.rule}, got {value!r}")


def _type_words(types) -> str:
  return " or ".join(t.__name__ for t in types)


# The options every sampler takes, beside its own.
COMMON_OPTIONS = {
    # Its value is checked by `parameterization` where the denoiser is built.
    "prediction": Option("eps", (str,), "what denoise_fn predicts (parameterization.PREDICTIONS)"),
    "clip_x0": Option(False, (bool,), "clip the predicted x0 to [-1, 1] (Ho et al.'s "
                      "and diffusers' clip_sample)"),
}


class Inputs(NamedTuple):
  """What step i is given besides its state (all traced scalars but key)."""

  i: Any  # int32 step index.
  t: Any  # float32 start time of the step, grid[i].
  s: Any  # float32 end time, grid[i + 1] < t.
  key: Any  # fold_in(key, i), or None when the sampler got no key.
  last: Any  # bool: i = N - 1.


@dataclasses.dataclass
class Context:
  """What a sampler's init and step see: the process, the counted denoiser,
  the grid, the options (defaults filled in) and `cond`.

  denoise(x [B, ...], t scalar) -> (x0, eps) [B, ...] is one network call.
  """

  process: Process
  grid: Any  # float32 [N + 1]
  options: dict
  _denoise: Callable
  calls: Any = 0  # Network calls traced in the current step (int or int32).

  @property
  def num_steps(self) -> int:
    return self.grid.shape[0] - 1

  def denoise(self, x, t):
    """(x0, eps) [B, ...] at time t (scalar), from one network call."""
    self.calls = self.calls + 1
    return self._denoise(x, t)

  def cond(self, pred, true_fn, false_fn, *operands):
    """jax.lax.cond that counts only the network calls of the branch taken."""
    counts = []

    def counted(fn):
      def branch(*args):
        outer, self.calls = self.calls, 0
        out = fn(*args)
        counts.append(self.calls)
        self.calls = outer
        return out
      return branch

    out = jax.lax.cond(pred, counted(true_fn), counted(false_fn), *operands)
    self.calls = self.calls + jnp.where(pred, counts[0], counts[1]).astype(jnp.int32)
    return out

  def repeat(self, num, body, init):
    """jax.lax.fori_loop(0, num, body, init), counting body's calls num times."""
    outer, self.calls = self.calls, 0
    body_calls = []

    def counted(j, carry):
      before, self.calls = self.calls, 0
      out = body(j, carry)
      body_calls.append(self.calls)
      self.calls = before
      return out

    out = jax.lax.fori_loop(0, num, counted, init)
    self.calls = outer + num * body_calls[0]
    return out


def per_sample(key) -> bool:
  """Whether key holds one PRNG key per sample ([B]) rather than one for the batch."""
  typed = jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key)
  return key.ndim == (1 if typed else 2)


def fold_in(key, data):
  """jax.random.fold_in, row by row for per-sample keys."""
  if per_sample(key):
    return jax.vmap(jax.random.fold_in, (0, None))(key, data)
  return jax.random.fold_in(key, data)


def split(key):
  """(key_a, key_b) of jax.random.split, row by row for per-sample keys."""
  if per_sample(key):
    keys = jax.vmap(jax.random.split)(key)  # [B, 2, ...]
    return keys[:, 0], keys[:, 1]
  key_a, key_b = jax.random.split(key)
  return key_a, key_b


def standard_normal(key, like):
  """z ~ N(0, I) shaped like `like` [B, ...]; with per-sample keys, row b from key b."""
  if per_sample(key):
    return jax.vmap(lambda k: jax.random.normal(k, like.shape[1:], like.dtype))(key)
  return jax.random.normal(key, like.shape, like.dtype)


def normal(inputs: Inputs, like):
  """z ~ N(0, I) shaped like `like` from inputs.key, zeros on the last step."""
  z = standard_normal(inputs.key, like)
  return jnp.where(inputs.last, jnp.zeros_like(z), z)


def ends_at_zero(process: Process, t) -> bool:
  """Whether sigma(t) = 0 at a concrete time t: a step there lands on the data."""
  return float(process.sigma(t)) == 0.0


def no_state(ctx, x_T):
  """The init of samplers that carry nothing but x."""
  del ctx, x_T
  return ()


def one_call_per_step(num_steps: int, ends_at_zero: bool, options: dict) -> int:
  """The NFE rule of samplers that call the network once per step: N."""
  del ends_at_zero, options
  return num_steps


# The order of a sampler that is no solver of the denoiser it is given: it is exact
# only for the function it presumes (a consistency function), so no step-size
# convergence on the PF-ODE or the mixture is declared or tested.
NOT_A_SOLVER = None


@dataclasses.dataclass(frozen=True)
class Sampler:
  """A registry entry; calling it samples:

    entry(denoise_fn, process, x_T, key, grid, *, prediction="eps", cond=None,
          clip_x0=False, **options) -> (x_0 [B, ...] at grid[-1], info)

  with denoise_fn(x [B, ...], t [B], cond) -> network output of type
  `prediction`, x_T [B, ...] at grid[0], key a PRNG key or one per sample
  [B] (None where no noise is drawn), grid [N + 1] strictly decreasing times (`jaxdiff.grids`), and
  info {"nfe": int32 network calls, "nonfinite_step": int32, -1 if none}.

  Declarations:
    name: the registry name.
    init, step: see the module docstring.
    options: name -> Option, the sampler's own options.
    order: options -> the global order of convergence in the step size
      (of the ODE solution for deterministic samplers; of the law of x_0
      -- the weak order -- for stochastic ones), or NOT_A_SOLVER for a
      sampler that solves no equation of the denoiser it is given (the
      consistency sampler: right only for a consistency function).
    stochastic: options -> whether it draws noise (needs a key).
    noiseless_steps: grids of at most this many steps draw no noise even
      where `stochastic` says it does, and take key=None (the consistency
      sampler's one step: 1).
    nfe: (N, ends_at_zero, options) -> network calls on a grid of N steps;
      None for samplers that choose their own steps (adaptive).
    run: replaces init/step for samplers that do not step along the grid
      (adaptive): (ctx, x_T, key) -> (x_0, info).
  """

  name: str
  init: Optional[Callable]
  step: Optional[Callable]
  options: dict
  order: Callable
  stochastic: Callable
  nfe: Optional[Callable] = one_call_per_step
  run: Optional[Callable] = None
  noiseless_steps: int = 0

  def resolve(self, options: dict) -> dict:
    """Every option (the sampler's and COMMON_OPTIONS), defaults filled in, checked.

    Raises:
      ValueError for an unknown option, a wrong type or a value out of range.
    """
    declared = {**COMMON_OPTIONS, **self.options}
    unknown = sorted(set(options) - set(declared))
    if unknown:
      raise ValueError(f"sampler {self.name!r} takes the options {sorted(self.options)} (and "
                       f"{sorted(COMMON_OPTIONS)}), got unknown {unknown}")
    for name, value in options.items():
      declared[name].validate(self.name, name, value)
    return {name: options.get(name, option.default) for name, option in declared.items()}

  def num_steps(self, nfe: int, options=None, *, ends_at_zero: bool = True) -> int:
    """The grid length N at which this sampler with `options` spends exactly `nfe` calls.

    Raises:
      ValueError where no N does, naming the nearest NFE values that work.
    """
    if not isinstance(nfe, (int, np.integer)) or isinstance(nfe, bool) or nfe < 1:
      raise ValueError(f"nfe must be a positive integer, got {nfe!r}")
    if self.nfe is None:
      raise ValueError(f"{self.name} picks its own steps and meets no set NFE (asked for "
                       f"{nfe!r}); it reads only grid[0] and grid[-1], so pass any grid "
                       "(e.g. N = 1) and read the NFE it spent from info['nfe']")
    options = self.resolve(dict(options or {}))
    spent = {n: self.nfe(n, ends_at_zero, options) for n in range(1, int(nfe) + 2)}
    for n, value in spent.items():
      if value == nfe:
        return n
    below = max((v for v in spent.values() if v < nfe), default=None)
    above = min((v for v in spent.values() if v > nfe), default=None)
    nearest = " or ".join(str(v) for v in (below, above) if v is not None)
    end = "sigma = 0" if ends_at_zero else "sigma > 0"
    raise ValueError(f"{self.name} with {_own(self, options)} cannot spend exactly nfe={nfe} on "
                     f"a grid ending at {end}; nearest NFE that work: {nearest}")

  def __call__(self, denoise_fn, process: Process, x_T, key, grid, *, cond=None, **options):
    options = self.resolve(options)
    if self.stochastic(options) and key is None and jnp.size(grid) - 1 > self.noiseless_steps:
      many = self.noiseless_steps
      where = f" on grids of more than {many} step{'s' * (many > 1)}" if many else ""
      raise ValueError(f"{self.name} with {_own(self, options)} draws noise{where} and needs a "
                       "PRNG key (jax.random.PRNGKey(seed)), got key=None")
    if key is not None and per_sample(key) and key.shape[0] != x_T.shape[0]:
      raise ValueError(f"{self.name}: per-sample keys must be one per row of x_T "
                       f"({x_T.shape[0]}), got {key.shape[0]}")
    grid = check_inputs(x_T, grid, process)
    network = denoiser(denoise_fn, process, options["prediction"], options["clip_x0"])
    ctx = Context(process, grid, options, lambda x, t: network(x, t, cond))
    if self.run is not None:
      return self.run(ctx, x_T, key)
    return scan(self, ctx, x_T, key)


def _own(sampler: Sampler, options: dict) -> str:
  """The sampler's own options as words, for error messages."""
  own = {k: v for k, v in options.items() if k in sampler.options}
  return ", ".join(f"{k}={v!r}" for k, v in own.items()) or "its defaults"


def scan(sampler: Sampler, ctx: Context, x_T, key):
  """Runs sampler.step over the grid's consecutive pairs: (x at grid[-1], info)."""
  num_steps = ctx.num_steps

  def body(carry, inputs):
    state, x, nfe = carry
    i, t, s = inputs
    step_key = None if key is None else fold_in(key, i)
    ctx.calls = 0
    state, x_s = sampler.step(ctx, state, x, Inputs(i, t, s, step_key, i == num_steps - 1))
    x_s = x_s.astype(x_T.dtype)
    return (state, x_s, nfe + ctx.calls), all_finite(x_s)

  ctx.calls = 0
  state = sampler.init(ctx, x_T)
  init_calls = ctx.calls
  steps = (jnp.arange(num_steps), ctx.grid[:-1], ctx.grid[1:])  # i, t, s: [N] each
  (_, x, nfe), finite = jax.lax.scan(body, (state, x_T, jnp.int32(init_calls)), steps)
  return x, {"nfe": nfe, "nonfinite_step": first_nonfinite_step(finite)}


def concrete_zero(value) -> bool:
  """Whether an option value is a concrete 0 (a traced value might not be)."""
  value = concrete(value)
  return value is not None and value.ndim == 0 and float(value) == 0.0
