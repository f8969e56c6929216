"""The programs on a trained digits model: the loss after training, bpd.py's discrete bound
beside the ODE figure, and study.py's studies. One tiny U-Net trained once (100 steps) serves
them all, a conditional one (10 steps) the guidance sweep; the studies that train their own
models train tiny ones; the file runs on its own pytest-xdist worker, beside test_train.py."""

import json
import re
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import ROOT, tiny_config
from configs import train_base
from jaxdiff import data, evaluation, inception, metrics, streamed, workdir
from jaxdiff.train import (experiment, fitted_grids, generate, sample_run, sharding, sweep,
                           trainer)
from jaxdiff.train.writer import read_metrics
from studies import classifier, common, embedding, few_step, guidance, schedules, training


@pytest.fixture(scope="module")
def trained_digits(tmp_path_factory, digits_train):
  """The tiny U-Net after 100 steps on digits (shared, read only)."""
  workdir = tmp_path_factory.mktemp("digits")
  config = tiny_config("digits", num_steps=100, log_every=20, checkpoint_every=100,
                       sample_every=100, batch_size=32, samples__num=0)
  trainer.train(experiment.Experiment.from_config(config, experiment.DataSpec.of(digits_train)),
                digits_train, workdir, sharding.make_mesh({"data": -1}), show_progress=False)
  return workdir


def test_loss_falls_on_digits(trained_digits):
  """100 steps of the tiny U-Net at batch 32 explain half the noise (measured 0.44)."""
  assert read_metrics(trained_digits)[-1]["loss"] < 0.5


def test_bpd_py_reports_the_discrete_bound_of_a_ddpm_beside_the_ode(trained_digits, tmp_path):
  result = subprocess.run(
      [sys.executable, str(ROOT / "bpd.py"), "--checkpoint", str(trained_digits), "--num", "4",
       "--batch-size", "4", "--rtol", "1e-3", "--atol", "1e-3", "--workdir",
       str(tmp_path / "bpd")], cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  row = json.loads((tmp_path / "bpd" / "results.json").read_text())
  assert (row["num"], row["num_dims"], row["divergence"], row["held_out"], row["rtol"],
          row["atol"]) == (4, 64, "hutchinson", "the test split", 1e-3, 1e-3)
  vlb = row["vlb"]
  assert (vlb["variance"], vlb["nfe"]) == ("beta_tilde", 1000)  # One call per step of T.
  assert vlb["total_bits_per_dim"] == pytest.approx(
      vlb["prior_bits_per_dim"] + vlb["diffusion_bits_per_dim"] + vlb["decoder_bits_per_dim"])
  # The cosine schedule ends at alpha_T^2 ~ 1e-9: its prior term is nearly 0. (This model of
  # 100 steps is far from its bound's minimum: above 8 bits/dim, uniform noise's.)
  assert 0 < vlb["prior_bits_per_dim"] < 1e-6 and vlb["diffusion_bits_per_dim"] > 0
  table = (tmp_path / "bpd" / "results.md").read_text()
  assert "| PF-ODE |" in table and "| discrete VLB (beta_tilde) |" in table


@pytest.fixture(scope="module")
def trained_points(tmp_path_factory):
  """The tiny MLP after 5 steps on 2-D points of the oracle's ring (shared, read only): data of
  a shape other options change (dim) and that no evaluation classifier judges."""
  workdir = tmp_path_factory.mktemp("points")
  config = tiny_config(num_steps=5, log_every=5, checkpoint_every=5, sample_every=5,
                       samples__num=0)
  config.data.source, config.data.options = "oracle", {"num_points": 64}
  source = data.make_source("oracle", num_points=64)
  trainer.train(experiment.Experiment.from_config(config, experiment.DataSpec.of(source)), source,
             workdir, sharding.make_mesh({"data": -1}), show_progress=False)
  return workdir


def test_a_checkpoint_refuses_data_of_another_shape_and_counts_that_cannot_run(trained_points):
  step_dir, built, _ = generate.load(trained_points)
  assert step_dir.name == "5" and built.data.shape == (2,)
  generate.check_data(built, data.make_source("oracle", num_points=8, seed=1))
  with pytest.raises(ValueError, match=r"oracle ring \(8 modes\) has records of shape \(3,\); "
                     r"the checkpoint was trained on \(2,\)"):
    generate.check_data(built, data.make_source("oracle", num_points=8, dim=3))
  generate.check_sampling(built, 1000, 500, 2**32 - 1, available=16_000)  # 16 bytes a sample.
  for (num, batch_size, seed), match in [
      ((0, 500, 0), "--num must be a positive integer, got 0"),
      ((10, 0, 0), "--batch-size must be a positive integer, got 0"),
      ((10, -3, 0), "--batch-size must be a positive integer, got -3"),
      ((10, 500, -1), r"--seed must be an integer in \[0, 2\*\*32\), got -1"),
      ((10, 500, 2**32), r"--seed must be an integer in \[0, 2\*\*32\), got 4294967296"),
      ((1001, 500, 0), "--num 1001 needs .* GiB on the host for x_T and the samples; .* GiB "
       "are available: at most 1000 samples fit")]:
    with pytest.raises(ValueError, match=match):
      generate.check_sampling(built, num, batch_size, seed, available=16_000)
  for w in (float("nan"), float("inf")):
    with pytest.raises(ValueError, match="guidance w must be a finite number"):
      generate.plan(built, "ddim", 2, guidance_scale=w)


def test_sample_py_and_bpd_py_refuse_bad_flags_before_claiming_a_folder(trained_points,
                                                                        tmp_path):
  """Each refusal is one line naming the flag, and no output folder is claimed. One refusal
  per program's check block shows the way out (sample.py's --evaluate, --guidance, --seed,
  --num and --save-every, and bpd.py's --seed, are checked where its --batch-size and
  --data-options are: the test above, tests/test_sample_run.py and tests/test_evaluation.py
  show what they refuse)."""
  # Inception weights with every tensor of pytorch-fid's state dict, none of its shape.
  weights = tmp_path / "wrong-shapes.npz"
  np.savez(weights, **{key: np.zeros(1, np.float32) for key in inception.torch_layout()})
  for program, flags, message in [
      ("sample.py", ["--batch-size", "0"], "--batch-size must be a positive integer, got 0"),
      ("bpd.py", ["--data-options", '{"dim": 3}'], "has records of shape (3,); the checkpoint "
       "was trained on (2,)")]:
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, str(ROOT / program), "--checkpoint",
                             str(trained_points), *flags, "--workdir", str(out)], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode != 0 and message in result.stderr, (flags, result.stderr[-3000:])
    assert "Traceback" not in result.stderr and not out.exists(), flags
  # sample.py builds its judges (streamed.judges) before it claims a folder, and exits with
  # their ValueError as one line: Inception weights none of whose tensors has its shape.
  with pytest.raises(ValueError, match=r"Conv2d_1a_3x3.bn.bias has shape \(1,\); Inception-v3 "
                     r"needs \(32,\)"):
    streamed.judges("digits", {}, "no", weights)


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


