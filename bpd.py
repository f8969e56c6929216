"""Bits per dimension of a trained model on held-out data, by the probability-flow ODE.

  python3 bpd.py --checkpoint runs/digits                  # 297 held-out digits
  python3 bpd.py --checkpoint runs/digits --num 64 --num-probes 4 --seed 1
  python3 bpd.py --checkpoint runs/digits --num 64 --rtol 1e-3 --atol 1e-3  # faster, biased

The checkpoint (a training workdir, its checkpoints/ folder or one <step>/
folder) gives the process, network and data source. The held-out data is that
source with --data-options over the training ones; by default its "test" split
where it has splits, else new draws (its seed + 1); its records must have the
shape the model was trained on. Each batch is spread over
this machine's devices (`jaxdiff.train.bits_per_dim`, which train.py's
periodic evaluation shares): 8-bit images are uniformly dequantized, their
log-likelihood computed through the probability-flow ODE
(`jaxdiff.likelihood`: diffrax Tsit5 on device, --rtol and --atol its
tolerances, the divergence exact for 16 dimensions or fewer, else the
Hutchinson estimate with --num-probes Rademacher probes) and reported as bits
per dimension with the +7 of [-1, 1] data (`likelihood.bits_per_dim`); points
(2-D toys) in nats and bits per dimension without it. Beside it, for a
discrete-time DDPM on 8-bit images, the variational bound of its T steps on
the same (not dequantized) images (`losses.vlb_terms`, Ho et al. 2020 eq. 5
with the discretized decoder; the reverse variance from --vlb-variance), in
bits per dimension with its prior, diffusion and decoder terms: an upper bound
on the discrete model's negative log-likelihood, T network calls per image. A
class-conditional model is evaluated on the null class: its unconditional
density. Results (mean, standard error, N, NFE) go to a new folder, by default
<training workdir>/bpd-<time>: results.json and results.md.
"""

import json
import time

import jax
from absl import app, flags, logging

from jaxdiff import cli, data, likelihood, losses, workdir
from jaxdiff.train import bits_per_dim, generate, sharding

_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "A training workdir, its checkpoints/ "
                                  "folder or one <step>/ folder.", required=True)
_NUM = flags.DEFINE_integer("num", None, "Held-out records to score, the first ones; default all "
                            "of them, at most 1000.")
_BATCH = flags.DEFINE_integer("batch-size", 64, "Records per compiled call (rounded up to a "
                              "multiple of the devices).")
_PARAMS = cli.define_params()
_DATA_OPTIONS = flags.DEFINE_string("data-options", None, "JSON over the training data's "
                                    "options; default the test split, or new draws.")
_PROBES = flags.DEFINE_integer("num-probes", 1, "Hutchinson probes averaged per record.")
_RTOL = flags.DEFINE_float("rtol", likelihood.RTOL, "The ODE solver's relative tolerance "
                           "(score_sde's 1e-5; looser is faster but biased: see README).")
_ATOL = flags.DEFINE_float("atol", likelihood.ATOL, "The ODE solver's absolute tolerance.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the dequantization and the probes.")
_VLB_VARIANCE = flags.DEFINE_enum("vlb-variance", "beta_tilde", list(losses.VARIANCES),
                                  "The reverse variance of the discrete VLB (DDPM models): "
                                  "the posterior's (beta_tilde) or the transition's (beta).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Output folder (new); default "
                               "<training workdir>/bpd-<time>.")


def markdown(row, held_out):
  """The results as a table: the PF-ODE row, and the VLB row with its terms where present."""
  se = lambda value: "" if value is None else f" +- {value:.3f}"
  header = ["data", "N", "bound", "bits/dim", "log-likelihood (nats)", "NFE", "divergence"]
  rows = [[held_out, row["num"], "PF-ODE",
           f"{row['bits_per_dim']:.3f}{se(row['bits_per_dim_se'])}", f"{row['nats']:.2f}",
           f"{row['nfe_mean']:.0f}", row["divergence"]]]
  notes = f"\nThe PF-ODE solved with rtol {row['rtol']:g}, atol {row['atol']:g}.\n"
  if "vlb" in row:
    v = row["vlb"]
    rows.append([held_out, row["num"], f"discrete VLB ({v['variance']})",
                 f"{v['total_bits_per_dim']:.3f}{se(v['bits_per_dim_se'])}", "", v["nfe"], ""])
    notes += (f"VLB terms in bits/dim: prior {v['prior_bits_per_dim']:.2e}, diffusion "
              f"{v['diffusion_bits_per_dim']:.3f}, decoder {v['decoder_bits_per_dim']:.3f}.\n")
  return workdir.markdown_table(header, rows) + "\n" + notes


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # Orbax logs every read at INFO.
  try:
    if _BATCH.value < 1 or _PROBES.value < 1:
      raise ValueError("--batch-size and --num-probes must be positive integers")
    if not (_RTOL.value > 0 and _ATOL.value > 0):
      raise ValueError(f"--rtol and --atol must be positive, got {_RTOL.value} and "
                       f"{_ATOL.value}")
    generate.check_seed(_SEED.value)
    step_dir, built, params = generate.load(_CHECKPOINT.value, _PARAMS.value)
    bits_per_dim.check_data_space(built)
    kind, options = built.run.data.source, built.run.data.options
    if _DATA_OPTIONS.value is not None:
      options, held_out = ({**options, **cli.json_object(_DATA_OPTIONS, data.SOURCES.get(kind))},
                           "--data-options")
    else:
      options, held_out = data.held_out_options(kind, options)
    source = data.make_source(kind, **options)
    generate.check_data(built, source)
    num = min(len(source), 1000) if _NUM.value is None else _NUM.value
    if not 1 <= num <= len(source):
      raise ValueError(f"--num must lie in [1, {len(source)}] (the held-out records), got {num}")
  except (ValueError, FileNotFoundError, KeyError) as error:
    raise SystemExit(f"cannot score: {error} (nothing was written)") from None

  mesh = sharding.make_mesh({"data": -1})
  divergence = bits_per_dim.divergence_for(built)
  print(f"scoring {step_dir} on {num} records of {kind} ({held_out}) over "
        f"{sharding.batch_devices(mesh)} device(s): {divergence} divergence"
        f"{'' if divergence == 'exact' else f', {_PROBES.value} probe(s)'}", flush=True)
  with workdir.claim(_WORKDIR.value, "bpd", parent=step_dir.parent.parent) as out:
    start = time.perf_counter()
    try:
      result = bits_per_dim.evaluate(
          built, params, source, num, jax.random.PRNGKey(_SEED.value), mesh,
          batch_size=_BATCH.value, num_probes=_PROBES.value, vlb_variance=_VLB_VARIANCE.value,
          rtol=_RTOL.value, atol=_ATOL.value)
    except FloatingPointError as error:
      raise SystemExit(str(error)) from None
    row = {"checkpoint": str(step_dir), "data": f"{kind} {options}", "held_out": held_out,
           **result, "seconds": round(time.perf_counter() - start, 2)}
    (out / "results.json").write_text(json.dumps(row, indent=1))
    table = markdown(row, held_out)
    (out / "results.md").write_text(f"# {step_dir}\n\n{table}")
  print(f"{table}\nwritten to {out}")


if __name__ == "__main__":
  app.run(cli.exit_on_interrupt(main), flags_parser=cli.parse_flags)
