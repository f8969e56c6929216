"""Many devices: data parallelism, FSDP and gradient accumulation equal to one device;
sampling (streamed, sample.py) over 8 devices and over 2 processes equal to one device;
checkpoints moved between meshes; the compiled step's memory; bad meshes and batches.

The 8-device runs happen in one subprocess (tests/multidevice_runs.py; JAX fixes
its device count at start-up), shared by the tests below.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from conftest import ROOT, TEST_XLA_FLAGS, tiny_config
from jaxdiff import data
from jaxdiff.train import (checkpoint, experiment, generate, optim, sample_run, sharding,
                           step)
from jaxdiff.train.writer import read_metrics

# Six AdamW steps at lr 1e-3 move a weight by up to 6e-3. Another device count or
# micro-batching changes only the order of float32 sums (relative 1e-7 in the
# gradients), which Adam's normalisation passes on as a relative change of its step;
# measured: at most 1.4e-7 for 8 devices, 2.5e-6 for 4 micro-batches. 1e-5 is
# 1/600 of the movement; a lost gradient all-reduce (each device stepping on its own
# rows), a dropped micro-batch or a shard read twice turns the gradient's direction
# and moves weights by up to a whole step (1e-3).
ATOL = 1e-5


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  out = tmp_path_factory.mktemp("multidevice")
  env = {**os.environ, "XLA_FLAGS": TEST_XLA_FLAGS}  # The script adds its 8 devices.
  result = subprocess.run([sys.executable, str(ROOT / "tests" / "multidevice_runs.py"), str(out)],
                          capture_output=True, text=True, env=env, timeout=1200)
  assert result.returncode == 0, result.stderr[-4000:]
  with np.load(out / "states.npz") as states, np.load(out / "restored.npz") as restored:
    return (dict(states), dict(restored), json.loads((out / "report.json").read_text()))


def run_state(store, name):
  return {key.split("/", 1)[1]: value for key, value in store.items()
          if key.startswith(name + "/")}


def assert_states_close(a, b, atol):
  assert a.keys() == b.keys() and a
  for key in a:
    if a[key].dtype.kind == "f":
      np.testing.assert_allclose(a[key], b[key], rtol=0, atol=atol, err_msg=key)
    else:  # The step, the PRNG key, Adam's count.
      np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def sharded_by_the_rule(state, fsdp):
  return {key for key, value in state.items() if sharding.state_spec(value.shape, fsdp) != P()}


@pytest.mark.parametrize("name", ["data8", "fsdp2x4", "fsdp1x8"])
def test_eight_devices_train_what_one_device_trains(runs, name):
  states, _, report = runs
  one = run_state(states, "one")
  assert_states_close(run_state(states, name), one, ATOL)
  fsdp = {"data8": 1, "fsdp2x4": 4, "fsdp1x8": 8}[name]
  assert report[f"{name}/sharded_leaves"] == len(sharded_by_the_rule(one, fsdp))
  assert (fsdp == 1) == (report[f"{name}/sharded_leaves"] == 0)


def test_four_micro_batches_train_what_the_whole_batch_trains(runs):
  states, _, _ = runs
  assert_states_close(run_state(states, "accum4_fsdp2x4"), run_state(states, "one_no_dropout"),
                      ATOL)


def test_a_run_saved_on_eight_devices_resumes_on_one(runs):
  states, _, _ = runs
  assert_states_close(run_state(states, "resumed_on_one"), run_state(states, "one"), ATOL)


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_samples_spread_over_eight_devices_are_those_of_one(runs, sampler):
  states, _, _ = runs
  one, eight = states[f"samples_{sampler}/one"], states[f"samples_{sampler}/data8"]
  assert one.shape == (20, 2)
  # Four steps of a six-step-old network: large values, float32 rounding relative to them.
  np.testing.assert_allclose(eight, one, rtol=0, atol=1e-6 * np.abs(one).max())


def test_a_streamed_sampling_run_on_eight_devices_is_that_of_one(runs):
  states, _, _ = runs
  one, eight = run_state(states, "sample_run_one"), run_state(states, "sample_run_data8")
  assert one.keys() == eight.keys() and one["images"].shape == (20, 2)
  # x_T_i from (seed, i) alone: the same bits on any device.
  np.testing.assert_array_equal(eight["x_T"], one["x_T"])
  # The network on 2 rows per device and on 16 rows: XLA's CPU matmuls may order their float32
  # sums by the batch's shape (as the samples above), and a six-step-old network's samples
  # are large (|x| up to 327): measured 1.5e-5 apart at most, 5e-8 of the largest. A row
  # sampled with another row's noise or computed twice would differ by the rows' spread.
  np.testing.assert_allclose(eight["images"], one["images"], rtol=0,
                             atol=1e-6 * np.abs(one["images"]).max())
  # The judge's sums: each device sums its own 2 rows and the mesh adds the 8 partial sums,
  # another order than one device's sum of 16 rows: equal to float32 rounding (measured 1.2e-7
  # relative at most; the counts exact). A device's sum left out of the reduction, or the
  # padding counted, changes the count.
  np.testing.assert_array_equal(eight["sum/count"], 20)
  for key in one.keys() - {"images", "x_T"}:
    np.testing.assert_allclose(eight[key], one[key], rtol=1e-6, atol=1e-7, err_msg=key)


def test_log_likelihoods_spread_over_eight_devices_are_those_of_one(runs):
  states, _, _ = runs
  one, eight = states["log_likelihood/one"], states["log_likelihood/data8"]
  assert one.shape == (16,) and np.all(np.isfinite(one))
  # Each record's adaptive solve takes its own steps; the devices' programs differ in float
  # rounding, which moves those steps: equal within the solver's accuracy on this rough
  # six-step network (rtol 1e-5 per step; measured 1.7e-3 apart at most). Rows computed on
  # the wrong device or mixed up would differ by the rows' spread (std 0.4 nats of 10).
  np.testing.assert_allclose(eight, one, rtol=5e-3)


def test_a_dataset_encoded_on_eight_devices_is_that_of_one(runs):
  """encode_run over 8 devices: the same posteriors, labels and scaling factor as on 1."""
  states, _, _ = runs
  one, eight = run_state(states, "encode_one"), run_state(states, "encode_data8")
  assert one["latents"].shape == (40, 4, 4, 4)
  np.testing.assert_allclose(eight["latents"], one["latents"], rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(eight["labels"], one["labels"])
  assert eight["scaling_factor"] == pytest.approx(one["scaling_factor"], rel=1e-5)


@pytest.mark.parametrize("name", ["one", "fsdp4", "back"])
def test_checkpoints_move_between_meshes_bitwise(runs, name):
  states, restored, report = runs
  assert_states_close(run_state(restored, name), run_state(states, "fsdp2x4"), atol=0)
  if name != "back":
    assert report[f"restored_{name}/devices"] == [{"one": 1, "fsdp4": 4}[name]]


def test_the_compiled_step_holds_one_shard_of_the_state(runs):
  states, _, report = runs
  memory = report["memory"]
  one = run_state(states, "one")
  sharded = sharded_by_the_rule(one, 8)
  state_bytes = sum(v.nbytes / 8 if k in sharded else v.nbytes for k, v in one.items())
  # Float32 points [32, 2] split 8 ways; jit drops the labels, which an unconditional
  # model does not read.
  batch_bytes = 32 * 2 * 4 / 8
  assert memory["state_bytes_per_device"] == state_bytes
  # XLA's own count of the compiled step's inputs on one device.
  assert memory["argument_bytes"] == state_bytes + batch_bytes
  assert memory["state_bytes"] == sum(v.nbytes for v in one.values())


def test_bad_meshes_and_batches_fail_with_the_numbers(runs):
  errors = runs[2]["errors"]
  assert "mesh {'data': 3} needs 3 devices, but 8 are present" in errors["mesh_3"]
  assert "8 devices are not a multiple of 3" in errors["mesh_fsdp_3"]
  assert ("batch_size 12 must be divisible by the 8 devices of the mesh's batch axes"
          in errors["batch_12"])
  assert "times grad_accum = 8" in errors["batch_32_accum_8"]


@pytest.mark.parametrize("axes, message", [
    ({"model": 2}, "unknown mesh axes ['model']"),
    ({"data": -1, "fsdp": -1}, "only one mesh axis may be -1"),
    ({"data": 0}, "mesh axis 'data' must be a positive integer or -1, got 0"),
    ({"fsdp": 2.0}, "mesh axis 'fsdp' must be a positive integer or -1, got 2.0"),
    ({"data": 2}, f"needs 2 devices, but {len(jax.devices())} are present"),
])
def test_bad_mesh_configs_are_refused(axes, message):
  with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
    sharding.make_mesh(axes)


@pytest.mark.parametrize("shape, fsdp, spec", [
    ((3, 3, 48, 96), 4, P(None, None, None, "fsdp")),  # The largest divisible dimension.
    ((3, 3, 96, 30), 4, P(None, None, "fsdp", None)),
    ((1152, 6912), 8, P(None, "fsdp")),
    ((30000,), 7, P()),  # No dimension divisible.
    ((64, 64), 8, P()),  # Under MIN_SHARDED_SIZE: replicated.
    ((256, 256), 1, P()),  # No fsdp axis.
])
def test_fsdp_splits_the_largest_dimension_it_divides(shape, fsdp, spec):
  assert sharding.state_spec(shape, fsdp) == spec


# --------------------------------------------------------------------------
# Two processes (jax.distributed over localhost, 4 simulated devices each).
# --------------------------------------------------------------------------

TWO_PROCESS_RUN = ("--config.num_steps", "6", "--config.checkpoint_every", "3",
                   "--config.log_every", "3", "--config.sample_every", "6",
                   "--config.samples.num", "8", "--config.bpd.every", "6", "--config.bpd.num",
                   "8", "--config.bpd.batch_size", "8")


def launch_two_processes(program, *flags, heartbeat=100):
  """program (train.py, sample.py) with the flags in two processes; returns their Popen."""
  with socket.socket() as s:  # A free port for the coordinator.
    s.bind(("localhost", 0))
    port = s.getsockname()[1]
  env = {**os.environ, "XLA_FLAGS": f"{TEST_XLA_FLAGS} --xla_force_host_platform_device_count=4",
         "JAX_PLATFORMS": "cpu"}
  return [subprocess.Popen(
      [sys.executable, str(ROOT / program), *flags, "--coordinator", f"localhost:{port}",
       "--num-processes", "2", "--process-id", str(i), "--heartbeat-timeout", str(heartbeat)],
      cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
      for i in range(2)]


def start_two_processes(workdir, *config_flags, heartbeat=100):
  """train.py on the tiny toy config in two processes; returns their Popen."""
  return launch_two_processes("train.py", "--config", str(ROOT / "tests" / "tiny_config.py"),
                              "--workdir", str(workdir), *config_flags, heartbeat=heartbeat)


def finish(processes, timeout=300):
  return [(p.wait(timeout), *p.communicate()) for p in processes]


def one_process_reference(num_steps=6):
  """The toy run on this process's one device, fed each step the two processes' local
  batches side by side (the global batch the two-process run assembles)."""
  config = tiny_config(num_steps=num_steps)
  source = data.make_source("toy", name="checkerboard", num_points=512)
  built = experiment.Experiment.from_config(config, experiment.DataSpec.of(source))
  optimizer = optim.make_optimizer(built.optimizer, num_steps)
  train_step = jax.jit(step.make_train_step(
      built.model, built.objective, optimizer,
      optim.learning_rate_schedule(built.optimizer, num_steps), built.ema_decays))
  iterators = [data.make_iterator(source, batch_size=32, seed=0, process_index=i,
                                  process_count=2) for i in range(2)]
  state = built.init_fn(optimizer)()
  for _ in range(num_steps):
    batch = jax.tree.map(lambda *b: np.concatenate(b), *[next(it) for it in iterators])
    state, _ = train_step(state, jax.tree.map(lambda b: b[None], batch))
  return built, jax.tree.map(np.asarray, state)


def test_two_processes_train_and_sample_what_one_process_does(tmp_path):
  results = finish(start_two_processes(tmp_path / "run", *TWO_PROCESS_RUN))
  for i, (code, out, err) in enumerate(results):
    assert code == 0, f"process {i}: {err[-3000:]}"
  # Process 0 reports (gloo's connection lines aside).
  assert "trained steps 0..6" in results[0][1] and "trained" not in results[1][1]
  assert (tmp_path / "run" / "samples" / "step-6.png").is_file()
  # Held-out bits/dim over both processes' devices, one record each.
  last = read_metrics(tmp_path / "run")[-1]
  assert last["step"] == 6 and np.isfinite(last["bits_per_dim"])
  built, reference = one_process_reference()
  abstract = jax.eval_shape(built.init_fn(optim.make_optimizer(built.optimizer, 6)))
  trained = checkpoint.restore_state(checkpoint.find(tmp_path / "run"), abstract)
  for a, b in zip(jax.tree.leaves(trained), jax.tree.leaves(reference)):
    np.testing.assert_allclose(np.asarray(a), b, rtol=0, atol=ATOL)

  # sample.py on that checkpoint in the same two processes of 4 devices: DDPM (per-sample
  # noise), 20 samples in global batches of 8 (the last one padded), into one shared folder.
  out = tmp_path / "samples"
  results = finish(launch_two_processes(
      "sample.py", "--checkpoint", str(tmp_path / "run"), "--sampler", "ddpm", "--nfe", "4",
      "--num", "20", "--batch-size", "8", "--save-images", "20", "--save-every", "1",
      "--workdir", str(out)))
  for i, (code, _, err) in enumerate(results):
    assert code == 0, f"sample.py process {i}: {err[-3000:]}"
  assert "over 8 devices" in results[0][1] and "sampling" not in results[1][1]
  # Process 0 wrote the progress and the results (process 1 printed nothing of the run), no
  # temporary file left behind.
  assert {p.name for p in out.iterdir()} >= {"samples.npz", "samples.png", "results.json",
                                            sample_run.PROGRESS, sample_run.RECORD}
  assert not list(out.glob("*.tmp"))
  # The same job in this process on one device. The toy data have no evaluation classifier,
  # so sample.py judges nothing: the samples, their x_T and the progress are compared.
  _, built, params = generate.load(tmp_path / "run", "ema")
  one = sample_run.run(built, generate.plan(built, "ddpm", 4), params,
                       sample_run.Job(20, 8, 0, save_images=20),
                       sharding.make_mesh({"data": 1}, jax.devices()[:1]), progress=False)
  with np.load(out / "samples.npz") as samples, np.load(out / sample_run.PROGRESS) as progress:
    np.testing.assert_array_equal(samples["x_T"], one.x_T)
    np.testing.assert_array_equal(progress["x_T"], one.x_T)
    np.testing.assert_array_equal(progress["images"], samples["samples"])
    # 1 row per device against 8 rows on one: float32 rounding of the network (measured 9.5e-7
    # apart at most, samples up to 391).
    np.testing.assert_allclose(samples["samples"], one.images, rtol=0,
                               atol=1e-6 * np.abs(one.images).max())
  assert json.loads((out / sample_run.RECORD).read_text())["batches_done"] == 3


def test_a_lost_process_stops_the_other_and_both_resume(tmp_path):
  workdir = tmp_path / "run"
  flags = ("--config.num_steps", "60", "--config.checkpoint_every", "20",
           "--config.log_every", "20", "--config.sample_every", "60", "--config.samples.num",
           "0")
  processes = start_two_processes(workdir, *flags, heartbeat=5)
  # The run is 60 steps long: process 0 either writes checkpoint 20 or ends.
  while not (workdir / "checkpoints" / "20").is_dir():
    if processes[0].poll() is not None:
      pytest.fail(f"process 0 ended before its first checkpoint: {finish(processes)}")
    time.sleep(0.2)
  processes[1].send_signal(signal.SIGKILL)
  code, _, err = finish(processes[:1], timeout=120)[0]
  assert code != 0, "process 0 went on without process 1"
  # Which of JAX's errors ends it depends on where the step was: the coordination
  # service's missed heartbeats, or a gloo collective whose peer closed (an abort).
  assert any(word in err.lower() for word in ("heartbeat", "unavailable", "connection",
                                              "peer", "fatal python error")), err[:3000]
  results = finish(start_two_processes(workdir, *flags))
  for i, (code, out, err) in enumerate(results):
    assert code == 0, f"process {i} after the restart: {err[-3000:]}"
  start = int(results[0][1].split("trained steps ")[1].split("..")[0])
  assert 20 <= start < 60 and "..60" in results[0][1]


@pytest.mark.parametrize("flags, message", [
    (("--num-processes", "2", "--process-id", "0"),
     "cannot start the processes: coordinator_address should be defined"),
    (("--coordinator", "localhost:1", "--num-processes", "2", "--process-id", "2"),
     "cannot start the processes: process_id and num_processes must be nonnegative, with "
     "process_id < num_processes"),
])
def test_bad_process_flags_fail_before_anything_is_written(tmp_path, flags, message):
  result = subprocess.run(
      [sys.executable, str(ROOT / "train.py"), "--config", str(ROOT / "tests" / "tiny_config.py"),
       "--workdir", str(tmp_path / "run"), *flags], cwd=ROOT, capture_output=True, text=True,
      timeout=120)
  assert result.returncode != 0 and message in result.stderr, result.stderr[-2000:]
  assert not (tmp_path / "run").exists()
