"""Range checks of a training config's numbers, each error naming the field, the value and
what it accepts.

The settings' dataclasses (`experiment`, `optim`) call these from their
`__post_init__`, so a value out of range is refused when the config is parsed,
before anything is built or written.
"""

import math


def integer(field: str, value, minimum: int = 1, maximum: int | None = None,
            note: str = "") -> int:
  """value when it is an integer (not a bool) in [minimum, maximum); note (e.g. "0: never")
  says what a special value means.

  Raises:
    ValueError naming the field, the value and the range.
  """
  if (isinstance(value, int) and not isinstance(value, bool) and value >= minimum
      and (maximum is None or value < maximum)):
    return value
  wanted = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
  if maximum is not None:
    wanted = f"an integer in [{minimum}, {maximum})"
  raise ValueError(f"{field} must be {wanted}{f' ({note})' if note else ''}, got {value!r}")


def number(field: str, value, interval: str) -> float:
  """value as a float when it is a finite real number in interval, written as in the
  message: "[0, 1)" or "(0, inf)" (a bracket includes its end, a parenthesis does not).

  Raises:
    ValueError naming the field, the value and the interval.
  """
  low, high = (float(end) for end in interval[1:-1].split(","))
  inside = (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value)
            and (low <= value if interval[0] == "[" else low < value)
            and (value <= high if interval[-1] == "]" else value < high))
  if not inside:
    raise ValueError(f"{field} must be a finite number in {interval}, got {value!r}")
  return float(value)
