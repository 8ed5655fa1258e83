"""The read meter behind the restore's and the deep verify's progress: the bytes a real child
(and its own child) read, counted from /proc."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from backup_core.tools import child_reads

# a child whose own child reads the file, then waits for the file to go
READER = ("import sys, subprocess\n"
          "subprocess.run([sys.executable, '-c', 'import os, sys, time\\n"
          "open(sys.argv[1], \"rb\").read()\\n"
          "while os.path.exists(sys.argv[1]): time.sleep(0.02)', sys.argv[1]], check=True)\n")


def test_the_bytes_a_child_and_its_child_read_are_reported(tmp_path: Path) -> None:
    """A grandchild reads 3 MiB and lingers: the meter sees it below the child, and the
    report given to `reads_reported` starts at 0, reaches the 3 MiB and never goes back."""
    data = tmp_path / "archive"
    data.write_bytes(b"x" * (3 << 20))
    got: list[int] = []
    with child_reads.reads_reported(got.append, every=0.05):
        proc = subprocess.Popen([sys.executable, "-c", READER, str(data)])
        # below the child alone: the test's own process may have other children (a server
        # a session fixture started), whose reads the report below may count too
        meter = child_reads.ReadMeter(proc.pid)
        deadline = time.monotonic() + 20
        while meter.total() < 3 << 20 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert (3 << 20) <= meter.total() < (3 << 20) + (8 << 20)  # the file, and Python's own
        time.sleep(0.1)  # a reading of the thread's after the read
        data.unlink()
        assert proc.wait(timeout=20) == 0
    assert got[0] == 0 and max(got) >= 3 << 20
    assert got == sorted(got)  # ended children keep their count: it never goes back


def test_no_report_starts_nothing_and_a_failing_display_never_stops_the_work() -> None:
    with child_reads.reads_reported(None):
        pass

    def broken(n: int) -> None:
        raise BrokenPipeError

    with child_reads.reads_reported(broken, every=0.01):
        time.sleep(0.05)
