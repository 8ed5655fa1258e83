"""The database a restore writes into: is it there, does it hold anything, and putting a staged
copy in its place by renaming, so that a failed restore never leaves a half-dropped target."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg import sql

from backup_core import db
from backup_core.conninfo import ConnInfo
from backup_core.errors import ConnectionFailed, SafetyRefusal

_USER_NS = ("n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast') "
            "AND n.nspname NOT LIKE 'pg\\_temp\\_%' AND n.nspname NOT LIKE 'pg\\_toast\\_temp\\_%'")
# Every kind of object a dump can hold, counted in user namespaces. A database with only a
# function or a type in it is not empty: restoring over it would fail or mix two histories.
CONTENTS_SQL = {
    "relations": f"SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                 f"WHERE {_USER_NS}",
    "functions": f"SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
                 f"WHERE {_USER_NS}",
    "types": f"SELECT count(*) FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace "
             f"WHERE {_USER_NS} AND t.typrelid = 0 AND t.typcategory <> 'A'",
    "schemas": "SELECT count(*) FROM pg_namespace n WHERE n.nspname <> 'public' AND "
               + _USER_NS,
    "extensions": "SELECT count(*) FROM pg_extension WHERE extname <> 'plpgsql'",
    "collations and operators": (
        "SELECT (SELECT count(*) FROM pg_collation x JOIN pg_namespace n "
        f"ON n.oid = x.collnamespace WHERE {_USER_NS}) + (SELECT count(*) FROM pg_operator x "
        f"JOIN pg_namespace n ON n.oid = x.oprnamespace WHERE {_USER_NS})"),
    "text search objects": (
        "SELECT (SELECT count(*) FROM pg_ts_config x JOIN pg_namespace n "
        f"ON n.oid = x.cfgnamespace WHERE {_USER_NS}) + (SELECT count(*) FROM pg_ts_dict x "
        f"JOIN pg_namespace n ON n.oid = x.dictnamespace WHERE {_USER_NS})"),
    "event triggers and publications": (
        "SELECT (SELECT count(*) FROM pg_event_trigger) + (SELECT count(*) FROM pg_publication)"),
    "foreign servers": "SELECT count(*) FROM pg_foreign_server",
}


def maintenance(info: ConnInfo) -> psycopg.Connection[Any]:
    """A connection to the target's server, not to the target itself."""
    try:
        return db.connect(info.with_dbname("postgres"), autocommit=True)
    except ConnectionFailed:
        return db.connect(info.with_dbname("template1"), autocommit=True)


def exists(info: ConnInfo) -> bool:
    with maintenance(info) as conn:
        return conn.execute("SELECT 1 FROM pg_database WHERE datname = %s",
                            (info.dbname,)).fetchone() is not None


def contents(info: ConnInfo) -> dict[str, int]:
    """What the database holds, by kind; empty means no user object of any kind."""
    with db.connect(info, autocommit=True) as conn:
        found = {}
        for kind, query in CONTENTS_SQL.items():
            row = conn.execute(query).fetchone()
            if row and row[0]:
                found[kind] = int(row[0])
        return found


def create(info: ConnInfo) -> None:
    with maintenance(info) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(info.dbname)))


def drop(info: ConnInfo) -> None:
    """Drop a database this run created; connections to it are ended."""
    with maintenance(info) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
            sql.Identifier(info.dbname)))


def sessions(info: ConnInfo) -> int:
    """Other sessions connected to the database (a rename needs none)."""
    with maintenance(info) as conn:
        row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s "
                           "AND pid <> pg_backend_pid()", (info.dbname,)).fetchone()
        return int(row[0]) if row else 0


def _name(base: str, suffix: str) -> str:
    """`base` + `suffix` within PostgreSQL's 63-byte limit (the base is shortened)."""
    room = 63 - len(suffix.encode())
    short = base.encode()[:room].decode(errors="ignore")
    return short + suffix


def staging_name(dbname: str) -> str:
    return _name(dbname, f"_atb_staging_{secrets.token_hex(3)}")


def swap(target: ConnInfo, staging: str) -> str:
    """Rename `target` aside (kept, timestamped) and `staging` into its place; returns the
    name the old database now has. Refuses while anyone is connected to the target."""
    old = _name(target.dbname, f"_old_{datetime.now(UTC):%Y%m%dT%H%M%SZ}")
    with maintenance(target) as conn:
        rename = "ALTER DATABASE {} RENAME TO {}"
        try:
            conn.execute(sql.SQL(rename).format(sql.Identifier(target.dbname),
                                                sql.Identifier(old)))
        except psycopg.Error as exc:
            raise SafetyRefusal(f"cannot set {target.dbname} aside: "
                                f"{exc.diag.message_primary or exc}; nothing was changed (the "
                                f"restored copy is in {staging})") from exc
        try:
            conn.execute(sql.SQL(rename).format(sql.Identifier(staging),
                                                sql.Identifier(target.dbname)))
        except psycopg.Error:
            conn.execute(sql.SQL(rename).format(sql.Identifier(old),
                                                sql.Identifier(target.dbname)))
            raise
    return old
