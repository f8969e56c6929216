"""Keeping XLA:CPU's temporaries mapped between calls of the train step.

  host_memory.keep_cpu_temporaries()  # before JAX's backends start

XLA:CPU gives each call of a compiled program one block for its temporaries:
117 MB for the digits default's train step. glibc's malloc serves a block above
32 MiB with a fresh mmap and gives it back to the kernel when it is freed, so
every step faults the block back in, 4 KiB at a time: about 30,000 page faults
a step, and 24-31 s of system CPU time in 400 steps of `train.py` on this
project's 2-core machines. Raising glibc's limits alone does not help, because
JAX runs a call on a worker thread (asynchronous dispatch), and a thread's
malloc arena cannot hold a block this large.

`keep_cpu_temporaries` therefore runs single-device CPU calls on the calling
thread (`jax_cpu_enable_async_dispatch` off: that thread would only wait for
the call anyway) and has glibc serve large blocks from the main heap and never
shrink it (`mallopt`: M_MMAP_MAX 0, M_TRIM_THRESHOLD at its maximum). The next
step then reuses the same memory: 400 steps fault 0.3 million pages instead of
12 million, with 1.3-1.6 s of system CPU time, and trained in 73-92 s against
83-104 s (five alternating pairs of `train.py --config.num_steps 400`, each
faster, by 5-26%; the same losses, bit for bit; README, "Training speed"). The
process keeps its peak heap for its lifetime, which is what a training process
does anyway.

Only programs call this (train.py, study.py, whose training studies run the same
loop, and the training benchmark), never the library: it changes the process,
not a computation. sample.py does not: its few large calls, each a whole
sampler, ran as fast either way (13.7-14.2 s for 1000 digits in three pairs).
It does nothing off glibc, and the heap settings only apply when the default
backend is the CPU; multi-device and multi-process computations stay
asynchronous (JAX dispatches them so in any case).
"""

import ctypes
import platform

import jax

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"
# glibc's malloc.h.
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
INT_MAX = 2**31 - 1


def keep_cpu_temporaries() -> bool:
  """Sets the above up; True when it applied. Call it before anything uses JAX's
  backends (after jax.distributed.initialize, which must come first too)."""
  if not GLIBC:
    return False
  jax.config.update("jax_cpu_enable_async_dispatch", False)
  if jax.default_backend() != "cpu":
    return False
  libc = ctypes.CDLL(None)
  return bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, INT_MAX))
