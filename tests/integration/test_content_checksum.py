"""The content checksum's per-column ("typed") method tells apart every change the row's text
form does, and a manifest's text-form checksums are still taken as they were recorded.

One database on the session's PostgreSQL 15, no drill: each case changes one value of a
one-table database into a twin that compares equal under a type's own hash (1.50 and 1.5,
-0 and 0, 'a' and 'A' under a case-insensitive collation, NaN and Infinity) and asserts
the checksum moved."""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from backup_core.reading import inventory
from backup_core.tools import db
from backup_core.tools.cluster import Cluster

TABLE = """
    CREATE COLLATION IF NOT EXISTS ci (provider = icu, locale = 'und-u-ks-level2',
                                       deterministic = false);
    CREATE TYPE mood AS ENUM ('calm', 'busy');
    CREATE DOMAIN code AS char(4);
    CREATE TABLE t (id int PRIMARY KEY, small int2, big int8, n numeric, f float8,
                    name text, label text COLLATE ci, v varchar(10), flag bool,
                    at timestamptz, plain timestamp, u uuid, m mood, c char(4), d code,
                    span interval, j jsonb, tags text[], dropped int);
    ALTER TABLE t DROP COLUMN dropped;
    INSERT INTO t VALUES
      (1, 1, 10, 1.5, 0, 'x', 'a', 'p', true, '2026-01-01 00:00:00+00', '2026-01-01', NULL,
       'calm', 'ab', 'ab', '1 day', '{"k": 1}', '{a,b}'),
      (2, 2, 20, 'NaN', 1.25, 'y', 'b', 'q', false, '2026-01-02 00:00:00+00', NULL,
       '00000000-0000-0000-0000-000000000001', 'busy', 'cd', 'cd', '2 days', '[]', '{}')"""

# (what changes, the UPDATE): each leaves the text form different, some hashes alike
TWINS = [
    ("numeric scale", "UPDATE public.t SET n = 1.50 WHERE id = 1"),
    ("numeric NaN to Infinity", "UPDATE public.t SET n = 'Infinity' WHERE id = 2"),
    ("float sign of zero", "UPDATE public.t SET f = '-0' WHERE id = 1"),
    ("case under a nondeterministic collation", "UPDATE public.t SET label = 'A' WHERE id = 1"),
    ("NULL to empty text", "UPDATE public.t SET name = '' WHERE id = 1"),
    ("NULL to a value", "UPDATE public.t SET plain = '2026-01-01' WHERE id = 2"),
    ("one microsecond", "UPDATE public.t SET at = at + interval '1 microsecond' WHERE id = 1"),
    ("interval of equal length", "UPDATE public.t SET span = '24 hours' WHERE id = 1"),
    ("values swapped between rows",
     "UPDATE public.t SET big = CASE id WHEN 1 THEN 20 ELSE 10 END"),
    ("values moved between columns", "UPDATE public.t SET name = v, v = name WHERE id = 2"),
    ("an enum's label", "UPDATE public.t SET m = 'busy' WHERE id = 1"),
    ("a flag", "UPDATE public.t SET flag = NOT flag WHERE id = 2"),
    ("an array element", "UPDATE public.t SET tags = '{a,c}' WHERE id = 1"),
]


