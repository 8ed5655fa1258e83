"""Production is never touched: recognise it whatever the route, refuse it as a target, and
confirm afterwards that work pointed elsewhere did not change it.

Recognition compares what the servers report (see `db.Identity`), never URL strings: the
same database over TCP, IPv6, a unix socket, another user or another host name is the same.
When production cannot be reached to tell, a target that could be it is refused.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg

from backup_core.reading import inventory
from backup_core.reading.target import maintenance
from backup_core.tools import db
from backup_core.tools.conninfo import ConnInfo, ambient_env
from backup_core.tools.errors import ConnectionFailed, ProductionTouched, SafetyRefusal

log = logging.getLogger("atb.guard")

SCHEMA_HASH_SQL = r"""
SELECT md5(coalesce(string_agg(
         n.nspname || '.' || c.relname || ':' || c.relkind::text || ':' ||
         coalesce(a.attname || ' ' || format_type(a.atttypid, a.atttypmod)
                  || CASE WHEN a.attnotnull THEN ' not null' ELSE '' END, ''),
         ',' ORDER BY n.nspname, c.relname, a.attnum), ''))
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f', 'i', 'S')
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg\_toast%' AND n.nspname NOT LIKE 'pg\_temp\_%'
"""


@dataclass(frozen=True)
class Observation:
    """What production looked like: enough to see a migration or a schema change."""

    identity: db.Identity
    alembic_revision: str | None
    schema_hash: str

    def describe(self) -> str:
        return (f"Alembic revision {self.alembic_revision or '-'}, schema hash "
                f"{self.schema_hash[:12]}")


def production_conninfo(raw: str | None) -> ConnInfo | None:
    """Production, from DATABASE_URL or else the libpq variables; None when neither is set.
    A value that cannot be understood is an error (exit 2): a guard never switches itself
    off."""
    if raw:
        return ConnInfo.parse(raw, what="DATABASE_URL")
    env = ambient_env()
    if any(env.get(v) for v in ("PGHOST", "PGDATABASE", "PGSERVICE", "PGHOSTADDR")):
        return ConnInfo.parse("", what="the PG* environment")
    return None


def _observe(conn: psycopg.Connection[Any]) -> Observation:
    ident = db.identity(conn)
    row = conn.execute(SCHEMA_HASH_SQL).fetchone()
    try:
        with conn.transaction():
            revision = inventory.alembic_revision(conn)
    except psycopg.Error:  # no SELECT on alembic_version: the schema hash still watches
        revision = None
    return Observation(identity=ident, alembic_revision=revision,
                       schema_hash=str(row[0]) if row else "")


def observe(production: ConnInfo | None) -> Observation | None:
    """Production as it is now, or None when there is none or it cannot be reached."""
    if production is None:
        return None
    try:
        with db.connect(production, autocommit=True) as conn:
            return _observe(conn)
    except (ConnectionFailed, psycopg.Error) as exc:
        log.warning("cannot observe production to confirm it stays unchanged: %s", exc)
        return None


Observer = Callable[[ConnInfo | None], Observation | None]


def confirm_unchanged(production: ConnInfo | None, before: Observation | None, *,
                      observer: Observer | None = None) -> str:
    """An evidence line that production is as it was; `ProductionTouched` when it is not.
    `observer` looks at production when this process cannot (an isolated drill child)."""
    if production is None:
        return "no production database configured: nothing to confirm"
    if before is None:
        return "production could not be observed beforehand: unchanged-check not possible"
    after = (observer or observe)(production)
    if after is None:
        return "production could not be observed afterwards: unchanged-check not possible"
    if (after.alembic_revision, after.schema_hash) != (before.alembic_revision,
                                                       before.schema_hash):
        raise ProductionTouched(
            f"PRODUCTION CHANGED while atb worked on a copy: before {before.describe()}, after "
            f"{after.describe()} ({production.redacted}). Unless a deploy ran meanwhile, "
            "Alembic or a command reached production: check env.py and the integration command")
    return f"production unchanged ({after.describe()})"


def refuse_production_target(target: ConnInfo, production: ConnInfo | None, *,
                             allowed: bool) -> str:
    """Refuse (exit 8) when `target` is the production database by any route."""
    if production is None:
        return "no production database configured"
    if allowed:
        return "restoring into production was explicitly allowed"
    prod = db.identity_of(production)
    if prod is None:
        if not target.dbname or not production.dbname or target.dbname == production.dbname:
            raise SafetyRefusal(
                f"cannot reach the DATABASE_URL database ({production.redacted}) to make sure "
                f"{target.redacted} is not production: fix DATABASE_URL, unset it, or restore "
                "into a database of another name")
        return "production unreachable; the target's database name differs"
    tgt = db.identity_of(target)
    if tgt is not None and tgt.same_database(prod):
        raise SafetyRefusal(
            f"refusing to restore into {target.redacted}: it is the DATABASE_URL database "
            f"({prod}). Restore into a new database, or pass --i-know-this-is-production")
    return f"target is not production ({prod.database} on {prod.shown})"


# how an evidence line says the user's word stood in for a comparison (see the report)
ASSERTED = "the sandbox server was asserted not to be production's"


def refuse_production_server(server: ConnInfo, production: ConnInfo | None, *,
                             asserted: bool = False, observer: Observer | None = None) -> str:
    """Refuse (exit 8) a sandbox server that is production's server by any route: scratch
    databases, migrations and the integration suite do not belong beside production.

    Only a comparison of what both servers report can clear a server: when either cannot
    be reached, no address, port or name proves anything (127.0.0.2 is 127.0.0.1), so the
    server is refused unless the user `asserted` it is not production's. An assertion never
    overrides a comparison that finds the same server. `observer` reads production's identity
    where this process cannot reach it (an isolated drill asks its parent)."""
    if production is None:
        return "no production database configured"
    if observer is None:
        prod = db.identity_of(production)
    else:
        seen = observer(production)
        prod = seen.identity if seen is not None else None
    mine = db.identity_of(server)
    if prod is not None and mine is not None:
        if mine.server == prod.server:
            raise SafetyRefusal(
                f"the sandbox server is production's server ({prod.shown}, reached as "
                f"{server.redacted}): use a separate server or --sandbox local")
        return f"sandbox server {mine.shown} is not production's {prod.shown}"
    if asserted:
        return (f"{ASSERTED} (--sandbox-is-not-production): not checked, "
                f"{'production' if prod is None else 'the sandbox server'} could not be reached")
    unreachable = (f"production ({production.redacted})" if prod is None
                   else f"the sandbox server ({server.redacted})")
    raise SafetyRefusal(
        f"cannot compare the sandbox server with production: {unreachable} cannot be reached, "
        "and an address proves nothing (production's server answers on several); fix the "
        "URL, or pass --sandbox-is-not-production if you know it is another server")


# Server-level powers through which SQL run by application code reaches every database of
# its server (COPY ... TO PROGRAM, server files, any role): never handed to application code on
# a server that holds production.
SERVER_POWERS_SQL = """
SELECT CASE WHEN (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)
            THEN ARRAY['superuser']
            ELSE ARRAY(SELECT r.rolname::text FROM pg_roles r
                       WHERE (r.rolsuper OR r.rolname IN ('pg_execute_server_program',
                                                          'pg_write_server_files',
                                                          'pg_read_server_files'))
                         AND pg_has_role(current_user, r.oid, 'MEMBER')
                       ORDER BY 1) END
