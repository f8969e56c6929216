"""Reflow of the digits' rectified flow (Liu, Gong & Liu 2022, "Flow Straight and Fast",
sec. 2.2-2.3): configs/digits_flow.py's network, started from its teacher's parameters,
trained by flow matching on the teacher's (noise, sample) pairs (loss.kind "reflow",
`jaxdiff.train.step.Reflow`), so that its flow is straighter and Euler in 2 calls follows it
(sample.py's default for it); `:one` distils it to one step (t = 1 only, Euler in 1 call).

  python3 train.py --config configs/digits_flow.py --workdir runs/digits-flow   # 1-rectified
  python3 reflow.py --teacher runs/digits-flow --out runs/digits-pairs           # its pairs
  python3 train.py --config configs/digits_reflow.py --workdir runs/digits-reflow
  python3 reflow.py --teacher runs/digits-reflow --out runs/digits-pairs-2       # 2-rectified
  python3 train.py --config configs/digits_reflow.py:one --workdir runs/digits-one
  python3 sample.py --checkpoint runs/digits-one                                 # Euler, 1 call

The teacher (teacher.checkpoint) must be the one that wrote the pairs (data.options.path):
train.py refuses others before anything compiles. `:one` distils the 2-rectified flow as the
paper does; --config.teacher.checkpoint runs/digits-flow --config.data.options.path
runs/digits-pairs distils the 1-rectified flow instead. The learning rate is configs/digits_cd.py's
for a student started from its teacher; the rest is the teacher's recipe.
"""

from configs import digits_flow


def get_config(times: str = "uniform"):
  config = digits_flow.get_config()
  config.loss = {**config.loss, "kind": "reflow", "times": times}
  reflowed = times == "uniform"
  config.data.source = "pairs"
  config.data.options = {"path": "runs/digits-pairs" if reflowed else "runs/digits-pairs-2"}
  config.teacher.checkpoint = "runs/digits-flow" if reflowed else "runs/digits-reflow"
  config.optim.learning_rate = 4e-4
  nfe = 2 if reflowed else 1
  config.samples.update({"sampler": "euler", "nfe": nfe})
  config.eval.update({"sampler": "euler", "nfe": nfe})
  return config
