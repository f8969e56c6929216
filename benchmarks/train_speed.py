"""Train-step speed: jaxdiff's full train step against its bare loss gradient, its data
pipeline and PyTorch (diffusers' UNet2DModel trained with the same recipe).

  python3 benchmarks/train_speed.py                          # digits and CIFAR-10, with PyTorch
  python3 benchmarks/train_speed.py --model digits --repeats 10
  python3 benchmarks/train_speed.py --model latent --no-peer    # the encoded-latent pipeline
  python3 benchmarks/train_speed.py --model cifar10 --repeats 3
  python3 benchmarks/train_speed.py --no-peer                # jaxdiff only
  python3 benchmarks/train_speed.py --model digits --no-peer --mesh '{"data": 8}'
  python3 benchmarks/train_speed.py --model digits --convolutions  # what the step spends

Models (the recipe of configs/digits.py for both: EDM, Karras et al. 2022, with its
log-normal sigma, preconditioning and loss weight; clip 1.0, AdamW at 2e-3 with its
warm-up and cosine schedule, EMA 0.9999 with warm-up, no dropout):
  digits   configs/digits.py: its U-Net (917,889 parameters) at batch 128 on the real 8x8
           digits;
  cifar10  `UNet()`'s defaults (Ho et al.'s CIFAR-10 U-Net, 35,746,307 parameters, dropout
           0.1) at batch 8 on uniform random [8, 32, 32, 3] in [-1, 1];
  latent   configs/digits.py's U-Net at batch 128 on latents [8, 8, 4] read as a latent run
           reads them: a `data.latents_source` folder (60,000 random posteriors, as
           encode.py writes them) whose iterator draws z ~ q(z | x) for every batch.
Timed, in blocks of --steps calls (the JAX results blocked on at the end of a block,
so that calls queue as they do in train.py); in each of --repeats rounds every variant
times one block, so that a drift in the machine's load hits all alike; printed per
step, the median block, and each ratio as the median over rounds of its ratio within a
round:
  bare gradient  jax.grad of the objective's mean loss, dropout on, jitted with the same
                 `models.compiler_options()`, on a fixed batch: the floor of any step;
  full step      the step train.py runs (`jaxdiff.train.trainer.step_parts`: clip, AdamW,
                 EMA, metrics; the state donated and rebound every call) on the same
                 fixed batch;
  full, pipeline (digits, latent) the same step fed as train.py feeds it: data.make_iterator ->
                 np.stack -> sharding.global_batch -> step; the pipeline's host time
                 alone (no step) is printed beside the ratio;
  full, mesh     (with --mesh) the full step on that mesh of simulated CPU devices (their
                 count set before JAX starts), the others on one of them: on the same
                 cores, the ratio is what sharding costs, not a speed-up;
  pytorch        (unless --no-peer; needs torch and diffusers) the same network as a
                 diffusers UNet2DModel (`diffusers_kwargs`: block types, groups, Ho et
                 al.'s time embedding; parameter counts checked equal),
                 trained eagerly with the same recipe on the same fixed batch: EDM's
                 sigma, preconditioning and weighted x0 error written in torch (or
                 L_simple on jaxdiff's alpha_bar table for a DDPM config, as
                 gpu_train_speed.py's), clip_grad_norm_, torch.optim.AdamW
                 with the same schedule (LambdaLR), the warmed-up EMA (torch._foreach_lerp_),
                 --torch-threads intra-op threads (default: the CPU count).
With --convolutions, also the network's convolutions (found in the loss's jaxpr), each
timed alone in XLA (as the step compiles them) and in PyTorch (aten's convolution and
convolution_backward, NCHW, as autograd calls them): forward, input gradient, kernel
gradient and both gradients in one call (as the backward passes compute them); their
sum per step, and the rest of each step; and, as a check of the sum, the time
torch.profiler counts in PyTorch's convolutions inside its step. XLA's own profile
cannot give that time: its convolutions run as Eigen tasks that the profiler does not
trace.
By default the process keeps XLA:CPU's temporaries mapped between calls, as train.py
does (`jaxdiff.train.host_memory`; PyTorch, in the same process, runs with the same
malloc settings); --no-host-memory times JAX's and glibc's defaults.
Printed: seconds/step, steps/s and images/s of each, and the CPU time the process got
per step (all threads: up to the CPU count times the wall time on an idle machine, less
on a busy one); the ratios full / bare (goal <= 1.10), pipeline / fixed (goal <= 1.05;
below 1 is noise) and jaxdiff / PyTorch images/s (goal >= 1), in wall time and in CPU
time; the first call's time (trace, compile, one step; not timed); the load average
before and after the timed blocks; versions and the CPU (the same command runs at
different speeds on different CPUs).

On a CPU shared with other work (load average above the CPU count) PyTorch's OpenMP
threads spin at each barrier while the thread they wait for is descheduled: its step
then slows down by 10-30x (measured on this project's 2-core machines: 7.3 s instead of
0.34 s for the digits forward and backward pass), while XLA's thread pool slows down in
proportion to the load. Run with OMP_WAIT_POLICY=PASSIVE (read when torch is imported)
or --torch-threads 1 there; a note under the ratios says when PyTorch looks hit.
"""

