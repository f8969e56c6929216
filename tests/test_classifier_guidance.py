"""Classifier guidance: the exact identity on the Gaussian-mixture oracle, a trained noisy
classifier against the Bayes classifier, guided sampling, and input errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdiff import classifier_guidance, grids, oracle, parameterization, samplers, schedules, sde
from jaxdiff.models.classifier import NoisyClassifier

# Per process, times spanning little to much noise (sigma from about 0.05 to 10 or 20).
PROCESSES = {
    "vp": (schedules.VP(), [0.05, 0.2, 0.4, 0.7]),
    "ve": (schedules.VE(), [0.2, 0.4, 0.6, 0.8]),
    "edm": (schedules.EDM(), [0.05, 0.4, 2.0, 20.0]),
}


def mixture():
  return oracle.GaussianMixture(weights=[0.2, 0.5, 0.3],
                                means=[[0.5, 0.0], [-0.5, 0.5], [0.0, -0.6]],
                                stds=[0.1, 0.2, 0.05])


def exact_log_prob_fn(mix, process):
  """log p(y | x_t) [B] of the oracle, the components being the classes."""
  return lambda x, t, y: jnp.take_along_axis(
      mix.class_log_prob(process, x, t), y[:, None], axis=-1)[:, 0]


def noisy_points(mix, process, t, key):
  """x_t [B, D] from the mixture's marginal at the times t [B]."""
  key_x0, key_eps = jax.random.split(key)
  x0 = mix.sample(key_x0, t.shape[0])
  return sde.q_sample(process, x0, t, jax.random.normal(key_eps, x0.shape))


