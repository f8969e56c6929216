"""The oracle job on the continuous VP SDE (Song et al. 2021) with continuous-time grids."""

from configs import base


def get_config():
  config = base.get_config()
  config.process = "vp"
  config.process_options = {}
  config.samplers = (
      base.sampler_run("ddpm", "uniform", 1000, variance="beta_tilde"),
      base.sampler_run("ddim", "uniform", 100, eta=0.0),
      base.sampler_run("ddim", "uniform", 20, eta=0.0),
      base.sampler_run("ddim", "log_snr", 20, eta=0.0),
  )
  return config
