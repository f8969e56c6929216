"""A seconds-long NFE benchmark for tests and the README: the 2-D ring, three NFEs."""

from configs import benchmark


def get_config():
  config = benchmark.get_config()
  config.num_samples = 256
  config.oracles = config.oracles[:1]  # The ring.
  config.nfes = (5, 10, 20)
  config.samplers = (
      benchmark.sampler("ddim", "trailing"),
      benchmark.sampler("ddpm", "trailing"),  # Stochastic: its rmse is marked.
  )
  config.peers = (
      benchmark.peer("DDIMScheduler", timestep_spacing="trailing"),
      benchmark.peer("DPMSolverMultistepScheduler"),
  )
  return config
