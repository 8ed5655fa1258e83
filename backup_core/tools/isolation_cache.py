"""The isolation probe's yes, remembered for this boot of this machine.

`isolation.probe` runs the namespace launcher in trial before a drill (a tenth of a second
and a Python interpreter). Its answer depends on the kernel and its settings, the `unshare`
binary, the launcher's own code, the user and the namespaces we start in; none of that
changes between two drills of one boot, so a yes is kept under a key made of all of them
(`probe_key`): a reboot, a kernel, a sysctl, an upgrade of util-linux or of atb, another user
or another container, and the key differs, so the probe runs again.

Only a yes is kept. A stale yes cannot weaken anything: the real launcher still makes every
step and refuses to run half-isolated (exit 3), and `forget` drops the entry when it does. A
no is never kept, so a drill never runs with less isolation than the machine allows because
of an old answer. The entries live in a private directory of ours (0700, our uid), as the
initdb templates do; one in any other directory is ignored.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import sys
from collections.abc import Iterable
from pathlib import Path

from backup_core.tools.errors import AtbError
from backup_core.tools.fsutil import make_dirs

# what the kernel lets a process do with namespaces
SYSCTLS = ("/proc/sys/user/max_user_namespaces", "/proc/sys/user/max_net_namespaces",
           "/proc/sys/user/max_mnt_namespaces", "/proc/sys/user/max_pid_namespaces",
           "/proc/sys/kernel/unprivileged_userns_clone",
           "/proc/sys/kernel/apparmor_restrict_unprivileged_userns")
NAMESPACES = ("user", "mnt", "net", "pid", "cgroup")
YES = "network\n"


def _read(path: str) -> str:
    try:
        with open(path) as fh:
            return fh.read().strip()
    except OSError:
        return "-"


def _stat(path: str) -> str:
    try:
        st = os.stat(path)
    except OSError:
        return "-"
    return f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}"


def _ns(kind: str) -> str:
    try:
        return os.readlink(f"/proc/self/ns/{kind}")
    except OSError:
        return "-"


def key_parts(unshare: str, launcher_files: Iterable[str]) -> list[str]:
    """What the probe's answer depends on, read from this machine now."""
    return [_read("/proc/sys/kernel/random/boot_id"), os.uname().release, str(os.geteuid()),
            unshare, _stat(unshare), sys.executable, _stat(sys.executable),
            *(f"{f}={_stat(f)}" for f in launcher_files),
            *(f"{p}={_read(p)}" for p in SYSCTLS), *(_ns(k) for k in NAMESPACES)]


def probe_key(parts: Iterable[str]) -> str:
    """The entry's name for these facts (pure)."""
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:32]


def _private(path: Path) -> bool:
    try:
        st = path.lstat()
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid() and not st.st_mode & 0o077


def entry(root: Path, key: str) -> Path:
    return root / f"probe-{key}"


def remembered(root: Path, key: str) -> bool:
    """A yes kept for `key` in the private directory `root`."""
    path = entry(root, key)
    if not _private(root):
        return False
    try:
        st = path.lstat()
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
            return False
        return path.read_text() == YES
    except OSError:
        return False


def remember(root: Path, key: str) -> None:
    """Keep a yes for `key` (best effort: without it the next drill probes again)."""
    with contextlib.suppress(OSError, AtbError):
        make_dirs(root)
        if not _private(root):
            return
        tmp = root / f".probe-{key}.{os.getpid()}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(YES)
        os.replace(tmp, entry(root, key))


def forget(root: Path, key: str) -> None:
    """Drop the yes for `key`: the launcher could not isolate after all."""
    with contextlib.suppress(OSError):
        entry(root, key).unlink()
