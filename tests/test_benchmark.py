"""The NFE benchmark: the CLI's outputs and input files, the reference PF-ODE
solution against DDIM's first-order convergence, error rows instead of crashes,
and the diffusers peers tied to our grids and DDIM."""

import dataclasses
import json
import pathlib
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from jaxdiff import grids, oracle, samplers, schedules
from jaxdiff.benchmark import problems, report, runs
from jaxdiff.samplers import base

# diffusers 0.42 calls np.array on torch tensors the NumPy-2 deprecated way.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
ROOT = pathlib.Path(__file__).resolve().parents[1]
PROCESS = schedules.discrete_ddpm("linear", 1000)
MIXTURE = oracle.ring()
NUM = 256  # The quick config's num_samples: one reference compilation for every test.


def run_bench(*args):
  return subprocess.run([sys.executable, "bench.py", *args], cwd=ROOT, capture_output=True,
                        text=True, timeout=600)


def quick_problem(x_T=None, mixture=MIXTURE, name="ring-2d"):
  return problems.make_problem(name, PROCESS, mixture, "eps", NUM, seed=0, x_T=x_T)


def test_cli_writes_results_from_files_and_never_overwrites(tmp_path):
  # The quick config on the ring, with the ring and the seed's x_T passed as files.
  direct = quick_problem()
  np.savez(tmp_path / "ring.npz", weights=MIXTURE.weights, means=MIXTURE.means,
           stds=MIXTURE.stds)
  np.save(tmp_path / "x_T.npy", np.asarray(direct.x_T))
  workdir = tmp_path / "run"
  args = ("--config", "configs/benchmark_quick.py", "--workdir", str(workdir), "--oracle",
          str(tmp_path / "ring.npz"), "--init-noise", str(tmp_path / "x_T.npy"), "--save-samples")
  result = run_bench(*args)
  assert result.returncode == 0, result.stderr[-3000:]
  assert {"results.md", "results.csv", "results.json", "rmse-ring.png", "samples"} <= set(
      p.name for p in workdir.iterdir())
  assert Image.open(workdir / "rmse-ring.png").size[0] > 400
  assert "| ddim trailing | " in (workdir / "results.md").read_text()
  results = json.loads((workdir / "results.json").read_text())
  assert results["header"]["versions"]["jax"] == jax.__version__
  rows = [r for r in results["rows"] if r["family"] == "jaxdiff"]
  assert len((workdir / "results.csv").read_text().splitlines()) == len(results["rows"]) + 1
  assert all(r["status"] == "ok" and r["nfe_counted"] == r["nfe"] for r in rows)
  ddim = [r for r in rows if r["label"] == "ddim trailing"]
  assert [r["nfe"] for r in ddim] == [5, 10, 20]
  assert all(not r["stochastic"] for r in ddim)
  assert all(r["stochastic"] for r in rows if r["sampler"] == "ddpm")
  # First order on the trailing grid: rmse roughly halves per doubling (measured 0.244,
  # 0.108, 0.047).
  rmse = [r["rmse"] for r in ddim]
  assert rmse[0] > 1.7 * rmse[1] > 1.7**2 * rmse[2], rmse
  saved = np.load(workdir / "samples" / "ring" / "problem.npz")
  np.testing.assert_array_equal(saved["x_T"], np.asarray(direct.x_T))

  # The same arrays passed directly give the same numbers.
  entry = runs.sampler_entry(direct, "ddim", {}, "trailing")
  (expected,), _ = runs.run_benchmark(direct, [entry], (5,), log=lambda _: None)
  for metric in ("rmse", "sw2", "nll"):
    assert ddim[0][metric] == pytest.approx(expected[metric], rel=1e-6, abs=1e-7), metric

  # A workdir that holds files is refused, and nothing in it changes.
  before = {p.name: p.stat().st_mtime_ns for p in workdir.iterdir()}
  again = run_bench(*args)
  assert again.returncode != 0 and "already holds files" in again.stderr
  assert {p.name: p.stat().st_mtime_ns for p in workdir.iterdir()} == before


