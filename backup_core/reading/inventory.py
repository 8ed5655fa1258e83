"""What a database holds: exact or estimated row counts and an inventory of schema objects.

The same queries describe a source at backup time and a restored copy during a drill, so the
two can be compared name for name.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import psycopg
from psycopg import sql

from backup_core.store.manifest import Inventory

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
          AND NOT EXISTS (SELECT 1 FROM pg_index v WHERE v.indexrelid = c.oid
                          AND NOT v.indisvalid)  -- pg_dump leaves invalid indexes out
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

# checksum: exact counts plus an order-independent checksum of every table's content, in one
# pass; exact: counts only; estimate: planner statistics; off: nothing.
ROW_COUNT_MODES = ("checksum", "exact", "estimate", "off")
# A row's text form depends on these settings; the backup and the drill both fix them, so the
# same data gives the same checksum whatever the server's or the role's defaults.
STABLE_OUTPUT = {"TimeZone": "UTC", "DateStyle": "ISO, YMD", "IntervalStyle": "postgres",
                 "extra_float_digits": "3", "bytea_output": "hex", "lc_monetary": "C",
                 "search_path": "pg_catalog"}  # names in deparsed definitions: all qualified

_OBJ = "quote_ident(n.nspname) || '.' || quote_ident(c.relname)"
_KIND = ("CASE c.relkind WHEN 'r' THEN 'table' WHEN 'p' THEN 'table' WHEN 'v' THEN 'view' "
         "WHEN 'm' THEN 'materialized view' WHEN 'S' THEN 'sequence' "
         "WHEN 'f' THEN 'foreign table' ELSE c.relkind::text END")
# What each object is, as text a person can compare (long bodies as md5): the drill checks
# the restored copy against this, so a changed type, default or grant is named, not missed.
DEFINITIONS_SQL: dict[str, str] = {
    "column": f"""
        SELECT {_OBJ} || '.' || quote_ident(a.attname),
               format_type(a.atttypid, a.atttypmod)
               || CASE WHEN a.attnotnull THEN ' not null' ELSE '' END
               || coalesce(' default ' || pg_get_expr(d.adbin, d.adrelid), '')
               || CASE WHEN a.attcollation <> 0 AND a.attcollation <> t.typcollation
                       THEN ' collate ' || quote_ident(co.collname) ELSE '' END
               || CASE a.attidentity WHEN 'a' THEN ' generated always as identity'
                                     WHEN 'd' THEN ' generated by default as identity'
                                     ELSE '' END
               || CASE a.attgenerated WHEN 's' THEN ' generated stored' ELSE '' END
        FROM pg_attribute a
        JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
        JOIN pg_type t ON t.oid = a.atttypid
        LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
        LEFT JOIN pg_collation co ON co.oid = a.attcollation
        WHERE a.attnum > 0 AND NOT a.attisdropped AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
          AND {_NOT_SYSTEM} AND {_NOT_EXTENSION_MEMBER.format(cat="'pg_class'", oid="c.oid")}""",
    "constraint": f"""
        SELECT {_OBJ} || '.' || quote_ident(k.conname), pg_get_constraintdef(k.oid)
        FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE {_NOT_SYSTEM} AND {_NOT_EXTENSION_MEMBER.format(cat="'pg_class'", oid="c.oid")}""",
    "index": f"""
        SELECT {_OBJ}, pg_get_indexdef(c.oid)
        FROM pg_index x JOIN pg_class c ON c.oid = x.indexrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE x.indisvalid AND {_NOT_SYSTEM}
          AND {_NOT_EXTENSION_MEMBER.format(cat="'pg_class'", oid="x.indrelid")}""",
    "trigger": f"""
        SELECT {_OBJ} || '.' || quote_ident(g.tgname), pg_get_triggerdef(g.oid)
        FROM pg_trigger g JOIN pg_class c ON c.oid = g.tgrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE NOT g.tgisinternal AND {_NOT_SYSTEM}""",
    "view": f"""
        SELECT {_OBJ}, pg_get_viewdef(c.oid)
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relkind IN ('v', 'm') AND {_NOT_SYSTEM}
          AND {_NOT_EXTENSION_MEMBER.format(cat="'pg_class'", oid="c.oid")}""",
    "function": f"""
        SELECT quote_ident(n.nspname) || '.' || quote_ident(p.proname) || '('
               || pg_get_function_identity_arguments(p.oid) || ')',
               pg_get_functiondef(p.oid)
        FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
        WHERE p.prokind IN ('f', 'p', 'w') AND {_NOT_SYSTEM}
          AND {_NOT_EXTENSION_MEMBER.format(cat="'pg_proc'", oid="p.oid")}""",
    "sequence": f"""
        SELECT {_OBJ}, format_type(s.seqtypid, NULL) || ' increment ' || s.seqincrement
               || ' from ' || s.seqmin || ' to ' || s.seqmax
               || CASE WHEN s.seqcycle THEN ' cycle' ELSE '' END
        FROM pg_sequence s JOIN pg_class c ON c.oid = s.seqrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE {_NOT_SYSTEM} AND {_NOT_EXTENSION_MEMBER.format(cat="'pg_class'", oid="c.oid")}""",
    "type": f"""
        SELECT quote_ident(n.nspname) || '.' || quote_ident(t.typname),
               CASE t.typtype
                 WHEN 'e' THEN 'enum (' || (SELECT string_agg(quote_literal(e.enumlabel), ', '
                                            ORDER BY e.enumsortorder) FROM pg_enum e
                                            WHERE e.enumtypid = t.oid) || ')'
                 WHEN 'd' THEN 'domain ' || format_type(t.typbasetype, t.typtypmod)
                 ELSE 'type ' || t.typtype::text END
        FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
        WHERE t.typtype IN ('e', 'd', 'c', 'r') AND t.typrelid = 0 AND {_NOT_SYSTEM}
          AND {_NOT_EXTENSION_MEMBER.format(cat="'pg_type'", oid="t.oid")}""",
    "extension": """
        SELECT quote_ident(e.extname), 'version ' || e.extversion FROM pg_extension e
        WHERE e.extname <> 'plpgsql'""",
    "owner": f"""
        SELECT {_KIND} || ' ' || {_OBJ}, pg_get_userbyid(c.relowner)
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f') AND {_NOT_SYSTEM}
          AND {_NOT_EXTENSION_MEMBER.format(cat="'pg_class'", oid="c.oid")}
        UNION ALL
        SELECT 'schema ' || quote_ident(n.nspname), pg_get_userbyid(n.nspowner)
        FROM pg_namespace n WHERE {_NOT_SYSTEM} AND n.nspname <> 'public'""",
    "privileges": f"""
        SELECT {_KIND} || ' ' || {_OBJ}, c.relacl::text
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relacl IS NOT NULL AND {_NOT_SYSTEM}
          AND {_NOT_EXTENSION_MEMBER.format(cat="'pg_class'", oid="c.oid")}
        UNION ALL
        SELECT 'schema ' || quote_ident(n.nspname), n.nspacl::text
        FROM pg_namespace n WHERE n.nspacl IS NOT NULL AND {_NOT_SYSTEM}""",
}
# Kinds that only mean something when the copy was restored with owners and grants.
OWNERSHIP_KINDS = ("owner", "privileges")
# Kinds whose text a server deparses: comparable only between servers of one major.
DEPARSED_KINDS = ("constraint", "index", "trigger", "view", "function", "extension")


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


_CAST = re.compile(
    r"::(?:\"[^\"]+\"|[A-Za-z_][\w.]*)"
    r"(?:\s+(?:varying|precision|with(?:out)?\s+time\s+zone))?(?:\(\d+(?:,\s*\d+)?\))?(?:\[\])*")
_ATOM_IN_PARENS = re.compile(r"\(\s*((?:'(?:[^']|'')*'|[\w.\"]+|ARRAY\[[^\[\]]*\]))\s*\)")


def normalise(definition: str) -> str:
    """A deparsed expression in a form that survives a dump and reload: PostgreSQL moves casts
    and parentheses when it parses its own output again (`x IN ('a', 'b')` on a varchar
    column), so casts are dropped and parentheses around a single term removed. Types are
    compared on the columns themselves."""
    text = _CAST.sub("", definition)
    while True:
        shorter = _ATOM_IN_PARENS.sub(r"\1", text)
        if shorter == text:
            return " ".join(text.split())
        text = shorter


def definitions(conn: psycopg.Connection[Any]) -> dict[str, str]:
    """`"<kind> <object>"` -> its definition, for every object of the database (run on a
    connection whose output is stabilised, so both sides deparse alike). Deparsed kinds are
    normalised (see `normalise`); long ones are kept as an md5 of that."""
    found: dict[str, str] = {}
    for kind, query in DEFINITIONS_SQL.items():
        for name, definition in conn.execute(query).fetchall():
            text = str(definition)
            if kind in DEPARSED_KINDS and kind != "extension":
                text = normalise(text)
                if len(text) > 200:
                    text = "md5 " + hashlib.md5(text.encode()).hexdigest()
            found[f"{kind} {name}"] = text
    return dict(sorted(found.items()))


def count_rows(conn: psycopg.Connection[Any], schema: str, table: str) -> int:
    query = sql.SQL("SELECT count(*) FROM ONLY {}.{}").format(
        sql.Identifier(schema), sql.Identifier(table)
    )
    row = conn.execute(query).fetchone()
    return int(row[0]) if row else 0


def stabilise_output(conn: psycopg.Connection[Any]) -> None:
    """Fix the settings a row's text form depends on (run before any transaction starts)."""
    for name, value in STABLE_OUTPUT.items():
        conn.execute(sql.SQL("SET {} TO {}").format(sql.Identifier(name), sql.Literal(value)))


