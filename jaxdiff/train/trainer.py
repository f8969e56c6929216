"""The training loop: data -> jitted step -> metrics, pictures, checkpoints.

`train` runs an Experiment in a claimed workdir from its latest checkpoint (or
from step 0) to run.num_steps:
  * each call of the compiled step makes steps_per_call updates on as many
    batches, assembled into global arrays over the mesh; the host reads a
    call's metrics only after the next call is queued, so the device never
    waits for it;
  * a NaN or inf loss stops the run with a FloatingPointError naming the step,
    before any checkpoint holds it, and so does a NaN or inf in the state at a
    checkpoint (`checkpoint.save`); the last good checkpoint stays;
  * every log_every steps: the loss (mean over the window), gradient norm,
    learning rate, EMA decays, steps/s and images/s go to metrics.jsonl and
    TensorBoard (`writer`); a tqdm bar shows loss, steps/s and the ETA, or
    where standard error is not a terminal a plain line every
    progress_seconds (`progress.progress_bar`);
  * an autoencoder's run (`Experiment.trains_autoencoder`) pictures the first
    EMA's reconstructions of the first samples.num training images (each
    beside its reconstruction) instead, and logs the reconstruction error, KL
    and the latents' mean and standard deviation with the loss; it has no
    sensitivity, bits/dim or sample-quality evaluation;
  * every sample_every steps: a picture of samples.num samples from the first
    EMA with a fixed x_T and fixed labels (samples/step-<n>.png; a latent
    model's decoded by its autoencoder, `latent.decoder`), so progress
    is visible (samples.num = 0: none), and how much the first EMA's output
    depends on t and on the class (`diagnostics.sensitivity` on that step's
    batch; time_sensitivity and class_sensitivity in the next metrics row), with
    a warning when it ignores t (a dead time embedding);
  * every bpd.every steps and at the end (where bpd.every > 0): the first EMA's
    bits/dim on held-out records (`bits_per_dim`: the data's test split or new
    draws, spread over the mesh), bits_per_dim (and vlb_bits_per_dim for a
    discrete DDPM on images) in the next metrics row;
  * every eval.every steps and at the end (where eval.every > 0): the sample
    quality of each of eval.params, from the same x_T at every evaluation
    (`periodic_eval`): eval/<params>/frechet_distance (and fid where Inception
    judges, kid, ...) in the next metrics row; a step whose quality is the best
    so far is checkpointed, kept by the pruning, and named in best.json;
  * every checkpoint_every steps and at the end: a checkpoint (Orbax, async)
    of the state, the data iterator's position and the run record (the
    config and the data's spec, also written as train_config.json);
  * every ema.snapshot_every steps and at the end (where it is > 0): a snapshot
    of the power-function EMAs under <workdir>/phema/ (`phema.save`), never
    pruned, for post-hoc EMA.
Only process 0 writes metrics, pictures, best.json and the bar; every process
samples; Orbax writes checkpoints from every process.
"""

import dataclasses
import json
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from jaxdiff import data, diagnostics, models, plots
from jaxdiff.progress import progress_bar
from jaxdiff.train import (bits_per_dim, checkpoint, generate, latent, optim, periodic_eval,
                           phema, sharding, state as train_state, step, teacher)
from jaxdiff.train.experiment import DataSpec, Experiment, Settings
from jaxdiff.train.writer import MetricWriter


RECORD = "train_config.json"  # The run record, readable without Orbax.


class ConfigMismatch(ValueError):
  """The workdir's checkpoint was trained with another configuration."""


@dataclasses.dataclass
class Summary:
  """What a finished (or stopped) call of `train` did."""

  start_step: int
  step: int
  seconds: float
  final_loss: float
  checkpoint: str
  workdir: str


def run_record(experiment: Experiment) -> dict:
  """What a checkpoint stores besides arrays: the config and the data's spec."""
  return {"config": experiment.config, "data": dataclasses.asdict(experiment.data),
          "jaxdiff": 1}


