"""Training: the optimizer, schedule and EMA against their formulas, the objective
(EDM preconditioning), the loss falling on the toy set and on digits, exact
resumption (from a checkpoint, and after SIGKILLs at random moments), the sample
quality measured during training, NaN stops, unreadable checkpoints, and clear
errors for bad configs."""

import dataclasses
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import flax.linen
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from conftest import ROOT, tiny_config
from jaxdiff import data, diagnostics, losses, metrics, oracle, parameterization, schedules
from jaxdiff import streamed
from jaxdiff.models.mlp import MLP
from jaxdiff.train import (checkpoint, experiment, generate, optim, periodic_eval, phema,
                           sample_run, sharding,
                           state as train_state, step, trainer)
from jaxdiff.train.writer import read_metrics


def build(config, source):
  return experiment.Experiment.from_config(config, experiment.DataSpec.of(source))


def train(config, source, workdir, **kw):
  mesh = sharding.make_mesh({"data": -1})
  return trainer.train(build(config, source), source, workdir, mesh, show_progress=False, **kw)


def final_state(workdir, config, source):
  """The TrainState of the latest checkpoint in workdir, as numpy."""
  built = build(config, source)
  abstract = jax.eval_shape(built.init_fn(optim.make_optimizer(built.optimizer,
                                                               built.run.num_steps)))
  state = checkpoint.restore_state(checkpoint.find(workdir), abstract)
  return jax.tree.map(np.asarray, state)


def assert_bitwise_equal(a, b):
  leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(leaves_a) == len(leaves_b)
  for x, y in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(x, y)


# Three power-function EMAs, snapshots every 4 steps: post-hoc EMA (jaxdiff.train.phema).
PHEMA = {"ema__phema_sigma_rels": (0.05, 0.10, 0.15), "ema__snapshot_every": 4}


def identity_judge(source):
  """A judge of 2-D points by the points themselves (the identity as feature network, one
  class): its "fid" is the Frechet distance of the Gaussians fitted to the samples and to the
  data."""
  points = data.model_arrays(source)[0]  # [N, 2]
  mu, sigma = metrics.feature_statistics(points)
  return streamed.Judge("inception", lambda variables, x: (x, jnp.zeros((x.shape[0], 1))), {},
                        mu, sigma, points, "toy points", len(points))


# The sample quality every 5 steps, of the EMA and the raw parameters, judged by identity_judge.
TOY_EVAL = {"eval__every": 5, "eval__num": 32, "eval__batch_size": 32, "eval__nfe": 4,
            "eval__params": ("ema", "raw")}


@pytest.fixture(scope="module")
def trained_toy(tmp_path_factory, toy_source):
  """A toy run of 20 steps with checkpoints and held-out bits/dim at 10 and 20, post-hoc EMA
  snapshots at 4, 8, ..., 20 and the sample quality every 5 steps (shared, read only)."""
  workdir = tmp_path_factory.mktemp("toy")
  train(tiny_config(bpd__every=10, bpd__num=16, bpd__batch_size=16, **PHEMA, **TOY_EVAL),
        toy_source, workdir, judges={"inception": identity_judge(toy_source)})
  return workdir


# --------------------------------------------------------------------------
# Optimizer, schedule, EMA: their formulas.
# --------------------------------------------------------------------------


def test_learning_rate_is_linear_warmup_then_cosine_or_constant():
  config = optim.OptimizerConfig(learning_rate=1e-3, warmup_steps=10, schedule="cosine",
                                 end_learning_rate=1e-5)
  lr = optim.learning_rate_schedule(config, num_steps=110)
  peak, end = 1e-3, 1e-5
  for n, expected in ((0, 0.0), (5, 0.5 * peak), (10, peak),
                      (60, end + (peak - end) * 0.5 * (1 + np.cos(np.pi * 50 / 100))),
                      (110, end)):
    assert float(lr(n)) == pytest.approx(expected, rel=1e-5, abs=1e-12), n
  constant = optim.learning_rate_schedule(
      optim.OptimizerConfig(learning_rate=2e-4, warmup_steps=4, schedule="constant"), 100)
  assert [float(constant(n)) for n in (0, 2, 4, 99)] == pytest.approx([0, 1e-4, 2e-4, 2e-4])


def test_ema_decay_warms_up_and_the_update_is_a_convex_combination():
  for n, expected in ((0, 0.1), (1, 2 / 11), (90, 91 / 100), (10**6, 0.9999)):
    assert float(optim.ema_decay(0.9999, n)) == pytest.approx(expected, rel=1e-6), n
  assert float(optim.ema_decay(0.99, 0, warmup=False)) == pytest.approx(0.99)
  ema, params = {"w": jnp.array([1.0, 2.0])}, {"w": jnp.array([3.0, -2.0])}
  out = optim.ema_update(ema, params, 0.75)
  np.testing.assert_allclose(out["w"], 0.75 * np.array([1, 2]) + 0.25 * np.array([3, -2]))


@pytest.mark.parametrize("decay_norms_and_biases", [False, True])
def test_weight_decay_is_decoupled_and_skips_vectors_by_default(decay_norms_and_biases):
  """With zero gradients Adam's step is 0, so one update is exactly -lr * wd * theta
  where decay applies (AdamW, Loshchilov & Hutter 2019, Alg. 2 line 12)."""
  config = optim.OptimizerConfig(learning_rate=0.1, weight_decay=0.5, schedule="constant",
                                 decay_norms_and_biases=decay_norms_and_biases)
  tx = optim.make_optimizer(config, num_steps=10)
  params = {"dense": {"kernel": jnp.ones((2, 3)), "bias": jnp.ones(3)},
            "norm": {"scale": jnp.ones(3)}}
  updates, _ = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
  new = optax.apply_updates(params, updates)
  np.testing.assert_allclose(new["dense"]["kernel"], 1 - 0.1 * 0.5)
  vector = 1 - 0.1 * 0.5 if decay_norms_and_biases else 1.0
  np.testing.assert_allclose(new["dense"]["bias"], vector)
  np.testing.assert_allclose(new["norm"]["scale"], vector)


