"""Rectified flow (Liu, Gong & Liu 2022, "Flow Straight and Fast"; flow matching, Lipman et
al. 2023) on the digits default: configs/digits.py's U-Net, optimizer, EMAs and evaluation,
trained on the process "flow" (x_t = (1 - t) x0 + t eps, t ~ U(0.001, 1)) to predict the
velocity eps - x0 with an unweighted squared error: the 1-rectified flow, the teacher of
reflow (configs/digits_reflow.py). The network sees t in [0, 1] scaled by 1000 (the U-Net's
default time_scale), not EDM's c_noise.

  python3 train.py --config configs/digits_flow.py --workdir runs/digits-flow
"""

from configs import digits


def get_config():
  config = digits.get_config()
  config.process = "flow"
  config.process_options = {}
  config.loss = {"prediction": "velocity", "target": "velocity", "weighting": "none",
                 "reduce": "mean", "preconditioning": "none"}
  config.model.options.time_scale = 1000.0
  return config
