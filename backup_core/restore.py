"""`atb db restore`: restore a dump into exactly the target database, never anywhere else.

Deliberately never passes `--create`: with it pg_restore connects to `-d` only to drop and
recreate the database named inside the dump, which on the production server replaces
production with the backup.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from backup_core import childenv, db, guard, toolchain
from backup_core.conninfo import ConnInfo
from backup_core.errors import (
    CommandFailed,
    ConfigError,
    ConnectionFailed,
    ProductionTouched,
    SafetyRefusal,
)
from backup_core.manifest import ManifestError, read_manifest
from backup_core.migrate import MigrateResult, upgrade_head
from backup_core.naming import manifest_path
from backup_core.runner import first_error_line, run


@dataclass(frozen=True)
class RestoreResult:
    path: Path
    target: str
    created: bool
    jobs: int
    pg_restore_version: str
    duration_s: float
    migrate: MigrateResult | None = None
    # how production was told apart from the target, and confirmed unchanged after migrating
    guard: tuple[str, ...] = ()


def restore_argv(
    chain: toolchain.Toolchain, path: Path, conninfo: str, *, jobs: int, clean: bool,
    no_owner: bool,
) -> list[str]:
    """The pg_restore command line: a conninfo without secrets, and never `--create`."""
    argv = [chain.tool("pg_restore"), f"--dbname={conninfo}", "--no-password",
            "--exit-on-error", f"--jobs={jobs}"]
    if clean:
        argv += ["--clean", "--if-exists"]
    if no_owner:
        argv += ["--no-owner", "--no-privileges"]
    return [*argv, str(path)]


def default_jobs() -> int:
    return max(1, os.cpu_count() or 1)


def _maintenance(conn_info: ConnInfo) -> psycopg.Connection[Any]:
    try:
        return db.connect(conn_info.with_dbname("postgres"), autocommit=True)
    except ConnectionFailed:
        return db.connect(conn_info.with_dbname("template1"), autocommit=True)


def ensure_database(target: ConnInfo) -> bool:
    """Create the target database when missing; True when we created it."""
    with _maintenance(target) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s",
                              (target.dbname,)).fetchone()
        if exists:
            return False
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(target.dbname)))
        return True


def user_objects(target: ConnInfo) -> int:
    with db.connect(target) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast') "
            "AND n.nspname NOT LIKE 'pg\\_temp\\_%' AND n.nspname NOT LIKE 'pg\\_toast\\_temp\\_%'"
        ).fetchone()
        return int(row[0]) if row else 0


def archive_major(path: Path, chains: list[toolchain.Toolchain]) -> int:
    """The pg_dump major that wrote `path`: from its manifest, else from its own header."""
    try:
        return read_manifest(manifest_path(path)).pg_dump_major
    except ManifestError:
        pass
    newest = toolchain.newest(chains, "pg_restore")
    out = run([newest.tool("pg_restore"), "--list", str(path)], what="pg_restore --list").stdout
    for line in out.splitlines():
        if "Dumped by pg_dump version:" in line:
            return int(line.split(":", 1)[1].strip().split(".")[0])
    return newest.major


def restore_backup(
    path: Path,
    target: ConnInfo,
    *,
    production: ConnInfo | None = None,
    allow_production: bool = False,
    clean: bool = False,
    jobs: int | None = None,
    no_owner: bool = False,
    alembic_config: Path | None = None,
    chains: list[toolchain.Toolchain] | None = None,
) -> RestoreResult:
    """Restore `path` into `target` (created if missing), then optionally migrate it."""
    if not path.is_file():
        raise ConfigError(f"no backup at {path}: give the path of a .dump file (`atb db list`)")
    if not target.dbname:
        raise ConfigError(f"the target {target.redacted} names no database: add /dbname")
    evidence = [guard.refuse_production_target(target, production, allowed=allow_production)]
    chains = toolchain.discover() if chains is None else chains
    chain = toolchain.for_restore(archive_major(path, chains), chains)
    created = ensure_database(target)
    if not created and not clean:
        count = user_objects(target)
        if count:
            raise SafetyRefusal(f"target {target.redacted} is not empty ({count} relations): "
                                "restore into a new database, or pass --clean to drop them first")
    jobs = jobs or default_jobs()
    t0 = time.monotonic()
    with childenv.for_tool(target) as (conninfo, tool_env):
        done = run(restore_argv(chain, path, conninfo, jobs=jobs, clean=clean,
                                no_owner=no_owner), what="pg_restore", env=tool_env, check=False)
    if done.returncode != 0:
        raise CommandFailed(f"pg_restore failed: {first_error_line(done.stderr)}",
                            detail=done.stderr)
    duration = time.monotonic() - t0
    migration = None
    if alembic_config is not None:
        watched = None if allow_production else production
        before = guard.observe(watched)
        migration = upgrade_head(alembic_config, target)
        try:
            evidence.append(guard.confirm_unchanged(watched, before))
        except ProductionTouched as exc:
            state = f"NOT migrated: {migration.problem}" if migration.problem else "migrated"
            raise ProductionTouched(f"{exc}. The copy {target.redacted} is restored but "
                                    f"{state}") from exc
        if migration.problem:
            raise CommandFailed(f"{target.redacted} is restored but NOT migrated: "
                                f"{migration.problem}", detail=migration.output)
    return RestoreResult(path=path, target=target.redacted, created=created, jobs=jobs,
                         pg_restore_version=chain.version, duration_s=round(duration, 3),
                         migrate=migration, guard=tuple(evidence))
