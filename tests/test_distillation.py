"""Consistency distillation and training through train.py's trainer: the teacher named by
the config, checked before anything compiles, the student started from it, the teacher
recorded with every checkpoint; consistency models sampled by the consistency sampler by
default, refusing more steps than their noise levels."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import train_base
from jaxdiff import grids, progressive
from jaxdiff.train import checkpoint, generate, teacher, trainer

from conftest import tiny_config


def edm(kind="toy", **overrides):
  """A tiny config trained as EDM (the teacher's recipe, as configs/digits.py): the toy MLP
  on 2-D points, or the digits U-Net."""
  return train_base.use_edm(tiny_config(kind, **{"samples__num": 0, **overrides}))


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory):
  """A finished 10-step EDM run of the toy MLP (shared, read only)."""
  workdir = tmp_path_factory.mktemp("teacher")
  built, source, _, mesh = trainer.prepare(edm(num_steps=10, checkpoint_every=10))
  trainer.train(built, source, workdir, mesh, show_progress=False)
  return workdir


def distillation(teacher_dir, **overrides):
  config = edm(**{"num_steps": 2, "checkpoint_every": 2, "log_every": 1,
                  "optim__warmup_steps": 0, **overrides})
  config.loss = {"kind": "consistency_distillation", "num_scales": 6, "solver": "heun",
                 "target_decay": 0.9, **overrides.pop("loss", {})}
  config.teacher.checkpoint = str(teacher_dir)
  return config


def test_the_student_starts_as_the_teacher_and_the_run_records_it(teacher_run, tmp_path):
  """After one Adam step of learning rate 1e-7 the student is within 1e-6 of the teacher
  (a fresh initialisation differs by O(0.1)); its target EMA too; the checkpoint records
  the teacher's fingerprint, and resuming with a changed teacher (another of its parameter
  sets) is refused naming both records; sample.py's default for it is the consistency
  sampler in one call, which maps x_T to finite images, on a grid through s = 0.821 in two
  steps and of rho = 30 in more."""
  config = distillation(teacher_run, num_steps=1, checkpoint_every=1,
                        optim__learning_rate=1e-7)
  config.optim.schedule = "constant"
  built, source, _, mesh = trainer.prepare(config)
  trainer.train(built, source, tmp_path, mesh, show_progress=False)
  _, diffusion_model, teacher_params = generate.load(teacher_run)
  assert generate.few_step_kind(diffusion_model) is None
  step_dir, student, params = generate.load(tmp_path)
  state = checkpoint.restore_state(step_dir)
  for name in ("params", "target"):
    tree = state["params"] if name == "params" else state["ema"]["target"]
    gap = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), tree, teacher_params)
    assert max(jax.tree.leaves(gap)) < 1e-6, name
  record = checkpoint.read_run(step_dir)["teacher"]
  assert record["fingerprint"] == teacher.load(built).record["fingerprint"]
  config.num_steps = 2
  config.teacher.params = "raw"
  changed, source, _, mesh = trainer.prepare(config)
  with pytest.raises(trainer.ConfigMismatch, match="teacher: .*fingerprint"):
    trainer.train(changed, source, tmp_path, mesh, show_progress=False)
  assert generate.default_sampler(student) == ("consistency", 1)
  assert generate.few_step_kind(student) == "a consistency model"
  plan = generate.plan(student, "consistency", 1)
  assert "karras grid (1 steps, end=t_min" in plan.describe()
  assert float(plan.grid[-1]) == pytest.approx(student.process.t_min)
  # Two steps by default through iCT's s = 0.821 (the EDM process: t = s).
  two_step = generate.plan(student, "consistency", 2)
  assert "consistency two-step grid (2 steps, s_mid=0.821)" in two_step.describe()
  np.testing.assert_allclose(two_step.grid, [student.process.t_max, 0.821,
                                             student.process.t_min], rtol=1e-6)
  # More steps on the Karras grid of rho = 30: re-noised lower than at rho = 7.
  four_step = generate.plan(student, "consistency", 4)
  np.testing.assert_allclose(four_step.grid, grids.karras(student.process, 4, rho=30,
                                                          end="t_min"), rtol=1e-6)
  assert float(four_step.grid[2]) < float(grids.karras(student.process, 4, end="t_min")[2])
  x_T = generate.prior_noise(student, plan, jax.random.PRNGKey(0), 4)
  samples, nfe = generate.sample_in_batches(student, plan, params, x_T, None,
                                            jax.random.PRNGKey(1), 4, progress=False)
  assert nfe == 1 and samples.shape == (4, 2) and np.all(np.isfinite(samples))
  with pytest.raises(ValueError, match="trained on 6: ask for at most 6"):
    generate.plan(student, "consistency", 7)
  _, diffusion, _ = generate.load(teacher_run)
  with pytest.raises(ValueError, match="needs a consistency model"):
    generate.plan(diffusion, "consistency", 1)


@pytest.mark.parametrize("change,message", [
    ({"teacher": ""}, "distils a teacher: name its checkpoint in teacher.checkpoint"),
    ({"loss": "diffusion"}, "learns from no teacher"),
    ({"teacher": "missing"}, "teacher.checkpoint .*: no complete checkpoint"),
    ({"model__options__features": 16}, "differs from .* at .*: .* here, .* in the teacher"),
    ({"process": "vp"}, "distils its ODE on the same process"),
    ({"data": "digits"}, r"was trained on data of shape \(2,\); this run's data has shape "
     r"\(8, 8, 1\)"),
])
def test_distillation_refusals_before_anything_compiles(teacher_run, tmp_path, change, message):
  config = distillation(teacher_run)
  for key, value in change.items():
    if key == "teacher":
      config.teacher.checkpoint = str(tmp_path / value) if value else ""
    elif key == "loss":
      config.loss = dict(edm().loss)
    elif key == "data":
      config.data, config.model = tiny_config("digits").data, tiny_config("digits").model
    elif key == "process":
      config.process, config.process_options = "vp", {}
    else:
      node, *path = key.split("__")
      target = config[node]
      for part in path[:-1]:
        target = target[part]
      target[path[-1]] = value
  with pytest.raises((ValueError, FileNotFoundError), match=message):
    trainer.prepare(config)


def test_consistency_training_runs_in_train_py(tmp_path):
  """A consistency-training run (the toy MLP): its checkpoint is a consistency model, sampled
  by the consistency sampler by default and refused past its levels, and no teacher."""
  config = edm(num_steps=2, checkpoint_every=2, log_every=1)
  config.loss = {"kind": "consistency_training", "curriculum_steps": 2, "scales": (2, 4)}
  built, source, _, mesh = trainer.prepare(config)
  summary = trainer.train(built, source, tmp_path, mesh, show_progress=False)
  assert np.isfinite(summary.final_loss)
  _, student, _ = generate.load(tmp_path)
  assert generate.default_sampler(student) == ("consistency", 1)
  with pytest.raises(ValueError, match="trained on 5: ask for at most 5"):
    generate.plan(student, "consistency", 6)
  for loss in ({"kind": "consistency_distillation"},
               {"kind": "progressive_distillation", "student_steps": 2, "prediction": "x0",
                "preconditioning": "edm"}):
    as_teacher = edm()
    as_teacher.loss = loss
    as_teacher.teacher.checkpoint = str(tmp_path)
    with pytest.raises(ValueError, match="is not a diffusion model"):
      trainer.prepare(as_teacher)


def test_consistency_tuning_starts_from_the_teacher_in_train_py(teacher_run, tmp_path):
  """A consistency-tuning run (ECT) starts as the teacher (after two Adam steps of learning
  rate 1e-7, within 1e-6 of it), records it, and its step never calls it; its checkpoint is
  a consistency model of continuous time, sampled in one call by default and at any number
  of steps. A teacher that is not EDM's preconditioned x0 is refused before anything
  compiles."""
  config = edm(num_steps=2, checkpoint_every=2, log_every=1, optim__learning_rate=1e-7,
               optim__warmup_steps=0)
  config.optim.schedule = "constant"
  config.loss = {"kind": "consistency_tuning", "stage_steps": 1}
  config.teacher.checkpoint = str(teacher_run)
  built, source, _, mesh = trainer.prepare(config)
  summary = trainer.train(built, source, tmp_path / "ect", mesh, show_progress=False)
  assert np.isfinite(summary.final_loss)
  _, _, teacher_params = generate.load(teacher_run)
  step_dir, student, params = generate.load(tmp_path / "ect", "raw")
  gap = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))), params, teacher_params)
  assert max(jax.tree.leaves(gap)) < 1e-6
  assert checkpoint.read_run(step_dir)["teacher"]["fingerprint"] == (
      teacher.load(built).record["fingerprint"])
  assert generate.default_sampler(student) == ("consistency", 1)
  assert len(generate.plan(student, "consistency", 40).grid) == 41
  eps_dir = tmp_path / "eps"
  eps_config = tiny_config("toy", num_steps=1, checkpoint_every=1, samples__num=0)
  eps_built, eps_source, _, eps_mesh = trainer.prepare(eps_config)
  trainer.train(eps_built, eps_source, eps_dir, eps_mesh, show_progress=False)
  config.teacher.checkpoint = str(eps_dir)
  with pytest.raises(ValueError, match="predicts 'eps' .* consistency tuning starts from a "
                     "denoiser of 'x0' with preconditioning 'edm'"):
    trainer.prepare(config)


def progressive_round(teacher_dir, student_steps, **overrides):
  """A progressive-distillation round of the toy MLP: its teacher's EDM prediction."""
  config = edm(**{"num_steps": 1, "checkpoint_every": 1, "log_every": 1, **overrides})
  config.loss = {"kind": "progressive_distillation", "student_steps": student_steps,
                 "prediction": "x0", "preconditioning": "edm"}
  config.teacher.checkpoint = str(teacher_dir)
  return config


