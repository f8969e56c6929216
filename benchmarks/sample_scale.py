"""sample.py's peak host memory and speed at a small and a large --num, as subprocesses.

  PYTHONPATH=. python3 benchmarks/sample_scale.py --checkpoint /tmp/fit-digits
  PYTHONPATH=. python3 benchmarks/sample_scale.py --checkpoint /tmp/fit-digits \\
      --nums 1000,50000 --programs sample.py,/tmp/old-sample/sample.py   # beside an older one

For each program, each --num runs `python3 PROGRAM --checkpoint C --num N --sampler S --nfe K --batch-size B
--workdir <temporary>` (plus --flags) in its own process under /usr/bin/time -v; printed per
run: the peak resident set size (the whole process: JAX, the network, the evaluation) and
the wall time. The samples per second exclude start-up and compilation, which both runs
pay alike: (N_large - N_small) / (wall_large - wall_small). The goal of issue 25: peak RSS
at the large --num within 10% of the small one's (bounded host memory), and samples/s no
lower than the sample.py before it (--programs naming a checkout of that commit second: the
ratio of their samples/s is printed, measured in one run).
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile

parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
parser.add_argument("--checkpoint", required=True)
parser.add_argument("--programs", default="sample.py",
                    help="the sample.py files to run, comma-separated")
parser.add_argument("--nums", default="1000,50000", help="the small and the large --num")
parser.add_argument("--sampler", default="ddim")
parser.add_argument("--nfe", type=int, default=2)
parser.add_argument("--batch-size", type=int, default=500)
parser.add_argument("--flags", default="", help="more flags for the program, space-separated")
args = parser.parse_args()


def measure(program: str, num: int) -> tuple[float, float]:
  """(peak RSS in MiB, wall seconds) of one run of the program at --num num."""
  with tempfile.TemporaryDirectory() as folder:
    command = ["/usr/bin/time", "-v", sys.executable, program, "--checkpoint",
               args.checkpoint, "--num", str(num), "--sampler", args.sampler, "--nfe",
               str(args.nfe), "--batch-size", str(args.batch_size), "--workdir",
               os.path.join(folder, "out"), *args.flags.split()]
    result = subprocess.run(command, capture_output=True, text=True,
                            cwd=os.path.dirname(os.path.abspath(program)))
  if result.returncode != 0:
    raise SystemExit(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
  rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", result.stderr).group(1))
  wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)",
                   result.stderr).group(1)
  seconds = sum(float(part) * 60**i for i, part in enumerate(reversed(wall.split(":"))))
  return rss / 1024, seconds


small, large = (int(n) for n in args.nums.split(","))
rates = {}
for program in args.programs.split(","):
  runs = {}
  for num in (small, large):
    runs[num] = measure(program, num)
    print(f"{program} --num {num}: peak RSS {runs[num][0]:.0f} MiB, wall "
          f"{runs[num][1]:.1f} s", flush=True)
  rates[program] = (large - small) / (runs[large][1] - runs[small][1])
  print(f"{program}: peak RSS --num {large} / --num {small}: "
        f"{runs[large][0] / runs[small][0]:.3f}; {rates[program]:.1f} samples/s ({args.sampler}, "
        f"NFE {args.nfe}, batch {args.batch_size}; start-up and compilation excluded)", flush=True)
first, *others = rates
for program in others:
  print(f"samples/s of {first} / {program}: {rates[first] / rates[program]:.3f}")
