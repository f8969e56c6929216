"""Tiny training configs for the tests: configs/train_base.py shrunk to seconds.

`python3 train.py --config tests/tiny_config.py` trains the toy one (what
tiny_config() returns), `--config tests/tiny_config.py:digits` the digits one,
`:autoencoder` an autoencoder of the digits; the
tests build variants with tiny_config(kind, **overrides).
"""

import ml_collections

from configs import train_base


def tiny_config(kind: str = "toy", **overrides) -> ml_collections.ConfigDict:
  """configs/train_base.py shrunk: kind "toy" (MLP, checkerboard), "digits" (U-Net) or
  "autoencoder" (a KL autoencoder of the digits).

  overrides: top-level fields, or dotted ones as "optim__learning_rate".
  """
  config = train_base.get_config()
  config.num_steps = 20
  config.batch_size = 32
  config.checkpoint_every = 10
  config.keep_checkpoints = 5
  config.log_every = 5
  config.sample_every = 20
  config.optim.warmup_steps = 4
  config.samples.num = 16
  config.samples.nfe = 4
  if kind == "toy":
    config.data.source = "toy"
    config.data.options = {"name": "checkerboard", "num_points": 512}
    config.model.name = "mlp"
    config.model.options = {"features": 32, "num_blocks": 2}
  elif kind == "autoencoder":  # 8x8x1 digits -> 4x4x2 latents.
    config.model.name = "autoencoder_kl"
    config.model.options = {"block_out_channels": (8, 16), "layers_per_block": 1,
                            "latent_channels": 2, "norm_num_groups": 4}
    config.loss = {"reconstruction": "l1", "kl_weight": 1e-6}
    config.samples.num = 8
  else:
    config.model.options = {"ch": 8, "ch_mult": (1,), "num_res_blocks": 1,
                            "attn_resolutions": (), "num_groups": 4, "dropout": 0.1}
  for key, value in overrides.items():
    node, *path = key.split("__")
    target = config
    for part in [node, *path][:-1]:
      target = target[part]
    target[[node, *path][-1]] = value
  return config


def get_config(kind: str = "toy"):
  return tiny_config(kind)
