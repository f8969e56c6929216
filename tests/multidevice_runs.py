"""Training runs on 8 simulated CPU devices, for tests/test_scale.py.

  XLA_FLAGS=--xla_force_host_platform_device_count=8 python3 tests/multidevice_runs.py OUT

The device count is fixed when JAX starts, so these runs live in their own
process; test_scale.py starts it once and compares what it writes to OUT:
  states.npz     the final train state of each run, leaf by leaf ("run/leaf");
  restored.npz   a checkpoint of the 2 x 4 run restored onto other meshes;
                 (states.npz also holds samples, a streamed sampling run's images and
                 statistics, held-out log-likelihoods and a tiny autoencoder's latents of
                 40 digits with their scaling factor, on 8 devices and on 1);
  report.json    the shardings seen, the compiled step's argument bytes and the
                 error messages of bad meshes and batches.
Every run trains the same residual MLP (its 128 x 128 kernels and up are sharded
by FSDP, the rest replicated; dropout on) on the same global batches of a 2-D toy
set: a small network, so that the seven compilations take seconds.
"""

import json
import os
import pathlib
import shutil
import sys

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_force_host_platform_device_count=8")

import jax  # noqa: E402
import numpy as np  # noqa: E402

sys.path[:0] = [str(pathlib.Path(__file__).resolve().parents[1]),
                str(pathlib.Path(__file__).resolve().parent)]
from jaxdiff import data  # noqa: E402
from conftest import point_judge  # noqa: E402
from jaxdiff.models.autoencoder import AutoencoderKL  # noqa: E402
from jaxdiff.train import (bits_per_dim, checkpoint, encode_run, experiment,  # noqa: E402
                           generate, optim, sample_run, sharding, trainer)
from tiny_config import tiny_config  # noqa: E402

NUM_STEPS = 6


def config(dropout=0.1, checkpoint_every=NUM_STEPS, **overrides):
  return tiny_config(
      "toy", num_steps=NUM_STEPS, checkpoint_every=checkpoint_every, log_every=3, sample_every=6,
      keep_checkpoints=2, samples__num=0, optim__schedule="constant", **overrides,
      model__options={"features": 128, "num_blocks": 2, "dropout": dropout})


def build(cfg, source):
  return experiment.Experiment.from_config(cfg, experiment.DataSpec.of(source))


def abstract_state(built, mesh):
  init = built.init_fn(optim.make_optimizer(built.optimizer, built.run.num_steps))
  shapes = jax.eval_shape(init)
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      shapes, sharding.state_sharding(mesh, shapes))


def leaves(state):
  return {jax.tree_util.keystr(path): np.asarray(leaf)
          for path, leaf in jax.tree_util.tree_leaves_with_path(state)}


def error_of(fn, *args):
  try:
    fn(*args)
  except ValueError as e:
    return str(e)
  return None


