"""`atb drill run --prove-detection`: the same drill over a deliberately damaged copy of the
backup it has just drilled, to show that the drill can fail.

The copy is made honestly, not by flipping bytes (which only the file's hash would notice):
the backup is restored into a throwaway cluster, one row of its largest table is deleted and
one value of another row changed, the database is dumped again with pg_dump, and the new dump
gets the original manifest with only its size, SHA-256 and table of contents resealed. The
copy passes the integrity check, so only the checks that compare what came back with what
the manifest recorded at backup time can catch it; if the drill passes it, the drill is blind.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from backup_core.ops import backup
from backup_core.ops.restore import restore_argv
from backup_core.reading import target as target_db
from backup_core.store.manifest import read_manifest, write_manifest
from backup_core.store.naming import manifest_path, parse_stamp, roles_path
from backup_core.tools import childenv, db, toolchain
from backup_core.tools.conninfo import ConnInfo
from backup_core.tools.errors import AtbError
from backup_core.tools.runner import run
from drills import sandbox
from drills.options import DrillOptions
from drills.result import DetectionFacts, DrillResult

log = logging.getLogger("atb.drill")

# user tables with at least two rows, largest first; those no foreign key points at first (a
# removed row then breaks no constraint, and the restore itself cannot be what catches it)
TABLES_SQL = """
SELECT n.nspname, c.relname, c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg_toast%' AND c.relname <> 'alembic_version'
  AND NOT EXISTS (SELECT 1 FROM pg_inherits i WHERE i.inhrelid = c.oid)
ORDER BY EXISTS (SELECT 1 FROM pg_constraint f WHERE f.confrelid = c.oid), c.reltuples DESC,
         n.nspname, c.relname
"""
# a column to change: a plain number or text, in no constraint (no key, no check)
COLUMNS_SQL = """
SELECT a.attname, t.typcategory FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped
  AND a.attgenerated = ''
  AND t.typname IN ('int2', 'int4', 'int8', 'float4', 'float8', 'numeric', 'text', 'varchar',
                    'bpchar')
  AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conrelid = a.attrelid
                  AND a.attnum = ANY (k.conkey))
ORDER BY a.attnum
"""


def damage(conn: psycopg.Connection[Any]) -> tuple[str, ...]:
    """Remove one row and change one value of another in the database `conn` is on, without
    firing triggers; returns what was done, in words."""
    conn.execute("SET session_replication_role = replica")
    for schema, table, oid in conn.execute(TABLES_SQL).fetchall():
        name = sql.Identifier(schema, table)
        if (conn.execute(sql.SQL("SELECT count(*) FROM {}").format(name)).fetchone()
                or (0,))[0] < 2:
            continue
        columns = conn.execute(COLUMNS_SQL, (oid,)).fetchall()
        if not columns:
            continue
        column, category = columns[0]
        conn.execute(sql.SQL("DELETE FROM {} WHERE ctid = (SELECT ctid FROM {} LIMIT 1)")
                     .format(name, name))
        where = f"{schema}.{table}"
        col = sql.Identifier(column)
        # same length and within any precision: a number one nearer zero (or one more), a
        # text's last character replaced
        value = (sql.SQL("CASE WHEN {c} > 0 THEN {c} - 1 ELSE {c} + 1 END") if category == "N"
                 else sql.SQL("left({c}, -1) || CASE WHEN right({c}, 1) = '~' THEN '^' "
                              "ELSE '~' END")).format(c=col)
        changed = conn.execute(sql.SQL(
            "UPDATE {t} SET {c} = {v} WHERE ctid = (SELECT ctid FROM {t} WHERE {c} IS NOT NULL "
            "LIMIT 1)").format(t=name, c=col, v=value)).rowcount
        if changed != 1:
            return (f"one row removed from {where}",)
        return (f"one row removed from {where}", f"one value of {where}.{column} changed")
    raise AtbError("no table with two rows and a plain column to change: nothing to damage")


def damaged_copy(dump: Path, into: Path) -> tuple[Path, tuple[str, ...]]:
    """A damaged copy of the backup `dump` under the tree `into`, with the original manifest
    resealed over it (size, SHA-256, table of contents); returns the copy's dump."""
    original = read_manifest(manifest_path(dump))
    chains = toolchain.discover()
    chain = toolchain.for_restore(original.pg_dump_major, chains)
    with sandbox.open_sandbox("local", source_major=original.server_major,
                              chains=chains) as box:
        scratch = box.for_tools.with_dbname(original.database)
        target_db.create(scratch)
        with childenv.for_tool(scratch) as (conninfo, tool_env):
            run(restore_argv(chain, dump, conninfo, jobs=1, no_owner=True), what="pg_restore",
                env=tool_env)
        with db.connect(scratch, autocommit=True) as conn:
            done = damage(conn)
        made = backup.create_backup(scratch, into, at=parse_stamp(original.taken_at),
                                    row_counts="off", chains=chains)
    copy, fresh = made.path, made.manifest
    write_manifest(manifest_path(copy), replace(
        original, size_bytes=fresh.size_bytes, sha256=fresh.sha256,
        toc_entries=fresh.toc_entries, roles=original.roles))
    if original.roles is not None and roles_path(dump).is_file():
        shutil.copyfile(roles_path(dump), roles_path(copy))
    log.info("damaged copy of %s: %s", dump.name, "; ".join(done))
    return copy, done


def prove(result: DrillResult, options: DrillOptions, *, production: ConnInfo | None,
          on_line: Callable[[str], None] | None = None) -> DetectionFacts:
    """Drill a damaged copy of the backup `result` drilled, with the same options. Caught
    when that drill FAILs by a check that passed on the real backup: a check that failed
    there too (a stale heartbeat, a missed schedule) proves nothing about the damage. That
    drill interrupted is KeyboardInterrupt: never counted as damage not caught."""
    from drills.run import run_drill

    if not result.backup.path or not Path(result.backup.path).is_file():
        return DetectionFacts(caught=False, error="no backup was drilled, so none was damaged")
    with tempfile.TemporaryDirectory(prefix="atb-detect-") as tmp:
        Path(tmp).chmod(0o755)  # readable as the backup tree is, by a sandbox's own user
        try:
            copy, done = damaged_copy(Path(result.backup.path), Path(tmp) / "backups")
        except AtbError as exc:
            return DetectionFacts(caught=False, error=f"the damaged copy could not be made: "
                                                      f"{exc}")
        try:
            second = run_drill(replace(options, backup=copy, backup_dir=Path(tmp) / "backups",
                                       report_dir=Path(tmp) / "reports", record=False,
                                       picked=None, started=None),  # a start of its own
                               production=production, on_line=on_line)
        except AtbError as exc:
            return DetectionFacts(caught=False, damage=done,
                                  error=f"the drill of the damaged copy did not finish: {exc}")
    if second.interrupted:  # stopped, not passed: it says nothing of what the checks catch
        raise KeyboardInterrupt
    passed_before = {c.name for c in result.checks if c.outcome == "passed"}
    caught_by = tuple(c.name for c in second.checks
                      if c.outcome == "failed" and c.name in passed_before)
    return DetectionFacts(caught=second.verdict == "FAIL" and bool(caught_by), damage=done,
                          caught_by=caught_by, verdict=second.verdict)
