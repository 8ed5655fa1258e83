"""What the slower checks read from the restored copy (pg_amcheck's verdict, the copy's own
table of contents), taken beside the read-back of every table rather than after it: each
waits mostly on a child process, so the drill's checks phase is then about the longest of
them, not their sum (the archive's own listing, which needs the archive alone, is read while
it restores). The checks judge these values; an error is kept and raised there."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from psycopg import sql

from backup_core.ops.restore import archive_major
from backup_core.reading import toc
from backup_core.store.catalog import Backup
from backup_core.tools import childenv, db, toolchain
from backup_core.tools.commands import pg_amcheck_argv, pg_dump_schema_argv, pg_restore_list_argv
from backup_core.tools.conninfo import ConnInfo
from backup_core.tools.errors import AtbError
from backup_core.tools.runner import run
from drills.sandbox import SandboxInfo


@dataclass(frozen=True)
class Amcheck:
    """pg_amcheck's run over the copy: its exit code and output, or why it did not run."""

    returncode: int = 0
    output: str = ""
    version: str = ""
    skipped: str = ""
    error: AtbError | None = None  # it could not be run (raised by the check)


@dataclass(frozen=True)
class Listing:
    """The archive's table of contents (None: `unreadable` says why no pg_restore here can
    list it) and the restored database's own (None: `why` says why not)."""

    archive: list[toc.TocEntry] | None
    entries: list[toc.TocEntry] | None
    why: str = ""
    unreadable: str = ""
    error: AtbError | None = None


def amcheck(sandbox: SandboxInfo) -> Amcheck:
    """Every heap page and B-tree index of the copy, a few relations at a time."""
    chain = sandbox.chain
    if chain is None or not chain.has("pg_amcheck"):
        return Amcheck(skipped="no pg_amcheck in the sandbox's toolchain")
    try:
        with childenv.for_tool(sandbox.for_tools) as (conninfo, tool_env):
            done = run(pg_amcheck_argv(chain, conninfo, jobs=min(4, os.cpu_count() or 1)),
                       what="pg_amcheck", env=tool_env, check=False, timeout=3600)
    except AtbError as exc:
        return Amcheck(version=chain.version, error=exc)
    if "permission denied to create extension" in done.stderr:
        return Amcheck(version=chain.version,
                       skipped="pg_amcheck needs the amcheck extension, which only a superuser "
                               "of the sandbox server can install")
    return Amcheck(returncode=done.returncode, output=done.stdout + done.stderr,
                   version=chain.version)


@dataclass(frozen=True)
class ArchiveToc:
    """The archive's table of contents and the major of the pg_dump that wrote it (entries
    None: `unreadable` says why no pg_restore here can list it)."""

    major: int
    entries: list[toc.TocEntry] | None
    unreadable: str = ""


def archive_toc(backup: Backup, chains: list[toolchain.Toolchain]) -> ArchiveToc:
    """Read from the archive alone, so it can be taken while the archive restores."""
    major = archive_major(backup.path, chains)
    try:
        reader = toolchain.for_restore(major, chains)
    except AtbError as exc:
        return ArchiveToc(major, None, unreadable=f"no pg_restore can list the archive: {exc}")
    return ArchiveToc(major, toc.parse_listing(run(pg_restore_list_argv(reader, backup.path),
                                                   what="pg_restore --list").stdout))


def listings(backup: Backup, sandbox: SandboxInfo, chains: list[toolchain.Toolchain],
             *, taken: Callable[[], ArchiveToc] | None = None) -> Listing:
    """The archive's table of contents (`taken` gives it when it was read before), and the
    restored database's listed by a pg_dump of the archive's major (so both name objects
    alike)."""
    try:
        read = taken() if taken is not None else archive_toc(backup, chains)
        major, archive = read.major, read.entries
        if archive is None:
            return Listing(None, None, unreadable=read.unreadable)
        server = int(sandbox.server_version.split(".")[0])
        same = [c for c in chains if c.major == major and c.has("pg_dump") and c.major >= server]
        if not same:
            return Listing(archive, None,
                           why=f"no pg_dump {major} here to list the restored database "
                               f"(sandbox PostgreSQL {sandbox.server_version})")
        with tempfile.TemporaryDirectory(prefix="atb-toc-") as tmp, \
                childenv.for_tool(sandbox.for_tools) as (conninfo, tool_env):
            out = Path(tmp) / "restored.dump"
            run(pg_dump_schema_argv(same[0], conninfo, out), what="pg_dump --schema-only",
                env=tool_env, timeout=3600)
            listing = run(pg_restore_list_argv(same[0], out), what="pg_restore --list").stdout
    except AtbError as exc:
        return Listing(None, None, error=exc)
    return Listing(archive, toc.parse_listing(listing))


# What a database-wide ANALYZE takes (tables, materialized views, partitioned tables;
# foreign tables only when named, so not here), largest first
ANALYZED_SQL = """
    SELECT n.nspname, c.relname, c.relpages FROM pg_class c
    JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relkind IN ('r', 'm', 'p') AND c.relpersistence <> 't'
    ORDER BY c.relpages DESC, 1, 2"""


def halves(relations: list[tuple[str, str, int]]) -> list[list[tuple[str, str]]]:
    """(schema, name, pages), largest first, dealt into two lists of about equal pages (each
    to the lighter list so far); an empty list left out."""
    parts: list[list[tuple[str, str]]] = [[], []]
    pages = [0, 0]
    for schema, name, size in relations:
        k = pages.index(min(pages))
        parts[k].append((schema, name))
        pages[k] += max(size, 1)
    return [p for p in parts if p]


def analyze(url: ConnInfo) -> None:
    """The database-wide ANALYZE as two lists of about equal pages on two connections: one
    ANALYZE is one backend, which would finish alone on one core after the checks."""
    with db.connect(url, autocommit=True) as conn:
        found = [(str(s), str(n), int(p)) for s, n, p in conn.execute(ANALYZED_SQL).fetchall()]

    def analyze_some(names: list[tuple[str, str]]) -> None:
        with db.connect(url, autocommit=True) as conn:
            conn.execute(sql.SQL("ANALYZE {}").format(
                sql.SQL(", ").join(sql.Identifier(s, n) for s, n in names)))

    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="atb-analyze") as pool:
        for _ in pool.map(analyze_some, halves(found)):
            pass