@pytest.mark.parametrize("norm", [5.0, 0.5])
def test_gradients_are_clipped_by_global_norm_before_adam(norm):
  config = optim.OptimizerConfig(learning_rate=1.0, grad_clip=1.0, schedule="constant")
  clip = optim.make_optimizer(config, 10)
  direction = np.array([0.6, 0.8])
  grads = {"a": jnp.asarray(norm * direction, jnp.float32)}
  state = clip.init(grads)
  # After clipping the first Adam step is lr * g / (|g| + eps) = sign(g) whatever the
  # norm, so compare the second moments Adam keeps instead: g clipped to norm 1 when
  # larger, untouched when smaller.
  _, state = clip.update(grads, state, grads)
  adam_state = state[1][0]
  np.testing.assert_allclose(adam_state.nu["a"], (1 - 0.999) * (min(norm, 1.0) * direction) ** 2,
                             rtol=1e-6)


# --------------------------------------------------------------------------
# The objective.
# --------------------------------------------------------------------------


@pytest.mark.parametrize("process", [schedules.EDM(), schedules.VP()])
def test_edm_preconditioning_is_karras_table_1_in_scaled_variables(process):
  sd = 0.5
  network = lambda x, c_noise, cond: jnp.sin(3 * x) + c_noise[:, None]
  x_t = jnp.array([[0.3, -1.2], [2.0, 0.1]])
  t = jnp.array([0.05, 0.8]) * process.t_max
  denoised = parameterization.edm_preconditioned(network, process)(x_t, t)
  alpha = np.asarray(process.alpha(t))[:, None]
  s = np.asarray(process.sigma(t))[:, None] / alpha
  x = np.asarray(x_t) / alpha
  c_skip, c_out = sd**2 / (s**2 + sd**2), s * sd / np.sqrt(s**2 + sd**2)
  c_in, c_noise = 1 / np.sqrt(s**2 + sd**2), np.log(s) / 4
  expected = c_skip * x + c_out * (np.sin(3 * c_in * x) + c_noise)
  np.testing.assert_allclose(np.asarray(denoised), expected, rtol=1e-5)
  weight = parameterization.edm_loss_weight(process, t)
  np.testing.assert_allclose(np.asarray(weight), ((s**2 + sd**2) / (s * sd) ** 2)[:, 0],
                             rtol=1e-5)


def test_objective_errors_name_the_field():
  with pytest.raises(ValueError, match="loss.weighting must be one of .*'edm'.*got 'karras'"):
    step.Objective(schedules.EDM(), weighting="karras")
  with pytest.raises(ValueError, match="EDM preconditioning makes the network an x0 prediction"):
    step.Objective(schedules.EDM(), preconditioning="edm", prediction="eps")


# --------------------------------------------------------------------------
# The loop: learning, resumption, stops.
# --------------------------------------------------------------------------


def test_the_workdir_holds_metrics_pictures_and_events(trained_toy):
  rows = read_metrics(trained_toy)
  assert [r["step"] for r in rows] == [5, 10, 15, 20]
  assert {"loss", "grad_norm", "learning_rate", "steps_per_s", "images_per_s",
          "ema_decay/0.9999"} <= set(rows[0])
  assert (trained_toy / "samples" / "step-20.png").is_file()
  assert list((trained_toy / "tensorboard").glob("events.out.tfevents.*"))
  record = checkpoint.read_run(checkpoint.find(trained_toy))
  assert record["data"] == {"shape": [2], "num_classes": 0, "eight_bit": False,
                          "autoencoder": None}
  assert record["config"]["model"]["options"] == {"features": 32, "num_blocks": 2}


def test_loss_falls_towards_the_oracle_minimum(tmp_path):
  """On the ring oracle, L_simple's minimum is the exact denoiser's loss (Monte Carlo); a
  zero network scores 1 (E ||eps||^2 / D). 300 steps close 80% of that gap (measured 93%).
  (On digits: tests/test_programs.py.)"""
  source = data.make_source("oracle", num_points=4096)
  config = tiny_config(num_steps=300, log_every=20, checkpoint_every=300, sample_every=300,
                       batch_size=64, samples__num=0, data__source="oracle", data__options={"num_points": 4096})
  built = build(config, source)
  trainer.train(built, source, tmp_path / "oracle", sharding.make_mesh({"data": -1}),
                show_progress=False)
  mixture = oracle.ring()
  x0 = mixture.sample(jax.random.PRNGKey(1), 100_000)
  minimum, _ = losses.diffusion_loss(mixture.denoise_fn(built.process, "eps"), built.process, x0,
                                     jax.random.PRNGKey(2))
  minimum = float(jnp.mean(minimum))  # Measured 0.269 (standard error 0.002).
  final = read_metrics(tmp_path / "oracle")[-1]["loss"]
  assert final - minimum < 0.2 * (1.0 - minimum), (final, minimum)


class TimeBlind(flax.linen.Module):
  """A network with a dead time embedding: told t = 0.5 whatever t is."""
  inner: flax.linen.Module

  def __call__(self, x, t, cond=None, *, deterministic: bool):
    return self.inner(x, jnp.full_like(t, 0.5), cond, deterministic=deterministic)


def test_training_measures_the_dependence_on_t_and_warns_when_there_is_none(
    trained_toy, toy_source, tmp_path, capsys):
  healthy = read_metrics(trained_toy)[-1]
  assert healthy["time_sensitivity"] > 10 * diagnostics.DEAD  # Measured 0.015 at step 20.
  assert healthy["class_sensitivity"] == 0  # Unconditional.
  built = build(tiny_config(num_steps=10, samples__num=0, sample_every=10), toy_source)
  blind = dataclasses.replace(built, model=TimeBlind(built.model))
  trainer.train(blind, toy_source, tmp_path, sharding.make_mesh({"data": -1}), show_progress=False)
  assert read_metrics(tmp_path)[-1]["time_sensitivity"] == 0
  assert "step 10: the EMA network's output barely depends on t" in capsys.readouterr().out