class _Progress:
  """The host's side of the loop: reads finished calls' metrics, stops on NaN, logs.

  Only process 0 has a writer and a visible bar.
  """

  def __init__(self, run, start_step: int, writer, bar, checkpoints):
    self.run, self.writer, self.bar, self.checkpoints = run, writer, bar, checkpoints
    self.window, self.final_loss = [], float("nan")
    self.extra = {}  # Scalars measured between rows, written with the next one.
    self.window_step, self.window_start = start_step, None  # Timed from the first call on.

  def settle(self, end_step: int, metrics):
    """Takes the metrics [k] of the call that ended at end_step (waits for it)."""
    metrics = jax.device_get(metrics)
    losses = np.asarray(metrics["loss"])
    if not np.all(np.isfinite(losses)):
      bad = end_step - len(losses) + int(np.argmin(np.isfinite(losses))) + 1
      raise FloatingPointError(
          f"the loss is {losses[~np.isfinite(losses)][0]} at step {bad}; training stopped. "
          f"{checkpoint.kept(self.checkpoints)}")
    if self.window_start is None:  # The first call, compilation included, is not timed.
      self.window_start, self.window_step = time.perf_counter(), end_step
    self.window.extend(losses.tolist())
    self.final_loss = float(losses[-1])
    self.bar.set_postfix(loss=f"{np.mean(self.window):.4f}")
    self.bar.update(len(losses))
    if end_step % self.run.log_every == 0 or end_step == self.run.num_steps:
      seconds = time.perf_counter() - self.window_start
      steps_per_s = (end_step - self.window_step) / seconds if seconds > 0 else float("nan")
      scalars = {"loss": np.mean(self.window), "grad_norm": metrics["grad_norm"][-1],
                 "learning_rate": metrics["learning_rate"][-1], "steps_per_s": steps_per_s,
                 "images_per_s": steps_per_s * self.run.batch_size,
                 **{k: v[-1] for k, v in metrics.items()
                    if k not in ("loss", "grad_norm", "learning_rate")},
                 **self.extra}
      self.extra = {}
      if self.writer is not None:
        self.writer.write(end_step, scalars)
      self.window.clear()
      self.window_start, self.window_step = time.perf_counter(), end_step


def prepare(config):
  """(Experiment, data source, held-out source or None, mesh) of a training config: the
  config parsed once, everything it names built, and everything a run can check checked
  before anything is written: the ranges, the data against the named autoencoder
  (`latent.check_named`; a latent model's bits/dim is refused), the mesh against the batch, the data against the
  batch, the network's shapes on the data (traced by jax.eval_shape, nothing compiled) and
  the sampler plan of the pictures, a reflow's pairs against its teacher
  (`teacher.check_pairs`), and the eval block where eval.every > 0 (its sampler
  plan, params and judges: `periodic_eval.check`). The held-out source where bpd.every > 0.

  Raises:
    ValueError, FileNotFoundError or KeyError naming what is wrong.
  """
  settings = Settings.from_config(config)
  run = settings.run
  source = data.make_source(run.data.source, **run.data.options)
  built = Experiment.build(settings, DataSpec.of(source))
  latent.check_named(settings.autoencoder, built.data, run.data.source)
  if built.data.autoencoder is not None and run.bpd.every:
    raise ValueError(f"bpd.every = {run.bpd.every}: {bits_per_dim.LATENT_REFUSAL}; set it to 0")
  if isinstance(source, data.PairsSource) and run.bpd.every:
    raise ValueError(f"bpd.every = {run.bpd.every}: the pairs of {source.origin} are a "
                     "teacher's samples, with no held-out data of their own; set it to 0")
  mesh = sharding.make_mesh(run.mesh)
  sharding.check_batch_size(mesh, run.batch_size, run.grad_accum)
  try:
    batches(built, source)  # Reads nothing.
  except ValueError as error:
    raise ValueError(f"data.source {run.data.source!r} with batch_size {run.batch_size}: "
                     f"{error}") from None
  check_network(built)
  teacher.check(built)
  teacher.check_pairs(built, source, run.data.source)
  if built.trains_autoencoder:
    for field, every in (("bpd.every", run.bpd.every), ("eval.every", run.eval.every)):
      if every:
        raise ValueError(f"{field} = {every}: an autoencoder's run has no bits/dim or sample "
                         "quality; set it to 0 (sample.py --checkpoint on the autoencoder "
                         "judges its reconstructions)")
  elif run.samples.num:
    picture_plan(built)
  if run.eval.every:
    periodic_eval.check(built)
  held_out = held_out_source(built) if run.bpd.every else None
  return built, source, held_out, mesh


