"""Post-hoc EMA: power-function EMAs tracked during training, their snapshots, and the EMA
of any length reconstructed from them afterwards.

Karras et al. 2024, "Analyzing and Improving the Training Dynamics of Diffusion
Models" (EDM2), section 3 and appendix C. Steps t count optimizer updates (EDM2
counts images; a constant batch makes the two proportional, and every formula
below depends on ratios of times only).

  profile     the power-function EMA of exponent gamma averages the iterates
              theta_tau, tau in (0, t], with the density (eq. 121)
                  p_t(tau) = (gamma + 1) tau^gamma / t^(gamma + 1),
              tracked by theta_ema <- beta_t theta_ema + (1 - beta_t) theta_t with
                  beta_t = (1 - 1/t)^(gamma + 1)                          (eq. 127)
              after update t = 1, 2, ...: theta_tau's weight is then exactly the
              mass of p_t on [tau - 1, tau].
  sigma_rel   its length: the profile's standard deviation relative to the training
              time t (the standard deviation of p_1),
                  sigma_rel = sqrt((gamma + 1) / ((gamma + 2)^2 (gamma + 3)))  (eq. 123),
              inverted as the largest real root of
                  gamma^3 + 7 gamma^2 + (16 - sigma_rel^-2) gamma + 12 - sigma_rel^-2
              (eq. 126, algorithm 2); gamma > 0 (where that root is the only
              positive one) is sigma_rel in (0, 12^-1/2 = 0.2887).
  snapshots   the tracked EMAs' parameters saved every snapshot_every steps (and at
              the end) under <workdir>/phema/<step>/, one Orbax item per sigma_rel,
              never pruned; a resumed run skips the steps already saved (they are
              what it would write again: a resumed run is bitwise the
              uninterrupted one).
  reconstruction
              the target profile p* (sigma_rel*, at step t*) as the least-squares
              combination sum_i x_i p_i of the snapshots' profiles in L2 (appendix
              C.3, algorithm 3): A x = b with A_ij = <p_i, p_j>, b_i = <p_i, p*>,
              the inner products in closed form (eq. 151): for t_a <= t_b,
                  <p_a, p_b> = (gamma_a + 1)(gamma_b + 1) / (gamma_a + gamma_b + 1)
                               * (t_a / t_b)^gamma_b / t_b;
              x rescaled to sum to 1 (as EDM2's code does) so that the result is an
              average; then theta* = sum_i x_i theta_i, the same linear map of the
              training iterates as the EMA it stands for, up to the profile's error.
  range       a target is refused when the reconstructed profile misses the target
              by more than PROFILE_TOLERANCE in relative L2 norm,
              |sum_i x_i p_i - p*| / |p*| (closed form too); which sigma_rels pass
              depends on the tracked lengths and the snapshot cadence (0.05 and
              0.10 tracked, at the end of a run with snapshots every 1/15 of it:
              0.029 to 0.23; every 1/6: 0.040 to 0.14; the final snapshots alone:
              0.044 to 0.063 and 0.082 to 0.11), and the error names them.
"""

import dataclasses
import math
import pathlib
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from jaxdiff.train import checkpoint

DIRECTORY = "phema"  # <workdir>/phema/<step>/<sigma_rel>/: the snapshots.
RECORD = "record"  # JSON beside them: the sigma_rels and every array's checksum.
MAX_SIGMA_REL = 12 ** -0.5  # gamma = 0: a uniform average of the whole run.
PROFILE_TOLERANCE = 0.05  # Largest relative L2 error of a reconstructed profile.


def sigma_rel_to_gamma(sigma_rel) -> np.ndarray:
  """The exponent gamma of the power-function EMA of relative width sigma_rel (eq. 126),
  float64 on the host: the largest real root of the cubic in gamma.

  Raises:
    ValueError unless 0 < sigma_rel < 12^-1/2.
  """
  sigma_rel = np.asarray(sigma_rel, np.float64)
  if not np.all((sigma_rel > 0) & (sigma_rel < MAX_SIGMA_REL)):
    raise ValueError(f"a power-function EMA's sigma_rel must lie in (0, {MAX_SIGMA_REL:.4f}) "
                     f"(gamma > 0; 12^-1/2 is a uniform average), got {sigma_rel.tolist()}")
  c = sigma_rel.ravel() ** -2.0
  gamma = [np.roots([1.0, 7.0, 16.0 - ci, 12.0 - ci]).real.max() for ci in c]
  return np.asarray(gamma, np.float64).reshape(sigma_rel.shape)


def gamma_to_sigma_rel(gamma) -> np.ndarray:
  """The relative standard deviation of the profile t^gamma on [0, 1] (eq. 123)."""
  gamma = np.asarray(gamma, np.float64)
  return np.sqrt((gamma + 1) / ((gamma + 2) ** 2 * (gamma + 3)))


