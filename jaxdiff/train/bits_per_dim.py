"""Bits per dimension of a trained network on held-out records, spread over the mesh.

bpd.py (for a checkpoint) and train.py's periodic evaluation (config `bpd`)
share this. Each batch of records is the same host array in every process;
inside one jitted call its rows are split over the mesh's batch axes and:
  * 8-bit images are uniformly dequantized (`likelihood.dequantize`, the key
    drawn per batch) and their log-likelihood computed through the
    probability-flow ODE (`likelihood.ode_log_likelihood`: the divergence
    exact for EXACT_MAX_DIMS dimensions or fewer, else Hutchinson's estimate
    with num_probes Rademacher probes), reported as bits per dimension with
    the +7 of [-1, 1] data (`likelihood.bits_per_dim`); points (2-D toys) in
    bits per dimension without it;
  * for a discrete-time DDPM on 8-bit images, also the variational bound of
    its T steps on the same (not dequantized) images (Ho et al. 2020, eq. 5;
    `losses.vlb_terms`), with its prior, diffusion and decoder terms.
Each record's ODE is solved with its own adaptive steps, so its log-likelihood
does not depend on its batch-mates, and on a mesh equals that on one device up
to the order of float sums.
A class-conditional model is scored on the null class: its unconditional
density.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
from tqdm import tqdm

from jaxdiff import data, likelihood, losses, models, schedules
from jaxdiff.train import generate, sharding
from jaxdiff.train.experiment import Experiment

EXACT_MAX_DIMS = 16
VLB_TERMS = ("prior", "diffusion", "decoder", "total")
# Why a latent model has no bits/dim here (`check_data_space`).
LATENT_REFUSAL = ("bits/dim of a latent model would be in latent space: the density of its "
                  "continuous latents, not of the 8-bit images (the autoencoder's decoder has "
                  "no likelihood), so not comparable with a pixel model's; judge its decoded "
                  "samples with sample.py instead")


def check_data_space(experiment: Experiment) -> None:
  """Refuses a latent model (its data the latents of an autoencoder).

  Raises:
    ValueError saying why (LATENT_REFUSAL).
  """
  if experiment.data.autoencoder is not None:
    raise ValueError(LATENT_REFUSAL)


def divergence_for(experiment: Experiment) -> str:
  """"exact" for EXACT_MAX_DIMS dimensions or fewer, else "hutchinson"."""
  return "exact" if math.prod(experiment.data.shape) <= EXACT_MAX_DIMS else "hutchinson"


def has_vlb(experiment: Experiment) -> bool:
  """Whether the discrete bound applies: a discrete-time DDPM on 8-bit images."""
  return isinstance(experiment.process, schedules.DiscreteDDPM) and experiment.data.eight_bit


def make_batch_fn(experiment: Experiment, mesh, *, num_probes: int = 1,
                  vlb_variance: str = "beta_tilde", rtol: float = likelihood.RTOL,
                  atol: float = likelihood.ATOL):
  """(params, records [B, ...] (uint8 images or float points), key) -> {"log_likelihood" [B],
  "ok" [B], "nfe" [B], and where `has_vlb` the VLB terms [B] in nats ("prior", ...) and
  "vlb_nfe"}, whole in every process. B must be a multiple of the mesh's batch devices.
  rtol, atol: the ODE solver's tolerances (`likelihood.ode_log_likelihood`)."""
  built = experiment
  divergence = divergence_for(built)
  null = built.data.num_classes if built.conditional else None
  rows = NamedSharding(mesh, P(sharding.BATCH_AXES))

  def score(params, records, key):
    records = jax.lax.with_sharding_constraint(records, rows)
    denoise = generate.denoise_fn(built, params)
    labels = None if null is None else jnp.full((records.shape[0],), null, jnp.int32)
    key_data, key_probes, key_vlb = jax.random.split(key, 3)
    x = (likelihood.dequantize(records, key_data) if built.data.eight_bit
         else records.astype(jnp.float32))
    result = likelihood.ode_log_likelihood(
        denoise, built.process, x, key_probes, prediction=built.objective.prediction,
        cond=labels, divergence=divergence, num_probes=num_probes, rtol=rtol, atol=atol)
    out = {name: result[name] for name in ("log_likelihood", "ok", "nfe")}
    if has_vlb(built):
      steps = built.process.num_steps
      bound = losses.vlb_terms(denoise, built.process, data.to_model_space(records), key_vlb,
                               jnp.arange(1, steps + 1) / steps, cond=labels,
                               prediction=built.objective.prediction, variance=vlb_variance)
      out.update({name: bound[name] for name in VLB_TERMS}, vlb_nfe=bound["nfe"])
    return out

  return jax.jit(score, out_shardings=sharding.replicated(mesh),
                 compiler_options=models.compiler_options())


