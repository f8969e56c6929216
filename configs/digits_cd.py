"""Consistency distillation (Song et al. 2023, alg. 2) of the digits default: the student,
configs/digits.py's U-Net started from the teacher's parameters, learns to map every point
of the teacher's PF-ODE trajectories to their end in one call. The teacher is a finished
run of configs/digits.py named by path (teacher.checkpoint; its first EMA): `python3
train.py --config configs/digits_cd.py --config.teacher.checkpoint runs/digits`.

The paper's CIFAR-10 settings where they carry over: N = 18 Karras levels, the teacher's
Heun step, a target EMA of decay 0.95; the pseudo-Huber distance of iCT instead of LPIPS
(whose VGG weights cannot be had offline). Sampled in 1 call (`consistency` sampler;
sample.py's default for it), pictured in 2, judged in 1 during training."""

from configs import digits


def get_config():
  config = digits.get_config()
  config.loss = {"kind": "consistency_distillation", "num_scales": 18,
                 "distance": "pseudo_huber", "solver": "heun", "target_decay": 0.95}
  config.teacher.checkpoint = "runs/digits"
  config.optim.learning_rate = 4e-4
  config.samples.update({"sampler": "consistency", "nfe": 2})
  config.eval.update({"sampler": "consistency", "nfe": 1})
  return config
