"""A teacher and its few-step students side by side (docs/distillation.md).

--checkpoint is the teacher and --students the few-step models trained from it (or any
models of its data). Each model samples --num images from one x_T (--seed) with its own
default sampler (`generate.default_sampler`: the consistency sampler for a consistency
model, DDIM for a progressive-distillation student, Euler for a reflow, UniPC for a
diffusion model) at each NFE of --nfes, on the grid `generate.plan` gives it (one fitted
to its checkpoint where there is one, as sample.py); the teacher also at its default NFE,
the reference. Each model samples with the parameters --params (the teacher) and
--student-params (one per student, or one for all) name, its first EMA by default: a
consistency model's best is often a post-hoc EMA (`--student-params phema:0.2`). Scored by
the evaluation classifier where there is one, with the memorisation check: each row's mean
pixel distance to the nearest training image, beside the held-out images' own.

Writes samples.png: a row of 10 samples per model and NFE, the same x_T in every row.
"""

import numpy as np

from jaxdiff import evaluation, plots
from jaxdiff.train import generate
from studies import common, samplers


def name_of(step_dir) -> str:
  """The training workdir's name of a <workdir>/checkpoints/<step> folder."""
  return step_dir.parent.parent.name


def student_params(options: common.Options) -> tuple[str, ...]:
  """Each student's --student-params choice: one each, one for all, or "ema"."""
  given = options.student_params or ("ema",)
  if len(given) == 1:
    return given * len(options.students)
  if len(given) != len(options.students):
    raise ValueError(f"--student-params names one choice for all students or one per student "
                     f"({len(options.students)}), got {len(given)}: {','.join(given)}")
  return given


def prepare(options: common.Options):
  """(teacher's step folder, [(row name, Experiment, parameters, plans)], teacher first),
  every choice checked."""
  if not options.students:
    raise ValueError("the few_step study sets students beside their teacher: name their "
                     "training workdirs with --students")
  choices = student_params(options)
  step_dir, teacher, params = common.load(options)
  sampler, default_nfe = generate.default_sampler(teacher)
  nfes = list(dict.fromkeys([*options.nfes, default_nfe]))
  models = [(common.with_params(name_of(step_dir), options.params), teacher, params,
             [generate.plan(teacher, sampler, nfe, step_dir=step_dir) for nfe in nfes])]
  for path, which in zip(options.students, choices):
    student_dir, student, chosen = generate.load(path, which)
    if tuple(student.data.shape) != tuple(teacher.data.shape):
      raise ValueError(f"the student {student_dir} was trained on data of shape "
                       f"{tuple(student.data.shape)}, the teacher {step_dir} on "
                       f"{tuple(teacher.data.shape)}: name students of the teacher's data")
    generate.check_sampling(student, options.num, options.batch_size, options.seed)
    sampler, _ = generate.default_sampler(student)
    models.append((common.with_params(name_of(student_dir), which), student, chosen,
                   [generate.plan(student, sampler, nfe, step_dir=student_dir)
                    for nfe in options.nfes]))
  return step_dir, models


def run(prepared, options: common.Options, out) -> str:
  step_dir, models = prepared
  judge = common.judge(models[0][1], options)
  score = lambda x_0: {} if judge is None else judge.scores(x_0)  # noqa: E731
  rows, shown = [], []
  for name, built, params, plans in models:
    new_rows, new_shown = samplers.sample_rows(
        built, params, plans, options, score, fields=[{"images": name}] * len(plans),
        on_row=lambda new: common.write_results(out, rows + new))
    rows += new_rows
    shown += new_shown
  if models[0][1].data.makes_images:
    plots.save_image_grid(np.concatenate(shown), out / "samples.png", cols=common.SHOWN)
  held_out, memorised = None, ""
  if judge is not None and judge.classifier is not None:
    held_out = evaluation.quality(judge.classifier.heldout_images, judge.classifier)
    memorised = (f"Held-out real images' mean distance to their nearest training image: "
                 f"{held_out['nearest_train_mean']:.3f} (a row below it copies).\n")
  common.write_results(out, rows, held_out=held_out)
  model = common.with_params(step_dir, options.params)
  return (f"# few_step: the teacher {model} and its students\n\n"
          + common.markdown(rows, held_out) + memorised)
