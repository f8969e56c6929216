"""Fixtures shared by the training tests: tiny configs and the data they read.

Every training config in the tests is the base config shrunk to seconds: a
2-block MLP on a 2-D toy set, or a one-level U-Net on the 8x8 digits.
"""

import os
import pathlib
import sys
import tempfile
import types
from importlib import metadata

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

import pytest  # noqa: E402

from jaxdiff import data  # noqa: E402
from tiny_config import tiny_config  # noqa: E402, F401  # Re-exported for the tests.

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _torchvision_models_on_cpu_torch():
  """Lets torchvision's models import beside a CPU build of torch.

  The registries reachable here hold CUDA builds of torchvision only; beside the peers'
  CPU torch its C extension (detection ops such as nms, which neither pytorch-fid's
  Inception nor diffusers use) does not load, and `import torchvision` fails in
  torchvision._meta_registrations, which registers fake kernels of those ops. The models are
  plain Python and import with that module left out, which this does when the installed
  builds differ (read from their metadata, nothing imported).
  """
  try:
    torch, torchvision = metadata.version("torch"), metadata.version("torchvision")
  except metadata.PackageNotFoundError:
    return
  if torch.endswith("+cpu") and not torchvision.endswith("+cpu"):
    name = "torchvision._meta_registrations"
    sys.modules.setdefault(name, types.ModuleType(name))


_torchvision_models_on_cpu_torch()


@pytest.fixture(scope="session")
def digits_train():
  return data.make_source("digits", split="train")


@pytest.fixture(scope="session")
def toy_source():
  return data.make_source("toy", name="checkerboard", num_points=512)
