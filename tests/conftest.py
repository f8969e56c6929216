"""Fixtures shared by the training tests: tiny configs and the data they read.

Every training config in the tests is the base config shrunk to seconds: a
2-block MLP on a 2-D toy set, or a one-level U-Net on the 8x8 digits.
"""

import gc
import os
import pathlib
import tempfile

# XLA's compiled programs shared by the test processes (both pytest-xdist workers and the
# programs the tests start): the same tiny configs compile once per run of the suite, not
# once per test. Set before JAX starts; the subprocesses inherit it.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(tempfile.gettempdir(), "jaxdiff-tests-xla-cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
# XLA's CPU backend without its LLVM optimisations: the tests' tiny programs cost their
# compilation more than their running, and this about halves a network's (test_models.py
# took 129 s instead of 186 s); results agree to float32 rounding. The programs the tests
# start inherit it (those that set XLA_FLAGS themselves add TEST_XLA_FLAGS).
TEST_XLA_FLAGS = "--xla_backend_optimization_level=0"
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {TEST_XLA_FLAGS}".strip()

# The programs whose running outweighs their compilation (the oracle's samplers: thousands of
# samples through hundreds of steps) take XLA's default level back, per jit: RePaint's 4000
# samples through 2000 steps ran in 24 s at level 0 and in 7 s so (compilation included).
OPTIMIZED = {"xla_backend_optimization_level": 3}

import jax  # noqa: E402
import pytest  # noqa: E402

from jaxdiff import data, peers  # noqa: E402
from tiny_config import tiny_config  # noqa: E402, F401  # Re-exported for the tests.

ROOT = pathlib.Path(__file__).resolve().parents[1]

peers.torchvision_models_on_cpu_torch()  # pytorch-fid's Inception beside a CPU torch.


# pytest-xdist hands whole files to its two workers (--dist loadfile: a module's fixtures are
# built once) in the order collected (--no-loadscope-reorder; by default it would start with
# the files holding the most tests). The three longest files by time (150-190 s each in CI's
# durations) go first, so that no worker is left running one of them alone at the end.
LONGEST_FILES = ("test_train.py", "test_programs.py", "test_scale.py")


def pytest_collection_modifyitems(items):
  rank = {name: i for i, name in enumerate(LONGEST_FILES)}
  items.sort(key=lambda item: rank.get(item.path.name, len(LONGEST_FILES)))  # Stable.


# After a worker reports its session finished, pytest collects garbage six times (its check
# for unraisable exceptions), JAX emptying XLA's garbage at each. With JAX's caches holding the
# session's programs, each took 1.0-1.3 s at the end of the suite's workers (1.8-2.0 million
# live objects), 6-8 s in all: more than the 5 s pytest-xdist waits before it interrupts a
# worker (the KeyboardInterrupt in `_xla_gc_callback` printed at the end of CI's runs).
# Emptied before the report: 0.4 s each (0.7 million objects).
@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish():
  jax.clear_caches()
  gc.collect()


@pytest.fixture(scope="session")
def digits_train():
  return data.make_source("digits", split="train")


@pytest.fixture(scope="session")
def toy_source():
  return data.make_source("toy", name="checkerboard", num_points=512)
