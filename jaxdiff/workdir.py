"""Output folders of the entry points: owned by one run, written as it goes.

A run claims its folder before it writes anything, and never writes into one
it did not claim:
  * a new folder is created with an exclusive mkdir; the default name
    runs/<prefix>-<time> gets -2, -3, ... when another run took it first (two
    runs started in the same second keep both results);
  * an existing folder is claimed only when empty, by creating its marker
    file `INCOMPLETE` exclusively; a folder that holds files is refused,
    naming the program whose unfinished run it holds, except one that holds
    nothing but the marker of a failed start of the same program (no live
    run holds it), which that program takes back.
While the run works it holds a lock on the marker; the marker records the
command and, if the run fails or is interrupted, why; it is removed when the
run finishes. So a folder with `INCOMPLETE` and no live run is an unfinished
run: its finished rows are in results.jsonl (`append_row`, one JSON object a
line, written as each row finishes), and `claim(..., resume=True)` takes it up
again (bench.py --resume; train.py and sample.py resume their own workdirs).
"""

import contextlib
import fcntl
import itertools
import json
import os
import pathlib
import re
import sys
import tempfile
import time

import numpy as np

MARKER = "INCOMPLETE"
ROWS = "results.jsonl"


# How each program that can take up its unfinished runs does so.
RESUMES = {"bench.py": "bench.py finishes it with the same flags plus --resume",
           "encode.py": "encode.py continues it with the same flags (--out naming it)",
           "sample.py": "sample.py continues it with the same flags (--workdir naming it)",
           "sweep.py": "sweep.py continues it with the same flags (--workdir naming it)",
           "train.py": "train.py resumes it with the same --config"}


def _program(path: pathlib.Path) -> str:
  """The program (e.g. "train.py") whose run `path`/INCOMPLETE records."""
  text = (path / MARKER).read_text(encoding="utf-8", errors="replace")
  command = re.search(r" (?:started|resumed) \(pid \d+\): (\S+)", text)
  return os.path.basename(command.group(1)) if command else "an unknown program"


