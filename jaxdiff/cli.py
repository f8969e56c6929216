"""What the command-line programs (train.py, sample.py, bpd.py, bench.py, study.py) share:
their --config flag and the flags that hold a JSON object.

Configurations are ml_collections files whose fields can be overridden on the
command line (`--config.num_samples 1000`). A relative config path is looked
for from the working directory and then in the repository (the folder of the
programs, whose configs/ import each other as the `configs` package), so that
`python3 ~/jaxdiff/train.py --config configs/toy2d.py` works from anywhere.
ml_collections applies the overrides when the flag is defined (on the default
file) and again when the flags are parsed; a key the configuration lacks, a
config file that does not exist and one that fails to load each raise a bare
traceback there, which `define_config` and `parse_flags` turn into one line
naming the flag or the file.

Ctrl-C while XLA compiles (the first step of every program) interrupts only
the Python thread that waits for the compile; the compile goes on in XLA's
thread pool and, finishing after the interpreter has begun to tear the
client down, dies in a segmentation fault (exit 139) after the traceback.
`exit_on_interrupt` ends a program at once instead, with one line and the
shell's status for SIGINT, 130, once the run's own clean-up (the workdir's
INCOMPLETE line, pending checkpoint writes) has run.
"""

import functools
import inspect
import json
import os
import pathlib
import signal
import sys

from absl import flags
from ml_collections import config_flags

# The flags defined here belong to the program that asks for them, so its --help lists them.
flags.disclaim_key_flags()

# The folder of the programs and of configs/.
REPOSITORY = pathlib.Path(__file__).resolve().parents[1]


def _unknown_key(error) -> SystemExit:
  # AttributeError(KeyError(message)); the message is the missing key in quotes,
  # possibly followed by a "Did you mean" line.
  while isinstance(error, BaseException) and error.args:
    error = error.args[0]
  missing, *suggestion = str(error).split("\n")
  missing = missing.strip("'\"")
  names = [arg.split("=")[0] for arg in sys.argv[1:]
           if arg.startswith("--config.") and arg.split("=")[0].split(".")[-1] == missing]
  return SystemExit(f"unknown config key {names[0] if names else missing!r}: the configuration "
                    f"has no field {missing!r}.{''.join(' ' + s for s in suggestion)} (nothing "
                    "was run; the config file lists every field)")


def find_config(value: str) -> str:
  """A --config value (`path` or `path:argument`) with its file found: as given when the path
  exists from the working directory, else the repository's file of that relative path.

  Raises:
    SystemExit naming the file and the configs there are, when neither exists.
  """
  path, colon, argument = value.partition(":")
  if os.path.isfile(path):
    return value
  if not os.path.isabs(path) and (REPOSITORY / path).is_file():
    return f"{REPOSITORY / path}{colon}{argument}"
  configs = ", ".join(sorted(p.name for p in (REPOSITORY / "configs").glob("[!_]*.py")))
  raise SystemExit(f"--config {path}: no such file (looked in {os.getcwd()} and {REPOSITORY}); "
                   f"the configs in {REPOSITORY / 'configs'} are {configs} (nothing was run)")


def define_config(default: str, help_string: str):
  """DEFINE_config_file("config", ...) with the default found as `find_config` does, exiting
  with a clear message on an unknown key."""
  try:
    return config_flags.DEFINE_config_file("config", find_config(default), help_string)
  except (AttributeError, KeyError) as error:
    raise _unknown_key(error) from None


def define_params():
  """The programs' --params flag: which parameters of a checkpoint (`generate.load`)."""
  return flags.DEFINE_string("params", "ema", "The checkpoint's parameters: 'ema' (the first "
                             "EMA), 'ema:<decay>', 'raw', or 'phema:<sigma_rel>' (a post-hoc "
                             "EMA rebuilt from the run's snapshots).")


def _configs_found(argv):
  """argv with the value of --config (`--config X` or `--config=X`) found by `find_config`."""
  argv = list(argv)
  for i, arg in enumerate(argv):
    if arg == "--":
      break
    if arg in ("--config", "-config") and i + 1 < len(argv):
      argv[i + 1] = find_config(argv[i + 1])
    elif arg.startswith(("--config=", "-config=")):
      name, value = arg.split("=", 1)
      argv[i] = f"{name}={find_config(value)}"
  return argv