def test_resumed_run_is_bitwise_equal_to_the_uninterrupted_one(trained_toy, toy_source,
                                                              tmp_path):
  """The workdir of a run killed after its step-10 checkpoint and its step-12 post-hoc EMA
  snapshot, resumed: the same parameters, EMAs, optimizer state, metrics and sample quality
  (the evaluation's randomness fixed) at step 20 as the uninterrupted run, the same best
  checkpoint, and the same snapshots, the one at 12 left as it was."""
  config = tiny_config(samples__num=0, **PHEMA, **TOY_EVAL)
  for step_dir in (trained_toy / "checkpoints").iterdir():  # 10, and 5 where it was the best.
    if int(step_dir.name) <= 10:
      shutil.copytree(step_dir, tmp_path / "checkpoints" / step_dir.name)
  for step_dir in ("4", "8", "12"):
    shutil.copytree(trained_toy / "phema" / step_dir, tmp_path / "phema" / step_dir)
  written = {f: f.stat().st_mtime_ns for f in (tmp_path / "phema" / "12").rglob("*")}
  summary = train(config, toy_source, tmp_path, judges={"inception": identity_judge(toy_source)})
  assert summary.start_step == 10 and summary.step == 20
  assert_bitwise_equal(final_state(tmp_path, config, toy_source),
                       final_state(trained_toy, config, toy_source))
  measured = lambda row: {k: v for k, v in row.items() if k.startswith("eval/ema")
                          or k.startswith("eval/raw") or k == "loss"}
  resumed = {r["step"]: measured(r) for r in read_metrics(tmp_path)}
  assert resumed == {r["step"]: measured(r) for r in read_metrics(trained_toy) if r["step"] > 10}
  assert resumed[20]["eval/ema/fid"] > 0
  best = json.loads((tmp_path / periodic_eval.BEST).read_text())
  assert best == json.loads((trained_toy / periodic_eval.BEST).read_text())
  assert written == {f: f.stat().st_mtime_ns for f in (tmp_path / "phema" / "12").rglob("*")}
  snapshots, uninterrupted = phema.saved(tmp_path), phema.saved(trained_toy)
  assert [(s.step, s.sigma_rel) for s in snapshots] == [
      (s.step, s.sigma_rel) for s in uninterrupted] == [
          (t, s) for t in (4, 8, 12, 16, 20) for s in (0.05, 0.10, 0.15)]
  for a, b in zip(snapshots, uninterrupted):
    assert_bitwise_equal(a.read(), b.read())


def test_post_hoc_ema_of_a_tracked_length_matches_it(trained_toy, toy_source, tmp_path):
  """sigma_rel 0.10, tracked in the step, against its reconstruction from the 0.05 and 0.15
  snapshots alone (a profile error of 4.7% at snapshots every 4 of 20 steps): the
  parameters' error is a small part of the distance between the 0.05 and 0.10 EMAs.
  generate.load("phema:0.1") at step 20 is the tracked EMA (its own snapshot), and refuses
  what the snapshots cannot represent, or a run that kept none, before reading arrays."""
  ema = final_state(trained_toy, tiny_config(**PHEMA), toy_source).ema
  snapshots = phema.saved(trained_toy)
  assert_bitwise_equal(snapshots[-2].read(), ema["phema:0.1"])  # Step 20's, as tracked.
  others = [s for s in snapshots if s.sigma_rel != 0.10]
  reconstructed = phema.reconstruct(others, 0.10, 20)

  def distance(a, b):
    return math.sqrt(sum(float(np.sum((np.asarray(x, np.float64) - np.asarray(y)) ** 2))
                         for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))))

  error = distance(reconstructed, ema["phema:0.1"])
  assert error < 0.1 * distance(ema["phema:0.05"], ema["phema:0.1"])
  assert error < 1e-4 * distance(ema["phema:0.1"], jax.tree.map(np.zeros_like, ema["phema:0.1"]))
  _, _, loaded = generate.load(trained_toy, "phema:0.1")
  assert distance(loaded, ema["phema:0.1"]) < 1e-6
  with pytest.raises(ValueError, match=r"cannot represent sigma_rel 0.25 at step 20: .* they "
                     r"can represent sigma_rel in \[0.0\d\d, 0.[12]\d\d\]"):
    generate.load(trained_toy / "checkpoints" / "20", "phema:0.25")
  with pytest.raises(ValueError, match=r"sigma_rel must lie in \(0, 0.2887\)"):
    generate.load(trained_toy, "phema:0.5")
  # The same checkpoint as if trained without snapshots.
  shutil.copytree(trained_toy / "checkpoints" / "20", tmp_path / "checkpoints" / "20")
  record = checkpoint.read_run(tmp_path / "checkpoints" / "20")
  record["config"]["ema"].update(phema_sigma_rels=[], snapshot_every=0)
  shutil.rmtree(tmp_path / "checkpoints" / "20" / "run")
  with ocp.Checkpointer(ocp.JsonCheckpointHandler()) as writer:
    writer.save(tmp_path / "checkpoints" / "20" / "run", record)
  with pytest.raises(ValueError, match=r"params 'phema:0.1' needs the post-hoc EMA snapshots "
                     r"of a run trained with ema.phema_sigma_rels .* this one kept none"):
    generate.load(tmp_path, "phema:0.1")


def test_sample_quality_is_measured_every_eval_steps_and_the_best_checkpoint_kept(trained_toy):
  """eval.every 5: a row of each params's figures at 5, 10, 15 and 20; each step whose lowest
  FID over the params is the lowest so far is checkpointed (also off checkpoint_every) and
  named in best.json."""
  rows = {r["step"]: r for r in read_metrics(trained_toy)}
  assert [s for s, r in rows.items() if "eval/ema/fid" in r] == [5, 10, 15, 20]
  best, new_bests = None, []
  for s in (5, 10, 15, 20):
    for which in ("ema", "raw"):
      for name in periodic_eval.INCEPTION_FIGURES:
        assert np.isfinite(rows[s][f"eval/{which}/{name}"]), (s, which, name)
    value = min(rows[s]["eval/ema/fid"], rows[s]["eval/raw/fid"])
    if best is None or value < best[0]:
      best = (value, s, "ema" if value == rows[s]["eval/ema/fid"] else "raw")
      new_bests.append(s)
  assert json.loads((trained_toy / periodic_eval.BEST).read_text()) == {
      "metric": "fid", "step": best[1], "params": best[2], "value": best[0],
      "checkpoint": f"checkpoints/{best[1]}"}
  assert sorted(int(p.name) for p in (trained_toy / "checkpoints").iterdir()) == sorted(
      {10, 20, *new_bests})


