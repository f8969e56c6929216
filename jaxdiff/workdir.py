"""Output folders of the entry points: created fresh, never written over.

A folder that already holds files is refused before anything is written, so
samples, tables and checkpoints a user made are never lost.
"""

import pathlib
import time


def new_workdir(path, prefix: str) -> pathlib.Path:
  """Creates `path` (default runs/<prefix>-<time>), refusing one that already holds files."""
  path = pathlib.Path(path or time.strftime(f"runs/{prefix}-%Y%m%d-%H%M%S"))
  if path.is_dir() and any(path.iterdir()):
    raise SystemExit(f"workdir {path} already holds files; pass a new --workdir "
                     "(nothing was written).")
  path.mkdir(parents=True, exist_ok=True)
  return path