def evaluate(experiment: Experiment, params, source, num: int, key, mesh, *,
             batch_size: int = 64, num_probes: int = 1, vlb_variance: str = "beta_tilde",
             rtol: float = likelihood.RTOL, atol: float = likelihood.ATOL, batch_fn=None,
             progress: bool = True) -> dict:
  """Bits per dimension of the first num records of source, in calls of batch_size
  (rounded up to a multiple of the mesh's batch devices; the last batch padded by
  repeating its last record: one compilation), the batch from record i on with the key
  fold_in(key, i).

  Args:
    batch_fn: a `make_batch_fn` of the same options, to reuse its compilation.

  Returns:
    {"num", "num_dims", "divergence", "num_probes", "rtol", "atol", "bits_per_dim",
    "bits_per_dim_se", "nats", "nfe_mean"} and, where `has_vlb`, "vlb": {"variance", "nfe",
    "<term>_bits_per_dim" for each of VLB_TERMS, "bits_per_dim_se"}.

  Raises:
    ValueError for a num outside [1, len(source)] or a batch_size below 1;
    FloatingPointError naming the records where the ODE solve failed.
  """
  if not 1 <= num <= len(source):
    raise ValueError(f"the number of records must lie in [1, {len(source)}] (the held-out "
                     f"records), got {num}")
  if batch_size < 1:
    raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
  devices = sharding.batch_devices(mesh)
  batch_size = -(-batch_size // devices) * devices
  batch_fn = batch_fn or make_batch_fn(experiment, mesh, num_probes=num_probes,
                                       vlb_variance=vlb_variance, rtol=rtol, atol=atol)
  values, nfes, bounds = [], [], []
  for i in tqdm(range(0, num, batch_size), desc="log-likelihood", unit="batch",
                disable=not progress):
    rows = range(i, min(i + batch_size, num))
    records = np.stack([source[j]["image"] for j in rows]
                       + [source[rows[-1]]["image"]] * (batch_size - len(rows)))
    result = jax.device_get(batch_fn(params, records, jax.random.fold_in(key, i)))
    if not np.all(result["ok"][:len(rows)]):
      raise FloatingPointError(f"the ODE solve failed or turned non-finite in records "
                               f"{rows.start}..{rows.stop - 1}")
    values.append(result["log_likelihood"][:len(rows)])
    nfes.append(result["nfe"][:len(rows)])
    if has_vlb(experiment):
      bounds.append({name: result[name][:len(rows)] for name in VLB_TERMS}
                    | {"nfe": int(result["vlb_nfe"])})
  num_dims = math.prod(experiment.data.shape)
  nats = np.concatenate(values)
  bpd = np.asarray(likelihood.bits_per_dim(nats, num_dims, experiment.data.eight_bit))
  divergence = divergence_for(experiment)
  row = {"num": int(num), "num_dims": num_dims, "divergence": divergence,
         "num_probes": num_probes if divergence != "exact" else 0, "rtol": rtol, "atol": atol,
         "bits_per_dim": float(bpd.mean()), "bits_per_dim_se": _standard_error(bpd),
         "nats": float(nats.mean()), "nfe_mean": float(np.mean(np.concatenate(nfes)))}
  if bounds:  # The bound's terms in bits per dimension, [num] each.
    terms = {name: np.concatenate([b[name] for b in bounds]) / (num_dims * math.log(2))
             for name in VLB_TERMS}
    row["vlb"] = {"variance": vlb_variance, "nfe": bounds[0]["nfe"],
                  **{f"{name}_bits_per_dim": float(v.mean()) for name, v in terms.items()},
                  "bits_per_dim_se": _standard_error(terms["total"])}
  return row


def _standard_error(values):
  return float(np.std(values, ddof=1) / math.sqrt(len(values))) if len(values) > 1 else None
