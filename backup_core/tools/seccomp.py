"""No unix socket can be opened by application code: a seccomp filter that makes
`socket(AF_UNIX, ...)` fail with EACCES in this process and everything it starts.

Hiding sockets by name (what `isolate_exec` covers) cannot be complete: a socket is reached
by any path that leads to its inode, and a hard link, a bind mount or a container's volume
gives it names nobody can list. The network namespace already leaves TCP nowhere to go; this
removes unix sockets as a class, whatever their path, production's and the Docker engine's
alike. `socketpair` (already connected, reaching nothing) is still allowed, and so is every
other family; the sandbox is reached over the namespace's own loopback, carried to its socket
by a forwarder started before the filter.

The filter cannot be lifted: a process gives up the right to gain privileges first
(`PR_SET_NO_NEW_PRIVS`), and a filter, once set, binds its children forever.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import socket
import struct

PR_SET_NO_NEW_PRIVS = 38
SECCOMP_SET_MODE_FILTER = 1
SECCOMP_FILTER_FLAG_TSYNC = 1
SECCOMP_RET_ALLOW = 0x7FFF0000
SECCOMP_RET_ERRNO = 0x00050000
X32_SYSCALL_BIT = 0x40000000
# BPF opcodes: ld word absolute; jump if equal / greater-or-equal (constant); return constant
BPF_LD_W_ABS, BPF_JEQ_K, BPF_JGE_K, BPF_RET_K = 0x20, 0x15, 0x35, 0x06
# offsets in struct seccomp_data: nr, arch, then args[0] (its low word on little-endian)
NR, ARCH, ARG0 = 0, 4, 16
# machine -> (AUDIT_ARCH_*, __NR_socket, __NR_seccomp)
ARCHES = {"x86_64": (0xC000003E, 41, 317), "aarch64": (0xC00000B7, 198, 277)}


class SeccompUnavailable(Exception):
    """This platform cannot set the filter."""


def _arch() -> tuple[int, int, int]:
    machine = platform.machine()
    if not os.uname().sysname == "Linux" or machine not in ARCHES:
        raise SeccompUnavailable(f"no seccomp filter for {os.uname().sysname} on {machine}")
    return ARCHES[machine]


def program(audit_arch: int, nr_socket: int) -> bytes:
    """The filter: another ABI (x32, or 32-bit code on a 64-bit kernel, which reaches
    sockets through `socketcall`) gets EACCES for everything; `socket(AF_UNIX, ...)` gets
    EACCES; the rest is allowed."""
    deny = SECCOMP_RET_ERRNO | errno.EACCES

    def op(code: int, k: int, jt: int = 0, jf: int = 0) -> bytes:
        return struct.pack("=HBBI", code, jt, jf, k)

    return b"".join([
        op(BPF_LD_W_ABS, ARCH),
        op(BPF_JEQ_K, audit_arch, jt=1, jf=0),
        op(BPF_RET_K, deny),
        op(BPF_LD_W_ABS, NR),
        op(BPF_JGE_K, X32_SYSCALL_BIT, jt=0, jf=1),
        op(BPF_RET_K, deny),
        op(BPF_JEQ_K, nr_socket, jt=0, jf=3),
        op(BPF_LD_W_ABS, ARG0),
        op(BPF_JEQ_K, socket.AF_UNIX, jt=0, jf=1),
        op(BPF_RET_K, deny),
        op(BPF_RET_K, SECCOMP_RET_ALLOW),
    ])


class _Fprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def deny_unix_sockets(*, all_threads: bool = False) -> None:
    """Set the filter on this process (every thread with `all_threads`); raise
    `SeccompUnavailable` when the kernel refuses, so nothing runs believing it is sealed."""
    audit_arch, nr_socket, nr_seccomp = _arch()
    code = program(audit_arch, nr_socket)
    buf = ctypes.create_string_buffer(code, len(code))
    prog = _Fprog(len(code) // 8, ctypes.cast(buf, ctypes.c_void_p).value)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise SeccompUnavailable(f"no_new_privs: {os.strerror(ctypes.get_errno())}")
    flags = SECCOMP_FILTER_FLAG_TSYNC if all_threads else 0
    if libc.syscall(nr_seccomp, SECCOMP_SET_MODE_FILTER, flags, ctypes.byref(prog)) != 0:
        raise SeccompUnavailable(f"seccomp: {os.strerror(ctypes.get_errno())}")


def unix_sockets_denied() -> bool:
    """Whether this thread is under the filter already, found by trying (another filter, a
    container's say, leaves unix sockets open: only the attempt tells)."""
    try:
        socket.socket(socket.AF_UNIX, socket.SOCK_STREAM).close()
    except PermissionError:
        return True
    except OSError:
        return False
    return False
