"""What the command-line programs (sample.py, bench.py) share: their --config flag.

Configurations are ml_collections files whose fields can be overridden on the
command line (`--config.num_samples 1000`). ml_collections applies the
overrides when the flag is defined (on the default file) and again when the
flags are parsed, and a key the configuration lacks raises a bare
AttributeError in either place; `define_config` and `parse_flags` turn it
into a one-line error that names the flag.
"""

import sys

from absl import flags
from ml_collections import config_flags


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
                    f"has no field {missing!r}.{''.join(' ' + s for s in suggestion)} (nothing was run; the "
                    "config file lists every field)")


def define_config(default: str, help_string: str):
  """DEFINE_config_file("config", ...), exiting with a clear message on an unknown key."""
  try:
    return config_flags.DEFINE_config_file("config", default, help_string)
  except (AttributeError, KeyError) as error:
    raise _unknown_key(error) from None


def parse_flags(argv):
  """absl's flag parser for app.run(main, flags_parser=parse_flags), with that message
  for an unknown key and absl's own one-line message for a value of the wrong type."""
  try:
    return flags.FLAGS(argv)
  except (AttributeError, KeyError) as error:
    raise _unknown_key(error) from None
  except flags.Error as error:
    raise SystemExit(f"{error} (nothing was run; pass --helpfull for every flag)") from None
