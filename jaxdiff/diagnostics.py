"""How much a denoiser's output depends on its conditioning: a check for dead embeddings.

A network that ignores t (a time embedding never added, zeroed, or scaled to
nothing) still trains: it learns the average denoiser over all noise levels,
its loss stalls a little above a healthy one's, and its samples are blurs. The
loss alone hides it. The diagnostic asks the network directly: at x_t drawn
as in training (t ~ the process's training distribution, x_t = alpha(t) x_0 +
sigma(t) eps), how far does its output move when it is told another time t'
(an independent draw) or another class c' (uniform over the others, the null
class included for a model trained with label dropout)?

  time sensitivity  = E ||f(x_t, t', c) - f(x_t, t, c)||^2 / E ||f(x_t, t, c)||^2
  class sensitivity = E ||f(x_t, t, c') - f(x_t, t, c)||^2 / E ||f(x_t, t, c)||^2

Both are exactly 0 for an output that ignores the input, and of order 0.1-1
for a healthy model: an eps prediction for an image told the wrong noise level
is largely wrong (so is the exact denoiser of `jaxdiff.oracle`'s; see
tests/test_diagnostics.py). `train.py` computes them at each
picture of samples and warns below DEAD (time) for the first EMA parameters.
"""

import jax
import jax.numpy as jnp

from jaxdiff import sde
from jaxdiff.schedules import Process

# Below this relative change the output is taken not to depend on t. Measured: 0 for a zeroed
# embedding; after 1500 steps on digits 2.55 for the EDM default (x0 through c_skip, c_out),
# 0.37 for the base config's eps-predicting DDPM; 0.015 for the toy MLP after 20 steps.
DEAD = 1e-3


def _relative_change(f_moved, f):
  return jnp.sum((f_moved - f) ** 2) / jnp.maximum(jnp.sum(f ** 2), jnp.finfo(f.dtype).tiny)


def sensitivity(denoise_fn, process: Process, x0, key, cond=None, num_classes: int = 0):
  """Time (and class) sensitivity of denoise_fn on data x0 [B, ...] (see the module docstring).

  Args:
    denoise_fn: (x_t [B, ...], t [B], cond [B] or None) -> output [B, ...].
    process: the forward process (its training distribution of t).
    x0: clean data [B, ...].
    key: PRNG key.
    cond: class labels [B] for a conditional model, else None.
    num_classes: K; labels c' are drawn from the other K classes and the null class K
      (guidance.py's convention). Only used with cond.

  Returns:
    {"time": scalar, "class": scalar (0 without cond)}.
  """
  key_t, key_eps, key_moved, key_class = jax.random.split(key, 4)
  batch = x0.shape[0]
  t = process.sample_train_time(key_t, (batch,))
  x_t = sde.q_sample(process, x0, t, jax.random.normal(key_eps, x0.shape))
  f = denoise_fn(x_t, t, cond)
  moved_t = process.sample_train_time(key_moved, (batch,))
  out = {"time": _relative_change(denoise_fn(x_t, moved_t, cond), f),
         "class": jnp.zeros(())}
  if cond is not None:
    # c' = c + a uniform offset in 1..K, modulo K + 1: any label but c, the null class included.
    offset = jax.random.randint(key_class, (batch,), 1, num_classes + 1)
    out["class"] = _relative_change(denoise_fn(x_t, t, (cond + offset) % (num_classes + 1)), f)
  return out
