"""How much a denoiser's output depends on its conditioning: a check for dead embeddings.

A network that ignores t (a time embedding never added, zeroed, or scaled to
nothing) still trains: it learns the average denoiser over all noise levels,
its loss stalls a little above a healthy one's, and its samples are blurs. The
loss alone hides it. The diagnostic asks the network directly: at x_t drawn
as in training (t ~ the process's training distribution, x_t = alpha(t) x_0 +
sigma(t) eps), how far does its output move when it is told another time t'
(an independent draw) or another class c' (uniform over the others, the null
class included for a model trained with label dropout)? With f(x_t, t, t', c)
the prediction at (x_t, t) of the network told t':

  time sensitivity  = E ||f(x_t, t, t', c) - f(x_t, t, t, c)||^2 / E ||f(x_t, t, t, c)||^2
  class sensitivity = E ||f(x_t, t, t, c') - f(x_t, t, t, c)||^2 / E ||f(x_t, t, t, c)||^2

Only the network's own time input moves: a preconditioned model (EDM's c_skip,
c_out and c_in depend on t; `train.step.Objective.told_fn`) keeps t there, or
its output would move with t even with the embedding dead. For a plain
denoiser `told` tells it t' as its t.

Both are exactly 0 for an output that ignores the input, and of order 0.1-1
for a healthy model: an eps prediction for an image told the wrong noise level
is largely wrong (so is the exact denoiser of `jaxdiff.oracle`'s; see
tests/test_diagnostics.py). `train.py` computes them at each
picture of samples and warns below DEAD (time) for the first EMA parameters.
"""

import flax
import jax
import jax.numpy as jnp

from jaxdiff import sde
from jaxdiff.schedules import Process

# Below this relative change the output is taken not to depend on t. Measured: 2e-15 for the
# digits default with its time embedding zeroed (`study.py embedding`); after 1500 steps on
# digits 0.076 for the EDM default (the network told another c_noise, c_skip and c_out kept),
# 0.37 for the base config's eps-predicting DDPM; 0.015 for the toy MLP after 20 steps.
DEAD = 1e-3


def _relative_change(f_moved, f):
  return jnp.sum((f_moved - f) ** 2) / jnp.maximum(jnp.sum(f ** 2), jnp.finfo(f.dtype).tiny)


def told(denoise_fn):
  """(x_t, t, t_told, cond) -> denoise_fn(x_t, t_told, cond): a plain denoiser told t_told."""
  return lambda x, t, t_told, cond=None: denoise_fn(x, t_told, cond)


def sensitivity(told_fn, process: Process, x0, key, cond=None, num_classes: int = 0):
  """Time (and class) sensitivity of told_fn on data x0 [B, ...] (see the module docstring).

  Args:
    told_fn: (x_t [B, ...], t [B], t_told [B], cond [B] or None) -> output [B, ...] at
      (x_t, t) with the network told t_told (`told` for a plain denoiser).
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
  f = told_fn(x_t, t, t, cond)
  moved_t = process.sample_train_time(key_moved, (batch,))
  out = {"time": _relative_change(told_fn(x_t, t, moved_t, cond), f),
         "class": jnp.zeros(())}
  if cond is not None:
    # c' = c + a uniform offset in 1..K, modulo K + 1: any label but c, the null class included.
    offset = jax.random.randint(key_class, (batch,), 1, num_classes + 1)
    out["class"] = _relative_change(told_fn(x_t, t, t, (cond + offset) % (num_classes + 1)), f)
  return out


def zero_module(params, module: str):
  """params with every leaf under the submodule named `module` set to 0 ("time_embed": the
  time embedding of every network of jaxdiff.models, "class_embed": the class's)."""
  flat = flax.traverse_util.flatten_dict(params)
  if not any(module in path for path in flat):
    raise ValueError(f"the network has no {module!r} module; its top-level modules: "
                     f"{sorted({path[0] for path in flat})}")
  return flax.traverse_util.unflatten_dict(
      {path: jnp.zeros_like(v) if module in path else v for path, v in flat.items()})
