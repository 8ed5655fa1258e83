"""Questions asked of a database: are its sequences, indexes and foreign keys sound?

Asked of production in the dump's snapshot (what was already true there is recorded in the
manifest) and of the restored copy by the drill, which fails only on what differs."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg import sql

SEQUENCE_OWNERS_SQL = """
SELECT sn.nspname, s.relname, tn.nspname, t.relname, a.attname
FROM pg_class s
JOIN pg_namespace sn ON sn.oid = s.relnamespace
JOIN pg_depend d ON d.objid = s.oid AND d.classid = 'pg_class'::regclass
     AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i')
JOIN pg_class t ON t.oid = d.refobjid
JOIN pg_namespace tn ON tn.oid = t.relnamespace
JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = d.refobjsubid
WHERE s.relkind = 'S'
ORDER BY 1, 2
"""

INVALID_INDEXES_SQL = """
SELECT n.nspname || '.' || c.relname FROM pg_index i
JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE NOT i.indisvalid OR NOT i.indisready
"""

FOREIGN_KEYS_SQL = """
SELECT k.conname, n.nspname, c.relname, rn.nspname, r.relname,
       array(SELECT a.attname FROM unnest(k.conkey) WITH ORDINALITY u(n, o)
             JOIN pg_attribute a ON a.attrelid = k.conrelid AND a.attnum = u.n ORDER BY u.o),
       array(SELECT a.attname FROM unnest(k.confkey) WITH ORDINALITY u(n, o)
             JOIN pg_attribute a ON a.attrelid = k.confrelid AND a.attnum = u.n ORDER BY u.o),
       k.convalidated
FROM pg_constraint k
JOIN pg_class c ON c.oid = k.conrelid JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_class r ON r.oid = k.confrelid JOIN pg_namespace rn ON rn.oid = r.relnamespace
WHERE k.contype = 'f'
ORDER BY 2, 3, 1
"""


def conditions(conn: psycopg.Connection[Any]) -> dict[str, list[str]]:
    """What is already wrong in a database, in the words the drill's checks use."""
    return {"sequences_behind": sequences_behind(conn)[1],
            "invalid_indexes": invalid_indexes(conn),
            "foreign_keys": foreign_key_violations(conn, only_not_valid=True)[1]}


def sequences_behind(conn: psycopg.Connection[Any]) -> tuple[int, list[str]]:
    """(sequences checked, descriptions of those whose value is below their column's max)."""
    behind: list[str] = []
    rows = conn.execute(SEQUENCE_OWNERS_SQL).fetchall()
    for seq_schema, seq, tab_schema, table, column in rows:
        last = conn.execute(sql.SQL("SELECT last_value, is_called FROM {}.{}").format(
            sql.Identifier(seq_schema), sql.Identifier(seq))).fetchone()
        top = conn.execute(sql.SQL("SELECT max({}) FROM {}.{}").format(
            sql.Identifier(column), sql.Identifier(tab_schema), sql.Identifier(table))
        ).fetchone()
        if last is None or top is None or top[0] is None:
            continue
        value = int(last[0]) if last[1] else int(last[0]) - 1
        if value < int(top[0]):
            behind.append(f"{seq_schema}.{seq} is at {value}, {tab_schema}.{table}.{column} "
                          f"has {top[0]}: the next insert would collide")
    return len(rows), behind


def invalid_indexes(conn: psycopg.Connection[Any]) -> list[str]:
    return [r[0] for r in conn.execute(INVALID_INDEXES_SQL).fetchall()]


def foreign_key_violations(conn: psycopg.Connection[Any], *,
                           only_not_valid: bool = False) -> tuple[int, list[str]]:
    """(foreign keys checked, violations): every referencing row must find its parent.
    `only_not_valid` checks only constraints never validated (the others cannot be broken
    in a live database): cheap enough to run at backup time."""
    problems: list[str] = []
    keys = [k for k in conn.execute(FOREIGN_KEYS_SQL).fetchall()
            if not (only_not_valid and k[7])]
    for name, ns, table, rns, rtable, cols, rcols, validated in keys:
        on = sql.SQL(" AND ").join(
            sql.SQL("p.{} = c.{}").format(sql.Identifier(rc), sql.Identifier(cc))
            for cc, rc in zip(cols, rcols, strict=True))
        not_null = sql.SQL(" AND ").join(
            sql.SQL("c.{} IS NOT NULL").format(sql.Identifier(cc)) for cc in cols)
        query = sql.SQL(
            "SELECT count(*) FROM {}.{} c WHERE {} AND NOT EXISTS "
            "(SELECT 1 FROM {}.{} p WHERE {})").format(
            sql.Identifier(ns), sql.Identifier(table), not_null, sql.Identifier(rns),
            sql.Identifier(rtable), on)
        row = conn.execute(query).fetchone()
        orphans = int(row[0]) if row else 0
        if orphans:
            problems.append(f"{ns}.{table}.{name}: {orphans} rows without a parent in "
                            f"{rns}.{rtable}")
        elif not validated:
            problems.append(f"{ns}.{table}.{name} is NOT VALID (never validated)")
    return len(keys), problems
