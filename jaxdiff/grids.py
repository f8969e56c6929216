"""Time grids for samplers, built in one place.

A grid is a float32 array [N + 1] of strictly decreasing times: grid[0] is
where sampling starts (usually `process.t_max`) and grid[N] where it ends. The
continuous builders (time_uniform, time_quadratic, log_snr_uniform, karras)
end in one of two ways, their option `end`:
  * "zero" (default; k-diffusion's convention): grid[:N] are N times from
    t_max to t_min and grid[N] = 0, so that the last step jumps to the clean
    data for every process with sigma(0) = 0;
  * "t_min" (the official DPM-Solver's and UniPC's convention, their
    `get_time_steps(skip_type, t_T, t_0, N)`, and diffusers'
    final_sigmas_type="sigma_min"): the N + 1 points run from t_max to t_min
    inclusive, with no final jump. For the same N the spacing is the same
    rule on one more point, so each interval is smaller; the samples are
    those at t_min (sigma/alpha = 0.01 at t_min = 1/T for the linear
    1000-step DDPM). A sampler's NFE rule is told which end it gets
    (`samplers.num_steps_for(..., ends_at_zero=)`).

Builders, named as in the literature:
  * time_uniform      uniform in t (Ho et al. 2020; Song et al. 2021).
  * time_quadratic    uniform in sqrt(t): DPM-Solver's "time_quadratic"
                      (Lu et al. 2022, "DPM-Solver", sec. 3.3 and app. D.1,
                      after DDIM's quadratic skip).
  * log_snr_uniform   uniform in lam = log(alpha^2 / sigma^2): DPM-Solver's
                      "logSNR" schedule (Lu et al. 2022, sec. 3.3).
  * karras            Karras et al. 2022, "Elucidating the Design Space of
                      Diffusion-Based Generative Models", eq. 5: uniform in
                      sigma^(1/rho), rho = 7, with sigma the noise-to-signal
                      ratio sigma / alpha = exp(-lam / 2) (it is sigma itself
                      when alpha = 1).
  * diffusers_spacing diffusers' "linspace", "leading" and "trailing"
                      timestep spacings of a discrete T-step DDPM (Lin et al.
                      2024, "Common Diffusion Noise Schedules and Sample Steps
                      are Flawed", table 2, which introduces "trailing").
  * learned           the times that bring one sampler's output closest to a
                      reference solution from the same x_T, fitted by gradient
                      descent through the sampler (Tong et al. 2024, "Learning
                      to Discretize Denoising Diffusion ODEs" (LD3), sec. 3,
                      with their plain teacher loss, eq. 4, without the slack
                      ball); tuned per model and sampler, like Sabour et al.
                      2024's "Align Your Steps". Made robust here: several
                      starts, judged on held-out pairs, never worse than the
                      starting grid there, and monotone in N across a table
                      (`learned_table`, restarting from the shorter grid
                      `refine`d).
"""

import inspect
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxdiff.schedules import Process


def _check_num_steps(num_steps):
  if not isinstance(num_steps, (int, np.integer)) or isinstance(num_steps, bool) or num_steps < 1:
    raise ValueError(f"num_steps must be a positive integer, got {num_steps!r}")


def _check_interval(t_max, t_min):
  if not 0 < t_min < t_max:
    raise ValueError(f"need 0 < t_min < t_max, got t_min={t_min!r}, t_max={t_max!r}")


ENDS = ("zero", "t_min")


def _check_end(end):
  if end not in ENDS:
    raise ValueError(f"unknown grid end {end!r}; valid: {list(ENDS)} (\"zero\": N times from "
                     f"t_max to t_min, then 0; \"t_min\": N + 1 times from t_max to t_min)")


def _num_points(num_steps, end):
  """How many points the spacing rule places from t_max to t_min: N, or N + 1 for "t_min"."""
  _check_num_steps(num_steps)
  _check_end(end)
  return num_steps if end == "zero" else num_steps + 1


def _with_end(times, end="zero"):
  """The grid float32 [N + 1]: the times, then 0 where end is "zero"."""
  times = np.asarray(times, np.float32)
  grid = np.append(times, np.float32(0.0)) if end == "zero" else times
  if not np.all(np.diff(grid) < 0):
    raise ValueError(f"grid times must be strictly decreasing and positive, got {times}")
  return jnp.asarray(grid)