@pytest.mark.parametrize("prediction", parameterization.PREDICTIONS)
@pytest.mark.parametrize("name", sorted(PROCESSES))
def test_exact_classifier_guidance_gives_the_conditional_oracle(name, prediction):
  # grad log p_t(x | k) = grad log p_t(x) + grad log p(k | x_t): at scale 1 the guided
  # mixture denoiser is component k's own denoiser; at scale s, as every prediction is
  # affine in the score, it is u + s (c - u) with u unguided and c conditional.
  process, times = PROCESSES[name]
  mix = mixture()
  t = jnp.tile(jnp.asarray(times), 3)  # [12]: each time at each scale.
  scale = jnp.repeat(jnp.array([0.0, 1.0, 2.5]), len(times))
  y = jnp.arange(t.shape[0]) % 3
  x = noisy_points(mix, process, t, jax.random.PRNGKey(0))
  unguided = np.asarray(mix.denoise_fn(process, prediction)(x, t), np.float64)
  components = [oracle.GaussianMixture([1.0], mix.means[k:k + 1], mix.stds[k:k + 1])
                for k in range(3)]
  conditional = np.stack([np.asarray(c.denoise_fn(process, prediction)(x, t), np.float64)
                          for c in components])[np.asarray(y), np.arange(t.shape[0])]
  assert np.abs(conditional - unguided).max() > 0.1  # Guidance has something to change.

  guide = lambda s: classifier_guidance.classifier_guided_denoise_fn(
      mix.denoise_fn(process, prediction), process, exact_log_prob_fn(mix, process), s,
      prediction=prediction)(x, t, y)
  expected = unguided + np.asarray(scale)[:, None] * (conditional - unguided)
  np.testing.assert_allclose(guide(scale), expected, rtol=2e-5, atol=2e-5)
  np.testing.assert_allclose(guide(1.0), conditional, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(guide(0.0), unguided, rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def ring_classifier():
  """A NoisyClassifier trained on a 4-mode ring under VP, with its mixture and process."""
  mix, process = oracle.ring(4), schedules.VP()
  x0 = mix.sample(jax.random.PRNGKey(5), 2048)
  model = NoisyClassifier(num_classes=4, channels=(64, 64), features=64)
  params = classifier_guidance.train_classifier(
      model, process, x0, mix.assign(x0), steps=300, batch_size=128, learning_rate=3e-3, seed=0,
      progress=False)
  return mix, process, model, params


def test_trained_classifier_is_near_the_bayes_classifier(ring_classifier):
  mix, process, model, params = ring_classifier

  @jax.jit  # One compilation rather than one per operation.
  def accuracies(key):
    """(Bayes, trained) accuracy on the same fresh x_t."""
    n = 4000
    key_x0, key_eps = jax.random.split(key)
    x0 = mix.sample(key_x0, n)
    labels = mix.assign(x0)
    t = jnp.full((n,), 0.15)  # sigma = 0.46 against a ring of radius 0.7: the modes overlap.
    x_t = sde.q_sample(process, x0, t, jax.random.normal(key_eps, x0.shape))
    accuracy = lambda log_prob: jnp.mean(jnp.argmax(log_prob, -1) == labels)
    return (accuracy(mix.class_log_prob(process, x_t, t)),
            accuracy(model.apply({"params": params}, x_t,
                                 classifier_guidance.noise_level(process, t))))

  bayes, trained = map(float, accuracies(jax.random.PRNGKey(1)))
  assert 0.5 < bayes < 0.9  # A level where classifying is neither trivial nor hopeless.
  assert abs(trained - bayes) < 0.05, (trained, bayes)


def test_trained_classifier_guides_sampling_to_the_requested_class(ring_classifier):
  mix, process, model, params = ring_classifier
  log_prob_fn = classifier_guidance.classifier_log_prob_fn(model, params, process)
  B = 256
  x_T = process.prior_std() * jax.random.normal(jax.random.PRNGKey(2), (B, 2))
  y = jnp.arange(B) % 4
  grid = grids.time_uniform(process.t_max, process.t_min, 25)

  @jax.jit
  def sample(scale):
    fn = classifier_guidance.classifier_guided_denoise_fn(
        mix.denoise_fn(process, "eps"), process, log_prob_fn, scale, prediction="eps")
    return samplers.ddim(fn, process, x_T, jax.random.PRNGKey(3), grid, cond=y, eta=1.0)[0]

  hit = lambda scale: float(jnp.mean(mix.assign(sample(scale)) == y))
  unguided, guided = hit(0.0), hit(2.0)
  assert 0.15 < unguided < 0.35, unguided  # 1/4 without guidance, std 0.03 at B = 256.
  assert guided > 0.9, guided


def test_noisy_classifier_on_images_and_training_is_seeded():
  model = NoisyClassifier(num_classes=3, channels=(4,), features=8)
  images = jax.random.uniform(jax.random.PRNGKey(0), (6, 4, 4, 1), minval=-1, maxval=1)
  labels = np.array([0, 1, 2, 0, 1, 2])
  train = lambda seed: classifier_guidance.train_classifier(
      model, schedules.VP(), images, labels, steps=2, batch_size=4, learning_rate=1e-2,
      seed=seed, progress=False)
  first, again, other = train(0), train(0), train(1)  # One compilation for the three.
  jax.tree.map(np.testing.assert_array_equal, first, again)
  assert not np.allclose(first["logits"]["kernel"], other["logits"]["kernel"])
  level = classifier_guidance.noise_level(schedules.VP(), jnp.array([0.1, 0.9]))
  logits = jax.jit(model.apply)({"params": first}, jnp.stack([images[0], images[0]]), level)
  assert logits.shape == (2, 3)
  assert np.abs(logits[0] - logits[1]).max() > 1e-4  # The time enters.


def test_bad_inputs_raise_clear_errors():
  mix, process = mixture(), schedules.VP()
  x, t = jnp.zeros((4, 2)), jnp.full((4,), 0.3)
  guided = classifier_guidance.classifier_guided_denoise_fn(
      mix.denoise_fn(process), process, exact_log_prob_fn(mix, process), 1.0, prediction="eps")
  with pytest.raises(ValueError, match="cond=None"):
    guided(x, t, None)
  for cond in (jnp.zeros((4, 1), jnp.int32), jnp.zeros((3,), jnp.int32), jnp.zeros((4,))):
    with pytest.raises(ValueError, match="int labels of shape"):
      guided(x, t, cond)
  bad_shape = classifier_guidance.classifier_guided_denoise_fn(
      mix.denoise_fn(process), process, lambda x, t, y: jnp.zeros((x.shape[0], 1)), 1.0,
      prediction="eps")
  with pytest.raises(ValueError, match="log_prob_fn must return"):
    bad_shape(x, t, jnp.zeros((4,), jnp.int32))
  with pytest.raises(ValueError, match="unknown prediction"):
    classifier_guidance.classifier_guided_denoise_fn(
        mix.denoise_fn(process), process, exact_log_prob_fn(mix, process), 1.0, prediction="eps0")

  model = NoisyClassifier(num_classes=3, channels=(4, 4), features=8)
  for shape in ((2, 4, 4), (2, 6, 6, 1)):  # No channel axis; 6 is not divisible by 2^2.
    with pytest.raises(ValueError, match="NoisyClassifier takes points"):
      model.init(jax.random.PRNGKey(0), jnp.zeros(shape), jnp.zeros(2))
  train = lambda labels: classifier_guidance.train_classifier(
      model, process, jnp.zeros((4, 2)), labels, steps=1, batch_size=2, learning_rate=1e-3,
      seed=0, progress=False)
  for labels, message in ((np.zeros(3, np.int32), "labels must be integers of shape"),
                          (np.zeros(4), "labels must be integers of shape"),
                          (np.array([0, 1, 2, 3]), r"labels must lie in \[0, 3\)")):
    with pytest.raises(ValueError, match=message):
      train(labels)


@pytest.mark.parametrize("name", ["vp", "edm"])
def test_classifier_noise_covers_every_level_a_sampler_visits(name):
  """Log-SNR uniform between the process's ends: EDM's sigma_max = 80 is drawn as often as
  any other level (its diffusion loss's log-normal sigma reaches it about once in 10^4)."""
  process = schedules.make_process(name)
  t, eps = jax.jit(lambda key: classifier_guidance.classifier_noise(process, (20000, 3), key))(
      jax.random.PRNGKey(0))
  lam = np.asarray(process.log_snr(t))
  lam_low, lam_high = float(process.log_snr(process.t_max)), float(process.log_snr(process.t_min))
  assert eps.shape == (20000, 3) and lam.min() >= lam_low - 1e-3 and lam.max() <= lam_high + 1e-3
  # Each tenth of the interval holds a tenth of the draws (binomial std 0.002).
  counts = np.histogram(lam, bins=10, range=(lam_low, lam_high))[0] / lam.size
  np.testing.assert_allclose(counts, 0.1, atol=0.01)