def test_bad_input_files_give_clear_errors(tmp_path):
  np.save(tmp_path / "wrong.npy", np.zeros((NUM, 3), np.float32))
  with pytest.raises(ValueError, match=r"shape \[num_samples, D\] = \[256, 2\], got \[256, 3\]"):
    problems.load_init_noise(tmp_path / "wrong.npy", (NUM, 2))
  with pytest.raises(ValueError, match="NaN"):
    problems.check_init_noise(np.full((2, 2), np.nan), (2, 2))
  np.savez(tmp_path / "partial.npz", weights=np.ones(2) / 2, means=np.zeros((2, 3)))
  with pytest.raises(ValueError, match=r"lacks arrays \['stds'\]"):
    problems.load_mixture(tmp_path / "partial.npz")
  np.savez(tmp_path / "mismatch.npz", weights=np.ones(2) / 2, means=np.zeros((2, 3)),
           stds=np.ones(3))
  with pytest.raises(ValueError, match=r"weights and stds must be \[K\] = \[2\]"):
    problems.load_mixture(tmp_path / "mismatch.npz")
  # Through the CLI: the error names the shape, and no workdir is created.
  result = run_bench("--config", "configs/benchmark_quick.py", "--workdir",
                     str(tmp_path / "run"), "--init-noise", str(tmp_path / "wrong.npy"))
  assert result.returncode != 0
  assert "must have shape [num_samples, D] = [256, 2], got [256, 3]" in result.stderr
  assert not (tmp_path / "run").exists()


def test_reference_agrees_with_ddim_to_first_order_and_with_itself():
  x_T = quick_problem().x_T
  reference = problems.oracle_reference(MIXTURE, PROCESS, x_T)
  tighter = problems.oracle_reference(MIXTURE, PROCESS, x_T, rtol=1e-8, atol=1e-8)
  denoise_fn = MIXTURE.denoise_fn(PROCESS, "eps")
  ddim = jax.jit(lambda x, grid: samplers.ddim(denoise_fn, PROCESS, x, jax.random.PRNGKey(0),
                                                grid)[0])
  # DDIM is Euler in (sigma / alpha, x / alpha); on Karras grids ending at t = 1e-6
  # (sigma / alpha = 3e-4, so the last jump to 0 is negligible) its error is C / N.
  x_1000, x_2000 = (ddim(x_T, grids.make_grid(PROCESS, "karras", n, t_min=1e-6))
                    for n in (1000, 2000))
  error = lambda x, y: float(jnp.max(jnp.abs(x - y)))
  richardson = error(x_1000, x_2000)  # ~ C / 2000 for a first-order method (7.7e-4).
  assert 0.8 * richardson < error(x_2000, reference) < 1.2 * richardson
  assert 1.8 < error(x_1000, reference) / error(x_2000, reference) < 2.2  # Measured 2.00.
  # Against a 100x tighter tolerance it moves by 1.1e-5, 70x less than DDIM's error.
  assert error(reference, tighter) < 5e-5


def _fake_sampler(name, nfe=base.one_call_per_step, nfe_offset=0, value=None):
  """A network-free registry entry that reports its rule's NFE + nfe_offset calls."""

  def run(ctx, x_T, key):
    steps = ctx.grid.shape[0] - 1
    x = x_T if value is None else jnp.full_like(x_T, value)
    finite = jnp.arange(steps) < (0 if value is not None else steps)
    return x, {"nfe": jnp.int32(nfe(steps, True, {}) + nfe_offset),
               "nonfinite_step": base.first_nonfinite_step(finite)}

  return base.Sampler(name, None, None, {}, order=lambda options: 1,
                      stochastic=lambda options: False, nfe=nfe, run=run)


def test_bad_configurations_are_error_rows_not_crashes(monkeypatch):
  three_calls = lambda num_steps, ends_at_zero, options: 3 * num_steps
  monkeypatch.setitem(samplers.SAMPLERS, "third", _fake_sampler("third", three_calls))
  monkeypatch.setitem(samplers.SAMPLERS, "miscount", _fake_sampler("miscount", nfe_offset=1))
  monkeypatch.setitem(samplers.SAMPLERS, "nan", _fake_sampler("nan", value=np.nan))
  problem = quick_problem()
  entries = [runs.sampler_entry(problem, name, {}, "trailing")
             for name in ("third", "miscount", "nan")]
  # What only a run shows is no configuration mistake: an NFE the rule cannot spend
  # among others it can, a miscount, NaN.
  assert runs.check_entries(entries, (3, 4)) == []
  rows, _ = runs.run_benchmark(problem, entries, (3, 4), reference=problem.x_T,
                               log=lambda _: None)
  status = {(r["sampler"], r["nfe"]): (r["status"], r["error"]) for r in rows}
  assert status[("third", 3)] == ("ok", "")
  assert status[("third", 4)][0] == "error"
  assert "nfe=4 on a grid ending at sigma = 0; nearest NFE that work: 3 or 6" in status[("third", 4)][1]
  assert "NFE mismatch: asked 4, the sampler counted 5" in status[("miscount", 4)][1]
  assert "FloatingPointError: sampling produced NaN or inf at step 0" in status[("nan", 3)][1]
  table = report.markdown_table(rows)
  assert "| third trailing | 0 | error | 0 |" in table  # The fake returns x_T = the reference.
  assert "error: see results.csv" in table and "stochastic sampler" not in table
  ok_only = report.markdown_table([r for r in rows if r["status"] == "ok"])
  assert "error" not in ok_only
  # A configuration that can spend none of the NFEs is a mistake, found before running.
  (mistake,) = runs.check_entries(entries[:1], (4, 5))
  assert "jaxdiff third trailing: ValueError: it can spend none of the NFEs" in mistake
  with pytest.raises(ValueError, match="listed more than once"):
    runs.run_benchmark(problem, entries[:1] * 2, (3,), reference=problem.x_T)


