"""U-Net speed: jaxdiff's DDPM CIFAR-10 U-Net against diffusers' UNet2DModel.

  python benchmarks/unet_speed.py                        # batch 8, float32
  python benchmarks/unet_speed.py --dtype bfloat16 --repeats 20
  python benchmarks/unet_speed.py --no-peer              # jaxdiff only
  python benchmarks/unet_speed.py --xla-defaults         # also without compiler_options()

Both networks are Ho et al. 2020's CIFAR-10 U-Net (35,746,307 parameters):
`jaxdiff.models.UNet()` and diffusers' `UNet2DModel` with the config of
google/ddpm-cifar10-32 (random weights), each in its native layout (NHWC,
NCHW) on [B, 32, 32, 3]. Timed, in one run:
  * forward: one network call, dropout off;
  * train step: Ho et al.'s L_simple (t uniform over the 1000 linear-schedule
    steps, eps-MSE) with dropout 0.1, its gradient and an AdamW update; JAX's
    step is one jitted function with params and optimizer state donated.
JAX's functions are compiled with `jaxdiff.models.compiler_options()` (on CPU:
YNNPACK for reductions only, Eigen's convolutions); --xla-defaults also times
them compiled with XLA's defaults, in the same run.
Printed: median seconds per call, images/s and the ratios jaxdiff images/s /
other images/s (> 1: jaxdiff is faster), and the load average: they
take turns call by call, so all see the same load, but torch's threads slow
down far more than XLA's on a busy CPU. JAX's compile time is printed
separately (excluded, like torch's first eager calls: both are warmed up).
--dtype bfloat16 computes jaxdiff in bfloat16 with float32 parameters and runs
diffusers under torch.autocast(bfloat16). torch runs on CUDA when available,
JAX on its default backend.
"""

import argparse
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxdiff import losses, peers, schedules
from jaxdiff.models import UNet, compiler_options, num_params

T = 1000
LEARNING_RATE = 2e-4  # Ho et al.'s CIFAR-10 rate.
# google/ddpm-cifar10-32's config.json, as diffusers' UNet2DModel keyword arguments.
DIFFUSERS_CONFIG = dict(
    sample_size=32, in_channels=3, out_channels=3, block_out_channels=(128, 256, 256, 256),
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"), layers_per_block=2,
    downsample_padding=0, flip_sin_to_cos=False, freq_shift=1, norm_eps=1e-6, norm_num_groups=32,
    attention_head_dim=None, act_fn="silu", dropout=0.1)


def median_seconds(calls, repeats):
  """{name: median wall time of fn() then sync(its result)} for calls {name: (fn, sync)},
  after one warm-up call each; the calls take turns, so that all see the same load."""
  times = {name: [] for name in calls}
  for _ in range(repeats + 1):
    for name, (fn, sync) in calls.items():
      start = time.perf_counter()
      sync(fn())
      times[name].append(time.perf_counter() - start)
  return {name: statistics.median(t[1:]) for name, t in times.items()}


def jaxdiff_calls(args, x0, options):
  """{"forward": (fn, sync), "train step": (fn, sync)} for jaxdiff's UNet compiled with the
  XLA compiler options `options`; prints compile times."""
  model = UNet(dtype=jnp.dtype(args.dtype))
  process = schedules.discrete_ddpm("linear", T)
  params = jax.jit(lambda key: model.init(key, x0, jnp.ones(x0.shape[:1]),
                                          deterministic=True))(jax.random.PRNGKey(0))["params"]
  optimizer = optax.adamw(LEARNING_RATE)
  opt_state = optimizer.init(params)
  t = jnp.full(x0.shape[:1], 0.5)

  forward = jax.jit(lambda params, x, t: model.apply({"params": params}, x, t,
                                                     deterministic=True))

  def train_step(params, opt_state, x0, key):
    key_loss, key_dropout = jax.random.split(key)

    def loss_fn(params):
      denoise_fn = lambda x, t, cond: model.apply({"params": params}, x, t, cond,
                                                  deterministic=False,
                                                  rngs={"dropout": key_dropout})
      return jnp.mean(losses.diffusion_loss(denoise_fn, process, x0, key_loss)[0])

    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  train_step = jax.jit(train_step, donate_argnums=(0, 1))
  key = jax.random.PRNGKey(1)
  start = time.perf_counter()
  forward = forward.lower(params, x0, t).compile(options)
  compile_forward = time.perf_counter() - start
  start = time.perf_counter()
  train_step = train_step.lower(params, opt_state, x0, key).compile(options)
  compile_train = time.perf_counter() - start
  print(f"jaxdiff: {num_params(params):,} parameters, {args.dtype} compute on "
        f"{jax.devices()[0]}, compiler options {options}; compile: forward "
        f"{compile_forward:.1f} s, train step {compile_train:.1f} s")

  state = [params, opt_state]

  def step():
    state[0], state[1], loss = train_step(state[0], state[1], x0, key)
    return loss

  return {"forward": (lambda: forward(state[0], x0, t), jax.block_until_ready),
          "train step": (step, jax.block_until_ready)}


