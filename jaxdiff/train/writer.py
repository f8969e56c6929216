"""Where training metrics go: <workdir>/metrics.jsonl, TensorBoard event files, the console.

One JSON object per logged step in metrics.jsonl (flushed as written), and the
same scalars as TensorBoard events under <workdir>/tensorboard, written with
TensorBoard's own event-file writer, which needs no TensorFlow (tensorboardX
would do too, but imports PyTorch where it is installed: 5 s of start-up). A
resumed run starts at the step of its checkpoint: rows after that step
(written by the interrupted run, and about to be redone) are dropped from
metrics.jsonl, and a SessionLog START event at the next step makes TensorBoard
drop them too (TensorFlow's purge convention). The console's progress is
`jaxdiff.progress`'s.
"""

import json
import os
import pathlib
import time

from tensorboard.compat.proto import event_pb2, summary_pb2
from tensorboard.summary.writer.event_file_writer import EventFileWriter

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
