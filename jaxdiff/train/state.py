"""The train state: one pytree holding everything a step changes.

  step       int32 scalar: optimizer updates done so far.
  params     the network's parameters (float32 master weights).
  ema        {name: params} one exponential moving average per decay, named
             by the decay ("0.9999"), so that several can be kept at once, and
             one power-function EMA per sigma_rel (`phema`), named "phema:0.05",
             and a consistency objective's target EMA, named TARGET_EMA.
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


TARGET_EMA = "target"  # The consistency target's EMA (`step.ConsistencyDistillation`).


def ema_name(decay: float) -> str:
  """The key of an EMA in TrainState.ema: the decay as written, e.g. "0.9999"."""
  return repr(float(decay))


def phema_name(sigma_rel: float) -> str:
  """The key of a power-function EMA in TrainState.ema: "phema:" and the sigma_rel as
  written ("phema:0.05"), apart from every decay's name."""
  return f"phema:{float(sigma_rel)!r}"


def create(params, optimizer, ema_decays, key, phema_sigma_rels=(), target: bool = False
           ) -> TrainState:
  """Step 0: every EMA (and the consistency target's, where `target`) starts at the initial
  parameters (a power-function EMA's first update replaces them: its beta_1 is 0)."""
  names = [*map(ema_name, ema_decays), *map(phema_name, phema_sigma_rels),
           *([TARGET_EMA] if target else [])]
  ema = {name: jax.tree.map(jnp.copy, params) for name in names}
  return TrainState(step=jnp.int32(0), params=params, ema=ema, opt_state=optimizer.init(params),
                    key=key)
