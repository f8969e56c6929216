"""XLA compiler options for jitting the networks.

  compiled = jax.jit(train_step, compiler_options=compiler_options())

On CPU, jaxlib 0.10 hands each convolution to YNNPACK (an `__ynn_fusion`). For
a 3x3 kernel's gradient XLA canonicalises the convolution with the batch as
its contracted feature dimension, only B = 8 wide in the CIFAR-10 U-Net's
train step, and YNNPACK runs it at about 50 GFLOP/s on this project's 2-core
machines, where Eigen's convolution (XLA's other CPU path) runs the same
gradients at 140-240 GFLOP/s. YNNPACK's reductions, on the other hand
(GroupNorm statistics, bias gradients: sums over B, H, W into a channel
vector), are several times faster than XLA's own loop emitter: turning YNNPACK
off altogether gives back most of the gain. So on CPU the options keep YNNPACK
for reductions only. `benchmarks/unet_speed.py --xla-defaults` measures the
difference within one run (docs/training.md, "Training speed"). A DiT-S/2
train step, made of matrix products, is unchanged.

The options are a compile-time choice of kernels, not of the math: the results
agree with the default compilation to float32 rounding (tested). They are left
out (an empty dict) off CPU, when a user's XLA_FLAGS already set the same
option (the user's choice wins), and with a jaxlib that does not know the
option.
"""

import functools
import os

import jax
import jax.numpy as jnp

YNN_FUSION_TYPE = "xla_cpu_experimental_ynn_fusion_type"
CPU_OPTIONS = {YNN_FUSION_TYPE: "LIBRARY_FUSION_TYPE_REDUCE"}


@functools.cache
def _cpu_accepts(options: tuple) -> bool:
  """Whether this jaxlib's CPU compiler takes the options (compiles a tiny sum with them)."""
  try:
    jax.jit(lambda x: jnp.sum(x, axis=0)).lower(jnp.zeros((2, 2))).compile(dict(options))
  except jax.errors.JaxRuntimeError:  # INVALID_ARGUMENT: no such option, or no such value.
    return False
  return True


def compiler_options() -> dict:
  """Options for `jax.jit(..., compiler_options=...)` or `.lower(...).compile(...)` of a
  function that runs a network on JAX's default backend: CPU_OPTIONS on CPU, else {}."""
  if jax.default_backend() != "cpu" or YNN_FUSION_TYPE in os.environ.get("XLA_FLAGS", ""):
    return {}
  return dict(CPU_OPTIONS) if _cpu_accepts(tuple(CPU_OPTIONS.items())) else {}
