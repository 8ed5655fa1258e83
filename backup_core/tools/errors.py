"""The one exception family of the project; the CLI catches `AtbError` in exactly one place."""

from __future__ import annotations


class AtbError(Exception):
    """Something a user can act on: the message says what was wrong and what to do."""

    exit_code = 1

    def __init__(self, message: str, *, detail: str = "") -> None:
        super().__init__(message)
        self.detail = detail


class ConfigError(AtbError):
    """Bad input: a malformed URL, a missing setting, an option out of range."""

    exit_code = 2


class ToolchainError(AtbError):
    """PostgreSQL binaries are missing or of the wrong major version."""

    exit_code = 3


class ConnectionFailed(AtbError):
    """The server could not be reached or refused us."""

    exit_code = 4


class CommandFailed(AtbError):
    """A PostgreSQL tool exited non-zero; `detail` carries its stderr."""

    exit_code = 5


class LockBusy(AtbError):
    """Another run holds the lock for the same database."""

    exit_code = 6


class StorageError(AtbError):
    """The backup directory cannot be written (permissions, full disk)."""

    exit_code = 7


class SafetyRefusal(AtbError):
    """We refused to do something that could destroy data."""

    exit_code = 8


class VerifyFailed(AtbError):
    """A backup did not pass verification."""

    exit_code = 9


class ProductionTouched(AtbError):
    """Production changed while atb worked on a copy: loud, and never exit 0."""

    exit_code = 8
