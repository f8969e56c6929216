"""Classifier guidance (Dhariwal & Nichol 2021, "Diffusion Models Beat GANs", sec. 4).

By Bayes' rule p_t(x | y) is proportional to p_t(x) p_t(y | x), so
  grad_x log p_t(x | y) = grad_x log p_t(x) + grad_x log p_t(y | x)
(Song et al. 2021, "Score-Based Generative Modeling through SDEs", eq. 14 and
app. I): the score of an unconditional model plus the gradient of a classifier
p_phi(y | x_t, t) trained on noised data gives a conditional model. With
score = -eps / sigma this is Dhariwal & Nichol's eq. 14, used with a scale s
in their Algorithm 2,
  eps_hat = eps - s sigma grad_x log p_phi(y | x_t, t),
equivalently (x_t = alpha x0 + sigma eps) x0_hat = x0 + s sigma^2 / alpha grad.
At each t the guided score is that of p_t(x) p_t(y | x)^s, normalized (their
sec. 4.3), which for s > 1 concentrates on the classifier's confident regions;
only s = 1 is exactly the conditional model, as the tilted p_t at different t
are not the noised versions of one distribution.
`classifier_guided_denoise_fn` applies it to any denoise_fn through the
(x0, eps) pair of `jaxdiff.parameterization`, so every prediction type works.

The classifier is trained (`classifier_loss`, `train_classifier`) on x_t =
alpha x_0 + sigma eps with the cross-entropy of the label, at t whose log-SNR
is uniform between the process's ends (`classifier_noise`): it must be right
wherever a sampler evaluates it, and the diffusion loss's own draws may leave
the start of sampling unseen (EDM's log-normal sigma almost never reaches
sigma_max = 80, where a classifier trained on it returned gradients that
turned the samples into noise). It is told the noise level as `noise_level`, EDM's c_noise =
ln(sigma / alpha) / 4 (`parameterization.edm_c_noise`): one scale for every
process (t in [0, 1] for DDPM, up to 80 for EDM), within a few units of 0.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

from jaxdiff import parameterization, sde
from jaxdiff.models.compiler import compiler_options
from jaxdiff.schedules import Process


def classifier_noise(process: Process, shape, key):
  """The draws of one batch of x0.shape = shape: t [B] with its log-SNR uniform between the
  process's ends, and eps ~ N(0, I) of that shape (module docstring)."""
  key_t, key_eps = jax.random.split(key)
  lam = jax.random.uniform(key_t, (shape[0],), minval=process.log_snr(process.t_max),
                           maxval=process.log_snr(process.t_min))
  return process.t_from_log_snr(lam), jax.random.normal(key_eps, shape)


def classifier_loss(model, params, process: Process, x0, y, key):
  """Cross-entropy of p_phi(y | x_t, t) at a random t per example.

  Args:
    model: a Flax module (x_t [B, ...], t [B]) -> logits [B, K], e.g.
      `jaxdiff.models.classifier.NoisyClassifier`.
    params: its parameters.
    process: the forward process; t drawn by `classifier_noise`.
    x0: data [B, ...]; y: labels int [B].
    key: PRNG key of the draws of t and eps.

  Returns:
    loss [B] and metrics {"loss": mean loss, "accuracy": mean top-1 accuracy}.
  """
  t, eps = classifier_noise(process, x0.shape, key)
  x_t = sde.q_sample(process, x0, t, eps)
  logits = model.apply({"params": params}, x_t, noise_level(process, t))  # [B, K]
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, y)
  return loss, {"loss": jnp.mean(loss), "accuracy": jnp.mean(jnp.argmax(logits, -1) == y)}


@functools.cache  # One compilation per configuration; trainings with other seeds reuse it.
def _training_fns(model, process: Process, steps: int, batch_size: int, learning_rate: float,
                  weight_decay: float):
  """The jitted init(key, example [1, ...]) -> (params, opt_state) and step of
  `train_classifier`."""
  optimizer = optax.adamw(optax.cosine_decay_schedule(learning_rate, steps),
                          weight_decay=weight_decay)

  def init(key, example):
    params = model.init(key, example, noise_level(process, jnp.full((1,), process.t_max)))
    params = params["params"]
    return params, optimizer.init(params)

  def step(params, opt_state, x0, labels, key, index):
    key_batch, key_noise = jax.random.split(jax.random.fold_in(key, index))
    batch = jax.random.randint(key_batch, (batch_size,), 0, x0.shape[0])  # [batch_size]

    def objective(params):
      loss, metrics = classifier_loss(model, params, process, x0[batch], labels[batch], key_noise)
      return jnp.mean(loss), metrics

    (_, metrics), grads = jax.value_and_grad(objective, has_aux=True)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, metrics

  return jax.jit(init), jax.jit(step, donate_argnums=(0, 1), compiler_options=compiler_options())


