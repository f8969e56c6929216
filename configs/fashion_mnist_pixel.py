"""The pixel-space model that configs/fashion_mnist_latent.py is measured against: EDM
(Karras et al. 2022, as configs/digits.py) on 28x28 Fashion-MNIST images, class-conditional,
a U-Net of three levels (28, 14, 7) with attention at 7x7, sized for a 2-core CPU. The
comparison gives both the same total CPU time, the autoencoder's training counted against
the latent model (docs/latent.md)."""

from configs import train_base


def get_config():
  config = train_base.use_edm(train_base.get_config())
  config.num_steps = 3000
  config.batch_size = 64
  config.checkpoint_every = 1000
  config.sample_every = 1000
  config.data.source = "idx"
  config.data.options = {"split": "train"}
  config.model.options = {"ch": 32, "ch_mult": (1, 2, 2), "num_res_blocks": 1,
                          "attn_resolutions": (7,), "num_groups": 8, "dropout": 0.0,
                          "time_scale": 1.0}
  config.model.conditional = True
  config.optim.learning_rate = 1e-3
  config.optim.schedule = "constant"  # Any checkpoint is a finished model: budgets cut runs.
  config.ema.decays = (0.999,)
  return config
