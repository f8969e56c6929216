"""Every default of the oracle job (bench.py --job oracle), in one ConfigDict.

Experiments live beside this file and override only what they change.
"""

import ml_collections


def sampler_run(name, grid, num_steps, **options):
  """One sampler run: sampler name, grid name (jaxdiff.grids.GRIDS), N, sampler options."""
  return ml_collections.ConfigDict(
      {"name": name, "grid": grid, "num_steps": num_steps, "options": options})


def get_config():
  config = ml_collections.ConfigDict()
  config.seed = 0

  # The forward process: jaxdiff.schedules.make_process(process, **process_options).
  config.process = "ddpm"
  config.process_options = ml_collections.ConfigDict({"schedule": "linear", "num_steps": 1000})
  # What the denoiser predicts (jaxdiff.parameterization.PREDICTIONS).
  config.prediction = "eps"

  # Data: the analytic oracle, a ring of Gaussians (jaxdiff.oracle.ring).
  config.oracle = ml_collections.ConfigDict({"num_modes": 8, "radius": 0.7, "std": 0.08, "dim": 2})
  config.num_samples = 4000

  config.samplers = (
      sampler_run("ddpm", "leading", 1000, variance="beta_tilde"),
      sampler_run("ddpm", "leading", 1000, variance="beta"),
      sampler_run("ddpm", "trailing", 100, variance="beta_tilde"),
      sampler_run("ddim", "trailing", 100, eta=0.0),
      sampler_run("ddim", "trailing", 20, eta=0.0),
      sampler_run("ddim", "trailing", 10, eta=0.0),
  )
  return config
