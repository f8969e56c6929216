"""A residual MLP on a 2-D toy set (FFJORD's checkerboard by default; moons,
swissroll, 8gaussians in jaxdiff.data.TOY_SETS): seconds per hundred steps on a
CPU. The points lie within about +-4, so the DDPM prior N(0, 1) is narrower than
the data; the process is unchanged (the network learns the map)."""

from configs import train_base


def get_config():
  config = train_base.get_config()
  config.num_steps = 3000
  config.batch_size = 256
  config.checkpoint_every = 1000
  config.sample_every = 1000
  config.data.source = "toy"
  config.data.options = {"name": "checkerboard"}
  config.model.name = "mlp"
  config.model.options = {"features": 256, "num_blocks": 3}
  config.optim.learning_rate = 1e-3
  config.optim.warmup_steps = 100
  config.ema.decays = (0.999,)
  config.samples.num = 2000
  return config
