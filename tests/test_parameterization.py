"""Every prediction type is an exact re-expression of (x0, eps), for every process."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff import parameterization, schedules, sde

PROCESSES = {
    "ddpm": schedules.discrete_ddpm("cosine", 1000),
    "vp": schedules.VP(),
    "subvp": schedules.SubVP(),
    "ve": schedules.VE(),
    "edm": schedules.EDM(),
    "flow": schedules.FlowMatching(),
}


def _draw(process):
  k0, k1 = jax.random.split(jax.random.PRNGKey(0))
  x0 = jax.random.normal(k0, (5, 4, 4, 3))
  eps = jax.random.normal(k1, (5, 4, 4, 3))
  t = jnp.linspace(0.1, 0.9, 5) * process.t_max
  return x0, eps, t, sde.q_sample(process, x0, t, eps)


@pytest.mark.parametrize("process_name", sorted(PROCESSES))
@pytest.mark.parametrize("prediction", parameterization.PREDICTIONS)
def test_round_trip(process_name, prediction):
  process = PROCESSES[process_name]
  x0, eps, t, x_t = _draw(process)
  output = parameterization.from_x0_eps(process, prediction, x0, eps, t)
  x0_back, eps_back = parameterization.to_x0_eps(process, prediction, output, x_t, t)
  scale = 1e-4 * max(1.0, float(jnp.abs(x_t).max()))
  np.testing.assert_allclose(x0_back, x0, atol=scale)
  np.testing.assert_allclose(eps_back, eps, atol=scale)


def test_named_targets_follow_their_papers():
  vp = schedules.VP()
  x0, eps, t, x_t = _draw(vp)
  a, s = (sde.per_example(c, x0) for c in (vp.alpha(t), vp.sigma(t)))
  # Salimans & Ho 2022: v = alpha eps - sigma x, and x = alpha z - sigma v for VP.
  v = parameterization.from_x0_eps(vp, "v", x0, eps, t)
  np.testing.assert_allclose(v, a * eps - s * x0, atol=1e-6)
  np.testing.assert_allclose(a * x_t - s * v, x0, atol=1e-5)
  np.testing.assert_allclose(parameterization.from_x0_eps(vp, "score", x0, eps, t), -eps / s,
                             rtol=1e-6)
  # Rectified flow: the velocity of x_t = (1 - t) x0 + t eps is eps - x0.
  flow = schedules.FlowMatching()
  np.testing.assert_allclose(parameterization.from_x0_eps(flow, "velocity", x0, eps, t),
                             eps - x0, atol=1e-6)


def test_convert_and_wrapped_denoiser():
  process = schedules.EDM()
  x0, eps, t, x_t = _draw(process)
  v = parameterization.from_x0_eps(process, "v", x0, eps, t)
  score = parameterization.convert(process, v, x_t, t, "v", "score")
  np.testing.assert_allclose(score, -eps / sde.per_example(t, eps), rtol=1e-4, atol=1e-5)
  fn = parameterization.x0_eps_fn(lambda x, t, cond: score, process, "score")
  np.testing.assert_allclose(fn(x_t, t)[0], x0, atol=1e-3)
