"""The train state: one pytree holding everything a step changes.

  step       int32 scalar: optimizer updates done so far.
  params     the network's parameters (float32 master weights).
  ema        {name: params} one exponential moving average per decay, named
             by the decay ("0.9999"), so that several can be kept at once.
  opt_state  the optimizer's state (Adam moments, schedule count).
  key        the run's PRNG key; step n draws from fold_in(key, n), so the
             randomness of a step depends on its number alone (a resumed run
             draws what the uninterrupted one drew).

Hyperparameters live in the config and the optimizer, never here.
"""

from typing import Any

import flax
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  ema: dict
  opt_state: Any
  key: jax.Array


def ema_name(decay: float) -> str:
  """The key of an EMA in TrainState.ema: the decay as written, e.g. "0.9999"."""
  return repr(float(decay))


def create(params, optimizer, ema_decays, key) -> TrainState:
  """Step 0: every EMA starts at the initial parameters."""
  ema = {ema_name(d): jax.tree.map(jnp.copy, params) for d in ema_decays}
  return TrainState(step=jnp.int32(0), params=params, ema=ema, opt_state=optimizer.init(params),
                    key=key)
