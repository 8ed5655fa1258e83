"""One backup per database at a time: an advisory `flock` on a file beside the backups."""

from __future__ import annotations

import errno
import fcntl
import os
import time
from pathlib import Path
from types import TracebackType

from backup_core.tools.errors import LockBusy
from backup_core.tools.fsutil import make_dirs, storage_error


class DatabaseLock:
    """Context manager; released by the kernel even if we are killed with -9."""

    def __init__(self, path: Path, *, wait: bool = False, timeout: float = 3600.0) -> None:
        self.path = path
        self.wait = wait
        self.timeout = timeout
        self._fd: int | None = None

    def __enter__(self) -> DatabaseLock:
        make_dirs(self.path.parent)
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        except OSError as exc:
            raise storage_error(exc, self.path) from exc
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    os.close(fd)
                    raise storage_error(exc, self.path) from exc
                if not self.wait or time.monotonic() > deadline:
                    holder = _read_holder(fd)
                    os.close(fd)
                    raise LockBusy(
                        f"another backup of this database is running{holder} (lock {self.path}); "
                        "wait for it to finish or pass --wait"
                    ) from exc
                time.sleep(0.2)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def is_locked(path: Path) -> bool:
    """True while some process holds the lock (a backup is in progress)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)
    return False


def _read_holder(fd: int) -> str:
    try:
        pid = os.pread(fd, 32, 0).decode().strip()
    except OSError:
        return ""
    return f" (pid {pid})" if pid.isdigit() else ""