def batches(experiment: Experiment, source):
  """This process's endless iterator of the run's batches (`data.make_iterator`).

  Raises:
    ValueError where the data cannot fill a batch.
  """
  run = experiment.run
  return data.make_iterator(source, batch_size=run.batch_size, seed=run.seed,
                            process_index=jax.process_index(),
                            process_count=jax.process_count(),
                            random_flip=run.data.random_flip)


def check_network(experiment: Experiment):
  """Traces the step-0 TrainState, the network applied to the data's shape included
  (jax.eval_shape: nothing compiled or allocated).

  Raises:
    ValueError where the network cannot take the data, naming both.
  """
  optimizer = optim.make_optimizer(experiment.optimizer, experiment.run.num_steps)
  try:
    jax.eval_shape(experiment.init_fn(optimizer))
  except (ValueError, TypeError) as error:
    shape = ", ".join(map(str, experiment.data.shape))
    raise ValueError(f"the network of model.name and model.options cannot take this data "
                     f"[{shape}]: {error}") from None


def picture_plan(experiment: Experiment):
  """The `generate.plan` of the config's samples block, as the pictures sample.

  Raises:
    ValueError naming a bad samples.sampler or samples.nfe.
  """
  samples = experiment.run.samples
  try:
    return generate.plan(experiment, samples.sampler, samples.nfe,
                         guidance_scale=samples.guidance if experiment.conditional else 1.0)
  except ValueError as error:
    raise ValueError(f"samples (sampler {samples.sampler!r}, nfe {samples.nfe}): "
                     f"{error}") from None


def step_parts(experiment: Experiment, mesh, teacher_experiment=None):
  """What train() runs on a mesh: (init, state_sharding, train_step).

  init() is the step-0 TrainState; state_sharding its shardings (`sharding.state_sharding`);
  train_step(state, batches [k, B, ...]) -> (state, metrics) the step jitted over the mesh
  with the state donated (`step.jit_train_step`). With a teacher's Experiment, the step
  distils it: train_step(state, batches, teacher_params), the teacher's parameters sharded
  as the student's.
  """
  run = experiment.run
  optimizer = optim.make_optimizer(experiment.optimizer, run.num_steps)
  init = experiment.init_fn(optimizer)
  state_sharding = sharding.state_sharding(mesh, jax.eval_shape(init))
  train_step = step.jit_train_step(
      step.make_train_step(experiment.model, experiment.objective, optimizer,
                           optim.learning_rate_schedule(experiment.optimizer, run.num_steps),
                           experiment.ema_decays, ema_warmup=experiment.ema_warmup,
                           phema_sigma_rels=experiment.phema_sigma_rels,
                           conditional=experiment.conditional, grad_accum=run.grad_accum,
                           teacher_x0=(None if teacher_experiment is None
                                       else teacher.x0_fn(teacher_experiment))),
      state_sharding, sharding.batch_sharding(mesh), sharding.replicated(mesh),
      teacher_sharding=None if teacher_experiment is None else state_sharding.params)
  return init, state_sharding, train_step