import argparse
import collections
import functools
import json
import math
import os
import pathlib
import platform
import statistics
import sys
import time


def _mesh_flag():
  """--mesh's JSON, read before JAX starts: its devices are simulated on the CPU."""
  for i, arg in enumerate(sys.argv):
    if arg.startswith("--mesh"):
      return json.loads(arg.partition("=")[2] or sys.argv[i + 1])
  return None


MESH = _mesh_flag()
if MESH is not None:
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_"
                             f"device_count={math.prod(n for n in MESH.values() if n > 0)}")

import jax  # noqa: E402
import jax.extend  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np

from jaxdiff import data, models, parameterization, peers, schedules
from jaxdiff.train import experiment, host_memory, optim, sharding, trainer

# configs/ and benchmarks/ are not installed with jaxdiff: import them from this checkout.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from configs import digits  # pylint: disable=wrong-import-position

GOAL_FULL_OVER_BARE = 1.10
GOAL_PIPELINE = 0.05
MODELS = {"digits": (128, 10), "cifar10": (8, 2), "latent": (128, 10)}
LATENT_SHAPE = (8, 8, 4)  # name: (batch size, default --steps)


def diffusers_kwargs(model, size):
  """A jaxdiff UNet of Ho et al.'s blocks (no resblock_updown, scale_shift_norm or
  skip_rescale) as diffusers UNet2DModel keyword arguments, for images of height `size`:
  the same widths, levels with attention, groups and Ho et al.'s time embedding
  (flip_sin_to_cos=False, freq_shift=1); the dropout is the jaxdiff model's."""
  attention = [size >> level in model.attn_resolutions for level in range(len(model.ch_mult))]
  return dict(
      sample_size=size, in_channels=model.channels, out_channels=model.channels,
      block_out_channels=tuple(model.ch * m for m in model.ch_mult),
      down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attention),
      up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention)),
      layers_per_block=model.num_res_blocks, downsample_padding=0, flip_sin_to_cos=False,
      freq_shift=1, norm_eps=model.norm_eps, norm_num_groups=model.num_groups,
      attention_head_dim=None, act_fn="silu", dropout=model.dropout)


def seconds_per_step(calls, steps, repeats):
  """({name: [repeats] wall times per step}, {name: [repeats] CPU times per step}) for calls
  {name: (fn, sync)}: each block times `steps` calls fn(), then sync of the last result,
  divided by steps, in wall time and in this process's CPU time (all its threads); one
  warm-up block each, then the blocks take turns, so that the blocks of one round see the
  same load."""
  wall, cpu = {name: [] for name in calls}, {name: [] for name in calls}
  for _ in range(repeats + 1):
    for name, (fn, sync) in calls.items():
      start, start_cpu = time.perf_counter(), time.process_time()
      for _ in range(steps):
        out = fn()
      sync(out)
      wall[name].append((time.perf_counter() - start) / steps)
      cpu[name].append((time.process_time() - start_cpu) / steps)
  return ({name: t[1:] for name, t in wall.items()}, {name: t[1:] for name, t in cpu.items()})


def median_ratio(a, b):
  """The median over rounds of a[i] / b[i]: blocks of one round saw the same load."""
  return statistics.median(x / y for x, y in zip(a, b))


def build(name):
  """(Experiment, data source or None, fixed local batches {"image": [k, B, ...], "label":
  [k, B]}) of the model `name`."""
  config = digits.get_config()
  if name == "digits":
    source = data.make_source(config.data.source, **config.data.options)
    spec = experiment.DataSpec.of(source)
  elif name == "latent":
    source = latents_source(60000)
    spec = experiment.DataSpec.of(source)
  else:  # Ho et al.'s CIFAR-10 U-Net (UNet()'s defaults) on random data, same recipe.
    config.batch_size = MODELS[name][0]
    config.model.options = ml_collections.ConfigDict({})
    source, spec = None, experiment.DataSpec((32, 32, 3), 0, True)
  exp = experiment.Experiment.from_config(config, spec)
  run = exp.run
  if source is not None:
    iterator = data.make_iterator(source, batch_size=run.batch_size, seed=run.seed + 1)
    local = [next(iterator) for _ in range(run.steps_per_call)]
  else:
    rng = np.random.default_rng(run.seed)
    local = [{"image": rng.uniform(-1, 1, (run.batch_size, *spec.shape)).astype(np.float32),
              "label": np.zeros(run.batch_size, np.int32)} for _ in range(run.steps_per_call)]
  return exp, source, jax.tree.map(lambda *x: np.stack(x), *local)


