"""Connecting with psycopg and turning its errors into one actionable line."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg

from backup_core.tools.conninfo import ConnInfo, redact
from backup_core.tools.errors import ConnectionFailed


def explain(exc: BaseException, info: ConnInfo) -> str:
    """One line that says what went wrong connecting to `info` and what to try."""
    text = redact(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
    where = info.redacted
    low = text.lower()
    if "password authentication failed" in low or "no password supplied" in low:
        hint = "check the user and password in the URL"
    elif "does not exist" in low and "database" in low:
        hint = "check the database name, or create it first"
    elif "connection refused" in low or "no such file" in low or "could not connect" in low:
        hint = "is the server running and reachable at that host and port?"
    elif "timeout" in low:
        hint = "the server did not answer in time; check host, port and firewall"
    else:
        hint = "check the URL and the server"
    return f"cannot connect to {where}: {text} ({hint})"


def connect(info: ConnInfo, *, autocommit: bool = False, **kwargs: Any) -> psycopg.Connection[Any]:
    try:
        params: dict[str, Any] = {**info.psycopg_kwargs(), **kwargs}
        # a SQL_ASCII server makes psycopg return bytes for text (`role b'postgres'`): UTF-8
        # on the wire decodes every catalog name as text, whatever the server's encoding
        asked = "client_encoding" in params
        params.setdefault("client_encoding", "UTF8")
        conn = psycopg.connect(autocommit=autocommit, **params)
        if not asked and conn.info.parameter_status("server_encoding") == "SQL_ASCII":
            _bytes_as_latin1(conn)
        return conn
    except psycopg.Error as exc:
        raise ConnectionFailed(explain(exc, info)) from exc


def _bytes_as_latin1(conn: psycopg.Connection[Any]) -> None:
    """A SQL_ASCII database holds bytes, not characters, and may hold any (latin-1 'caf\\xe9'
    is not UTF-8, which the server then refuses to send as UTF-8). LATIN1 on the wire maps
    each byte to one character and back, so every name and value reads, and every
    comparison of them is a comparison of the bytes themselves."""
    conn.execute("SET client_encoding TO 'LATIN1'")
    if not conn.autocommit:
        conn.commit()


# Facts every role may read, identical over TCP, IPv6 and the unix socket: the postmaster's
# start time (to the microsecond, time zone free) and port name the server; the OID names the
# database on it. pg_control_system()'s system identifier needs a privilege many roles lack.
IDENTITY_SQL = ("SELECT extract(epoch FROM pg_postmaster_start_time())::text, "
                "current_setting('port'), d.oid::bigint, d.datname "
                "FROM pg_database d WHERE d.datname = current_database()")


@dataclass(frozen=True)
class Identity:
    """Which server and database a connection reached, as the server itself reports it."""

    server: str
    database_oid: int
    database: str

    def same_database(self, other: Identity) -> bool:
        return self.server == other.server and self.database_oid == other.database_oid

    @property
    def shown(self) -> str:
        """The server for a person: its start time in UTC, not epoch seconds."""
        return _STARTED.sub(lambda m: "started " + datetime.fromtimestamp(
            float(m.group(1)), UTC).strftime("%Y-%m-%d %H:%M:%S.%f UTC"), self.server)

    def __str__(self) -> str:
        return f"database {self.database} (oid {self.database_oid}) on server {self.shown}"


_STARTED = re.compile(r"started (\d+(?:\.\d+)?)")


def identity(conn: psycopg.Connection[Any]) -> Identity:
    row = conn.execute(IDENTITY_SQL).fetchone()
    assert row is not None
    return Identity(server=f"port {row[1]}, started {row[0]}", database_oid=int(row[2]),
                    database=str(row[3]))


def identity_of(info: ConnInfo) -> Identity | None:
    """The identity of the database `info` names, or None when it cannot be reached."""
    try:
        with connect(info, autocommit=True) as conn:
            return identity(conn)
    except (ConnectionFailed, psycopg.Error):
        return None


def source_id(conn: psycopg.Connection[Any]) -> str:
    """Which server a backup comes from, as prune and status tell sources apart: the cluster's
    system identifier (`pg_control_system()`, where the role may call it; the same on a
    physical standby, which holds the same data), else the identity the production guard
    uses (postmaster start time and port: it changes on a restart, so such a source splits in
    two rather than ever merging with another server's backups)."""
    try:
        with conn.transaction():
            row = conn.execute("SELECT system_identifier::text FROM pg_control_system()"
                               ).fetchone()
        if row is not None and row[0]:
            return f"system {row[0]}"
    except psycopg.Error:
        pass
    return f"server {identity(conn).server}"


def server_clock(conn: psycopg.Connection[Any]) -> datetime:
    """The server's clock now (not the transaction's start)."""
    row = conn.execute("SELECT clock_timestamp()").fetchone()
    assert row is not None
    return row[0].astimezone(UTC)  # type: ignore[no-any-return]


def server_version(conn: psycopg.Connection[Any]) -> str:
    """`15.18` from `server_version_num` 150018."""
    num = conn.info.server_version
    if num >= 100000:
        return f"{num // 10000}.{num % 10000}"
    return f"{num // 10000}.{num // 100 % 100}"
