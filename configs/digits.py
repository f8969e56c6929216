"""The default: a 1M-parameter U-Net on scikit-learn's 8x8 digits, cosine schedule,
L_simple, 1500 steps at batch 128 (minutes on a 2-core CPU). Every field is
configs/train_base.py's."""

from configs import train_base


def get_config():
  return train_base.get_config()