def beta(gamma: float, t) -> jax.Array:
  """The decay after update t = 1, 2, ... (eq. 127), float32 inside the train step:
  (1 - 1/t)^(gamma + 1) as exp((gamma + 1) log1p(-1/t)), exact to float32 at any t."""
  t = jnp.asarray(t, jnp.float32)
  return jnp.exp(jnp.float32(gamma + 1.0) * jnp.log1p(-1.0 / t))


def profile(t: float, gamma: float, tau) -> np.ndarray:
  """p_t(tau) (eq. 121): the weight density over the iterates tau in [0, t]; 0 after t."""
  tau = np.asarray(tau, np.float64)
  return np.where(tau <= t, (gamma + 1) * (tau / t) ** gamma / t, 0.0)


def inner_products(t_a, gamma_a, t_b, gamma_b) -> np.ndarray:
  """<p_a, p_b> = integral of p_a p_b over tau (eq. 151), broadcast over the arguments."""
  t_a, gamma_a, t_b, gamma_b = (np.asarray(v, np.float64) for v in (t_a, gamma_a, t_b, gamma_b))
  longer = np.maximum(t_a, t_b)
  # (shorter / longer)^gamma of the longer profile, over the longer time.
  ratio = np.minimum(t_a, t_b) / longer
  gamma_longer = np.where(t_a <= t_b, gamma_b, gamma_a)
  return ((gamma_a + 1) * (gamma_b + 1) / (gamma_a + gamma_b + 1)
          * ratio ** gamma_longer / longer)


def coefficients(steps, sigma_rels, target_step: float, target_sigma_rel: float
                 ) -> tuple[np.ndarray, float]:
  """(x [n], profile error): the snapshots' weights whose profiles' combination best
  matches the target's in L2 (algorithm 3), summing to 1, and the relative L2 error
  |sum_i x_i p_i - p*| / |p*| of that combination.

  Args:
    steps, sigma_rels: [n] each snapshot's step (> 0) and sigma_rel.
  """
  t = np.asarray(steps, np.float64)
  g = sigma_rel_to_gamma(np.asarray(sigma_rels, np.float64))
  g_target = float(sigma_rel_to_gamma(target_sigma_rel))
  A = inner_products(t[:, None], g[:, None], t[None, :], g[None, :])  # [n, n]
  b = inner_products(t, g, target_step, g_target)  # [n]
  x = np.linalg.solve(A, b)
  x = x / np.sum(x)
  norm2 = float(inner_products(target_step, g_target, target_step, g_target))
  residual2 = norm2 - 2 * x @ b + x @ A @ x
  return x, math.sqrt(max(residual2, 0.0) / norm2)


def representable(steps, sigma_rels, target_step: float, num: int = 400
                  ) -> list[tuple[float, float]]:
  """The intervals of target sigma_rels whose reconstruction at target_step from these
  snapshots stays within PROFILE_TOLERANCE, on a log grid of num points over
  (0.001, 12^-1/2); empty where none does."""
  grid = np.geomspace(1e-3, MAX_SIGMA_REL * 0.999, num)
  good = [coefficients(steps, sigma_rels, target_step, s)[1] <= PROFILE_TOLERANCE
          for s in grid]
  intervals = []
  for i, ok in enumerate(good):
    if ok and (i == 0 or not good[i - 1]):
      intervals.append([float(grid[i]), float(grid[i])])
    elif ok:
      intervals[-1][1] = float(grid[i])
  return [tuple(interval) for interval in intervals]


@dataclasses.dataclass(frozen=True)
class Snapshot:
  """One saved power-function EMA: its step, its sigma_rel, and how to read its params."""

  step: int
  sigma_rel: float
  read: Callable[[], Any]  # () -> the parameters (a pytree of arrays).


def reconstruct(snapshots: Sequence[Snapshot], target_sigma_rel: float,
                target_step: int | None = None):
  """The parameters of the power-function EMA of length target_sigma_rel at target_step
  (default the last snapshot's step): sum_i x_i theta_i over the snapshots (`coefficients`),
  accumulated in float64 on the host reading one snapshot at a time, returned as float32.

  Raises:
    ValueError when the snapshots cannot represent the target (`check`).
  """
  target_step = max(s.step for s in snapshots) if target_step is None else target_step
  used = [s for s in snapshots if 0 < s.step <= target_step]
  x = check(used, target_sigma_rel, target_step)
  total = None
  for x_i, snapshot in zip(x, used):
    params = jax.tree.map(lambda a: np.asarray(a, np.float64), jax.device_get(snapshot.read()))
    term = jax.tree.map(lambda a, x_i=x_i: x_i * a, params)
    total = term if total is None else jax.tree.map(np.add, total, term)
  return jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), total)


