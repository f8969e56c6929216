"""Classifier guidance (Dhariwal & Nichol 2021, sec. 4) of an unconditional model.

Trains a noise-conditional classifier p_phi(y | x_t, t)
(`models.classifier.NoisyClassifier`, `classifier_guidance.train_classifier`:
--train-steps, default 2000, at batch 64) on the model's training data, noised
as the diffusion loss noises it, and reports its accuracy on held-out images
at three noise levels. Then samples the unconditional model from one x_T with
the labels 0, 1, 2, ... at each guidance scale s of --scales, the classifier's
gradient added to the model's score with weight s
(`classifier_guidance.classifier_guided_denoise_fn`; s = 0: unguided), by
--sampler at --nfe. As with classifier-free guidance, the samples follow the
requested class more often as s grows (target_class: the evaluation
classifier's verdict, a network other than the guiding one), at some cost in
diversity.

Writes sweep.png (a row per s, the same 10 seeds and labels 0..9 in every row)
and quality.png (Frechet distance, confidence and target-class accuracy
against s).
"""

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff import classifier_guidance, data, plots, sde
from jaxdiff.models.classifier import NoisyClassifier
from jaxdiff.train import generate
from studies import common, guidance, samplers

TRAIN_STEPS, BATCH_SIZE, LEARNING_RATE = 2000, 64, 1e-3
NOISE_LEVELS = (0.1, 0.5, 1.0)  # sigma / alpha of the held-out accuracies.


def prepare(options: common.Options):
  step_dir, built, trained = common.load(options)
  if built.conditional or not built.data.num_classes:
    raise ValueError("the classifier study guides an unconditional model of labelled data; "
                     f"this one is {'conditional' if built.conditional else 'of unlabelled data'}")
  return step_dir, built, trained, generate.plan(built, options.sampler, options.nfe)


def run(prepared, options: common.Options, out) -> str:
  step_dir, built, trained, sample_plan = prepared
  run_settings, process = built.run, built.process
  x0, labels = data.model_arrays(data.make_source(run_settings.data.source,
                                                  **run_settings.data.options))
  model = NoisyClassifier(num_classes=built.data.num_classes)
  steps = options.train_steps or TRAIN_STEPS
  print(f"training the noise-conditional classifier: {steps} steps at batch {BATCH_SIZE}",
        flush=True)
  params = classifier_guidance.train_classifier(model, process, x0, labels, steps=steps,
                                                batch_size=BATCH_SIZE,
                                                learning_rate=LEARNING_RATE, seed=options.seed)
  log_prob_fn = classifier_guidance.classifier_log_prob_fn(model, params, process)
  held_out_options, held_out = data.held_out_options(run_settings.data.source,
                                                     run_settings.data.options)
  test_x0, test_labels = data.model_arrays(data.make_source(run_settings.data.source,
                                                            **held_out_options))
  accuracy = held_out_accuracy(log_prob_fn, process, test_x0, test_labels, options.seed)

  judge = common.judge(built, options)
  sample_labels = jnp.arange(options.num, dtype=jnp.int32) % built.data.num_classes
  score = lambda x_0: ({} if judge is None
                       else {**judge.scores(x_0), **judge.target_class(x_0, sample_labels)})

  guides = [lambda denoise, s=s: classifier_guidance.classifier_guided_denoise_fn(
      denoise, process, log_prob_fn, s, prediction=built.objective.prediction)
      for s in options.scales]
  rows, shown = samplers.sample_rows(
      built, trained, [sample_plan] * len(guides),
      options, score, labels=sample_labels, guides=guides,
      fields=[{"w": s} for s in options.scales],
      on_row=lambda rows: common.write_results(out, rows))
  if built.data.makes_images:
    plots.plot_guidance_sweep(np.stack(shown), options.scales, out / "sweep.png")
  if judge is not None:
    guidance.plot_quality(rows, out / "quality.png")
  classifier = {"train_steps": steps, "held_out": held_out,
                "accuracy": {f"sigma/alpha = {k:g}": v for k, v in accuracy.items()}}
  common.write_results(out, rows, classifier=classifier)
  words = ", ".join(f"{v:.3f} at sigma/alpha = {k:g}" for k, v in accuracy.items())
  model = common.with_params(step_dir, options.params)
  return (f"# classifier guidance: {model}, {sample_plan.describe()}\n\n"
          f"Noise-conditional classifier ({steps} steps): accuracy on {held_out} {words}.\n\n"
          "w is the classifier's scale s.\n\n" + common.markdown(rows))


def held_out_accuracy(log_prob_fn, process, x0, labels, seed) -> dict[float, float]:
  """The classifier's accuracy on x0 noised to each of NOISE_LEVELS (sigma / alpha)."""
  num_classes = int(labels.max()) + 1

  @jax.jit
  def accuracy(noise, key):
    t = jnp.full((x0.shape[0],), process.t_from_log_snr(-2 * jnp.log(noise)))
    x_t = sde.q_sample(process, x0, t, jax.random.normal(key, x0.shape))
    log_probs = jnp.stack([log_prob_fn(x_t, t, jnp.full_like(labels, k))
                           for k in range(num_classes)], axis=-1)  # [N, K]
    return jnp.mean(jnp.argmax(log_probs, -1) == labels)

  key = jax.random.PRNGKey(seed)
  return {noise: float(accuracy(noise, jax.random.fold_in(key, i)))
          for i, noise in enumerate(NOISE_LEVELS)}