def study_options(**overrides) -> common.Options:
  """study.py's options for tiny runs: 20 samples, DDIM at 2 NFE, nothing judged."""
  return common.Options(**{
      "checkpoint": None, "num": 20, "batch_size": 500, "seed": 0, "evaluate": "no",
      "nfes": (2,), "samplers": ("ddim",), "reference_nfe": 8, "resample": 2, "steps": 4,
      "scales": (0.0, 4.0), "inception_weights": None, "sampler": "ddim", "nfe": 2,
      "train_steps": None, **overrides})


def run_in_process(study, options, out, *config):
  """What study.py does, in this process (its compiled functions shared with the others)."""
  prepared = study.prepare(options, *config)
  out.mkdir()
  return study.run(prepared, options, out)


def test_study_embedding_finds_the_zeroed_time_embedding(trained_digits, tmp_path):
  run_in_process(embedding, study_options(checkpoint=str(trained_digits)), tmp_path / "study")
  rows = json.loads((tmp_path / "study" / "results.json").read_text())["rows"]
  assert [r["images"] for r in rows] == ["trained", "time embedding zeroed"]
  # Weak after 100 steps of the tiny model (measured 1.3e-3), but not 0.
  assert rows[0]["time_sensitivity"] > 1e-4
  assert rows[1]["time_sensitivity"] == 0  # The output no longer depends on t at all.
  assert (tmp_path / "study" / "samples.png").is_file()


