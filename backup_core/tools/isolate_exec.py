"""The launcher inside the namespaces `isolation.isolated_argv` creates: bring the new
network namespace's loopback up (it starts down, and a local sandbox or a relay listener may
want it), cover each `--hide` path with /dev/null, then become the real command.

In the new PID namespace (`unshare --pid` without `--fork`: our children are in it, we are
not) the launcher forks the namespace's init, which mounts a /proc of its own (the host's
processes, and through /proc/PID/root the host's uncovered file system, are gone), reaps
orphans, and runs the command; when the command ends, init ends and the kernel kills
whatever the command left behind (a double-forked daemon included). Signals to the launcher
reach the command; its exit status (or the signal that ended it) is the launcher's.

`python -m backup_core.tools.isolate_exec [--hide PATH]... [--read-only PATH]... [--forward
HOST:PORT=SOCKET]... [--no-unix] [--nested] -- ARGV...`; one line on stderr and exit 3 when a
step fails, so nothing runs half-isolated. A forward listens on HOST:PORT inside and carries
each connection to SOCKET (a relay outside, the sandbox's socket); its process dies with the
command. `--no-unix`: the command and everything it starts can open no unix socket at all
(`seccomp`), so it reaches the sandbox only through a forward. `--nested`: already inside the
namespaces (the drill's pytest child starting application code): forwards and filter only.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import select
import signal
import socket
import struct
import sys
import threading
from dataclasses import dataclass, field

from backup_core.tools import namespaces, seccomp

SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1
MS_BIND = 4096
MS_RDONLY, MS_REMOUNT, MS_REC = 1, 32, 16384
MS_NOSUID, MS_NODEV, MS_NOEXEC = 2, 4, 8
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)
PR_SET_PDEATHSIG = 1
PR_CAPBSET_DROP = 24
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
# what the command never gets back: mounting (to uncover what we hid) and entering other
# namespaces (CAP_SYS_ADMIN), the network's configuration, tracing other processes
CAP_NET_ADMIN, CAP_SYS_PTRACE, CAP_SYS_ADMIN = 12, 19, 21
EXIT_FAILED = 3
EXIT_NOT_FOUND = 127  # as a shell says it


def _libc() -> ctypes.CDLL:
    """The C library already loaded: `ctypes.util.find_library` forks (ldconfig), and the
    first child after `unshare --pid` becomes the namespace's init, which must be ours."""
    return ctypes.CDLL(None, use_errno=True)


class IsolationFailed(Exception):
    """A step of the isolation could not be made."""


def check_namespaces() -> None:
    """Refuse to change anything in the host's own namespaces (run by hand, say): covers
    and `lo` belong to the namespaces `unshare` just made. `unshare` execs without forking,
    so our parent is the process that asked, in the namespaces we must differ from."""
    for kind in ("net", "mnt"):
        try:
            same = os.readlink(f"/proc/self/ns/{kind}") == os.readlink(
                f"/proc/{os.getppid()}/ns/{kind}")
        except OSError:  # the parent's namespaces are not ours to read: we are not in them
            continue
        if same:
            raise IsolationFailed(f"not in a new {kind} namespace: run through unshare")


def loopback_up() -> None:
    """`ip link set lo up`, by ioctl: no `ip` needed."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        req = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(s.fileno(), SIOCGIFFLAGS, req))[1]
        fcntl.ioctl(s.fileno(), SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags | IFF_UP))


def cover(path: str) -> None:
    """Bind-mount /dev/null over `path`: a socket then refuses connections, a file reads
    empty. Private to this mount namespace."""
    libc = _libc()
    if libc.mount(b"/dev/null", os.fsencode(path), None, MS_BIND, None) != 0:
        err = ctypes.get_errno()
        raise IsolationFailed(f"cannot hide {path}: {os.strerror(err)}")


def read_only(path: str) -> None:
    """Bind `path` onto itself read-only: whatever runs inside (as root too, with
    CAP_SYS_ADMIN dropped) cannot delete or change the backups it drills."""
    libc = _libc()
    target = os.fsencode(path)
    if libc.mount(target, target, None, MS_BIND | MS_REC, None) != 0 or libc.mount(
            None, target, None, MS_REMOUNT | MS_BIND | MS_RDONLY, None) != 0:
        raise IsolationFailed(f"cannot make {path} read-only: "
                              f"{os.strerror(ctypes.get_errno())}")


def mount_proc() -> None:
    """A /proc of this PID namespace over the host's: only our own processes are in it."""
    libc = _libc()
    if libc.mount(b"proc", b"/proc", b"proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, None) != 0:
        raise IsolationFailed(f"cannot mount /proc: {os.strerror(ctypes.get_errno())}")


def die_with_parent() -> None:
    libc = _libc()
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def supervise(pid: int, *, reap_all: bool) -> int:
    """Wait for `pid` (reaping every orphan too, as init), passing it our signals; its exit
    status, or 128 + the signal that ended it."""
    for sig in FORWARDED:
        signal.signal(sig, lambda signum, _frame: os.kill(pid, signum))
    while True:
        try:
            done, status = os.waitpid(-1 if reap_all else pid, 0)
        except ChildProcessError:
            return EXIT_FAILED
        if done == pid:
            for sig in FORWARDED:
                signal.signal(sig, signal.SIG_DFL)
            return os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) \
                else 128 + os.WTERMSIG(status)


