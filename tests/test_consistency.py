"""Consistency models' math (`jaxdiff.consistency`) against the papers' formulas and the
sampler zoo: the boundary condition, the discretization, iCT's curriculum, noise
distribution and distance, the teacher's ODE step, the loss, ECT's levels and loss; and
the objectives in the train step."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy.special import erf

from jaxdiff import consistency, grids, parameterization, samplers, schedules
from jaxdiff.train import step

from conftest import PROCESSES, toy_denoise_fn


def raw_network(x, c_noise, cond):
  """A stand-in F(x_in, c_noise, cond) whose output depends on both inputs."""
  del cond
  return jnp.sin(3.0 * x) + 0.2 * c_noise[:, None]


@pytest.mark.parametrize("name", ["edm", "vp", "flow"])
def test_boundary_condition_is_the_identity(name):
  """f(x, t_min) = x / alpha(t_min): c_skip = 1 and c_out = 0 at s_min (CM, eq. 5); away
  from it the output depends on the network."""
  process = PROCESSES[name]
  f = consistency.preconditioned(raw_network, process)
  x = jax.random.normal(jax.random.PRNGKey(0), (4, 3))
  at_min = f(x, jnp.full((4,), process.t_min), None)
  np.testing.assert_allclose(at_min, x / process.alpha(process.t_min), rtol=1e-6, atol=1e-7)
  if name == "edm":  # s = t exactly: the identity holds bit for bit.
    np.testing.assert_array_equal(at_min, x)
  t = jnp.full((4,), 0.5 * (process.t_min + process.t_max))
  assert float(jnp.max(jnp.abs(f(x, t, None) - x / process.alpha(t)[:, None]))) > 1e-2


def test_skip_and_out_match_the_paper_for_edm():
  """c_skip = sd^2 / ((sigma - eps)^2 + sd^2), c_out = sd (sigma - eps) / sqrt(sd^2 +
  sigma^2) at sigma_data 0.5, eps 0.002 (CM, app. C)."""
  sigma = np.array([0.002, 0.1, 1.0, 80.0])
  c_skip, c_out = consistency.skip_and_out(jnp.asarray(sigma), 0.002)
  np.testing.assert_allclose(c_skip, 0.25 / ((sigma - 0.002) ** 2 + 0.25), rtol=1e-6)
  np.testing.assert_allclose(c_out, 0.5 * (sigma - 0.002) / np.sqrt(0.25 + sigma**2), rtol=1e-6)


@pytest.mark.parametrize("name", ["edm", "vp"])
def test_levels_are_karras_discretization(name):
  """The N levels are Karras et al.'s eq. 5 from s_min to s_max: grids.karras's N - 1
  steps ending at t_min, read backwards."""
  process = PROCESSES[name]
  levels = consistency.level(process, jnp.arange(18), 18)
  times = grids.karras(process, 17, end="t_min")[::-1]
  np.testing.assert_allclose(levels, process.noise_to_signal(times), rtol=2e-5)
  np.testing.assert_allclose(consistency.time_of(process, levels), times, rtol=1e-4)


def test_ict_curriculum():
  """N(k) = min(s0 2^floor(k / K'), s1) + 1, K' = floor(K / (log2 floor(s1 / s0) + 1))
  (iCT, eq. 9): with K = 800, s0 = 10, s1 = 1280, K' = 100."""
  k = jnp.array([0, 99, 100, 250, 699, 700, 799])
  expected = [11, 11, 21, 41, 641, 1281, 1281]
  np.testing.assert_array_equal(consistency.ict_num_scales(k, 800), expected)
  assert [int(consistency.ict_num_scales(k, 30, (2, 8))) for k in (0, 9, 10, 20, 29)] == \
      [3, 3, 5, 9, 9]  # K' = floor(30 / 3) = 10.


def test_lognormal_index_distribution():
  """p(i) is proportional to erf((ln s_{i+1} - P_mean) / (sqrt 2 P_std)) - erf((ln s_i -
  P_mean) / (sqrt 2 P_std)) over the first N levels, zero beyond (iCT, eq. 10)."""
  process = PROCESSES["edm"]
  levels = consistency.level(process, jnp.arange(41), 21)  # The last 20 lie past s_max.
  probs = jax.nn.softmax(consistency.lognormal_logits(levels, 21))
  s = np.asarray(levels[:21], np.float64)
  cdf = erf((np.log(s) + 1.1) / (math.sqrt(2) * 2.0))
  np.testing.assert_allclose(probs[:20], np.diff(cdf) / np.sum(np.diff(cdf)), rtol=1e-4)
  np.testing.assert_array_equal(probs[20:], 0.0)


def test_pseudo_huber_and_l2():
  """sqrt(||x - y||^2 + c^2) - c with c = 0.00054 sqrt(d): about 0.03 for CIFAR-10's d =
  3072 (iCT, sec. 3.3); l2 is the mean square."""
  x, y = jax.random.normal(jax.random.PRNGKey(1), (2, 3, 4, 4, 2))
  d = 32
  c = 0.00054 * math.sqrt(d)
  sq = np.sum((np.asarray(x) - np.asarray(y)).reshape(3, -1) ** 2, axis=1)
  np.testing.assert_allclose(consistency.pseudo_huber(x, y), np.sqrt(sq + c**2) - c, rtol=1e-5)
  np.testing.assert_allclose(consistency.squared_l2(x, y), sq / d, rtol=1e-5)
  assert abs(0.00054 * math.sqrt(3072) - 0.03) < 1e-3
  with pytest.raises(ValueError, match="distance must be one of"):
    consistency.distance("lpips", x, y)


@pytest.mark.parametrize("solver,sampler,name", [("euler", "ddim", "vp"),
                                                  ("euler", "ddim", "edm"),
                                                  ("heun", "edm_heun", "edm"),
                                                  ("heun", "edm_heun", "vp")])
def test_teacher_step_is_the_zoos_step(solver, sampler, name):
  """One teacher step from t to t_next per example equals the zoo's sampler on the grid
  [t, t_next] (DDIM is Euler in the scaled variable; edm_heun is Karras's Heun), row by
  row at different times."""
  process = PROCESSES[name]
  x = jax.random.normal(jax.random.PRNGKey(2), (3, 2))
  t = jnp.array([0.8, 0.5, 0.3]) * process.t_max
  t_next = t * jnp.array([0.7, 0.5, 0.9])
  x0_fn = parameterization.x0_eps_fn(toy_denoise_fn, process, "eps")

  def x0_only(x_t, t_vec, cond):
    return x0_fn(x_t, t_vec, cond)[0]

  ours = consistency.teacher_step(x0_only, process, x, t, t_next, solver)
  for b in range(3):
    zoo, info = samplers.get_sampler(sampler)(toy_denoise_fn, process, x[b:b + 1], None,
                                              jnp.array([t[b], t_next[b]]))
    assert int(info["nfe"]) == (1 if solver == "euler" else 2)
    np.testing.assert_allclose(ours[b:b + 1], zoo, rtol=2e-5, atol=2e-6)


def test_consistency_loss_by_hand():
  """Training: lambda d(f(x0 + s_{i+1} z, s_{i+1}), f(x0 + s_i z, s_i)) with lambda =
  1 / (s_{i+1} - s_i); distillation: the target's input is the teacher's step and lambda 1."""
  process = PROCESSES["edm"]
  f = consistency.preconditioned(raw_network, process)
  x0, z = jax.random.normal(jax.random.PRNGKey(3), (2, 4, 6))
  i, n = jnp.array([0, 2, 5, 9]), 11
  s = np.asarray(consistency.level(process, jnp.arange(n), n))
  s_i, s_next = jnp.asarray(s[i]), jnp.asarray(s[i + 1])
  loss, weight = consistency.consistency_loss(f, f, process, x0, i, n, z, "l2")
  want = (np.mean((f(x0 + s_next[:, None] * z, s_next, None)
                   - f(x0 + s_i[:, None] * z, s_i, None)) ** 2, axis=1) / (s[i + 1] - s[i]))
  np.testing.assert_allclose(weight, 1.0 / (s[i + 1] - s[i]), rtol=1e-5)
  np.testing.assert_allclose(loss, want, rtol=1e-4)

  teacher = lambda x, t, cond: 0.5 * x  # noqa: E731  An x0 prediction.
  loss, weight = consistency.consistency_loss(f, f, process, x0, i, n, z, "l2",
                                              teacher_x0_fn=teacher, solver="euler")
  x_next = x0 + s_next[:, None] * z
  # Euler on dx/ds = (x - 0.5 x) / s from s_{i+1} to s_i: x (1 + 0.5 (s_i - s_{i+1}) / s_{i+1}).
  x_i = x_next * (1 + 0.5 * (s_i - s_next) / s_next)[:, None]
  want = np.mean((f(x_next, s_next, None) - f(x_i, s_i, None)) ** 2, axis=1)
  np.testing.assert_array_equal(weight, 1.0)
  np.testing.assert_allclose(loss, want, rtol=1e-4)


def test_consistency_objective_in_the_train_step():
  """The objective's draws follow the curriculum at the state's step (N(k) in the step's
  metrics, indices below N - 1), and its gradient is the student's alone: that of the loss
  with the target's parameters held fixed (the target is not differentiated)."""
  from jaxdiff import models
  from jaxdiff.train import state as train_state

  process = PROCESSES["edm"]
  objective = step.ConsistencyTraining(process, curriculum_steps=16, scales=(2, 8))
  model = models.make_model("mlp", dim=2, features=32, num_blocks=1, time_scale=1.0)
  noise = objective.draw_noise(model, (512, 2), jax.random.PRNGKey(0), 12)
  i, num_scales, z = noise
  assert int(num_scales[0]) == 9 and int(jnp.max(i)) <= 7 and int(jnp.min(i)) >= 0
  x = jax.random.normal(jax.random.PRNGKey(1), (512, 2)) * 0.3 + 0.5
  params = objective.init(model, jax.random.PRNGKey(2), x[:1], None)["params"]

  def objective_loss(p):
    return jnp.mean(objective.train_loss(model, p, {"image": x}, noise, None, False)[0])

  def fixed_target_loss(p):
    student = objective.denoise_fn(models.network_fn(model, p))
    target = objective.denoise_fn(models.network_fn(model, params))
    return jnp.mean(consistency.consistency_loss(student, target, process, x, i, num_scales, z,
                                                 "pseudo_huber")[0])

  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-8),
               jax.grad(objective_loss)(params), jax.grad(fixed_target_loss)(params))

  optimizer = optax.adam(3e-3)
  state = train_state.create(params, optimizer, (), jax.random.PRNGKey(3))
  train = jax.jit(step.make_train_step(model, objective, optimizer, lambda s: 3e-3, ()))
  batches = {"image": jnp.broadcast_to(x[:64], (2, 64, 2))}
  for _ in range(8):
    state, metrics = train(state, batches)
  assert np.all(np.isfinite(metrics["loss"]))
  np.testing.assert_array_equal(metrics["num_scales"],
                                consistency.ict_num_scales(jnp.arange(14, 16), 16, (2, 8)))


