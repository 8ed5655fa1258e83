"""Everything the CLI shows a person while it works: log lines, progress, sizes."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

from backup_core.tools.conninfo import redact
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