"""


def refuse_migrating_beside_production(target: ConnInfo, production: ConnInfo | None, *,
                                       observer: Observer | None = None) -> str:
    """Refuse (exit 8), before anything is restored, to run application migrations with
    server-level powers (a superuser, or membership in pg_execute_server_program and the like)
    on production's server, or on one that cannot be told apart from it: the namespaces keep
    `env.py` off production's sockets, but the server itself would run `COPY ... TO PROGRAM`
    or write any file for it. Migrate as the database's owner, or restore to another server."""
    if production is None:
        return "no production database configured"
    seen = (observer or observe)(production)
    try:
        with maintenance(target) as conn:
            server = db.identity(conn).server
            row = conn.execute(SERVER_POWERS_SQL).fetchone()
            powers = [str(p) for p in (row[0] if row else [])]
    except (ConnectionFailed, psycopg.Error):
        return "the target's server could not be read before restoring"
    if seen is not None and server != seen.identity.server:
        return "the migration runs on another server than production's"
    if powers:
        where = "production's server" if seen is not None else \
            "a server that cannot be told apart from production's (production is unreachable)"
        raise SafetyRefusal(
            f"refusing --migrate as {target.get('user') or 'this role'} on {where}: its "
            f"server-level powers ({', '.join(powers)}) would let env.py reach production "
            "through the server (COPY ... TO PROGRAM, server files); restore as the database's "
            "owner without them, or restore into another server")
    return "the migration's role has no server-level powers"


SYSTEM_DATABASES = frozenset({"template0", "template1", "postgres"})


def refuse_system_database(target: ConnInfo) -> str:
    """Refuse (exit 8) a system database as a restore target, on any server: `template1` is
    copied into every new database, `template0` must stay pristine, and `postgres` is where
    tools and operators connect. Decided by the name given and, where the server answers, by
    the name and template flag the server reports for it (template0 refuses connections, so
    it is read from pg_database, never by connecting to it)."""
    name = target.dbname
    if name in SYSTEM_DATABASES:
        raise SafetyRefusal(f"refusing to restore into {name}: a system database is never a "
                            "restore target; restore into a database of its own")
    try:
        with maintenance(target) as conn:
            row = conn.execute("SELECT datname, datistemplate FROM pg_database "
                               "WHERE datname = %s", (name,)).fetchone()
    except (ConnectionFailed, psycopg.Error):
        return f"{name} is not a system database by name (the server could not be asked)"
    if row is not None and row[1]:
        raise SafetyRefusal(f"refusing to restore into {name}: the server marks it as a "
                            "template database; restore into a database of its own")
    reached = db.identity_of(target) if row is not None else None  # the name it answers to
    if reached is not None and reached.database in SYSTEM_DATABASES:
        raise SafetyRefusal(f"refusing to restore into {target.redacted}: it reaches the "
                            f"system database {reached.database}; restore into a database of "
                            "its own")
    return f"{name} is not a system database"
