"""The teacher of a distillation: a trained diffusion model, frozen, that the student
learns from (consistency distillation, `step.ConsistencyDistillation`; progressive
distillation, `step.ProgressiveDistillation`, whose later rounds are taught by the previous
round's student; rectified flow's reflow, `step.Reflow`, through the pairs its ODE wrote,
`check_pairs`), or that only starts the student (easy consistency tuning,
`step.ConsistencyTuning`).

The config's `teacher` section names its checkpoint and parameters. `check` reads only
its run record and refuses, before anything compiles, what cannot be distilled: a
distillation without a teacher or a teacher without a distillation, a teacher that is
not a diffusion model (but a progressive-distillation model of twice the student's steps
for the next round), or one of another data shape, classes or process, or, for
progressive distillation, another prediction, preconditioning or grid; and, because
the student starts from the teacher's parameters, a student network of another
architecture (naming the first parameter that differs) or, for a diffusion-model
student, another prediction or preconditioning (for consistency tuning, other than
EDM's x0). `load` restores its parameters
and describes them (`record`, with their fingerprint, kept in the run record so that a
resumed run refuses a teacher that has changed). `x0_fn` is the teacher's x0 prediction
as the train step calls it.
"""

import dataclasses
import pathlib

import jax
from flax import traverse_util

from jaxdiff import data, parameterization
from jaxdiff.train import checkpoint, generate, latent, optim
from jaxdiff.train.experiment import ABSENT, DataSpec, Experiment
from jaxdiff.train.step import ConsistencyTuning, Objective, ProgressiveDistillation, Reflow


@dataclasses.dataclass(frozen=True)
class Teacher:
  """A loaded teacher: its Experiment, parameters, and `record`."""

  experiment: Experiment
  params: object
  record: dict


def named(experiment: Experiment) -> dict:
  """The config's teacher section, {"checkpoint", "params"}."""
  return {**ABSENT["teacher"], **experiment.config.get("teacher", {})}


def check(experiment: Experiment) -> Experiment | None:
  """The teacher's Experiment (rebuilt from its run record; no arrays read), or None
  where the objective distils none.

  Raises:
    ValueError naming what cannot be distilled; FileNotFoundError for a missing teacher.
  """
  section = named(experiment)
  needs = getattr(experiment.objective, "needs_teacher", False)
  kind = experiment.config["loss"].get("kind", "diffusion")
  if needs and not section["checkpoint"]:
    raise ValueError(f"loss.kind {kind!r} distils a teacher: name its checkpoint in "
                     "teacher.checkpoint (a trained diffusion model's workdir or step folder)")
  if not needs:
    if section["checkpoint"]:
      raise ValueError(f"teacher.checkpoint {section['checkpoint']!r} is named, but loss.kind "
                       f"{kind!r} learns from no teacher; set it to '' (or loss.kind to "
                       "'consistency_distillation', 'consistency_tuning', "
                       "'progressive_distillation' or 'reflow')")
    return None
  try:
    step_dir = checkpoint.find(section["checkpoint"])
  except FileNotFoundError as error:
    raise FileNotFoundError(f"teacher.checkpoint {section['checkpoint']!r}: {error}") from None
  record = checkpoint.read_run(step_dir)
  teacher = Experiment.from_config(record["config"], DataSpec.from_record(record["data"]))
  where = f"the teacher {step_dir}"
  _check_kind(teacher.objective, experiment.objective, where)
  if tuple(teacher.data.shape) != tuple(experiment.data.shape):
    raise ValueError(f"{where} was trained on data of shape {tuple(teacher.data.shape)}; this "
                     f"run's data has shape {tuple(experiment.data.shape)}")
  if (teacher.conditional, teacher.data.num_classes) != (experiment.conditional,
                                                         experiment.data.num_classes):
    raise ValueError(f"{where} has conditional={teacher.conditional} with "
                     f"{teacher.data.num_classes} classes; the student has "
                     f"conditional={experiment.conditional} with "
                     f"{experiment.data.num_classes}: set model.conditional as the teacher's")
  if teacher.process != experiment.process:
    raise ValueError(f"{where} was trained on the process {teacher.process}; the student "
                     f"distils its ODE on the same process, got {experiment.process}: set "
                     "process and process_options as the teacher's")
  _check_same_network(teacher, experiment, where)
  return teacher


