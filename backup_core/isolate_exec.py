"""The launcher inside the namespaces `isolation.isolated_argv` creates: bring the new
network namespace's loopback up (it starts down, and a local sandbox or a relay listener may
want it), cover each `--hide` path with /dev/null, then become the real command.

`python -m backup_core.isolate_exec [--hide PATH]... -- ARGV...`; one line on stderr and
exit 3 when a step fails, so nothing runs half-isolated.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import fcntl
import os
import socket
import struct
import sys

SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1
MS_BIND = 4096
EXIT_FAILED = 3
EXIT_NOT_FOUND = 127  # as a shell says it


class IsolationFailed(Exception):
    """A step of the isolation could not be made."""


def loopback_up() -> None:
    """`ip link set lo up`, by ioctl: no `ip` needed."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        req = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(s.fileno(), SIOCGIFFLAGS, req))[1]
        fcntl.ioctl(s.fileno(), SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags | IFF_UP))


def cover(path: str) -> None:
    """Bind-mount /dev/null over `path`: a socket then refuses connections, a file reads
    empty. Private to this mount namespace."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    if libc.mount(b"/dev/null", os.fsencode(path), None, MS_BIND, None) != 0:
        err = ctypes.get_errno()
        raise IsolationFailed(f"cannot hide {path}: {os.strerror(err)}")


def parse(argv: list[str]) -> tuple[list[str], list[str]]:
    """(paths to hide, the command) from `[--hide P]... -- CMD...`."""
    hide: list[str] = []
    i = 0
    while i < len(argv) and argv[i] == "--hide" and i + 1 < len(argv):
        hide.append(argv[i + 1])
        i += 2
    if i >= len(argv) or argv[i] != "--" or i + 1 >= len(argv):
        raise IsolationFailed("usage: isolate_exec [--hide PATH]... -- COMMAND...")
    return hide, argv[i + 1:]


def main(argv: list[str]) -> int:
    try:
        hide, command = parse(argv)
        loopback_up()
        for path in hide:
            try:
                cover(path)
            except IsolationFailed:
                if os.path.lexists(path):  # gone meanwhile: nothing left to hide
                    raise
        os.environ["ATB_ISOLATION_ACTIVE"] = "1"
    except (IsolationFailed, OSError) as exc:
        print(f"atb: isolation failed: {exc}", file=sys.stderr)
        return EXIT_FAILED
    try:
        os.execvp(command[0], command)
    except FileNotFoundError:
        print(f"command not found: {command[0]}", file=sys.stderr)
        return EXIT_NOT_FOUND
    except OSError as exc:
        print(f"atb: isolation failed: {exc}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_FAILED  # not reached: execvp replaced this process


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
