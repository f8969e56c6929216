"""bench.py --job oracle, end to end: sampler runs on the ring oracle, its outputs, and
the mistakes refused before its workdir is claimed (a config of the other job, a flag of
the other job, sample.py without a checkpoint)."""

import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

ROOT = pathlib.Path(__file__).resolve().parents[1]


def run(program, *args):
  return subprocess.run([sys.executable, program, *args], cwd=ROOT, capture_output=True,
                        text=True, timeout=600)


def run_oracle_job(*args):
  return run("bench.py", "--job", "oracle", "--config", "tests/smoke_config.py", *args)


def test_oracle_job_writes_results_and_never_overwrites(tmp_path):
  workdir = tmp_path / "run"
  result = run_oracle_job("--workdir", str(workdir))
  assert result.returncode == 0, result.stderr[-2000:]
  rows = json.loads((workdir / "results.json").read_text())["rows"]
  assert [r["nfe"] for r in rows] == [0, 20, 10]
  # DDPM with 20 steps on the exact denoiser recovers the 8 mixture weights; the reference
  # row (true data) bounds what sampling noise alone gives.
  assert rows[1]["weight_error"] < 0.1
  assert "| ddim eta=0.0 | trailing | 10 | 10 |" in (workdir / "results.md").read_text()
  assert Image.open(workdir / "samples.png").size[0] > 400
  assert set(np.load(workdir / "samples.npz")) >= {"x_T"}
  # The rows were appended as they finished; the finished run left no INCOMPLETE marker.
  appended = [json.loads(line) for line in (workdir / "results.jsonl").read_text().splitlines()]
  assert [r["nfe"] for r in appended] == [0, 20, 10]
  assert not (workdir / "INCOMPLETE").exists()

  before = {p.name: p.stat().st_mtime_ns for p in workdir.iterdir()}
  again = run_oracle_job("--workdir", str(workdir))
  assert again.returncode != 0 and "already holds files" in again.stderr
  assert {p.name: p.stat().st_mtime_ns for p in workdir.iterdir()} == before


# The job's own checks (num_samples 0 refused): test_oracle_job_reads_configs_base_by_default.
@pytest.mark.parametrize("args, message", [
    # The smoke config's diffusers spacings need a discrete process; VP has none.
    (("--config.process", "vp", "--config.process_options", "{}"),
     "'trailing' spacing needs a discrete process"),
    (("--config.process", "vp"), "process 'vp' takes the options ['t_min', 't_max', 'beta_min', "
     "'beta_max'], got unknown ['num_steps', 'schedule']"),
    (("--config.num_sample", "3"), "unknown config key '--config.num_sample': the configuration "
     "has no field 'num_sample'. Did you mean \"num_samples\""),
])
def test_bad_config_is_refused_before_anything_is_written(tmp_path, args, message):
  workdir = tmp_path / "run"
  result = run_oracle_job("--workdir", str(workdir), *args)
  assert result.returncode != 0
  assert message in result.stderr, result.stderr[-2000:]
  assert "Traceback" not in result.stderr
  assert not workdir.exists()


def test_sampler_options_are_checked_before_anything_runs(tmp_path):
  """A bad option value is found by tracing (no compile), before the workdir exists."""
  config = tmp_path / "config.py"
  config.write_text("from configs import base\n"
                    "def get_config():\n"
                    "  config = base.get_config()\n"
                    "  config.samplers = (base.sampler_run('ddim', 'trailing', 10),\n"
                    "                     base.sampler_run('ddpm', 'trailing', 10, variance='x'))\n"
                    "  return config\n")
  result = run("bench.py", "--job", "oracle", "--config", str(config), "--workdir",
               str(tmp_path / "run"))
  assert result.returncode != 0
  assert "sampler run ddpm {'variance': 'x'}: unknown variance 'x'" in result.stderr
  assert "sampling:" not in result.stdout  # Nothing ran.
  assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("job", [("--job", "oracle"), ("--job=oracle",)])
def test_oracle_job_reads_configs_base_by_default(tmp_path, job):
  """Without --config, --job oracle takes configs/base.py: its field oracle.num_modes
  can be overridden (configs/benchmark.py has none), and its checks run."""
  result = run("bench.py", *job, "--workdir", str(tmp_path / "run"),
               "--config.oracle.num_modes", "3", "--config.num_samples", "0")
  assert result.returncode != 0 and "Traceback" not in result.stderr
  assert "invalid configuration: num_samples must be a positive integer, got 0" in result.stderr
  assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("args, message", [
    (("--job", "oracle", "--config", "configs/benchmark.py"),
     "--config configs/benchmark.py is not a config of --job oracle (it is a config of --job "
     "nfe: python3 bench.py --job nfe --config configs/benchmark.py); --job oracle takes "
     "configs like configs/base.py (nothing was run)"),
    (("--config", "configs/cosine.py"),
     "--config configs/cosine.py is not a config of --job nfe (it is a config of --job oracle: "
     "python3 bench.py --job oracle --config configs/cosine.py)"),
    (("--job", "oracle", "--peers", "--save-samples"),
     "--save-samples, --peers: flags of --job nfe, not of --job oracle (nothing was run)"),
])
def test_the_other_jobs_config_or_flag_is_refused(tmp_path, args, message):
  result = run("bench.py", *args, "--workdir", str(tmp_path / "run"))
  assert result.returncode != 0 and "Traceback" not in result.stderr
  assert message in result.stderr, result.stderr[-2000:]
  assert not (tmp_path / "run").exists()


def test_sample_py_without_a_checkpoint_points_to_the_oracle_job(tmp_path):
  result = run("sample.py", "--workdir", str(tmp_path / "run"))
  assert result.returncode != 0 and "Traceback" not in result.stderr
  assert "sample.py needs --checkpoint DIR" in result.stderr
  assert "python3 bench.py --job oracle" in result.stderr
  assert not (tmp_path / "run").exists()
