"""The main job and the inspection pictures, end to end."""

import json
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from jaxdiff import plots, schedules

ROOT = pathlib.Path(__file__).resolve().parents[1]


def run_main(*args):
  return subprocess.run([sys.executable, "sample.py", "--config", "tests/smoke_config.py", *args],
                        cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_sample_writes_results_and_never_overwrites(tmp_path):
  workdir = tmp_path / "run"
  result = run_main("--workdir", str(workdir))
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
  again = run_main("--workdir", str(workdir))
  assert again.returncode != 0 and "already holds files" in again.stderr
  assert {p.name: p.stat().st_mtime_ns for p in workdir.iterdir()} == before


def test_plot_schedules_and_noising(tmp_path):
  processes = {"ddpm cosine": schedules.discrete_ddpm("cosine"), "edm": schedules.EDM()}
  plots.plot_schedules(processes, tmp_path / "schedules.png")
  assert Image.open(tmp_path / "schedules.png").size[0] > 400

  images = jnp.linspace(-1, 1, 3 * 8 * 8).reshape(3, 8, 8, 1)
  plots.plot_noising(schedules.VE(), images, jax.random.PRNGKey(0), tmp_path / "noising.png")
  picture = np.asarray(Image.open(tmp_path / "noising.png").convert("L"), np.float32)
  assert picture.std() > 10  # Not blank.
  with pytest.raises(ValueError, match=r"images \[B, H, W, C\]"):
    plots.plot_noising(schedules.VE(), jnp.zeros((3, 8, 8)), jax.random.PRNGKey(0),
                       tmp_path / "bad.png")


@pytest.mark.parametrize("args, message", [
    # The smoke config's diffusers spacings need a discrete process; VP has none.
    (("--config.process", "vp", "--config.process_options", "{}"),
     "'trailing' spacing needs a discrete process"),
    (("--config.process", "vp"), "process 'vp' takes the options ['t_min', 't_max', 'beta_min', "
     "'beta_max'], got unknown ['num_steps', 'schedule']"),
    (("--config.num_samples", "0", "--config.prediction", "foo"),
     "num_samples must be a positive integer, got 0"),
    (("--config.num_sample", "3"), "unknown config key '--config.num_sample': the configuration "
     "has no field 'num_sample'. Did you mean \"num_samples\""),
])
def test_bad_config_is_refused_before_anything_is_written(tmp_path, args, message):
  workdir = tmp_path / "run"
  result = run_main("--workdir", str(workdir), *args)
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
  result = subprocess.run([sys.executable, "sample.py", "--config", str(config), "--workdir",
                           str(tmp_path / "run")], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
  assert result.returncode != 0
  assert "sampler run ddpm {'variance': 'x'}: unknown variance 'x'" in result.stderr
  assert "sampling:" not in result.stdout  # Nothing ran.
  assert not (tmp_path / "run").exists()


def test_plot_guidance_sweep(tmp_path):
  # Rows brighten with w: the picture's rows must differ, the layout S x B.
  scales = [1.0, 3.0, 5.0]
  samples = jnp.stack([jnp.full((4, 8, 8, 3), -1.0 + 0.6 * i) for i in range(3)])
  plots.plot_guidance_sweep(samples, scales, tmp_path / "sweep.png")
  picture = np.asarray(Image.open(tmp_path / "sweep.png").convert("L"), np.float32)
  thirds = np.array_split(picture, 3, axis=0)
  means = [third.mean() for third in thirds]
  assert means[0] < means[1] < means[2]
  with pytest.raises(ValueError, match=r"\[S, B, H, W, C\].*S = len\(scales\) = 2"):
    plots.plot_guidance_sweep(samples, scales[:2], tmp_path / "bad.png")
