"""Progressive distillation (Salimans & Ho 2022, alg. 2) of the digits default: each round's
student, configs/digits.py's U-Net started from its teacher's parameters (EDM's x0
prediction and preconditioning, as the teacher's), learns to take one DDIM step where its
teacher takes two, on the nested Karras grid ending at t_min that sample.py's DDIM uses
for it. Round 0's teacher is a finished run of configs/digits.py (any sampler steps); each
later round's teacher is the previous round's workdir, and its student_steps must be half
the teacher's. The rounds, N = 16, 8, 4, 2, 1:

  python3 train.py --config configs/digits_pd.py --workdir runs/digits_pd16 \\
      --config.teacher.checkpoint runs/digits --config.loss.student_steps 16
  python3 train.py --config configs/digits_pd.py --workdir runs/digits_pd8 \\
      --config.teacher.checkpoint runs/digits_pd16 --config.loss.student_steps 8
  ... (4 from runs/digits_pd8, 2 from runs/digits_pd4, 1 from runs/digits_pd2)

The pictures and the evaluation during training sample each round's student by DDIM in its
own N steps (loss.student_steps sets samples.nfe and eval.nfe too); sample.py --checkpoint
runs/digits_pd1 does so by default.

Per round: 500 steps at batch 128, AdamW at 2e-4, constant after a 50-step warmup; the
EMAs as configs/digits.py's (the first, warmed up, is what the next round distils). The
paper keeps its base optimizer and learning rate and trains a few thousand steps per round
on CIFAR-10 with a much larger model. Here the student starts at its teacher and corrects
one two-step error at N points, so a tenth of the teacher's 2e-3 keeps it close to the
teacher's denoiser while it learns, and 500 steps (a third of the teacher's 1500, minutes
on this CPU) make the five rounds 2500 steps, 1.7x the teacher's, each step also making
the teacher's two network calls (not timed here).
"""

import ml_collections

from configs import digits


def get_config():
  config = digits.get_config()
  student_steps = ml_collections.FieldReference(16)
  config.loss = {"kind": "progressive_distillation", "student_steps": student_steps,
                 "prediction": "x0", "preconditioning": "edm"}
  config.teacher.checkpoint = "runs/digits"
  config.num_steps = 500
  config.optim.learning_rate = 2e-4
  config.optim.schedule = "constant"
  config.optim.warmup_steps = 50
  config.samples.update({"sampler": "ddim", "nfe": student_steps})
  config.eval.update({"sampler": "ddim", "nfe": student_steps, "every": 250})
  return config