def check(snapshots: Sequence[Snapshot], target_sigma_rel: float, target_step: int
          ) -> np.ndarray:
  """The coefficients of `reconstruct`, after refusing what the snapshots cannot represent.

  Raises:
    ValueError naming the target and the range of sigma_rels these snapshots can
    represent at target_step.
  """
  if not snapshots:
    raise ValueError(f"no post-hoc EMA snapshot at or before step {target_step}")
  sigma_rel_to_gamma(target_sigma_rel)  # Refuses one outside (0, 12^-1/2).
  steps = [s.step for s in snapshots]
  sigma_rels = [s.sigma_rel for s in snapshots]
  x, error = coefficients(steps, sigma_rels, target_step, target_sigma_rel)
  if error > PROFILE_TOLERANCE:
    spans = representable(steps, sigma_rels, target_step)
    can = " and ".join(f"[{low:.3f}, {high:.3f}]" for low, high in spans)
    can = f"sigma_rel in {can}" if spans else "no sigma_rel"
    raise ValueError(
        f"the post-hoc EMA snapshots (sigma_rel {sorted(set(sigma_rels))}, "
        f"{len(set(steps))} steps up to {max(steps)}) cannot represent sigma_rel "
        f"{target_sigma_rel} at step {target_step}: its reconstructed profile misses by "
        f"{error:.1%} (at most {PROFILE_TOLERANCE:.0%} allowed); they can represent {can}")
  return x


# --------------------------------------------------------------------------
# Snapshots on disk: <workdir>/phema/<step>/{<sigma_rel>, record}.
# --------------------------------------------------------------------------


def item_name(sigma_rel: float) -> str:
  """The Orbax item of one sigma_rel in a snapshot folder: the number as written, "0.05"."""
  return repr(float(sigma_rel))


def manager(workdir, sigma_rels) -> ocp.CheckpointManager:
  """The CheckpointManager of <workdir>/phema: every step kept, written asynchronously."""
  return checkpoint.manager(workdir, keep=None, directory=DIRECTORY,
                            items=(*map(item_name, sigma_rels), RECORD))


def save(snapshots: ocp.CheckpointManager, step: int, emas: dict):
  """Starts writing snapshot `step` of emas {sigma_rel: params}, unless it exists (a
  resumed run reached it before: what it holds is what this run would write).

  Raises:
    FloatingPointError naming the arrays that hold a NaN or inf: nothing is written.
    checkpoint.WriteError when a write failed.
  """
  if step in snapshots.all_steps():
    return
  items, checksums = {}, {}
  for sigma_rel, params in emas.items():
    finite, checksums[item_name(sigma_rel)] = checkpoint.fingerprint(params)
    bad = [name for name, ok in finite.items() if not ok]
    if bad:
      raise FloatingPointError(f"the power-function EMA of sigma_rel {sigma_rel} holds NaN or "
                               f"inf at step {step} (in {bad[0]}); training stopped")
    items[item_name(sigma_rel)] = ocp.args.StandardSave(params)
  try:
    snapshots.save(step, args=ocp.args.Composite(**items, **{RECORD: ocp.args.JsonSave(
        {"sigma_rels": [float(s) for s in emas], checkpoint.CHECKSUMS: checksums})}))
  except (OSError, ValueError, RuntimeError) as error:
    raise checkpoint.WriteError(f"cannot write a post-hoc EMA snapshot in "
                                f"{snapshots.directory}: {str(error).splitlines()[0]}") from None


def saved(workdir, abstract_params=None) -> list[Snapshot]:
  """The complete snapshots under <workdir>/phema (oldest first), each read on demand onto
  abstract_params' structure (leaves without a sharding on this process's first device;
  None: as saved), verified against the checksums recorded with it."""
  folder = pathlib.Path(workdir).absolute() / DIRECTORY
  found = []
  for step_dir in sorted((p for p in folder.glob("*") if p.name.isdigit()
                          and (p / RECORD).is_dir()), key=lambda p: int(p.name)):
    record = checkpoint.read_run(step_dir, RECORD)
    for sigma_rel in record["sigma_rels"]:
      found.append(Snapshot(int(step_dir.name), float(sigma_rel), _reader(
          step_dir, item_name(sigma_rel), record, abstract_params)))
  return found


def _reader(step_dir, item, record, abstract_params):
  def read():
    params = checkpoint.restore_arrays(step_dir / item, abstract_params)
    checkpoint.verify(step_dir / item, params, record[checkpoint.CHECKSUMS][item])
    return params

  return read
