"""The first stage of latent diffusion on Fashion-MNIST (Rombach et al. 2022, sec. 3): a
KL autoencoder (diffusers' AutoencoderKL architecture) from 28x28x1 images to 7x7x4
latents (f = 4, two downsamplings), trained with L1 reconstruction plus 1e-6 KL, the
paper's weight, sized to train in minutes on a 2-core CPU. Then encode the data
(encode.py) and train configs/fashion_mnist_latent.py on the latents."""

from configs import train_base


def get_config():
  config = train_base.get_config()
  config.num_steps = 1200
  config.batch_size = 32
  config.checkpoint_every = 400
  config.sample_every = 400
  config.samples.num = 32  # Reconstructions pictured beside their images.
  config.data.source = "idx"
  config.data.options = {"split": "train"}
  config.model.name = "autoencoder_kl"
  config.model.options = {"block_out_channels": (16, 32, 32), "layers_per_block": 1,
                          "latent_channels": 4, "norm_num_groups": 8}
  config.loss = {"reconstruction": "l1", "kl_weight": 1e-6}
  config.optim.learning_rate = 1e-3
  config.optim.warmup_steps = 100
  config.ema.decays = (0.999,)
  return config