def drop_capabilities() -> None:
    """Before exec: the command and its children cannot undo the isolation. Ambient
    capabilities (kept through `unshare --keep-caps` without root) are cleared too."""
    libc = _libc()
    for cap in (CAP_SYS_ADMIN, CAP_NET_ADMIN, CAP_SYS_PTRACE):
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise IsolationFailed(f"cannot drop capability {cap}: "
                                  f"{os.strerror(ctypes.get_errno())}")
    libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)


@dataclass(frozen=True)
class Launch:
    """What the launcher was asked to do."""

    command: list[str]
    hide: list[str] = field(default_factory=list)
    read_only: list[str] = field(default_factory=list)
    forward: dict[str, str] = field(default_factory=dict)
    no_unix: bool = False  # the command (and all it starts) can open no unix socket
    nested: bool = False  # already inside the namespaces: forwards and the filter only


FLAGS = ("--no-unix", "--nested")
USAGE = ("usage: isolate_exec [--hide PATH]... [--read-only PATH]... "
         "[--forward HOST:PORT=SOCKET]... [--no-unix] [--nested] -- COMMAND...")


def parse(argv: list[str]) -> Launch:
    """`[--hide P]... [--read-only P]... [--forward HOST:PORT=SOCKET]... [--no-unix]
    [--nested] -- CMD...`"""
    hide: list[str] = []
    frozen: list[str] = []
    forward: dict[str, str] = {}
    flags: set[str] = set()
    i = 0
    while i < len(argv) and (argv[i] in FLAGS or (
            i + 1 < len(argv) and argv[i] in ("--hide", "--read-only", "--forward"))):
        if argv[i] in FLAGS:
            flags.add(argv[i])
            i += 1
            continue
        if argv[i] == "--hide":
            hide.append(argv[i + 1])
        elif argv[i] == "--read-only":
            frozen.append(argv[i + 1])
        else:
            addr, sep, path = argv[i + 1].partition("=")
            if not sep or not path:
                raise IsolationFailed(f"--forward takes HOST:PORT=SOCKET, not {argv[i + 1]!r}")
            forward[addr] = path
        i += 2
    if i >= len(argv) or argv[i] != "--" or i + 1 >= len(argv):
        raise IsolationFailed(USAGE)
    if "--nested" in flags and (hide or frozen):
        raise IsolationFailed("--nested changes no mount: --hide and --read-only need the "
                              "namespaces")
    return Launch(argv[i + 1:], hide, frozen, forward, "--no-unix" in flags,
                  "--nested" in flags)


def listen(addr: str) -> socket.socket:
    host, _, port = addr.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(family, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, int(port)))
    s.listen(16)
    return s


def splice(a: socket.socket, b: socket.socket) -> None:
    """Carry bytes both ways. An end of input is passed on as one (a half close: a client
    that sends its last message and waits for the server to hang up, as asyncpg's close
    does, sees it hang up); an error ends both ways; the last way out closes both."""
    left = [2]
    lock = threading.Lock()

    def pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)
        except OSError:
            for s in (src, dst):  # wakes the other way's recv
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
        with lock:
            left[0] -= 1
            last = left[0] == 0
        if last:
            src.close()
            dst.close()

    threading.Thread(target=pipe, args=(a, b), daemon=True).start()
    threading.Thread(target=pipe, args=(b, a), daemon=True).start()


def forward_to(listener: socket.socket, path: str) -> None:
    """Accept on `listener` until it closes, carrying each connection to the unix socket
    `path` (one that cannot be reached is dropped)."""
    with contextlib.suppress(OSError):  # the listener closed: done
        while True:
            client, _ = listener.accept()
            up = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                up.connect(path)
            except OSError:
                client.close()
                up.close()
                continue
            splice(client, up)


