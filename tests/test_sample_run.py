"""Streamed sampling (jaxdiff.streamed, jaxdiff.train.sample_run) on one device: the running
statistics against the whole-set functions they replace, sample i drawn from (seed, i) alone
whatever the batch, and a run stopped between saves ending bitwise where an uninterrupted one
does. Eight devices and two processes: tests/test_scale.py; sample.py killed and restarted:
tests/test_train.py."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import point_judge, tiny_config
from jaxdiff import evaluation, metrics, streamed
from jaxdiff.models.classifier import Classifier
from jaxdiff.train import experiment, generate, optim, sample_run, sharding


# --------------------------------------------------------------------------
# The statistics: streamed over padded batches == the whole-set functions.
# --------------------------------------------------------------------------


def classifier_reference(rng):
  """An untrained tiny classifier judging 8x8 images against 30 random 'training' images."""
  model = Classifier(num_classes=4, channels=(4,), features=6)
  train_images = rng.uniform(-1, 1, (30, 8, 8, 1)).astype(np.float32)
  params = model.init(jax.random.PRNGKey(0), train_images[:1], train=False)["params"]
  features = evaluation.classify(model, params, train_images)[1]
  mu, sigma = metrics.feature_statistics(features)
  return evaluation.Reference("random train", model, params, features, mu, sigma, train_images,
                              train_images[:25], 0.0, np.linspace(1.0, 2.0, 25))


def test_streamed_statistics_are_those_of_the_whole_set():
  """45 images in batches of 16 (the last padded with 3 rows that must not count): every key
  of evaluation.quality, the Inception Score's 10 parts crossing the batches included."""
  rng = np.random.default_rng(0)
  ref = classifier_reference(rng)
  judge = streamed.Judge.classifier(ref)
  num, batch = 45, 16
  images = rng.uniform(-1, 1, (48, 8, 8, 1)).astype(np.float32)  # 3 rows of padding.
  sums_of = jax.jit(lambda arguments, x, index: streamed.batch_sums(
      judge, arguments, x, index, index < num, num))
  running = streamed.Running(judge, num, keep=num)
  for start in range(0, 48, batch):
    index = jnp.arange(start, start + batch)
    sums, per_sample = sums_of(judge.arguments(), images[start:start + batch], index)
    running.add(jax.device_get(sums), jax.device_get(per_sample), start)
  streamed_quality = running.quality()
  whole = evaluation.quality(images[:num], ref)
  assert set(whole) <= set(streamed_quality)
  for key, value in whole.items():
    if isinstance(value, (str, int, list)):
      assert streamed_quality[key] == value, key
    else:
      # Float32 sums of the centred features (on device) against numpy's float64 statistics
      # of the same float32 features: equal to float32 rounding.
      assert streamed_quality[key] == pytest.approx(value, rel=1e-4, abs=1e-6), key
  probabilities = evaluation.classify(ref.model, ref.params, images[:num])[0]
  # The untrained classifier is nearly uniform: IS 1.0004 +- 1.5e-4 over the parts, the
  # spread carrying the float32 rounding (1e-8) of the sums of p log p near log(1/4).
  np.testing.assert_allclose(running.inception_score(), metrics.inception_score(probabilities),
                             rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("num", [1, 7, 10, 45, 1001])
def test_the_inception_score_parts_are_np_array_split(num):
  parts = np.concatenate([np.full(len(part), i) for i, part in
                          enumerate(np.array_split(np.arange(num), min(10, num)))])
  np.testing.assert_array_equal(streamed.inception_part(jnp.arange(num), num), parts)


# --------------------------------------------------------------------------
# The samples: sample i from (seed, i), whatever the batch; resumed bitwise.
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def toy_model(toy_source):
  """The tiny toy MLP with perturbed initial parameters (its zero output layer would make
  every sample x_T's), and a stochastic sampler's plan: DDPM, 4 steps."""
  built = experiment.Experiment.from_config(tiny_config(), experiment.DataSpec.of(toy_source))
  params = built.init_fn(optim.make_optimizer(built.optimizer, 1))().params
  params = jax.tree.map(lambda p: p + 0.3 * jax.random.normal(jax.random.PRNGKey(1), p.shape),
                        params)
  return built, generate.plan(built, "ddpm", 4), jax.tree.map(np.asarray, params)


def test_sample_i_comes_from_seed_and_i_whatever_the_batch(toy_model):
  built, plan, params = toy_model
  mesh = sharding.make_mesh({"data": 1}, jax.devices()[:1])
  runs = {size: sample_run.run(built, plan, params, sample_run.Job(13, size, 3, save_images=13),
                               mesh, progress=False) for size in (5, 13)}
  # x_T_i = sigma(t_0) N(0, I) from fold_in(fold_in(PRNGKey(seed), i), 0).
  keys = [jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(3), i), 0) for i in range(13)]
  x_T = built.process.sigma(plan.grid[0]) * np.stack([jax.random.normal(k, (2,)) for k in keys])
  for result in runs.values():
    np.testing.assert_allclose(result.x_T, x_T, rtol=1e-6)
    assert result.nfe == 4 and result.sampled == (15 if result is runs[5] else 13)
  np.testing.assert_array_equal(runs[5].x_T, runs[13].x_T)
  # The network on a batch of 5 rows and of 13: XLA's CPU matmuls may order their float32
  # sums by the batch's shape; the DDPM noise of each row is its own key's.
  np.testing.assert_allclose(runs[5].images, runs[13].images, rtol=0,
                             atol=1e-6 * np.abs(runs[13].images).max())
  assert np.abs(runs[13].images - runs[13].x_T).max() > 0.1  # The network moved them.


