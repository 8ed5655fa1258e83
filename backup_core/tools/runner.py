"""The one way we run external programs: argv lists, captured stderr, errors that carry it.

`run` waits for a program; `spawn` starts one whose output the caller streams (pg_dump);
`spawn_text` starts a long-lived child whose output lines the caller reads (the drill's pytest
child, an application's command). All log the redacted argv at debug level and seal the child's
environment; `run` and `spawn` demote it when asked.
Code that runs programs takes a `Runner` (defaulting to `run`), so a unit test can record the
exact argv without starting anything.
"""

from __future__ import annotations

import ctypes
import logging
import os
import pwd
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Protocol

from backup_core.tools import childenv, seccomp
from backup_core.tools.conninfo import redact
from backup_core.tools.errors import CommandFailed, ToolchainError

log = logging.getLogger("atb.run")
_PR_SET_PDEATHSIG = 1  # linux/prctl.h


@dataclass(frozen=True)
class Completed:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The sealed environment (see `childenv`) plus `extra`: nothing reaches a child by
    inheritance that names or unlocks a database."""
    return childenv.sealed(extra)


def demote_ids(run_as: str | None) -> tuple[int | None, int | None, list[int] | None]:
    """(user, group, extra_groups) for subprocess: run a child as `run_as` (PostgreSQL refuses
    root); all None to run as ourselves."""
    if not run_as:
        return None, None, None
    entry = pwd.getpwnam(run_as)
    return entry.pw_uid, entry.pw_gid, []


class Runner(Protocol):
    """What `run` is: the signature a test double records argv through."""

    def __call__(
        self,
        argv: Sequence[str],
        *,
        what: str,
        env: Mapping[str, str] | None = None,
        check: bool = True,
        timeout: float | None = None,
        run_as: str | None = None,
        cwd: Path | None = None,
        no_unix: bool = False,
    ) -> Completed: ...


def _not_found(what: str, program: str) -> ToolchainError:
    return ToolchainError(f"{what}: program {program} not found; install PostgreSQL client "
                          "tools or set PG_BINDIR (see `atb doctor`)")


def run(
    argv: Sequence[str],
    *,
    what: str,
    env: Mapping[str, str] | None = None,
    check: bool = True,
    timeout: float | None = None,
    run_as: str | None = None,
    cwd: Path | None = None,
    no_unix: bool = False,
) -> Completed:
    """Run `argv` to completion; on failure raise `CommandFailed` carrying the tool's stderr.
    `no_unix`: it, and all it starts, can open no unix socket (`seccomp`; a server sealed so
    has no route of its own, dblink's or COPY TO PROGRAM's, to a socket of the host)."""
    args = [str(a) for a in argv]
    log.debug("run %s", redact(" ".join(args)))
    uid, gid, groups = demote_ids(run_as)
    try:
        proc = subprocess.run(
            args,
            env=child_env(env),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=timeout,
            cwd=cwd,
            check=False,
            user=uid,
            group=gid,
            extra_groups=groups,
            preexec_fn=seccomp.deny_unix_sockets if no_unix else None,
        )
    except FileNotFoundError as exc:
        raise _not_found(what, args[0]) from exc
    except subprocess.TimeoutExpired as exc:
        raise CommandFailed(f"{what}: timed out after {timeout:g}s") from exc
    done = Completed(tuple(args), proc.returncode, proc.stdout, redact(proc.stderr))
    if check and proc.returncode != 0:
        raise CommandFailed(f"{what} failed: {first_error_line(done.stderr)}", detail=done.stderr)
    return done


def spawn(
    argv: Sequence[str],
    *,
    what: str,
    stdout: int | IO[bytes],
    stderr: int | IO[bytes],
    env: Mapping[str, str] | None = None,
    run_as: str | None = None,
    stdin: int | IO[bytes] = subprocess.DEVNULL,
    cwd: Path | None = None,
    no_unix: bool = False,
) -> subprocess.Popen[bytes]:
    """Start `argv` for a caller that streams its output (binary) and waits for it itself:
    the same logging, sealed environment, demotion and `no_unix` as `run`. Use it as a
    context manager, killing the child when the caller's work fails."""
    args = [str(a) for a in argv]
    log.debug("run %s", redact(" ".join(args)))
    uid, gid, groups = demote_ids(run_as)
    try:
        return subprocess.Popen(args, stdin=stdin, stdout=stdout, stderr=stderr,
                                env=child_env(env), user=uid, group=gid, extra_groups=groups,
                                cwd=cwd, preexec_fn=seccomp.deny_unix_sockets if no_unix
                                else None)
    except FileNotFoundError as exc:
        raise _not_found(what, args[0]) from exc


def spawn_text(
    argv: Sequence[str],
    *,
    what: str,
    env: Mapping[str, str],
    new_session: bool = False,
    parent_death_signal: int | None = None,
    cwd: Path | None = None,
) -> subprocess.Popen[str]:
    """Start a long-lived child whose combined output the caller reads as text lines (the
    drill's pytest child, an application's command). `env` is the child's whole environment,
    already sealed by the caller (`childenv.sealed`, which decided what it passes). With
    `new_session`, the child leads a process group the caller can kill whole; with
    `parent_death_signal`, the kernel sends it that signal if we die first."""
    args = [str(a) for a in argv]
    log.debug("run %s (%s)", redact(" ".join(args)), what)
    preexec = None if parent_death_signal is None else _parent_death(parent_death_signal)
    # a missing program raises FileNotFoundError: what it means is the caller's to say (an
    # application's command not found is the command's verdict, exit 127)
    return subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, errors="replace",
                            env=dict(env), cwd=cwd, start_new_session=new_session,
                            preexec_fn=preexec)


def _parent_death(signum: int, *, parent: int | None = None) -> Callable[[], None]:
    """What the forked child runs before exec: the kernel sends it `signum` when `parent`
    (this process) dies; dead already (between the fork and the arming), it sends itself."""
    # the C library already loaded and its prctl bound here, before the fork: `find_library`
    # runs `ldconfig`, and a lookup in the forked child (with threads about) may deadlock
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    expected = os.getpid() if parent is None else parent

    def arm() -> None:  # in the child, before exec (Linux prctl PR_SET_PDEATHSIG)
        prctl(_PR_SET_PDEATHSIG, signum, 0, 0, 0)
        if os.getppid() != expected:  # orphaned before it was armed: nobody will signal
            os.kill(os.getpid(), signum)
    return arm


def first_error_line(stderr: str) -> str:
    """The most telling line of a PostgreSQL tool's stderr, for a one-line message."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    for ln in lines:
        if "error" in ln.lower() or "fatal" in ln.lower():
            return ln
    return lines[0] if lines else "(no output)"


def last_line(output: str) -> str:
    """The last non-blank line: where a Python traceback names its exception."""
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    return lines[-1] if lines else "(no output)"
