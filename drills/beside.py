"""What the checks read from the restored copy (pg_amcheck's verdict, the copy's own table of
contents, its sequences, indexes, foreign keys and heartbeat), taken beside the read-back of
every table rather than after it: the slower ones wait mostly on a child process, so the
drill's checks phase is then about the longest of them, not their sum, and the quick ones are
asked on one connection rather than one each (the archive's own listing, which needs the
archive alone, is read while it restores). The checks judge these values; an error is kept
and raised there."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Collection
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar, cast

import psycopg
from psycopg import sql

from backup_core.ops import heartbeat
from backup_core.ops.restore import archive_major
from backup_core.reading import toc
from backup_core.store.catalog import Backup
from backup_core.tools import childenv, db, probes, toolchain
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
    catalogs: bool = True  # the system catalogs checked too


@dataclass(frozen=True)
class Listing:
    """The archive's table of contents (None: `unreadable` says why no pg_restore here can
    list it) and the restored database's own (None: `why` says why not)."""

    archive: list[toc.TocEntry] | None
    entries: list[toc.TocEntry] | None
    why: str = ""
    unreadable: str = ""
    error: AtbError | None = None


def amcheck(sandbox: SandboxInfo, *, catalogs: bool = True) -> Amcheck:
    """Every heap page and B-tree index of the copy, a few relations at a time; without
    `catalogs`, of the restored schemas and the large objects only (a dump restored into a
    new database: its other system catalogs are the sandbox server's own, not production's)."""
    chain = sandbox.chain
    if chain is None or not chain.has("pg_amcheck"):
        return Amcheck(skipped="no pg_amcheck in the sandbox's toolchain")
    try:
        with childenv.for_tool(sandbox.for_tools) as (conninfo, tool_env):
            done = run(pg_amcheck_argv(chain, conninfo, jobs=min(4, os.cpu_count() or 1),
                                       catalogs=catalogs),
                       what="pg_amcheck", env=tool_env, check=False, timeout=3600)
    except AtbError as exc:
        return Amcheck(version=chain.version, error=exc)
    if "permission denied to create extension" in done.stderr:
        return Amcheck(version=chain.version,
                       skipped="pg_amcheck needs the amcheck extension, which only a superuser "
                               "of the sandbox server can install")
    return Amcheck(returncode=done.returncode, output=done.stdout + done.stderr,
                   version=chain.version, catalogs=catalogs)


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


T = TypeVar("T")


@dataclass(frozen=True)
class Taken(Generic[T]):
    """A value read beside, or the error reading it raised: raised again by the check that
    judges it, where its own query would have raised it."""

    value: T | None = None
    error: Exception | None = None
    refused: AtbError | None = None  # the one connection refused, behind every fact

    def get(self) -> T:
        if self.refused is not None:
            # a fresh error for each check raising it: one object raised by several checks
            # would carry each one's traceback on to the next
            raise type(self.refused)(str(self.refused),
                                     detail=self.refused.detail) from self.refused
        if self.error is not None:
            raise self.error
        return cast(T, self.value)


def take(read: Callable[[], T]) -> Taken[T]:
    try:
        return Taken(read())
    except Exception as exc:  # the check judging it raises it
        return Taken(error=exc)


USER_INDEXES_SQL = """
    SELECT count(*) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
    JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')"""


@dataclass(frozen=True)
class IndexFacts:
    total: int  # user indexes
    invalid: tuple[str, ...]


def index_facts(conn: psycopg.Connection[Any]) -> IndexFacts:
    row = conn.execute(USER_INDEXES_SQL).fetchone()
    return IndexFacts(total=int(row[0]) if row else 0,
                      invalid=tuple(probes.invalid_indexes(conn)))


@dataclass(frozen=True)
class KeyFacts:
    total: int  # foreign keys
    checked: int  # read row by row
    problems: tuple[str, ...]


def key_facts(conn: psycopg.Connection[Any], *, every_row: bool) -> KeyFacts:
    """Every foreign key counted; those never validated (or all, `every_row`) read row by
    row for orphans."""
    row = conn.execute("SELECT count(*) FROM pg_constraint WHERE contype = 'f'").fetchone()
    checked, problems = probes.foreign_key_violations(conn, only_not_valid=not every_row)
    return KeyFacts(total=int(row[0]) if row else 0, checked=checked, problems=tuple(problems))


# the checks whose facts `copy_facts` reads, by the name of the fact
FACT_CHECKS = {"data": "test_every_archive_entry_is_in_the_restored_database",
               "sequences": "test_sequences_are_ahead_of_their_columns",
               "indexes": "test_indexes_are_valid",
               "keys": "test_foreign_keys_hold_for_every_row",
               "heartbeat": "test_heartbeat_is_fresh_at_backup_time"}


@dataclass(frozen=True)
class CopyFacts:
    """What the checks after the read-back ask of the restored copy, read at once on one
    connection beside the read-back: which archive entries' data it has, its sequences
    against their columns, its indexes, its foreign keys and its newest heartbeat. Read
    only where nothing changes the copy before those checks (a logical drill without a
    migration), so each judges the copy as it would have read it; a fact not asked for (its
    check left out) is None, and a check reads its own then."""

    data: Taken[dict[str, bool]] | None = None
    sequences: Taken[tuple[int, list[str]]] | None = None
    indexes: Taken[IndexFacts] | None = None
    keys: Taken[KeyFacts] | None = None
    heartbeat: Taken[heartbeat.Newest] | None = None


def copy_facts(url: ConnInfo, *, wanted: Collection[str], heartbeat_table: str,
               archive: Callable[[], ArchiveToc] | None = None) -> CopyFacts:
    """The facts named in `wanted` (keys of `FACT_CHECKS`), each query its own transaction
    (one that fails spoils none of the others); the archive's entries from `archive`. A
    connection refused is each fact's error."""
    conn: psycopg.Connection[Any] | None = None
    refused: AtbError | None = None
    try:
        conn = db.connect(url, autocommit=True)
    except AtbError as exc:
        refused = exc

    def fact(name: str, read: Callable[[psycopg.Connection[Any]], T]) -> Taken[T] | None:
        if name not in wanted:
            return None
        opened = conn
        if opened is None:
            return Taken(refused=refused)
        return take(lambda: read(opened))

    def data(c: psycopg.Connection[Any]) -> dict[str, bool]:
        entries = archive().entries if archive is not None else None
        return toc.find_data(c, entries) if entries is not None else {}

    try:
        return CopyFacts(
            data=fact("data", data) if archive is not None else None,
            sequences=fact("sequences", probes.sequences_behind),
            indexes=fact("indexes", index_facts),
            keys=fact("keys", lambda c: key_facts(c, every_row=False)),
            heartbeat=fact("heartbeat",
                           lambda c: heartbeat.newest_on(c, url, table=heartbeat_table)))
    finally:
        if conn is not None:
            conn.close()
