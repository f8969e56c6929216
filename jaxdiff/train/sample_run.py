"""A sampling run of any size over every process and device: streamed, resumable.

Sample i (a global index in [0, num)) is a function of (seed, i) alone: its key
k_i = fold_in(PRNGKey(seed), i) gives x_T = sigma(grid[0]) * N(0, I) from
fold_in(k_i, 0) and the sampler's noise from fold_in(k_i, 1) (per-sample keys,
`jaxdiff.samplers.base`), and its label is labels[i % len(labels)]. So the samples
are the same on one device, eight, or two processes of four, in any batch size
(up to how XLA rounds the network on another per-device batch), and a run resumed
after a kill draws what the uninterrupted one drew.

The run goes over global batches of batch_size samples, batch b holding samples
[b G, (b + 1) G) (the last one padded): one compiled step makes a batch's x_T and
labels from its indices on the devices that hold its rows, samples, and judges
the samples with each judge (`jaxdiff.streamed.batch_sums`: their sums reduced
over the mesh by the step's replicated output). The host adds each batch to one
`streamed.Running` per judge and keeps the first save_images samples; nothing else of a batch stays. Every
save_every batches and at the end, process 0 writes progress.npz (the batches
done, the running sums, the kept features and images) and progress.json (what
the run is) to the output folder, each to a temporary file renamed into place:
a run killed at any moment and started again on the same folder with the same
settings continues after the last batch saved and ends with bitwise the same
statistics as an uninterrupted run.
"""

import dataclasses
import json
import math
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec as P
from tqdm import tqdm

from jaxdiff import evaluation, models, samplers, streamed, workdir
from jaxdiff.train import generate, latent, sharding
from jaxdiff.train.experiment import Experiment

PROGRESS = "progress.npz"
RECORD = "progress.json"


@dataclasses.dataclass(frozen=True)
class Job:
  """What a sampling run makes.

  Attributes:
    num: samples in all.
    batch_size: samples per compiled call over the whole mesh (rounded up to a multiple of
      the mesh's batch devices by `run`).
    seed: of every sample's key.
    labels: class ids cycled over the samples (conditional models), or None.
    save_images: the first this many samples are kept and returned.
    keep_features: the first this many samples' features are kept (KID, precision/recall,
      paired comparisons).
    save_every: batches between saves of the progress (0: only at the end).
  """
  num: int
  batch_size: int
  seed: int
  labels: tuple | None = None
  save_images: int = 100
  keep_features: int = 5000
  save_every: int = 10

  def __post_init__(self):
    for name in ("num", "batch_size"):
      value = getattr(self, name)
      if not isinstance(value, int) or value < 1:
        raise ValueError(f"--{name.replace('_', '-')} must be a positive integer, got {value!r}")
    for name in ("save_images", "keep_features", "save_every"):
      value = getattr(self, name)
      if not isinstance(value, int) or value < 0:
        raise ValueError(f"--{name.replace('_', '-')} must be an integer >= 0, got {value!r}")
    generate.check_seed(self.seed)


@dataclasses.dataclass
class Result:
  """A finished run: its statistics ({judge name: Running}), the first save_images samples
  with their x_T and labels, the NFE per sample, and what this call did: the samples it
  made (padding included) in how many seconds, and the batches it took up from a saved
  progress."""
  running: dict
  images: np.ndarray
  x_T: np.ndarray
  labels: np.ndarray | None
  nfe: int
  sampled: int
  seconds: float
  resumed_batches: int


def check_judged(job: Job, judges) -> None:
  """Refuses a judged job with fewer samples or kept features than the judges' metrics need
  (evaluation.MIN_IMAGES: KID's smallest set).

  Raises:
    ValueError naming the flag.
  """
  least = evaluation.MIN_IMAGES
  if judges and min(job.num, job.keep_features) < least:
    flag = "--num" if job.num < least else "--keep-features"
    raise ValueError(f"judging samples (--evaluate, --inception-weights) needs {flag} >= "
                     f"{least}, got {min(job.num, job.keep_features)}; or pass --evaluate no")


