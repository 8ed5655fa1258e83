"""Connecting with psycopg and turning its errors into one actionable line."""

from __future__ import annotations

from typing import Any

import psycopg

from backup_core.conninfo import ConnInfo, redact
from backup_core.errors import ConnectionFailed


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
    text = text.replace(info.password, "***") if info.password else text
    return f"cannot connect to {where}: {text} ({hint})"


def connect(info: ConnInfo, *, autocommit: bool = False, **kwargs: Any) -> psycopg.Connection[Any]:
    try:
        params: dict[str, Any] = {**info.psycopg_kwargs(), **kwargs}
        return psycopg.connect(autocommit=autocommit, **params)
    except psycopg.Error as exc:
        raise ConnectionFailed(explain(exc, info)) from exc


IDENTITY_SQL = ("SELECT (SELECT system_identifier::text FROM pg_control_system()) || ':' || "
                "current_setting('port')")
# Without the privilege to read pg_control_system(): address, cluster name and port still
# tell two servers on one host apart.
FALLBACK_IDENTITY_SQL = ("SELECT coalesce(host(inet_server_addr()), 'socket') || '/' || "
                         "current_setting('cluster_name') || ':' || current_setting('port')")


def server_identity(conn: psycopg.Connection[Any]) -> str:
    """Which server `conn` reached, as the server itself reports it."""
    try:
        with conn.transaction():
            row = conn.execute(IDENTITY_SQL).fetchone()
    except psycopg.errors.InsufficientPrivilege:
        row = conn.execute(FALLBACK_IDENTITY_SQL).fetchone()
    return str(row[0]) if row else ""


def server_version(conn: psycopg.Connection[Any]) -> str:
    """`15.18` from `server_version_num` 150018."""
    num = conn.info.server_version
    if num >= 100000:
        return f"{num // 10000}.{num % 10000}"
    return f"{num // 10000}.{num // 100 % 100}"
