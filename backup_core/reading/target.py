"""The database a restore writes into: is it there, does it hold anything, and putting a staged
copy in its place by renaming, so that a failed restore never leaves a half-dropped target."""

from __future__ import annotations

import os
import secrets
import signal
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from psycopg import sql

from backup_core.tools import db
from backup_core.tools.conninfo import ConnInfo
from backup_core.tools.errors import ConnectionFailed, SafetyRefusal

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


def create(info: ConnInfo, *, tablespace: str = "") -> None:
    query = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(info.dbname))
    if tablespace and tablespace != "pg_default":
        query = sql.SQL("{} TABLESPACE {}").format(query, sql.Identifier(tablespace))
    with maintenance(info) as conn:
        conn.execute(query)


# -- the incomplete mark ---------------------------------------------------------------------
# A database atb restores into carries this comment from before pg_restore until the very
# end, so that a restore killed half-way leaves a database that says so; no other writer
# uses the prefix.
INCOMPLETE = "atb: INCOMPLETE restore"
TEST_KILL_AT = "ATB_TEST_KILL_AT"  # read only by the kill-at-every-step tests


def checkpoint(phase: str) -> None:
    """Die here as `kill -9` would when the kill-at-every-step tests ask for `phase`."""
    if os.environ.get(TEST_KILL_AT) == phase:
        os.kill(os.getpid(), signal.SIGKILL)


def mark_incomplete(info: ConnInfo, what: str) -> None:
    note = f"{INCOMPLETE} of {what}, started {datetime.now(UTC):%Y-%m-%dT%H:%M:%SZ}"
    _comment(info.dbname, note, info)


def _comment(dbname: str, text: str | None, info: ConnInfo,
             conn: psycopg.Connection[Any] | None = None) -> None:
    query = sql.SQL("COMMENT ON DATABASE {} IS {}").format(
        sql.Identifier(dbname), sql.Literal(text) if text is not None else sql.SQL("NULL"))
    if conn is not None:
        conn.execute(query)
        return
    with maintenance(info) as own:
        own.execute(query)


def clear_mark(info: ConnInfo) -> None:
    _comment(info.dbname, None, info)


def incomplete(info: ConnInfo) -> str | None:
    """The mark of an interrupted restore the database carries, or None."""
    with maintenance(info) as conn:
        row = conn.execute("SELECT shobj_description(oid, 'pg_database') FROM pg_database "
                           "WHERE datname = %s", (info.dbname,)).fetchone()
    text = row[0] if row else None
    return str(text) if text and str(text).startswith(INCOMPLETE) else None


def leftover_prefixes(dbname: str) -> tuple[str, str]:
    """What the names `staging_name` and `swap` give `dbname` start with (their random or
    time part left off), shortened alike when the name is long."""
    return (_name(dbname, "_atb_staging_" + "0" * 6)[:-6],
            _name(dbname, "_old_" + "0" * len("20261129T120000Z"))[:-16])


def leftovers(target: ConnInfo) -> list[str]:
    """Databases earlier `--clean` restores of `target` left: staging copies (a killed
    restore's, incomplete) and previous versions set aside, oldest name first."""
    prefixes = leftover_prefixes(target.dbname)
    with maintenance(target) as conn:
        rows = conn.execute(
            "SELECT datname, coalesce(starts_with(shobj_description(oid, 'pg_database'), %s), "
            "false) FROM pg_database WHERE starts_with(datname, %s) OR starts_with(datname, %s) "
            "ORDER BY datname", (INCOMPLETE, prefixes[0], prefixes[1])).fetchall()
    return [f"{name} (incomplete)" if marked else str(name) for name, marked in rows]


# -- the database's own properties ------------------------------------------------------------
# Lists whose elements are quoted each (pg_dump's variable_is_guc_list_quote).
_LIST_QUOTE = frozenset({"local_preload_libraries", "search_path", "session_preload_libraries",
                         "shared_preload_libraries", "temp_tablespaces",
                         "unix_socket_directories"})