def latents_source(num):
  """A data.latents_source of num random posteriors [num, *LATENT_SHAPE[:2], 8] in a
  temporary folder, laid out as encode.py writes it."""
  import tempfile  # pylint: disable=import-outside-toplevel

  folder = pathlib.Path(tempfile.mkdtemp(prefix="train_speed-latents-"))
  rng = np.random.default_rng(0)
  h, w, c = LATENT_SHAPE
  posterior = np.concatenate([rng.standard_normal((num, h, w, c)),
                              rng.uniform(-6, -2, (num, h, w, c))], -1).astype(np.float32)
  np.save(folder / data.LATENTS, posterior)
  np.save(folder / data.LATENT_LABELS, rng.integers(0, 10, num).astype(np.int32))
  autoencoder = {"checkpoint": "", "params": "", "data": None, "fingerprint": "",
                 "scaling_factor": 1.0, "shift_factor": 0.0, "image_shape": [32, 32, 1],
                 "latent_shape": list(LATENT_SHAPE)}
  (folder / data.LATENTS_RECORD).write_text(json.dumps(
      {"autoencoder": autoencoder, "num": num, "shape": list(LATENT_SHAPE), "num_classes": 10,
       "stored": data.STORED}))
  return data.make_source("latents", path=folder)


def jaxdiff_calls(exp, source, local_batches):
  """{"bare gradient", "full step"[, "full, pipeline"][, "full, mesh"]: (fn, sync)}, built
  as trainer.train builds its step; prints the parameter count and the first calls' times."""
  run = exp.run
  mesh = sharding.make_mesh({"data": 1}, jax.devices()[:1])
  sharding.check_batch_size(mesh, run.batch_size)
  init, state_sharding, train_step = trainer.step_parts(exp, mesh)  # As trainer.train.
  batch_sharding = sharding.batch_sharding(mesh)
  state = jax.jit(init, out_shardings=state_sharding)()
  fixed = sharding.global_batch(local_batches, batch_sharding)  # [k, B, ...]

  # The bare gradient: what make_train_step differentiates, on batch 0 of the same batches.
  def loss_fn(params, batch, key):
    key_loss, key_dropout = jax.random.split(key)
    cond = batch["label"] if exp.conditional else None
    loss, _ = exp.objective.loss(models.network_fn(exp.model, params, key_dropout),
                                 batch["image"], key_loss, cond)
    return jnp.mean(loss)

  grad_fn = jax.jit(jax.grad(loss_fn), compiler_options=models.compiler_options())
  batch0 = jax.tree.map(lambda b: b[0], fixed)
  key = jax.random.PRNGKey(1)
  params = jax.tree.map(jnp.copy, state.params)

  start = time.perf_counter()
  jax.block_until_ready(grad_fn(params, batch0, key))
  first_grad = time.perf_counter() - start
  holder = [state]
  start = time.perf_counter()
  holder[0], _ = train_step(holder[0], fixed)
  jax.block_until_ready(holder[0])
  first_step = time.perf_counter() - start
  donated = all(leaf.is_deleted() for leaf in jax.tree.leaves(state))
  print(f"  jaxdiff: {models.num_params(state.params):,} parameters, batch {run.batch_size}, "
        f"{run.steps_per_call} step(s) per call, on {jax.devices()[0]} (mesh {dict(mesh.shape)}),"
        f" compiler options {models.compiler_options()}\n"
        f"  first call (trace, compile, one step; not timed): bare gradient {first_grad:.1f} s,"
        f" full step {first_step:.1f} s; state donated: {'yes' if donated else 'NO'}")

  def full_fixed():
    holder[0], metrics = train_step(holder[0], fixed)  # The state is donated: rebind it.
    return metrics

  calls = {"bare gradient": (lambda: grad_fn(params, batch0, key), jax.block_until_ready),
           "full step": (full_fixed, jax.block_until_ready)}
  if source is not None:
    # As trainer.train: the run's iterator, k batches stacked, assembled over the mesh.
    iterator = data.make_iterator(source, batch_size=run.batch_size, seed=run.seed,
                                  process_index=jax.process_index(),
                                  process_count=jax.process_count(),
                                  random_flip=run.data.random_flip)

    def full_pipeline():
      local = [next(iterator) for _ in range(run.steps_per_call)]
      batches = sharding.global_batch(jax.tree.map(lambda *x: np.stack(x), *local),
                                      batch_sharding)
      holder[0], metrics = train_step(holder[0], batches)
      return metrics

    calls["full, pipeline"] = (full_pipeline, jax.block_until_ready)
  if MESH is not None:
    calls["full, mesh"] = mesh_call(exp, local_batches)
  return calls, models.num_params(state.params)