def parse_flags(argv):
  """absl's flag parser for app.run(main, flags_parser=parse_flags), with a one-line message
  for a config file that is missing or fails to load, for an unknown key, and (absl's own) for
  a value of the wrong type."""
  argv = _configs_found(argv)
  try:
    return flags.FLAGS(argv)
  except (AttributeError, KeyError) as error:
    raise _unknown_key(error) from None
  except (ImportError, SyntaxError, NameError, OSError) as error:
    raise SystemExit(f"cannot load the config file {_config_file(argv)}: "
                     f"{type(error).__name__}: {error} (nothing was run)") from None
  except flags.Error as error:
    if "Error whilst parsing config file" in str(error):  # ml_collections' TypeError/ValueError.
      last = [line for line in str(error).splitlines() if line.strip()][-1].strip()
      raise SystemExit(f"cannot load the config file {_config_file(argv)}: {last} (nothing "
                       "was run)") from None
    raise SystemExit(f"{error} (nothing was run; pass --helpfull for every flag)") from None


def _config_file(argv) -> str:
  """The config file that argv names, else the flag's default."""
  for i, arg in enumerate(argv[:-1]):
    if arg in ("--config", "-config"):
      return argv[i + 1]
  given = [arg.split("=", 1)[1] for arg in argv if arg.startswith(("--config=", "-config="))]
  return given[-1] if given else flags.FLAGS["config"].default_as_str.strip("'\"")


def _kind(value) -> str | None:
  """What a JSON value is, in words; None for null."""
  if value is None:
    return None
  if isinstance(value, bool):
    return "true or false"
  if isinstance(value, (int, float)):
    return "a number"
  if isinstance(value, str):
    return "a string"
  return "a list" if isinstance(value, (list, tuple)) else "an object"


# Annotations that say a keyword's kind where its default (None) does not.
_ANNOTATED = {float: "a number", int: "a number", str: "a string", bool: "true or false",
              "float": "a number", "int": "a number", "str": "a string", "bool": "true or false"}


def json_object(flag, like=None) -> dict:
  """The value of a flag that holds a JSON object, e.g. --options '{"order": 3}', as a dict.

  Args:
    flag: the FlagHolder that flags.DEFINE_string returned.
    like: the function the options are for, or None; a value must be of the kind of that
      keyword's default (else its annotation): a number, a string, true or false, a list.
      Names it lacks are left to the function to refuse.

  Raises:
    ValueError naming the flag, what is wrong and an example of a right value.
  """
  parameters = inspect.signature(like).parameters.values() if like is not None else []
  defaults = {p.name: p.default for p in parameters if p.default is not p.empty}
  expected = {p.name: _kind(p.default) or _ANNOTATED.get(p.annotation) for p in parameters
              if p.default is not p.empty}
  shown = sorted(((name, value) for name, value in defaults.items()
                 if _kind(value) in ("a number", "a string")),
                key=lambda item: _kind(item[1]) != "a number")[:1]  # A number if there is one.
  example = json.dumps(dict(shown)) if shown else '{"name": 1.5, "other": "text"}'
  hint = f"e.g. --{flag.name} '{example}'"
  try:
    value = json.loads(flag.value)
  except json.JSONDecodeError as error:
    raise ValueError(f"--{flag.name} must be a JSON object, {hint}; got {flag.value!r} "
                     f"({error.msg} at character {error.pos})") from None
  if not isinstance(value, dict):
    raise ValueError(f"--{flag.name} must be a JSON object {{...}} of named options, {hint}; "
                     f"got {_kind(value) or 'null'} {flag.value!r}")
  for name, item in value.items():
    if expected.get(name) and _kind(item) != expected[name]:
      raise ValueError(f"--{flag.name}: option {name!r} must be {expected[name]}, got "
                       f"{json.dumps(item)}; {hint}")
  return value


def exit_on_interrupt(main):
  """`main` for app.run, ending the process with one line and exit status 130 on Ctrl-C.

  The KeyboardInterrupt first unwinds `main` (so `finally` blocks and the workdir's marker
  run); then os._exit skips the interpreter's shutdown, during which a compile still running
  on XLA's threads would crash.
  """

  @functools.wraps(main)
  def run(argv):
    try:
      return main(argv)
    except KeyboardInterrupt:
      print("interrupted (Ctrl-C): finished work is kept; the output folder's INCOMPLETE says "
            "where the run stopped", file=sys.stderr)
      sys.stdout.flush()
      sys.stderr.flush()
      os._exit(128 + signal.SIGINT)

  return run
