"""Bits per dimension of a trained model on held-out data, by the probability-flow ODE.

  python3 bpd.py --checkpoint runs/digits                  # 297 held-out digits
  python3 bpd.py --checkpoint runs/digits --num 64 --num-probes 4 --seed 1

The checkpoint (a training workdir, its checkpoints/ folder or one <step>/
folder) gives the process, network and data source. The held-out data is that
source with --data-options over the training ones; by default its "test" split
where it has splits, else new draws (its seed + 1). 8-bit images are uniformly
dequantized, their log-likelihood computed through the probability-flow ODE
(`jaxdiff.likelihood`: diffrax Tsit5 on device, the divergence exact for 16
dimensions or fewer, else the Hutchinson estimate with --num-probes Rademacher
probes) and reported as bits per dimension with the +7 of [-1, 1] data
(`likelihood.bits_per_dim`); points (2-D toys) in nats and bits per dimension
without it. Beside it, for a discrete-time DDPM on 8-bit images, the
variational bound of its T steps on the same (not dequantized) images
(`losses.vlb_terms`, Ho et al. 2020 eq. 5 with the discretized decoder; the
reverse variance from --vlb-variance), in bits per dimension with its prior,
diffusion and decoder terms: an upper bound on the discrete model's
negative log-likelihood, T network calls per image. A class-conditional model is evaluated on the null class: its
unconditional density. Results (mean, standard error, N, NFE) go to a new
folder, by default <training workdir>/bpd-<time>: results.json and results.md.
"""

import inspect
import json
import math
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging
from tqdm import tqdm

from jaxdiff import cli, data, likelihood, losses, schedules, workdir
from jaxdiff.train import checkpoint, experiment, sampling
from jaxdiff.train.step import network_fn

_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "A training workdir, its checkpoints/ "
                                  "folder or one <step>/ folder.", required=True)
_NUM = flags.DEFINE_integer("num", None, "Held-out records to score, the first ones; default all "
                            "of them, at most 1000.")
_BATCH = flags.DEFINE_integer("batch-size", 64, "Records per compiled call.")
_PARAMS = flags.DEFINE_string("params", "ema", "'ema' (the first EMA), 'ema:<decay>' or 'raw'.")
_DATA_OPTIONS = flags.DEFINE_string("data-options", None, "JSON over the training data's "
                                    "options; default the test split, or new draws.")
_PROBES = flags.DEFINE_integer("num-probes", 1, "Hutchinson probes averaged per record.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the dequantization and the probes.")
_VLB_VARIANCE = flags.DEFINE_enum("vlb-variance", "beta_tilde", list(losses.VARIANCES),
                                  "The reverse variance of the discrete VLB (DDPM models): "
                                  "the posterior's (beta_tilde) or the transition's (beta).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Output folder (new); default "
                               "<training workdir>/bpd-<time>.")
EXACT_MAX_DIMS = 16