@pytest.mark.parametrize("name", ["edm", "vp"])
def test_ect_levels_follow_their_mapping(name):
  """ECT's eq. 18: s = exp(P_mean + P_std n) within [s_min, s_max], r = s (1 - (1 + k
  sigmoid(-b s)) / q^(stage + 1)) where above s_min; each stage divides the gap s - r by q
  (while r > s_min); s_min <= r < s but at s = s_min."""
  process = PROCESSES[name]
  s_min, s_max = consistency.boundary_range(process)
  normal = jnp.linspace(-4.0, 4.0, 401)
  q, k, b = 2.0, 8.0, 1.0
  want_s = np.clip(np.exp(-1.1 + 2.0 * np.asarray(normal, np.float64)), s_min, s_max)
  gaps = []
  for stage in range(4):
    s, r = consistency.ect_levels(process, normal, jnp.int32(stage), q, k, b)
    np.testing.assert_allclose(s, want_s, rtol=1e-5)
    want_r = want_s * (1 - (1 + k / (1 + np.exp(b * want_s))) / q ** (stage + 1))
    np.testing.assert_allclose(r, np.maximum(want_r, s_min), rtol=1e-5, atol=1e-7)
    inner = np.asarray(s) > s_min
    assert np.all(np.asarray(r) >= s_min) and np.all(np.asarray(r)[inner] < np.asarray(s)[inner])
    gaps.append((np.asarray(s) - np.asarray(r), want_r > s_min))
  for (gap, free), (next_gap, _) in zip(gaps, gaps[1:]):
    assert free.any()
    np.testing.assert_allclose(gap[free] / next_gap[free], q, rtol=1e-3)
  # At stage 0 (k = 8, q = 2), r = s_min for s <= ln 7: most draws are the denoising loss's.
  s, r = consistency.ect_levels(process, normal, 0, q, k, b)
  assert np.mean(np.asarray(r) == s_min) > 0.5


