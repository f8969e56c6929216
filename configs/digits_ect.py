"""Easy consistency tuning (ECT; Geng et al. 2024, "Consistency Models Made Easy") of the
digits default: configs/digits.py's U-Net, started from a finished run of it named by path
(teacher.checkpoint; its first EMA), is tuned into a consistency model by consistency
training in continuous time. The gap s - r between the student's and its own target's
noise levels starts at the diffusion model's (r = s_min for most s) and is divided by q = 4
every 750 steps: four stages in 3000 steps, ending at the gap ECT's eight stages of q = 2
reach. ECT's other CIFAR-10 settings carry over (k = 8, b = 1, the log-normal P_mean =
-1.1, P_std = 2, the weight 1 / s^2 + 1 / sigma_data^2); no dropout, as the teacher; iCT's
pseudo-Huber distance (ECT's code takes its c = 0 limit); the learning rate half the
teacher's. `python3 train.py --config configs/digits_ect.py --config.teacher.checkpoint
runs/digits`. Sampled in 1 call (`consistency` sampler; sample.py's default for it),
pictured in 2, judged in 1 during training. Why these settings (against q = 2, 2000 steps
and a learning rate of 4e-4): docs/distillation.md, "Measured"."""

from configs import digits


def get_config():
  config = digits.get_config()
  config.num_steps = 3000
  config.loss = {"kind": "consistency_tuning", "stage_steps": 750, "q": 4.0,
                 "distance": "pseudo_huber"}
  config.teacher.checkpoint = "runs/digits"
  config.optim.learning_rate = 1e-3
  config.samples.update({"sampler": "consistency", "nfe": 2})
  config.eval.update({"sampler": "consistency", "nfe": 1})
  return config
