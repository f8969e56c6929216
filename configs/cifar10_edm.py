"""Karras et al. 2022 (EDM) on CIFAR-10, their unconditional VP-architecture run
(Table 7, config F): sigma from ln sigma ~ N(-1.2, 1.2^2), preconditioning and
loss weight of Table 1 (sigma_data 0.5), DDPM++ U-Net, dropout 0.13, Adam at
1e-3 with 10M-image ramp-up, batch 512, EMA half-life 0.5 Mimg (decay
0.5^(512 / 500k) per step), 200 Mimg (390k steps). Their non-leaky augmentation
is left out. The network sees c_noise = ln(sigma) / 4 itself (time_scale 1)."""

from configs import cifar10_ddpm, train_base


def get_config():
  config = cifar10_ddpm.get_config()
  config.num_steps = 390_000
  config.batch_size = 512
  train_base.use_edm(config)
  config.model.options = {"num_res_blocks": 4, "resblock_updown": True, "skip_rescale": True,
                          "dropout": 0.13, "time_scale": 1.0}
  config.optim.learning_rate = 1e-3
  config.optim.warmup_steps = 10_000_000 // 512
  config.ema.decays = (0.5 ** (512 / 500_000),)
  config.samples.sampler = "edm_heun"
  config.samples.nfe = 35
  return config
