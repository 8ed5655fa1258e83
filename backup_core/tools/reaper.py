"""Sandboxes never outlive the drill that made them, even one killed with `kill -9`.

`pg_ctl` daemonizes the local sandbox's server and a docker sandbox runs in the engine, so
neither dies with its drill. Each therefore records its owner (the process that started it:
pid, the kernel's start time of that pid, and host) - a local one in a private registry
directory, a container in its `atb.owner` label - and every drill start (and `atb doctor`)
stops and removes those whose owner is gone. A pid alone is not an owner: pids are reused,
the start time tells a new process from the old one.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import stat
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from backup_core.tools import removal
from backup_core.tools.errors import StorageError
from backup_core.tools.namespaces import already_inside

log = logging.getLogger("atb.reaper")
OWNER_LABEL = "atb.owner"
# set by the isolation launcher (backup_core.tools.isolate_exec): its own pid, start and host, as
# the host sees them. Inside the drill's PID namespace our pids mean nothing outside, and
# the host's processes are invisible: the launcher is the owner, and nobody is judged gone.
LAUNCHER_ENV = "ATB_ISOLATION_OWNER"
WORKDIR_PREFIX = "atb-pg-"


def process_start(pid: int) -> str | None:
    """The kernel's start time of `pid` (clock ticks since boot), or None when it is gone
    (a zombie, which an init that does not reap leaves behind, is gone too)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (OSError, ValueError):
        return None
    fields = raw[raw.rfind(")") + 2:].split()  # after "pid (comm) ": field 3 onwards
    if len(fields) <= 19 or fields[0] in ("Z", "X"):
        return None
    return fields[19]  # field 22, starttime


@dataclass(frozen=True)
class Owner:
    pid: int
    start: str
    host: str

    @classmethod
    def current(cls) -> Owner:
        launcher = cls.from_label(os.environ.get(LAUNCHER_ENV, ""))
        if launcher is not None and already_inside():
            return launcher
        return cls(pid=os.getpid(), start=process_start(os.getpid()) or "",
                   host=socket.gethostname())

    @property
    def label(self) -> str:
        return f"{self.pid}:{self.start}@{self.host}"

    @classmethod
    def from_label(cls, text: str) -> Owner | None:
        pid, _, rest = text.partition(":")
        start, _, host = rest.partition("@")
        return cls(int(pid), start, host) if pid.isdigit() and start and host else None

    def gone(self) -> bool:
        """True only when this host knows the owner is dead: another host's owner is never
        judged from here, nor anyone from inside the drill's isolation (its PID namespace
        shows none of the host's processes)."""
        if self.host != socket.gethostname() or already_inside():
            return False
        return process_start(self.pid) != self.start


def registry_dir(*, create: bool = True) -> Path:
    """The private (0700, ours, not a link) directory of local sandboxes' records."""
    path = Path(tempfile.gettempdir()) / f"atb-sandboxes-{os.geteuid()}"
    if create:
        with contextlib.suppress(FileExistsError):
            path.mkdir(mode=0o700, parents=True)
    elif not os.path.lexists(path):
        return path
    st = path.lstat()
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode) \
            or st.st_uid != os.geteuid() or st.st_mode & 0o077:
        raise StorageError(f"{path} is not a private directory of ours (0700, not a link): "
                           "remove it, or set TMPDIR elsewhere")
    return path


def register(workdir: Path) -> Path:
    """Record that this process owns the local sandbox in `workdir`; returns the record."""
    text = json.dumps({"workdir": str(workdir), "owner": asdict(Owner.current())})
    for attempt in (1, 2):  # another run may remove the emptied directory in between
        record = registry_dir() / f"{workdir.name}.json"
        tmp = record.with_suffix(".tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        except FileNotFoundError:
            if attempt == 2:
                raise
            continue
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        tmp.replace(record)
        break
    return record


def unregister(record: Path | None) -> None:
    """Forget a sandbox that was torn down; the registry goes when it is empty, so that a
    drill leaves nothing in TMPDIR."""
    if record is not None:
        record.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            record.parent.rmdir()


def _postmaster(datadir: Path) -> int | None:
    """The pid of the server running on `datadir`, checked against its command line (the
    pid file may be stale and the pid reused) and its owner, the data directory's (the
    server's account writes the pid file, and the reaper may be root: a process of
    another user's is never signalled)."""
    try:
        owner = datadir.lstat().st_uid
        pid = int((datadir / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return pid if serves(pid, datadir, owner) else None


def serves(pid: int, datadir: Path, uid: int) -> bool:
    """`pid` is a process of `uid` whose command line names `datadir` as a whole argument: a
    server of it (a process the server's user made to look like one is its own to lose), not
    a pid another process wrote in the lock file (production's postmaster, init, root's)."""
    try:
        owner = os.stat(f"/proc/{pid}").st_uid
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return False
    return owner == uid and str(datadir).encode() in cmdline.split(b"\0")


def _stop(pid: int) -> None:
    """Immediate shutdown (SIGQUIT), then SIGKILL if it lingers."""
    for sig, wait in ((signal.SIGQUIT, 10.0), (signal.SIGKILL, 5.0)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if process_start(pid) is None:
                return
            time.sleep(0.05)


def reap_local(registry: Path | None = None) -> list[str]:
    """Stop and delete every registered local sandbox whose owner is gone; what was done,
    one line each (also logged)."""
    try:
        registry = registry or registry_dir(create=False)
    except (OSError, StorageError) as exc:
        log.warning("cannot look for sandboxes left by killed drills: %s", exc)
        return []
    done = []
    for record in sorted(registry.glob("*.json")):
        try:
            data = json.loads(record.read_text())
            owner = Owner(**data["owner"])
            workdir = Path(data["workdir"])
        except (OSError, ValueError, KeyError, TypeError):
            log.warning("ignoring an unreadable sandbox record %s", record)
            continue
        if not owner.gone():
            continue
        if not workdir.name.startswith(WORKDIR_PREFIX) or not workdir.is_absolute():
            log.warning("ignoring sandbox record %s: %s is not a sandbox directory", record,
                        workdir)
            continue
        pid = _postmaster(workdir / "data")
        if pid is not None:
            _stop(pid)
        removal.discard(workdir)
        unregister(record)
        line = (f"reaped the local sandbox of a drill that is gone (pid {owner.pid}): "
                f"{'stopped its server (pid ' + str(pid) + '), ' if pid else ''}"
                f"removed {workdir}")
        log.warning("%s", line)
        done.append(line)
    return done


def reap_containers(containers: Iterable[Any], remove: Callable[[Any], None]) -> list[str]:
    """Remove the drill containers (docker SDK objects with `.name` and `.labels`) whose
    owner label names a process that is gone; one line each (also logged)."""
    done = []
    for container in containers:
        owner = Owner.from_label(str(getattr(container, "labels", {}).get(OWNER_LABEL, "")))
        if owner is None or not owner.gone():
            continue
        remove(container)
        line = (f"removed the docker sandbox {container.name} of a drill that is gone "
                f"(pid {owner.pid})")
        log.warning("%s", line)
        done.append(line)
    return done


# A private temporary directory of atb's is marked with its owner when made, so that the
# next drill or `atb doctor` removes it if its owner is killed (`drills.leftovers`)
OWNER_MARK = "atb-owner"


def mark_owner(folder: Path) -> None:
    """Say who owns `folder` (this process): removed by the next reaping if this process
    is killed before it removes `folder` itself."""
    fd = os.open(folder / OWNER_MARK, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW,
                 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(Owner.current().label)