def _running(path: pathlib.Path) -> bool:
  """Whether a live run holds the lock on path/INCOMPLETE."""
  with open(path / MARKER, encoding="utf-8") as marker:
    try:
      fcntl.flock(marker, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
      return True
  return False


def _failed_start(path: pathlib.Path) -> bool:
  """Whether `path` holds nothing but the INCOMPLETE of a run that is no longer alive, and that
  was started by this program: a start that failed before writing anything."""
  return ([p.name for p in path.iterdir()] == [MARKER] and not _running(path)
          and _program(path) == os.path.basename(sys.argv[0]))


def _refusal(path: pathlib.Path) -> str:
  files = sorted(p.name for p in path.iterdir())
  if MARKER not in files:
    shown = ", ".join(files[:5]) + (", ..." if len(files) > 5 else "")
    return (f"workdir {path} already holds files ({shown}); pass a new --workdir "
            "(nothing was written)")
  program = _program(path)
  if _running(path):
    return (f"another run of {program} is working in {path} (it holds {path / MARKER}); wait "
            "for it or pass a new --workdir (nothing was written)")
  if files == [MARKER]:
    return (f"workdir {path} holds only the {MARKER} of a failed start of {program} (it says "
            f"why); {program} can take it back, or delete the folder, or pass a new --workdir "
            "(nothing was written)")
  rows = f"; finished rows are in {ROWS}" if ROWS in files else ""
  return (f"workdir {path} holds an unfinished run of {program} (its {MARKER} file says "
          f"which command and why it stopped{rows}); "
          f"{RESUMES.get(program, f'{program} cannot take it up')}; or pass a new --workdir "
          "(nothing was written)")


def _create_unique(path: pathlib.Path) -> pathlib.Path:
  """Creates `path`, or the first free `path`-2, -3, ..., exclusively."""
  path.parent.mkdir(parents=True, exist_ok=True)
  for n in itertools.count(1):
    candidate = path if n == 1 else path.with_name(f"{path.name}-{n}")
    try:
      candidate.mkdir()
      return candidate
    except FileExistsError:
      continue


@contextlib.contextmanager
def claim(path, prefix: str, *, resume: bool = False, parent="runs"):
  """Claims the output folder for the duration of a `with` block; yields its Path.

  Args:
    path: the folder, or None for a new <parent>/<prefix>-<time>[-n].
    prefix: the default name's prefix ("sample", "bench").
    resume: take up an earlier run's folder (it must exist; no live run may
      hold it); the caller decides that it is one of its own. Without resume,
      a folder that holds only the marker of a failed start of this program
      (sys.argv[0]) is taken back, saying so on stderr.

  Raises:
    SystemExit naming the folder and what to do, before anything is written,
    when it holds files (or, with resume, does not exist), is a file, cannot
    be created, or another run holds it.
  """
  default_prefix, taken_back = (None if path else prefix), False
  path = pathlib.Path(path or pathlib.Path(parent) / time.strftime(f"{prefix}-%Y%m%d-%H%M%S"))
  try:
    if path.exists() and not path.is_dir():
      raise SystemExit(f"workdir {path} is a file, not a folder; pass a new --workdir "
                       "(nothing was written)")
    if resume and not path.is_dir():
      raise SystemExit(f"cannot resume in {path}: there is no such folder")
    if default_prefix is not None:
      path = _create_unique(path)
    elif not resume:
      taken_back = path.is_dir() and _failed_start(path)
      if not taken_back and path.is_dir() and any(path.iterdir()):
        raise SystemExit(_refusal(path))
      if not path.is_dir():
        path.mkdir(parents=True)  # Exclusive: FileExistsError if another run made it.
    marker = open(path / MARKER, "a" if resume or taken_back else "x", encoding="utf-8")
  except FileExistsError:
    raise SystemExit(f"workdir {path} was claimed by another run just now; pass a new "
                     "--workdir (nothing was written)") from None
  except OSError as error:
    raise SystemExit(f"cannot create workdir {path}: {error.strerror or error}; pass a "
                     "--workdir you can write to (nothing was written)") from None
  with marker:
    try:
      fcntl.flock(marker, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      raise SystemExit(f"another run is working in {path} (it holds {path / MARKER}); "
                       "wait for it or pass a new --workdir") from None
    if taken_back:
      if [p.name for p in path.iterdir()] != [MARKER]:  # Another run took it back first.
        raise SystemExit(_refusal(path))
      print(f"taking back {path}: it holds only the {MARKER} of a failed start of "
            f"{os.path.basename(sys.argv[0])}", file=sys.stderr)
    _note(marker, f"{'resumed' if resume else 'started'} (pid {os.getpid()}): "
          f"{' '.join(sys.argv)}")
    try:
      yield path
    except BaseException as error:  # Interrupts too: the marker says why the run stopped.
      _note(marker, f"stopped: {type(error).__name__}: {error}")
      raise
    os.remove(path / MARKER)


def _note(marker, line: str):
  marker.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {line}\n")
  marker.flush()


def write_atomically(path, write) -> None:
  """write(binary file) into a temporary file beside path, flushed to disk, then renamed onto
  path: the file is complete (old or new) or absent, never half-written."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  with tempfile.NamedTemporaryFile(dir=path.parent, prefix=path.name, suffix=".tmp",
                                   delete=False) as f:
    try:
      write(f)
      f.flush()
      os.fsync(f.fileno())
    except BaseException:
      os.remove(f.name)
      raise
  os.replace(f.name, path)


def append_row(workdir, row: dict):
  """Appends one finished row to workdir/results.jsonl, flushed to disk."""
  path = pathlib.Path(workdir) / ROWS
  # A line cut off by a kill is closed first, so that it stays one bad line.
  cut_off = path.exists() and path.stat().st_size and path.read_bytes()[-1:] != b"\n"
  with open(path, "a", encoding="utf-8") as f:
    f.write("\n" * bool(cut_off) + json.dumps(row, default=json_default) + "\n")
    f.flush()
    os.fsync(f.fileno())


def read_rows(workdir):
  """The complete rows of workdir/results.jsonl; a line cut off by a kill is skipped."""
  path = pathlib.Path(workdir) / ROWS
  if not path.exists():
    return []
  rows = []
  for line in path.read_text(encoding="utf-8").splitlines():
    try:
      rows.append(json.loads(line))
    except json.JSONDecodeError:
      continue
  return rows


def markdown_table(header, rows) -> str:
  """A markdown table of results: header [C] column names, rows [R][C] cells; a float cell is
  written to 4 significant digits, any other as str."""
  cell = lambda value: f"{value:.4g}" if isinstance(value, float) else str(value)
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
  return "\n".join(lines)


def json_default(value):
  """NumPy and JAX scalars and arrays as plain numbers and lists; anything else as text."""
  if isinstance(value, np.generic) or hasattr(value, "__array__"):
    return np.asarray(value).tolist()
  return str(value)
