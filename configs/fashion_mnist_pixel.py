"""The pixel-space comparison of configs/fashion_mnist_latent.py: a class-conditional U-Net
trained as EDM (Karras et al. 2022) on the 28x28 Fashion-MNIST images themselves, for the
same total CPU time as the latent path (the autoencoder's training,
configs/fashion_mnist_autoencoder.py, counted against the latent model). Both are judged by
sample.py --evaluate yes: the Frechet distance in the evaluation classifier's features.

The network is configs/fashion_mnist.py's (three levels, 28, 14, 7, attention at 14x14)
without dropout; num_steps is what fits the latent path's CPU time at the step times
measured on a 2-core CPU (docs/latent.md)."""

from configs import train_base


def get_config():
  config = train_base.use_edm(train_base.get_config())
  config.num_steps = 2000
  config.batch_size = 128
  config.checkpoint_every = 500
  config.sample_every = 500
  config.data.source = "idx"
  config.data.options = {"split": "train"}
  config.model.options = {"ch": 64, "ch_mult": (1, 2, 2), "num_res_blocks": 2,
                          "attn_resolutions": (14,), "num_groups": 16, "dropout": 0.0,
                          "time_scale": 1.0}
  config.model.conditional = True
  config.optim.learning_rate = 1e-3
  config.optim.warmup_steps = 200
  config.ema.decays = (0.999,)
  return config