def mesh_call(exp, local_batches):
  """(fn, sync) of the full step on --mesh's simulated devices, as trainer.train builds it."""
  mesh = sharding.make_mesh(MESH)
  sharding.check_batch_size(mesh, exp.run.batch_size)
  init, state_sharding, train_step = trainer.step_parts(exp, mesh)
  holder = [jax.jit(init, out_shardings=state_sharding)()]
  fixed = sharding.global_batch(local_batches, sharding.batch_sharding(mesh))
  start = time.perf_counter()
  holder[0], _ = train_step(holder[0], fixed)
  jax.block_until_ready(holder[0])
  print(f"  full, mesh: the same step on mesh {dict(mesh.shape)} of {mesh.size} simulated CPU "
        f"devices; first call {time.perf_counter() - start:.1f} s")

  def call():
    holder[0], metrics = train_step(holder[0], fixed)
    return metrics

  return call, jax.block_until_ready


def pytorch_calls(exp, local_batches, num_params, threads, device="cpu", bfloat16=False):
  """{"pytorch": (fn, sync)}: exp's network as diffusers' UNet2DModel (`diffusers_kwargs`)
  trained with exp's recipe on batch 0, with `threads` intra-op threads, on a torch device
  ("cpu", "cuda"), under bfloat16 autocast if asked (float32 master weights, as jaxdiff's
  model.dtype). The recipes: EDM (configs/digits.py) and L_simple on a discrete DDPM
  (configs/cifar10_ddpm.py)."""
  torch, diffusers = peers.import_peers()
  torch.set_num_threads(threads)
  torch.manual_seed(0)
  size = local_batches["image"].shape[2]  # [k, B, H, W, C]
  model = diffusers.UNet2DModel(**diffusers_kwargs(exp.model, size)).to(device)
  count = sum(p.numel() for p in model.parameters())
  if count != num_params:
    raise ValueError(f"diffusers' UNet2DModel has {count:,} parameters, jaxdiff's {num_params:,}:"
                     " not the same network")
  params = list(model.parameters())
  ema = [p.detach().clone() for p in params]
  config, run = exp.optimizer, exp.run
  optimizer = torch.optim.AdamW(params, lr=config.learning_rate, betas=(config.b1, config.b2),
                                eps=config.eps, weight_decay=config.weight_decay)
  # The same learning rate at every step: jaxdiff's schedule, tabulated.
  table = np.asarray(jax.vmap(optim.learning_rate_schedule(config, run.num_steps))(
      jnp.arange(run.num_steps + 1))) / config.learning_rate
  scheduler = torch.optim.lr_scheduler.LambdaLR(
      optimizer, lambda n: float(table[min(n, run.num_steps)]))
  x0 = torch.from_numpy(np.asarray(local_batches["image"][0]).transpose(0, 3, 1, 2).copy()
                        ).to(device)
  loss_fn = _torch_loss(exp.objective, model, x0, torch)
  decay, warmup = exp.ema_decays[0], exp.ema_warmup
  updates = [0]
  print(f"  pytorch: diffusers {diffusers.__version__} UNet2DModel, {num_params:,} "
        f"parameters (equal), torch {torch.__version__}, {torch.get_num_threads()} threads "
        f"(OMP_WAIT_POLICY {os.environ.get('OMP_WAIT_POLICY', 'unset')}), eager "
        f"{'bfloat16 autocast' if bfloat16 else 'float32'} on {device}")

  def train_step():
    model.train()
    with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=bfloat16):
      loss = loss_fn()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
    optimizer.step()
    scheduler.step()
    # EMA: e <- d e + (1 - d) p with d = min(decay, (1 + n) / (10 + n)), optim.ema_decay.
    d = min(decay, (1 + updates[0]) / (10 + updates[0])) if warmup else decay
    with torch.no_grad():
      torch._foreach_lerp_(ema, params, 1.0 - d)  # pylint: disable=protected-access
    updates[0] += 1
    return loss.detach(), grad_norm

  sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
  return {"pytorch": (train_step, lambda _: sync())}


