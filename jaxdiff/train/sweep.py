"""An evaluation sweep over a training run: checkpoints x parameters x samplers x NFE x
guidance weights, each cell a resumable sampling run, with paired comparisons.

A cell is one (checkpoint step, parameters, sampler, NFE, guidance w): a
`sample_run.run` of the same Job (num, seed, batch) in its own folder
<sweep>/<cell name>/, so a cell killed midway continues from its saved progress.
Every cell uses the same seed, so sample i starts from the same x_T (and label) in
every cell: two cells are paired, sample by sample. A finished cell appends one
row to <sweep>/results.jsonl (`jaxdiff.workdir.append_row`); the same command run
again (or one with more checkpoints or axes) skips the cells that have a row, as
score_sde's EvalMeta skips the evaluated checkpoints. What every cell shares (the
training run, num, seed, batch, judges) is recorded in <sweep>/sweep.json, and a
command that differs in it is refused on that folder.

Everything is checked before anything samples: the checkpoints (`select_steps`), every
cell's plan (sampler, options, NFE, guidance: `generate.plan`) and every parameter
choice, loaded with `generate.load` from each checkpoint that has a cell to run.

Quality is the Frechet distance (Heusel et al. 2017, eq. 6) of the samples' features to
the real data's: Inception-v3's (FID) where the sweep has Inception weights, else the
evaluation classifier's (`jaxdiff.evaluation`). Paired comparisons take two cells that
differ in one axis only and bootstrap the difference of their distances over the
samples, resampling the same sample indices in both
(`metrics.paired_frechet_bootstrap`, on the first keep_features samples, whose
features each cell's progress.npz holds as "<judge>/features").
"""

import dataclasses
import itertools
import json
import pathlib
import re

import jax
import numpy as np

from jaxdiff import evaluation, metrics, plots, streamed, workdir
from jaxdiff.train import checkpoint, generate, latent, sample_run
from jaxdiff.train.experiment import DataSpec, Experiment

SETTINGS = "sweep.json"
AXES = ("step", "params", "sampler", "nfe", "guidance")  # The order of cells and tables.
AXIS_NAMES = {"step": "checkpoint step", "params": "parameters", "sampler": "sampler",
              "nfe": "NFE", "guidance": "guidance w"}


@dataclasses.dataclass(frozen=True, order=True)
class Cell:
  """One sampling run of the sweep."""
  step: int
  params: str
  sampler: str
  nfe: int
  guidance: float

  def folder(self) -> str:
    """Its subfolder's name, e.g. "step1500-ema_0.999-unipc-nfe10-w1"."""
    params = re.sub(r"[^A-Za-z0-9.]", "_", self.params)
    return f"step{self.step}-{params}-{self.sampler}-nfe{self.nfe}-w{self.guidance:g}"

  def plan_key(self) -> tuple:
    """What its compiled sampling step depends on besides the step (grids may be fitted)."""
    return self.step, self.sampler, self.nfe, self.guidance

  @classmethod
  def of(cls, row: dict) -> "Cell":
    return cls(*(type_(row[name]) for name, type_ in zip(AXES, (int, str, str, int, float))))


def select_steps(path, which: str) -> list[pathlib.Path]:
  """The checkpoint folders of a training run (a workdir or its checkpoints/ folder) to
  evaluate, oldest first: "all", "last", or "every:K" (the steps that are multiples of K).

  Raises:
    FileNotFoundError when the folder holds no complete checkpoint; ValueError naming a bad
    `which` or, for every:K, the steps there are.
  """
  found = checkpoint.candidates(path)[::-1]  # FileNotFoundError naming what it looked for.
  if which == "all":
    return found
  if which == "last":
    return found[-1:]
  kind, _, every = which.partition(":")
  if kind != "every" or not every.isdigit() or int(every) < 1:
    raise ValueError(f"--steps must be all, last or every:K with K a positive integer, got "
                     f"{which!r}")
  chosen = [p for p in found if int(p.name) % int(every) == 0]
  if not chosen:
    raise ValueError(f"--steps {which}: no checkpoint step is a multiple of {every}; there are "
                     f"{[int(p.name) for p in found]}")
  return chosen


def judges(experiment, evaluate: str, inception_weights=None) -> dict:
  """{name: streamed.Judge} (`streamed.judges`); at least one.

  Raises:
    ValueError when neither is asked for (a sweep needs a quality figure).
  """
  source, options = latent.image_data(experiment)  # A latent model's: its autoencoder's.
  out = streamed.judges(source, options, evaluate, inception_weights)
  if not out:
    raise ValueError(f"a sweep needs a quality figure: --inception-weights, or --evaluate "
                     f"yes/auto where the data ({source}) has an evaluation classifier "
                     f"({', '.join(evaluation.CLASSIFIED_SOURCES)})")
  return out


