"""Samplers: registry entries (`base.Sampler`), each called as

    entry(denoise_fn, process, x_T, key, grid, *, cond=None, prediction="eps",
          clip_x0=False, **options) -> (x_0, info).

Each family lives in its own module as an init and a step function run by
`base.scan`; SAMPLERS is the one registry. An entry declares its options
(types, defaults, allowed values), its order, whether it draws noise and its
NFE rule, so callers read the entry instead of a signature:
`check_options(name, options)` checks options before anything is traced, and
`num_steps_for(name, nfe, options, ends_at_zero=...)` gives the grid length N
that spends exactly `nfe` network calls (a ValueError naming the NFE values
that work where none does). See `base` for what every sampler checks, and
when.
"""

from jaxdiff.samplers import ode, pc
from jaxdiff.samplers.consistency import consistency
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
# Re-exported for callers: the contract, the input checks and the host-side NaN report.
from jaxdiff.samplers.base import Sampler, check_grid, check_x_T, raise_if_nonfinite

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
    "consistency": consistency,
}


def get_sampler(name: str) -> Sampler:
  """The sampler registered under `name`."""
  if name not in SAMPLERS:
    raise ValueError(f"unknown sampler {name!r}; valid: {sorted(SAMPLERS)}")
  return SAMPLERS[name]


def check_options(name: str, options) -> None:
  """Raises ValueError for an unknown option, a wrong type or a value out of range."""
  get_sampler(name).resolve(dict(options))


def num_steps_for(name: str, nfe: int, options=None, *, ends_at_zero: bool = True) -> int:
  """Grid length N at which sampler `name` with `options` spends exactly `nfe`
  network calls on a grid whose end has sigma = 0 (ends_at_zero, `grids.make_grid`'s
  default end) or sigma > 0 (end="t_min").

  Raises:
    ValueError where no N does, naming the NFE values that work.
  """
  return get_sampler(name).num_steps(nfe, options, ends_at_zero=ends_at_zero)