def _torch_loss(objective, model, x0, torch):
  """() -> the batch's mean loss as jaxdiff's objective defines it, in torch, with fresh
  draws each call: EDM's (Karras et al. 2022, table 1 and eq. 8) or Ho et al.'s L_simple."""
  process, batch, device = objective.process, x0.shape[0], x0.device
  if isinstance(process, schedules.EDM) and objective.preconditioning == "edm":
    sigma_data = parameterization.EDM_SIGMA_DATA

    def edm_loss():
      # ln sigma ~ N(P_mean, P_std^2), x_t = x0 + sigma eps, D = c_skip x_t + c_out F(c_in
      # x_t, c_noise), loss = lambda(sigma) |D - x0|^2 (mean over pixels, then the batch).
      sigma = torch.exp(process.p_mean + process.p_std * torch.randn(batch, device=device))
      s = sigma.view(-1, 1, 1, 1)
      x_t = x0 + s * torch.randn_like(x0)
      norm = torch.sqrt(s**2 + sigma_data**2)
      out = model(x_t / norm, torch.log(sigma) / 4).sample.float()
      denoised = sigma_data**2 / norm**2 * x_t + s * sigma_data / norm * out
      weight = (sigma**2 + sigma_data**2) / (sigma * sigma_data)**2
      return torch.mean(weight * torch.mean(torch.square(denoised - x0), dim=(1, 2, 3)))

    return edm_loss
  if (isinstance(process, schedules.DiscreteDDPM) and objective.prediction == "eps"
      and objective.target == "eps" and objective.weighting == "none"
      and objective.preconditioning == "none"):
    num_train = process.num_steps
    # alpha_bar_i at t_i = i / T, i = 1..T: diffusers' step n = i - 1.
    alpha_bar = np.square(np.asarray(process.alpha(jnp.arange(1, num_train + 1) / num_train)))
    sqrt_ab = torch.from_numpy(np.sqrt(alpha_bar).astype(np.float32)).to(device)
    sqrt_1mab = torch.from_numpy(np.sqrt(1 - alpha_bar).astype(np.float32)).to(device)

    def simple_loss():
      # L_simple: n uniform over 0 .. T - 1, x_t = sqrt(alpha_bar) x0 + sqrt(1 - alpha_bar) eps.
      n = torch.randint(0, num_train, (batch,), device=device)
      eps = torch.randn_like(x0)
      x_t = sqrt_ab[n].view(-1, 1, 1, 1) * x0 + sqrt_1mab[n].view(-1, 1, 1, 1) * eps
      return torch.nn.functional.mse_loss(model(x_t, n).sample.float(), eps)

    return simple_loss
  raise ValueError(f"the PyTorch peer trains EDM or L_simple on a discrete DDPM, not "
                   f"{type(process).__name__} with {objective}")


def forward_convolutions(exp, local_batches):
  """({(lhs shape, rhs shape, params): count}, their FLOPs) of the convolutions in one loss
  evaluation of exp's network on batch 0 (jax.make_jaxpr, nested jaxprs included)."""
  batch = jax.tree.map(lambda b: jnp.asarray(b[0]), local_batches)
  init, _, _ = trainer.step_parts(exp, sharding.make_mesh({"data": 1}, jax.devices()[:1]))
  params = jax.eval_shape(init).params

  def loss(params):
    key_loss, key_dropout = jax.random.split(jax.random.PRNGKey(1))
    cond = batch["label"] if exp.conditional else None
    return jnp.mean(exp.objective.loss(models.network_fn(exp.model, params, key_dropout),
                                       batch["image"], key_loss, cond)[0])

  found, flops = collections.Counter(), [0]

  def visit(jaxpr):
    for eqn in jaxpr.eqns:
      if eqn.primitive is jax.lax.conv_general_dilated_p:
        lhs, rhs = (v.aval.shape for v in eqn.invars)
        found[(lhs, rhs, tuple(sorted(eqn.params.items())))] += 1
        # A multiply-add per output element and kernel element of one output feature.
        flops[0] += 2 * math.prod(eqn.outvars[0].aval.shape) * math.prod(rhs) // rhs[-1]
    for sub in jax.extend.core.subjaxprs(jaxpr):
      visit(sub)

  visit(jax.make_jaxpr(loss)(params).jaxpr)
  return found, flops[0]