def global_batch_size(job: Job, mesh) -> int:
  """The job's batch_size rounded up to a multiple of the mesh's batch devices, and to at
  most num (rounded up likewise)."""
  devices = sharding.batch_devices(mesh)
  return -(-min(job.batch_size, job.num) // devices) * devices


def make_step(experiment: Experiment, sample_plan: generate.SamplePlan, job: Job, mesh,
              judges=None, decoder=None):
  """(params, decoder params, {name: judge arguments}, index [G] sharded over the batch axes)
  -> (x_T, labels, x_0 [G, ...] sharded, {name: per-sample outputs}, {name: sums}
  replicated, info), jitted once. Rows with index >= job.num are padding: sampled, never
  counted. A latent model's x_0 are its samples decoded (of experiment.data.image_shape, not
  clipped); the judges see x_0 clipped to [-1, 1].

  judges: {name: streamed.Judge}, or None for none.
  decoder: (latent.LatentSpace, its params) of a latent model (`latent.decoder`; default:
    loaded from experiment.data.autoencoder); the step takes its params as an argument (the
    params given to it ignored for a model of the data itself: pass None)."""
  judges = judges or {}
  space = None if experiment.data.autoencoder is None else (
      decoder or latent.decoder(experiment.data.autoencoder))[0]
  sample = generate.make_decoded_sample_fn(experiment, sample_plan, space)
  labels = (None if not experiment.conditional
            else jnp.asarray(job.labels or range(experiment.data.num_classes), jnp.int32))
  root = jax.random.PRNGKey(job.seed)

  def step(params, decoder_params, judge_arguments, index):
    keys = jax.vmap(jax.random.fold_in, (None, 0))(root, index)  # k_i: [G]
    x_like = jnp.zeros((index.shape[0], *experiment.data.shape))
    z = samplers.base.standard_normal(samplers.base.fold_in(keys, 0), x_like)
    x_T = experiment.process.sigma(sample_plan.grid[0]) * z
    label = None if labels is None else labels[index % labels.shape[0]]
    # A latent model's x_0 decoded: [G, h, w, c] -> [G, H, W, C].
    x_0, info = sample(params, decoder_params, x_T, samplers.base.fold_in(keys, 1), label)
    images = jnp.clip(x_0, -1.0, 1.0)  # As the pictures show them.
    judged = {name: streamed.batch_sums(judge, judge_arguments[name], images, index,
                                        index < job.num, job.num)
              for name, judge in judges.items()}
    return (x_T, label, x_0, {name: out[1] for name, out in judged.items()},
            {name: out[0] for name, out in judged.items()}, info)

  rows = NamedSharding(mesh, P(sharding.BATCH_AXES))
  every = sharding.replicated(mesh)
  return jax.jit(step, in_shardings=(every, every, every, rows),
                 out_shardings=(rows, rows, rows, rows, every, every),
                 compiler_options=models.compiler_options())


def _host(x):
  """A global array (sharded over processes) whole on this host."""
  if x is None:
    return None
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def _add(running: dict, sums: dict, per_sample: dict, start: int):
  """Adds a batch's sums (replicated) and the per-sample outputs its Running keeps (the
  features while it keeps them, the nearest distances) to each judge's Running."""
  for name, totals in running.items():
    wanted = {"features"} if totals.needs_features(start) else set()
    wanted |= {"nearest"} & set(per_sample[name])
    totals.add(jax.device_get(sums[name]), {k: _host(per_sample[name][k]) for k in wanted},
               start)


def load_progress(out: pathlib.Path, record: dict, judges: dict, job: Job):
  """(batches done, NFE, Running, kept images, x_T, labels) saved in `out`, or None where it
  holds no progress.

  Raises:
    ValueError when the progress there is of another run, naming what differs.
  """
  if not (out / RECORD).is_file():
    return None
  saved = json.loads((out / RECORD).read_text())
  differences = [f"{k}: {saved['run'].get(k)!r} there, {v!r} here"
                 for k, v in record.items() if saved["run"].get(k) != v]
  if differences:
    raise ValueError(f"{out} holds the progress of another sampling run; it differs in "
                     f"{'; '.join(differences)}. Run the same command, or pass a new --workdir")
  with np.load(out / PROGRESS) as arrays:
    arrays = dict(arrays)
  running = {name: streamed.Running.restore(
      judge, job.num, job.keep_features,
      {k.split("/", 1)[1]: v for k, v in arrays.items() if k.startswith(name + "/")})
             for name, judge in judges.items()}
  return (int(saved["batches_done"]), int(saved["nfe"]), running, arrays["images"],
          arrays["x_T"], arrays["labels"])


def save_progress(out: pathlib.Path, record: dict, batches_done: int, nfe: int, running, images,
                  x_T, labels):
  """progress.npz, then progress.json (which names the batches done), each atomically."""
  arrays = {f"{name}/{k}": v for name, r in running.items() for k, v in r.arrays().items()}
  arrays.update(images=images, x_T=x_T,
                labels=np.zeros(0, np.int32) if labels is None else labels)
  workdir.write_atomically(out / PROGRESS, lambda f: np.savez(f, **arrays))
  text = json.dumps({"run": record, "batches_done": batches_done, "nfe": nfe}, indent=1)
  workdir.write_atomically(out / RECORD, lambda f: f.write(text.encode()))


def run(experiment: Experiment, sample_plan: generate.SamplePlan, params, job: Job, mesh, *,
        judges=None, out=None, record: dict | None = None,
        progress: bool = True, step_fn=None, decoder=None) -> Result:
  """Samples and judges job.num samples over the mesh, in global batches. A latent model's
  samples are decoded to images in the step, and its Result's images are those (its x_T the
  latents').

  Args:
    judges: {name: streamed.Judge} (None: none), each with its `streamed.Running`.
    out: the output folder to save progress in and resume from (None: neither).
    record: what identifies the run (JSON-serializable), saved with the progress and
      compared on resume; the job and the plan are added to it.
    step_fn: a `make_step` of the same arguments, to reuse its compilation.
    decoder: (latent.LatentSpace, params) of a latent model, as for `make_step` (default:
      loaded from experiment.data.autoencoder).

  Raises:
    ValueError when out holds the progress of another run; FloatingPointError naming the
    step where a batch turned NaN or inf.
  """
  size = global_batch_size(job, mesh)
  num_batches = math.ceil(job.num / size)
  judges = judges or {}
  check_judged(job, judges)
  if experiment.data.autoencoder is not None and decoder is None:
    decoder = latent.decoder(experiment.data.autoencoder)
  step = step_fn or make_step(experiment, sample_plan, job, mesh, judges, decoder)
  record = {**(record or {}), **dataclasses.asdict(job), "global_batch": size,
            "plan": sample_plan.describe(), "judges": sorted(judges)}
  record = json.loads(json.dumps(record))  # Tuples as lists, as read back.
  keep_images = min(job.save_images, job.num)
  images = np.zeros((keep_images, *experiment.data.image_shape), np.float32)
  x_T_kept = np.zeros((keep_images, *experiment.data.shape), np.float32)
  labels_kept = np.zeros(keep_images, np.int32) if experiment.conditional else None
  running = {name: streamed.Running(judge, job.num, job.keep_features)
             for name, judge in judges.items()}
  first = 0
  out = None if out is None else pathlib.Path(out)
  saved = None if out is None else load_progress(out, record, judges, job)
  nfe = 0
  if saved is not None:
    first, nfe, running, images, x_T_kept, labels_kept = saved
    labels_kept = labels_kept if experiment.conditional else None
  writes = out is not None and jax.process_index() == 0
  # Through the host: a restored checkpoint's (or a trained classifier's) arrays sit on this
  # process's first device, and placing those on a mesh that spans other processes is a
  # cross-host transfer, which the CPU backend refuses; from numpy each process places its
  # own copy.
  judge_arguments = jax.device_put(
      jax.device_get({name: judge.arguments() for name, judge in judges.items()}),
      sharding.replicated(mesh))
  params = jax.device_put(jax.device_get(params), sharding.replicated(mesh))
  decoder_params = None if decoder is None else jax.device_put(jax.device_get(decoder[1]),
                                                               sharding.replicated(mesh))
  rows = NamedSharding(mesh, P(sharding.BATCH_AXES))
  start_time = time.perf_counter()
  for b in tqdm(range(first, num_batches), initial=first, total=num_batches, desc="sampling",
                unit="batch", disable=not progress or jax.process_index() != 0):
    start = b * size
    index = jax.make_array_from_callback(
        (size,), rows, lambda where, start=start: np.arange(start, start + size,
                                                            dtype=np.int32)[where])
    x_T, label, x_0, per_sample, sums, info = step(params, decoder_params, judge_arguments,
                                                   index)
    samplers.raise_if_nonfinite(info, sample_plan.grid)
    nfe = int(info["nfe"])
    if start < keep_images:
      n = min(keep_images - start, size)
      images[start:start + n] = _host(x_0)[:n]
      x_T_kept[start:start + n] = _host(x_T)[:n]
      if labels_kept is not None:
        labels_kept[start:start + n] = _host(label)[:n]
    _add(running, sums, per_sample, start)
    done = b + 1
    if writes and (done == num_batches or (job.save_every and done % job.save_every == 0)):
      save_progress(out, record, done, nfe, running, images, x_T_kept, labels_kept)
  return Result(running, images, x_T_kept, labels_kept, nfe, (num_batches - first) * size,
                time.perf_counter() - start_time, first)


def reconstruct(experiment: Experiment, params, images, job: Job, mesh, *, judges=None,
                progress: bool = True) -> Result:
  """An autoencoder's reconstructions of images [job.num, H, W, C] in [-1, 1] (the same host
  array in every process), judged as a sampling run's samples are: the floor of any latent
  model of these images. Each is the decoder's image of the posterior mean of z (no
  sampling), clipped to [-1, 1] for the judges; one step jitted over the mesh, in global
  batches of job.batch_size (`global_batch_size`; the last one padded). job.seed is unused.

  Returns:
    a Result: the judges' statistics, the first job.save_images reconstructions (not
    clipped) as images and their originals as x_T, the labels None and nfe 0.
  """
  judges = judges or {}
  num, keep_features, save_images = job.num, job.keep_features, job.save_images
  if len(images) != num:
    raise ValueError(f"{len(images)} images for a job of {num}")
  check_judged(job, judges)
  size = global_batch_size(job, mesh)

  def step(params, judge_arguments, x, index):
    mean, _ = experiment.model.apply({"params": params}, x, method="encode")
    reconstruction = experiment.model.apply({"params": params}, mean, method="decode")
    judged = {name: streamed.batch_sums(judge, judge_arguments[name],
                                        jnp.clip(reconstruction, -1.0, 1.0), index,
                                        index < num, num)
              for name, judge in judges.items()}
    return (reconstruction, {name: out[1] for name, out in judged.items()},
            {name: out[0] for name, out in judged.items()})

  rows = NamedSharding(mesh, P(sharding.BATCH_AXES))
  every = sharding.replicated(mesh)
  step = jax.jit(step, in_shardings=(every, every, rows, rows),
                 out_shardings=(rows, rows, every), compiler_options=models.compiler_options())
  judge_arguments = jax.device_put(
      jax.device_get({name: judge.arguments() for name, judge in judges.items()}), every)
  params = jax.device_put(jax.device_get(params), every)
  padded = np.concatenate([images, np.zeros((-num % size, *images.shape[1:]), images.dtype)])
  running = {name: streamed.Running(judge, num, keep_features) for name, judge in judges.items()}
  keep = min(save_images, num)
  kept = np.zeros((keep, *images.shape[1:]), np.float32)
  start_time = time.perf_counter()
  for start in tqdm(range(0, num, size), desc="reconstructing", unit="batch",
                    disable=not progress or jax.process_index() != 0):
    x = jax.make_array_from_callback(padded[start:start + size].shape, rows,
                                     lambda where, start=start: padded[start:start + size][where])
    index = jax.make_array_from_callback(
        (size,), rows, lambda where, start=start: np.arange(start, start + size,
                                                            dtype=np.int32)[where])
    reconstruction, per_sample, sums = step(params, judge_arguments, x, index)
    if start < keep:
      n = min(keep - start, size)
      kept[start:start + n] = _host(reconstruction)[:n]
    _add(running, sums, per_sample, start)
  return Result(running, kept, np.asarray(images[:keep], np.float32), None, 0, len(padded),
                time.perf_counter() - start_time, 0)
