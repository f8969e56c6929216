"""A seconds-long oracle job (bench.py --job oracle) for tests: two short sampler runs."""

from configs import base


def get_config():
  config = base.get_config()
  config.num_samples = 256
  config.samplers = (base.sampler_run("ddpm", "trailing", 20, variance="beta"),
                     base.sampler_run("ddim", "trailing", 10, eta=0.0))
  return config
