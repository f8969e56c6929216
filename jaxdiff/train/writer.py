"""Where training metrics go: <workdir>/metrics.jsonl, TensorBoard event files, the console.

One JSON object per logged step in metrics.jsonl (flushed as written), and the
same scalars as TensorBoard events under <workdir>/tensorboard, written with
TensorBoard's own event-file writer, which needs no TensorFlow (tensorboardX
would do too, but imports PyTorch where it is installed: 5 s of start-up). A
resumed run starts at the step of its checkpoint: rows after that step
(written by the interrupted run, and about to be redone) are dropped from
metrics.jsonl, and a SessionLog START event at the next step makes TensorBoard
drop them too (TensorFlow's purge convention).

On the console, `progress_bar` is tqdm's bar on a terminal; where standard
error is not one (a batch job's log file), a bar would leave a carriage-return
update about twice a second (2,980 of them, 245 KB, for the digits default's
1500 steps), so `ProgressLines` writes one plain line every few seconds instead.
"""

import json
import os
import pathlib
import sys
import time

from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer.event_file_writer import EventFileWriter
from tqdm import tqdm

METRICS = "metrics.jsonl"


class MetricWriter:
  """write(step, scalars) to both places; only the process that writes files uses one."""

  def __init__(self, workdir, start_step: int = 0):
    self.path = pathlib.Path(workdir) / METRICS
    if self.path.exists():
      kept = [line for line in self.path.read_text().splitlines()
              if _step_of(line) is not None and _step_of(line) <= start_step]
      self.path.write_text("".join(line + "\n" for line in kept))
    self.events = EventFileWriter(str(pathlib.Path(workdir) / "tensorboard"))
    if start_step:
      self.events.add_event(event_pb2.Event(
          wall_time=time.time(), step=start_step + 1,
          session_log=event_pb2.SessionLog(status=event_pb2.SessionLog.START)))

  def write(self, step: int, scalars: dict):
    scalars = {name: float(value) for name, value in scalars.items()}
    with open(self.path, "a", encoding="utf-8") as f:
      f.write(json.dumps({"step": int(step), **scalars}) + "\n")
      f.flush()
      os.fsync(f.fileno())
    values = [summary_pb2.Summary.Value(tag=name, simple_value=value)
              for name, value in scalars.items()]
    self.events.add_event(event_pb2.Event(wall_time=time.time(), step=int(step),
                                          summary=summary_pb2.Summary(value=values)))
    self.events.flush()

  def close(self):
    self.events.close()


def _step_of(line: str):
  try:
    return int(json.loads(line)["step"])
  except (ValueError, KeyError, TypeError):
    return None  # A line cut off by a kill.


def read_metrics(workdir) -> list[dict]:
  """The rows of <workdir>/metrics.jsonl (a line cut off by a kill is skipped)."""
  path = pathlib.Path(workdir) / METRICS
  rows = []
  for line in path.read_text().splitlines() if path.exists() else []:
    if _step_of(line) is not None:
      rows.append(json.loads(line))
  return rows


def progress_bar(total: int, initial: int, *, enabled: bool, every_seconds: float,
                 unit: str = "step", desc: str | None = None):
  """tqdm's bar of the steps (or other units) on standard error where it is a terminal;
  elsewhere `ProgressLines` writing a line every `every_seconds`. Both take update(n),
  set_postfix(**values) and close()."""
  if enabled and not sys.stderr.isatty():
    return ProgressLines(total, initial, every_seconds, sys.stderr, unit, desc)
  return tqdm(total=total, initial=initial, unit=unit, desc=desc, dynamic_ncols=True,
              disable=not enabled)


class ProgressLines:
  """A log's progress: "step 300/1500  loss 0.0712  3.41 steps/s  ETA 5:52" (after desc,
  where given, in units of unit), at the first update (the first steps done, compilation
  included), then once `every_seconds` have passed since the last line, and at the last
  step. steps/s is the mean since the first update."""

  def __init__(self, total: int, initial: int, every_seconds: float, file,
               unit: str = "step", desc: str | None = None):
    self.total, self.step, self.every_seconds, self.file = total, initial, every_seconds, file
    self.unit, self.desc = unit, desc
    self.postfix = {}
    self.first = self.last_line = None  # (time, step) of the first update; time of a line.

  def set_postfix(self, **values):
    self.postfix = values

  def update(self, n: int):
    self.step += n
    now = time.perf_counter()
    if self.first is None:
      self.first = (now, self.step)
    elif now - self.last_line < self.every_seconds and self.step < self.total:
      return
    self.last_line = now
    words = [f"{self.unit} {self.step}/{self.total}",
             *(f"{k} {v}" for k, v in self.postfix.items())]
    if self.desc:
      words[0] = f"{self.desc}: {words[0]}"
    seconds, steps = now - self.first[0], self.step - self.first[1]
    if steps > 0 and seconds > 0:
      words += [f"{steps / seconds:.2f} {self.unit}s/s",
                f"ETA {tqdm.format_interval((self.total - self.step) * seconds / steps)}"]
    print("  ".join(words), file=self.file, flush=True)

  def close(self):
    pass
