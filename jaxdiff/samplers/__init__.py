"""Samplers: pure functions (denoise_fn, process, x_T, key, grid, *, options) -> (x_0, info).

Each family lives in its own module; this dict is the one registry.
"""

from jaxdiff.samplers.ddim import ddim
from jaxdiff.samplers.ddpm import ddpm
from jaxdiff.samplers.loop import raise_if_nonfinite

SAMPLERS = {
    "ddpm": ddpm,
    "ddim": ddim,
}


def get_sampler(name: str):
  """The sampler function registered under `name`."""
  if name not in SAMPLERS:
    raise ValueError(f"unknown sampler {name!r}; valid: {sorted(SAMPLERS)}")
  return SAMPLERS[name]