def _serve_forwards(listeners: list[tuple[socket.socket, str]]) -> None:
    """The forwarder process: each listener served by a thread of its own."""
    threads = [threading.Thread(target=forward_to, args=pair, daemon=True)
               for pair in listeners]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def start_forwards(forward: dict[str, str], *, nested: bool = False) -> None:
    """Listen on each address now (before the command can look), and serve them from a
    process that dies with the command (this process, after exec). Nested, the server is
    no child of the command (a command that waits for all its children would wait for it
    forever): it is forked twice and watches the command's pid instead."""
    if not forward:
        return
    listeners = [(listen(addr), path) for addr, path in forward.items()]
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:
        try:
            if nested and os.fork() != 0:
                os._exit(0)  # the middle process: the server is now nobody's child here
            watch = os.pidfd_open(parent) if nested else None
            if not nested:
                _libc().prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
                if os.getppid() != parent:
                    os._exit(0)
            null = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):  # never hold the command's output pipes open
                os.dup2(null, fd)
            if watch is not None:
                threading.Thread(target=_serve_forwards, args=(listeners,),
                                 daemon=True).start()
                select.select([watch], [], [])  # readable when the command has ended
            else:
                _serve_forwards(listeners)
        finally:
            os._exit(0)
    if nested:
        os.waitpid(pid, 0)
    for listener, _ in listeners:
        listener.close()


def run_command(command: list[str], *, no_unix: bool = False, nested: bool = False) -> int:
    """In the command's process: give up what could undo the isolation (and, `no_unix`,
    every unix socket), then exec."""
    try:
        if not nested:  # nested: they were dropped when the namespaces were made
            drop_capabilities()
        if no_unix:
            seccomp.deny_unix_sockets()
        # names this network namespace: our children know they are inside it, and a copy of
        # the variable that reaches a process elsewhere means nothing there
        os.environ[namespaces.ACTIVE_ENV] = os.readlink("/proc/self/ns/net")
    except (IsolationFailed, seccomp.SeccompUnavailable, OSError) as exc:
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


def init(launch: Launch) -> int:
    """PID 1 of the new namespace: its own /proc, the forwards, then the command."""
    try:
        die_with_parent()
        mount_proc()
        start_forwards(launch.forward)
    except (IsolationFailed, OSError) as exc:
        print(f"atb: isolation failed: {exc}", file=sys.stderr)
        return EXIT_FAILED
    sys.stdout.flush()
    pid = os.fork()
    if pid == 0:
        os._exit(run_command(launch.command, no_unix=launch.no_unix))
    return supervise(pid, reap_all=True)


def nested(launch: Launch) -> int:
    """Inside the drill's namespaces already (its pytest child starting application code):
    the forwards, then the command sealed in this same process."""
    try:
        start_forwards(launch.forward, nested=True)
    except (IsolationFailed, OSError) as exc:
        print(f"atb: isolation failed: {exc}", file=sys.stderr)
        return EXIT_FAILED
    sys.stdout.flush()
    return run_command(launch.command, no_unix=launch.no_unix, nested=True)


def main(argv: list[str]) -> int:
    try:
        launch = parse(argv)
        if launch.nested:
            return nested(launch)
        check_namespaces()
        loopback_up()
        for path in launch.read_only:
            read_only(path)
        for path in launch.hide:
            try:
                cover(path)
            except IsolationFailed:
                # gone meanwhile, or out of our reach anyway (another user's private
                # directory, without root): nothing to hide from us
                if os.path.lexists(path) and (os.access(path, os.R_OK)
                                              or os.access(path, os.W_OK)):
                    raise
    except (IsolationFailed, OSError) as exc:
        print(f"atb: isolation failed: {exc}", file=sys.stderr)
        return EXIT_FAILED
    # the owner of any sandbox made inside, as the host sees it (see backup_core.tools.reaper)
    with open("/proc/self/stat") as fh:
        stat = fh.read()
    start = stat[stat.rfind(")") + 2:].split()[19]
    os.environ["ATB_ISOLATION_OWNER"] = f"{os.getpid()}:{start}@{socket.gethostname()}"
    pid = os.fork()  # the new PID namespace's init
    if pid == 0:
        code = EXIT_FAILED
        try:
            code = init(launch)
        finally:
            os._exit(code)
    code = supervise(pid, reap_all=False)
    if code > 128 and code - 128 in FORWARDED:  # ended by a signal: end as it did
        os.kill(os.getpid(), code - 128)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
