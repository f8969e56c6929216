r"""The classic experiments, one command each (the studies/ package, one module per study).

  python3 study.py samplers --checkpoint runs/digits            # DDIM vs DDPM (and UniPC)
  python3 study.py edit --checkpoint runs/digits                # inpainting and SDEdit
  python3 study.py guidance --checkpoint runs/digits-cond       # classifier-free guidance sweep
  python3 study.py classifier --checkpoint runs/digits          # classifier guidance
  python3 study.py embedding --checkpoint runs/digits           # a dead time embedding
  python3 study.py schedules --samplers ddpm,ddim               # linear vs cosine (trains two)
  python3 study.py training                                     # loss and samples over training
  python3 study.py few_step --checkpoint runs/digits --students runs/digits-ct \
      --student-params phema:0.2                                # a teacher and its students

samplers   DDPM, DDIM and UniPC by NFE on one model (Song et al. 2021, table 1).
edit       inpainting with and without RePaint's resampling, SDEdit at three levels.
guidance   a conditional model at each guidance scale of --scales (Ho & Salimans 2022).
classifier a noise-conditional classifier trained on the model's data, then its
           gradient guiding the unconditional model (Dhariwal & Nichol 2021).
embedding  the trained model and the same with its time embedding zeroed: the
           conditioning diagnostic and the samples of both.
schedules  the same network trained with the linear and the cosine schedule, by NFE
           (Nichol & Dhariwal 2021).
training   a tiny DDPM on the 2-D toy and on the digits: loss and samples over training.
few_step   a teacher and its few-step students, each with its own sampler, at --nfes.
Each module's docstring says what it does and writes. Images of 8-bit data
with an evaluation classifier (`jaxdiff.evaluation`: the digits; Fashion-MNIST
with --evaluate yes) are scored by its Frechet distance, KID, confidence and
class coverage at N = --num; with --inception-weights (any 8-bit data, e.g.
CIFAR-10 trained with --config configs/cifar10_ddpm.py on a GPU) also by FID and
Inception Score (`jaxdiff.fid`). Every study writes a new folder (default
<training workdir>/study-<name>-<time>, or runs/study-<name>-<time> for the
studies that train) holding results.md, results.json and its pictures; every
choice is checked before the folder is claimed.
"""

from absl import app, flags, logging

from jaxdiff import cli, evaluation, inception, workdir
from jaxdiff.train import host_memory
from studies import (classifier, common, edit, embedding, few_step, guidance, samplers,
                     schedules, training)

STUDIES = {"samplers": samplers, "edit": edit, "guidance": guidance, "classifier": classifier,
           "embedding": embedding, "schedules": schedules, "training": training, "few_step": few_step}
TRAINING = ("schedules", "training")  # The studies that train their models (with --config).

_CONFIG = cli.define_config("configs/train_base.py", "schedules, training: the training "
                            "configuration of the digits models.")
_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "A training workdir, its checkpoints/ "
                                  "folder or one <step>/ folder (the studies that do not train).")
_NUM = flags.DEFINE_integer("num", 500, "Samples (or images) per row.")
_NFES = flags.DEFINE_list("nfes", ["10", "20", "50", "100"], "samplers, schedules, few_step: "
                          "the NFEs.")
_STUDENTS = flags.DEFINE_list("students", [], "few_step: the students' training workdirs, set "
                              "beside --checkpoint, their teacher.")
_PARAMS = cli.define_params()
_STUDENT_PARAMS = flags.DEFINE_list("student-params", [], "few_step: the students' parameters "
                                    "(as --params), one per student or one for all; default ema.")
_SAMPLERS = flags.DEFINE_list("samplers", ["ddpm", "ddim", "unipc"], "samplers, schedules: "
                              "samplers of the zoo.")
_REFERENCE_NFE = flags.DEFINE_integer("reference-nfe", 1000, "samplers: NFE of the DDPM "
                                      "reference row.")
