"""The train step on an accelerator: images/s, model FLOPs utilization, peak memory.

  python3 benchmarks/gpu_train_speed.py                        # U-Net and DiT-B/2, bfloat16
  python3 benchmarks/gpu_train_speed.py --model dit --batch 512 --steps 50
  python3 benchmarks/gpu_train_speed.py --model unet --batch 8 --steps 2   # a CPU smoke run

Models, each the step train.py runs (`trainer.step_parts`: clip, AdamW, EMA; the
state donated) over a data-parallel mesh of every device, on a fixed random batch:
  unet  configs/cifar10_ddpm.py: Ho et al.'s 35.7M-parameter CIFAR-10 U-Net,
        32x32x3, default batch 128;
  dit   DiT-B/2 as Peebles & Xie train it on ImageNet 256: 32x32x4 latents,
        1000 classes, label dropout, default batch 256.
--dtype bfloat16 (default) computes in bfloat16 with float32 master weights
(`model.dtype`). Printed per model: the compile time, seconds per step (median of
--repeats blocks of --steps steps, each block synchronised at its end),
images/s, the compiled step's FLOPs per device (XLA's cost analysis: the
model FLOPs, rematerialisation excluded), MFU = FLOPs / step time / the device's
peak (dense bfloat16, from --peak-tflops or the table below), and the peak
memory in use on device 0 (where the backend reports it).

With torch and diffusers installed (unless --no-peer), the U-Net is also
trained as diffusers' UNet2DModel with the same recipe (benchmarks/train_speed.py's
PyTorch step, parameter counts checked equal) on the same device kind, eager,
under bfloat16 autocast, and the ratio of images/s printed.

Goals (the scale-out issue): MFU >= 35% in bfloat16 on an H100-class GPU; at
least 1.3 times diffusers' images/s for the same U-Net.
"""

import argparse
import os
import statistics
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from benchmarks import train_speed  # noqa: E402
from configs import cifar10_ddpm, cifar10_dit  # noqa: E402
from jaxdiff import models  # noqa: E402
from jaxdiff.train import experiment, sharding, trainer  # noqa: E402

# Dense bfloat16 peak per device, in TFLOP/s, by a substring of device_kind (vendors' sheets).
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L4": 121.0, "TPU v4": 275.0,
               "TPU v5 lite": 197.0, "TPU v5e": 197.0, "TPU v5p": 459.0, "TPU v6": 918.0}
MODELS = {"unet": 128, "dit": 256}  # Default batches.
GOAL_MFU = 0.35
GOAL_OVER_DIFFUSERS = 1.3


def build(name, batch_size, dtype):
  """(Experiment, DataSpec) of a model at a batch size and compute dtype."""
  if name == "unet":
    config, spec = cifar10_ddpm.get_config(), experiment.DataSpec((32, 32, 3), 10, True)
  else:
    config = cifar10_dit.get_config()
    config.model.options = {"size": "B/2", "learn_sigma": False}
    spec = experiment.DataSpec((32, 32, 4), 1000, False)
  config.batch_size = batch_size
  config.model.dtype = dtype
  return experiment.Experiment.from_config(config, spec), spec


def peak_flops(device, override):
  if override:
    return override * 1e12
  for kind, tflops in PEAK_TFLOPS.items():
    if kind.lower() in device.device_kind.lower():
      return tflops * 1e12
  return None


