"""Sampler overhead: a jitted 20-NFE sampler against 20 jitted network calls.

  python benchmarks/sampler_overhead.py                       # ddim
  python benchmarks/sampler_overhead.py --samplers ddim,ddpm --batch 16

The network is a small convolutional U-Net (flax.linen, ~0.37M parameters) on
[B, 32, 32, 3], the size class of a CIFAR-10 model scaled down so that it runs
on a CPU. Printed, measured in one run (no asserts; see docs/samplers.md):
  * per sampler: wall time of one 20-NFE sampling call divided by the wall time
    of 20 separate jitted network calls on the same batch (goal <= 1.05: the
    scan adds next to nothing to the network's cost);
  * compile time of a 10-step and a 1000-step DDPM: about equal, since the loop
    is a lax.scan whose body is traced and compiled once.
"""

import statistics
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
from absl import app, flags

from jaxdiff import grids, samplers, schedules

_SAMPLERS = flags.DEFINE_list("samplers", ["ddim"], "Registered samplers to time.")
_BATCH = flags.DEFINE_integer("batch", 8, "Batch size B of [B, 32, 32, 3].")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed repeats; the median is printed.")
_NFE = 20


class TinyUNet(nn.Module):
  """Two resolutions (32 and 16), a residual block each, time added per block."""

  width: int = 48

  @nn.compact
  def __call__(self, x, t):  # x [B, 32, 32, 3], t [B]
    freqs = jnp.exp(jnp.linspace(0.0, 6.0, self.width // 2))
    emb = jnp.concatenate([jnp.sin(t[:, None] * freqs), jnp.cos(t[:, None] * freqs)], -1)
    emb = nn.Dense(self.width)(nn.silu(nn.Dense(self.width)(emb)))[:, None, None, :]

    def block(h, channels):
      r = nn.Conv(channels, (3, 3))(nn.silu(nn.GroupNorm(8)(h)))
      r = nn.Conv(channels, (3, 3))(nn.silu(nn.GroupNorm(8)(r + nn.Dense(channels)(emb))))
      return h + r

    h = block(nn.Conv(self.width, (3, 3))(x), self.width)  # [B, 32, 32, width]
    low = nn.Conv(2 * self.width, (3, 3), strides=2)(h)  # [B, 16, 16, 2 width]
    low = block(low, 2 * self.width)
    up = jax.image.resize(low, h.shape[:3] + (low.shape[-1],), "nearest")
    h = block(nn.Conv(self.width, (3, 3))(jnp.concatenate([h, up], -1)), self.width)
    return nn.Conv(3, (3, 3), kernel_init=nn.initializers.zeros)(nn.silu(nn.GroupNorm(8)(h)))


def median_seconds(fn, repeats):
  """Median wall time of fn() (results blocked on), after one warm-up call."""
  jax.block_until_ready(fn())
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def main(argv):
  del argv
  process = schedules.discrete_ddpm("linear", 1000)
  model = TinyUNet()
  x_T = jax.random.normal(jax.random.PRNGKey(0), (_BATCH.value, 32, 32, 3))
  params = model.init(jax.random.PRNGKey(1), x_T, jnp.ones((_BATCH.value,)))
  num_params = sum(p.size for p in jax.tree_util.tree_leaves(params))
  denoise_fn = lambda x, t, cond: model.apply(params, x, t)
  key = jax.random.PRNGKey(2)
  print(f"TinyUNet: {num_params / 1e6:.2f}M parameters, x [{_BATCH.value}, 32, 32, 3], "
        f"{jax.devices()[0]}")

  network = jax.jit(lambda x, t: denoise_fn(x, t, None))
  t = jnp.full((_BATCH.value,), 0.5)
  one_call = median_seconds(lambda: network(x_T, t), 3 * _REPEATS.value)
  twenty_calls = median_seconds(lambda: [network(x_T, t) for _ in range(_NFE)], _REPEATS.value)
  print(f"one network call {1e3 * one_call:.2f} ms; 20 separate calls {1e3 * twenty_calls:.1f} ms")

  for name in _SAMPLERS.value:
    sampler = samplers.get_sampler(name)
    try:
      grid = grids.make_grid(process, "trailing", sampler.num_steps(_NFE))
    except ValueError as error:
      print(f"{name}: skipped ({error})")
      continue
    run = jax.jit(lambda x, k, g, fn=sampler: fn(denoise_fn, process, x, k, g))
    nfe = int(run(x_T, key, grid)[1]["nfe"])
    seconds = median_seconds(lambda: run(x_T, key, grid), _REPEATS.value)
    print(f"{name}: {nfe} NFE in {1e3 * seconds:.1f} ms = {seconds / twenty_calls:.3f} x "
          f"20 network calls ({seconds / (nfe * one_call):.3f} x {nfe} single calls)")

  ddpm = jax.jit(lambda x, k, g: samplers.ddpm(denoise_fn, process, x, k, g))
  compile_s = {}
  for steps in (10, 1000):
    start = time.perf_counter()
    ddpm.lower(x_T, key, grids.make_grid(process, "trailing", steps)).compile()
    compile_s[steps] = time.perf_counter() - start
  print(f"DDPM compile: 10 steps {compile_s[10]:.2f} s, 1000 steps {compile_s[1000]:.2f} s "
        f"(ratio {compile_s[1000] / compile_s[10]:.2f})")
  sys.stdout.flush()


if __name__ == "__main__":
  app.run(main)