def test_ect_loss_at_the_boundary_is_the_edm_denoising_loss():
  """Where r = s_min the target is f(x0 + s_min z, t_min) = x0 + s_min z exactly (the
  boundary condition), so ECT's loss is EDM's weighted denoising loss on that target
  (ECT, sec. 3: stage 0 is diffusion pretraining); elsewhere it is the weight times
  d(f(x_s), f(x_r)) with the same z."""
  process = PROCESSES["edm"]
  f = consistency.preconditioned(raw_network, process)
  x0, z = jax.random.normal(jax.random.PRNGKey(4), (2, 5, 6))
  s = jnp.array([0.01, 0.3, 2.0, 40.0, 80.0])
  s_min = jnp.full_like(s, process.t_min)
  weight = parameterization.edm_loss_weight(process, s)
  denoising = np.mean((f(x0 + s[:, None] * z, s, None) - (x0 + s_min[:, None] * z)) ** 2, 1)
  np.testing.assert_allclose(consistency.ect_loss(f, process, x0, s, s_min, z, "l2"),
                             weight * denoising, rtol=1e-5)
  r = 0.5 * s
  want = np.mean((f(x0 + s[:, None] * z, s, None) - f(x0 + r[:, None] * z, r, None)) ** 2, 1)
  np.testing.assert_allclose(consistency.ect_loss(f, process, x0, s, r, z, "l2"),
                             weight * want, rtol=1e-5)