def test_nfe_rule_is_told_where_the_grid_ends(monkeypatch):
  # N calls on N + 1 points ending at t_min (sigma > 0) or a last step into t = 0.
  asked = []

  def num_steps_for(name, nfe, options, *, ends_at_zero):
    asked.append(ends_at_zero)
    raise ValueError("recorded")

  monkeypatch.setattr(samplers, "num_steps_for", num_steps_for)
  problem = quick_problem()
  for grid_options in ({}, {"end": "t_min"}):
    with pytest.raises(runs.UnreachableNFE, match="recorded"):
      runs.sampler_entry(problem, "ddim", {}, "log_snr", grid_options).check(5)
  assert asked == [True, False]


def test_num_steps_for_forwards_where_the_grid_ends(monkeypatch):
  # A rule with one call more on a grid that ends where sigma > 0.
  rule = lambda num_steps, ends_at_zero, options: num_steps + (0 if ends_at_zero else 1)
  monkeypatch.setitem(samplers.SAMPLERS, "fake",
                      dataclasses.replace(samplers.SAMPLERS["ddim"], name="fake", nfe=rule))
  assert samplers.num_steps_for("fake", 6) == 6
  assert samplers.num_steps_for("fake", 6, ends_at_zero=False) == 5


def test_configuration_mistakes_are_found_before_anything_runs(tmp_path):
  problem = quick_problem()
  for args, message in (
      (("ddimm", {}, "trailing"), "unknown sampler 'ddimm'"),
      (("ddim", {"etaa": 0.0}, "trailing"), r"'ddim' takes the options .* got unknown \['etaa'\]"),
      (("dpm_solver", {"algorithm": "dpm++"}, "log_snr"),
       r"unknown algorithm 'dpm\+\+' for dpm_solver; valid: \['dpmsolver', 'dpmsolver\+\+'\]"),
      (("ddim", {}, "trailingg"), "unknown grid 'trailingg'"),
      (("ddim", {}, "learned", {"num_iteration": 3}), r"got unknown \['num_iteration'\]")):
    with pytest.raises(ValueError, match=message):
      runs.sampler_entry(problem, *args)
  # Grid options are checked by tracing each configuration (no compilation).
  entries = [runs.sampler_entry(problem, "ddim", {}, "uniform", {"rho": 7.0}),
             runs.sampler_entry(problem, "ddim", {}, "trailing")]
  mistakes = runs.check_entries(entries, (5, 10))
  assert len(mistakes) == 1
  assert "grid 'uniform' takes the options ['t_max', 't_min', 'end'], got unknown ['rho']" in mistakes[0]
  with pytest.raises(ValueError, match="nfes must be a non-empty sequence of positive"):
    runs.check_nfes((0, 5))

  # bench.py lists every mistake and exits non-zero before it writes anything.
  config = tmp_path / "bad.py"
  config.write_text("from configs import benchmark_quick, benchmark\n"
                    "def get_config():\n"
                    "  config = benchmark_quick.get_config()\n"
                    "  config.samplers = (benchmark.sampler('ddimm', 'trailing'),\n"
                    "                     benchmark.sampler('ddim', 'trailing', {'etaa': 0.0}),\n"
                    "                     benchmark.sampler('ddim', 'trailing'))\n"
                    "  return config\n")
  result = run_bench("--config", str(config), "--workdir", str(tmp_path / "run"))
  assert result.returncode != 0 and "Traceback" not in result.stderr
  assert "invalid benchmark configuration (nothing was written)" in result.stderr
  assert "unknown sampler 'ddimm'" in result.stderr and "['etaa']" in result.stderr
  assert not (tmp_path / "run").exists()
  # A mistake of the config's fields, one line; bad nfes are refused in that same check
  # (runs.check_nfes, above), as is a bad --init-noise (test_bad_input_files_give_clear_errors).
  result = run_bench("--config", "configs/benchmark_quick.py", "--workdir",
                     str(tmp_path / "run"), "--config.prediction", "foo")
  assert result.returncode != 0 and "prediction must be one of" in result.stderr, (
      result.stderr[-2000:])
  assert not (tmp_path / "run").exists()