def train(experiment: Experiment, source, workdir, mesh, *, held_out=None, judges=None,
          show_progress: bool = True, progress_seconds: float = 30.0):
  """Trains to experiment.run.num_steps in `workdir` (claimed by the caller).

  The mesh must split the batch (`prepare` checks it). held_out is the source of the
  periodic bits/dim (run.bpd.every > 0); by default `data.held_out_options` of the training
  source. judges: {name: streamed.Judge} of the periodic sample quality (run.eval.every > 0);
  by default `periodic_eval.judges` (train.py builds them before it claims the workdir).
  progress_seconds: the interval of the progress lines written where standard error
  is not a terminal.

  Returns:
    a Summary.

  Raises:
    ConfigMismatch when the workdir's checkpoint was trained with another config;
    FloatingPointError on a NaN or inf loss, naming the step.
  """
  run = experiment.run
  workdir = pathlib.Path(workdir)
  distilled = teacher.load(experiment)
  # The teacher of a reflow or of consistency tuning only starts the student (a reflow's
  # teacher's ODE did its work in the pairs); the others' steps call it.
  stepped = distilled if getattr(experiment.objective, "calls_teacher", False) else None
  init, state_sharding, train_step = step_parts(
      experiment, mesh, None if stepped is None else stepped.experiment)
  record = run_record(experiment)
  if distilled is not None:
    record["teacher"] = distilled.record
    teacher_params = jax.device_put(distilled.params, state_sharding.params)
  if stepped is not None:
    distilling_step = train_step
    train_step = lambda state, batches: distilling_step(state, batches, teacher_params)  # noqa: E731
  abstract = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                          jax.eval_shape(init), state_sharding)
  iterator = batches(experiment, source)

  def check_run(saved):
    differences = experiment.differences(saved["config"])
    if distilled is not None and saved.get("teacher") != distilled.record:
      differences.append(f"teacher: {saved.get('teacher')} in the checkpoint, "
                         f"{distilled.record} now")
    if differences:
      raise ConfigMismatch(
          f"the checkpoint in {workdir / checkpoint.DIRECTORY} was trained with another "
          f"configuration; it differs in: {'; '.join(differences)}. Pass the same config, or a "
          "new --workdir (the checkpoint is kept)")

  if run.eval.every and judges is None:
    judges = periodic_eval.judges(experiment)
  checkpoints = checkpoint.manager(
      workdir, keep=run.keep_checkpoints,
      best=periodic_eval.best_metric(judges) if run.eval.every else None)
  snapshots = (phema.manager(workdir, experiment.phema_sigma_rels)
               if experiment.snapshot_every else None)
  if jax.process_index() == 0:
    (workdir / RECORD).write_text(json.dumps(record, indent=1))
  try:
    restored = checkpoint.restore_latest(workdir, checkpoints, abstract, iterator, check_run)
    if restored is not None:
      state = restored[0]
    else:
      state = jax.jit(init, out_shardings=state_sharding)()
      if distilled is not None:  # The student starts as the teacher, every EMA too.
        state = state.replace(params=jax.tree.map(jnp.copy, teacher_params),
                              ema={name: jax.tree.map(jnp.copy, teacher_params)
                                   for name in state.ema})
    return _run(experiment, state, source, iterator, workdir, mesh, checkpoints, train_step,
                held_out, judges, show_progress, progress_seconds, snapshots, record)
  finally:
    checkpoint.finish(checkpoints)
    if snapshots is not None:
      checkpoint.finish(snapshots)