def convolution_seconds(convolutions, steps, repeats, torch=None, threads=None):
  """{"forward", "input gradient", "kernel gradient", "both gradients": seconds per step}:
  every convolution of `convolutions` (forward_convolutions) timed alone, in each direction
  and with both gradients in one call (as the backward passes compute them), times its count;
  in XLA (jitted with models.compiler_options(), as the step) or, given torch, in PyTorch
  (NCHW, aten's convolution and convolution_backward, as autograd calls them). The first
  convolution's input gradient, which neither step needs, is counted in both."""
  totals = collections.Counter()
  for (lhs_shape, rhs_shape, items), count in convolutions.items():
    kw = dict(items)
    x = jax.random.normal(jax.random.PRNGKey(0), lhs_shape)
    w = jax.random.normal(jax.random.PRNGKey(1), rhs_shape)
    conv = functools.partial(jax.lax.conv_general_dilated_p.bind, **kw)
    g = jax.random.normal(jax.random.PRNGKey(2), jax.eval_shape(conv, x, w).shape)
    if torch is None:
      jit = functools.partial(jax.jit, compiler_options=models.compiler_options())
      grads = lambda x, w, g: jax.vjp(conv, x, w)[1](g)
      fns = {"forward": functools.partial(jit(conv), x, w),
             "input gradient": functools.partial(jit(lambda *a: grads(*a)[0]), x, w, g),
             "kernel gradient": functools.partial(jit(lambda *a: grads(*a)[1]), x, w, g),
             "both gradients": functools.partial(jit(grads), x, w, g)}
      sync = jax.block_until_ready
    else:
      fns = _torch_convolution(kw, x, w, g, torch, threads, np.asarray(jax.jit(conv)(x, w)))
      sync = lambda _: None
    times, _ = seconds_per_step({d: (f, sync) for d, f in fns.items()}, steps, repeats)
    for direction, t in times.items():
      totals[direction] += count * statistics.median(t)
  return totals


def _torch_convolution(kw, x, w, g, torch, threads, expected):
  """{direction: fn} of one convolution (jax params kw on NHWC x, HWIO w, NHWC g) in torch,
  checked to give XLA's forward result `expected`."""
  numbers = kw["dimension_numbers"]
  if (numbers.lhs_spec, numbers.rhs_spec, numbers.out_spec) != ((0, 3, 1, 2), (3, 2, 0, 1),
                                                                (0, 3, 1, 2)):
    raise ValueError(f"not an NHWC/HWIO convolution: {numbers}")
  if kw["feature_group_count"] != 1 or set(kw["lhs_dilation"]) | set(kw["rhs_dilation"]) != {1}:
    raise ValueError("only ungrouped, undilated convolutions are timed in PyTorch")
  torch.set_num_threads(threads)
  nchw = lambda a, axes: torch.from_numpy(np.asarray(a).transpose(axes).copy())
  x, w, g = nchw(x, (0, 3, 1, 2)), nchw(w, (3, 2, 0, 1)), nchw(g, (0, 3, 1, 2))
  # torch's convolution pads both sides of a dimension alike; jax's padding may differ
  # ((0, 1) for the stride-2 downsampler): pad x beforehand there, as diffusers does.
  (top, bottom), (left, right) = kw["padding"]
  padding = [top, left]
  if (top, left) != (bottom, right):
    x, padding = torch.nn.functional.pad(x, (left, right, top, bottom)), [0, 0]
  stride, zeros, ones = list(kw["window_strides"]), [0, 0], [1, 1]
  backward = lambda mask: torch.ops.aten.convolution_backward(
      g, x, w, None, stride, padding, ones, False, zeros, 1, mask)
  forward = lambda: torch.ops.aten.convolution(x, w, None, stride, padding, ones, False, zeros,
                                               1)
  if not np.allclose(forward().numpy().transpose(0, 2, 3, 1), expected, rtol=1e-4, atol=1e-3):
    raise ValueError(f"PyTorch's convolution differs from XLA's: {kw}")
  return {"forward": forward, "input gradient": lambda: backward([True, False, False]),
          "kernel gradient": lambda: backward([False, True, False]),
          "both gradients": lambda: backward([True, True, False])}


def pipeline_seconds(exp, source, steps=50):
  """Median host time of one call's input as trainer.train makes it (iterator -> stack ->
  global_batch, blocked on), without the step."""
  run = exp.run
  iterator = data.make_iterator(source, batch_size=run.batch_size, seed=run.seed + 2,
                                random_flip=run.data.random_flip)
  batch_sharding = sharding.batch_sharding(sharding.make_mesh({"data": 1}, jax.devices()[:1]))
  times = []
  for _ in range(steps + 1):
    start = time.perf_counter()
    local = [next(iterator) for _ in range(run.steps_per_call)]
    jax.block_until_ready(sharding.global_batch(jax.tree.map(lambda *x: np.stack(x), *local),
                                                batch_sharding))
    times.append(time.perf_counter() - start)
  return statistics.median(times[1:])