def test_sigkill_at_random_moments_then_resume_is_bitwise_equal(tmp_path):
  """train.py killed three times -- once while a checkpoint is being written, twice a random
  0-0.5 s after the run makes progress -- and restarted each time: the final state equals the
  uninterrupted run's, and metrics.jsonl holds each step once."""
  longer = ("--config.num_steps", "300", "--config.log_every", "10", "--config.samples.num",
            "0", "--config.keep_checkpoints", "3")
  # Every run after the first loads its compiled programs from JAX's persistent cache.
  env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "jax-cache"),
         "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
  command = [sys.executable, "train.py", "--config", "tests/tiny_config.py", *longer]
  # The uninterrupted run checkpoints at its end only (the cadence changes no update; its 30
  # checkpoints took half its time).
  reference = subprocess.run(command + ["--config.checkpoint_every", "300", "--workdir",
                                        str(tmp_path / "reference")], cwd=ROOT,
                             capture_output=True, text=True, timeout=600, env=env)
  assert reference.returncode == 0, reference.stderr[-3000:]
  workdir = tmp_path / "killed"
  args = command + ["--workdir", str(workdir)]
  rng = random.Random(0)
  kills = 0
  for kill in range(3):
    process = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, env=env)
    start_rows = len(read_metrics(workdir))
    deadline = time.monotonic() + 300
    if kill == 0:  # While the first checkpoint is written: its temporary folder exists.
      while not list((workdir / "checkpoints").glob("*.orbax-checkpoint-tmp*")):
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.001)
    else:  # A random moment once this run has logged a step of its own.
      while len(read_metrics(workdir)) <= start_rows and process.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.01)
      time.sleep(rng.uniform(0.0, 0.5))
    if process.poll() is not None:
      break  # Finished before this kill.
    process.send_signal(signal.SIGKILL)
    process.wait()
    kills += 1
  result = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
  assert result.returncode == 0, result.stderr[-3000:]
  assert kills == 3, kills
  assert not (workdir / "INCOMPLETE").exists()
  config = tiny_config(num_steps=300, log_every=10, samples__num=0, keep_checkpoints=3)
  source = data.make_source("toy", name="checkerboard", num_points=512)
  assert_bitwise_equal(final_state(workdir, config, source),
                       final_state(tmp_path / "reference", config, source))
  steps = [r["step"] for r in read_metrics(workdir)]
  assert steps == list(range(10, 301, 10))  # Redone rows replaced, not doubled.


def test_unreadable_checkpoint_is_set_aside_for_the_one_before(trained_toy, toy_source,
                                                              tmp_path):
  for step_dir in ("10", "20"):
    shutil.copytree(trained_toy / "checkpoints" / step_dir, tmp_path / "checkpoints" / step_dir)
  for f in (tmp_path / "checkpoints" / "20" / "state").rglob("*"):
    if f.is_file() and "manifest" in f.name:
      f.unlink()  # A complete-looking checkpoint whose arrays cannot be read.
  with pytest.warns(UserWarning, match="checkpoint 20 cannot be read .* trying the one before"):
    summary = train(tiny_config(samples__num=0, **PHEMA), toy_source, tmp_path)
  assert summary.start_step == 10 and summary.step == 20
  assert len(list((tmp_path / "checkpoints-unreadable").iterdir())) == 1  # Kept, not deleted.


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(trained_toy,
                                                                          tmp_path):
  """Resumed from step 10 on data that overflows the network: the loss is inf at step 11."""
  shutil.copytree(trained_toy / "checkpoints" / "10", tmp_path / "checkpoints" / "10")
  points = np.full((64, 2), 1e30, np.float32)
  poisoned = data.ArraySource(points, np.zeros(64, np.int32), 0, eight_bit=False,
                              origin="poisoned")
  with pytest.raises(FloatingPointError, match="the loss is (inf|nan) at step 11; .* last "
                     "good checkpoint \\(10\\)"):
    train(tiny_config(samples__num=0, **PHEMA), poisoned, tmp_path)
  assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["10"]


def test_checkpoint_of_another_config_is_refused_and_kept(trained_toy, toy_source, tmp_path):
  shutil.copytree(trained_toy / "checkpoints" / "10", tmp_path / "checkpoints" / "10")
  other = tiny_config(model__options={"features": 64, "num_blocks": 2})
  with pytest.raises(trainer.ConfigMismatch, match=r"model.options.features: 32 in the "
                     r"checkpoint, 64 now"):
    train(other, toy_source, tmp_path)
  assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["10"]
  # num_steps and the cadences may change: training goes on to the new num_steps.
  longer = tiny_config(num_steps=30)
  assert build(longer, toy_source).differences(build(tiny_config(), toy_source).config) == []


def test_bfloat16_compute_keeps_float32_master_weights(toy_source, tmp_path):
  config = tiny_config(num_steps=10, model__dtype="bfloat16", samples__num=0)
  summary = train(config, toy_source, tmp_path)
  assert np.isfinite(summary.final_loss)
  state = final_state(tmp_path, config, toy_source)
  assert {leaf.dtype for leaf in jax.tree.leaves(state.params)} == {np.dtype(np.float32)}


def test_one_step_on_mock_tfds_data(tmp_path):
  tfds = pytest.importorskip("tensorflow_datasets")
  with tfds.testing.mock_data(num_examples=64):
    source = data.make_source("tfds", name="mnist", split="train")
    config = tiny_config("digits", num_steps=1, checkpoint_every=1, log_every=1, sample_every=1,
                         batch_size=8, samples__num=0, data__source="tfds",
                         data__options={"name": "mnist", "split": "train"})
    config.model.options["ch_mult"] = (1, 1)  # 28 -> 14.
    summary = train(config, source, tmp_path)
  assert summary.step == 1 and np.isfinite(summary.final_loss)


# --------------------------------------------------------------------------
# Bad configs, through train.py.
# --------------------------------------------------------------------------


