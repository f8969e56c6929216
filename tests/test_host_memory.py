"""host_memory.keep_cpu_temporaries: a compiled program's temporaries stay mapped between
calls, so that once the heap has grown (the first few calls), calls fault no pages in
(glibc only)."""

import os
import platform
import subprocess
import sys

import pytest

# A program with one 64 MiB temporary (the barrier keeps sin(x) from fusing into the sum);
# prints the page faults of five calls after four.
CHILD = """
import resource, sys
import jax, jax.numpy as jnp
from jaxdiff.train import host_memory
if sys.argv[1] == "keep":
  assert host_memory.keep_cpu_temporaries()
f = jax.jit(lambda x: jnp.sum(jax.lax.optimization_barrier(jnp.sin(x)) ** 2))
x = jnp.ones(16 * 2**20)
for _ in range(4):
  jax.block_until_ready(f(x))
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
  jax.block_until_ready(f(x))
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""
PAGES = 5 * 16 * 2**20 * 4 // 4096  # Five calls' temporaries in 4 KiB pages.


def page_faults(mode):
  # glibc's own tunables (GLIBC_TUNABLES) would change the default's page faults.
  env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
  result = subprocess.run([sys.executable, "-c", CHILD, mode], capture_output=True, text=True,
                          check=True, env={**env, "JAX_PLATFORMS": "cpu"})
  return int(result.stdout.split()[-1])


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                    reason="the setting is glibc's malloc")
def test_temporaries_stay_mapped_between_calls():
  assert page_faults("default") > PAGES // 2  # Each call maps its temporaries afresh...
  assert page_faults("keep") < PAGES // 50  # ...unless they are kept.
