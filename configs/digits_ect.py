"""Easy consistency tuning (ECT; Geng et al. 2024, "Consistency Models Made Easy") of the
digits default: configs/digits.py's U-Net, started from a finished run of it named by path
(teacher.checkpoint; its first EMA), is tuned into a consistency model by consistency
training in continuous time, the gap s - r between the student's and its own target's
noise levels starting at the diffusion model's (r = s_min) and halved every 250 steps: ECT's
eight stages of q = 2 in 2000 steps. ECT's other CIFAR-10 settings carry over (k = 8, b = 1, the
log-normal P_mean = -1.1, P_std = 2, the weight 1 / s^2 + 1 / sigma_data^2, no dropout
here as the teacher's); the pseudo-Huber distance of iCT (ECT's c = 0 is its limit); the
learning rate a fifth of the teacher's, as configs/digits_cd.py's. `python3 train.py
--config configs/digits_ect.py --config.teacher.checkpoint runs/digits`. Sampled in 1 call
(`consistency` sampler; sample.py's default for it), pictured in 2, judged in 1 during
training."""

from configs import digits


def get_config():
  config = digits.get_config()
  config.num_steps = 2000
  config.loss = {"kind": "consistency_tuning", "stage_steps": 250, "q": 2.0,
                 "distance": "pseudo_huber"}
  config.teacher.checkpoint = "runs/digits"
  config.optim.learning_rate = 4e-4
  config.samples.update({"sampler": "consistency", "nfe": 2})
  config.eval.update({"sampler": "consistency", "nfe": 1})
  return config