def held_out_options(kind, options):
  """The training data's options turned to held-out data, and a phrase saying how."""
  if _DATA_OPTIONS.value is not None:
    return {**options, **json.loads(_DATA_OPTIONS.value)}, "--data-options"
  parameters = inspect.signature(data.SOURCES[kind]).parameters
  if "split" in parameters:
    return {**options, "split": "test"}, "the test split"
  if "seed" in parameters:
    seed = options.get("seed", parameters["seed"].default)
    return {**options, "seed": seed + 1}, f"new draws (seed {seed + 1})"
  return options, "the training data itself (the source has no split or seed)"


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # Orbax logs every read at INFO.
  try:
    step_dir = checkpoint.find(_CHECKPOINT.value)
    record = checkpoint.read_run(step_dir)
    config, spec = record["config"], record["data"]
    built = experiment.Experiment.from_config(config, experiment.DataSpec(
        tuple(spec["shape"]), spec["num_classes"], spec["eight_bit"]))
    options, held_out = held_out_options(config["data"]["source"],
                                         config["data"]["options"])
    source = data.make_source(config["data"]["source"], **options)
    num = min(len(source), 1000) if _NUM.value is None else _NUM.value
    if not 1 <= num <= len(source):
      raise ValueError(f"--num must lie in [1, {len(source)}] (the held-out records), got {num}")
    if _BATCH.value < 1 or _PROBES.value < 1:
      raise ValueError("--batch-size and --num-probes must be positive integers")
    params = sampling.load_params(step_dir, built, _PARAMS.value)
  except (ValueError, FileNotFoundError, KeyError) as error:
    raise SystemExit(f"cannot score: {error} (nothing was written)") from None

  num_dims = math.prod(built.data.shape)
  divergence = "exact" if num_dims <= EXACT_MAX_DIMS else "hutchinson"
  cond = built.data.num_classes if built.conditional else None  # The null class.

  @jax.jit
  def log_likelihood(params, x, key):
    denoise = built.objective.denoise_fn(network_fn(built.model, params))
    labels = None if cond is None else jnp.full((x.shape[0],), cond, jnp.int32)
    return likelihood.ode_log_likelihood(
        denoise, built.process, x, key, prediction=built.objective.prediction, cond=labels,
        divergence=divergence, num_probes=_PROBES.value)

  discrete = isinstance(built.process, schedules.DiscreteDDPM) and built.data.eight_bit

  @jax.jit
  def vlb(params, x0, key):
    denoise = built.objective.denoise_fn(network_fn(built.model, params))
    labels = None if cond is None else jnp.full((x0.shape[0],), cond, jnp.int32)
    steps = built.process.num_steps
    times = jnp.arange(1, steps + 1) / steps
    out = losses.vlb_terms(denoise, built.process, x0, key, times, cond=labels,
                           prediction=built.objective.prediction, variance=_VLB_VARIANCE.value)
    return {name: out[name] for name in ("prior", "diffusion", "decoder", "total", "nfe")}

  print(f"scoring {step_dir} on {num} records of {config['data']['source']} ({held_out}): "
        f"{divergence} divergence{'' if divergence == 'exact' else f', {_PROBES.value} probe(s)'}",
        flush=True)
  with workdir.claim(_WORKDIR.value, "bpd", parent=step_dir.parent.parent) as out:
    start = time.perf_counter()
    values, nfes, bounds = [], [], []
    key = jax.random.PRNGKey(_SEED.value)
    for i in tqdm(range(0, num, _BATCH.value), desc="log-likelihood", unit="batch"):
      rows = range(i, min(i + _BATCH.value, num))
      key_data, key_probes, key_vlb = jax.random.split(jax.random.fold_in(key, i), 3)
      # The last batch padded by repeating its last record: one compilation per shape.
      records = np.stack([source[j]["image"] for j in rows]
                         + [source[rows[-1]]["image"]] * (_BATCH.value - len(rows)))
      if built.data.eight_bit:
        x = likelihood.dequantize(records, key_data)
      else:
        x = jnp.asarray(records, jnp.float32)
      if discrete:
        bound = jax.device_get(vlb(params, data.to_model_space(records), key_vlb))
        bounds.append({name: value[:len(rows)] if np.ndim(value) else value
                       for name, value in bound.items()})
      result = log_likelihood(params, x, key_probes)
      if not bool(jnp.all(result["ok"][:len(rows)])):
        raise SystemExit(f"the ODE solve failed or turned non-finite in records {rows.start}.."
                         f"{rows.stop - 1}")
      values.append(np.asarray(result["log_likelihood"])[:len(rows)])
      nfes.append(int(result["nfe"]))
    seconds = time.perf_counter() - start
    nats = np.concatenate(values)
    bpd = np.asarray(likelihood.bits_per_dim(nats, num_dims, built.data.eight_bit))
    row = {"checkpoint": str(step_dir), "data": f"{config['data']['source']} {options}",
           "held_out": held_out, "num": int(num), "num_dims": num_dims,
           "divergence": divergence, "num_probes": _PROBES.value if divergence != "exact" else 0,
           "bits_per_dim": float(bpd.mean()),
           "bits_per_dim_se": float(bpd.std(ddof=1) / math.sqrt(num)) if num > 1 else None,
           "nats": float(nats.mean()), "nfe_mean": float(np.mean(nfes)),
           "seconds": round(seconds, 2)}
    if discrete:  # The bound's terms in bits per dimension, [num] each.
      vlb_bpd = {name: np.concatenate([b[name] for b in bounds]) / (num_dims * math.log(2))
                 for name in ("prior", "diffusion", "decoder", "total")}
      row["vlb"] = {"variance": _VLB_VARIANCE.value, "nfe": int(bounds[0]["nfe"]),
                    **{f"{name}_bits_per_dim": float(v.mean()) for name, v in vlb_bpd.items()},
                    "bits_per_dim_se": (float(vlb_bpd["total"].std(ddof=1) / math.sqrt(num))
                                        if num > 1 else None)}
    (out / "results.json").write_text(json.dumps(row, indent=1))
    se = "" if row["bits_per_dim_se"] is None else f" +- {row['bits_per_dim_se']:.3f}"
    table = ("| data | N | bound | bits/dim | log-likelihood (nats) | NFE | divergence |\n"
             "|---|---|---|---|---|---|---|\n"
             f"| {held_out} | {num} | PF-ODE | {row['bits_per_dim']:.3f}{se} | "
             f"{row['nats']:.2f} | {row['nfe_mean']:.0f} | {divergence} |\n")
    if discrete:
      v = row["vlb"]
      se = "" if v["bits_per_dim_se"] is None else f" +- {v['bits_per_dim_se']:.3f}"
      table += (f"| {held_out} | {num} | discrete VLB ({v['variance']}) | "
                f"{v['total_bits_per_dim']:.3f}{se} | | {v['nfe']} | |\n"
                f"\nVLB terms in bits/dim: prior {v['prior_bits_per_dim']:.2e}, diffusion "
                f"{v['diffusion_bits_per_dim']:.3f}, decoder {v['decoder_bits_per_dim']:.3f}.\n")
    (out / "results.md").write_text(f"# {step_dir}\n\n{table}")
  print(f"{table}\nwritten to {out}")


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
