"""Controllable generation with an unconditional model (`jaxdiff.conditional`).

On --num held-out images (the source's test split): inpainting of the lower
half by replacement alone and with RePaint's resampling (Lugmayr et al. 2022;
--resample), and SDEdit (Meng et al. 2022) from a degraded guide (2x2 blocks
averaged, then Gaussian noise of std 0.3) from three noise levels sigma /
alpha = 0.25, 0.5, 1, each on the process's default grid
(`grids.default_for`) with --steps steps. Scored where there is an evaluation
classifier: how often the edited image is classified as the original's label
(inpainting should restore the digit), the classifier's confidence (does it
look like a digit?), and the mean distances to the original and to the guide
(SDEdit trades the second for realism as t0 grows).

Writes edits.png (10 columns; rows: original, masked input, inpainted,
inpainted with resampling, guide, SDEdit at each start time).
"""

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff import conditional, data, evaluation, grids, plots
from jaxdiff.train import generate
from studies import common

SDEDIT_NOISE = (0.25, 0.5, 1.0)  # SDEdit's starting noise levels sigma / alpha (data in [-1, 1]).


def prepare(options: common.Options):
  step_dir, built, params = common.load(options)
  if not built.data.eight_bit or built.conditional:
    raise ValueError("the edit study takes an unconditional model of 8-bit images")
  return step_dir, built, params


def run(prepared, options: common.Options, out) -> str:
  step_dir, built, params = prepared
  source = built.run.data.source
  data_options = {k: v for k, v in built.run.data.options.items() if k != "split"}
  held_out = data.make_source(source, split="test", **data_options)
  num = min(options.num, len(held_out))
  y = jnp.asarray(data.to_model_space(np.stack([held_out[i]["image"] for i in range(num)])))
  labels = np.array([held_out[i]["label"] for i in range(num)])
  denoise = generate.denoise_fn(built, params)
  prediction = built.objective.prediction
  process = built.process
  height = built.data.shape[0]
  mask = jnp.zeros(built.data.shape).at[:height // 2].set(1.0)  # The upper half is known.
  # The process's default grid (Karras for EDM, log-SNR for DDPM), from its start to 0.
  grid_name, grid_options = grids.default_for(process)
  grid = grids.make_grid(process, grid_name, options.steps, **grid_options)
  key = jax.random.PRNGKey(options.seed)

  results = {}
  for resample in (1, options.resample):
    inpaint = jax.jit(lambda key: conditional.inpaint(denoise, process, y, mask, key, grid,
                                                      prediction=prediction,
                                                      resample=resample)[0])
    results[f"inpaint, resample {resample}"] = np.asarray(inpaint(key))
  # The guide: 2x2 blocks averaged, then noise; what SDEdit is for (a rough sketch of an image).
  blocks = y.reshape(num, height // 2, 2, -1, 2, y.shape[-1]).mean(axis=(2, 4))
  guide = jnp.repeat(jnp.repeat(blocks, 2, axis=1), 2, axis=2)
  guide = jnp.clip(guide + 0.3 * jax.random.normal(jax.random.fold_in(key, 1), y.shape), -1, 1)
  for noise in SDEDIT_NOISE:  # t0 where sigma / alpha = noise: log-SNR -2 ln(noise).
    t0 = float(process.t_from_log_snr(-2 * np.log(noise)))
    sdedit_grid = grids.make_grid(process, grid_name, options.steps,
                                  **{**grid_options, "t_max": t0})
    sdedit = jax.jit(lambda key: conditional.sdedit(denoise, process, guide, key, sdedit_grid,
                                                    prediction=prediction)[0])
    results[f"SDEdit from sigma/alpha = {noise:g}"] = np.asarray(sdedit(key))

  judge = common.judge(built, options)
  classifier = None if judge is None else judge.classifier
  rows = []
  for name, x in [("guide (input of SDEdit)", np.asarray(guide)), *results.items()]:
    x = np.clip(x, -1, 1)
    distance = lambda a: float(np.mean(np.linalg.norm((x - np.asarray(a)).reshape(num, -1),
                                                      axis=1)))
    row = {"images": name, "num": num, "distance_to_original": distance(y),
           "distance_to_guide": distance(guide)}
    if classifier is not None:
      probabilities, _ = evaluation.classify(classifier.model, classifier.params, x)
      row["original_class_kept"] = float(np.mean(np.argmax(probabilities, axis=1) == labels))
      row["confidence"] = float(np.mean(np.max(probabilities, axis=1)))
    rows.append(row)
  masked = np.where(np.asarray(mask) == 1, np.asarray(y), 0.0)  # Unknown pixels shown gray.
  pictures = [np.asarray(y), masked, *list(results.values())[:2], np.asarray(guide),
              *list(results.values())[2:]]
  plots.save_image_grid(np.concatenate([np.clip(p[:common.SHOWN], -1, 1) for p in pictures]),
                        out / "edits.png", cols=common.SHOWN)
  common.write_results(out, rows)
  model = common.with_params(step_dir, options.params)
  return f"# edit: {model}\n\n" + common.markdown(rows)