def frechet(quality: dict) -> float:
  """The Frechet distance of a `Running.quality()` dict (FID for Inception-v3)."""
  return quality["fid"] if "fid" in quality else quality["frechet_distance"]


@dataclasses.dataclass
class Sweep:
  """A sweep checked and ready: its cells (each with its plan), the step folders, the
  cells already finished (rows of results.jsonl), the judges and what every cell shares."""
  experiment: Experiment
  cells: list
  plans: dict  # {Cell.plan_key(): generate.SamplePlan}
  step_dirs: dict  # {step: checkpoint folder}
  rows: list  # Finished rows, results.jsonl of an earlier run on the folder.
  judges: dict
  job: sample_run.Job
  settings: dict

  def todo(self) -> list:
    done = {Cell.of(row) for row in self.rows}
    return [cell for cell in self.cells if cell not in done]


def prepare(checkpoints, steps: str, params, sampler_names, nfes, guidances,
            job: sample_run.Job, out, *, evaluate="auto", inception_weights=None,
            judged=None) -> Sweep:
  """Checks everything a sweep will run, before anything compiles or is written.

  Args:
    checkpoints: the training run (`select_steps`); steps: "all", "last", "every:K".
    params: the parameter choices, each passed to `generate.load` as it is.
    sampler_names, nfes, guidances: the other axes.
    out: the sweep's folder; where it holds an earlier sweep (sweep.json), its finished rows
      are read and its settings must be this one's.
    evaluate, inception_weights: the judges (`judges`); judged: {name: streamed.Judge} to use
      instead.

  Raises:
    FileNotFoundError (no checkpoint) or ValueError naming the bad choice.
  """
  step_dirs = {int(p.name): p for p in select_steps(checkpoints, steps)}
  for name, values in (("--params", params), ("--samplers", sampler_names), ("--nfe", nfes),
                       ("--guidance", guidances)):
    if not values or len(set(values)) != len(values):
      raise ValueError(f"{name} must list one or more distinct values, got {list(values)}")
  cells = sorted(Cell(*values) for values in itertools.product(
      step_dirs, params, sampler_names, nfes, [float(w) for w in guidances]))
  record = checkpoint.read_run(step_dirs[max(step_dirs)])  # The arrays are read below.
  experiment = Experiment.from_config(record["config"], DataSpec.from_record(record["data"]))
  plans = {}
  for cell in cells:
    if cell.plan_key() not in plans:
      plans[cell.plan_key()] = generate.plan(experiment, cell.sampler, cell.nfe,
                                             guidance_scale=cell.guidance,
                                             step_dir=step_dirs[cell.step])
  judged = judged or judges(experiment, evaluate, inception_weights)
  settings = {"checkpoints": str(pathlib.Path(checkpoints).resolve()), "num": job.num,
              "seed": job.seed, "batch_size": job.batch_size, "labels": job.labels,
              "keep_features": job.keep_features, "judges": sorted(judged)}
  settings = json.loads(json.dumps(settings))  # Tuples as lists, as read back.
  rows = []
  if out is not None and (pathlib.Path(out) / SETTINGS).is_file():
    saved = json.loads((pathlib.Path(out) / SETTINGS).read_text())
    differences = [f"{k}: {saved.get(k)!r} there, {v!r} here" for k, v in settings.items()
                   if saved.get(k) != v]
    if differences:
      raise ValueError(f"{out} holds a sweep with other settings ({'; '.join(differences)}); "
                       "run it with its own settings, or pass a new --workdir")
    rows = workdir.read_rows(out)
  sweep = Sweep(experiment, cells, plans, step_dirs, rows, judged, job, settings)
  for step, which in dict.fromkeys((cell.step, cell.params) for cell in sweep.todo()):
    generate.load(step_dirs[step], which)  # ValueError naming a choice it cannot give.
  return sweep


