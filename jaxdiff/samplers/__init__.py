"""Samplers: pure functions (denoise_fn, process, x_T, key, grid, *, options) -> (x_0, info).

Each family lives in its own module; SAMPLERS is the one registry. Every entry
pairs the sampler with its rule num_steps(nfe, **options) -> N, the grid length
that spends exactly `nfe` network evaluations (ValueError where none does).

What every sampler checks (`loop.check_inputs`), and when: the grid's shape
(1-D, at least two times) always; its values (finite, strictly decreasing,
inside the process's time domain) and x_T's (no NaN or inf) only where they
are concrete. Inside jit they are traced and pass unchecked, so call
`check_grid(grid, process)` and `check_x_T(x_T)` once outside jit (sample.py
and the benchmark do): that costs nothing per step. A key of None is accepted
where no noise is drawn (DDIM with eta = 0, EDM without churn, the ODE
solvers) and refused with a clear error where noise is drawn.
"""

import inspect
from typing import Callable, NamedTuple

from jaxdiff.samplers import ode, pc
from jaxdiff.samplers.base import Sampler
from jaxdiff.samplers.ddim import ddim
from jaxdiff.samplers.ddpm import ddpm
from jaxdiff.samplers.deis import deis
from jaxdiff.samplers.dpm_solver import dpm_solver, dpm_solver_sde
from jaxdiff.samplers.dpm_solver_3m_sde import dpm_solver_3m_sde
from jaxdiff.samplers.edm import edm_heun
from jaxdiff.samplers.ipndm import ipndm
from jaxdiff.samplers.restart import restart
from jaxdiff.samplers.sa_solver import sa_solver
from jaxdiff.samplers.unipc import unipc
# Re-exported for callers: the input checks and the host-side NaN report.
from jaxdiff.samplers.base import check_grid, check_x_T, raise_if_nonfinite


class _Unported(NamedTuple):  # Issue 24: removed once every sampler runs on `base`.
  fn: Callable
  num_steps: Callable


SAMPLERS = {
    "ddpm": ddpm,
    "ddim": ddim,
    "euler_maruyama": pc.euler_maruyama,
    "reverse_diffusion": pc.reverse_diffusion,
    "pc": pc.pc,
    "euler": ode.euler,
    "heun": ode.heun,
    "rk4": ode.rk4,
    "adaptive": ode.adaptive,
    "edm_heun": edm_heun,
    "ipndm": ipndm,
    "dpm_solver": dpm_solver,
    "dpm_solver_sde": dpm_solver_sde,
    "unipc": unipc,
    "restart": restart,
    "dpm_solver_3m_sde": dpm_solver_3m_sde,
    "deis": deis,
    "sa_solver": sa_solver,
}


def get_sampler(name: str) -> Sampler:
  """The sampler registered under `name`, with its NFE rule."""
  if name not in SAMPLERS:
    raise ValueError(f"unknown sampler {name!r}; valid: {sorted(SAMPLERS)}")
  return SAMPLERS[name]


def check_options(name: str, options) -> None:
  """Raises ValueError for an unknown option, a wrong type or a value out of range."""
  sampler = get_sampler(name)
  if isinstance(sampler, Sampler):
    sampler.resolve(dict(options))
    return
  """Raises ValueError unless every key of `options` is a keyword of sampler `name`.

  Only the names are checked here; values are checked when the sampler is
  traced (jax.eval_shape on it checks them without compiling).
  """
  parameters = inspect.signature(get_sampler(name).fn).parameters.values()
  valid = [p.name for p in parameters if p.kind is inspect.Parameter.KEYWORD_ONLY]
  unknown = sorted(set(options) - set(valid))
  if unknown:
    raise ValueError(f"sampler {name!r} takes the options {valid}, got unknown {unknown}")


def num_steps_for(name: str, nfe: int, options=None, *, ends_at_zero: bool = True) -> int:
  """Grid length N at which sampler `name` with `options` spends exactly `nfe`
  network calls on a grid whose end has sigma = 0 (ends_at_zero, e.g.
  `grids.make_grid`'s default end) or sigma > 0 (end="t_min"): its registry
  rule, given the options it takes. Samplers not yet on `base` ignore
  ends_at_zero.

  Raises:
    ValueError where no N does, naming the NFE values that work.
  """
  if isinstance(get_sampler(name), Sampler):
    return get_sampler(name).num_steps(nfe, options, ends_at_zero=ends_at_zero)
  rule = get_sampler(name).num_steps
  parameters = inspect.signature(rule).parameters
  options = dict(options or {})
  if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
    options = {k: v for k, v in options.items() if k in parameters}
  return rule(nfe, **options)
