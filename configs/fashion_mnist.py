"""Fashion-MNIST (28x28, 10 classes) from the IDX files Debian's dataset-fashion-mnist
installs, class-conditional for classifier-free guidance. 28 is divisible by 4, so
the U-Net has three levels (28, 14, 7) with attention at 14x14."""

from configs import train_base


def get_config():
  config = train_base.get_config()
  config.num_steps = 20000
  config.checkpoint_every = 2000
  config.sample_every = 2000
  config.data.source = "idx"
  config.data.options = {"split": "train"}
  config.model.options = {"ch": 64, "ch_mult": (1, 2, 2), "num_res_blocks": 2,
                          "attn_resolutions": (14,), "num_groups": 16, "dropout": 0.1}
  config.model.conditional = True
  config.optim.learning_rate = 2e-4
  config.optim.warmup_steps = 1000
  config.optim.schedule = "constant"
  config.ema.decays = (0.9995,)
  return config