def run(sweep: Sweep, out: pathlib.Path, mesh, *, progress: bool = True,
        bootstrap: int = 1000, compare: str | None = "sampler") -> list:
  """Runs the sweep's unfinished cells in `out` (claimed by the caller), a row appended to
  results.jsonl as each finishes, results.md rewritten after each; at the end the plots and
  the paired comparisons along `compare` (an AXES name, or None) with `bootstrap` resamples.

  Returns:
    Every row of the sweep (those of earlier runs first).
  """
  writes = jax.process_index() == 0
  if writes and not (out / SETTINGS).is_file():
    (out / SETTINGS).write_text(json.dumps(sweep.settings, indent=1))
  rows = list(sweep.rows)
  steps = {}  # {(plan, grid): compiled step}, reused across checkpoints and parameters.
  # A latent model's autoencoder, loaded once: its samples are decoded to be judged.
  autoencoder = sweep.experiment.data.autoencoder
  decoder = None if autoencoder is None else latent.decoder(autoencoder)
  todo = sweep.todo()
  for (step, which), group in itertools.groupby(todo, lambda cell: (cell.step, cell.params)):
    step_dir, _, params = generate.load(sweep.step_dirs[step], which)
    for cell in group:
      plan = sweep.plans[cell.plan_key()]
      compiled = (plan.describe(), np.asarray(plan.grid).tobytes())
      if compiled not in steps:
        steps[compiled] = sample_run.make_step(sweep.experiment, plan, sweep.job, mesh,
                                               sweep.judges, decoder)
      if writes and progress:
        print(f"cell {len(rows) - len(sweep.rows) + 1}/{len(todo)}: {cell.folder()} "
              f"({plan.describe()})", flush=True)
      folder = out / cell.folder()
      folder.mkdir(exist_ok=True)
      record = {"checkpoint": str(step_dir.resolve()), **dataclasses.asdict(cell)}
      result = sample_run.run(sweep.experiment, plan, params, sweep.job, mesh,
                              judges=sweep.judges, out=folder, record=record,
                              progress=progress, step_fn=steps[compiled], decoder=decoder)
      row = {**dataclasses.asdict(cell), "checkpoint": str(step_dir), "folder": cell.folder(),
             "nfe_counted": result.nfe, "grid": plan.grid_name, "num_samples": sweep.job.num,
             "seed": sweep.job.seed, "seconds": result.seconds,
             "samples_per_second": result.sampled / result.seconds,
             "resumed_batches": result.resumed_batches,
             "quality": {name: r.quality() for name, r in result.running.items()}}
      rows.append(json.loads(json.dumps(row, default=workdir.json_default)))
      if writes:
        workdir.append_row(out, row)
        write_report(out, rows, streamed.main_judge(sweep.judges))
  if writes:
    pairs = compare_pairs(out, rows, sweep.judges, compare, bootstrap) if compare else []
    write_report(out, rows, streamed.main_judge(sweep.judges), pairs)
    plot(out, rows, streamed.main_judge(sweep.judges))
  return rows


def _varying(rows, skip=()) -> list:
  """The AXES (other than `skip`) on which the rows take more than one value."""
  return [axis for axis in AXES if axis not in skip and len({r[axis] for r in rows}) > 1]


def compare_pairs(out: pathlib.Path, rows, judged: dict, axis: str, num_resamples: int,
                  seed: int = 0) -> list:
  """The paired comparisons of the cells that differ in `axis` only: every two of them, the
  first in AXES order as "A", with `metrics.paired_frechet_bootstrap` on the main judge's
  kept features (each cell's progress.npz)."""
  name = streamed.main_judge(judged)
  judge = judged[name]
  others = [a for a in AXES if a != axis]
  group_of = lambda row: tuple(row[a] for a in others)
  pairs = []
  for _, group in itertools.groupby(sorted(rows, key=lambda r: (group_of(r), Cell.of(r))),
                                    group_of):
    for a, b in itertools.combinations(list(group), 2):
      features = []
      for row in (a, b):
        with np.load(out / row["folder"] / sample_run.PROGRESS) as arrays:
          features.append(arrays[f"{name}/features"])
      pair = metrics.paired_frechet_bootstrap(*features, judge.mu, judge.sigma,
                                              num_resamples=num_resamples, seed=seed)
      pairs.append({**{k: a[k] for k in others}, "axis": axis, "A": a[axis], "B": b[axis],
                    "frechet_A": frechet(a["quality"][name]),
                    "frechet_B": frechet(b["quality"][name]), **pair})
  return pairs


def _table(rows, name: str) -> str:
  quality = "FID" if name == "inception" else "Frechet distance"
  header = [*AXES, quality, "KID", "precision", "recall", "seconds"]
  body = [[*(r[a] for a in AXES), frechet(r["quality"][name]),
           f"{r['quality'][name]['kid']:.4g} +- {r['quality'][name]['kid_error']:.2g}",
           r["quality"][name]["precision"], r["quality"][name]["recall"], r["seconds"]]
          for r in sorted(rows, key=Cell.of)]
  return workdir.markdown_table(header, body)


