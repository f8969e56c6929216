"""The programs on a trained digits model: the loss after training, bpd.py's discrete bound
beside the ODE figure, and study.py's samplers and edit studies. One tiny U-Net trained once
(100 steps) serves them all; the file runs on its own pytest-xdist worker, beside
test_train.py."""

import json
import subprocess
import sys

import pytest

from conftest import ROOT, tiny_config
from jaxdiff.train import experiment, loop, sharding
from jaxdiff.train.writer import read_metrics


@pytest.fixture(scope="module")
def trained_digits(tmp_path_factory, digits_train):
  """The tiny U-Net after 100 steps on digits (shared, read only)."""
  workdir = tmp_path_factory.mktemp("digits")
  config = tiny_config("digits", num_steps=100, log_every=20, checkpoint_every=100,
                       sample_every=100, batch_size=32, samples__num=0)
  loop.train(experiment.Experiment.from_config(config, experiment.DataSpec.of(digits_train)),
             digits_train, workdir, sharding.make_mesh({"data": -1}), show_progress=False)
  return workdir


def test_loss_falls_on_digits(trained_digits):
  """100 steps of the tiny U-Net at batch 32 explain half the noise (measured 0.44)."""
  assert read_metrics(trained_digits)[-1]["loss"] < 0.5


def test_bpd_py_reports_the_discrete_bound_of_a_ddpm_beside_the_ode(trained_digits, tmp_path):
  result = subprocess.run(
      [sys.executable, str(ROOT / "bpd.py"), "--checkpoint", str(trained_digits), "--num", "4",
       "--batch-size", "4", "--workdir", str(tmp_path / "bpd")], cwd=ROOT, capture_output=True,
      text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  row = json.loads((tmp_path / "bpd" / "results.json").read_text())
  assert (row["num"], row["num_dims"], row["divergence"], row["held_out"]) == (
      4, 64, "hutchinson", "the test split")
  vlb = row["vlb"]
  assert (vlb["variance"], vlb["nfe"]) == ("beta_tilde", 1000)  # One call per step of T.
  assert vlb["total_bits_per_dim"] == pytest.approx(
      vlb["prior_bits_per_dim"] + vlb["diffusion_bits_per_dim"] + vlb["decoder_bits_per_dim"])
  # The cosine schedule ends at alpha_T^2 ~ 1e-9: its prior term is nearly 0. (This model of
  # 100 steps is far from its bound's minimum: above 8 bits/dim, uniform noise's.)
  assert 0 < vlb["prior_bits_per_dim"] < 1e-6 and vlb["diffusion_bits_per_dim"] > 0
  table = (tmp_path / "bpd" / "results.md").read_text()
  assert "| PF-ODE |" in table and "| discrete VLB (beta_tilde) |" in table


def test_study_py_samplers_runs_every_row_on_one_model(trained_digits, tmp_path):
  result = subprocess.run(
      [sys.executable, str(ROOT / "study.py"), "samplers", "--checkpoint", str(trained_digits),
       "--num", "20", "--nfes", "2", "--samplers", "ddim", "--reference-nfe", "8",
       "--evaluate", "no", "--workdir", str(tmp_path / "study")], cwd=ROOT, capture_output=True,
      text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  rows = json.loads((tmp_path / "study" / "results.json").read_text())["rows"]
  assert [(r["sampler"], r["nfe"], r["num"]) for r in rows] == [
      ("ddim", 2, 20), ("ddpm", 8, 20)]
  assert (tmp_path / "study" / "samples.png").is_file()
  assert "| ddpm | 8 |" in (tmp_path / "study" / "results.md").read_text()
  bad = subprocess.run([sys.executable, str(ROOT / "study.py"), "samplers", "--checkpoint",
                        str(trained_digits), "--nfes", "ten", "--workdir", str(tmp_path / "bad")],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert bad.returncode != 0 and "--nfes must be integers" in bad.stderr
  assert not (tmp_path / "bad").exists()


def test_study_py_edit_inpaints_and_keeps_the_known_half(trained_digits, tmp_path):
  result = subprocess.run(
      [sys.executable, str(ROOT / "study.py"), "edit", "--checkpoint", str(trained_digits),
       "--num", "20", "--steps", "4", "--resample", "2", "--evaluate", "no", "--workdir",
       str(tmp_path / "edit")], cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  rows = json.loads((tmp_path / "edit" / "results.json").read_text())["rows"]
  assert [r["images"] for r in rows] == [
      "guide (input of SDEdit)", "inpaint, resample 1", "inpaint, resample 2",
      "SDEdit from sigma/alpha = 0.25", "SDEdit from sigma/alpha = 0.5",
      "SDEdit from sigma/alpha = 1"]
  assert rows[0]["distance_to_guide"] == 0
  assert (tmp_path / "edit" / "edits.png").is_file()