@contextlib.contextmanager
def table_in_new_database(cluster: Cluster, name: str, ddl: str
                          ) -> Iterator[psycopg.Connection[Any]]:
    """A database of its own holding `ddl`'s table, connected as the checksum reads it."""
    with db.connect(cluster.url(), autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    with db.connect(cluster.url(name), autocommit=True) as c:
        c.execute(ddl)
        inventory.stabilise_output(c)
        yield c


@pytest.fixture(scope="module")
def conn(pg15: Cluster) -> Iterator[psycopg.Connection[Any]]:
    with table_in_new_database(pg15, f"checksum_{os.getpid()}", TABLE) as c:
        yield c


def typed(conn: psycopg.Connection[Any]) -> str:
    return inventory.count_and_checksum(conn, "public", "t")[1]


@pytest.mark.parametrize("what,change", TWINS, ids=[w for w, _ in TWINS])
def test_every_change_the_text_form_sees_moves_the_typed_checksum(
        conn: psycopg.Connection[Any], what: str, change: str) -> None:
    conn.execute("BEGIN")
    try:
        before = typed(conn), inventory.count_and_checksum(conn, "public", "t",
                                                           method="text")[1]
        conn.execute(change)
        after = typed(conn), inventory.count_and_checksum(conn, "public", "t",
                                                          method="text")[1]
    finally:
        conn.execute("ROLLBACK")
    assert before[1] != after[1], f"{what}: the text form itself did not change"
    assert before[0].startswith("typed:") and after[0].startswith("typed:")
    assert before[0] != after[0], f"{what}: the typed checksum missed it"
    assert typed(conn) == before[0]  # rolled back: the same value again


def test_a_recorded_method_is_taken_again_as_recorded(conn: psycopg.Connection[Any]) -> None:
    text_sum = inventory.count_and_checksum(conn, "public", "t", method="text")
    typed_sum = inventory.count_and_checksum(conn, "public", "t")
    assert text_sum[0] == typed_sum[0] == 2
    assert not text_sum[1].startswith("typed:")  # as every atb before the method was named
    assert inventory.checksum_method(text_sum[1]) == "text"
    assert inventory.checksum_method(typed_sum[1]) == "typed"
    info = conn.info.dsn

    def connect() -> psycopg.Connection[Any]:
        c = psycopg.connect(info, password=conn.info.password, autocommit=True)
        inventory.stabilise_output(c)
        return c

    old = inventory.read_back(connect, workers=2, checksums=True,
                              methods={"public.t": "text"})
    new = inventory.read_back(connect, workers=2, checksums=True)
    assert old.checksums == {"public.t": text_sum[1]} and old.counts == {"public.t": 2}
    assert new.checksums == {"public.t": typed_sum[1]}


# How the first atb to record "typed:" checksums hashed a numeric (its SQL, as pinned then):
# every manifest since holds values of this form, which today's cheaper one must give again.
_NUMERIC_NOW = re.compile(r'hash_numeric_extended\((t\."\w+"), (\d+) \+ scale\(\1\)\), '
                          r'hashtextextended\(\1::text, \2\)')


def first_typed_sum(conn: psycopg.Connection[Any]) -> str:
    columns = inventory.table_columns(conn)["public.t"]
    now = inventory.typed_row_hash(columns).as_string(conn)
    first = _NUMERIC_NOW.sub(r"CASE WHEN scale(\1) IS NULL THEN hashtextextended(\1::text, \2) "
                             r"ELSE hash_numeric_extended(\1, \2 + scale(\1)) END", now)
    assert first != now and "hash_numeric_extended" not in _NUMERIC_NOW.sub("", now)
    row = conn.execute(f"SELECT coalesce(sum({first}), 0)::text FROM ONLY public.t t"
                       ).fetchone()
    assert row is not None
    return f"typed:{row[0]}"


@pytest.mark.parametrize("change", [
    "SELECT 1", "UPDATE public.t SET n = NULL WHERE id = 1",
    "UPDATE public.t SET n = 'Infinity' WHERE id = 2",
    "UPDATE public.t SET n = '-Infinity' WHERE id = 2",
    "UPDATE public.t SET n = 1.50 WHERE id = 1"], ids=["as made", "NULL", "Infinity",
                                                       "-Infinity", "scale"])
def test_the_cheaper_numeric_form_gives_the_recorded_typed_values_again(
        conn: psycopg.Connection[Any], change: str) -> None:
    conn.execute("BEGIN")
    try:
        conn.execute(change)
        assert typed(conn) == first_typed_sum(conn)
    finally:
        conn.execute("ROLLBACK")


def test_the_typed_checksum_is_the_same_on_postgresql_15_and_18(
        pg15: Cluster, pg18: Cluster) -> None:
    """Recorded on one major, checked on another (a drill's sandbox may be newer); the
    table of the cases above but for its ICU collation (the embedded 18 has no ICU)."""
    portable = TABLE.split(";", 1)[1].replace(" COLLATE ci", "")
    found = []
    for cluster in (pg15, pg18):
        with table_in_new_database(cluster, f"checksum_x_{os.getpid()}", portable) as c:
            found.append(inventory.count_and_checksum(c, "public", "t"))
    assert found[0] == found[1] and found[0][0] == 2
