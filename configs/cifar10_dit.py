"""A class-conditional DiT-S/2 on CIFAR-10 pixels (Peebles & Xie 2023 train on
latents; here 32x32x3 pixels, 256 tokens of 2x2 patches): linear betas, L_simple,
AdamW at 1e-4 without weight decay, batch 256, EMA 0.9999, label dropout 0.1,
learn_sigma off (the hybrid loss is not implemented)."""

from configs import cifar10_ddpm


def get_config():
  config = cifar10_ddpm.get_config()
  config.batch_size = 256
  config.model.name = "dit"
  config.model.options = {"size": "S/2", "learn_sigma": False}
  config.model.conditional = True
  config.optim.learning_rate = 1e-4
  config.optim.warmup_steps = 0
  config.optim.grad_clip = None
  config.samples.guidance = 4.0
  return config