def _run(experiment, state, source, iterator, workdir, mesh, checkpoints, train_step,
         held_out, judges, show_progress, progress_seconds, snapshots, record):
  """The loop itself, from the state's step to num_steps; record: what every checkpoint
  stores besides arrays (`run_record`, and the teacher's of a distillation)."""
  run = experiment.run
  writes = jax.process_index() == 0
  start_step = current = int(state.step)
  # Every process samples (the network is spread over all of them); process 0 saves.
  picture, sensitivity = None, None
  # A latent model's autoencoder (loaded once): its samples are decoded to be pictured, judged.
  decoder = (None if experiment.data.autoencoder is None
             else latent.decoder(experiment.data.autoencoder))
  if experiment.trains_autoencoder:
    if run.samples.num:
      picture = _reconstruction_picture_fn(experiment, mesh, source, save=writes)
  else:
    if run.samples.num:
      picture = _picture_fn(experiment, mesh, save=writes, decoder=decoder)
    sensitivity = _sensitivity_fn(experiment, mesh)
  # The held-out bits/dim's own bar only on a terminal: in a log, the training's lines say it.
  on_terminal = writes and show_progress and sys.stderr.isatty()
  held_out_bpd = _bpd_fn(experiment, mesh, held_out, show_progress=on_terminal)
  evaluator = None
  if run.eval.every:
    evaluator = periodic_eval.Evaluator(experiment, mesh, judges, progress=on_terminal,
                                        decoder=decoder)
    evaluator.resume(checkpoints, workdir)
  writer = MetricWriter(workdir, start_step) if writes else None
  bar = progress_bar(run.num_steps, start_step, enabled=writes and show_progress,
                     every_seconds=progress_seconds)
  progress = _Progress(run, start_step, writer, bar, checkpoints)
  started, pending = time.perf_counter(), None
  try:
    while current < run.num_steps:
      local = [next(iterator) for _ in range(run.steps_per_call)]
      batches = sharding.global_batch(jax.tree.map(lambda *x: np.stack(x), *local),
                                      sharding.batch_sharding(mesh))
      state, metrics = train_step(state, batches)
      current += run.steps_per_call
      if pending is not None:  # The previous call, read while this one runs (if dispatched
        # asynchronously: on one CPU device, train.py runs each call to its end, host_memory).
        progress.settle(*pending)
      pending = (current, metrics)
      done = current == run.num_steps
      if current % run.sample_every == 0 or done:
        if picture is not None:
          picture(state, workdir / "samples" / f"step-{current}.png")
        if sensitivity is not None:
          progress.extra.update(sensitivity(state, batches))
        if writes and progress.extra.get("time_sensitivity", 1.0) < diagnostics.DEAD:
          tqdm.write(f"warning: step {current}: the EMA network's output barely depends on t "
                     f"(time sensitivity {progress.extra['time_sensitivity']:.1e} < "
                     f"{diagnostics.DEAD}; jaxdiff.diagnostics): is its time embedding "
                     "connected?")
      if held_out_bpd is not None and (current % run.bpd.every == 0 or done):
        progress.extra.update(held_out_bpd(state))
      quality, best = {}, False  # Saved with this step's checkpoint; whether it is the best.
      if evaluator is not None and (current % run.eval.every == 0 or done):
        row, quality, best = evaluator.evaluate(state, current)
        progress.extra.update(row)
      if current % run.checkpoint_every == 0 or done or best:
        progress.settle(*pending)  # Nothing non-finite goes into a checkpoint.
        pending = None
        checkpoint.save(checkpoints, current, state, iterator, record,
                        metrics=quality)
        if best and writes:
          periodic_eval.write_best(workdir, evaluator.metric, evaluator.best)
      if snapshots is not None and (current % experiment.snapshot_every == 0 or done):
        if pending is not None:
          progress.settle(*pending)  # A NaN loss is named before the snapshot refuses it.
          pending = None
        phema.save(snapshots, current, {s: state.ema[train_state.phema_name(s)]
                                        for s in experiment.phema_sigma_rels})
  finally:
    bar.close()
    if writer is not None:
      writer.close()
  return Summary(start_step, current, time.perf_counter() - started, progress.final_loss,
                 str(checkpoints.directory / str(checkpoints.latest_step())), str(workdir))


def _sensitivity_fn(experiment: Experiment, mesh):
  """(state, batches [k, B, ...]) -> {"time_sensitivity", "class_sensitivity"} of the first
  EMA on the first batch (floats, the same in every process)."""
  ema_name = train_state.ema_name(experiment.ema_decays[0])
  key = jax.random.fold_in(jax.random.PRNGKey(experiment.run.seed), 0xD1)  # Its own key.

  def measure(params, x0, labels):
    told_fn = experiment.objective.told_fn(models.network_fn(experiment.model, params))
    out = diagnostics.sensitivity(told_fn, experiment.process, x0, key, labels,
                                  experiment.data.num_classes)
    return {"time_sensitivity": out["time"], "class_sensitivity": out["class"]}

  measure = jax.jit(measure, out_shardings=sharding.replicated(mesh),
                    compiler_options=models.compiler_options())

  def sensitivity(state, batches):
    labels = batches["label"][0] if experiment.conditional else None
    return {name: float(value) for name, value in
            measure(state.ema[ema_name], batches["image"][0], labels).items()}

  return sensitivity


def held_out_source(experiment: Experiment):
  """The source of the periodic bits/dim: `data.held_out_options` of the training data."""
  run = experiment.run
  options, _ = data.held_out_options(run.data.source, run.data.options)
  return data.make_source(run.data.source, **options)


