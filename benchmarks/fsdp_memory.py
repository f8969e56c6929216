"""Per-device memory of the train state under FSDP, from the compiled step (nothing runs).

  python3 benchmarks/fsdp_memory.py                  # both models, FSDP over 8 devices
  python3 benchmarks/fsdp_memory.py --model cifar10 --fsdp 4

On --fsdp simulated CPU devices (a 1 x n mesh), the train step train.py runs
(clip, AdamW, EMA, metrics) is lowered and compiled ahead of time for:
  cifar10  configs/cifar10_ddpm.py: Ho et al.'s 35.7M-parameter U-Net, batch 128;
  dit      DiT-XL/2 as Peebles & Xie train it: 256x256 images as 32x32x4 latents,
           1000 classes, batch 256 (configs/cifar10_dit.py with those fields).
Printed: the state's bytes in all (parameters, one EMA, Adam's two moments),
the bytes one device holds by the shardings (`sharding.bytes_per_device`), the
compiled step's argument bytes on one device from XLA's memory_analysis() (the
state plus one device's rows of the batch), its temporary bytes, and the ratio
per-device state / whole state against the goal 1.05 / n.
"""

import argparse
import os
import sys

parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
parser.add_argument("--model", choices=["cifar10", "dit", "both"], default="both")
parser.add_argument("--fsdp", type=int, default=8, help="devices, all on the fsdp axis")
args = parser.parse_args()
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + f" --xla_force_host_platform_device_count={args.fsdp}")

import jax  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from configs import cifar10_ddpm, cifar10_dit  # noqa: E402
from jaxdiff import models  # noqa: E402
from jaxdiff.train import experiment, sharding, trainer  # noqa: E402

GOAL_SLACK = 0.05


def model_config(name):
  """(config, DataSpec) of a model."""
  if name == "cifar10":
    return cifar10_ddpm.get_config(), experiment.DataSpec((32, 32, 3), 10, True)
  config = cifar10_dit.get_config()
  config.model.options = {"size": "XL/2", "learn_sigma": False}
  return config, experiment.DataSpec((32, 32, 4), 1000, False)


def measure(name, fsdp):
  config, spec = model_config(name)
  config.mesh = {"data": 1, "fsdp": fsdp}
  built = experiment.Experiment.from_config(config, spec)
  mesh = sharding.make_mesh(built.run.mesh)
  init, state_sharding, train_step = trainer.step_parts(built, mesh)
  shapes = jax.eval_shape(init)
  abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          shapes, state_sharding)
  batch_sharding = sharding.batch_sharding(mesh)
  batch = {"image": jax.ShapeDtypeStruct((1, built.run.batch_size, *spec.shape), np.float32,
                                         sharding=batch_sharding),
           "label": jax.ShapeDtypeStruct((1, built.run.batch_size), np.int32,
                                         sharding=batch_sharding)}
  memory = train_step.lower(abstract, batch).compile().memory_analysis()
  total = sum(a.size * a.dtype.itemsize for a in jax.tree.leaves(shapes))
  per_device = sharding.bytes_per_device(shapes, state_sharding)
  replicated = sum(not s.spec for s in jax.tree.leaves(state_sharding))
  ratio = per_device / total
  goal = (1 + GOAL_SLACK) / fsdp
  mib = 2.0**-20
  print(f"{name}: {models.num_params(shapes.params):,} parameters, batch "
        f"{built.run.batch_size}, FSDP over {fsdp} devices "
        f"({replicated} of {len(jax.tree.leaves(shapes))} state arrays replicated)")
  print(f"  state (params, EMA, Adam mu and nu) in all: {total * mib:9.1f} MiB")
  print(f"  state on one device, by the shardings:      {per_device * mib:9.1f} MiB "
        f"= {ratio:.4f} of all (goal <= 1/{fsdp} + {GOAL_SLACK:.0%} of that = {goal:.4f}: "
        f"{'met' if ratio <= goal else 'missed'})")
  print(f"  compiled step, one device: arguments {memory.argument_size_in_bytes * mib:.1f} MiB "
        f"(state + its rows of the batch), temporaries "
        f"{memory.temp_size_in_bytes * mib:.1f} MiB")


def main():
  print(f"fsdp_memory: jax {jax.__version__}, {len(jax.devices())} simulated "
        f"{jax.devices()[0].platform} devices")
  for name in (["cifar10", "dit"] if args.model == "both" else [args.model]):
    measure(name, args.fsdp)


if __name__ == "__main__":
  main()
