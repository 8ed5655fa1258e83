"""Heartbeats: a `SystemEvent` row (type `TEST`, message `Heartbeat`) every few minutes.

The newest heartbeat in a restored backup tells how fresh the data really is, and its absence
in production for more than 15 minutes is what the monitor alerts on. An application without
an events table gets atb's own (`atb.heartbeat`, made by `init_heartbeat`): with the default
table name, the application's `system_events` is used where it exists, else atb's.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg import sql

from backup_core.tools import db
from backup_core.tools.conninfo import ConnInfo
from backup_core.tools.durations import parse_duration
from backup_core.tools.errors import ConfigError

DEFAULT_TABLE = "system_events"
# atb's own table, for applications that have no events table: its own schema, so it never
# collides with the application's objects or migrations
ATB_SCHEMA, ATB_TABLE = "atb", "atb.heartbeat"
# atb's table keeps this many days of heartbeats (a backup carries the ones of its time)
KEEP_DAYS = 30
TYPE_COLUMN, MESSAGE_COLUMN, TIME_COLUMN = "type", "message", "created_at"


class HeartbeatTableMissing(ConfigError):
    """Neither the named table nor (with the default name) atb's own is there: configuration
    (exit 2), never a stale heartbeat (exit 1, what a monitor acts on)."""


# A table name as people write one, optionally schema-qualified: letters, digits, _ and $,
# at most 63 bytes a part (PostgreSQL's limit). Anything else is refused before it reaches
# SQL: an allow-list, not a list of the characters that break things.
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_$]{0,62}")


def table_parts(name: str, *, what: str = "--table") -> tuple[str, ...]:
    """(schema, table) or (table,) of `--table`; `ConfigError` (exit 2) for anything else."""
    parts = tuple(name.split("."))
    if len(name) > 127 or len(parts) > 2 or not all(_NAME.fullmatch(p) for p in parts):
        shown = name[:60] + ("…" if len(name) > 60 else "")
        raise ConfigError(f"{what} {shown!r} is not a table name: give name or schema.name "
                          "(letters, digits, _ and $; at most 63 characters each)")
    return parts


def _table(name: str) -> sql.Composable:
    return sql.Identifier(*table_parts(name))


@dataclass(frozen=True)
class Beat:
    """A heartbeat written: its time on the server's clock, and the table it went into."""

    at: datetime
    table: str


class HeartbeatTableUnusable(ConfigError):
    """The table found cannot hold or give heartbeats to this role (a column missing, a
    privilege not granted): configuration (exit 2), never a stale heartbeat (exit 1)."""


@contextlib.contextmanager
def _usable(table: str, doing: str) -> Iterator[None]:
    """The server's refusal of a heartbeat table's shape or privileges, as one line."""
    try:
        yield
    except (psycopg.errors.UndefinedColumn, psycopg.errors.DatatypeMismatch,
            psycopg.errors.InvalidTextRepresentation) as exc:
        raise HeartbeatTableUnusable(
            f"the heartbeat table {table} cannot be {doing}: {_first(exc)}; it needs the "
            f"columns {TYPE_COLUMN}, {MESSAGE_COLUMN} and {TIME_COLUMN} (timestamp), or run "
            "`atb tests heartbeat --init` for atb's own table") from None
    except psycopg.errors.InsufficientPrivilege as exc:
        raise HeartbeatTableUnusable(
            f"the heartbeat table {table} cannot be {doing} by this role: {_first(exc)}; "
            "grant it INSERT and SELECT on the table (`atb tests heartbeat --init "
            "--grant-to ROLE` does for atb's own)") from None


def _first(exc: psycopg.Error) -> str:
    return (str(exc).strip().splitlines() or ["refused"])[0]


def insert_heartbeat(target: ConnInfo, *, table: str = DEFAULT_TABLE) -> datetime:
    """Insert one heartbeat row and return its time (the server's clock)."""
    return beat(target, table=table).at