def _bpd_fn(experiment: Experiment, mesh, source, show_progress: bool):
  """state -> {"bits_per_dim", and "vlb_bits_per_dim" where there is a discrete bound} of the
  first EMA on held-out records; None where bpd.every is 0."""
  bpd = experiment.run.bpd
  if not bpd.every:
    return None
  source = held_out_source(experiment) if source is None else source
  num = min(bpd.num, len(source))
  batch_fn = bits_per_dim.make_batch_fn(experiment, mesh, num_probes=bpd.num_probes)
  # The same records and noise at every evaluation.
  key = jax.random.fold_in(jax.random.PRNGKey(experiment.run.seed), 0xB9D)
  ema_name = train_state.ema_name(experiment.ema_decays[0])

  def evaluate(state):
    row = bits_per_dim.evaluate(experiment, state.ema[ema_name], source, num, key, mesh,
                                batch_size=bpd.batch_size, num_probes=bpd.num_probes,
                                batch_fn=batch_fn, progress=show_progress)
    out = {"bits_per_dim": row["bits_per_dim"]}
    if "vlb" in row:
      out["vlb_bits_per_dim"] = row["vlb"]["total_bits_per_dim"]
    return out

  return evaluate


def _picture_fn(experiment: Experiment, mesh, save: bool, decoder=None):
  """(state, path) -> samples the EMA (fixed x_T and labels); writes their picture if save.
  decoder: (latent.LatentSpace, params) of a latent model, whose samples are decoded in the
  same jitted call (its params an argument)."""
  run = experiment.run
  plan = picture_plan(experiment)
  sample = jax.jit(generate.make_decoded_sample_fn(experiment, plan,
                                                  None if decoder is None else decoder[0]),
                   out_shardings=sharding.replicated(mesh),  # Whole in every process.
                   compiler_options=models.compiler_options())
  decoder_params = None if decoder is None else jax.device_get(decoder[1])
  key_noise, key_sampler = jax.random.split(jax.random.fold_in(
      jax.random.PRNGKey(run.seed), 0x5A))  # Apart from the training keys.
  # Host values, the same in every process, which jit places on the mesh itself.
  x_T = np.asarray(generate.prior_noise(experiment, plan, key_noise, run.samples.num))
  key_sampler = np.asarray(key_sampler)
  labels = generate.default_labels(experiment, run.samples.num)
  labels = None if labels is None else np.asarray(labels)
  ema_name = train_state.ema_name(experiment.ema_decays[0])

  def picture(state, path):
    x_0, _ = sample(state.ema[ema_name], decoder_params, x_T, key_sampler, labels)
    if not save:
      return
    path.parent.mkdir(exist_ok=True)
    x_0 = np.asarray(jax.device_get(x_0))
    if experiment.data.makes_images:
      plots.save_image_grid(x_0, path)
    else:
      plots.plot_samples_2d({path.stem: x_0[:, :2]}, path,
                            extent=1.1 * float(np.nanmax(np.abs(x_0[:, :2]), initial=1.0)))

  return picture


def _reconstruction_picture_fn(experiment: Experiment, mesh, source, save: bool):
  """(state, path) -> the first EMA's reconstructions (the posterior means decoded) of the
  first samples.num images of the training data; pictured if save, each image followed by
  its reconstruction."""
  num = experiment.run.samples.num
  x, _ = data.model_arrays(source, num)  # The same images at every picture.
  ema_name = train_state.ema_name(experiment.ema_decays[0])
  reconstruct = jax.jit(lambda params, x: experiment.model.apply({"params": params}, x)[0],
                        out_shardings=sharding.replicated(mesh),
                        compiler_options=models.compiler_options())

  def picture(state, path):
    reconstruction = reconstruct(state.ema[ema_name], x)
    if save:
      path.parent.mkdir(exist_ok=True)
      pairs = np.stack([x, np.asarray(jax.device_get(reconstruction))], axis=1)
      plots.save_image_grid(pairs.reshape(-1, *x.shape[1:]), path,
                            cols=2 * int(np.ceil(np.sqrt(len(x) / 2))))

  return picture
