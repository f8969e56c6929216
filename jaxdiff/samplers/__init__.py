"""Samplers: pure functions (denoise_fn, process, x_T, key, grid, *, options) -> (x_0, info).

Each family lives in its own module; SAMPLERS is the one registry. Every entry
pairs the sampler with its rule num_steps(nfe, **options) -> N, the grid length
that spends exactly `nfe` network evaluations (ValueError where none does).
"""

from typing import Callable, NamedTuple

from jaxdiff.samplers.ddim import ddim, ddim_num_steps
from jaxdiff.samplers.ddpm import ddpm, ddpm_num_steps
from jaxdiff.samplers.loop import raise_if_nonfinite


class Sampler(NamedTuple):
  fn: Callable
  num_steps: Callable


SAMPLERS = {
    "ddpm": Sampler(ddpm, ddpm_num_steps),
    "ddim": Sampler(ddim, ddim_num_steps),
}


def get_sampler(name: str) -> Sampler:
  """The sampler registered under `name`, with its NFE rule."""
  if name not in SAMPLERS:
    raise ValueError(f"unknown sampler {name!r}; valid: {sorted(SAMPLERS)}")
  return SAMPLERS[name]