@dataclass(frozen=True)
class Properties:
    """What a database is besides its contents (pg_restore without --create restores none of
    it): a swap that dropped these would, say, let PUBLIC connect again."""

    owner: str
    acl: tuple[tuple[str, str, bool], ...] | None  # (grantee, '' for PUBLIC; privilege; grant)
    settings: tuple[tuple[str, str], ...]  # (role, '' for every role; "name=value")
    connection_limit: int
    comment: str | None
    tablespace: str
    allow_connections: bool


def properties(info: ConnInfo) -> Properties:
    with maintenance(info) as conn:
        row = conn.execute(
            "SELECT d.oid, pg_get_userbyid(d.datdba), d.datacl IS NULL, d.datconnlimit, "
            "shobj_description(d.oid, 'pg_database'), t.spcname, d.datallowconn "
            "FROM pg_database d JOIN pg_tablespace t ON t.oid = d.dattablespace "
            "WHERE d.datname = %s", (info.dbname,)).fetchone()
        if row is None:
            raise SafetyRefusal(f"{info.dbname} disappeared while atb worked on it")
        oid = row[0]
        acl = None if row[2] else tuple(
            (str(g or ""), str(p), bool(w)) for g, p, w in conn.execute(
                "SELECT CASE WHEN a.grantee = 0 THEN '' ELSE pg_get_userbyid(a.grantee) END, "
                "a.privilege_type, a.is_grantable FROM pg_database d, aclexplode(d.datacl) a "
                "WHERE d.oid = %s ORDER BY 1, 2", (oid,)).fetchall())
        settings = tuple(
            (str(role or ""), str(item)) for role, config in conn.execute(
                "SELECT CASE WHEN s.setrole = 0 THEN '' ELSE pg_get_userbyid(s.setrole) END, "
                "s.setconfig FROM pg_db_role_setting s WHERE s.setdatabase = %s ORDER BY 1",
                (oid,)).fetchall() for item in config)
    comment = row[4] if row[4] and not str(row[4]).startswith(INCOMPLETE) else None
    return Properties(owner=str(row[1]), acl=acl, settings=settings,
                      connection_limit=int(row[3]), comment=comment, tablespace=str(row[5]),
                      allow_connections=bool(row[6]))


def split_guc_list(value: str) -> list[str]:
    """The elements of a list setting as the server stores it (`a, "B c"`), unquoted."""
    out: list[str] = []
    i, n = 0, len(value)
    while i < n:
        while i < n and value[i].isspace():
            i += 1
        if i >= n:
            break
        if value[i] == '"':
            j, item = i + 1, []
            while j < n:
                if value[j] == '"':
                    if j + 1 < n and value[j + 1] == '"':
                        item.append('"')
                        j += 2
                        continue
                    break
                item.append(value[j])
                j += 1
            out.append("".join(item))
            i = value.find(",", j)
        else:
            j = value.find(",", i)
            out.append((value[i:] if j < 0 else value[i:j]).strip())
            i = j
        if i < 0:
            break
        i += 1
    return out


def setting_sql(item: str) -> sql.Composed:
    """`name = value` of a stored `name=value`, each list element quoted as pg_dump does."""
    name, _, value = item.partition("=")
    if name.lower() in _LIST_QUOTE:
        parts = split_guc_list(value)
        rhs: sql.Composable = sql.SQL(", ").join(sql.Literal(p) for p in parts) if parts \
            else sql.Literal("")
    else:
        rhs = sql.Literal(value)
    return sql.SQL("{} TO {}").format(sql.Identifier(*name.split(".")), rhs)