def run_train(*args):
  return subprocess.run([sys.executable, "train.py", "--config", "tests/tiny_config.py",
                         *args], cwd=ROOT, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("overrides, message", [
    ({"steps_per_call": 2}, "log_every (5) must be a multiple of steps_per_call (2)"),
    ({"batch_size": 0}, "batch_size must be a positive integer, got 0"),
    ({"model__name": "unet"}, "the unet model takes images [H, W, C]; this data has shape (2,)"),
    ({"model__options": {"features": 8, "width": 3}}, "model 'mlp' takes the options"),
    ({"loss__weighting": "karras"}, "loss.weighting must be one of"),
    ({"optim__schedule": "linear"}, "optim.schedule must be one of ('constant', 'cosine')"),
    ({"ema__decays": (1.5,)}, "ema.decays must be one or more numbers in (0, 1)"),
    ({"model__conditional": True}, "model.conditional needs a labelled data source"),
    ({"samples__num": -1}, "samples.num must be an integer >= 0"),
    ({"bpd__every": -1}, "bpd.every must be an integer >= 0 (0: never), got -1"),
    ({"bpd__num_probes": 0}, "bpd.num_probes must be a positive integer, got 0"),
    ({"bpd__every": 3, "steps_per_call": 5, "log_every": 5, "checkpoint_every": 10,
      "sample_every": 20}, "bpd.every (3) must be a multiple of steps_per_call (5)"),
    ({"eval__every": 3, "steps_per_call": 5, "log_every": 5, "checkpoint_every": 10,
      "sample_every": 20}, "eval.every (3) must be a multiple of steps_per_call (5)"),
])
def test_bad_config_values_name_the_field(toy_source, overrides, message):
  with pytest.raises(ValueError) as error:
    build(tiny_config(**overrides), toy_source)
  assert message in str(error.value)


@pytest.mark.parametrize("overrides, message", [
    ({"model__label_dropout": 5.0}, "model.label_dropout must be a finite number in [0, 1), "
     "got 5.0"),
    ({"model__label_dropout": -1.0}, "model.label_dropout must be a finite number in [0, 1)"),
    ({"optim__b1": 1.5}, "optim.b1 must be a finite number in [0, 1), got 1.5"),
    ({"optim__b2": 1.0}, "optim.b2 must be a finite number in [0, 1), got 1.0"),
    ({"optim__learning_rate": math.inf}, "optim.learning_rate must be a finite number in "
     "(0, inf), got inf"),
    ({"optim__learning_rate": math.nan}, "optim.learning_rate must be a finite number"),
    ({"optim__learning_rate": 0.0}, "optim.learning_rate must be a finite number in (0, inf)"),
    ({"optim__warmup_steps": -1}, "optim.warmup_steps must be an integer >= 0, got -1"),
    ({"optim__grad_clip": 0.0}, "optim.grad_clip must be a finite number in (0, inf), got 0.0"),
    ({"optim__weight_decay": -0.1}, "optim.weight_decay must be a finite number in [0, inf)"),
    ({"optim__eps": 0.0}, "optim.eps must be a finite number in (0, inf), got 0.0"),
    ({"optim__end_learning_rate": -1e-5}, "optim.end_learning_rate must be a finite number"),
    ({"ema__decays": (1.0,)}, "ema.decays must be one or more numbers in (0, 1), got (1.0,)"),
    ({"num_steps": 0}, "num_steps must be a positive integer, got 0"),
    ({"log_every": 0}, "log_every must be a positive integer, got 0"),
    ({"grad_accum": 0}, "grad_accum must be a positive integer, got 0"),
    ({"keep_checkpoints": 0}, "keep_checkpoints must be a positive integer, got 0"),
    ({"seed": -1}, "seed must be an integer in [0, 4294967296), got -1"),
    ({"seed": 2**32}, "seed must be an integer in [0, 4294967296), got 4294967296"),
    ({"samples__nfe": 0}, "samples.nfe must be a positive integer, got 0"),
    ({"samples__guidance": math.nan}, "samples.guidance must be a finite number"),
    ({"bpd__batch_size": 0}, "bpd.batch_size must be a positive integer, got 0"),
    ({"model__name": "vit"}, "model.name must be one of ['autoencoder_kl', 'dit', 'mlp', 'unet'], got 'vit'"),
    ({"optim__beta1": 0.9}, "unknown optim fields ['beta1']; optim has the fields"),
    ({"ema__phema_sigma_rels": (0.05, 0.3)}, "ema.phema_sigma_rels must be a finite number in "
     "(0, 0.288675), got 0.3"),
    ({"ema__phema_sigma_rels": (0.1, 0.1)}, "ema.phema_sigma_rels must differ from each other"),
    ({"ema__snapshot_every": 5}, "ema.snapshot_every (5) saves the power-function EMAs, but "
     "ema.phema_sigma_rels is empty"),
    ({"ema__snapshot_every": -1}, "ema.snapshot_every must be an integer >= 0 (0: no "
     "snapshots), got -1"),
    ({"steps_per_call": 5, "ema__phema_sigma_rels": (0.1,), "ema__snapshot_every": 3},
     "ema.snapshot_every (3) must be a multiple of steps_per_call (5)"),
    ({"eval__every": -1}, "eval.every must be an integer >= 0 (0: never), got -1"),
    ({"eval__num": 5}, "eval.num must be an integer >= 20, got 5"),
    ({"eval__params": ()}, "eval.params must be a list of distinct names"),
    ({"eval__params": ("ema:0.5",)}, "eval.params: 'ema:0.5' is not a parameter set of this "
     "run; it has 'raw', 'ema' and ['ema:0.9999'] (ema.decays)"),
    ({"eval__classifier": "maybe"}, "eval.classifier must be 'auto', 'yes' or 'no'"),
])
def test_numbers_out_of_range_are_refused_when_the_config_is_parsed(overrides, message):
  """The cheap path: parsing alone, nothing built, traced or compiled."""
  with pytest.raises(ValueError) as error:
    experiment.Settings.from_config(tiny_config(**overrides))
  assert message in str(error.value)


G3 = {"ch": 8, "ch_mult": (1,), "num_res_blocks": 1, "attn_resolutions": (), "num_groups": 3,
      "dropout": 0.1}


@pytest.mark.parametrize("kind, overrides, message", [
    # The pictures' sampler plan, built as the loop builds it.
    ("toy", {"samples__sampler": "nope"}, "samples (sampler 'nope', nfe 4): unknown sampler"),
    ("toy", {"samples__sampler": "heun", "samples__nfe": 4}, "samples (sampler 'heun', nfe 4)"),
    # The data against the batch.
    ("toy", {"batch_size": 1024}, "data.source 'toy' with batch_size 1024: each process's "
     "shard holds 512"),
    # The network on the data's shape, traced: 3 groups of 8 channels.
    ("digits", {"model__options": G3}, "model.options cannot take this data [8, 8, 1]: Number "
     "of groups (3) does not divide"),
    ("toy", {"seed": -3}, "seed must be an integer in [0, 4294967296), got -3"),
    # The sample quality during training: its sampler plan, and something to judge with.
    ("toy", {"eval__every": 10, "eval__sampler": "heun", "eval__nfe": 4},
     "eval (sampler 'heun', nfe 4): heun"),
    ("toy", {"eval__every": 10}, "eval.every is 10 but nothing judges the samples of the data "
     "source 'toy'"),
    ("toy", {"eval__every": 10, "eval__classifier": "yes"}, "eval.classifier 'yes': no "
     "evaluation classifier for the data source 'toy'"),
    ("toy", {"eval__every": 10, "eval__inception_weights": "/no/such/inception.pth"},
     "eval.inception_weights: no file /no/such/inception.pth"),
    ("toy", {"eval__every": 10, "eval__inception_weights": str(ROOT / "tests" / "conftest.py")},
     "eval.inception_weights: Inception-v3 judges 8-bit images; the data source 'toy' holds "
     "points"),
    # An autoencoder's run: no bits/dim, no sample quality, no labels, its own loss fields.
    ("autoencoder", {"bpd__every": 10}, "bpd.every = 10: an autoencoder's run has no"),
    ("autoencoder", {"eval__every": 10}, "eval.every = 10: an autoencoder's run has no"),
    ("autoencoder", {"model__conditional": True}, "the autoencoder (model.name "
     "'autoencoder_kl') takes no labels"),
    ("autoencoder", {"loss": {"reconstruction": "l3", "kl_weight": 1e-6}},
     "loss.reconstruction must be one of ['l1', 'l2'], got 'l3'"),
    ("autoencoder", {"loss": {"prediction": "eps"}}, "unknown loss fields ['prediction']"),
])
def test_what_a_run_would_fail_on_is_refused_by_prepare(kind, overrides, message):
  """trainer.prepare, which train.py runs before it claims the workdir."""
  with pytest.raises((ValueError, FileNotFoundError)) as error:
    trainer.prepare(tiny_config(kind, **overrides))
  assert message in str(error.value)


def test_configs_written_before_grad_accum_bpd_and_eval_still_load():
  config = tiny_config().to_dict()
  del config["grad_accum"], config["bpd"], config["eval"]
  del config["ema"]["phema_sigma_rels"], config["ema"]["snapshot_every"], config["autoencoder"]
  settings = experiment.Settings.from_config(config)
  assert settings.autoencoder.checkpoint == ""
  assert (settings.run.grad_accum, settings.run.bpd.every, settings.run.eval.every) == (1, 0, 0)
  assert (settings.ema.phema_sigma_rels, settings.ema.snapshot_every) == ((), 0)
  # A checkpoint of such a config resumes under today's defaults.
  assert build(tiny_config(), data.make_source("toy", name="checkerboard", num_points=512)
               ).differences(config) == []


def test_a_missing_dataset_says_how_to_get_it(tmp_path):
  with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
    data.make_source("idx", directory=str(tmp_path))


# An unknown config key through train.py: tests/test_cli.py. The refusals of trainer.prepare,
# each: test_what_a_run_would_fail_on_is_refused_by_prepare; here train.py's way of reporting
# one of them.
@pytest.mark.parametrize("args, message", [
    (("--config.num_steps", "abc"), "flag --config.num_steps=abc"),
    (("--config.steps_per_call", "2"), "invalid training configuration: log_every (5) must be "
     "a multiple of steps_per_call (2)"),
])
def test_bad_config_is_refused_before_anything_is_written(tmp_path, args, message):
  result = run_train("--workdir", str(tmp_path / "run"), *args)
  assert result.returncode != 0
  assert message in result.stderr, result.stderr[-2000:]
  assert "Traceback" not in result.stderr
  assert not (tmp_path / "run").exists()


def test_a_workdir_of_another_config_is_refused_at_once(tmp_path, trained_toy):
  """A training run of another config: named differences, nothing changed. (The folders
  workdir.claim refuses, unwritable or holding other files: tests/test_workdir.py.)"""
  shutil.copytree(trained_toy, tmp_path / "other")
  before = sorted(str(p) for p in (tmp_path / "other").rglob("*"))
  result = run_train("--workdir", str(tmp_path / "other"), "--config.optim.learning_rate",
                     "0.5")
  assert result.returncode != 0
  assert "optim.learning_rate: 0.001 in the checkpoint, 0.5 now" in result.stderr
  assert sorted(str(p) for p in (tmp_path / "other").rglob("*")) == before


def test_k_steps_per_call_scanned_or_unrolled_equal_k_calls(toy_source):
  """steps_per_call: k updates in one call give the k single calls' state, whether the
  call scans (accelerators) or unrolls (the CPU default)."""
  built = build(tiny_config(), toy_source)
  optimizer = optim.make_optimizer(built.optimizer, built.run.num_steps)
  lr = optim.learning_rate_schedule(built.optimizer, built.run.num_steps)
  state = jax.jit(built.init_fn(optimizer))()
  iterator = data.make_iterator(toy_source, batch_size=32, seed=0)
  batches = [next(iterator) for _ in range(3)]
  stacked = jax.tree.map(lambda *b: np.stack(b), *batches)
  fns = {scan: jax.jit(step.make_train_step(built.model, built.objective, optimizer, lr,
                                            built.ema_decays, scan=scan)) for scan in (False, True)}
  single = state
  for batch in batches:
    single, _ = fns[False](single, jax.tree.map(lambda b: b[None], batch))
  for scan, fn in fns.items():
    multi, metrics = fn(state, stacked)
    assert metrics["loss"].shape == (3,) and int(multi.step) == 3
    # One program against three: XLA may fuse across the steps, so equal to float32 rounding.
    for a, b in zip(jax.tree.leaves(multi), jax.tree.leaves(single)):
      np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64),
                                 rtol=1e-5, atol=1e-7)


