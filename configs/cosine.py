"""The oracle job on the cosine schedule (Nichol & Dhariwal 2021) with v-prediction."""

from configs import base


def get_config():
  config = base.get_config()
  config.process_options.schedule = "cosine"
  config.prediction = "v"
  return config