def measure(name, args):
  batch_size = args.batch or MODELS[name]
  built, spec = build(name, batch_size, args.dtype)
  mesh = sharding.make_mesh({"data": -1})
  sharding.check_batch_size(mesh, batch_size)
  init, state_sharding, train_step = trainer.step_parts(built, mesh)
  state = jax.jit(init, out_shardings=state_sharding)()
  rng = np.random.default_rng(0)
  local = {"image": rng.uniform(-1, 1, (1, batch_size, *spec.shape)).astype(np.float32),
           "label": rng.integers(0, spec.num_classes, (1, batch_size)).astype(np.int32)}
  batch = sharding.global_batch(local, sharding.batch_sharding(mesh))

  start = time.perf_counter()
  compiled = train_step.lower(state, batch).compile()
  compile_seconds = time.perf_counter() - start
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flops = float(cost.get("flops", 0.0)) if cost else 0.0

  for _ in range(args.warmup):
    state, _ = compiled(state, batch)
  jax.block_until_ready(state)
  blocks = []
  for _ in range(args.repeats):
    start = time.perf_counter()
    for _ in range(args.steps):
      state, metrics = compiled(state, batch)
    jax.block_until_ready((state, metrics))
    blocks.append((time.perf_counter() - start) / args.steps)
  seconds = statistics.median(blocks)

  device = jax.devices()[0]
  peak = peak_flops(device, args.peak_tflops)
  stats = device.memory_stats() or {}
  print(f"{name}: {models.num_params(state.params):,} parameters, batch {batch_size}, "
        f"{args.dtype}, mesh {dict(mesh.shape)} of {device.device_kind}")
  print(f"  compile {compile_seconds:.1f} s; {seconds:.4f} s/step (median of {args.repeats} "
        f"blocks of {args.steps}), {batch_size / seconds:,.1f} images/s")
  if flops:
    achieved = flops / seconds
    line = f"  {flops / 1e9:,.1f} GFLOP per step per device, {achieved / 1e12:.2f} TFLOP/s"
    if peak:
      mfu = achieved / peak
      line += (f", MFU {mfu:.1%} of {peak / 1e12:.0f} TFLOP/s bfloat16 peak (goal >= "
               f"{GOAL_MFU:.0%}: {'met' if mfu >= GOAL_MFU else 'missed'})")
    else:
      line += f", MFU unknown: no peak for {device.device_kind!r} (pass --peak-tflops)"
    print(line)
  if "peak_bytes_in_use" in stats:
    print(f"  peak memory on device 0: {stats['peak_bytes_in_use'] / 2**30:.2f} GiB of "
          f"{stats.get('bytes_limit', 0) / 2**30:.1f} GiB")
  if name == "unet" and args.peer:
    diffusers_seconds = time_diffusers(built, local, models.num_params(state.params), args)
    if diffusers_seconds:
      ratio = diffusers_seconds / seconds
      print(f"  jaxdiff / diffusers images/s = {ratio:.2f} (goal >= {GOAL_OVER_DIFFUSERS}: "
            f"{'met' if ratio >= GOAL_OVER_DIFFUSERS else 'missed'})")


def time_diffusers(built, local, num_params, args):
  """Seconds per step of the same U-Net and recipe in diffusers (median of the same
  blocks); None when torch or diffusers is missing."""
  try:
    import torch  # pylint: disable=import-outside-toplevel
    calls = train_speed.pytorch_calls(
        built, local, num_params, os.cpu_count(),
        device="cuda" if torch.cuda.is_available() else "cpu",
        bfloat16=args.dtype == "bfloat16")
  except ImportError as error:
    print(f"  diffusers: skipped ({error})")
    return None
  step, sync = calls["pytorch"]
  for _ in range(args.warmup):
    sync(step())
  blocks = []
  for _ in range(args.repeats):
    start = time.perf_counter()
    for _ in range(args.steps):
      out = step()
    sync(out)
    blocks.append((time.perf_counter() - start) / args.steps)
  seconds = statistics.median(blocks)
  print(f"  diffusers: {seconds:.4f} s/step, {built.run.batch_size / seconds:,.1f} images/s")
  return seconds


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--model", choices=["unet", "dit", "both"], default="both")
  parser.add_argument("--batch", type=int, default=None, help="global batch (default per model)")
  parser.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16")
  parser.add_argument("--steps", type=int, default=20, help="steps per timed block")
  parser.add_argument("--repeats", type=int, default=3, help="timed blocks; the median counts")
  parser.add_argument("--warmup", type=int, default=3, help="untimed steps after compiling")
  parser.add_argument("--peer", action=argparse.BooleanOptionalAction, default=True,
                      help="also time diffusers' UNet2DModel (needs torch and diffusers)")
  parser.add_argument("--peak-tflops", type=float, default=None,
                      help="the device's dense bfloat16 peak, if not in the table")
  args = parser.parse_args()
  print(f"gpu_train_speed: jax {jax.__version__}, {len(jax.devices())} x "
        f"{jax.devices()[0].device_kind} ({jax.default_backend()})")
  for name in (["unet", "dit"] if args.model == "both" else [args.model]):
    measure(name, args)


if __name__ == "__main__":
  main()