def beat(target: ConnInfo, *, table: str = DEFAULT_TABLE) -> Beat:
    """Insert one heartbeat row into the table found (`resolve_table`); in atb's own table,
    rows older than `KEEP_DAYS` go in the same transaction, so it stays small."""
    table_parts(table)  # a bad name is bad usage, whether or not the server answers
    with db.connect(target) as conn:
        found = resolve_table(conn, table, target)
        with _usable(found, "written"):
            row = conn.execute(
                sql.SQL("INSERT INTO {} ({}, {}, {}) VALUES ('TEST', 'Heartbeat', now()) "
                        "RETURNING {}").format(
                    _table(found), sql.Identifier(TYPE_COLUMN), sql.Identifier(MESSAGE_COLUMN),
                    sql.Identifier(TIME_COLUMN), sql.Identifier(TIME_COLUMN)),
            ).fetchone()
            if found == ATB_TABLE:
                conn.execute(sql.SQL("DELETE FROM {} WHERE created_at < now() - %s::interval")
                             .format(_table(ATB_TABLE)), (f"{KEEP_DAYS} days",))
            conn.commit()
    assert row is not None
    return Beat(_utc(row[0]), found)


def newest_heartbeat(target: ConnInfo, *, table: str = DEFAULT_TABLE,
                     before: datetime | None = None) -> datetime | None:
    """The newest heartbeat's time (at or before `before`, when given)."""
    return newest_beat(target, table=table, before=before).at


@dataclass(frozen=True)
class Newest:
    """The newest heartbeat in the table found (None when it holds none)."""

    at: datetime | None
    table: str


def newest_beat(target: ConnInfo, *, table: str = DEFAULT_TABLE,
                before: datetime | None = None) -> Newest:
    """The newest heartbeat (at or before `before`, when given) and the table it was read
    from: the application's, or atb's own where the default one is absent."""
    table_parts(table)
    with db.connect(target) as conn:
        return newest_on(conn, target, table=table, before=before)


def newest_on(conn: psycopg.Connection[Any], target: ConnInfo, *, table: str = DEFAULT_TABLE,
              before: datetime | None = None) -> Newest:
    """`newest_beat` on a connection already open to `target` (named in its errors)."""
    table_parts(table)
    found = resolve_table(conn, table, target)
    query = sql.SQL("SELECT max({}) FROM {} WHERE {}::text = 'TEST'").format(
        sql.Identifier(TIME_COLUMN), _table(found), sql.Identifier(TYPE_COLUMN))
    if before is not None:
        query = sql.SQL("{} AND {} <= %s").format(query, sql.Identifier(TIME_COLUMN))
    with _usable(found, "read"):
        row = conn.execute(query, (before,) if before is not None else None).fetchone()
    return Newest(_utc(row[0]) if row and row[0] is not None else None, found)


def _exists(conn: psycopg.Connection[Any], table: str) -> bool:
    found = conn.execute("SELECT to_regclass(%s)", (_table(table).as_string(conn),)).fetchone()
    return bool(found and found[0] is not None)


def resolve_table(conn: psycopg.Connection[Any], table: str, target: ConnInfo) -> str:
    """The heartbeat table to use: `table` where it exists; with the default name, atb's own
    (`atb.heartbeat`) where the application has no `system_events`. A table named on purpose
    never falls back: a misspelt name is an error, not a quiet switch of tables."""
    if _exists(conn, table):
        return table
    if table == DEFAULT_TABLE and _exists(conn, ATB_TABLE):
        return ATB_TABLE
    if table == DEFAULT_TABLE:
        raise HeartbeatTableMissing(
            f"no heartbeat table in {target.redacted}: neither the application's "
            f"{DEFAULT_TABLE} nor atb's {ATB_TABLE}; create atb's with `atb tests heartbeat "
            "--init`, or name the application's events table with --table")
    raise HeartbeatTableMissing(
        f"table {table} does not exist in {target.redacted}: name the application's events "
        f"table with --table, or leave --table out to use atb's own ({ATB_TABLE}, made by "
        "`atb tests heartbeat --init`)")


