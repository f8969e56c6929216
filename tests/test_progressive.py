"""Progressive distillation's math (`jaxdiff.progressive`): the nested grids, the two-step
target against the zoo's DDIM sampler, and the loss on exact teachers. Its train.py runs,
refusals and default sampler are in test_distillation.py (they share its teacher run)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff import progressive, samplers
from jaxdiff.train import step

from conftest import PROCESSES, toy_denoise_fn


@pytest.mark.parametrize("name", ["edm", "vp", "ddpm", "flow"])
def test_the_default_grids_nest_and_a_grid_ending_at_zero_is_refused(name):
  """On each process's default grid (ending at t_min) the 2N-step grid's even points are the
  N-step grid; ending at 0 they are not (the N points before 0 are not every other one of
  the 2N), and the objective refuses it before anything is traced."""
  process = PROCESSES[name]
  for n in (1, 2, 3, 8):
    student, teacher = progressive.grid(process, n), progressive.grid(process, 2 * n)
    assert student.shape == (n + 1,) and teacher.shape == (2 * n + 1,)
    np.testing.assert_allclose(teacher[::2], student, rtol=1e-5)
    assert student[-1] == pytest.approx(process.t_min)
  with pytest.raises(ValueError, match="does not nest: the 4-step grid's even points"):
    step.ProgressiveDistillation(process, 2, grid_options={"end": "zero"})


@pytest.mark.parametrize("name", ["vp", "edm"])
def test_the_target_is_two_ddim_steps_of_the_teacher_undone_by_one(name):
  """Per example (its own step n), the teacher's two steps t -> t' -> t'' are those of the
  zoo's DDIM sampler on the grid [t, t', t'']; the target is (x~'' - (s''/s) x~_t) / (1 -
  s''/s) by hand; and one DDIM step of the zoo from t to t'' whose x0 prediction is that
  target lands on the teacher's x_t''."""
  process, n_steps = PROCESSES[name], 3
  student_grid, teacher_grid = (progressive.grid(process, k) for k in (n_steps, 2 * n_steps))
  n = jnp.array([0, 1, 2, 1])
  x = 2.0 * jax.random.normal(jax.random.PRNGKey(0), (4, 2))
  t, t_mid, t_next = (jnp.asarray(g)[i] for g, i in ((student_grid, n),
                                                      (teacher_grid, 2 * n + 1),
                                                      (student_grid, n + 1)))
  x0_target = progressive.target(toy_denoise_fn, process, x, t, t_mid, t_next)
  key = jax.random.PRNGKey(1)
  for b in range(4):
    grid = jnp.stack([t[b], t_mid[b], t_next[b]])
    x_next, _ = samplers.ddim(toy_denoise_fn, process, x[b:b + 1], key, grid, prediction="x0")
    s, s_next = (float(process.noise_to_signal(u)) for u in (t[b], t_next[b]))
    by_hand = ((x_next / process.alpha(t_next[b]) - s_next / s * x[b:b + 1] / process.alpha(t[b]))
               / (1 - s_next / s))
    np.testing.assert_allclose(x0_target[b:b + 1], by_hand, rtol=1e-4, atol=1e-5)
    one_step, _ = samplers.ddim(lambda *_, b=b: x0_target[b:b + 1], process, x[b:b + 1], key,
                                grid[::2], prediction="x0")
    np.testing.assert_allclose(one_step, x_next, rtol=1e-4, atol=1e-5)


def test_the_target_at_a_grid_ending_at_zero_is_the_teachers_x0():
  """Where s'' = 0 (the 1-step grid [t_max, 0], nested in [t_max, t_min, 0]) the target is
  the teacher's x0 prediction at t' (alg. 2's last step), finite."""
  process = PROCESSES["vp"]
  student_grid = progressive.grid(process, 1, options={"end": "zero"})
  teacher_grid = progressive.grid(process, 2, options={"end": "zero"})
  np.testing.assert_allclose(teacher_grid[::2], student_grid)
  x = jax.random.normal(jax.random.PRNGKey(0), (3, 2))
  t, t_mid, t_next = (jnp.full((3,), g) for g in (student_grid[0], teacher_grid[1], 0.0))
  x_mid, _ = samplers.ddim(toy_denoise_fn, process, x, None, teacher_grid[:2], prediction="x0")
  np.testing.assert_allclose(progressive.target(toy_denoise_fn, process, x, t, t_mid, t_next),
                             toy_denoise_fn(x_mid, t_mid, None), rtol=1e-6)


def test_the_loss_on_gaussian_data_against_its_closed_form():
  """Gaussian data N(mu, c^2): the exact denoiser is D = mu + c^2 / (c^2 + s^2) (x~ - mu), and
  a DDIM step scales x~ - mu by (c^2 + s s') / (c^2 + s^2), so two of them by k, the target
  is mu + (k - s''/s) / (1 - s''/s) (x~ - mu) and the loss of the student D itself is
  w ((k - s''/s) / (1 - s''/s) - c^2 / (c^2 + s^2))^2 mean (s eps)^2 with w = max(1 / s^2, 1).
  At c = 0 (data at one point) DDIM is exact and the loss is zero."""
  process, mu = PROCESSES["edm"], jnp.array([0.3, -0.5])
  student_grid, teacher_grid = progressive.grid(process, 4), progressive.grid(process, 8)
  x0 = jnp.broadcast_to(mu, (4, 2))
  n, eps = jnp.arange(4), jax.random.normal(jax.random.PRNGKey(0), (4, 2))
  s, s_mid, s_next = (np.asarray(process.noise_to_signal(jnp.asarray(g)[i]), np.float64)
                      for g, i in ((student_grid, n), (teacher_grid, 2 * n + 1),
                                   (student_grid, n + 1)))
  for c in (0.0, 0.5):

    def x0_fn(x, t, cond, c=c):
      del cond
      s2 = process.noise_to_signal(t)[:, None] ** 2
      return mu + c**2 / (c**2 + s2) * (x / process.alpha(t)[:, None] - mu)

    loss, weight = progressive.progressive_loss(x0_fn, x0_fn, process, x0, n, eps,
                                                student_grid, teacher_grid)
    k = (c**2 + s * s_mid) / (c**2 + s**2) * (c**2 + s_mid * s_next) / (c**2 + s_mid**2)
    gain = (k - s_next / s) / (1 - s_next / s) - c**2 / (c**2 + s**2)
    w = np.maximum(1 / s**2, 1.0)
    np.testing.assert_allclose(weight, w, rtol=1e-5)
    expected = w * gain**2 * s**2 * np.mean(np.square(np.asarray(eps, np.float64)), axis=1)
    np.testing.assert_allclose(loss, expected, rtol=2e-3, atol=1e-9)
    assert c == 0.0 or np.all(expected > 1e-5)  # The test can fail: DDIM is inexact here.
