"""Progress of long work on the console: training steps, sampling or encoding batches, a
classifier's training, grid fits.

On a terminal, `progress_bar` is tqdm's bar. Where standard error is not one (a batch
job's log file), a bar would leave a carriage-return update about twice a second (2,980
of them, 245 KB, for the digits default's 1500 steps), so `ProgressLines` writes one plain
line every few seconds instead.
"""

import sys
import time

from tqdm import tqdm


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