def test_bad_oracle_files_are_refused_with_their_name(tmp_path):
  (tmp_path / "empty.npz").write_bytes(b"")
  with pytest.raises(ValueError, match="cannot read oracle file .*empty.npz.*EOFError"):
    problems.load_mixture(tmp_path / "empty.npz")
  np.savez(tmp_path / "nan.npz", weights=[np.nan, 1.0], means=np.zeros((2, 2)), stds=np.ones(2))
  with pytest.raises(ValueError, match=r"nan.npz: weights must be finite"):
    problems.load_mixture(tmp_path / "nan.npz")
  np.savez(tmp_path / "inf.npz", weights=[0.5, 0.5], means=[[0, np.inf], [0, 0]], stds=np.ones(2))
  with pytest.raises(ValueError, match=r"inf.npz: means must be finite"):
    problems.load_mixture(tmp_path / "inf.npz")
  np.save(tmp_path / "text.npy", np.array(["a", "b"]))
  with pytest.raises(ValueError, match=r"text.npy: array must hold numbers, got dtype <U1"):
    problems.load_init_noise(tmp_path / "text.npy", (2,))
  with pytest.raises(ValueError, match=r"oracle 'ring' takes the options .* got unknown \['dims'\]"):
    problems.make_oracle("ring", dims=3)
  with pytest.raises(ValueError, match="num_modes must be a positive integer, got 0"):
    problems.make_oracle("random", num_modes=0)


