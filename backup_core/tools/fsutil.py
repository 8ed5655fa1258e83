"""Durable, atomic file writes: temporary name, fsync, rename, fsync the directory."""

from __future__ import annotations

import contextlib
import errno
import os
import signal
from pathlib import Path

from backup_core.tools.errors import StorageError

# Test-only: `ATB_TEST_KILL_AT=<step>` makes the process SIGKILL itself at that step of a
# backup or prune, so tests can prove that a kill at any step loses no sound backup and
# leaves nothing that looks sound. Read here and nowhere else; unset in production.
KILL_ENV = "ATB_TEST_KILL_AT"

FILE_MODE = 0o600
DIR_MODE = 0o700


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_dirs(path: Path) -> None:
    """Create `path` and missing parents with mode 0700, saying clearly when we cannot."""
    try:
        missing = [p for p in [path, *path.parents] if not p.exists()]
        for p in reversed(missing):
            p.mkdir(mode=DIR_MODE)
            p.chmod(DIR_MODE)
    except FileExistsError:
        pass
    except OSError as exc:
        raise storage_error(exc, path) from exc


def make_tree(root: Path, path: Path) -> None:
    """Create `path` under `root` (mode 0700), refusing any component below `root` that is a
    symbolic link: nothing is ever written through a link out of the backup tree."""
    root, path = root.absolute(), path.absolute()
    try:
        rel = path.relative_to(root)
    except ValueError as exc:
        raise StorageError(f"{path} is outside {root}") from exc
    make_dirs(root)
    current = root
    for part in rel.parts:
        current = current / part
        if current.is_symlink():
            raise StorageError(f"{current} is a symbolic link: atb never writes through a link "
                               "out of BACKUP_DIR; replace it with a directory")
        if not current.exists():
            make_dirs(current)


def storage_error(exc: OSError, path: Path) -> StorageError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return StorageError(f"no space left writing {path} ({exc.strerror}): free space or "
                            "point BACKUP_DIR elsewhere; no backup was written")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return StorageError(f"cannot write {path}: {exc.strerror}; choose a writable BACKUP_DIR")
    return StorageError(f"cannot write {path}: {exc.strerror or exc}")


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Create `path` (never an existing file, never through a link) with `data`, fsynced."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def write_private(path: Path, data: bytes) -> None:
    """A new 0600 file with `data`."""
    try:
        _write_new(path, data, FILE_MODE)
    except OSError as exc:
        raise storage_error(exc, path) from exc


def atomic_write_text(path: Path, text: str, *, mode: int = FILE_MODE) -> None:
    """Replace `path` with `text` so that readers see the old or the new file, never half."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{os.urandom(3).hex()}")
    try:
        _write_new(tmp, text.encode(), mode)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except OSError as exc:
        with contextlib.suppress(OSError):  # on a read-only file system this fails too
            tmp.unlink(missing_ok=True)
        raise storage_error(exc, path) from exc


def publish(tmp: Path, final: Path) -> None:
    """Give `tmp` its final name without ever replacing an existing file."""
    try:
        os.link(tmp, final)
    except FileExistsError as exc:
        raise StorageError(f"{final} already exists; a backup is never overwritten") from exc
    except OSError as exc:
        raise storage_error(exc, final) from exc
    tmp.unlink()


def kill_point(step: str) -> None:
    """Die here, as `kill -9` would, when the test-only `ATB_TEST_KILL_AT` names `step`."""
    if os.environ.get(KILL_ENV) == step:
        os.kill(os.getpid(), signal.SIGKILL)
