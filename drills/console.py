"""Everything the CLI shows a person while it works: log lines, progress, sizes."""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from backup_core.tools.conninfo import redact
from backup_core.tools.durations import human
from backup_core.tools.masking import Secrets


class _UtcFormatter(logging.Formatter):
    """UTC timestamps, and every line masked with the run's secrets."""

    converter = time.gmtime  # type: ignore[assignment]

    def __init__(self, fmt: str, datefmt: str, secrets: Secrets) -> None:
        super().__init__(fmt, datefmt)
        self.secrets = secrets

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record), self.secrets)


def setup_logging(verbose: int, secrets: Secrets) -> None:
    """Quiet, timestamped lines on stderr: INFO by default, DEBUG (argv, timings) with -v;
    every line masked with `secrets`, the run's."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_UtcFormatter("%(asctime)sZ %(name)s %(levelname)s %(message)s",
                                       "%Y-%m-%dT%H:%M:%S", secrets))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.WARNING)
    logging.getLogger("atb").setLevel(logging.DEBUG if verbose else logging.INFO)


def size(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


class Progress:
    """Phase, bytes and rate on one refreshed line when stderr is a terminal; a log line per
    phase otherwise (cron and CI logs stay short)."""

    def __init__(self, label: str, *, stream: Any = None) -> None:
        self.label = label
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.t0 = time.monotonic()
        self.phase = ""
        self.last = 0.0
        self.log = logging.getLogger("atb.progress")

    def __call__(self, phase: str, done: int) -> None:
        now = time.monotonic()
        if phase != self.phase:
            self.phase = phase
            if not self.tty:
                self.log.debug("%s: %s", self.label, phase)
        if self.tty and (now - self.last > 0.2 or done == 0):
            self.last = now
            elapsed = max(now - self.t0, 1e-6)
            rate = f"{size(done / elapsed)}/s" if done else ""
            self.stream.write(f"\r\x1b[K{self.label}: {phase} {size(done) if done else ''} "
                              f"{rate} [{elapsed:.0f}s]")
            self.stream.flush()

    def close(self) -> None:
        if self.tty:
            self.stream.write("\r\x1b[K")
            self.stream.flush()


TICK: dict[str, Any] = {"event": "tick"}  # no event for a while: time passes all the same


class ProgressFile:
    """Follows a drill's progress file (JSON lines, `drills.plugin.progress`) in a thread
    and hands each event to `on_event`; as a context manager, it reads to the end on exit."""

    def __init__(self, path: Path, on_event: Callable[[dict[str, Any]], None]) -> None:
        self.path = path
        self.on_event = on_event
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="atb-progress", daemon=True)

    def __enter__(self) -> ProgressFile:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=5)

    def _run(self) -> None:
        pending = b""
        offset = 0
        while True:
            stopping = self.stop.is_set()  # read once more after the stop: nothing is lost
            try:
                with open(self.path, "rb") as fh:
                    fh.seek(offset)
                    chunk = fh.read()
            except OSError:
                chunk = b""
            offset += len(chunk)
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                if isinstance(event, dict):
                    with contextlib.suppress(Exception):  # a display glitch never ends a drill
                        self.on_event(event)
            if stopping:
                return
            with contextlib.suppress(Exception):
                self.on_event(TICK)  # lets a terminal line count the seconds of a long phase
            self.stop.wait(0.2)


class DrillProgress:
    """A drill's phases as a person follows them: on a terminal, a line per phase done (with
    the restore's bytes and rate) and the current phase or check on a refreshed line; in CI
    and cron, a timestamped log line per phase and check (INFO: shown without -v)."""

    def __init__(self, *, stream: Any = None) -> None:
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.t0 = time.monotonic()
        self.log = logging.getLogger("atb.drill")
        self.current = ""  # the line being refreshed on a terminal, and since when
        self.since = self.drawn = self.t0

    def __call__(self, event: dict[str, Any]) -> None:
        if event is TICK or event.get("event") == "tick":
            # a terminal's current line counts the seconds of a long phase (a big restore)
            now = time.monotonic()
            if self.tty and self.current and now - self.drawn >= 1:
                self._draw(self.current, now)
            return
        if event.get("event") == "note":  # a warning, when it happens
            if self.tty and self.current:
                self.stream.write("\r\x1b[K")
                self.stream.flush()
            self.log.warning("%s", event.get("text", ""))
            return
        self.show(phase_line(event))

    def show(self, line: tuple[str, bool] | None) -> None:
        if line is None:
            return
        text, lasting = line
        if not self.tty:
            self.log.info("%s", text)
            return
        if lasting:
            self.current = ""
            self.stream.write(f"\r\x1b[Kdrill: {text}\n")
            self.stream.flush()
        else:
            self.current, self.since = text, time.monotonic()
            self._draw(text, self.since)

    def _draw(self, text: str, now: float) -> None:
        self.drawn = now
        self.stream.write(f"\r\x1b[Kdrill: {text} [{now - self.since:.0f}s]")
        self.stream.flush()

    def close(self) -> None:
        if self.tty:
            self.stream.write("\r\x1b[K")
            self.stream.flush()


def phase_line(event: dict[str, Any]) -> tuple[str, bool] | None:
    """The text of one progress event, and whether it stays on screen (a phase done) or is
    replaced by the next (a phase starting, a check done). Pure, for the tests."""
    kind = event.get("event")
    if kind == "phase":
        phase = str(event.get("phase", "?"))
        if event.get("state") == "start":
            return f"{phase}...", False
        seconds = event.get("seconds")
        if event.get("state") in ("failed", "interrupted"):
            return (f"{phase} {event['state']} after "
                    f"{human(float(seconds)) if seconds is not None else '-'}"), True
        text = f"{phase} done in {human(float(seconds)) if seconds is not None else '-'}"
        if event.get("bytes"):
            rate = event.get("rate")
            text += (f": {size(event['bytes'])} archive"
                     + (f" at {size(rate)}/s" if rate else ""))
        return text, True
    if kind == "check":
        return f"check {str(event.get('outcome', '?')).upper()}: {event.get('title', '')}", False
    if kind == "report":
        return "writing the reports", False
    return None
