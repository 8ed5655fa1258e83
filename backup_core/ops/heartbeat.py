"""Heartbeats: a `SystemEvent` row (type `TEST`, message `Heartbeat`) every few minutes.

The newest heartbeat in a restored backup tells how fresh the data really is, and its absence
in production for more than 15 minutes is what the monitor alerts on.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg import sql

from backup_core.tools import db
from backup_core.tools.conninfo import ConnInfo
from backup_core.tools.durations import parse_duration
from backup_core.tools.errors import AtbError, ConfigError

DEFAULT_TABLE = "system_events"
TYPE_COLUMN, MESSAGE_COLUMN, TIME_COLUMN = "type", "message", "created_at"


class HeartbeatTableMissing(AtbError):
    """The application's events table is not there."""


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


def insert_heartbeat(target: ConnInfo, *, table: str = DEFAULT_TABLE) -> datetime:
    """Insert one heartbeat row and return its time (the server's clock)."""
    table_parts(table)  # a bad name is bad usage, whether or not the server answers
    with db.connect(target) as conn:
        _require_table(conn, table, target)
        row = conn.execute(
            sql.SQL("INSERT INTO {} ({}, {}, {}) VALUES ('TEST', 'Heartbeat', now()) "
                    "RETURNING {}").format(
                _table(table), sql.Identifier(TYPE_COLUMN), sql.Identifier(MESSAGE_COLUMN),
                sql.Identifier(TIME_COLUMN), sql.Identifier(TIME_COLUMN)),
        ).fetchone()
        conn.commit()
    assert row is not None
    return _utc(row[0])


def newest_heartbeat(target: ConnInfo, *, table: str = DEFAULT_TABLE,
                     before: datetime | None = None) -> datetime | None:
    """The newest heartbeat's time (at or before `before`, when given)."""
    query = sql.SQL("SELECT max({}) FROM {} WHERE {}::text = 'TEST'").format(
        sql.Identifier(TIME_COLUMN), _table(table), sql.Identifier(TYPE_COLUMN))
    if before is not None:
        query = sql.SQL("{} AND {} <= %s").format(query, sql.Identifier(TIME_COLUMN))
    with db.connect(target) as conn:
        _require_table(conn, table, target)
        row = conn.execute(query, (before,) if before is not None else None).fetchone()
    return _utc(row[0]) if row and row[0] is not None else None


def _require_table(conn: psycopg.Connection[Any], table: str, target: ConnInfo) -> None:
    found = conn.execute("SELECT to_regclass(%s)", (_table(table).as_string(conn),)).fetchone()
    if not found or found[0] is None:
        raise HeartbeatTableMissing(
            f"table {table} does not exist in {target.redacted}: migrate the application "
            "first, or name its events table with --table"
        )


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


@dataclass(frozen=True)
class HeartbeatAge:
    newest: datetime | None
    age_s: float | None
    max_age_s: float
    ok: bool


def check_heartbeat(target: ConnInfo, *, table: str = DEFAULT_TABLE, max_age: str = "15m",
                    now: datetime | None = None) -> HeartbeatAge:
    """The newest heartbeat's age against `max_age` (none at all is stale)."""
    limit = parse_duration(max_age, what="--max-age")
    newest = newest_heartbeat(target, table=table)
    age = ((now or datetime.now(UTC)) - newest).total_seconds() if newest else None
    return HeartbeatAge(newest, age, limit, age is not None and age <= limit)
