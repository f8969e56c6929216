"""The conditioning diagnostic: 0 for a network blind to t (or to the class), of order 0.1-1
for the exact denoiser and for a network whose embeddings work."""

import functools

import jax
import jax.numpy as jnp
import pytest

from jaxdiff import diagnostics, models, oracle, schedules
from jaxdiff.models.mlp import MLP
from jaxdiff.train import step

PROCESS = schedules.make_process("ddpm", schedule="cosine")


def test_the_exact_denoiser_depends_on_t_and_a_blind_one_does_not():
  mixture = oracle.ring()
  x0 = mixture.sample(jax.random.PRNGKey(0), 4096)
  exact = mixture.denoise_fn(PROCESS, "eps")
  sensitivity = jax.jit(diagnostics.sensitivity, static_argnums=(0, 1))
  out = sensitivity(diagnostics.told(exact), PROCESS, x0, jax.random.PRNGKey(1))
  assert float(out["time"]) > 0.1 and float(out["class"]) == 0.0
  # The exact denoiser of one fixed noise level, whatever t it is told: blind to t.
  blind = lambda x, t, cond: exact(x, jnp.full_like(t, 0.5), cond)
  assert float(sensitivity(diagnostics.told(blind), PROCESS, x0,
                           jax.random.PRNGKey(1))["time"]) == 0


@pytest.fixture(scope="module")
def conditional_mlp():
  """The toy sets' class-conditional MLP (the U-Net's embeddings, by the same modules) with
  every parameter drawn at random (its zero-initialised output layer would make every output
  0)."""
  model = MLP(dim=2, features=32, num_blocks=2, num_classes=10)

  def init(key):
    key_init, key_draw = jax.random.split(key)
    params = model.init(key_init, jnp.zeros((2, 2)), jnp.zeros(2), jnp.zeros(2, jnp.int32),
                        deterministic=True)["params"]
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(key_draw, len(leaves))
    return jax.tree.unflatten(tree, [0.3 * jax.random.normal(k, p.shape)
                                     for k, p in zip(keys, leaves)])

  return model, jax.jit(init)(jax.random.PRNGKey(0))


def _sensitivity(model, params):
  x0 = jax.random.uniform(jax.random.PRNGKey(2), (64, 2), minval=-1, maxval=1)
  return _jitted_sensitivity(model)(params, x0)


@functools.cache  # One compilation for the three parameter sets.
def _jitted_sensitivity(model):
  def run(params, x0):
    fn = lambda x, t, cond: model.apply({"params": params}, x, t, cond, deterministic=True)
    return diagnostics.sensitivity(diagnostics.told(fn), PROCESS, x0, jax.random.PRNGKey(3), jnp.arange(64) % 10,
                                   num_classes=10)
  jitted = jax.jit(run)
  return lambda params, x0: (float(jitted(params, x0)["time"]), float(jitted(params, x0)["class"]))


def test_a_zeroed_time_or_class_embedding_is_found(conditional_mlp):
  model, params = conditional_mlp
  time, cls = _sensitivity(model, params)
  assert time > 10 * diagnostics.DEAD and cls > 10 * diagnostics.DEAD
  time, cls_kept = _sensitivity(model, diagnostics.zero_module(params, "time_embed"))
  assert time == 0.0 and cls_kept > 10 * diagnostics.DEAD  # The class still acts.
  time_kept, cls = _sensitivity(model, diagnostics.zero_module(params, "class_embed"))
  assert cls == 0.0 and time_kept > 10 * diagnostics.DEAD


def test_a_dead_embedding_under_edm_preconditioning_is_found(conditional_mlp):
  """EDM's c_skip, c_out and c_in depend on t: the preconditioned output moves with t even when
  the network ignores it, so only the network's own time input may be moved."""
  model, params = conditional_mlp
  objective = step.Objective(schedules.make_process("edm"), prediction="x0", target="x0",
                             weighting="edm", preconditioning="edm")
  x0 = jax.random.uniform(jax.random.PRNGKey(2), (64, 2), minval=-1, maxval=1)

  @jax.jit
  def run(params):
    network = models.network_fn(model, params)
    measure = lambda fn: diagnostics.sensitivity(fn, objective.process, x0,
                                                 jax.random.PRNGKey(3))["time"]
    return (measure(objective.told_fn(network)),
            measure(diagnostics.told(objective.denoise_fn(network))))

  healthy, _ = run(params)
  dead, dead_whole_t = run(diagnostics.zero_module(params, "time_embed"))
  assert float(healthy) > 10 * diagnostics.DEAD
  assert float(dead) == 0.0
  assert float(dead_whole_t) > 10 * diagnostics.DEAD  # What telling the whole t would show.


def test_zeroing_a_module_the_network_lacks_is_refused(conditional_mlp):
  _, params = conditional_mlp
  with pytest.raises(ValueError, match="the network has no 'time_embedding' module; its "
                                       r"top-level modules: \["):
    diagnostics.zero_module(params, "time_embedding")