def test_a_resumed_writer_replaces_the_rows_after_its_step(tmp_path):
  """metrics.jsonl keeps each step once, and TensorBoard drops the interrupted run's
  events after the resumed step (the SessionLog START purge)."""
  from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=import-outside-toplevel
  from jaxdiff.train.writer import MetricWriter  # pylint: disable=import-outside-toplevel
  first = MetricWriter(tmp_path)
  for n, loss in ((5, 1.0), (10, 0.5), (15, 0.25)):
    first.write(n, {"loss": loss})
  first.close()
  with open(tmp_path / "metrics.jsonl", "a") as f:
    f.write('{"step": 20, "lo')  # Cut off by a kill.
  resumed = MetricWriter(tmp_path, start_step=5)
  resumed.write(10, {"loss": 0.4})
  resumed.close()
  assert [(r["step"], r["loss"]) for r in read_metrics(tmp_path)] == [(5, 1.0), (10, 0.4)]
  events = event_accumulator.EventAccumulator(str(tmp_path / "tensorboard"))
  events.Reload()
  assert [(e.step, e.value) for e in events.Scalars("loss")] == [(5, 1.0),
                                                                 (10, np.float32(0.4))]


def run_sample(*args):
  return subprocess.run([sys.executable, "sample.py", *args], cwd=ROOT, capture_output=True,
                        text=True, timeout=600)


