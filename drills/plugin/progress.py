"""The drill's progress, reported to `atb drill run` through a structured channel: one JSON
object a line, appended to `--progress-file` (the parent follows the file; nothing is read
back from pytest's text). Events: `phase` (a phase starting or done, with its seconds, and
for the restore the archive's bytes and rate), `check` (a check's outcome as it finishes) and
`report` (the reports being written)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from drills import child
from drills.plugin.fixtures import STATE
from drills.report import title

# The phases a person waits through, in the names the parent shows (`DrillState.phase` names
# on the left).
SHOWN = {"fetch/verify": "verify", "sandbox start": "sandbox", "restore": "restore",
         "analyze": "analyze", "migrate": "migrate", "integration": "integration",
         "sandbox teardown": "teardown", "checks": "read back"}


class Channel:
    """Appends events to the progress file; a write that fails (a full disk) is dropped,
    never a reason for the drill to fail."""

    def __init__(self, path: Path | None, *, archive_bytes: int | None = None) -> None:
        self.path = path
        self.archive_bytes = archive_bytes

    def emit(self, event: str, **fields: Any) -> None:
        if self.path is None:
            return
        line = json.dumps({"event": event, "at": round(time.time(), 3), **fields},
                          sort_keys=True) + "\n"
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, line.encode())
            finally:
                os.close(fd)
        except OSError:
            pass

    def phase(self, name: str, state: str, seconds: float) -> None:
        """`DrillState.phase`'s listener: a phase starting, or done after `seconds`."""
        shown = SHOWN.get(name, name)
        if state != "done":  # starting; or ended by an error or an interrupt: no rate
            self.emit("phase", phase=shown, state=state,
                      **({} if state == "start" else {"seconds": round(seconds, 3)}))
            return
        extra: dict[str, Any] = {}
        if name == "restore" and self.archive_bytes:
            extra = {"bytes": self.archive_bytes,
                     "rate": round(self.archive_bytes / seconds) if seconds > 0 else None}
        self.emit("phase", phase=shown, state="done", seconds=round(seconds, 3), **extra)


    def note(self, text: str) -> None:
        """A warning the drill's user should see when it happens (`auto` chose a local
        sandbox), not at the end."""
        self.emit("note", text=text)


CHANNEL = pytest.StashKey[Channel]()
# the channel of this process's drill, for the hooks that see only a report (one drill a
# process: pytest is not run twice in one)
_current: list[Channel] = []


def open_channel(config: pytest.Config, path: Path | None, archive_bytes: int | None) -> Channel:
    channel = Channel(path, archive_bytes=archive_bytes)
    config.stash[CHANNEL] = channel
    _current[:] = [channel]
    return channel


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Each check's outcome as it finishes (a skip at setup, else the call's outcome)."""
    if not _current:
        return
    if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
        outcome = "finding" if hasattr(report, "wasxfail") else report.outcome
        name = report.nodeid.rsplit("::", 1)[-1]
        _current[0].emit("check", name=name, title=title(name.split("[")[0]), outcome=outcome)


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    channel = session.config.stash.get(CHANNEL, None)
    state = session.config.stash.get(STATE, None)
    if channel is not None and state is not None and state.collection_error is None \
            and not child.ORPHANED:
        channel.emit("report", state="start")
