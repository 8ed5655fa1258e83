"""The roles a backup needs, kept beside it and recreated where they are missing.

A pg_dump archive carries owners and grants but no roles: restored onto a new server it fails
with `role "..." does not exist`. Each backup therefore keeps `pg_dumpall --roles-only
--no-role-passwords` as a sidecar. Applying it creates only the roles the target server lacks
(with their attributes, settings and memberships), in one transaction, and never alters a
role that exists: safe on a production server as on a sandbox.
"""

from __future__ import annotations

import re
from pathlib import Path

import psycopg
from psycopg.conninfo import make_conninfo

from backup_core.reading.target import maintenance
from backup_core.tools import childenv, toolchain
from backup_core.tools.conninfo import ConnInfo
from backup_core.tools.errors import CommandFailed
from backup_core.tools.runner import first_error_line, run

_ROLE = r'("(?:[^"]|"")+"|[^\s;"]+)'
_CREATE_OR_ALTER = re.compile(rf"^(?:CREATE|ALTER) ROLE {_ROLE}")
_GRANT_TO = re.compile(rf"^GRANT .+ TO {_ROLE}")


def dump_argv(chain: toolchain.Toolchain, conninfo: str, dbname: str) -> list[str]:
    """pg_dumpall for the roles only, without password hashes, connecting to `dbname` (the
    backed-up database, which the backup role can surely reach).

    pg_dumpall ignores the database of `--dbname` and reads `--database` as a conninfo when
    it contains `=`, so the name always goes there as a conninfo of its own, quoted by
    libpq's rules: a database called `a=b` is a name, never parameters."""
    return [chain.tool("pg_dumpall"), "--roles-only", "--no-role-passwords", "--no-password",
            f"--dbname={conninfo}", f"--database={make_conninfo(dbname=dbname)}"]


def dump_roles(chain: toolchain.Toolchain, source: ConnInfo) -> str:
    with childenv.for_tool(source) as (conninfo, env):
        done = run(dump_argv(chain, conninfo, source.dbname), what="pg_dumpall --roles-only",
                   env=env, timeout=600)
    return done.stdout


def _unquote(name: str) -> str:
    return name[1:-1].replace('""', '"') if name.startswith('"') else name


def statements_for_missing(script: str, existing: set[str]) -> tuple[list[str], list[str]]:
    """(statements, roles they create): the lines of pg_dumpall's output that concern roles
    absent from `existing`, and memberships granted to those roles."""
    created: list[str] = []
    keep: list[str] = []
    for line in script.splitlines():
        line = line.strip()
        if not line or line.startswith("--") or line.startswith("\\") or line.startswith("SET "):
            continue
        m = _CREATE_OR_ALTER.match(line)
        if m:
            name = _unquote(m.group(1))
            if name in existing:
                continue
            if line.startswith("CREATE ROLE") and name not in created:
                created.append(name)
            keep.append(line)
            continue
        m = _GRANT_TO.match(line)
        if m and _unquote(m.group(1)) in created:
            keep.append(re.sub(r" GRANTED BY \S+;$", ";", line))
    return keep, created


def apply_roles(script_path: Path, target: ConnInfo) -> list[str]:
    """Create the roles of `script_path` that the target's server lacks; the names made."""
    script = script_path.read_text()
    with maintenance(target) as conn:
        existing = {r[0] for r in conn.execute("SELECT rolname FROM pg_roles").fetchall()}
        statements, created = statements_for_missing(script, existing)
        if not statements:
            return []
        try:
            with conn.transaction():
                for statement in statements:
                    conn.execute(statement.encode())
        except psycopg.Error as exc:
            raise CommandFailed(
                f"cannot create the backup's roles {', '.join(created)} on the target server "
                f"({first_error_line(str(exc))}): the connecting role needs CREATEROLE, or "
                "create them by hand; nothing was changed") from exc
    return created