def _pairs_table(pairs, name: str) -> str:
  axis = pairs[0]["axis"]
  others = [a for a in AXES if a != axis]
  n, resamples = pairs[0]["num_samples"], pairs[0]["num_resamples"]
  verdict = lambda p: ("A lower" if p["high"] < 0 else "B lower" if p["low"] > 0
                       else "no difference")
  body = [[*(p[a] for a in others), p["A"], p["B"], p["frechet_A"], p["frechet_B"],
           p["difference"], p["mean"], f"[{p['low']:.4g}, {p['high']:.4g}]", verdict(p)]
          for p in pairs]
  return (f"Paired comparisons along {AXIS_NAMES[axis]}: d_A - d_B of the Frechet distances "
          f"({name} features) on the first {n} samples, which share x_T; the bootstrap "
          f"resamples those samples' indices {resamples} times (the same indices for A and "
          "B, numpy seed 0) and gives the mean difference and its 95% percentile interval.\n\n"
          + workdir.markdown_table([*others, "A", "B", "d_A (all)", "d_B (all)", "d_A - d_B",
                                    "bootstrap mean", "95% interval", "at 95%"], body))


def write_report(out: pathlib.Path, rows, name: str, pairs=()):
  """results.md (the table of cells, and of pairs where given) and results.json."""
  text = (f"# Evaluation sweep\n\n{len(rows)} cells. Quality: the Frechet distance of the "
          f"samples' {name} features to the real data's (lower is better).\n\n"
          + _table(rows, name) + "\n")
  if pairs:
    text += "\n" + _pairs_table(pairs, name) + "\n"
  (out / "results.md").write_text(text)
  (out / "results.json").write_text(json.dumps({"rows": rows, "pairs": list(pairs)}, indent=1,
                                               default=workdir.json_default))


def sigma_rel(params: str) -> float | None:
  """The sigma_rel of a "phema:<sigma_rel>" choice, else None."""
  kind, _, value = params.partition(":")
  try:
    return float(value) if kind == "phema" else None
  except ValueError:
    return None


def _series(rows, x_axis: str, name: str, x_of=None) -> dict:
  """{label: ([x], [y])}: a line per combination of the other axes that vary, x sorted;
  x_of(row) the x of a row (default row[x_axis])."""
  x_of = x_of or (lambda row: row[x_axis])
  label_axes = _varying(rows, skip=(x_axis,))
  lines = {}
  for row in sorted(rows, key=x_of):
    label = ", ".join(f"{row[a]}" if a == "sampler" else f"{a} {row[a]}" for a in label_axes)
    xs, ys = lines.setdefault(label or "all", ([], []))
    xs.append(x_of(row))
    ys.append(frechet(row["quality"][name]))
  return lines


def plot(out: pathlib.Path, rows, name: str) -> list:
  """quality-nfe.png (a line per sampler), and where the axis varies quality-guidance.png,
  quality-step.png and quality-sigma-rel.png (two or more phema:<sigma_rel> choices; the
  other parameter choices as dashed lines). Returns the files written."""
  ylabel = "FID" if name == "inception" else "Frechet distance (classifier features)"
  written = []

  def draw(file, rows_, axis, xlabel, x_of=None, **options):
    plots.plot_lines(_series(rows_, axis, name, x_of), out / file, xlabel=xlabel,
                     ylabel=ylabel, **options)
    written.append(out / file)

  draw("quality-nfe.png", rows, "nfe", "NFE", log_x=True)
  for axis, file in (("guidance", "quality-guidance.png"), ("step", "quality-step.png")):
    if len({r[axis] for r in rows}) > 1:
      draw(file, rows, axis, AXIS_NAMES[axis])
  phema = [r for r in rows if sigma_rel(r["params"]) is not None]
  if len({r["params"] for r in phema}) >= 2:
    label_axes = _varying(rows, skip=("params",))
    references = {", ".join([r["params"], *(f"{r[a]}" for a in label_axes)]):
                  frechet(r["quality"][name])
                  for r in rows if sigma_rel(r["params"]) is None}
    draw("quality-sigma-rel.png", phema, "params", "post-hoc EMA sigma_rel",
         lambda row: sigma_rel(row["params"]), references=references, log_x=True)
  return written
