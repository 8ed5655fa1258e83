"""`atb doctor`: which PostgreSQL toolchains and which pgBackRest this host has, what each
toolchain is chosen for (the same choice `toolchain.for_dump` and friends make), and which
account runs each kind of drill's sandbox server (the same choice the sandboxes make)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from backup_core.pitr import pgbackrest
from backup_core.tools import cluster, compression, toolchain
from backup_core.tools.errors import AtbError

FIRST_MAJOR = 9  # the oldest server major atb dumps: the rows of "used for"


@dataclass(frozen=True)
class ToolchainUse:
    major: int
    version: str
    source: str
    bindir: Path
    tools: tuple[str, ...]
    uses: tuple[str, ...]


@dataclass(frozen=True)
class PgbackrestFound:
    found: str
    supported_majors: tuple[int, int] | None


@dataclass(frozen=True)
class CompressionUse:
    """The default compression of backups of one server major, and why."""

    server_major: int
    pg_dump: str
    compression: str
    why: str


@dataclass(frozen=True)
class SandboxAccount:
    """The account a drill's local sandbox server (or, `role`, what else of a drill) runs as
    (None: not root, so as this user) and why; or why a drill would refuse it (`refused`,
    exit 2 before the drill starts)."""

    drill: str  # "dump" or "point-in-time"
    account: str | None
    why: str
    refused: str = ""
    role: str = "local sandbox server"
    # why this drill cannot run on this host at all, which is no refusal of a choice (exit 0)
    unavailable: str = ""


@dataclass(frozen=True)
class Survey:
    toolchains: tuple[ToolchainUse, ...]
    pgbackrest: PgbackrestFound | None
    compression: tuple[CompressionUse, ...] = ()
    sandbox_accounts: tuple[SandboxAccount, ...] = ()


def survey(chains: list[toolchain.Toolchain] | None = None) -> Survey:
    """Every toolchain found with its jobs, and pgBackRest's version and supported majors."""
    found = toolchain.discover() if chains is None else chains
    engine = pgbackrest.version()
    return Survey(
        toolchains=tuple(ToolchainUse(c.major, c.version, c.source, c.bindir, tuple(c.tools),
                                      uses(c, found)) for c in found),
        pgbackrest=None if engine is None else PgbackrestFound(*engine),
        compression=compressions(found), sandbox_accounts=sandbox_accounts())


def sandbox_accounts() -> tuple[SandboxAccount, ...]:
    """Who runs a dump drill's sandbox (`cluster.sandbox_account`: an account that owns
    nothing of production), a point-in-time one (`cluster.point_in_time_account`: the same,
    and not the repository's reader), and who restores the latter's files and fetches its
    WAL (`cluster.service_account`, the `service_user` and why: it reads pgBackRest's
    repository), each with its reason or why it is refused. A host with no reader of its
    own (no postgres account, no ATB_PG_USER) has no point-in-time sandbox to refuse: its
    line says the drill is unavailable here."""
    found = []
    for drill, role, choose in (
            ("dump", "local sandbox server", cluster.sandbox_account),
            ("point-in-time", "local sandbox server", cluster.point_in_time_account),
            ("point-in-time", "pgBackRest restore and WAL fetch", cluster.service_account)):
        try:
            run_as = choose()
        except AtbError as exc:
            if choose is cluster.point_in_time_account and not _distinct_reader():
                found.append(SandboxAccount(drill, None, "", role=role, unavailable=(
                    f"no {cluster.PROTECTED_ACCOUNT} account to read a pgBackRest repository "
                    f"here, and the fallback reader is the sandbox's own account ({exc})")))
                continue
            found.append(SandboxAccount(drill, None, "", refused=str(exc), role=role))
        else:
            found.append(SandboxAccount(drill, run_as.name, run_as.why, role=role))
    return tuple(found)


def _distinct_reader() -> bool:
    """Whether pgBackRest's repository has a reader of its own here: the user's
    (`ATB_PG_USER`), or `postgres`; else the reader is the fallback account, the sandbox's
    too when there is no `atb-sandbox`."""
    return bool(os.environ.get(cluster.SERVICE_USER_ENV)) or \
        cluster.os_account(cluster.PROTECTED_ACCOUNT) is not None


def compressions(chains: list[toolchain.Toolchain]) -> tuple[CompressionUse, ...]:
    """For each major a dump toolchain here serves as itself, the default `--compress` of
    its backups (the runbook's pg_restore taken to be the server's major, as the drill does)."""
    found = []
    for chain in chains:
        if not chain.has("pg_dump") or toolchain.for_dump(chain.major, chains) != chain:
            continue
        choice = compression.default_for(chain, chain.major)
        found.append(CompressionUse(chain.major, chain.version, choice.compression.spec,
                                    choice.why))
    return tuple(found)


def uses(chain: toolchain.Toolchain, chains: list[toolchain.Toolchain]) -> tuple[str, ...]:
    """What `chain` is selected for among `chains`: a pure decision over the selection rules."""
    found = []
    if chain.has("pg_dump") and chain.major >= FIRST_MAJOR:
        majors = [m for m in range(FIRST_MAJOR, chain.major + 1)
                  if toolchain.for_dump(m, chains) == chain]
        if majors:
            found.append(f"pg_dump for servers {span(majors)}")
    if chain.has("pg_restore"):
        majors = [m for m in range(FIRST_MAJOR, chain.major + 1)
                  if toolchain.for_restore(m, chains) == chain]
        if majors:
            found.append(f"pg_restore for archives {span(majors)}")
    if chain.can_serve:
        majors = [m for m in range(FIRST_MAJOR, chain.major + 1)
                  if toolchain.for_server(m, chains) == chain]
        if majors:
            found.append(f"sandbox server for dumps {span(majors)}")
    return tuple(found) or ("not selected for any job",)


def span(majors: list[int]) -> str:
    return str(majors[0]) if len(majors) == 1 else f"{majors[0]}-{majors[-1]}"
