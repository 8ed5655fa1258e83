"""What a database holds: exact or estimated row counts and an inventory of schema objects.

The same queries describe a source at backup time and a restored copy during a drill, so the
two can be compared name for name.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg
from psycopg import sql

from backup_core.manifest import Inventory

_SYSTEM = "('pg_catalog', 'information_schema', 'pg_toast')"
_NOT_SYSTEM = f"n.nspname NOT IN {_SYSTEM} AND n.nspname NOT LIKE 'pg\\_temp\\_%' " \
    "AND n.nspname NOT LIKE 'pg\\_toast\\_temp\\_%'"
_NOT_EXTENSION_MEMBER = (
    "NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = {cat}::regclass "
    "AND d.objid = {oid} AND d.deptype = 'e')"
)

TABLES_SQL = f"""
SELECT n.nspname, c.relname, c.reltuples::bigint
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r' AND {_NOT_SYSTEM}
  AND {_NOT_EXTENSION_MEMBER.format(cat="'pg_class'", oid="c.oid")}
ORDER BY c.relpages DESC, 1, 2
"""

INVENTORY_SQL: dict[str, str] = {
    "tables": f"""
        SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relkind IN ('r', 'p', 'f') AND {_NOT_SYSTEM}
          AND {_NOT_EXTENSION_MEMBER.format(cat="'pg_class'", oid="c.oid")}""",
    "views": f"""
        SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relkind IN ('v', 'm') AND {_NOT_SYSTEM}
          AND {_NOT_EXTENSION_MEMBER.format(cat="'pg_class'", oid="c.oid")}""",
    "indexes": f"""
        SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relkind IN ('i', 'I') AND {_NOT_SYSTEM}
          AND NOT EXISTS (SELECT 1 FROM pg_depend d JOIN pg_index x ON x.indexrelid = c.oid
                          WHERE d.objid = x.indrelid AND d.classid = 'pg_class'::regclass
                          AND d.deptype = 'e')""",
    "sequences": f"""
        SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relkind = 'S' AND {_NOT_SYSTEM}
          AND {_NOT_EXTENSION_MEMBER.format(cat="'pg_class'", oid="c.oid")}""",
    "functions": f"""
        SELECT n.nspname, p.proname || '(' || pg_get_function_identity_arguments(p.oid) || ')'
        FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
        WHERE {_NOT_SYSTEM}
          AND {_NOT_EXTENSION_MEMBER.format(cat="'pg_proc'", oid="p.oid")}""",
    "constraints": f"""
        SELECT n.nspname, c.relname || '.' || k.conname
        FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE k.contype IN ('p', 'u', 'f', 'c', 'x') AND {_NOT_SYSTEM}
          AND {_NOT_EXTENSION_MEMBER.format(cat="'pg_class'", oid="c.oid")}""",
    "extensions": """
        SELECT n.nspname, e.extname FROM pg_extension e
        JOIN pg_namespace n ON n.oid = e.extnamespace
        WHERE e.extname <> 'plpgsql'""",
}

ROW_COUNT_MODES = ("exact", "estimate", "off")


def qualified(schema: str, name: str) -> str:
    return f"{schema}.{name}"


def user_tables(conn: psycopg.Connection[Any]) -> list[tuple[str, str, int]]:
    """(schema, table, estimated rows), largest first so parallel counting balances."""
    return [(s, t, int(r)) for s, t, r in conn.execute(TABLES_SQL).fetchall()]


def schema_inventory(conn: psycopg.Connection[Any]) -> Inventory:
    inv: Inventory = {}
    for kind, query in INVENTORY_SQL.items():
        for schema, name in conn.execute(query).fetchall():
            inv.setdefault(schema, {}).setdefault(kind, []).append(name)
    for kinds in inv.values():
        for names in kinds.values():
            names.sort()
    return dict(sorted(inv.items()))


def count_rows(conn: psycopg.Connection[Any], schema: str, table: str) -> int:
    query = sql.SQL("SELECT count(*) FROM ONLY {}.{}").format(
        sql.Identifier(schema), sql.Identifier(table)
    )
    row = conn.execute(query).fetchone()
    return int(row[0]) if row else 0


def estimated_counts(conn: psycopg.Connection[Any]) -> dict[str, int]:
    return {qualified(s, t): max(r, 0) for s, t, r in user_tables(conn)}


def exact_counts(
    tables: list[tuple[str, str]],
    connect: Callable[[], psycopg.Connection[Any]],
    *,
    workers: int,
) -> dict[str, int]:
    """Count every table exactly, spreading tables over `workers` connections.

    `connect` returns a connection already positioned where counts must be taken (for a
    backup: inside a transaction that imported the dump's snapshot).
    """
    if not tables:
        return {}
    workers = max(1, min(workers, len(tables)))
    buckets: list[list[tuple[str, str]]] = [tables[i::workers] for i in range(workers)]

    def count_bucket(bucket: list[tuple[str, str]]) -> dict[str, int]:
        with connect() as conn:
            return {qualified(s, t): count_rows(conn, s, t) for s, t in bucket}

    counts: dict[str, int] = {}
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for part in pool.map(count_bucket, buckets):
            counts.update(part)
    return dict(sorted(counts.items()))


def alembic_revision(conn: psycopg.Connection[Any], table: str = "alembic_version") -> str | None:
    """The Alembic revision(s) stamped in the database, comma-joined; None without Alembic."""
    found = conn.execute("SELECT to_regclass(%s)", (table,)).fetchone()
    if not found or found[0] is None:
        return None
    rows = conn.execute(
        sql.SQL("SELECT version_num FROM {} ORDER BY 1").format(sql.Identifier(table))
    ).fetchall()
    return ",".join(r[0] for r in rows) or None
