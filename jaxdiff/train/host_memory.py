"""Keeping XLA:CPU's temporaries mapped between calls of the train step.

  host_memory.keep_cpu_temporaries()  # before JAX's backends start

XLA:CPU gives each call of a compiled program one block for its temporaries:
117 MB for the digits default's train step. glibc's malloc serves a block above
32 MiB with a fresh mmap and gives it back to the kernel when it is freed, so
every step faults the block back in, 4 KiB at a time: about 30,000 page faults
a step. Raising glibc's limits alone does not help, because
JAX runs a call on a worker thread (asynchronous dispatch), and a thread's
malloc arena cannot hold a block this large.

`keep_cpu_temporaries` therefore runs single-device CPU calls on the calling
thread (`jax_cpu_enable_async_dispatch` off: that thread would only wait for
the call anyway) and has glibc serve large blocks from the main heap and never
shrink it (`mallopt`: M_MMAP_MAX 0, M_TRIM_THRESHOLD at its maximum). The next
step then reuses the same memory, with the same results bit for bit (the
measurements: docs/training.md, "Training speed"). The process keeps its peak
heap for its lifetime, which is what a training process does anyway.

Only programs call this (train.py, study.py, whose training studies run the same
loop, and the training benchmark), never the library: it changes the process,
not a computation. sample.py does not: its few large calls, each a whole
sampler, run as fast either way.
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
