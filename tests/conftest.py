"""Fixtures shared by the training tests: tiny configs and the data they read.

Every training config in the tests is the base config shrunk to seconds: a
2-block MLP on a 2-D toy set, or a one-level U-Net on the 8x8 digits.
"""

import pathlib

import pytest

from jaxdiff import data
from tiny_config import tiny_config  # noqa: F401  # Re-exported for the tests.

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def digits_train():
  return data.make_source("digits", split="train")


@pytest.fixture(scope="session")
def toy_source():
  return data.make_source("toy", name="checkerboard", num_points=512)