def diffusers_calls(args, x0):
  """{"forward": (fn, sync), "train step": (fn, sync)} for diffusers' UNet2DModel in torch."""
  torch, diffusers = peers.import_peers()
  device = "cuda" if torch.cuda.is_available() else "cpu"
  torch.manual_seed(0)
  model = diffusers.UNet2DModel(**DIFFUSERS_CONFIG).to(device)
  optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE)
  scheduler = diffusers.DDPMScheduler(num_train_timesteps=T, beta_schedule="linear")
  x = torch.from_numpy(np.array(x0).transpose(0, 3, 1, 2)).to(device)  # [B, C, H, W]
  t = torch.full((x.shape[0],), T // 2, device=device)
  autocast = lambda: torch.autocast(device, torch.bfloat16, enabled=args.dtype == "bfloat16")
  sync = lambda _: torch.cuda.synchronize() if device == "cuda" else None
  count = sum(p.numel() for p in model.parameters())
  print(f"diffusers {diffusers.__version__}: {count:,} parameters, torch {torch.__version__} "
        f"on {device} ({torch.get_num_threads()} threads), "
        f"{'autocast bfloat16' if args.dtype == 'bfloat16' else 'float32'}")

  def forward():
    model.eval()
    with torch.no_grad(), autocast():
      return model(x, t).sample

  def step():
    # L_simple: integer steps n uniform over 0 .. T - 1, x_t from the scheduler, eps-MSE.
    model.train()
    n = torch.randint(0, T, (x.shape[0],), device=device)
    eps = torch.randn_like(x)
    with autocast():
      loss = torch.nn.functional.mse_loss(model(scheduler.add_noise(x, eps, n), n).sample.float(),
                                          eps)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss

  return {"forward": (forward, sync), "train step": (step, sync)}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--batch", type=int, default=8, help="batch size B of [B, 32, 32, 3]")
  parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                      help="compute dtype (parameters stay float32)")
  parser.add_argument("--repeats", type=int, default=5, help="timed calls; the median is printed")
  parser.add_argument("--peer", action=argparse.BooleanOptionalAction, default=True,
                      help="also time diffusers (--no-peer: jaxdiff only)")
  parser.add_argument("--xla-defaults", action="store_true",
                      help="also time jaxdiff compiled without jaxdiff's compiler options")
  args = parser.parse_args()
  x0 = jax.random.uniform(jax.random.PRNGKey(2), (args.batch, 32, 32, 3), minval=-1, maxval=1)

  calls = {"jaxdiff": jaxdiff_calls(args, x0, compiler_options())}
  if args.xla_defaults:
    calls["jaxdiff, XLA defaults"] = jaxdiff_calls(args, x0, {})
  if args.peer:
    try:
      calls["diffusers"] = diffusers_calls(args, x0)
    except ImportError as error:
      print(f"diffusers: skipped ({error})")
  seconds = {what: median_seconds({name: c[what] for name, c in calls.items()}, args.repeats)
             for what in ("forward", "train step")}
  print(f"batch {args.batch}, {args.dtype}, median of {args.repeats} (load average "
        f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs):")
  for what, s in seconds.items():
    print(f"  {what}: " + ", ".join(f"{name} {s[name]:.3f} s ({args.batch / s[name]:.1f} images/s)"
                                    for name in s))
    for other in s:
      if other != "jaxdiff":
        print(f"    ratio jaxdiff / {other} images/s = {s[other] / s['jaxdiff']:.2f}")


if __name__ == "__main__":
  main()
