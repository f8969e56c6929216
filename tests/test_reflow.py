"""Rectified flow's reflow (Liu, Gong & Liu 2022) on the toy MLP: a flow teacher's pairs
written once (reflow_run: the teacher's ODE endpoints from their noise, resumable bitwise),
read as the "pairs" source, the reflow loss on the pairs' noise, the student started from its
teacher and sampled by Euler in 1 or 2 calls, and what trainer.prepare refuses."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff import data, losses, models, schedules
from jaxdiff.train import (checkpoint, generate, latent, reflow_run, sharding, step, trainer,
                           write_once)
from jaxdiff.train.experiment import DataSpec, Experiment

from conftest import tiny_config

# 40 pairs in 3 batches of 16 (the last one padded), progress every batch; Euler at 4 calls.
JOB = reflow_run.Job(num=40, sampler="euler", nfe=4, batch_size=16, save_every=1)


def flow(**overrides):
  """The tiny toy config trained as a rectified flow (configs/digits_flow.py's recipe)."""
  config = tiny_config("toy", **{"samples__num": 0, **overrides})
  config.process, config.process_options = "flow", {}
  config.loss = {"prediction": "velocity", "target": "velocity", "weighting": "none",
                 "reduce": "mean", "preconditioning": "none"}
  return config


@pytest.fixture(scope="module")
def flow_teacher(tmp_path_factory):
  """A finished 40-step rectified flow of the toy MLP, loaded (shared, read only); at a high
  learning rate and a short EMA, so that its flow has learnt to curve."""
  workdir = tmp_path_factory.mktemp("flow")
  config = flow(num_steps=40, checkpoint_every=40, optim__learning_rate=1e-2,
                optim__warmup_steps=0)
  config.ema.decays = (0.9,)
  built, source, _, mesh = trainer.prepare(config)
  trainer.train(built, source, workdir, mesh, show_progress=False)
  return (workdir, *generate.load(workdir))


@pytest.fixture(scope="module")
def pairs(flow_teacher, tmp_path_factory):
  """The folder of an uninterrupted run of JOB, and its record."""
  _, step_dir, built, params = flow_teacher
  out = tmp_path_factory.mktemp("pairs")
  record = reflow_run.run(step_dir, built, params, "ema", JOB, sharding.make_mesh({"data": -1}),
                          out, progress=False)
  return out, record


def reflow(flow_teacher, pairs, **overrides):
  workdir, _, _, _ = flow_teacher
  config = flow(**{"num_steps": 2, "checkpoint_every": 2, "log_every": 1, **overrides})
  config.loss = {**config.loss, "kind": "reflow", **overrides.pop("loss", {})}
  config.data.source, config.data.options = "pairs", {"path": str(pairs[0])}
  config.teacher.checkpoint = str(workdir)
  return config


def test_the_pairs_are_the_teachers_ode_endpoints_from_their_noise(flow_teacher, pairs):
  """z_i = normal(fold_in(PRNGKey(seed), i)); x0_i = the teacher's Euler-4 sample from x_T =
  z_i as generate samples it; pairs.json names the teacher, the ODE and the data; the
  source's batches hold whole pairs."""
  _, step_dir, built, params = flow_teacher
  out, record = pairs
  source = data.make_source("pairs", path=str(out))
  z = np.stack([jax.random.normal(jax.random.fold_in(jax.random.PRNGKey(0), i), (2,))
                for i in range(JOB.num)])
  np.testing.assert_array_equal(source.noise, z)
  plan = generate.plan(built, "euler", 4)
  expected, nfe = generate.sample_in_batches(built, plan, params, jnp.asarray(z), None,
                                             jax.random.PRNGKey(0), JOB.num, progress=False)
  assert nfe == 4
  np.testing.assert_allclose(source.samples, expected, atol=1e-6)
  np.testing.assert_array_equal(source.labels, 0)  # An unconditional teacher.
  assert record["teacher"] == {"checkpoint": str(step_dir.absolute()), "params": "ema",
                               "fingerprint": latent.fingerprint(params)}
  assert (record["sampler"], record["nfe"], record["seed"], record["num"]) == ("euler", 4, 0, 40)
  assert record["grid"] == pytest.approx([1.0, 0.667, 0.334, 0.001, 0.0], abs=1e-6)
  assert DataSpec.of(source) == built.data  # A model of the pairs models the teacher's data.
  assert record["image_data"] == {"source": "toy", "options": built.run.data.options}
  assert json.loads((out / data.PAIRS_RECORD).read_text()) == record
  assert not (out / write_once.PROGRESS).exists()
  batch = next(data.make_iterator(source, batch_size=8, seed=0))
  for x0, noise in zip(batch["image"], batch["noise"]):
    (i,) = np.flatnonzero(np.all(source.noise == noise, axis=1))
    np.testing.assert_array_equal(x0, source.samples[i])


def test_interrupted_pairs_continue_to_bitwise_the_uninterrupted_ones(
    flow_teacher, pairs, tmp_path, monkeypatch, killed_after_two_saves):
  _, step_dir, built, params = flow_teacher
  mesh = sharding.make_mesh({"data": -1})
  with pytest.raises(KeyboardInterrupt):
    reflow_run.run(step_dir, built, params, "ema", JOB, mesh, tmp_path, progress=False)
  monkeypatch.undo()
  spoiled = np.load(tmp_path / data.PAIRS_SAMPLES, mmap_mode="r+")  # Rows after the saved ones.
  spoiled[2 * 16:] = np.nan
  spoiled.flush()
  other = reflow_run.Job(num=40, sampler="euler", nfe=2, batch_size=16)
  with pytest.raises(ValueError, match="differs in nfe: 4 there, 2 here"):
    reflow_run.run(step_dir, built, params, "ema", other, mesh, tmp_path, progress=False)
  record = reflow_run.run(step_dir, built, params, "ema", JOB, mesh, tmp_path, progress=False)
  out, expected = pairs
  assert record == expected
  for name in (data.PAIRS_NOISE, data.PAIRS_SAMPLES, data.PAIRS_LABELS, data.PAIRS_RECORD):
    assert (tmp_path / name).read_bytes() == (out / name).read_bytes(), name


def test_the_reflow_loss_is_flow_matching_on_the_batchs_noise():
  """Against losses.diffusion_loss with eps = the batch's z and by hand: |v(x_t, t) -
  (z - x0)|^2 at x_t = (1 - t) x0 + t z; times "one" draws t = 1, where x_t = z."""
  model = models.make_model("mlp", dim=2, features=16, num_blocks=1)
  params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 2)), jnp.ones((1,)), None,
                      deterministic=True)["params"]
  key_x0, key_z, key_t = jax.random.split(jax.random.PRNGKey(1), 3)
  batch = {"image": jax.random.normal(key_x0, (6, 2)), "noise": jax.random.normal(key_z, (6, 2)),
           "label": jnp.zeros((6,), jnp.int32)}
  process = schedules.make_process("flow")
  v = models.network_fn(model, params)
  for times in ("uniform", "one"):
    objective = step.Reflow(process, times=times)
    t = objective.draw_noise(model, (6, 2), key_t, 0)
    loss, _ = objective.train_loss(model, params, batch, t, None, False)
    x0, z = batch["image"], batch["noise"]
    reference, _ = losses.diffusion_loss(v, process, x0, None, prediction="velocity",
                                         target="velocity", noise=(t, z))
    x_t = (1 - t[:, None]) * x0 + t[:, None] * z
    by_hand = jnp.mean((v(x_t, t) - (z - x0))**2, axis=-1)
    np.testing.assert_allclose(loss, reference, rtol=1e-6)
    np.testing.assert_allclose(loss, by_hand, rtol=1e-5)
    if times == "one":
      np.testing.assert_array_equal(t, 1.0)
    else:
      assert float(jnp.min(t)) >= process.t_min and len(set(np.asarray(t).tolist())) == 6
    fresh, _ = objective.train_loss(model, params, {**batch, "noise": -z}, t, None, False)
    assert not np.allclose(fresh, loss)