def print_ratio(label, times, cpu, over, under, goal, met):
  """One ratio line: times[over] / times[under] in wall time (the goal's) and CPU time;
  goal None: no goal."""
  ratio = median_ratio(times[over], times[under])
  verdict = f" (goal {goal}: {'met' if met(ratio) else 'missed'})" if goal else ""
  print(f"    {label} = {ratio:.3f} ({median_ratio(cpu[over], cpu[under]):.3f} in CPU time)"
        f"{verdict}")


def benchmark(name, args):
  """Times one model's variants; prints the table and the ratios."""
  batch, default_steps = MODELS[name]
  steps = args.steps or default_steps
  print(f"\n{name}:")
  exp, source, local_batches = build(name)
  calls, num_params = jaxdiff_calls(exp, source, local_batches)
  if args.peer:
    try:
      calls.update(pytorch_calls(exp, local_batches, num_params,
                                 args.torch_threads))
    except ImportError as error:
      print(f"  pytorch: skipped ({error})")
  load_before = os.getloadavg()[0]
  times, cpu = seconds_per_step(calls, steps, args.repeats)
  load_after = os.getloadavg()[0]
  print(f"  median of {args.repeats} blocks of {steps} steps (load average {load_before:.1f} "
        f"before, {load_after:.1f} after, on {os.cpu_count()} CPUs; CPU s: this process's "
        "CPU time, all threads):")
  print(f"    {'':16s} {'s/step':>8s} {'steps/s':>8s} {'images/s':>9s} {'CPU s/step':>11s}")
  for what, t in times.items():
    seconds = statistics.median(t)
    print(f"    {what:16s} {seconds:8.4f} {1 / seconds:8.2f} {batch / seconds:9.1f} "
          f"{statistics.median(cpu[what]):11.4f}")
  print("  ratios, each the median over rounds of its ratio within a round:")
  print_ratio("full / bare", times, cpu, "full step", "bare gradient",
              f"<= {GOAL_FULL_OVER_BARE:.2f}", lambda r: r <= GOAL_FULL_OVER_BARE)
  if "full, pipeline" in times:
    print_ratio("pipeline / fixed", times, cpu, "full, pipeline", "full step",
                f"<= {1 + GOAL_PIPELINE:.2f}", lambda r: r <= 1 + GOAL_PIPELINE)
    host = pipeline_seconds(exp, source)
    print(f"      the pipeline alone (iterator -> stack -> global_batch, no step): "
          f"{host * 1e3:.2f} ms per step, {host / statistics.median(times['full step']):.1%} "
          "of the full step")
  if "full, mesh" in times:
    print_ratio("mesh / one device, s/step", times, cpu, "full, mesh", "full step",
                None, None)
  if "pytorch" in times:
    print_ratio("jaxdiff / PyTorch images/s", times, cpu, "pytorch", "full step", ">= 1",
                lambda r: r >= 1)
    slow = statistics.median(times["pytorch"]) > 2 * statistics.median(times["full step"])
    if (slow and max(load_before, load_after) > os.cpu_count() and args.torch_threads > 1
        and os.environ.get("OMP_WAIT_POLICY", "").upper() != "PASSIVE"):
      print(f"    (the machine is busy: PyTorch's {args.torch_threads} OpenMP threads spin at "
            "every barrier while the thread they wait for is descheduled, which can slow it "
            "down many times over; compare with OMP_WAIT_POLICY=PASSIVE or --torch-threads 1)")
  if args.convolutions:
    print_convolutions(exp, local_batches, calls, times, args)


