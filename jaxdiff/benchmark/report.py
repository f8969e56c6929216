"""The benchmark's report: rmse tables (markdown), CSV, JSON and rmse-vs-NFE plots.

Rows are the dicts of `runs.run_entry`, one per (oracle, configuration, NFE);
a markdown table pivots them to configurations x NFE, one table per oracle.
"""

import csv
import importlib.metadata
import io
import json
import pathlib

import matplotlib

from jaxdiff import workdir

matplotlib.use("Agg")  # Files only; no display is assumed.
import matplotlib.pyplot as plt  # noqa: E402

def versions():
  """Installed versions of the packages the results depend on (None where absent)."""
  found = {}
  for package in ("jax", "jaxlib", "jaxdiff", "diffrax", "torch", "diffusers"):
    try:
      found[package] = importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
      found[package] = None
  return found


def _configurations(rows):
  """(oracle, label) -> its rows, in first-seen order."""
  groups = {}
  for row in rows:
    groups.setdefault((row["oracle"], row["family"], row["label"]), []).append(row)
  return groups


def _cell(row):
  if row["status"] != "ok":
    return "error"
  return f"{row['rmse']:.3g}" + ("*" if row["stochastic"] else "")


def markdown_table(rows):
  """rmse tables, one per oracle: rows configurations, columns NFE, then the end noise."""
  nfes = sorted({row["nfe"] for row in rows})
  header = ["configuration", *(f"NFE {n}" for n in nfes), "ends at sigma/alpha"]
  tables = []
  for oracle_name in dict.fromkeys(row["oracle"] for row in rows):
    table_rows = []
    for (name, family, label), group in _configurations(rows).items():
      if name != oracle_name:
        continue
      by_nfe = {row["nfe"]: row for row in group}
      ends = {f"{row['sigma_end']:.3g}" for row in group if row["status"] == "ok"}
      table_rows.append([("diffusers " if family == "diffusers" else "") + label,
                         *(_cell(by_nfe[n]) if n in by_nfe else "" for n in nfes),
                         ", ".join(sorted(ends))])
    tables.append(f"### {oracle_name}: rmse to the PF-ODE solution\n\n"
                  + workdir.markdown_table(header, table_rows))
  notes = []
  if any(row["status"] == "ok" and row["stochastic"] for row in rows):
    notes.append("* stochastic sampler: its rmse is not a discretization error of the PF-ODE.")
  if any(row["status"] != "ok" for row in rows):
    notes.append("error: see results.csv for the message.")
  return "\n\n".join(tables) + "\n\n" + " ".join(notes) + "\n"


CSV_COLUMNS = ("oracle", "family", "sampler", "options", "grid", "grid_options", "label", "nfe",
               "nfe_counted", "steps", "status", "error", "rmse", "sw2", "nll", "weight_error",
               "stochastic", "t_start", "t_end", "sigma_end", "compile_s", "run_s", "seed",
               "fit_rmse_init", "fit_rmse", "fit_start", "fit_s", "times")


def results_csv(rows):
  """One line per run; dict and list fields as JSON."""
  out = io.StringIO()
  writer = csv.DictWriter(out, CSV_COLUMNS, extrasaction="ignore")
  writer.writeheader()
  for row in rows:
    writer.writerow({k: json.dumps(v) if isinstance(v, (dict, list)) else v
                     for k, v in row.items()})
  return out.getvalue()


def plot_rmse(rows, path, oracle_name):
  """log-log rmse against NFE, a line per configuration (diffusers peers dashed)."""
  fig, ax = plt.subplots(figsize=(15, 7))
  colors, markers = plt.get_cmap("tab20").colors, "osD^v"
  groups = [(family, label, [r for r in group if r["status"] == "ok"])
            for (name, family, label), group in _configurations(rows).items()
            if name == oracle_name]
  for i, (family, label, ok) in enumerate(g for g in groups if g[2]):
    ax.loglog([row["nfe"] for row in ok], [row["rmse"] for row in ok],
              linestyle="--" if family == "diffusers" else "-", color=colors[i % len(colors)],
              marker=markers[i // len(colors) % len(markers)], markersize=4,
              label=("diffusers " if family == "diffusers" else "") + label)
  nfes = sorted({row["nfe"] for row in rows})
  ax.set_xticks(nfes, [str(n) for n in nfes])
  ax.minorticks_off()
  ax.set(xlabel="NFE", ylabel="rmse to the PF-ODE solution", title=oracle_name)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0),
            ncol=1 if len(ax.get_lines()) <= 24 else 2)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def write_results(out, header, rows):
  """results.md, results.csv, results.json and rmse-<oracle>.png in the folder out."""
  out = pathlib.Path(out)
  (out / "results.md").write_text(
      f"# NFE benchmark\n\n```\n{json.dumps(header, indent=1, default=str)}\n```\n\n"
      + markdown_table(rows))
  (out / "results.csv").write_text(results_csv(rows))
  (out / "results.json").write_text(json.dumps(
      {"header": header, "rows": rows}, indent=1, default=workdir.json_default))
  for oracle_name in dict.fromkeys(row["oracle"] for row in rows):
    plot_rmse(rows, out / f"rmse-{oracle_name}.png", oracle_name)
