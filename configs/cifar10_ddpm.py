"""Ho et al. 2020 on CIFAR-10 (sec. 4, app. B): the 35.7M U-Net with dropout 0.1,
linear betas 1e-4 to 0.02 over T = 1000, L_simple, Adam at 2e-4 with 5000 warm-up
steps, gradient clipping at 1, batch 128, EMA 0.9999, random horizontal flips,
800k steps. Data from tensorflow-datasets (pip install -e '.[data]')."""

from configs import train_base


def get_config():
  config = train_base.get_config()
  config.num_steps = 800_000
  config.batch_size = 128
  config.checkpoint_every = 10_000
  config.log_every = 100
  config.sample_every = 10_000
  config.data.source = "tfds"
  config.data.options = {"name": "cifar10", "split": "train"}
  config.data.random_flip = True
  config.process_options = {"schedule": "linear", "num_steps": 1000}
  config.model.options = {}  # UNet's defaults: Ho et al.'s CIFAR-10 model.
  config.optim.learning_rate = 2e-4
  config.optim.warmup_steps = 5000
  config.optim.schedule = "constant"
  config.optim.end_learning_rate = 0.0
  config.ema.decays = (0.9999,)
  config.samples.num = 64
  return config
