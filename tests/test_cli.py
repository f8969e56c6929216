"""The programs' shared flags: --config found from anywhere, JSON-object flags named in errors."""

import os
import pathlib
import subprocess
import sys
import types

import pytest

from jaxdiff import cli, grids, schedules

ROOT = pathlib.Path(__file__).resolve().parents[1]


def flag(value, name="grid-options"):
  """A stand-in for the FlagHolder of a string flag."""
  return types.SimpleNamespace(name=name, value=value)


def test_json_object_flags_name_the_flag_and_show_a_right_value():
  assert cli.json_object(flag('{"rho": 5}'), grids.GRIDS["karras"]) == {"rho": 5}
  assert cli.json_object(flag("{}")) == {}
  example = """e.g. --grid-options '{"rho": 7.0}'"""
  with pytest.raises(ValueError, match=r"^--grid-options must be a JSON object, .*got 'rho=5'"):
    cli.json_object(flag("rho=5"), grids.GRIDS["karras"])
  with pytest.raises(ValueError, match=r"^--grid-options must be a JSON object \{\.\.\.\} of "
                                       r"named options, .*got a list '\[5\]'") as error:
    cli.json_object(flag("[5]"), grids.GRIDS["karras"])
  assert example in str(error.value)
  with pytest.raises(ValueError, match=r"^--grid-options: option 'rho' must be a number, got \"5\""):
    cli.json_object(flag('{"rho": "5"}'), grids.GRIDS["karras"])
  with pytest.raises(ValueError, match=r"^--process-options: option 'schedule' must be a string, "
                                       r"got 1; e.g. --process-options '\{\"num_steps\": 1000\}'"):
    cli.json_object(flag('{"schedule": 1}', "process-options"), schedules.PROCESSES["ddpm"])
  # Names the function lacks are its own to refuse.
  assert cli.json_object(flag('{"rh": "5"}'), grids.GRIDS["karras"]) == {"rh": "5"}


def test_a_relative_config_is_found_in_the_repository_from_anywhere(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  assert cli.find_config("configs/toy2d.py:x") == f"{ROOT / 'configs' / 'toy2d.py'}:x"
  (tmp_path / "configs").mkdir()
  (tmp_path / "configs" / "toy2d.py").write_text("")
  assert cli.find_config("configs/toy2d.py") == "configs/toy2d.py"  # The working directory's.
  with pytest.raises(SystemExit, match=r"^--config configs/nonexistent.py: no such file \(looked "
                                       r"in .* and .*\); the configs in .* are .*digits.py"):
    cli.find_config("configs/nonexistent.py")


def run_elsewhere(tmp_path, program, *args):
  """Runs a program of the repository with tmp_path as the working directory."""
  return subprocess.run([sys.executable, str(ROOT / program), *args], cwd=tmp_path,
                        capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("args, message", [
    # The default config (relative) loads: the override is checked against it.
    (("--config.no_such_field", "1"), "unknown config key '--config.no_such_field'"),
    (("--config", "broken.py"), "cannot load the config file broken.py: ModuleNotFoundError: "
     "No module named 'no_such_module'"),
])
def test_train_py_reads_configs_from_another_folder_or_says_which_file(tmp_path, args, message):
  (tmp_path / "broken.py").write_text("import no_such_module\n")
  result = run_elsewhere(tmp_path, "train.py", "--workdir", str(tmp_path / "run"), *args)
  assert result.returncode == 1
  assert result.stderr.strip().splitlines() == [result.stderr.strip()], result.stderr[-2000:]
  assert message in result.stderr
  assert not (tmp_path / "run").exists()


def test_the_shared_flags_are_listed_in_the_programs_help(tmp_path):
  """--config and --params, defined by cli for a program, are that program's key flags: its
  --help lists them (absl's --help lists only the main module's flags)."""
  script = tmp_path / "program.py"
  script.write_text("from absl import app\n"
                    "from jaxdiff import cli\n"
                    "cli.define_config('configs/toy2d.py', 'The training configuration.')\n"
                    "cli.define_params()\n"
                    "app.run(lambda argv: None)\n")
  result = subprocess.run([sys.executable, str(script), "--help"], capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
  assert "  --config: The training configuration." in result.stdout, result.stderr[-2000:]
  assert "  --params: The checkpoint's parameters: 'ema'" in result.stdout


def test_ctrl_c_during_a_compile_ends_with_one_line_not_a_crash(tmp_path):
  """SIGINT while XLA compiles on its own threads: exit 130 with one line (the interpreter's
  shutdown under the running compile ended in a segmentation fault, 139)."""
  script = tmp_path / "program.py"
  script.write_text(
      "import os, signal, threading\n"
      # A terminal's Ctrl-C, whatever SIGINT handling and mask the test process passes on.
      "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
      "signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})\n"
      "import jax, jax.numpy as jnp\n"
      "from jaxdiff import cli\n"
      "def unrolled(x):  # Seconds of compile for microseconds of work.\n"
      "  for i in range(300):\n"
      "    x = jnp.sin(x @ x + i)\n"
      "  return x\n"
      "@cli.exit_on_interrupt\n"
      "def main(argv):\n"
      "  try:\n"
      "    threading.Timer(1, lambda: os.kill(os.getpid(), signal.SIGINT)).start()\n"
      "    jax.jit(unrolled)(jnp.ones((4, 4)))\n"
      "  finally:\n"
      "    print('cleaned up', flush=True)\n"
      "main([])\n")
  # Without the tests' persistent compilation cache: a cached program would load at once and
  # end before the SIGINT.
  result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(ROOT),
                               "JAX_ENABLE_COMPILATION_CACHE": "false"}, timeout=600)
  assert result.returncode == 130, result.stderr[-2000:]
  assert result.stdout == "cleaned up\n"
  assert result.stderr.startswith("interrupted (Ctrl-C)") and result.stderr.count("\n") == 1
