"""Ctrl-C (SIGINT, or SIGTERM) while `atb drill run` drills, escalating as a user of a command
line expects: the first one stops the drill (its child tears the sandbox down and reports it
interrupted); the next one, or the first once the drill has reported, says that the drill's
record is being finished and waits for it (the reports and the ledger agree); the one after
that abandons the record: the child is killed at once and `atb` exits 130."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass

from backup_core.tools.errors import AtbError

WAITING = "atb: finishing the drill's record; interrupt again to abandon it\n"


class Abandoned(KeyboardInterrupt):
    """An interrupt after one told to wait: the drill's record is given up, its child is
    killed rather than waited for (`drills.run`)."""


class RecordAbandoned(AtbError):
    """The drill was abandoned (a third interrupt): what of it was not recorded."""

    exit_code = 130


@dataclass
class Interrupts:
    """The handler's state. `armed`: an interrupt now stops the drill (KeyboardInterrupt);
    `signalled`: one has arrived, whatever it did; `waiting`: one was told to wait."""

    armed: bool = True
    signalled: bool = False
    waiting: bool = False

    def __call__(self, signum: int, frame: object) -> None:
        self.signalled = True
        if self.waiting:
            raise Abandoned
        if self.armed:
            self.armed = False
            raise KeyboardInterrupt
        self.waiting = True
        os.write(2, WAITING.encode())  # not sys.stderr: the main thread may be writing to it


def reported() -> None:
    """The drill's child has written its result: from here a first interrupt waits for the
    drill's record too. A no-op where no `Interrupts` handles SIGINT (`pytest --drill`, a
    test calling `run_drill`)."""
    handler = signal.getsignal(signal.SIGINT)
    if isinstance(handler, Interrupts):
        handler.armed = False


@contextlib.contextmanager
def handling() -> Iterator[Interrupts]:
    """`Interrupts` as this process's SIGINT and SIGTERM handler (in the main thread, where
    Python runs handlers; SIGTERM interrupts as Ctrl-C does), the previous ones put back."""
    handler = Interrupts()
    if threading.current_thread() is not threading.main_thread():
        yield handler
        return
    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield handler
    finally:
        for sig, before in previous.items():
            signal.signal(sig, before)