def count_and_checksum(conn: psycopg.Connection[Any], schema: str, table: str) -> tuple[int, str]:
    """Rows and the sum of a 64-bit hash of each row's text form: one scan, independent of
    row order, and changed by any value of any row (a rounded price, a flipped flag)."""
    query = sql.SQL("SELECT count(*), coalesce(sum(hashtextextended(t::text, 0)), 0)::text "
                    "FROM ONLY {}.{} t").format(sql.Identifier(schema), sql.Identifier(table))
    row = conn.execute(query).fetchone()
    return (int(row[0]), str(row[1])) if row else (0, "0")


def estimated_counts(conn: psycopg.Connection[Any]) -> dict[str, int]:
    return {qualified(s, t): max(r, 0) for s, t, r in user_tables(conn)}


def table_contents(
    tables: list[tuple[str, str]],
    connect: Callable[[], psycopg.Connection[Any]],
    *,
    workers: int,
    checksums: bool,
) -> tuple[dict[str, int], dict[str, str]]:
    """(row counts, content checksums) of every table, spreading tables over `workers`
    connections. `connect` returns a connection already positioned where they must be taken
    (for a backup: inside a transaction that imported the dump's snapshot) with its output
    stabilised when checksums are wanted."""
    if not tables:
        return {}, {}
    workers = max(1, min(workers, len(tables)))
    buckets: list[list[tuple[str, str]]] = [tables[i::workers] for i in range(workers)]

    def read_bucket(bucket: list[tuple[str, str]]) -> dict[str, tuple[int, str]]:
        with connect() as conn:
            if checksums:
                return {qualified(s, t): count_and_checksum(conn, s, t) for s, t in bucket}
            return {qualified(s, t): (count_rows(conn, s, t), "") for s, t in bucket}

    found: dict[str, tuple[int, str]] = {}
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for part in pool.map(read_bucket, buckets):
            found.update(part)
    counts = {k: v[0] for k, v in sorted(found.items())}
    sums = {k: v[1] for k, v in sorted(found.items())} if checksums else {}
    return counts, sums


def alembic_revision(conn: psycopg.Connection[Any], table: str = "alembic_version") -> str | None:
    """The Alembic revision(s) stamped in the database, comma-joined; None without Alembic.

    Found by name in any schema (public first), whatever the session's search_path."""
    found = conn.execute(
        "SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE c.relname = %s AND c.relkind IN ('r', 'p') "
        "ORDER BY n.nspname <> 'public', n.nspname LIMIT 1", (table,)).fetchone()
    if not found:
        return None
    rows = conn.execute(
        sql.SQL("SELECT version_num FROM {}.{} ORDER BY 1").format(
            sql.Identifier(found[0]), sql.Identifier(table))
    ).fetchall()
    return ",".join(r[0] for r in rows) or None
