"""Song et al. 2021 (score SDE) on CIFAR-10: DDPM++ (cont.) with the continuous VP
SDE (beta 0.1 to 20), denoising score matching with lambda = sigma^2 (eq. 7, their
default), Adam at 2e-4 with 5000 warm-up steps, clip 1, batch 128, EMA 0.9999,
1.3M steps; the U-Net with DDPM++'s options (BigGAN resampling, skip rescaling,
4 blocks per level, ch_mult (1, 2, 2, 2), dropout 0.1; the differences to their
NCSN++ code are in jaxdiff.models.unet)."""

from configs import cifar10_ddpm


def get_config():
  config = cifar10_ddpm.get_config()
  config.num_steps = 1_300_000
  config.process = "vp"
  config.process_options = {}
  config.loss.prediction = "eps"
  config.loss.target = "score"
  config.loss.weighting = "sigma2"
  config.model.options = {"num_res_blocks": 4, "resblock_updown": True, "skip_rescale": True,
                          "dropout": 0.1}
  return config
