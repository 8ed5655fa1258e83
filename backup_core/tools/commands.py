"""Command lines of the PostgreSQL tools more than one module runs, as pure functions.

Each returns the exact argv (`list[str]`), so a unit test checks it without starting
anything; running it is `runner.run`'s job. Connection details travel as a conninfo without
secrets (see `childenv.for_tool`), never a password.
"""

from __future__ import annotations

from pathlib import Path

from backup_core.tools.toolchain import Toolchain


def pg_restore_list_argv(chain: Toolchain, archive: Path) -> list[str]:
    """The archive's table of contents: reads the header and TOC, not the data."""
    return [chain.tool("pg_restore"), "--list", str(archive)]


def pg_restore_read_argv(chain: Toolchain, archive: Path) -> list[str]:
    """Every data block read and decompressed, the SQL thrown away: a deep read."""
    return [chain.tool("pg_restore"), "--file=/dev/null", str(archive)]


def pg_restore_read_items_argv(chain: Toolchain, archive: Path, use_list: Path) -> list[str]:
    """The data of only the entries `use_list` names read, the SQL thrown away: which of a
    parallel restore's items is damaged, asked of each alone."""
    return [chain.tool("pg_restore"), "--file=/dev/null", f"--use-list={use_list}",
            str(archive)]


def pg_restore_stream_argv(chain: Toolchain, *, deep: bool) -> list[str]:
    """The TOC (or, deep, every data block) of an archive streamed on stdin: pg_restore reads
    a pipe only as its standard input (a named pipe it opens twice, losing the header)."""
    return [chain.tool("pg_restore"), "--file=/dev/null" if deep else "--list"]


def pg_waldump_argv(chain: Toolchain, segment: Path) -> list[str]:
    """The transaction records of one WAL segment: atb reads only their commit times (the
    same commits, a tenth of the CPU of printing every record of a busy segment)."""
    return [chain.tool("pg_waldump"), "--rmgr=Transaction", str(segment)]


# initdb's system catalogs, as pg_amcheck patterns (psql's: `*` any characters, regular
# expression brackets and alternation kept): every relation of pg_catalog but those named
# pg_lar*, i.e. pg_largeobject, pg_largeobject_metadata and their indexes, which hold the
# large objects a dump restored (data, not definitions); information_schema, initdb's alone
SYSTEM_CATALOGS_BUT_LARGE_OBJECTS = (
    "--exclude-schema=information_schema",
    "--exclude-relation=pg_catalog.(pg_[^l]*|pg_l[^a]*|pg_la[^r]*)")


def pg_amcheck_argv(chain: Toolchain, conninfo: str, *, jobs: int = 1,
                    catalogs: bool = True) -> list[str]:
    """Every heap page and B-tree index of the database, installing amcheck if missing;
    `jobs` relations at a time. Without `catalogs`, the system catalogs are left out but
    the large objects' (pg_largeobject, pg_largeobject_metadata): a copy restored from a
    dump into a new database has catalogs of the server's own making, not production's,
    while its large objects are production's data. Those two always exist, so a database
    without a table still has relations to check (pg_amcheck exits 1 when none match)."""
    return [chain.tool("pg_amcheck"), "--install-missing", "--no-password",
            *([] if catalogs else SYSTEM_CATALOGS_BUT_LARGE_OBJECTS),
            *([f"--jobs={jobs}"] if jobs > 1 else []), conninfo]


def pg_dump_schema_argv(chain: Toolchain, conninfo: str, out: Path) -> list[str]:
    """A schema-only archive of a database, whose --list names objects as its source's did."""
    return [chain.tool("pg_dump"), "--format=custom", "--schema-only", "--no-password",
            f"--file={out}", f"--dbname={conninfo}"]