def time_uniform(t_max: float, t_min: float, num_steps: int, end: str = "zero"):
  """Times uniform in t from t_max to t_min, then 0 (end "zero") or not ("t_min"): [N + 1]."""
  num_points = _num_points(num_steps, end)
  _check_interval(t_max, t_min)
  return _with_end(np.linspace(t_max, t_min, num_points), end)


def time_quadratic(t_max: float, t_min: float, num_steps: int, end: str = "zero"):
  """Times uniform in sqrt(t) from t_max to t_min, then 0 (end "zero") or not: [N + 1]."""
  num_points = _num_points(num_steps, end)
  _check_interval(t_max, t_min)
  return _with_end(np.linspace(math.sqrt(t_max), math.sqrt(t_min), num_points) ** 2, end)


def _log_snr_ends(process: Process, t_max, t_min):
  """Resolves the interval and returns (t_max, t_min, lam(t_max), lam(t_min))."""
  t_max = process.t_max if t_max is None else t_max
  t_min = process.t_min if t_min is None else t_min
  _check_interval(t_max, t_min)
  lam_max_t, lam_min_t = (float(process.log_snr(t)) for t in (t_max, t_min))
  if not (math.isfinite(lam_max_t) and math.isfinite(lam_min_t)):
    raise ValueError(f"the log-SNR of {type(process).__name__} is not finite on [t_min, t_max] "
                     f"= [{t_min}, {t_max}] (lam = {lam_min_t}, {lam_max_t}); pass a t_max "
                     f"and t_min where alpha and sigma are both nonzero")
  return t_max, t_min, lam_max_t, lam_min_t


def _times_from_log_snr(process: Process, lam, t_max, t_min, end):
  """Maps lam [M] back to times, pinning the ends to t_max and t_min exactly."""
  times = np.asarray(process.t_from_log_snr(jnp.asarray(lam, jnp.float32)), np.float64)
  times[0] = t_max
  if times.size > 1:
    times[-1] = t_min
  return _with_end(times, end)


def log_snr_uniform(process: Process, num_steps: int, *, t_max=None, t_min=None,
                    end: str = "zero"):
  """Times with equal log-SNR increments from t_max to t_min, then 0 (end "zero") or not.

  Args:
    process: the forward process (its log_snr and t_from_log_snr are used).
    num_steps: N.
    t_max, t_min: the interval; the process's own by default.
    end: "zero" (N times, then 0) or "t_min" (N + 1 times, the last t_min).

  Returns:
    float32 [N + 1].
  """
  num_points = _num_points(num_steps, end)
  t_max, t_min, lam_start, lam_end = _log_snr_ends(process, t_max, t_min)
  lam = np.linspace(lam_start, lam_end, num_points)  # Increasing.
  return _times_from_log_snr(process, lam, t_max, t_min, end)


def karras(process: Process, num_steps: int, rho: float = 7.0, *, t_max=None, t_min=None,
           end: str = "zero"):
  """Karras et al. 2022 eq. 5, in the noise-to-signal ratio, then 0 (end "zero") or not.

  sigma_i = (sigma_max^(1/rho) + i / (M - 1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho
  for i = 0..M-1, with sigma = sigma(t) / alpha(t) at t_max and t_min, mapped to
  t through lam = -2 log sigma; M = N, then 0 (end "zero", k-diffusion's
  get_sigmas_karras), or M = N + 1 (end "t_min"). At rho = 1 the grid is
  uniform in sigma / alpha.

  Returns:
    float32 [N + 1].
  """
  num_points = _num_points(num_steps, end)
  if not rho > 0:
    raise ValueError(f"rho must be positive, got {rho!r}")
  t_max, t_min, lam_start, lam_end = _log_snr_ends(process, t_max, t_min)
  sigma_max, sigma_min = math.exp(-0.5 * lam_start), math.exp(-0.5 * lam_end)
  ramp = np.linspace(0.0, 1.0, num_points)  # i / (M - 1)
  root_max, root_min = sigma_max ** (1 / rho), sigma_min ** (1 / rho)
  sigmas = (root_max + ramp * (root_min - root_max)) ** rho
  return _times_from_log_snr(process, -2.0 * np.log(sigmas), t_max, t_min, end)


