"""Latent diffusion's second stage on Fashion-MNIST (Rombach et al. 2022, sec. 3.3): a
class-conditional U-Net trained as EDM (Karras et al. 2022, configs/train_base.use_edm) on
the 7x7x4 latents of configs/fashion_mnist_autoencoder.py, encoded once by encode.py:

  python3 train.py --config configs/fashion_mnist_autoencoder.py --workdir runs/fm-ae
  python3 encode.py --autoencoder runs/fm-ae --out runs/fm-latents
  python3 train.py --config configs/fashion_mnist_latent.py --workdir runs/fm-latent
  python3 sample.py --checkpoint runs/fm-latent --evaluate yes

The defaults name those folders; others with --config.autoencoder.checkpoint DIR and
--config.data.options.path DIR. The data's records are x_latent = scaling (z - shift) with
z ~ q(z | x) drawn afresh every epoch; trainer.prepare refuses latents that another
autoencoder encoded. The samples (the pictures, sample.py) are decoded by the autoencoder.

The network: 7 is odd, so one level (no downsampling) of 2 residual blocks with attention
at 7x7 (49 tokens), ch 128. The pixel-space comparison at the same CPU time, the
autoencoder's training counted: configs/fashion_mnist_pixel.py."""

from configs import train_base


def get_config():
  config = train_base.use_edm(train_base.get_config())
  config.num_steps = 4000
  config.batch_size = 128
  config.checkpoint_every = 1000
  config.sample_every = 1000
  config.data.source = "latents"
  config.data.options = {"path": "runs/fm-latents"}
  config.autoencoder.checkpoint = "runs/fm-ae"
  config.model.options = {"ch": 128, "ch_mult": (1,), "num_res_blocks": 2,
                          "attn_resolutions": (7,), "num_groups": 16, "dropout": 0.0,
                          "time_scale": 1.0}
  config.model.conditional = True
  config.optim.learning_rate = 1e-3
  config.optim.warmup_steps = 200
  config.ema.decays = (0.999,)
  return config