def test_a_one_step_reflow_starts_as_its_teacher_and_straightens_one_euler_step(
    flow_teacher, pairs, tmp_path):
  """Distilled to one step on the pairs (times "one", 30 steps on all 40 pairs at once), one
  Euler step from z, x0 = z - v(z, 1), lands nearer the pairs' x0 than the teacher's did (Liu
  et al., sec. 2.3). The first step's loss is the teacher's one-step error (the student
  starts as the teacher); the run records its teacher, and sample.py's default for it is
  Euler in one call."""
  workdir, _, _, teacher_params = flow_teacher
  config = reflow(flow_teacher, pairs, num_steps=30, checkpoint_every=30, batch_size=40,
                  optim__learning_rate=3e-3, optim__warmup_steps=0, loss={"times": "one"})
  config.ema.decays = (0.5,)
  built, source, _, mesh = trainer.prepare(config)
  trainer.train(built, source, tmp_path, mesh, show_progress=False)
  step_dir, student, params = generate.load(tmp_path)
  assert checkpoint.read_run(step_dir)["teacher"]["fingerprint"] == (
      source.record["teacher"]["fingerprint"])
  assert generate.default_sampler(student) == ("euler", 1)
  assert generate.few_step_kind(student).startswith("a reflow (loss.times 'one')")
  plan = generate.plan(student, "euler", 1)
  np.testing.assert_array_equal(plan.grid, [1.0, 0.0])
  z, x0 = jnp.asarray(source.noise), np.asarray(source.samples)

  def error(params):
    one_step, nfe = generate.sample_in_batches(student, plan, params, z, None,
                                               jax.random.PRNGKey(0), len(z), progress=False)
    v = generate.denoise_fn(student, params)(z, jnp.ones(len(z)), None)
    np.testing.assert_allclose(one_step, z - v, atol=1e-5)  # Euler's one step, by hand.
    assert nfe == 1
    return float(np.mean((one_step - x0)**2))

  before, after = error(teacher_params), error(params)
  first = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])
  assert first["step"] == 1 and first["loss"] == pytest.approx(before, rel=1e-4)
  assert after < 0.1 * before, (before, after)