def property_statements(dbname: str, props: Properties) -> list[sql.Composed]:
    """The statements that give `dbname` the properties `props` (its comment excepted)."""
    ident = sql.Identifier(dbname)
    out = [sql.SQL("ALTER DATABASE {} OWNER TO {}").format(ident, sql.Identifier(props.owner)),
           sql.SQL("ALTER DATABASE {} CONNECTION LIMIT {}").format(
               ident, sql.Literal(props.connection_limit))]
    if props.acl is not None:
        out.append(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC, {}").format(
            ident, sql.Identifier(props.owner)))
        for grantee, privilege, grantable in props.acl:
            out.append(sql.SQL("GRANT {} ON DATABASE {} TO {}{}").format(
                sql.SQL(privilege), ident,
                sql.Identifier(grantee) if grantee else sql.SQL("PUBLIC"),
                sql.SQL(" WITH GRANT OPTION") if grantable else sql.SQL("")))
    for role, item in props.settings:
        prefix = sql.SQL("ALTER ROLE {} IN DATABASE {} SET ").format(
            sql.Identifier(role), ident) if role else sql.SQL("ALTER DATABASE {} SET ").format(
            ident)
        out.append(prefix + setting_sql(item))
    if not props.allow_connections:
        out.append(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS false").format(ident))
    return out


def drop(info: ConnInfo) -> None:
    """Drop a database this run created; connections to it are ended."""
    with maintenance(info) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
            sql.Identifier(info.dbname)))


def sessions(info: ConnInfo, *, settle_s: float = 5.0) -> int:
    """Other sessions connected to the database (a rename needs none). A backend whose client
    just left (pg_restore's workers, a moment ago) is still listed while it exits: such
    sessions are given `settle_s` to go before they count."""
    deadline = time.monotonic() + settle_s
    with maintenance(info) as conn:
        while True:
            row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s "
                               "AND pid <> pg_backend_pid()", (info.dbname,)).fetchone()
            count = int(row[0]) if row else 0
            if count == 0 or time.monotonic() >= deadline:
                return count
            time.sleep(0.1)


def _name(base: str, suffix: str) -> str:
    """`base` + `suffix` within PostgreSQL's 63-byte limit (the base is shortened)."""
    room = 63 - len(suffix.encode())
    short = base.encode()[:room].decode(errors="ignore")
    return short + suffix


def _aside_name(conn: psycopg.Connection[Any], dbname: str) -> str:
    """The timestamped name to set `dbname` aside under: the first free second from now on
    (two swaps within one second must not collide; the name keeps its sortable shape)."""
    moment = datetime.now(UTC).replace(microsecond=0)
    while True:
        name = _name(dbname, f"_old_{moment:%Y%m%dT%H%M%SZ}")
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is None:
            return name
        moment += timedelta(seconds=1)


def staging_name(dbname: str) -> str:
    return _name(dbname, f"_atb_staging_{secrets.token_hex(3)}")


def swap(target: ConnInfo, staging: str) -> str:
    """Give `staging` the target's properties (owner, ACL, settings, connection limit,
    comment), then rename `target` aside (kept, timestamped) and `staging` into its place in
    one transaction: at every instant one complete database holds the name. Returns the name
    the old database now has. Refuses while anyone is connected to the target."""
    props = properties(target)
    with maintenance(target) as conn:
        old = _aside_name(conn, target.dbname)
        try:
            for statement in property_statements(staging, props):
                conn.execute(statement)
            _comment(staging, props.comment, target, conn)  # also clears the mark
        except psycopg.Error as exc:
            raise SafetyRefusal(f"cannot give the restored copy {staging} the properties of "
                                f"{target.dbname} ({exc.diag.message_primary or exc}): nothing "
                                f"was swapped (the restored copy is in {staging}); connect as a "
                                "superuser or the owner") from exc
        checkpoint("before-swap")
        rename = "ALTER DATABASE {} RENAME TO {}"
        try:
            with conn.transaction():
                conn.execute(sql.SQL(rename).format(sql.Identifier(target.dbname),
                                                    sql.Identifier(old)))
                checkpoint("mid-swap")
                conn.execute(sql.SQL(rename).format(sql.Identifier(staging),
                                                    sql.Identifier(target.dbname)))
        except psycopg.Error as exc:
            raise SafetyRefusal(f"cannot swap the restored copy in for {target.dbname}: "
                                f"{exc.diag.message_primary or exc}; nothing was changed (the "
                                f"restored copy is in {staging})") from exc
    checkpoint("after-swap")
    return old
