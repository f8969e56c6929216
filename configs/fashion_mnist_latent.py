"""Latent diffusion on Fashion-MNIST (Rombach et al. 2022): EDM (Karras et al. 2022, as
configs/digits.py) on the 7x7x4 latents of configs/fashion_mnist_autoencoder.py's
autoencoder, class-conditional, a one-level U-Net (7x7 does not halve) of two residual
blocks with attention, constant learning rate (any checkpoint is a finished model). The
latents: `python3 encode.py --autoencoder runs/fm-ae --out runs/fm-latents`, scaled to
std 0.5 (jaxdiff.train.encode_run). The same total CPU time as configs/fashion_mnist_pixel.py,
the autoencoder's training included: docs/latent.md."""

from configs import train_base


def get_config():
  config = train_base.use_edm(train_base.get_config())
  config.num_steps = 3000
  config.batch_size = 128
  config.checkpoint_every = 500
  config.sample_every = 1000
  config.data.source = "latents"
  config.data.options = {"path": "runs/fm-latents"}
  config.autoencoder.checkpoint = "runs/fm-ae"
  config.model.options = {"ch": 64, "ch_mult": (1,), "num_res_blocks": 2,
                          "attn_resolutions": (7,), "num_groups": 8, "dropout": 0.0,
                          "time_scale": 1.0}
  config.model.conditional = True
  config.optim.learning_rate = 1e-3
  config.optim.schedule = "constant"
  config.ema.decays = (0.999,)
  return config