def test_study_few_step_sets_students_beside_their_teacher(trained_digits, trained_points,
                                                           tmp_path):
  """The teacher at --nfes and its default NFE, then each student at --nfes, each with its
  default sampler, the teacher with --params and the students with --student-params, from
  one x_T (the digits model stands in as its own student: its raw parameters the teacher,
  its EMA the student); a student of other data, no student, and a --student-params per
  student that does not match them are refused before anything samples."""
  options = study_options(checkpoint=str(trained_digits), nfes=(1,), params="raw",
                          students=(str(trained_digits),), student_params=("ema",))
  _, models = few_step.prepare(options)
  (_, _, teacher_params, _), (_, _, student_params, _) = models
  for which, params in (("raw", teacher_params), ("ema", student_params)):
    expected = generate.load(trained_digits, which)[2]
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(expected), strict=True):
      np.testing.assert_array_equal(a, b)
  table = run_in_process(few_step, options, tmp_path / "study")
  assert table.startswith(f"# few_step: the teacher {trained_digits / 'checkpoints'}")
  assert " (raw) and its students\n" in table.splitlines(keepends=True)[0]
  rows = json.loads((tmp_path / "study" / "results.json").read_text())["rows"]
  name = trained_digits.name
  assert [(r["images"], r["sampler"], r["nfe"]) for r in rows] == [
      (f"{name} (raw)", "unipc", 1), (f"{name} (raw)", "unipc", 20), (name, "unipc", 1)]
  assert (tmp_path / "study" / "samples.png").is_file()
  with pytest.raises(ValueError, match=r"--student-params names one choice for all students or "
                     r"one per student \(2\), got 3: raw,ema,ema"):
    few_step.prepare(study_options(checkpoint=str(trained_digits),
                                   students=(str(trained_digits),) * 2,
                                   student_params=("raw", "ema", "ema")))
  with pytest.raises(ValueError, match=r"trained on data of shape \(2,\), the teacher .* on "
                     r"\(8, 8, 1\)"):
    few_step.prepare(study_options(checkpoint=str(trained_digits),
                                   students=(str(trained_points),)))
  with pytest.raises(ValueError, match="name their training workdirs with --students"):
    few_step.prepare(study_options(checkpoint=str(trained_digits)))


def test_study_classifier_trains_a_noisy_classifier_and_guides(trained_digits, tmp_path):
  options = study_options(checkpoint=str(trained_digits), train_steps=50)
  run_in_process(classifier, options, tmp_path / "study")
  out = json.loads((tmp_path / "study" / "results.json").read_text())
  assert [(r["w"], r["num"], r["nfe"]) for r in out["rows"]] == [(0, 20, 2), (4, 20, 2)]
  accuracy = out["classifier"]["accuracy"]
  # 50 steps (at every noise level) already beat chance (0.1) on held-out digits at little
  # noise (measured 0.28); less with more.
  assert accuracy["sigma/alpha = 0.1"] > 0.2
  assert accuracy["sigma/alpha = 0.1"] >= accuracy["sigma/alpha = 1"]
  assert (tmp_path / "study" / "sweep.png").is_file()


@pytest.fixture(scope="module")
def trained_conditional_digits(tmp_path_factory, digits_train):
  """The tiny U-Net, class-conditional with label dropout, after 10 steps (read only)."""
  workdir = tmp_path_factory.mktemp("digits-conditional")
  config = tiny_config("digits", num_steps=10, log_every=10, checkpoint_every=10,
                       sample_every=10, batch_size=32, samples__num=0, model__conditional=True)
  trainer.train(experiment.Experiment.from_config(config, experiment.DataSpec.of(digits_train)),
                digits_train, workdir, sharding.make_mesh({"data": -1}), show_progress=False)
  return workdir


def test_study_guidance_sweeps_the_scales(trained_conditional_digits, trained_digits, tmp_path):
  options = study_options(checkpoint=str(trained_conditional_digits), scales=(0.0, 1.0, 3.0))
  run_in_process(guidance, options, tmp_path / "study")
  rows = json.loads((tmp_path / "study" / "results.json").read_text())["rows"]
  assert [(r["w"], r["num"]) for r in rows] == [(0, 20), (1, 20), (3, 20)]
  assert (tmp_path / "study" / "sweep.png").is_file()
  with pytest.raises(ValueError, match="takes a class-conditional model"):
    guidance.prepare(study_options(checkpoint=str(trained_digits)))
  with pytest.raises(ValueError, match="guides an unconditional model of labelled data; this "
                                       "one is conditional"):
    classifier.prepare(study_options(checkpoint=str(trained_conditional_digits)))