def train_classifier(model, process: Process, x0, labels, *, steps: int, batch_size: int,
                     learning_rate: float, seed: int, weight_decay: float = 1e-4,
                     progress: bool = True):
  """The parameters of a noise-conditional classifier after `steps` steps of AdamW.

  Each step draws batch_size examples uniformly with replacement and its noise
  from fold_in(key, step); the learning rate decays to 0 by a cosine. The step
  is jitted once per configuration (model, process and the optimization's
  numbers); the result is a function of the arguments (and of the device's
  floating-point order).

  Args:
    model: a hashable Flax module (x_t [B, ...], t [B]) -> logits [B, num_classes],
      with a `num_classes` attribute.
    process: the forward process the classifier will guide.
    x0: data [N, ...] (images [N, H, W, C] or points [N, D]); labels: int [N] in
      [0, model.num_classes).
    steps, batch_size, learning_rate, weight_decay: the optimization.
    seed: fixes the initialization, the batches and the noise.
    progress: show a tqdm bar with the loss.

  Returns:
    The parameters (a dict of arrays).
  """
  x0 = jnp.asarray(x0, jnp.float32)
  labels = np.asarray(labels)
  if labels.shape != (x0.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f"labels must be integers of shape ({x0.shape[0]},), one per example of "
                     f"x0 {x0.shape}; got {labels.dtype} {labels.shape}")
  if labels.size and (labels.min() < 0 or labels.max() >= model.num_classes):
    raise ValueError(f"labels must lie in [0, {model.num_classes}) for num_classes="
                     f"{model.num_classes}; got [{labels.min()}, {labels.max()}]")
  if steps < 1 or batch_size < 1 or x0.shape[0] < 1:
    raise ValueError(f"train_classifier needs steps >= 1, batch_size >= 1 and at least one "
                     f"example; got {steps}, {batch_size} and x0 {x0.shape}")
  labels = jnp.asarray(labels, jnp.int32)
  init, step = _training_fns(model, process, steps, batch_size, float(learning_rate),
                             float(weight_decay))
  key_init, key_train = jax.random.split(jax.random.PRNGKey(seed))
  params, opt_state = init(key_init, x0[:1])
  bar = tqdm(range(steps), desc="noisy classifier", unit="step", disable=not progress)
  for index in bar:
    params, opt_state, metrics = step(params, opt_state, x0, labels, key_train, index)
    if progress and (index % 100 == 0 or index == steps - 1):
      bar.set_postfix(loss=f"{float(metrics['loss']):.4f}",
                      accuracy=f"{float(metrics['accuracy']):.3f}")
  return jax.device_get(params)


def noise_level(process: Process, t):
  """The time the classifier is told: c_noise = ln(sigma / alpha) / 4 [B] (module docstring)."""
  return parameterization.edm_c_noise(process, t)


def classifier_log_prob_fn(model, params, process: Process):
  """(x_t [B, ...], t [B], y int [B]) -> log p_phi(y | x_t, t) [B], from a classifier's logits."""

  def fn(x_t, t, y):
    logits = model.apply({"params": params}, x_t, noise_level(process, t))  # [B, K]
    return jnp.take_along_axis(jax.nn.log_softmax(logits, -1), y[:, None], axis=-1)[:, 0]

  return fn


def classifier_guided_denoise_fn(denoise_fn, process: Process, log_prob_fn, scale, *,
                                 prediction: str):
  """Wraps an unconditional denoise_fn so that its score gains scale * grad log p(y | x_t, t).

  Args:
    denoise_fn: (x [B, ...], t [B], cond) -> prediction [B, ...] of type `prediction`;
      it is called with cond=None (the model is unconditional).
    process: the forward process.
    log_prob_fn: (x_t [B, ...], t [B], y int [B]) -> log p(y | x_t, t) [B], e.g.
      `classifier_log_prob_fn`; each row must depend on its own example only (the
      gradient is taken of the sum over the batch).
    scale: s, a scalar or per-example [B] (may be traced); 0 is the unguided model.
    prediction: the type of denoise_fn's output (parameterization.PREDICTIONS); the
      guided function returns the same type.

  Returns:
    (x [B, ...], t [B] or scalar, cond int [B]) -> guided prediction [B, ...]: one call
    of denoise_fn and one gradient of log_prob_fn, with cond the requested classes y.
  """
  x0_eps = parameterization.x0_eps_fn(denoise_fn, process, prediction)

  def fn(x, t, cond=None):
    if cond is None:
      raise ValueError("classifier guidance needs the requested classes: cond must be int "
                       f"labels [B] = [{x.shape[0]}], got cond=None")
    y = jnp.asarray(cond)
    if y.shape != (x.shape[0],) or not jnp.issubdtype(y.dtype, jnp.integer):
      raise ValueError(f"classifier guidance takes cond = int labels of shape ({x.shape[0]},), "
                       f"one per example of x {x.shape}; got {y.dtype} {y.shape}")
    t = jnp.broadcast_to(jnp.asarray(t, jnp.float32), (x.shape[0],))

    def total_log_prob(x):
      log_prob = log_prob_fn(x, t, y)
      if log_prob.shape != (x.shape[0],):
        raise ValueError(f"log_prob_fn must return log p(y | x_t, t) of shape ({x.shape[0]},), "
                         f"got {log_prob.shape}")
      return jnp.sum(log_prob)

    grad = jax.grad(total_log_prob)(x)  # grad_x log p(y | x_t, t): [B, ...]
    x0, eps = x0_eps(x, t, None)
    alpha, sigma = (sde.per_example(c, x) for c in (process.alpha(t), process.sigma(t)))
    s = sde.per_example(scale, x)
    # score + s grad with score = -eps / sigma; x0 moves so that x = alpha x0 + sigma eps.
    eps = eps - s * sigma * grad
    x0 = x0 + s * sigma**2 / alpha * grad
    return parameterization.from_x0_eps(process, prediction, x0, eps, t)

  return fn