def test_sample_py_killed_and_restarted_ends_with_an_uninterrupted_runs_progress(trained_toy,
                                                                                tmp_path):
  """sample.py --checkpoint: the checkpoint's own process and network, the grid named (with
  an option that is not a number, which results.md writes too);
  SIGKILLed after a saved batch, the same command continues it to bitwise the progress of an
  uninterrupted run of the same job (another command on its folder is refused:
  tests/test_sample_run.py)."""
  command = ("--checkpoint", str(trained_toy / "checkpoints" / "20"), "--num", "803",
             "--batch-size", "8", "--nfe", "4", "--sampler", "ddpm", "--save-every", "5",
             "--save-images", "803", "--grid", "log_snr", "--grid-options", '{"end": "t_min"}',
             "--workdir", str(tmp_path / "killed"))
  killed = subprocess.Popen([sys.executable, "sample.py", *command], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  record = tmp_path / "killed" / sample_run.RECORD
  while not (record.is_file() and json.loads(record.read_text())["batches_done"] >= 5):
    assert killed.poll() is None, killed.communicate()
    time.sleep(0.005)
  killed.send_signal(signal.SIGKILL)
  out, _ = killed.communicate()
  assert killed.returncode == -signal.SIGKILL
  # 101 batches (the last padded), at about 50 a second: killed long before the end.
  assert 5 <= json.loads(record.read_text())["batches_done"] < 100
  assert "ddpm, NFE 4, log_snr grid (4 steps, end=t_min)" in out
  assert ("--num 803 is not a multiple of the batch 8: the last batch samples 5 extra samples, "
          "which are dropped") in out
  again = run_sample(*command)
  assert again.returncode == 0, again.stderr[-3000:]

  # Uninterrupted, in this process: the same job on the same one device.
  step_dir, built, params = generate.load(trained_toy)
  (tmp_path / "whole").mkdir()
  sample_run.run(built, generate.plan(built, "ddpm", 4, grid="log_snr",
                                      grid_options={"end": "t_min"}), params,
                 sample_run.Job(803, 8, 0, save_images=803, save_every=0),
                 sharding.make_mesh({"data": 1}, jax.devices()[:1]), out=tmp_path / "whole", progress=False)
  with np.load(tmp_path / "whole" / sample_run.PROGRESS) as whole, \
       np.load(tmp_path / "killed" / sample_run.PROGRESS) as resumed:
    assert sorted(whole) == sorted(resumed) == ["images", "labels", "x_T"]
    for key in whole:
      np.testing.assert_array_equal(resumed[key], whole[key], err_msg=key)
  samples = np.load(tmp_path / "killed" / "samples.npz")["samples"]
  assert samples.shape == (803, 2) and np.all(np.isfinite(samples))
  assert (tmp_path / "killed" / "samples.png").is_file()
  row = json.loads((tmp_path / "killed" / "results.json").read_text())["rows"][0]
  assert row["nfe"] == 4 and row["num_samples"] == 803 and row["params"] == "ema"
  assert row["checkpoint"] == str(step_dir) and row["grid"] == "log_snr end=t_min"

  bad = run_sample("--checkpoint", str(trained_toy), "--num", "4", "--labels", "1,2",
                   "--workdir", str(tmp_path / "bad"))
  assert bad.returncode != 0 and "--labels needs a class-conditional model" in bad.stderr
  assert not (tmp_path / "bad").exists()
  # The checks behind the other flags, in-process.
  built = build(tiny_config(), data.make_source("toy", name="checkerboard", num_points=512))
  with pytest.raises(ValueError, match="guidance w = 3.0 needs a class-conditional model"):
    generate.plan(built, "unipc", 4, guidance_scale=3.0)
  with pytest.raises(ValueError, match="heun .*cannot spend exactly nfe=4 .*: 3 or 5"):
    generate.plan(built, "heun", 4)
  with pytest.raises(ValueError, match=r"params must be 'raw', 'ema', one of \['ema:0.9999'\] "
                     "or 'phema:<sigma_rel>'"):
    generate.load(trained_toy, "ema:0.5")
  with pytest.raises(FileNotFoundError, match="no complete checkpoint in"):
    checkpoint.find(tmp_path / "nothing-here")


def test_bpd_py_scores_held_out_draws_as_training_did(trained_toy, tmp_path):
  result = subprocess.run(
      [sys.executable, str(ROOT / "bpd.py"), "--checkpoint", str(trained_toy), "--num", "16",
       "--batch-size", "16", "--workdir", str(tmp_path / "bpd")], cwd=ROOT, capture_output=True,
      text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  row = json.loads((tmp_path / "bpd" / "results.json").read_text())
  assert (row["num"], row["num_dims"], row["divergence"]) == (16, 2, "exact")
  assert row["held_out"] == "new draws (seed 1)"
  # Points: bits per dimension without the 8-bit offset.
  assert row["bits_per_dim"] == pytest.approx(-row["nats"] / (2 * math.log(2)), rel=1e-5)
  assert "vlb" not in row  # The discrete bound is for 8-bit images.
  # Training scored the same 16 held-out points with the same EMA at its last step, in one
  # batch of 16 as here: the exact divergence of points draws nothing, so the two agree.
  rows = [json.loads(line) for line in (trained_toy / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rows if "bits_per_dim" in r] == [10, 20]
  assert rows[-1]["bits_per_dim"] == pytest.approx(row["bits_per_dim"], rel=1e-6)
  bad = subprocess.run(
      [sys.executable, str(ROOT / "bpd.py"), "--checkpoint", str(trained_toy), "--rtol", "0",
       "--workdir", str(tmp_path / "bad")], cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert bad.returncode != 0 and "--rtol and --atol must be positive" in bad.stderr
  assert not (tmp_path / "bad").exists()


def test_dit_refused_with_its_default_learn_sigma():
  """DiT's learn_sigma defaults to True (its paper's checkpoints); train.py has no L_vlb for
  the variance half, so a config that leaves the option out is refused, not trained with 2C
  output channels."""
  images = experiment.DataSpec((8, 8, 1), 0, True)
  config = tiny_config(model__name="dit", model__options={"size": "S/2"})
  with pytest.raises(ValueError, match="learn_sigma"):
    experiment.Experiment.from_config(config.to_dict(), images)
  config.model.options.learn_sigma = False
  assert experiment.Experiment.from_config(config.to_dict(), images).model.learn_sigma is False


# --------------------------------------------------------------------------
# The train step against a reference: accumulated gradients, dropout keys.
# --------------------------------------------------------------------------


def one_step(model, objective, batch, *, grad_accum=1, conditional=False, key=0):
  """(metrics, state) of one SGD step (learning rate 0.1, no clipping) from perturbed
  initial parameters (the zero output layer would hide what the network sees)."""
  optimizer = optax.sgd(0.1)
  cond = batch["label"][0][:1] if conditional else None
  params = model.init(jax.random.PRNGKey(0), batch["image"][0][:1], jnp.ones((1,)), cond,
                      deterministic=True)["params"]
  params = jax.tree.map(lambda p: p + 0.3 * jax.random.normal(jax.random.PRNGKey(1), p.shape),
                        params)
  state = train_state.create(params, optimizer, (0.9,), jax.random.PRNGKey(key))
  fn = jax.jit(step.make_train_step(model, objective, optimizer, lambda s: 0.1, (0.9,),
                                    conditional=conditional, grad_accum=grad_accum))
  state, metrics = fn(state, batch)
  return jax.tree.map(np.asarray, metrics), jax.tree.map(np.asarray, state)


def test_grad_accum_averages_the_micro_batch_gradients(toy_source):
  """k micro-batches give the gradient of the whole batch: the same grad_norm and the same
  SGD update (a sum would make both k times larger)."""
  built = build(tiny_config(), toy_source)
  batch = jax.tree.map(lambda b: b[None], next(data.make_iterator(toy_source, batch_size=32,
                                                                  seed=0)))
  whole, whole_state = one_step(built.model, built.objective, batch)
  accumulated, accumulated_state = one_step(built.model, built.objective, batch, grad_accum=4)
  for name in ("loss", "grad_norm"):
    np.testing.assert_allclose(accumulated[name], whole[name], rtol=1e-5)
  for a, b in zip(jax.tree.leaves(accumulated_state.params), jax.tree.leaves(whole_state.params)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)  # Sums in another order.


def test_the_train_step_gives_the_network_its_dropout_key():
  """Dropout and label dropout act in training: dropout changes the loss, and label dropout 1
  trains the null class (what classifier-free guidance samples with)."""
  objective = step.Objective(schedules.VP())
  rng = np.random.default_rng(0)
  batch = {"image": rng.normal(size=(1, 32, 2)).astype(np.float32),
           "label": rng.integers(0, 4, size=(1, 32)).astype(np.int32)}
  with_dropout, _ = one_step(MLP(features=32, num_blocks=2, dropout=0.5), objective, batch)
  without, _ = one_step(MLP(features=32, num_blocks=2), objective, batch)
  assert abs(with_dropout["loss"][0] - without["loss"][0]) > 1e-3 * without["loss"][0]
  conditional = dict(features=32, num_blocks=2, num_classes=4)
  all_dropped, _ = one_step(MLP(**conditional, class_dropout=1.0), objective, batch,
                            conditional=True)
  null = {"image": batch["image"], "label": np.full_like(batch["label"], 4)}
  null_class, _ = one_step(MLP(**conditional, class_dropout=0.0), objective, null,
                           conditional=True)
  labelled, _ = one_step(MLP(**conditional, class_dropout=0.0), objective, batch,
                         conditional=True)
  for name in ("loss", "grad_norm"):
    np.testing.assert_allclose(all_dropped[name], null_class[name], rtol=1e-6)
  assert abs(labelled["loss"][0] - null_class["loss"][0]) > 1e-3 * null_class["loss"][0]


@pytest.mark.parametrize("every_seconds, lines", [(0.0, 20), (1e9, 2)])
def test_a_log_file_gets_plain_progress_lines(toy_source, tmp_path, capsys, every_seconds,
                                              lines):
  """Standard error not a terminal (here pytest's capture): no bar and no carriage return,
  one line at the first step, every every_seconds, and at the last step."""
  mesh = sharding.make_mesh({"data": -1})
  trainer.train(build(tiny_config(samples__num=0), toy_source), toy_source, tmp_path, mesh,
                progress_seconds=every_seconds)
  err = capsys.readouterr().err
  assert "\r" not in err
  progress = [line for line in err.splitlines() if line.startswith("step ")]
  assert len(progress) == lines
  assert progress[0].startswith("step 1/20  loss ")
  assert progress[-1].startswith("step 20/20  loss ") and "steps/s  ETA 00:00" in progress[-1]