def test_study_schedules_trains_both_schedules(tmp_path):
  config = tiny_config("digits", samples__num=0)
  run_in_process(schedules, study_options(train_steps=3), tmp_path / "study", config)
  rows = json.loads((tmp_path / "study" / "results.json").read_text())["rows"]
  assert [(r["schedule"], r["sampler"], r["nfe"]) for r in rows] == [
      ("linear", "ddim", 2), ("cosine", "ddim", 2)]
  for schedule in ("linear", "cosine"):
    record = json.loads((tmp_path / "study" / schedule / "train_config.json").read_text())
    assert record["config"]["process_options"]["schedule"] == schedule
    assert record["config"]["num_steps"] == 3
  with pytest.raises(ValueError, match="compares DDPM schedules; --config trains 'edm'"):
    schedules.prepare(study_options(), train_base.use_edm(config))


def test_study_training_shows_loss_and_samples_over_training(tmp_path, monkeypatch):
  # configs/toy2d.py as the study trains it, its pictures of 20 samples instead of 2000 (their
  # sampling, five times, was most of this test's time).
  toy_config = training.toy2d.get_config

  def toy_config_with_small_pictures():
    config = toy_config()
    config.samples.num = 20
    return config

  monkeypatch.setattr(training.toy2d, "get_config", toy_config_with_small_pictures)
  run_in_process(training, study_options(train_steps=5), tmp_path / "study",
                 tiny_config("digits"))
  rows = json.loads((tmp_path / "study" / "results.json").read_text())["rows"]
  assert [(r["images"], r["steps"]) for r in rows] == [("toy", 5), ("digits", 5)]
  for row in rows:  # A picture at each of the five steps.
    assert [p.split("/")[-1] for p in row["pictures"]] == [f"step-{n}.png" for n in range(1, 6)]
  assert (tmp_path / "study" / "training.png").is_file()