def grant_sql(role: str) -> str:
    """What a backup role needs to dump atb's table (pg_dump reads every schema)."""
    ident = _role(role)
    return (f"GRANT USAGE ON SCHEMA {ATB_SCHEMA} TO {ident}; "
            f"GRANT SELECT ON {ATB_TABLE} TO {ident};")


def _role(role: str) -> str:
    """A role name from the allow-list of table names, quoted (it holds no quote)."""
    if not _NAME.fullmatch(role):
        raise ConfigError(f"--grant-to {role[:60]!r} is not a role name (letters, digits, _ "
                          "and $; at most 63 characters)")
    return f'"{role}"'


@dataclass(frozen=True)
class HeartbeatInit:
    """What `init_heartbeat` did: the table, whether it was created now, and the grant the
    backup role needs (applied when a role was named, else to be run by an owner)."""

    table: str
    created: bool
    grant: str
    granted_to: str | None


def init_heartbeat(target: ConnInfo, *, grant_to: str | None = None) -> HeartbeatInit:
    """Create atb's own heartbeat table (schema `atb`, columns type, message, created_at, as
    the application's events table would have them), idempotently; with `grant_to`, let that
    role (the backup's) read it."""
    shown = _role(grant_to) if grant_to else "<backup role>"
    grant = (grant_sql(grant_to) if grant_to else
             f"GRANT USAGE ON SCHEMA {ATB_SCHEMA} TO {shown}; "
             f"GRANT SELECT ON {ATB_TABLE} TO {shown};")
    with db.connect(target) as conn:
        existed = _exists(conn, ATB_TABLE)
        try:
            conn.execute(f"CREATE SCHEMA IF NOT EXISTS {ATB_SCHEMA}")
            conn.execute(
                # no serial or identity column: a sequence would need a grant of its own
                # before the backup role could dump it
                f"CREATE TABLE IF NOT EXISTS {ATB_TABLE} ("
                "type text NOT NULL DEFAULT 'TEST', message text NOT NULL, "
                "created_at timestamptz NOT NULL DEFAULT now())")
            conn.execute(f"CREATE INDEX IF NOT EXISTS heartbeat_created_at ON {ATB_TABLE} "
                         "(created_at)")
            conn.execute(f"COMMENT ON TABLE {ATB_TABLE} IS 'atb heartbeats (atb tests "
                         "heartbeat): how fresh a restored backup is'")
            if grant_to:
                conn.execute(grant_sql(grant_to))
            conn.commit()
        except psycopg.Error as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            hint = (" (run --init as the database's owner, or a role that may create a schema)"
                    if "permission denied" in first else "")
            raise HeartbeatSetupFailed(
                f"cannot set up {ATB_TABLE} in {target.redacted}: {first}{hint}") from exc
    return HeartbeatInit(ATB_TABLE, not existed, grant, grant_to)


class HeartbeatSetupFailed(ConfigError):
    """The server refused to create atb's heartbeat table (a missing privilege, a role to
    grant to that does not exist): configuration, exit 2."""


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


@dataclass(frozen=True)
class HeartbeatAge:
    newest: datetime | None
    age_s: float | None
    max_age_s: float
    ok: bool
    table: str = DEFAULT_TABLE


def check_heartbeat(target: ConnInfo, *, table: str = DEFAULT_TABLE, max_age: str = "15m",
                    now: datetime | None = None) -> HeartbeatAge:
    """The newest heartbeat's age against `max_age` (none at all is stale)."""
    limit = parse_duration(max_age, what="--max-age")
    found = newest_beat(target, table=table)
    newest = found.at
    age = ((now or datetime.now(UTC)) - newest).total_seconds() if newest else None
    return HeartbeatAge(newest, age, limit, age is not None and age <= limit, found.table)