def print_convolutions(exp, local_batches, calls, times, args):
  """The step's convolutions timed alone in XLA and PyTorch, and PyTorch's profile of its
  step (XLA's profile cannot tell: Eigen runs the convolutions in untraced tasks)."""
  convolutions, flops = forward_convolutions(exp, local_batches)
  rows = {"jaxdiff": ("full step", convolution_seconds(convolutions, 10, args.repeats))}
  if "pytorch" in times:
    torch, _ = peers.import_peers()
    rows["pytorch"] = ("pytorch", convolution_seconds(convolutions, 10, args.repeats, torch,
                                                      args.torch_threads))
  print(f"  its {sum(convolutions.values())} convolutions ({len(convolutions)} shapes; "
        f"{flops / 1e9:.2f} GFLOP in each direction), each timed alone on random data "
        f"(median of {args.repeats} blocks of 10 calls), ms per step; all = forward + both "
        "gradients, the rest = the step - all:")
  directions = ("forward", "input gradient", "kernel gradient", "both gradients")
  print(f"    {'':8s}" + "".join(f"{d:>16s}" for d in directions) +
        f"{'all':>8s}{'GFLOP/s':>9s}{'its step':>10s}{'the rest':>10s}")
  for name, (step_name, seconds) in rows.items():
    total = seconds["forward"] + seconds["both gradients"]
    step_seconds = statistics.median(times[step_name])
    print(f"    {name:8s}" + "".join(f"{seconds[d] * 1e3:16.1f}" for d in directions) +
          f"{total * 1e3:8.1f}{3 * flops / total / 1e9:9.0f}{step_seconds * 1e3:10.1f}"
          f"{(step_seconds - total) * 1e3:10.1f}")
  if "pytorch" in times:
    # Wall time inside each convolution call (its OpenMP threads joined), summed.
    train_step = calls["pytorch"][0]
    train_step()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
      start = time.perf_counter()
      for _ in range(10):
        train_step()
      seconds = (time.perf_counter() - start) / 10
    ops = {e.key: e for e in profile.key_averages()
           if e.key in ("aten::convolution", "aten::convolution_backward")}
    inside = sum(e.cpu_time_total for e in ops.values()) / 1e6 / 10
    print(f"    pytorch's step under torch.profiler (10 steps): {seconds * 1e3:.1f} ms, of which "
          f"its convolutions {inside * 1e3:.1f} ms ({inside / seconds:.0%}; "
          f"{sum(e.count for e in ops.values()) // 10} calls a step, forward and backward, "
          "diffusers' 1x1 shortcuts among them)")


def cpu_name() -> str:
  """The CPU's model name, family and model as Linux reports them (or the platform's
  processor string elsewhere): the name alone may be as vague as "AMD EPYC"."""
  try:
    first_cpu = pathlib.Path("/proc/cpuinfo").read_text().split("\n\n")[0]
  except OSError:
    return platform.processor() or "unknown CPU"
  fields = {key.strip(): value.strip() for key, value in
            (line.split(":", 1) for line in first_cpu.splitlines() if ":" in line)}
  return (f"{fields.get('model name', 'unknown CPU')}, family {fields.get('cpu family', '?')}"
          f" model {fields.get('model', '?')}")


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--model", choices=("digits", "cifar10", "latent", "both"),
                      default="both", help="digits: configs/digits.py at batch 128; cifar10: "
                      "UNet() at batch 8; latent: digits' U-Net on encoded latents; both: "
                      "digits and cifar10")
  parser.add_argument("--repeats", type=int, default=5,
                      help="timed blocks per variant; the median is printed")
  parser.add_argument("--steps", type=int, default=None,
                      help="steps per timed block (default: 10 for digits, 2 for cifar10)")
  parser.add_argument("--peer", action=argparse.BooleanOptionalAction, default=True,
                      help="also time PyTorch (--no-peer: jaxdiff only)")
  parser.add_argument("--mesh", type=json.loads, default=None,
                      help='also time the full step on a mesh of simulated CPU devices, e.g. '
                      '\'{"data": 8}\' or \'{"data": 2, "fsdp": 4}\'')
  parser.add_argument("--torch-threads", type=int, default=os.cpu_count(),
                      help="PyTorch's intra-op threads (default: the number of CPUs)")
  parser.add_argument("--convolutions", action="store_true",
                      help="also time the network's convolutions alone, in each direction, "
                      "in XLA and PyTorch, and print the rest of each step")
  parser.add_argument("--host-memory", action=argparse.BooleanOptionalAction, default=True,
                      help="keep XLA:CPU's temporaries mapped between calls, as train.py does "
                      "(jaxdiff.train.host_memory; --no-host-memory: JAX's and glibc's defaults)")
  args = parser.parse_args()
  kept = args.host_memory and host_memory.keep_cpu_temporaries()
  versions = [f"python {platform.python_version()}", f"jax {jax.__version__}"]
  for module in ("jaxlib", "flax", "optax", "torch", "diffusers"):
    try:
      versions.append(f"{module} {__import__(module).__version__}")
    except ImportError:
      pass
  print(f"train_speed: {', '.join(versions)}; {os.cpu_count()} CPUs ({cpu_name()}), load average "
        f"{' '.join(f'{v:.1f}' for v in os.getloadavg())}; XLA:CPU's temporaries "
        f"{'kept mapped between calls (host_memory)' if kept else 'as JAX and glibc handle them'}")
  for name in (("digits", "cifar10") if args.model == "both" else (args.model,)):
    benchmark(name, args)


if __name__ == "__main__":
  main()