def test_a_run_stopped_between_saves_continues_to_the_same_statistics(toy_model, tmp_path,
                                                                     monkeypatch):
  built, plan, params = toy_model
  mesh = sharding.make_mesh({"data": 1}, jax.devices()[:1])
  judges = {"points": point_judge(np.random.default_rng(0))}
  job = sample_run.Job(23, 4, 0, save_images=10, keep_features=20, save_every=2)
  step = sample_run.make_step(built, plan, job, mesh, judges)
  run = lambda out, **kw: sample_run.run(built, plan, params, kw.pop("job", job), mesh,
                                         judges=judges, out=out, record={"what": "test"},
                                         progress=False, step_fn=kw.pop("step", step))
  for name in ("whole", "stopped"):  # Claimed by the caller (sample.py: jaxdiff.workdir).
    (tmp_path / name).mkdir()
  whole = run(tmp_path / "whole")

  # Stopped after its second save (batch 4 of 6): what a kill between saves leaves.
  save, saves = sample_run.save_progress, []

  def save_then_stop(*args):
    save(*args)
    saves.append(1)
    if len(saves) == 2:
      raise KeyboardInterrupt

  monkeypatch.setattr(sample_run, "save_progress", save_then_stop)
  with pytest.raises(KeyboardInterrupt):
    run(tmp_path / "stopped")
  monkeypatch.setattr(sample_run, "save_progress", save)
  assert json.loads((tmp_path / "stopped" / sample_run.RECORD).read_text())["batches_done"] == 4
  resumed = run(tmp_path / "stopped")
  assert (resumed.resumed_batches, resumed.sampled) == (4, 8)
  with np.load(tmp_path / "whole" / sample_run.PROGRESS) as a, \
       np.load(tmp_path / "stopped" / sample_run.PROGRESS) as b:
    assert sorted(a) == sorted(b) and "points/sum/feature_outer" in a
    for key in a:
      np.testing.assert_array_equal(a[key], b[key], err_msg=key)
  assert resumed.running["points"].quality() == whole.running["points"].quality()

  # Another run on that folder: refused, naming what differs, the progress kept.
  before = (tmp_path / "stopped" / sample_run.PROGRESS).read_bytes()
  with pytest.raises(ValueError, match=r"holds the progress of another sampling run; it "
                     r"differs in seed: 0 there, 1 here\. Run the same command"):
    run(tmp_path / "stopped", job=sample_run.Job(23, 4, 1, save_images=10, keep_features=20,
                                                 save_every=2), step=None)
  assert (tmp_path / "stopped" / sample_run.PROGRESS).read_bytes() == before


@pytest.mark.parametrize("job, judged, message", [
    (dict(num=0), False, "--num must be a positive integer, got 0"),
    (dict(batch_size=-2), False, "--batch-size must be a positive integer, got -2"),
    (dict(save_every=-1), False, "--save-every must be an integer >= 0, got -1"),
    (dict(seed=2**32), False, r"--seed must be an integer in \[0, 2\*\*32\)"),
    (dict(num=10), True, "judging samples .* needs --num >= 20, got 10"),
    (dict(keep_features=5), True, "judging samples .* needs --keep-features >= 20, got 5"),
])
def test_bad_jobs_are_refused_naming_the_flag(job, judged, message):
  with pytest.raises(ValueError, match=message):
    sample_run.check_judged(sample_run.Job(**{"num": 100, "batch_size": 10, "seed": 0, **job}),
                            {"points": None} if judged else {})