_SAMPLER = flags.DEFINE_string("sampler", "unipc", "guidance, classifier, embedding: the sampler.")
_NFE = flags.DEFINE_integer("nfe", 20, "guidance, classifier, embedding: its NFE.")
_SCALES = flags.DEFINE_list("scales", ["0", "1", "3", "5", "7"], "guidance, classifier: the "
                            "guidance scales.")
_INCEPTION = flags.DEFINE_string("inception-weights", None, "Inception-v3 weights (.pth or "
                                 "converted .npz, jaxdiff.inception): the rows are also scored "
                                 "by FID and Inception Score against the data's statistics.")
_BATCH = flags.DEFINE_integer("batch-size", 500, "Samples per compiled call.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of x_T and the samplers' noise.")
_EVALUATE = flags.DEFINE_enum("evaluate", "auto", ["auto", "yes", "no"], "Score the rows with "
                              "jaxdiff.evaluation's classifier; auto: for the digits.")
_RESAMPLE = flags.DEFINE_integer("resample", 10, "edit: RePaint's repeats of each step.")
_STEPS = flags.DEFINE_integer("steps", 100, "edit: ancestral steps of inpainting and SDEdit.")
_TRAIN_STEPS = flags.DEFINE_integer("train-steps", None, "schedules, training, classifier: "
                                    "training steps; default the config's (the classifier's: "
                                    "jaxdiff.classifier_guidance's default).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Output folder (new); default "
                               "<training workdir>/study-<name>-<time>.")


def options() -> common.Options:
  """The flags, checked."""
  try:
    nfes = tuple(int(nfe) for nfe in _NFES.value)
    scales = tuple(float(w) for w in _SCALES.value)
  except ValueError:
    raise ValueError(f"--nfes must be integers and --scales numbers, got {_NFES.value} and "
                     f"{_SCALES.value}") from None
  if _NUM.value < evaluation.MIN_IMAGES:
    raise ValueError(f"--num must be at least {evaluation.MIN_IMAGES}, got {_NUM.value}")
  if _TRAIN_STEPS.value is not None and _TRAIN_STEPS.value < 1:
    raise ValueError(f"--train-steps must be a positive integer, got {_TRAIN_STEPS.value}")
  if _INCEPTION.value:
    inception.load_weights(_INCEPTION.value)  # A bad file fails now, before anything runs.
  return common.Options(
      checkpoint=_CHECKPOINT.value, num=_NUM.value, batch_size=_BATCH.value, seed=_SEED.value,
      evaluate=_EVALUATE.value, nfes=nfes, samplers=tuple(_SAMPLERS.value),
      reference_nfe=_REFERENCE_NFE.value, resample=_RESAMPLE.value, steps=_STEPS.value,
      scales=scales, inception_weights=_INCEPTION.value, sampler=_SAMPLER.value,
      nfe=_NFE.value, train_steps=_TRAIN_STEPS.value, students=tuple(_STUDENTS.value),
      params=_PARAMS.value, student_params=tuple(_STUDENT_PARAMS.value))


def main(argv):
  if len(argv) != 2 or argv[1] not in STUDIES:
    raise app.UsageError(f"name one study: {' | '.join(STUDIES)}")
  name = argv[1]
  study = STUDIES[name]
  logging.set_verbosity(logging.WARNING)  # Orbax logs every read at INFO.
  host_memory.keep_cpu_temporaries()  # As train.py: the studies that train run its loop.
  try:
    opts = options()
    prepared = (study.prepare(opts, _CONFIG.value) if name in TRAINING
                else study.prepare(opts))
  except (ValueError, FileNotFoundError, KeyError) as error:
    raise SystemExit(f"cannot run the {name} study: {error} (nothing was written)") from None
  step_dir = prepared[0]
  parent = "runs" if step_dir is None else step_dir.parent.parent
  with workdir.claim(_WORKDIR.value, f"study-{name}", parent=parent) as out:
    table = study.run(prepared, opts, out)
    (out / "results.md").write_text(table)
  print(f"{table}\nwritten to {out}")


if __name__ == "__main__":
  app.run(cli.exit_on_interrupt(main), flags_parser=cli.parse_flags)
