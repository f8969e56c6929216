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


@pytest.fixture
def killed_after_two_saves(monkeypatch):
  """A `write_once` run (encode.py's, reflow.py's) killed right after its second save of
  the progress, as a SIGKILL would leave it: KeyboardInterrupt out of the run."""
  from jaxdiff.train import write_once  # pylint: disable=import-outside-toplevel
  save = write_once._save_progress

  def killed(out, run_record, done, *rest):
    save(out, run_record, done, *rest)
    if done == 2:
      raise KeyboardInterrupt

  monkeypatch.setattr(write_once, "_save_progress", killed)


@pytest.fixture(scope="session")
def tiny_autoencoder(tmp_path_factory, digits_train):
  """The workdir of a finished 20-step run of tiny_config("autoencoder") on the digits
  (8x8x1 -> 4x4x2 latents; checkpoints at 10 and 20; shared, read only)."""
  from jaxdiff.train import experiment, sharding, trainer

  workdir = tmp_path_factory.mktemp("autoencoder")
  built = experiment.Experiment.from_config(tiny_config("autoencoder"),
                                            experiment.DataSpec.of(digits_train))
  trainer.train(built, digits_train, workdir, sharding.make_mesh({"data": -1}),
                show_progress=False)
  return workdir


# --------------------------------------------------------------------------
# The samplers' shared harness: processes, a prior, a smooth stand-in network,
# a network that counts its calls, and the float64 PF-ODE reference of a
# smooth Gaussian mixture (every sampler test reads these).
# --------------------------------------------------------------------------

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from scipy.integrate import solve_ivp  # noqa: E402

from jaxdiff import oracle, schedules, sde  # noqa: E402

PROCESSES = {name: schedules.make_process(name) for name in ("ddpm", "vp", "edm", "flow", "ve")}


def prior(process_name, num, seed=0, dim=2):
  """x_T [num, dim] ~ the process's prior at t_max."""
  return sde.prior_sample(PROCESSES[process_name], jax.random.PRNGKey(seed), (num, dim))


def toy_denoise_fn(x, t, cond):
  """A smooth stand-in network whose output depends on x and t: [B, D]."""
  del cond
  return jnp.tanh(x) * (0.5 + sde.per_example(t, x))


def counting(fn):
  """(fn with the same outputs, calls): calls gains an entry at every evaluation
  (not every trace); read it after jax.effects_barrier()."""
  calls = []

  def counted(x, t, cond):
    jax.debug.callback(lambda: calls.append(1))
    return fn(x, t, cond)

  return counted, calls


# Smooth data (stds >= 0.3), so that the solvers' asymptotic regime starts at small N.
SMOOTH_WEIGHTS, SMOOTH_MEANS, SMOOTH_STDS = (np.array([0.3, 0.7]),
                                             np.array([[-0.5, 0.3], [0.6, -0.2]]),
                                             np.array([0.3, 0.4]))
SMOOTH = oracle.GaussianMixture(SMOOTH_WEIGHTS, SMOOTH_MEANS, SMOOTH_STDS)


def smooth_x0_eps(x, alpha, sigma):
  """E[x_0 | x_t] and E[eps | x_t] of SMOOTH in float64 numpy: [B, D] each."""
  var = alpha**2 * SMOOTH_STDS**2 + sigma**2  # [K]
  residual = x[:, None, :] - alpha * SMOOTH_MEANS  # [B, K, D]
  log_joint = (np.log(SMOOTH_WEIGHTS) - 0.5 * np.sum(residual**2, -1) / var
               - 0.5 * x.shape[1] * np.log(2 * np.pi * var))
  r = np.exp(log_joint - log_joint.max(1, keepdims=True))
  r /= r.sum(1, keepdims=True)  # [B, K]
  score = -np.sum((r / var)[..., None] * residual, 1)
  x0 = np.sum(r[..., None] * (SMOOTH_MEANS + (alpha * SMOOTH_STDS**2 / var)[:, None] * residual), 1)
  return x0, -sigma * score


# alpha as a function of sigma~ = sigma / alpha, in closed form (float64).
ALPHA_OF_SIGMA_TILDE = {"vp": lambda s: 1 / np.sqrt(1 + s**2), "ddpm": lambda s: 1 / np.sqrt(1 + s**2),
                        "edm": lambda s: 1.0, "flow": lambda s: 1 / (1 + s)}


def pf_ode_reference(process_name, x_T, t_0, t_1):
  """x at t_1 > 0 from x_T [B, D] at t_0 on SMOOTH's PF-ODE, in float64 (DOP853, rtol 1e-10).

  Solved as dx~/dsigma~ = eps_hat in the scaled variables x~ = x / alpha,
  sigma~ = sigma / alpha, independently of jaxdiff's solvers: only the
  process's sigma~ at the two (float32) end times is read.
  """
  process = PROCESSES[process_name]
  sigma_0, sigma_1 = (float(process.noise_to_signal(jnp.float32(t))) for t in (t_0, t_1))
  alpha = ALPHA_OF_SIGMA_TILDE[process_name]
  shape = np.shape(x_T)

  def eps_hat(sigma, x_tilde):
    a = alpha(sigma)
    return smooth_x0_eps(a * x_tilde.reshape(shape), a, a * sigma)[1].ravel()

  x_tilde_T = np.asarray(x_T, np.float64).ravel() / alpha(sigma_0)
  solution = solve_ivp(eps_hat, (sigma_0, sigma_1), x_tilde_T, method="DOP853", rtol=1e-10,
                       atol=1e-10)
  assert solution.success
  return alpha(sigma_1) * solution.y[:, -1].reshape(shape)


# --------------------------------------------------------------------------
# A cheap judge of 2-D samples for the streamed sampling runs (test_sample_run.py, and
# multidevice_runs.py's eight devices).
# --------------------------------------------------------------------------

from jaxdiff import streamed  # noqa: E402


def point_judge(rng):
  """A streamed.Judge of 2-D points: linear features [B, 3] and logits [B, 4] of the points,
  with 20 'training' points for the nearest distances."""
  w, v = rng.standard_normal((2, 3)), rng.standard_normal((2, 4))
  reference = rng.standard_normal((40, 3))
  return streamed.Judge("classifier", lambda variables, x: (x @ variables[0], x @ variables[1]),
                        (w.astype(np.float32), v.astype(np.float32)), reference.mean(0),
                        np.cov(reference, rowvar=False), reference, "random points", 40,
                        rng.standard_normal((20, 2)).astype(np.float32), np.ones(20))
