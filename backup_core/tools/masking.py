"""The secrets one run has seen, in an object its entry point owns.

The CLI's `run` and the drill plugin's `pytest_configure` each make a `Secrets`, own it for the
run (`owned`), and hand it to the log formatter and the report writers. Every `ConnInfo` parsed
during the run adds its password to the owned object, so a password a tool echoes back is
masked wherever the run writes text. An object, not a module-level set: a test or a second run
in the same process starts from its own, and nothing reaches into another's."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

# Free-text masking of shorter secrets would garble reports (a password `test` or `PASS`);
# they are still masked wherever they stand as a URL or keyword password (conninfo.redact).
MIN_MASKED = 6


class Secrets:
    """Values masked as `***` in any text `mask` sees; safe to share between threads."""

    def __init__(self, values: Iterable[str] = ()) -> None:
        self._lock = threading.Lock()
        self._values: frozenset[str] = frozenset()
        for value in values:
            self.add(value)

    def add(self, value: str) -> None:
        if len(value) >= MIN_MASKED:
            with self._lock:  # replaced whole, so `mask` reads a consistent set without locking
                self._values = self._values | {value}

    def __len__(self) -> int:
        return len(self._values)

    def mask(self, text: str) -> str:
        for secret in sorted(self._values, key=len, reverse=True):
            if secret in text:
                text = text.replace(secret, "***")
        return text


_owner: list[Secrets] = [Secrets()]  # a stack: the innermost owner's object is current


def current() -> Secrets:
    """The object of the innermost run that owns one (library use outside any run: a
    process-wide fallback, so a password parsed there is still masked)."""
    return _owner[-1]


@contextmanager
def owned(secrets: Secrets) -> Iterator[Secrets]:
    """Make `secrets` the run's object for the duration; the previous one is current again
    afterwards, whatever happened."""
    _owner.append(secrets)
    try:
        yield secrets
    finally:
        _owner.remove(secrets)
