"""Output folders: claimed by one run, never written over, marked while unfinished."""

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from jaxdiff import workdir


def test_default_names_never_collide(tmp_path, monkeypatch):
  """Runs started in the same second get -2, -3, ...: both results are kept."""
  monkeypatch.chdir(tmp_path)
  monkeypatch.setattr(time, "strftime", lambda fmt, *a: fmt.replace("%Y%m%d-%H%M%S", "same"))
  with workdir.claim(None, "sample") as first, workdir.claim(None, "sample") as second:
    with workdir.claim(None, "sample") as third:
      (first / "a").write_text("1")
      (second / "a").write_text("2")
  assert [p.name for p in (first, second, third)] == ["sample-same", "sample-same-2",
                                                       "sample-same-3"]
  assert (first / "a").read_text() == "1" and (second / "a").read_text() == "2"


def test_marker_while_running_removed_at_the_end_kept_on_failure(tmp_path):
  with workdir.claim(tmp_path / "ok", "x") as out:
    assert (out / workdir.MARKER).is_file()
    assert "started" in (out / workdir.MARKER).read_text()
  assert not (out / workdir.MARKER).exists()

  with pytest.raises(KeyboardInterrupt):
    with workdir.claim(tmp_path / "stopped", "x") as out:
      raise KeyboardInterrupt
  assert "stopped: KeyboardInterrupt" in (out / workdir.MARKER).read_text()


def test_refusals_write_nothing(tmp_path):
  (tmp_path / "full").mkdir()
  (tmp_path / "full" / "mine.txt").write_text("keep")
  with pytest.raises(SystemExit, match=r"already holds files \(mine.txt\)"):
    with workdir.claim(tmp_path / "full", "x"):
      pass
  assert os.listdir(tmp_path / "full") == ["mine.txt"]

  (tmp_path / "file").write_text("")
  with pytest.raises(SystemExit, match="is a file, not a folder"):
    with workdir.claim(tmp_path / "file", "x"):
      pass
  with pytest.raises(SystemExit, match="cannot create workdir .*(Not a directory|File exists)"):
    with workdir.claim(tmp_path / "file" / "sub", "x"):
      pass

  # An empty folder is claimed; a second claim while the first runs is refused.
  (tmp_path / "empty").mkdir()
  with workdir.claim(tmp_path / "empty", "x"):
    with pytest.raises(SystemExit, match="another run of .* is working in"):
      with workdir.claim(tmp_path / "empty", "x"):
        pass
    with pytest.raises(SystemExit, match="another run is working in"):
      with workdir.claim(tmp_path / "empty", "x", resume=True):
        pass
  with pytest.raises(SystemExit, match="cannot resume in .*no such folder"):
    with workdir.claim(tmp_path / "missing", "x", resume=True):
      pass


def test_killed_run_can_be_resumed_and_its_rows_survive(tmp_path):
  """SIGKILL leaves the marker and every row appended before it; a line cut off
  mid-write is skipped, and a resumed run appends after it."""
  out = tmp_path / "run"
  script = (f"import os, signal\nfrom jaxdiff import workdir\n"
            f"with workdir.claim({str(out)!r}, 'x'):\n"
            f"  workdir.append_row({str(out)!r}, {{'i': 0, 'x': __import__('numpy').float32(1.5)}})\n"
            f"  open({str(out / workdir.ROWS)!r}, 'a').write('{{\"i\": 1, \"cut')\n"
            f"  os.kill(os.getpid(), signal.SIGKILL)\n")
  result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
  assert result.returncode == -9, result.stderr
  assert (out / workdir.MARKER).is_file()
  assert workdir.read_rows(out) == [{"i": 0, "x": 1.5}]
  with workdir.claim(out, "x", resume=True):
    workdir.append_row(out, {"i": 1, "x": np.arange(2)})
  assert workdir.read_rows(out) == [{"i": 0, "x": 1.5}, {"i": 1, "x": [0, 1]}]
  assert not (out / workdir.MARKER).exists()
  lines = (out / workdir.ROWS).read_text().splitlines()
  assert len(lines) == 3 and json.loads(lines[2]) == {"i": 1, "x": [0, 1]}


def test_markdown_table_writes_floats_to_four_significant_digits_and_the_rest_as_text():
  table = workdir.markdown_table(["name", "value", "n"],
                                 [["a", 0.123456, 3], ["b", 1e-7, None]])
  assert table.splitlines() == ["| name | value | n |", "|---|---|---|", "| a | 0.1235 | 3 |",
                                "| b | 1e-07 | None |"]


def failed_start(path, monkeypatch, program):
  """A start of `program` that fails before writing anything but the marker."""
  monkeypatch.setattr(sys, "argv", [f"/repo/{program}", "--workdir", str(path)])
  with pytest.raises(ValueError):
    with workdir.claim(path, "x"):
      raise ValueError("bad seed")


def test_a_failed_start_is_taken_back_by_its_own_program_only(tmp_path, monkeypatch, capsys):
  failed_start(tmp_path / "run", monkeypatch, "train.py")
  assert os.listdir(tmp_path / "run") == [workdir.MARKER]
  monkeypatch.setattr(sys, "argv", ["bench.py", "--workdir", str(tmp_path / "run")])
  with pytest.raises(SystemExit, match=r"holds only the INCOMPLETE of a failed start of "
                                       r"train.py \(it says why\); train.py can take it back"):
    with workdir.claim(tmp_path / "run", "x"):
      pass

  monkeypatch.setattr(sys, "argv", ["train.py", "--workdir", str(tmp_path / "run")])
  with workdir.claim(tmp_path / "run", "x") as out:
    assert capsys.readouterr().err == (f"taking back {out}: it holds only the INCOMPLETE of a "
                                       "failed start of train.py\n")
    (out / "result").write_text("done")
  assert os.listdir(out) == ["result"]

  # Killed during its start (no 'stopped:' line, no live process): taken back as well; while a
  # run holds it, refused.
  (tmp_path / "killed").mkdir()
  (tmp_path / "killed" / workdir.MARKER).write_text(
      "2026-01-01 00:00:00 started (pid 99999999): /elsewhere/train.py --workdir killed\n")
  with workdir.claim(tmp_path / "killed", "x"):
    with pytest.raises(SystemExit, match="another run of train.py is working in"):
      with workdir.claim(tmp_path / "killed", "x"):
        pass


def test_an_unfinished_run_is_refused_naming_its_program(tmp_path, monkeypatch):
  for program, advice in [("bench.py", "bench.py finishes it with the same flags plus --resume"),
                          ("sample.py", r"sample.py continues it with the same flags \(--workdir "
                                        r"naming it\)"),
                          ("bpd.py", "bpd.py cannot take it up")]:
    failed_start(tmp_path / program, monkeypatch, program)
    workdir.append_row(tmp_path / program, {"i": 0})
    monkeypatch.setattr(sys, "argv", ["train.py"])
    with pytest.raises(SystemExit, match=f"holds an unfinished run of {program} .*finished rows "
                                         f"are in results.jsonl\\); {advice}; or pass a new"):
      with workdir.claim(tmp_path / program, "x"):
        pass
    assert sorted(os.listdir(tmp_path / program)) == [workdir.MARKER, workdir.ROWS]