def test_a_reflow_samples_with_euler_in_two_even_steps_which_ddim_takes_too(flow_teacher,
                                                                             pairs):
  _, _, _, params = flow_teacher
  built, _, _, _ = trainer.prepare(reflow(flow_teacher, pairs))
  assert generate.default_sampler(built) == ("euler", 2)
  euler, ddim = (generate.plan(built, name, 2) for name in ("euler", "ddim"))
  np.testing.assert_array_equal(euler.grid, [1.0, 0.5, 0.0])
  z = jax.random.normal(jax.random.PRNGKey(3), (8, 2))
  x_euler, x_ddim = (generate.sample_in_batches(built, plan, params, z, None,
                                                jax.random.PRNGKey(4), 8, progress=False)[0]
                     for plan in (euler, ddim))
  np.testing.assert_allclose(x_euler, x_ddim, atol=1e-5)


def test_pairs_refused_before_anything_is_written():
  edm = tiny_config("toy")
  with pytest.raises(ValueError, match="reflow straightens the ODE of the process 'flow'; the "
                     "teacher was trained on 'ddpm'"):
    reflow_run.plan(Experiment.from_config(edm, DataSpec((2,), 0, False)), JOB)
  teacher_experiment = Experiment.from_config(flow(), DataSpec((2,), 0, False))
  with pytest.raises(ValueError, match="'euler_maruyama' draws noise"):
    reflow_run.plan(teacher_experiment, reflow_run.Job(sampler="euler_maruyama", nfe=4))
  with pytest.raises(ValueError, match="--num must be an integer >= 1"):
    reflow_run.Job(num=0)


@pytest.mark.parametrize("change,message", [
    ({"data": "toy"}, "trains on its teacher's \\(noise, sample\\) pairs; data.source 'toy'"),
    ({"params": "raw"}, "were written by the teacher at .*fingerprint .*; teacher.checkpoint "
     "names .*fingerprint .*another one"),
    ({"process": "vp"}, "'reflow' straightens the ODE of the process 'flow'"),
    ({"loss": {"prediction": "x0", "target": "x0"}}, "predicts 'velocity' with preconditioning "
     "'none'; the student starts as the teacher"),
    ({"shape": [3]}, r"was trained on data of shape \(2,\); this run's data has shape \(3,\)"),
    ({"bpd": 2}, "bpd.every = 2: the pairs of .* are a teacher's samples"),
    ({"loss": {"times": "two"}}, r"loss.times must be one of \['uniform', 'one'\]"),
])
def test_reflow_refusals_before_anything_compiles(flow_teacher, pairs, tmp_path, change,
                                                  message):
  config = reflow(flow_teacher, pairs, loss=change.get("loss", {}))
  if "data" in change:
    config.data = flow().data
  if "params" in change:
    config.teacher.params = "raw"
  if "process" in change:
    config.process = "vp"
  if "bpd" in change:
    config.bpd.every = 2
  if "shape" in change:  # Pairs of 3-D points (as tests/test_data.py writes them).
    folder = tmp_path / "pairs3"
    folder.mkdir()
    for name in (data.PAIRS_SAMPLES, data.PAIRS_NOISE):
      np.save(folder / name, np.zeros((40, 3), np.float32))
    np.save(folder / data.PAIRS_LABELS, np.zeros(40, np.int32))
    (folder / data.PAIRS_RECORD).write_text(json.dumps(
        {**pairs[1], "num": 40, "shape": [3]}))
    config.data.options = {"path": str(folder)}
  with pytest.raises(ValueError, match=message):
    trainer.prepare(config)