def test_ect_objective_in_the_train_step():
  """The tuning objective draws its levels at the step's stage (the mean relative gap in
  the metrics halves from stage 0 to 1 where no r is clipped) and its gradient is the
  student's alone: that of the loss with the target's parameters held fixed."""
  from jaxdiff import models

  process = PROCESSES["edm"]
  objective = step.ConsistencyTuning(process, stage_steps=4)
  model = models.make_model("mlp", dim=2, features=32, num_blocks=1, time_scale=1.0)
  x = jax.random.normal(jax.random.PRNGKey(1), (512, 2)) * 0.3 + 0.5
  params = objective.init(model, jax.random.PRNGKey(2), x[:1], None)["params"]
  key = jax.random.PRNGKey(0)
  s0, r0, _ = objective.draw_noise(model, x.shape, key, 3)
  s1, r1, z = objective.draw_noise(model, x.shape, key, 4)
  np.testing.assert_array_equal(s0, s1)
  free = np.asarray(r0) > process.t_min
  np.testing.assert_allclose((s0 - r0)[free] / (s1 - r1)[free], 2.0, rtol=1e-4)
  noise = (s1, r1, z)

  def objective_loss(p):
    return jnp.mean(objective.train_loss(model, p, {"image": x}, noise, None, False)[0])

  def fixed_target_loss(p):
    student = objective.denoise_fn(models.network_fn(model, p))
    target = objective.denoise_fn(models.network_fn(model, params))
    weight = parameterization.edm_loss_weight(process, s1)
    return jnp.mean(weight * consistency.consistency_distance(student, target, process, x, s1,
                                                              r1, z, "pseudo_huber"))

  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-8),
               jax.grad(objective_loss)(params), jax.grad(fixed_target_loss)(params))
  metrics = objective.train_loss(model, params, {"image": x}, noise, None, False)[1]
  np.testing.assert_allclose(metrics["relative_gap"], np.mean((s1 - r1) / s1), rtol=1e-6)


def test_distillation_of_the_oracle_lands_on_its_modes():
  """Consistency distillation with the exact denoiser of a two-mode mixture as the teacher
  (EDM process, N = 18, Heun, pseudo-Huber, a target EMA of 0.95): after 800 Adam steps a
  small MLP's one-step samples lie on the modes (87% within 3 stds, 0.70 in the mode of
  weight 0.7); the untrained student's do not."""
  from jaxdiff import models, oracle
  from jaxdiff.train import state as train_state

  process = PROCESSES["edm"]
  std = 0.15
  mixture = oracle.GaussianMixture(np.array([0.3, 0.7]), np.array([[-0.8, 0.4], [0.7, -0.5]]),
                                   np.array([std, std]))
  teacher = mixture.denoise_fn(process, "x0")
  objective = step.ConsistencyDistillation(process, num_scales=18, target_decay=0.95)
  # time_scale 1000: the MLP's sinusoidal embedding sees 1000 c_noise = 250 ln(sigma), the
  # paper's own noise input (at 1 it barely tells the levels apart).
  model = models.make_model("mlp", dim=2, features=64, num_blocks=2, time_scale=1000.0)
  params = objective.init(model, jax.random.PRNGKey(0), jnp.zeros((1, 2)), None)["params"]
  optimizer = optax.adam(1e-3)
  state = train_state.create(params, optimizer, (), jax.random.PRNGKey(1), target=True)
  train = jax.jit(step.make_train_step(model, objective, optimizer, lambda s: 1e-3, (),
                                       teacher_x0=lambda _, x, t, cond: teacher(x, t, cond)))
  data = mixture.sample(jax.random.PRNGKey(2), 800 * 256).reshape(800, 1, 256, 2)

  def one_step_samples(params):
    x_T = process.t_max * jax.random.normal(jax.random.PRNGKey(3), (2000, 2))
    x, _ = samplers.get_sampler("consistency")(
        objective.denoise_fn(models.network_fn(model, params)), process, x_T, None,
        jnp.array([process.t_max, process.t_min]), prediction="x0")
    distance = jnp.linalg.norm(x[:, None, :] - mixture.means[None], axis=-1)  # [2000, 2]
    return np.asarray(jnp.min(distance, axis=1)), np.asarray(jnp.argmin(distance, axis=1))

  near, _ = one_step_samples(params)
  assert np.mean(near < 3 * std) < 0.5
  for k in range(800):
    state, _ = train(state, {"image": data[k]}, jnp.zeros(()))
  near, mode = one_step_samples(state.params)
  assert np.mean(near < 3 * std) > 0.8, np.mean(near < 3 * std)
  assert abs(np.mean(mode == 1) - 0.7) < 0.05, np.mean(mode == 1)