def check_pairs(experiment: Experiment, source, source_name: str):
  """Refuses a reflow whose data are not the (noise, sample) pairs of its own teacher (the
  fingerprints of the teacher's parameters differ: both named), before anything compiles.

  Raises:
    ValueError naming what disagrees and what would be right.
  """
  if not isinstance(experiment.objective, Reflow):
    return
  if not isinstance(source, data.PairsSource):
    raise ValueError(f"loss.kind 'reflow' trains on its teacher's (noise, sample) pairs; "
                     f"data.source {source_name!r} holds none: write them with reflow.py "
                     "--teacher TEACHER --out PAIRS and set data.source 'pairs', "
                     "data.options.path PAIRS")
  section = named(experiment)
  step_dir, _, params = generate.load(section["checkpoint"], section["params"])
  found = latent.fingerprint(params)
  wrote = source.record["teacher"]
  if found != wrote["fingerprint"]:
    raise ValueError(f"the pairs of {source.origin} were written by the teacher at "
                     f"{wrote['checkpoint']} (params {wrote['params']}, fingerprint "
                     f"{wrote['fingerprint']}); teacher.checkpoint names "
                     f"{pathlib.Path(step_dir).absolute()} (params {section['params']}, "
                     f"fingerprint {found}), another one: name the one that wrote them, or "
                     "write pairs with this one (reflow.py)")


def _check_kind(teacher, student, where: str):
  """Refuses a teacher that is no diffusion model (a reflow is one), except a
  progressive-distillation student of 2N steps as the teacher of the next round's N, with
  the same grid; and a progressive or reflow student that does not keep its teacher's
  prediction and preconditioning (it starts from the teacher's parameters), or a
  consistency-tuning student whose teacher is not EDM's preconditioned x0 (the consistency
  function's c_in and c_noise are EDM's, `consistency.preconditioned`)."""
  if isinstance(teacher, ProgressiveDistillation):
    if not isinstance(student, ProgressiveDistillation):
      raise ValueError(f"{where} is a progressive-distillation model ({teacher.student_steps} "
                       f"DDIM steps); it can teach only the next round of progressive "
                       f"distillation (loss.kind 'progressive_distillation')")
    if student.student_steps * 2 != teacher.student_steps:
      right = (f"set loss.student_steps = {teacher.student_steps // 2}"
               if teacher.student_steps % 2 == 0 else "its steps cannot be halved")
      raise ValueError(f"{where} takes {teacher.student_steps} DDIM steps and a round halves "
                       f"them, so the student must take {teacher.student_steps / 2:g}, not "
                       f"{student.student_steps}: {right}")
    if (student.grid, student.grid_options) != (teacher.grid, teacher.grid_options):
      raise ValueError(f"{where} was distilled on loss.grid {teacher.grid!r} with grid_options "
                       f"{teacher.grid_options}; the next round nests in it: set them as the "
                       f"teacher's (got {student.grid!r}, {student.grid_options})")
  elif not isinstance(teacher, Objective):  # A diffusion model: a reflow is one too.
    raise ValueError(f"{where} is not a diffusion model (its objective is "
                     f"{type(teacher).__name__}); a {type(student).__name__} student "
                     "distils one")
  if isinstance(student, (Objective, ProgressiveDistillation, ConsistencyTuning)) and (
      (student.prediction, student.preconditioning) != (teacher.prediction,
                                                        teacher.preconditioning)):
    right = (f"and consistency tuning starts from a denoiser of {student.prediction!r} with "
             f"preconditioning {student.preconditioning!r} (configs/train_base.use_edm)"
             if isinstance(student, ConsistencyTuning) else
             f"so set loss.prediction and loss.preconditioning as its (got "
             f"{student.prediction!r}, {student.preconditioning!r})")
    raise ValueError(f"{where} predicts {teacher.prediction!r} with preconditioning "
                     f"{teacher.preconditioning!r}; the student starts as the teacher, {right}")


def _check_same_network(teacher: Experiment, student: Experiment, where: str):
  """Refuses a student whose parameters are not the teacher's in names and shapes."""

  def shapes(experiment):
    optimizer = optim.make_optimizer(experiment.optimizer, experiment.run.num_steps)
    params = jax.eval_shape(experiment.init_fn(optimizer)).params
    return {path: leaf.shape for path, leaf in
            traverse_util.flatten_dict(params, sep="/").items()}

  ours, theirs = shapes(student), shapes(teacher)
  for path in sorted(set(ours) | set(theirs)):
    if ours.get(path) != theirs.get(path):
      raise ValueError(f"the student starts from the teacher's parameters, but its network "
                       f"differs from {where}'s at {path}: {ours.get(path, 'absent')} here, "
                       f"{theirs.get(path, 'absent')} in the teacher; give model the "
                       "teacher's name and options")


def load(experiment: Experiment) -> Teacher | None:
  """The teacher of the run (`check`ed), its parameters restored; None where none."""
  if check(experiment) is None:
    return None
  section = named(experiment)
  step_dir, teacher, params = generate.load(section["checkpoint"], section["params"])
  return Teacher(teacher, params, {"checkpoint": str(pathlib.Path(step_dir).absolute()),
                                   "params": section["params"],
                                   "fingerprint": latent.fingerprint(params)})


def x0_fn(teacher: Experiment):
  """(params, x_t [B, ...], t [B], cond) -> the teacher's x0 prediction (dropout off)."""

  def fn(params, x, t, cond):
    x0_eps = parameterization.x0_eps_fn(generate.denoise_fn(teacher, params),
                                        teacher.process, teacher.objective.prediction)
    return x0_eps(x, t, cond)[0]

  return fn
