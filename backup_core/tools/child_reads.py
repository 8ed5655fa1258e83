"""Bytes read by this process's children, for a progress line: pg_restore reads the archive
itself (and its parallel workers, its children, each read their part), so the bytes they
have read are how far a restore or a deep verify has come. Linux only (/proc); elsewhere
nothing is reported and the work runs the same."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

PROC = Path("/proc")
EVERY = 0.25  # seconds between two readings: a terminal line, not a measurement


def children(pid: int, *, proc: Path = PROC) -> list[int]:
    """The direct children of `pid` (every thread's: a child belongs to the thread that
    started it)."""
    found: list[int] = []
    try:
        tasks = list((proc / str(pid) / "task").iterdir())
    except OSError:
        return found
    for task in tasks:
        try:
            found.extend(int(p) for p in (task / "children").read_text().split())
        except (OSError, ValueError):
            continue
    return found


def descendants(pid: int, *, proc: Path = PROC) -> list[int]:
    """Every process below `pid`, children first."""
    out: list[int] = []
    todo = children(pid, proc=proc)
    while todo:
        child = todo.pop()
        out.append(child)
        todo.extend(children(child, proc=proc))
    return out


def read_chars(pid: int, *, proc: Path = PROC) -> tuple[str, int] | None:
    """(the process's identity: pid and start time, so a reused pid is another process; its
    `rchar`, the bytes its read calls returned), or None when it is gone or not ours."""
    try:
        stat = (proc / str(pid) / "stat").read_text()
        io = (proc / str(pid) / "io").read_text()
    except OSError:
        return None
    start = stat.rsplit(")", 1)[-1].split()[19:20]  # field 22, after the command's name
    for line in io.splitlines():
        name, _, value = line.partition(":")
        if name == "rchar":
            return f"{pid}:{start[0] if start else '?'}", int(value)
    return None


class ReadMeter:
    """The bytes read by every child seen since it started (children that ended keep their
    last count)."""

    def __init__(self, pid: int | None = None, *, proc: Path = PROC) -> None:
        self.pid = os.getpid() if pid is None else pid
        self.proc = proc
        self.seen: dict[str, int] = {}

    def total(self) -> int:
        for child in descendants(self.pid, proc=self.proc):
            got = read_chars(child, proc=self.proc)
            if got is not None:
                self.seen[got[0]] = max(self.seen.get(got[0], 0), got[1])
        return sum(self.seen.values())


@contextmanager
def reads_reported(report: Callable[[int], None] | None, *,
                   every: float = EVERY) -> Iterator[None]:
    """While the block runs, `report` gets the bytes its children have read, every `every`
    seconds (0 first), from a thread of its own (a display's error never stops the work). None:
    nothing is started."""
    if report is None:
        yield
        return
    meter = ReadMeter()
    stop = threading.Event()

    def poll() -> None:
        while not stop.wait(every):
            with contextlib.suppress(Exception):
                report(meter.total())

    with contextlib.suppress(Exception):
        report(0)  # the phase shows at once, before its first bytes
    thread = threading.Thread(target=poll, name="atb-read-meter", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