def main(out):
  out = pathlib.Path(out)
  devices = jax.devices()
  assert len(devices) == 8, devices
  source = data.make_source("toy", name="checkerboard", num_points=512)
  states, restored, report = {}, {}, {}

  def run(name, cfg, mesh_axes, mesh_devices=devices, keep_workdir=False):
    workdir = out / name
    workdir.mkdir()
    built = build(cfg, source)
    mesh = sharding.make_mesh(mesh_axes, mesh_devices)
    trainer.train(built, source, workdir, mesh, show_progress=False)
    state = checkpoint.restore_state(checkpoint.find(workdir), abstract_state(built, mesh))
    states.update({f"{name}/{k}": v for k, v in leaves(state).items()})
    report[f"{name}/sharded_leaves"] = sum(
        not leaf.sharding.is_fully_replicated for leaf in jax.tree.leaves(state))
    if not keep_workdir:
      shutil.rmtree(workdir)
    return built

  # The same 6 steps on one device, 8 data-parallel devices, 2 x 4 and 1 x 8 (FSDP).
  run("one", config(), {"data": 1}, devices[:1])
  run("data8", config(), {"data": 8})
  # (Its step-3 checkpoint is resumed below.)
  built = run("fsdp2x4", config(checkpoint_every=3), {"data": 2, "fsdp": 4}, keep_workdir=True)
  run("fsdp1x8", config(), {"data": 1, "fsdp": 8})
  # Micro-batches (dropout off: its masks are drawn per micro-batch).
  run("one_no_dropout", config(dropout=0.0), {"data": 1}, devices[:1])
  run("accum4_fsdp2x4", config(dropout=0.0, grad_accum=4), {"data": 2, "fsdp": 4})

  # The 2 x 4 run's step-6 checkpoint restored on 1 device and on 4 (FSDP), saved
  # again from 4 and restored on the 2 x 4 mesh: the values must survive every move.
  step_dir = checkpoint.find(out / "fsdp2x4")
  for name, axes, mesh_devices in (("one", {"data": 1}, devices[:1]),
                                   ("fsdp4", {"fsdp": 4}, devices[:4])):
    mesh = sharding.make_mesh(axes, mesh_devices)
    state = checkpoint.restore_state(step_dir, abstract_state(built, mesh))
    restored.update({f"{name}/{k}": v for k, v in leaves(state).items()})
    report[f"restored_{name}/devices"] = sorted({len(leaf.sharding.device_set)
                                                  for leaf in jax.tree.leaves(state)})
  moved = out / "moved"
  manager = checkpoint.manager(moved, keep=1, asynchronous=False)
  iterator = data.make_iterator(source, batch_size=built.run.batch_size, seed=0)
  checkpoint.save(manager, NUM_STEPS, state, iterator, checkpoint.read_run(step_dir))
  manager.close()
  mesh = sharding.make_mesh({"data": 2, "fsdp": 4})
  back = checkpoint.restore_state(checkpoint.find(moved), abstract_state(built, mesh))
  restored.update({f"back/{k}": v for k, v in leaves(back).items()})

  # Samples of the restored EMA on 8 devices and on 1, a deterministic and a stochastic
  # sampler; 20 samples in calls of 16 (the last one padded).
  params = jax.tree.map(np.asarray, back.ema[next(iter(back.ema))])
  x_T = jax.random.normal(jax.random.PRNGKey(1), (20, *source.shape))
  for sampler in ("ddim", "ddpm"):
    plan = generate.plan(built, sampler, 4)
    for name, mesh in (("one", sharding.make_mesh({"data": 1}, devices[:1])),
                       ("data8", sharding.make_mesh({"data": 8}))):
      x_0, _ = generate.sample_in_batches(built, plan, params, x_T, None, jax.random.PRNGKey(2),
                                          16, mesh=mesh, progress=False)
      states[f"samples_{sampler}/{name}"] = x_0

  # A streamed sampling run (jaxdiff.train.sample_run) of the same EMA on 8 devices and on 1:
  # DDPM's per-sample noise, 20 samples in global batches of 16 (the last one padded), judged
  # by a cheap judge whose sums are reduced over the mesh.
  judges = {"points": point_judge(np.random.default_rng(0))}
  job = sample_run.Job(20, 16, 4, save_images=20, keep_features=20, save_every=0)
  for name, mesh in (("one", sharding.make_mesh({"data": 1}, devices[:1])),
                     ("data8", sharding.make_mesh({"data": 8}))):
    result = sample_run.run(built, generate.plan(built, "ddpm", 4), params, job, mesh,
                            judges=judges, progress=False)
    states[f"sample_run_{name}/images"] = result.images
    states[f"sample_run_{name}/x_T"] = result.x_T
    states.update({f"sample_run_{name}/{k}": v
                   for k, v in result.running["points"].arrays().items()})

  # Held-out log-likelihoods of the same EMA, 16 points spread over 8 devices and on 1,
  # under the continuous VP process (the discrete DDPM's interpolated alpha-bar has a kink
  # at each of its 1000 steps, where an adaptive solver's accuracy depends on where its
  # steps fall).
  continuous = build(config(process="vp", process_options={}), source)
  held_out = trainer.held_out_source(continuous)
  points = np.stack([held_out[i]["image"] for i in range(16)])
  for name, mesh in (("one", sharding.make_mesh({"data": 1}, devices[:1])),
                     ("data8", sharding.make_mesh({"data": 8}))):
    score = bits_per_dim.make_batch_fn(continuous, mesh)
    states[f"log_likelihood/{name}"] = np.asarray(score(params, points,
                                                        jax.random.PRNGKey(3))["log_likelihood"])

  # 40 digits encoded by a random tiny autoencoder (8x8x1 -> 4x4x2) on 8 devices and on 1, in
  # global batches of 16 (the last one padded).
  autoencoder = AutoencoderKL(in_channels=1, block_out_channels=(8, 16), layers_per_block=1,
                              latent_channels=2, norm_num_groups=4, scaling_factor=1.0)
  digits = data.make_source("digits", split="test")
  digits = data.ArraySource(np.stack([digits[i]["image"] for i in range(40)]),
                            digits.labels[:40], 10, eight_bit=True, origin="40 digits")
  ae_params = jax.jit(lambda key: autoencoder.init(key, np.zeros((1, 8, 8, 1), np.float32),
                                                   method="encode"))(jax.random.PRNGKey(4))
  ae_params = ae_params["params"]  # Initialised in one compilation, not op by op.
  job = encode_run.Job("digits", {}, batch_size=16)
  for name, mesh in (("one", sharding.make_mesh({"data": 1}, devices[:1])),
                     ("data8", sharding.make_mesh({"data": 8}))):
    (out / f"encode_{name}").mkdir()
    record = encode_run.run(autoencoder, ae_params, {"checkpoint": "", "params": "",
                                                     "data": None},
                            digits, job, mesh, out / f"encode_{name}", progress=False)
    states[f"encode_{name}/latents"] = np.load(out / f"encode_{name}" / data.LATENTS)
    states[f"encode_{name}/labels"] = np.load(out / f"encode_{name}" / data.LATENT_LABELS)
    states[f"encode_{name}/scaling_factor"] = record["autoencoder"]["scaling_factor"]

  # Resumed on another mesh: the 2 x 4 run's step-3 checkpoint continued on 1 device.
  shutil.rmtree(step_dir)
  trainer.train(built, source, out / "fsdp2x4", sharding.make_mesh({"data": 1}, devices[:1]),
                show_progress=False)
  state = checkpoint.restore_state(checkpoint.find(out / "fsdp2x4"),
                                   abstract_state(built, sharding.make_mesh({"data": 1},
                                                                            devices[:1])))
  states.update({f"resumed_on_one/{k}": v for k, v in leaves(state).items()})

  # The compiled 1 x 8 step's per-device argument bytes against the shardings' count.
  mesh = sharding.make_mesh({"fsdp": 8})
  abstract = abstract_state(built, mesh)
  _, _, train_step = trainer.step_parts(built, mesh)
  batch = {"image": jax.ShapeDtypeStruct((1, built.run.batch_size, *source.shape), np.float32,
                                         sharding=sharding.batch_sharding(mesh)),
           "label": jax.ShapeDtypeStruct((1, built.run.batch_size), np.int32,
                                         sharding=sharding.batch_sharding(mesh))}
  memory = train_step.lower(abstract, batch).compile().memory_analysis()
  report["memory"] = {
      "argument_bytes": memory.argument_size_in_bytes,
      "state_bytes_per_device": sharding.bytes_per_device(abstract,
                                                          jax.tree.map(lambda a: a.sharding,
                                                                       abstract)),
      "batch_bytes_per_device": sharding.bytes_per_device(
          batch, jax.tree.map(lambda a: a.sharding, batch)),
      "state_bytes": sum(a.size * a.dtype.itemsize for a in jax.tree.leaves(abstract))}

  # Bad meshes and batches.
  mesh8 = sharding.make_mesh({"data": 8})
  report["errors"] = {
      "mesh_3": error_of(sharding.make_mesh, {"data": 3}),
      "mesh_fsdp_3": error_of(sharding.make_mesh, {"data": -1, "fsdp": 3}),
      "batch_12": error_of(sharding.check_batch_size, mesh8, 12),
      "batch_32_accum_8": error_of(sharding.check_batch_size, mesh8, 32, 8)}

  np.savez(out / "states.npz", **states)
  np.savez(out / "restored.npz", **restored)
  (out / "report.json").write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
  main(sys.argv[1])
