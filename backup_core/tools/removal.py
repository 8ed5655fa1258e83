"""Removing a tree atb made (a sandbox's files, a private temporary directory) without ever
entering anything mounted inside it.

`rm -rf --one-file-system` and `shutil.rmtree` both walk into a bind mount of the same file
system: a directory of someone's bound below a sandbox would be emptied with it. Here a
directory is entered only when it is on the tree's own device and is not a mount point of
this process's mount namespace (`/proc/self/mountinfo`), through file descriptors opened
without following links, so a directory swapped for a link or a mount meanwhile is not
entered either. What is left is returned, never deleted.

Also a program: `python -I -S removal.py PATH` removes PATH this way in a process of its
own (it imports nothing but the standard library), so a removal started in the background
takes no time from the interpreter that started it.
"""

from __future__ import annotations

import logging
import os
import stat
import sys
from pathlib import Path

log = logging.getLogger(__name__)
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW


def mount_points(mountinfo: str | None = None) -> frozenset[str] | None:
    """The mount points of this process's mount namespace (from `/proc/self/mountinfo`, or
    the text given); None when it cannot be read (then no directory is entered at all)."""
    if mountinfo is None:
        try:
            mountinfo = Path("/proc/self/mountinfo").read_text()
        except OSError:
            return None
    points = set()
    for line in mountinfo.splitlines():
        fields = line.split(" ")
        if len(fields) > 4:
            points.add(_unescape(fields[4]))
    return frozenset(points)


def _unescape(field: str) -> str:
    """mountinfo writes a space, tab, newline and backslash in a path as octal (`\\040`)."""
    if "\\" not in field:
        return field
    out, i = bytearray(), 0
    raw = field.encode("utf-8", "surrogateescape")
    while i < len(raw):
        if raw[i:i + 1] == b"\\" and raw[i + 1:i + 4].isdigit() and len(raw[i + 1:i + 4]) == 3:
            out.append(int(raw[i + 1:i + 4], 8))
            i += 4
        else:
            out.append(raw[i])
            i += 1
    return out.decode("utf-8", "surrogateescape")


def remove_tree(path: Path) -> tuple[Path, ...]:
    """Delete `path` and everything below it on its own file system, without following a
    link or entering a mount point; returns what was left (mounted directories, and what
    could not be removed). A missing `path` is nothing to do; a link or file at `path` is
    unlinked itself, never followed."""
    try:
        fd = os.open(path, _DIR_FLAGS)
    except FileNotFoundError:
        return ()
    except OSError:
        try:
            os.unlink(path)
        except FileNotFoundError:
            return ()
        except OSError:
            return (path,)
        return ()
    real = Path(os.path.realpath(path))
    mounts = mount_points()
    if mounts is None or str(real) in mounts:  # unknown mounts: nothing is entered
        os.close(fd)
        return (path,)
    left: list[Path] = []
    try:
        _clear(fd, Path(path), real, os.fstat(fd).st_dev, mounts, left)
    finally:
        os.close(fd)
    try:
        os.rmdir(path)
    except FileNotFoundError:
        pass
    except OSError:
        if not left:
            left.append(Path(path))
    return tuple(left)


def _clear(dirfd: int, shown: Path, real: Path, dev: int, mounts: frozenset[str],
           left: list[Path]) -> None:
    """Empty the directory open as `dirfd` (`shown` for what is returned, `real` to match
    mount points) of everything on device `dev` that is not mounted."""
    with os.scandir(dirfd) as it:
        names = [entry.name for entry in it]
    for name in names:
        try:
            st = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
        except FileNotFoundError:
            continue
        except OSError:
            left.append(shown / name)
            continue
        if not stat.S_ISDIR(st.st_mode):
            try:
                os.unlink(name, dir_fd=dirfd)
            except FileNotFoundError:
                pass
            except OSError:
                left.append(shown / name)
            continue
        if st.st_dev != dev or str(real / name) in mounts:
            left.append(shown / name)
            continue
        before = len(left)
        try:
            sub = os.open(name, _DIR_FLAGS, dir_fd=dirfd)
        except OSError:
            left.append(shown / name)
            continue
        try:
            if os.fstat(sub).st_dev != dev:  # swapped for a mount since it was looked at
                left.append(shown / name)
                continue
            _clear(sub, shown / name, real / name, dev, mounts, left)
        finally:
            os.close(sub)
        try:
            os.rmdir(name, dir_fd=dirfd)
        except FileNotFoundError:
            pass
        except OSError:
            if len(left) == before:
                left.append(shown / name)


def discard(path: Path) -> tuple[Path, ...]:
    """`remove_tree`, with a warning naming what was left."""
    left = remove_tree(path)
    if left:
        log.warning("left %s while removing %s: mounted there, or not removable",
                    ", ".join(str(item) for item in left), path)
    return left


def argv(path: Path) -> list[str]:
    """This module as a program removing `path` (see the module's docstring)."""
    return [sys.executable, "-I", "-S", str(Path(__file__).resolve()), str(path)]


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.stderr.write("usage: removal.py PATH\n")
        sys.exit(2)
    kept = remove_tree(Path(sys.argv[1]))
    for item in kept:
        sys.stderr.write(f"left {item}\n")
    sys.exit(1 if kept else 0)