def test_interrupted_benchmark_keeps_its_rows_and_resumes(tmp_path):
  """SIGKILL after two of six runs: the rows and sample files stay, INCOMPLETE marks
  the folder, a plain rerun is refused with the way out, and --resume runs only
  the four missing runs."""
  workdir = tmp_path / "run"
  args = [sys.executable, "bench.py", "--config", "configs/benchmark_quick.py", "--workdir",
          str(workdir), "--save-samples"]
  process = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
  rows_file = workdir / "results.jsonl"
  deadline = time.monotonic() + 300
  while not (rows_file.exists() and len(rows_file.read_text().splitlines()) >= 2):
    assert process.poll() is None and time.monotonic() < deadline
    time.sleep(0.05)
  process.kill()
  process.wait()
  before = [json.loads(line) for line in rows_file.read_text().splitlines()]
  assert (workdir / "INCOMPLETE").is_file() and not (workdir / "results.md").exists()
  assert 2 <= len(before) < 6

  again = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert again.returncode != 0
  assert "unfinished run" in again.stderr and "--resume" in again.stderr
  other = subprocess.run(args + ["--resume", "--config.seed", "1"], cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
  assert other.returncode != 0 and "['config'] differ" in other.stderr

  resumed = subprocess.run(args + ["--resume"], cwd=ROOT, capture_output=True, text=True,
                           timeout=600)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert f"{len(before)} finished runs are kept" in resumed.stdout
  rows = json.loads((workdir / "results.json").read_text())["rows"]
  assert len(rows) == 6 and rows[:len(before)] == before  # Kept as they were, not rerun.
  assert len(rows_file.read_text().splitlines()) == 6
  assert not (workdir / "INCOMPLETE").exists()
  assert len(list((workdir / "samples" / "ring-2d").glob("0*-nfe*.npz"))) == 6


# --------------------------------------------------------------------------
# diffusers peers.
# --------------------------------------------------------------------------


def test_peers_match_our_ddim_on_the_same_trailing_grid():
  pytest.importorskip("diffusers")
  from jaxdiff import peers  # pylint: disable=import-outside-toplevel

  problem = quick_problem()
  ours = runs.sampler_entry(problem, "ddim", {}, "trailing")
  ddim_peer, euler_peer = peers.peer_entries(problem, [
      {"name": "DDIMScheduler", "options": {"timestep_spacing": "trailing",
                                            "set_alpha_to_one": True}},
      {"name": "EulerDiscreteScheduler", "options": {"timestep_spacing": "trailing"}}])
  assert ddim_peer.label == "DDIM set_alpha_to_one=True trailing"
  for nfe in (10, 50):
    x, info = ours.run(nfe)
    x_peer, peer_info = ddim_peer.run(nfe)
    # diffusers' index n sits at our t = (n + 1) / T: the same evaluation times, ending at 0.
    np.testing.assert_allclose(peer_info["times"], info["times"], atol=1e-7)
    assert peer_info["nfe_counted"] == nfe and peer_info["sigma_end"] == 0.0
    # float32: alpha_bar as a torch cumprod vs our float64 log-cumsum (measured 1.1e-6).
    np.testing.assert_allclose(np.asarray(x_peer), np.asarray(x), atol=2e-5)
    # Euler in sigma / alpha is DDIM (Karras et al. 2022); diffusers starts it at
    # x_T * init_noise_sigma = sigma_max x_T instead of x_T / alpha = sqrt(1 +
    # sigma_max^2) x_T, 2e-5 relative (measured 4.9e-6).
    x_euler, _ = euler_peer.run(nfe)
    np.testing.assert_allclose(np.asarray(x_euler), np.asarray(x), atol=5e-5)


def test_peers_record_unreachable_nfe_nan_and_final_noise_level():
  pytest.importorskip("diffusers")
  from jaxdiff import peers  # pylint: disable=import-outside-toplevel

  problem = quick_problem()
  entries = peers.peer_entries(problem, [
      {"name": "HeunDiscreteScheduler", "options": {}},  # 2N - 1 calls.
      {"name": "UniPCMultistepScheduler", "options": {"solver_type": "bh1"}},
      {"name": "DDIMScheduler", "options": {"set_alpha_to_one": False}}])
  rows, _ = runs.run_benchmark(problem, entries, (4, 5), reference=problem.x_T,
                               log=lambda _: None)
  by = {(r["sampler"], r["nfe"]): r for r in rows}
  assert by[("HeunDiscrete", 5)]["status"] == "ok" and by[("HeunDiscrete", 5)]["steps"] == 3
  assert "cannot spend exactly 4 model calls" in by[("HeunDiscrete", 4)]["error"]
  assert "nearest [3, 5]" in by[("HeunDiscrete", 4)]["error"]
  # UniPC bh1 divides by B(h) = h = -inf at the final sigma = 0 (diffusers 0.42).
  assert "NaN or inf" in by[("UniPCMultistep", 5)]["error"]
  # Without set_alpha_to_one DDIM stops at alphas_cumprod[0]: sigma / alpha = sqrt(beta_1 /
  # (1 - beta_1)) with beta_1 = 1e-4, i.e. t = 1 / T.
  ddim = by[("DDIM", 5)]
  assert ddim["sigma_end"] == pytest.approx(np.sqrt(1e-4 / (1 - 1e-4)), rel=1e-4)
  assert ddim["t_end"] == pytest.approx(1e-3, rel=1e-3)
  with pytest.raises(ValueError, match="need a discrete process with betas"):
    peers.make_scheduler(schedules.VP(), "DDIMScheduler")


def test_learned_grid_beats_its_start_on_held_out_starts():
  # Fitted on training starts drawn apart from x_T (as many, so the reference
  # compiles once), judged on the benchmark's own x_T.
  problem = quick_problem()
  reference = problems.oracle_reference(MIXTURE, PROCESS, problem.x_T)
  start = runs.sampler_entry(problem, "ddim", {}, "log_snr")
  fitted = runs.sampler_entry(problem, "ddim", {}, "learned",
                              {"init": "log_snr", "num_pairs": NUM, "num_iterations": 150,
                               "num_perturbed": 0})
  row_start, _ = runs.run_entry(problem, start, 4, reference)
  row, _ = runs.run_entry(problem, fitted, 4, reference)
  assert row["status"] == "ok", row["error"]
  times = np.asarray(row["times"])
  assert times[0] == row_start["times"][0] and times[-1] == 0 and np.all(np.diff(times) < 0)
  # The fit starts from the log-SNR grid, scored on the training pairs it held out.
  x_T, x_ref = (x[-NUM // 4:] for x in problems.training_pairs(problem, NUM))
  x_start, _ = samplers.ddim(problem.denoise_fn, PROCESS, x_T, problem.key,
                             jnp.asarray(row_start["times"]))
  rmse_start = float(jnp.sqrt(jnp.mean((x_start - x_ref) ** 2)))
  assert row["fit_rmse_init"] == pytest.approx(rmse_start, rel=1e-4)
  assert row["fit_rmse"] < 0.7 * row["fit_rmse_init"]
  assert row["rmse"] < 0.8 * row_start["rmse"]
