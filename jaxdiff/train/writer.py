"""Where training metrics go: <workdir>/metrics.jsonl and TensorBoard event files.

One JSON object per logged step in metrics.jsonl (flushed as written), and the
same scalars as TensorBoard events under <workdir>/tensorboard, written by
tensorboardX, which needs no TensorFlow. A resumed run starts at the step of
its checkpoint: rows after that step (written by the interrupted run, and
about to be redone) are dropped from metrics.jsonl, and TensorBoard's
purge_step hides them there.
"""

import json
import os
import pathlib

import tensorboardX

METRICS = "metrics.jsonl"


class MetricWriter:
  """write(step, scalars) to both places; only the process that writes files uses one."""

  def __init__(self, workdir, start_step: int = 0):
    self.path = pathlib.Path(workdir) / METRICS
    if self.path.exists():
      kept = [line for line in self.path.read_text().splitlines()
              if _step_of(line) is not None and _step_of(line) <= start_step]
      self.path.write_text("".join(line + "\n" for line in kept))
    self.events = tensorboardX.SummaryWriter(str(pathlib.Path(workdir) / "tensorboard"),
                                             purge_step=start_step + 1 if start_step else None)

  def write(self, step: int, scalars: dict):
    scalars = {name: float(value) for name, value in scalars.items()}
    with open(self.path, "a", encoding="utf-8") as f:
      f.write(json.dumps({"step": int(step), **scalars}) + "\n")
      f.flush()
      os.fsync(f.fileno())
    for name, value in scalars.items():
      self.events.add_scalar(name, value, int(step))
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
