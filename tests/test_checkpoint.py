"""Checkpoints that are good: no NaN or inf is ever saved, every array is verified against
its checksum when read, and a damaged or truncated checkpoint is passed over for the one
before (set aside by training, skipped by the tools that only read); a write that fails
stops the run with one line."""

import json
import resource
import shutil
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

from conftest import ROOT, tiny_config
from jaxdiff import data
from jaxdiff.train import checkpoint, experiment, generate, sharding, trainer


def train(config, source, workdir):
  built = experiment.Experiment.from_config(config, experiment.DataSpec.of(source))
  return trainer.train(built, source, workdir, sharding.make_mesh({"data": -1}),
                    show_progress=False)


@pytest.fixture(scope="module")
def run(tmp_path_factory, toy_source):
  """A toy run of 20 steps with checkpoints at 10 and 20 (read only: tests copy it)."""
  workdir = tmp_path_factory.mktemp("run")
  train(tiny_config(samples__num=0), toy_source, workdir)
  return workdir


def garble(step_dir):
  """Flips one byte of the checkpoint's largest array file, from its middle on, where the
  reader does not notice it but an array's values change: silent corruption, which only the
  checksums find. (Where the writer's threads put each array in that file varies from run to
  run, and a byte of a compressed block's header is found by zstd itself.)"""
  files = [f for f in (step_dir / "state").rglob("*") if f.is_file() and f.parent.name == "d"]
  largest = max(files, key=lambda f: f.stat().st_size)
  original = largest.read_bytes()
  saved = jax.tree.leaves(checkpoint.restore_arrays(step_dir / "state"))
  for position in range(len(original) // 2, len(original)):
    content = bytearray(original)
    content[position] ^= 0x5A
    largest.write_bytes(bytes(content))
    try:
      read = jax.tree.leaves(checkpoint.restore_arrays(step_dir / "state"))
    except Exception:  # pylint: disable=broad-except  # The reader noticed: try the next byte.
      continue
    if any(not np.array_equal(a, b) for a, b in zip(read, saved)):
      return
  raise AssertionError(f"no byte of {largest} changes an array silently")


def truncate(path):
  path.write_bytes(path.read_bytes()[:path.stat().st_size // 2])


@pytest.mark.parametrize("checkpoint_every, message", [
    (1, r"the training state holds NaN or inf at step 1 \(in params/"),  # Before the loss shows it.
    (10, r"the loss is nan at step 2")])
def test_an_overflowing_learning_rate_stops_before_any_checkpoint(toy_source, tmp_path,
                                                                 checkpoint_every, message):
  # inf itself is refused when the config is parsed; 1e39 passes (a finite number) and is
  # inf in float32, so the first update makes the parameters NaN or inf.
  config = tiny_config(samples__num=0, optim__learning_rate=1e39,
                       checkpoint_every=checkpoint_every)
  with pytest.raises(FloatingPointError, match=message + ".* No checkpoint was written in"):
    train(config, toy_source, tmp_path)
  assert not list((tmp_path / "checkpoints").iterdir())


def test_a_state_holding_nan_is_not_saved_and_the_last_good_one_is_named(run, toy_source,
                                                                        tmp_path):
  shutil.copytree(run / "checkpoints", tmp_path / "checkpoints")
  state = checkpoint.restore_state(tmp_path / "checkpoints" / "20")
  state["ema"]["0.9999"]["dense_out"]["bias"] = np.full_like(
      state["ema"]["0.9999"]["dense_out"]["bias"], np.nan)
  checkpoints = checkpoint.manager(tmp_path, keep=5)
  iterator = data.make_iterator(toy_source, batch_size=32, seed=0)
  with pytest.raises(FloatingPointError, match=r"at step 30 \(in ema/0.9999/dense_out/bias\); "
                     r"training stopped without saving it. The last good checkpoint \(20\)"):
    checkpoint.save(checkpoints, 30, state, iterator, {})
  checkpoints.wait_until_finished()
  assert checkpoints.all_steps() == [10, 20]
  checkpoints.close()


def test_the_run_record_holds_each_arrays_checksum(run):
  record = checkpoint.read_run(run / "checkpoints" / "20")
  state = checkpoint.restore_state(run / "checkpoints" / "20")
  assert record[checkpoint.CHECKSUMS] == checkpoint.fingerprint(state)[1]
  assert len(record[checkpoint.CHECKSUMS]) == len(jax.tree.leaves(state))
  assert "params/dense_out/kernel" in record[checkpoint.CHECKSUMS]
  # Any one word changed changes its array's checksum, wherever it is.
  x = np.arange(1000, dtype=np.float32)
  base = checkpoint.fingerprint({"x": x})[1]["x"]
  for i in (0, 499, 999):
    changed = x.copy()
    changed.view(np.uint32)[i] ^= 1 << (i % 32)
    assert checkpoint.fingerprint({"x": changed})[1]["x"] != base


def test_garbled_bytes_are_found_and_the_one_before_is_used(run, toy_source, tmp_path):
  shutil.copytree(run, tmp_path / "run")
  garble(tmp_path / "run" / "checkpoints" / "20")
  with pytest.raises(checkpoint.ChecksumMismatch, match="differ from those saved"):
    checkpoint.restore_state(tmp_path / "run" / "checkpoints" / "20")
  # The tools that read (sample.py, bpd.py, the studies) skip it, leaving it in place.
  with pytest.warns(UserWarning, match=r"checkpoints/20 \(ChecksumMismatch: .*\) cannot be "
                    r"read; skipping it .* for the one before"):
    step_dir, _, _ = generate.load(tmp_path / "run")
  assert step_dir == tmp_path / "run" / "checkpoints" / "10"
  # find reads no arrays: only its run record says that a checkpoint is there.
  assert checkpoint.find(tmp_path / "run") == tmp_path / "run" / "checkpoints" / "20"
  result = subprocess.run(
      [sys.executable, "sample.py", "--checkpoint", str(tmp_path / "run"), "--num", "4",
       "--nfe", "4", "--workdir", str(tmp_path / "samples")], cwd=ROOT, capture_output=True,
      text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "checkpoints/20 (ChecksumMismatch" in result.stderr
  row = json.loads((tmp_path / "samples" / "results.json").read_text())["rows"][0]
  assert row["checkpoint"] == str(tmp_path / "run" / "checkpoints" / "10")
  assert (tmp_path / "run" / "checkpoints" / "20").is_dir()
  # Training sets it aside and resumes from the one before.
  with pytest.warns(UserWarning, match=r"checkpoint 20 cannot be read \(ChecksumMismatch"):
    summary = train(tiny_config(samples__num=0), toy_source, tmp_path / "run")
  assert (summary.start_step, summary.step) == (10, 20)
  assert len(list((tmp_path / "run" / "checkpoints-unreadable").iterdir())) == 1


def test_a_truncated_checkpoint_is_skipped_or_named_when_none_is_left(run, tmp_path):
  shutil.copytree(run / "checkpoints", tmp_path / "checkpoints")
  truncate(tmp_path / "checkpoints" / "20" / "state" / "_METADATA")
  with pytest.warns(UserWarning, match="checkpoints/20 .* cannot be read; skipping it"):
    assert generate.load(tmp_path)[0] == tmp_path / "checkpoints" / "10"
  truncate(tmp_path / "checkpoints" / "10" / "run" / "metadata")
  with pytest.raises(FileNotFoundError, match=r"no checkpoint in .* can be read: .*checkpoints/"
                     r"20 \(JSONDecodeError.*checkpoints/10 \(FileNotFoundError: cannot read "
                     "the run record"), pytest.warns(UserWarning):
    generate.load(tmp_path)
  truncate(tmp_path / "checkpoints" / "20" / "run" / "metadata")
  with pytest.raises(FileNotFoundError, match=r"checkpoints/20 \(FileNotFoundError: cannot read "
                     r"the run record.*checkpoints/10 \(FileNotFoundError"), pytest.warns(UserWarning):
    checkpoint.find(tmp_path)


def test_a_checkpoint_saved_before_checksums_restores_unverified(run, tmp_path):
  shutil.copytree(run / "checkpoints" / "20", tmp_path / "20")
  record = tmp_path / "20" / "run" / "metadata"
  old = json.loads(record.read_text())
  del old[checkpoint.CHECKSUMS]
  record.write_text(json.dumps(old))
  garble(tmp_path / "20")  # Undetectable without checksums: restored as before.
  assert generate.load(tmp_path / "20")[0] == tmp_path / "20"


def test_sampling_reads_the_state_once_and_a_bad_choice_is_the_users(run, monkeypatch):
  reads = []
  restore_state = checkpoint.restore_state
  monkeypatch.setattr(checkpoint, "restore_state",
                      lambda step_dir, *args: reads.append(step_dir) or restore_state(step_dir,
                                                                                      *args))
  assert checkpoint.find(run) == run / "checkpoints" / "20" and not reads
  step_dir, built, params = generate.load(run, "ema:0.9999")
  assert step_dir == run / "checkpoints" / "20" and reads == [step_dir]
  assert built.ema_decays == (0.9999,)
  saved = restore_state(step_dir)
  for got, want in zip(jax.tree.leaves(params), jax.tree.leaves(saved["ema"]["0.9999"])):
    np.testing.assert_array_equal(got, want)
  # What the user chose is refused as theirs before any array is read, never blamed on the
  # checkpoint (no fallback, no warning).
  with pytest.raises(ValueError, match=r"params must be 'raw', 'ema', one of "
                     r"\['ema:0.9999'\] or 'phema:<sigma_rel>', got 'ema:0.5'"):
    generate.load(run, "ema:0.5")

  def override(config):
    raise ValueError("--process-options must be a JSON object")

  with pytest.raises(ValueError, match="--process-options"):
    generate.load(run, override=override)
  assert len(reads) == 1


def test_a_full_disk_stops_the_run_with_one_line(tmp_path):
  """A file size limit (RLIMIT_FSIZE: writes past it fail with EFBIG, as a full disk's fail
  with ENOSPC) that the first checkpoint's arrays exceed: the run stops naming the folder
  and the error, and nothing half-written looks like a checkpoint."""

  def limit_file_size():
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # Fail the write instead of killing.
    resource.setrlimit(resource.RLIMIT_FSIZE, (10_000, 10_000))

  result = subprocess.run(
      [sys.executable, "train.py", "--config", "tests/tiny_config.py", "--workdir",
       str(tmp_path / "run"), "--config.samples.num", "0"], cwd=ROOT, capture_output=True,
      text=True, timeout=600, preexec_fn=limit_file_size, check=False)
  assert result.returncode == 1
  # Orbax's and TensorStore's threads still log their own tracebacks (in any order).
  ours = [line for line in result.stderr.splitlines() if line.startswith("cannot write")]
  assert len(ours) == 1, result.stderr[-3000:]
  assert ours[0].startswith(f"cannot write a checkpoint in {tmp_path / 'run' / 'checkpoints'}: ")
  assert "File too large" in ours[0] and ours[0].endswith("No checkpoint was written.")
  assert "train.py" not in result.stderr  # No traceback of the program itself.
  assert "Exception ignored" not in result.stderr  # Orbax's writers were waited for.
  assert not [p for p in (tmp_path / "run" / "checkpoints").iterdir() if p.name.isdigit()]


def test_pruning_keeps_the_best_checkpoint_besides_the_last_ones(tmp_path):
  """A manager with `best` keeps the last `keep` checkpoints and the one of the lowest metric
  saved with it (checkpoints without one are pruned as usual); a new manager on the folder
  reads the saved values back (`checkpoint.best`)."""
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  checkpoints = checkpoint.manager(tmp_path, keep=1, best="fid", asynchronous=False)
  for step, fid in ((1, 3.0), (2, 1.0), (3, None), (4, 2.0), (5, None)):
    checkpoints.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave({"w": jnp.full(2, step, jnp.float32)})),
        metrics={} if fid is None else {"fid": fid, "params": "ema"})
  assert checkpoints.all_steps() == [2, 5]
  checkpoints.close()
  again = checkpoint.manager(tmp_path, keep=1, best="fid", asynchronous=False)
  assert checkpoint.best(again, "fid") == (2, 1.0)
  assert checkpoint.best(again, "frechet_distance") is None
  again.close()