def test_progressive_rounds_run_and_sample_with_ddim_on_their_grid(teacher_run,
                                                                          tmp_path):
  """Round 1 (2 steps) from the diffusion teacher runs; its checkpoint is sampled
  by DDIM in its 2 steps on the grid it was distilled on (sample.py's default). Round 2
  takes it as its teacher only at 1 step; another N, a consistency objective, or another
  prediction are refused naming what is right."""
  first = tmp_path / "round1"
  built, source, _, mesh = trainer.prepare(progressive_round(teacher_run, 2, num_steps=2))
  summary = trainer.train(built, source, first, mesh, show_progress=False)
  assert np.isfinite(summary.final_loss)
  step_dir, student, params = generate.load(first)
  assert step_dir.name == "2"
  assert generate.default_sampler(student) == ("ddim", 2)
  assert generate.few_step_kind(student).startswith("a progressive-distillation model of 2 ")
  plan = generate.plan(student, "ddim", 2)
  np.testing.assert_allclose(plan.grid, progressive.grid(student.process, 2))
  x_T = generate.prior_noise(student, plan, jax.random.PRNGKey(0), 4)
  samples, nfe = generate.sample_in_batches(student, plan, params, x_T, None,
                                            jax.random.PRNGKey(1), 4, progress=False)
  assert nfe == 2 and np.all(np.isfinite(samples))
  assert teacher.check(trainer.prepare(progressive_round(first, 1))[0]) is not None
  with pytest.raises(ValueError, match="student must take 1, not 2: set loss.student_steps = 1"):
    trainer.prepare(progressive_round(first, 2))
  consistency = distillation(first)
  with pytest.raises(ValueError, match="can teach only the next round of progressive"):
    trainer.prepare(consistency)
  other = progressive_round(teacher_run, 2)
  other.loss.update({"prediction": "eps", "preconditioning": "none"})
  with pytest.raises(ValueError, match="set loss.prediction and loss.preconditioning as its"):
    trainer.prepare(other)