def test_fit_grids_py_fits_saves_and_generate_plan_uses_the_fitted_grid(trained_points,
                                                                        tmp_path):
  """fit_grids.py on a copy of the points model (NFE 2 and 3, the tiniest fit): one file per
  NFE beside the checkpoint, no worse than the default grid on the held-out pairs, monotone
  in NFE, not replaced without force; generate.plan (what sample.py --checkpoint calls with
  the checkpoint's step_dir) picks the fitted grid and says so, --grid wins, and a file of
  another process or length is refused, naming it. One subprocess: the rest in-process."""
  workdir = tmp_path / "points"
  shutil.copytree(trained_points, workdir)
  fit = [sys.executable, str(ROOT / "fit_grids.py"), "--checkpoint", str(workdir), "--nfe",
         "3,2", "--num", "8", "--iterations", "1", "--fit-batch-size", "4", "--teacher-nfe",
         "4", "--starts", "karras", "--perturbed", "0", "--options", '{"order": 2}']
  result = subprocess.run(fit, cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  step_dir, built, _ = generate.load(workdir)
  paths = [fitted_grids.path_for(step_dir, "unipc", {}, nfe) for nfe in (2, 3)]
  records = [json.loads(p.read_text()) for p in paths]  # {"order": 2} is unipc's default.
  for nfe, record in zip((2, 3), records):
    assert (record["sampler"], record["options"], record["nfe"]) == ("unipc", {}, nfe)
    assert len(record["grid"]) == nfe + 1 and record["grid"][0] == record["init_grid"][0]
    assert record["rmse"] <= record["rmse_init"] and record["num_held_out"] == 2
  assert records[1]["rmse"] <= records[0]["rmse"] and records[1]["monotone"]
  with pytest.raises(FileExistsError, match="pass --force to replace it"):
    fitted_grids.save(paths[0], {**records[0], "grid": [0.0]})
  assert json.loads(paths[0].read_text()) == records[0]  # Untouched.

  plan = generate.plan(built, "unipc", 3, step_dir=step_dir)
  assert f"unipc, NFE 3, fitted {paths[1].name} grid (3 steps)" in plan.describe()
  assert plan.grid_name == f"fitted {paths[1].name}" and not plan.grid_options
  np.testing.assert_array_equal(plan.grid, np.float32(records[1]["grid"]))
  assert generate.plan(built, "unipc", 3, grid="uniform", step_dir=step_dir).grid_name == "uniform"
  assert generate.plan(built, "unipc", 4, step_dir=step_dir).grid_name != "fitted"
  for change, message in [
      ({"process": {**records[1]["process"], "log_snr": [0.0] * 9}}, "for another process"),
      ({"grid": records[1]["grid"][:-1]}, "has 3 times; unipc at NFE 3 needs a grid of 4")]:
    paths[1].write_text(json.dumps({**records[1], **change}))
    with pytest.raises(ValueError, match=f"fitted grid {re.escape(str(paths[1]))} .*{message}"):
      generate.plan(built, "unipc", 3, step_dir=step_dir)


def quadrant_judge(real_images) -> streamed.Judge:
  """A judge that compiles in no time: an image's features are its four quadrants' means
  (the Frechet distance of those to the real images'); uninformative logits."""
  def apply(variables, images):
    del variables
    b, h, w, _ = images.shape
    features = images.reshape(b, 2, h // 2, 2, w // 2).mean(axis=(2, 4)).reshape(b, 4)
    return features, jnp.zeros((b, 10))

  features = np.asarray(apply(None, jnp.asarray(real_images))[0], np.float64)
  return streamed.Judge("inception", apply, None, *metrics.feature_statistics(features),
                        features[:200], "digits quadrants", len(features))


def test_sweep_runs_each_cell_once_resumes_a_killed_one_and_refuses_bad_input(
    trained_digits, digits_train, tmp_path, monkeypatch):
  """sweep.py's library on the tiny digits model, 2 samplers x 1 NFE of 20 samples (KID's least): a kill in
  the second cell's second batch leaves the first cell's row; the same sweep run again skips
  that cell and continues the killed one from its saved batch; a third run samples nothing.
  The rows, results.md's pair, the NFE plot. Bad input is refused before anything samples."""
  judged = {"inception": quadrant_judge(evaluation.source_arrays(digits_train)[0])}
  job = sample_run.Job(20, 10, 0, save_images=0, keep_features=20, save_every=1)
  out = tmp_path / "sweep"
  prepare = lambda *axes, **kw: sweep.prepare(kw.get("path", trained_digits), "last", *axes,
                                              job, out, judged=judged)
  with pytest.raises(FileNotFoundError, match="no complete checkpoint in"):
    prepare(["ema"], ["ddim"], [2], [1.0], path=tmp_path)
  for axes, message in [((["ema"], ["nope"], [2], [1.0]), "nope"),
                        ((["ema:0.5"], ["ddim"], [2], [1.0]), "params must be 'raw', 'ema'"),
                        ((["ema"], ["ddim"], [2], [2.0]), "needs a class-conditional model")]:
    with pytest.raises(ValueError, match=message):
      prepare(*axes)
  with pytest.raises(ValueError, match=r"no checkpoint step is a multiple of 7; there are \[100\]"):
    sweep.select_steps(trained_digits, "every:7")

  calls = []
  make_step = sample_run.make_step

  def killed_at_call_4(*args):
    step = make_step(*args)
    def counted(*step_args):
      calls.append(1)
      if len(calls) == 4:
        raise KeyboardInterrupt
      return step(*step_args)
    return counted

  monkeypatch.setattr(sample_run, "make_step", killed_at_call_4)
  mesh = sharding.make_mesh({"data": -1})
  axes = (["ema"], ["ddim", "euler"], [2], [1.0])
  out.mkdir()
  with pytest.raises(KeyboardInterrupt):
    sweep.run(prepare(*axes), out, mesh, progress=False, bootstrap=50)
  assert [row["sampler"] for row in workdir.read_rows(out)] == ["ddim"]
  calls.clear()
  rows = sweep.run(prepare(*axes), out, mesh, progress=False, bootstrap=50)
  assert len(calls) == 1 and rows[1]["resumed_batches"] == 1  # Batch 2 of the killed cell only.
  assert [(r["step"], r["sampler"], r["nfe_counted"], r["quality"]["inception"]["num_samples"])
          for r in workdir.read_rows(out)] == [(100, "ddim", 2, 20), (100, "euler", 2, 20)]
  report = (out / "results.md").read_text()
  assert "| 100 | ema | 2 | 1 | ddim | euler |" in report and "resamples those" in report
  assert (out / "quality-nfe.png").stat().st_size > 0
  calls.clear()
  assert len(sweep.run(prepare(*axes), out, mesh, progress=False, bootstrap=50)) == 2
  assert not calls and len(workdir.read_rows(out)) == 2