def diffusers_spacing(num_train_steps: int, num_steps: int, spacing: str, steps_offset: int = 0):
  """diffusers' DDPM/DDIM timestep spacings for a T-step discrete DDPM, then 0.

  With T = num_train_steps and N = num_steps, the indices n in {0..T-1} are
    "linspace":  round(linspace(0, T - 1, N)), reversed;
    "leading":   arange(N) * (T // N), reversed, + steps_offset;
    "trailing":  round(arange(T, 0, -T / N)) - 1 (Lin et al. 2024, table 2).
  diffusers' index n is Ho et al.'s step n + 1, which sits at t = (n + 1) / T
  (see schedules.DiscreteDDPM). steps_offset applies to "leading" only, as in
  diffusers. For some N (e.g. T = 1000, N = 61) float rounding in diffusers'
  arange yields an extra trailing index -1; it is dropped here.

  Returns:
    float32 [N + 1]: the times (n + 1) / T followed by 0.
  """
  _check_num_steps(num_steps)
  if num_steps > num_train_steps:
    raise ValueError(f"num_steps ({num_steps}) must not exceed num_train_steps "
                     f"({num_train_steps}) for the {spacing!r} spacing")
  if spacing == "linspace":
    n = np.linspace(0, num_train_steps - 1, num_steps).round()[::-1]
  elif spacing == "leading":
    n = (np.arange(num_steps) * (num_train_steps // num_steps))[::-1] + steps_offset
    if n[0] > num_train_steps - 1 or n[-1] < 0:
      raise ValueError(f"steps_offset={steps_offset} puts the leading indices {n[-1]}..{n[0]} "
                       f"outside 0..{num_train_steps - 1}")
  elif spacing == "trailing":
    n = (np.round(np.arange(num_train_steps, 0, -num_train_steps / num_steps)) - 1)[:num_steps]
  else:
    raise ValueError(f"unknown spacing {spacing!r}; valid: ['leading', 'linspace', 'trailing']")
  return _with_end((n + 1.0) / num_train_steps)


def _ratio_logits(grid):
  """The logits u [N - 1] of (t_k - t_N) / (t_(k-1) - t_N), k = 1..N-1, of a grid [N + 1]."""
  times = np.asarray(grid, np.float64)
  ratios = (times[1:-1] - times[-1]) / (times[:-2] - times[-1])
  return jnp.asarray(np.log(ratios) - np.log1p(-ratios), jnp.float32)


def _grid_from_logits(t_start, t_end, u):
  """[t_start, t_end + (t_start - t_end) prod_(j<=k) sigmoid(u_j) for k = 1..N-1, t_end]:
  strictly decreasing for every u [N - 1]."""
  times = t_end + (t_start - t_end) * jnp.cumprod(jax.nn.sigmoid(u))
  return jnp.concatenate([jnp.full((1,), t_start, jnp.float32), times,
                          jnp.full((1,), t_end, jnp.float32)])


def _check_fit_grid(grid, name):
  times = np.asarray(grid, np.float32)
  if times.ndim != 1 or times.size < 3 or not np.all(np.diff(times) < 0) or times[-1] < 0:
    raise ValueError(f"{name} must be a strictly decreasing [N + 1] grid of times >= 0 with "
                     f"N >= 2, got {times}")
  return times


def refine(grid, num_steps: int):
  """The grid [num_steps + 1] that holds every time of `grid` [N + 1] (N <= num_steps) and
  splits its widest network intervals: each new time is the geometric mean of the two ends
  of the interval [t_k, t_(k-1)], k < N, of the largest ratio t_(k-1) / t_k (the last
  interval, to the end time, is never split: it may end at 0).

  Raises:
    ValueError for a grid that is not strictly decreasing or is longer than num_steps + 1.
  """
  _check_num_steps(num_steps)
  times = [float(t) for t in _check_fit_grid(grid, "grid")]
  if len(times) > num_steps + 1:
    raise ValueError(f"refine adds times: the grid has {len(times) - 1} steps, more than "
                     f"num_steps = {num_steps}")
  while len(times) < num_steps + 1:
    k = max(range(1, len(times) - 1), key=lambda k: times[k - 1] / times[k])
    times.insert(k, math.sqrt(times[k - 1] * times[k]))
  return jnp.asarray(times, jnp.float32)


def learned(sample_fn, x_T, x_ref, init_grid, *, key, starts=(), num_perturbed: int = 1,
            perturbation: float = 0.5, held_out: float = 0.25, smaller=None,
            num_iterations: int = 300, batch_size: int = 256, learning_rate: float = 0.05):
  """The grid whose samples from x_T come closest to x_ref (LD3, Tong et al. 2024), kept
  only where it beats init_grid on held-out pairs.

  Minimises mean_b ||sample_fn(x_T,b, grid) - x_ref,b||^2 over the N - 1 times between
  grid[0] and grid[N] (both kept): each t_k = t_N + (t_(k-1) - t_N) sigmoid(u_k), so every
  step keeps the grid strictly decreasing, and u is fitted by Adam with a cosine-decayed
  learning rate on random batches (steps with a non-finite gradient are skipped). The last
  `held_out` fraction of the pairs is never fitted; it judges. A fit over-fits a few hundred
  pairs and lands in a local minimum that depends on its start, so the fit runs from several
  starts: init_grid, `starts` (other grids with its ends, e.g. other families), and
  num_perturbed copies of init_grid with N(0, perturbation^2) added to its logits u. Every
  start, before and after its fit, is a candidate; the one of lowest held-out error wins,
  so the grid returned is never worse than init_grid on the held-out pairs.

  Monotone in N across a table (`learned_table`): smaller = (grid [M + 1], its held-out RMSE
  on these same pairs) of a fit at M < N steps. Where every candidate here is worse on the
  held-out pairs, one more start is fitted, `refine(grid, N)`: the smaller grid with times
  inserted in its widest intervals, which a convergent sampler integrates no worse.

  Args:
    sample_fn: (x_T [B, ...], grid [N + 1]) -> x_0 [B, ...], differentiable in the grid
      (any sampler of `jaxdiff.samplers`, its key and options bound).
    x_T: [M, ...] starts at init_grid[0], M >= 2.
    x_ref: [M, ...] their reference solutions (e.g. an accurate PF-ODE solve).
    init_grid: [N + 1] the starting grid, strictly decreasing, N >= 2.
    key: PRNG key of the perturbations and the batch draws.
    starts: more starting grids [N + 1] with init_grid's first and last times.
    num_perturbed, perturbation: how many perturbed starts, and their scale in u.
    held_out: the fraction of the pairs (the last ones, at least one) kept to judge.
    smaller: None, or (grid, held-out RMSE) of the fit at fewer steps (see above).
    num_iterations, batch_size, learning_rate: each start's fit budget.

  Returns:
    (grid float32 [N + 1], info): info["rmse_init"], info["rmse"], the root mean squared
    distance per coordinate on the held-out pairs of init_grid and of the grid returned
    (rmse <= rmse_init); info["fit_rmse_init"], info["fit_rmse"], the same on the fitted
    pairs; info["start"], which candidate won ("init", "init fitted", "start 1 fitted",
    "perturbed 1 fitted", "refined from N=M fitted", ...); info["num_held_out"].

  Raises:
    ValueError: on a bad grid, x_T and x_ref of other shapes, or a gradient that is not
      finite at init_grid.
  """
  times = _check_fit_grid(init_grid, "init_grid")
  init_grid = jnp.asarray(times)
  if x_T.shape != x_ref.shape or x_T.shape[0] < 2:
    raise ValueError(f"x_T {x_T.shape} and x_ref {x_ref.shape} must have the same shape, "
                     "with at least 2 pairs")
  if not 0 < held_out < 1:
    raise ValueError(f"held_out must be a fraction in (0, 1), got {held_out!r}")
  x_T, x_ref = jnp.asarray(x_T), jnp.asarray(x_ref)
  num_held = max(1, round(held_out * x_T.shape[0]))
  if num_held >= x_T.shape[0]:
    raise ValueError(f"held_out = {held_out} leaves no pair of {x_T.shape[0]} to fit")
  x_fit, ref_fit = x_T[:-num_held], x_ref[:-num_held]
  x_held, ref_held = x_T[-num_held:], x_ref[-num_held:]
  num_fit = x_fit.shape[0]
  batch_size = min(batch_size, num_fit)
  t_start, t_end = float(times[0]), float(times[-1])
  for i, grid in enumerate(starts, 1):
    other = _check_fit_grid(grid, f"start {i}")
    if other.shape != times.shape or other[0] != times[0] or other[-1] != times[-1]:
      raise ValueError(f"start {i} must have init_grid's length {times.size} and ends "
                       f"{times[0]}, {times[-1]}; got {other}")

  def mean_squared(u, x, x_target):
    x_0 = sample_fn(x, _grid_from_logits(t_start, t_end, u))
    return jnp.mean((x_0 - x_target) ** 2)

  optimizer = optax.apply_if_finite(
      optax.adam(optax.cosine_decay_schedule(learning_rate, num_iterations)),
      max_consecutive_errors=num_iterations)

  @jax.jit
  def fit(u, fit_key):
    def step(carry, step_key):
      u, state = carry
      batch = jax.random.choice(step_key, num_fit, (batch_size,), replace=False)
      grad = jax.grad(mean_squared)(u, x_fit[batch], ref_fit[batch])
      updates, state = optimizer.update(grad, state, u)
      return (optax.apply_updates(u, updates), state), jnp.all(jnp.isfinite(grad))

    (u, _), finite = jax.lax.scan(step, (u, optimizer.init(u)),
                                  jax.random.split(fit_key, num_iterations))
    return u, finite[0]  # Whether the gradient at the start was finite.

  # The RMSE of the held-out and of the fitted pairs from one compilation: chunks of
  # num_held pairs (the last padded by repeating its first row, then dropped).
  @jax.jit
  def squared_errors(u, x, x_target):  # [num_held] mean squared error per pair
    x_0 = sample_fn(x, _grid_from_logits(t_start, t_end, u))
    return jnp.mean((x_0 - x_target) ** 2, axis=tuple(range(1, x.ndim)))

  def rmse_on(u, x, x_target):
    errors = []
    for i in range(0, x.shape[0], num_held):
      chunk, target = x[i:i + num_held], x_target[i:i + num_held]
      pad = num_held - chunk.shape[0]
      chunk, target = (jnp.concatenate([a, jnp.repeat(a[:1], pad, axis=0)])
                       for a in (chunk, target))
      errors.append(squared_errors(u, chunk, target)[:num_held - pad])
    return math.sqrt(float(jnp.mean(jnp.concatenate(errors))))

  def held_rmse(u):
    return rmse_on(u, x_held, ref_held)

  def fit_rmse(u):
    return rmse_on(u, x_fit, ref_fit)

  u_init = _ratio_logits(times)
  perturb_key, fit_key = jax.random.split(key)
  named_starts = [("init", u_init)]
  named_starts += [(f"start {i}", _ratio_logits(grid)) for i, grid in enumerate(starts, 1)]
  named_starts += [(f"perturbed {i}", u_init + perturbation * jax.random.normal(
      jax.random.fold_in(perturb_key, i), u_init.shape)) for i in range(1, num_perturbed + 1)]

  def candidates(named):
    """[(held-out RMSE, name, u)] of each start and of its fit (NaN fits dropped)."""
    found = []
    for i, (name, u) in enumerate(named):
      u_fit, finite = fit(u, jax.random.fold_in(fit_key, i))
      if name == "init" and not finite:
        raise ValueError(f"the gradient of sample_fn in the grid is not finite at init_grid "
                         f"{times} (the sampler is not differentiable in its times there, e.g. "
                         "a square root or ratio that vanishes at the end); learn the grid of "
                         "another sampler")
      found += [(float(held_rmse(u)), name, u), (float(held_rmse(u_fit)), name + " fitted", u_fit)]
    return [c for c in found if math.isfinite(c[0])]

  rmse_init = float(held_rmse(u_init))
  found = candidates(named_starts)  # init_grid first: it wins ties.
  if smaller is not None and min((c[0] for c in found), default=math.inf) > smaller[1]:
    grid, _ = smaller
    found += candidates([(f"refined from N={len(grid) - 1}",
                          _ratio_logits(refine(grid, times.size - 1)))])
  rmse, name, u = min(found, key=lambda c: c[0]) if found else (rmse_init, "init", u_init)
  grid = init_grid if name == "init" else _grid_from_logits(t_start, t_end, u)
  return grid, {"rmse_init": rmse_init, "rmse": rmse, "fit_rmse_init": float(fit_rmse(u_init)),
                "fit_rmse": float(fit_rmse(u)), "start": name, "num_held_out": num_held}


def learned_table(sample_fn, x_T, x_ref, init_grids, *, key, starts=None, on_fit=None,
                  **options):
  """`learned` at several grid lengths, monotone in N: each fit after the first gets the best
  fit at fewer steps as its `smaller`, so a longer grid is refitted from the shorter one
  refined where it did worse on the held-out pairs.

  Args:
    sample_fn, x_T, x_ref, key, options: as for `learned` (the same held-out pairs for all).
    init_grids: the starting grids [N_i + 1], in increasing N_i.
    starts: None, or a list with each init grid's more starts (`learned`'s starts).
    on_fit: None, or a function (i, grid, info) called as each fit ends (a progress bar).

  Returns:
    [(grid [N_i + 1], info)] in the order of init_grids; info["monotone"] says whether the
    held-out RMSE is no worse than at every smaller N (it is unless even the refined grid's
    fit was worse, which a convergent sampler does not do).
  """
  lengths = [len(grid) for grid in init_grids]
  if lengths != sorted(set(lengths)):
    raise ValueError(f"init_grids must have strictly increasing lengths, got {lengths}")
  fits, best = [], None
  for i, init_grid in enumerate(init_grids):
    grid, info = learned(sample_fn, x_T, x_ref, init_grid, key=jax.random.fold_in(key, i),
                         starts=() if starts is None else starts[i], smaller=best, **options)
    info["monotone"] = best is None or info["rmse"] <= best[1]
    if best is None or info["rmse"] < best[1]:
      best = (grid, info["rmse"])
    fits.append((grid, info))
    if on_fit is not None:
      on_fit(i, grid, info)
  return fits


# --------------------------------------------------------------------------
# Dispatch by name: every entry takes (process, num_steps, **options).
# --------------------------------------------------------------------------


def _on_interval(builder):
  """Runs a (t_max, t_min, num_steps) builder on the process's interval by default."""

  def build(process: Process, num_steps, *, t_max=None, t_min=None, end="zero"):
    t_max = process.t_max if t_max is None else t_max
    t_min = process.t_min if t_min is None else t_min
    return builder(t_max, t_min, num_steps, end)

  return build


def _on_train_steps(spacing):
  """Runs diffusers_spacing with T = process.num_steps (discrete DDPMs only)."""

  def build(process: Process, num_steps, *, steps_offset=0):
    num_train_steps = getattr(process, "num_steps", None)
    if num_train_steps is None:
      raise ValueError(f"the {spacing!r} spacing needs a discrete process with num_steps "
                       f"(a DiscreteDDPM), got {type(process).__name__}")
    return diffusers_spacing(num_train_steps, num_steps, spacing, steps_offset)

  return build


GRIDS = {
    "uniform": _on_interval(time_uniform),
    "log_snr": log_snr_uniform,
    "quadratic": _on_interval(time_quadratic),
    "karras": karras,
    "linspace": _on_train_steps("linspace"),
    "leading": _on_train_steps("leading"),
    "trailing": _on_train_steps("trailing"),
}


def make_grid(process: Process, name: str, num_steps: int, **options):
  """Builds the named grid for a process, e.g. make_grid(p, "karras", 18, rho=7.0).

  Options: t_max, t_min and end ("zero" or "t_min") of all but the diffusers
  spacings, rho ("karras"), steps_offset ("leading").

  Returns:
    float32 [num_steps + 1], strictly decreasing, ending at 0 (or at t_min
    with end="t_min").
  """
  if name not in GRIDS:
    raise ValueError(f"unknown grid {name!r}; valid: {sorted(GRIDS)}")
  valid = list(inspect.signature(GRIDS[name]).parameters)[2:]  # After process, num_steps.
  unknown = sorted(set(options) - set(valid))
  if unknown:
    raise ValueError(f"grid {name!r} takes the options {valid}, got unknown {unknown}")
  return GRIDS[name](process, num_steps, **options)


# The lowest log-SNR a default sampling grid starts from (see `default_for`).
LOG_SNR_FLOOR = -10.0


def default_for(process: Process) -> tuple[str, dict]:
  """The grid (name, options) to sample a trained model with when none is asked for.

    "karras"   where alpha = 1 (EDM, VE): Karras et al.'s rho = 7 grid in sigma.
    "log_snr"  where the log-SNR is finite on [t_min, t_max] (the DDPM and VP
               families): DPM-Solver's and UniPC's recommended grid, started no
               lower than lam = LOG_SNR_FLOOR = -10. A linear 1000-step DDPM
               ends at lam(1) = -10.1, but the cosine schedule's clipped last
               betas reach lam(1) = -19.8, where x0 = (x - sigma eps) / alpha
               multiplies the network's error by 1 / alpha ~ 2e4 and multistep
               solvers extrapolate that error; DPM-Solver's code likewise ends
               its continuous cosine schedule at T = 0.9946 (lam = -9.5).
               Sampling starts from N(0, sigma(grid[0])^2).
    "uniform"  otherwise (flow matching, where alpha(t_max) = 0).
  """
  if float(process.alpha(process.t_max)) == 1.0:
    return "karras", {}
  lam_max_t, lam_min_t = (float(process.log_snr(t)) for t in (process.t_max, process.t_min))
  if not (math.isfinite(lam_max_t) and math.isfinite(lam_min_t)):
    return "uniform", {}
  if lam_max_t < LOG_SNR_FLOOR:
    return "log_snr", {"t_max": float(process.t_from_log_snr(LOG_SNR_FLOOR))}
  return "log_snr", {}
