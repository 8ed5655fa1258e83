"""The catalogs read in one pipeline give what they gave one query at a time, a drill's read
of the kinds its manifest recorded gives those kinds exactly, and a security label, read only
where one exists, is still read where one does."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

from backup_core.reading import inventory
from backup_core.tools import db
from backup_core.tools.cluster import Cluster
from tests.conftest import make_database


def _one_at_a_time(conn: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch
                   ) -> tuple[inventory.Inventory, dict[str, str]]:
    """The inventory and every definition with each query sent alone: `_rows_of`'s branch
    for a libpq without pipelines, the reads as they were before the pipeline."""
    with monkeypatch.context() as patched:
        patched.setattr(psycopg.Pipeline, "is_supported", classmethod(lambda cls: False))
        return (inventory.schema_inventory(conn), inventory.definitions(conn, content=True))


def _of_kinds(defs: dict[str, str], kinds: set[str]) -> dict[str, str]:
    """The definitions a read of `kinds` gives: those kinds' (the large objects' count,
    content and privileges read together) and the locale's."""
    if kinds & {"large_object", "large_object_acl"}:
        kinds = kinds | {"large_object", "large_object_acl"}
    return {k: v for k, v in defs.items() if k.split(" ", 1)[0] in kinds | {"database"}}


def test_catalogs_at_once_equal_each_read_alone_and_a_security_label_is_read(
        pg15: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    info = make_database(pg15, rows=10)
    with db.connect(info, autocommit=True) as conn:
        inventory.stabilise_output(conn)
        inv, defs = inventory.catalogs(conn, content=True)
        assert not any(k.startswith("security_label ") for k in defs)
        assert inv["public"]["tables"] == ["accounts", "alembic_version", "orders",
                                           "system_events"]
        assert defs["column public.orders.price"] == "numeric(18,8) not null"
        assert defs["database encoding"] == "UTF8"
        assert (inv, defs) == _one_at_a_time(conn, monkeypatch)
        # no label provider is loaded in a test cluster: the catalog row is written directly
        conn.execute("SET allow_system_table_mods TO on")
        conn.execute("INSERT INTO pg_seclabel VALUES ('public.orders'::regclass, "
                     "'pg_class'::regclass, 0, 'test_provider', 'secret')")
        conn.execute("SELECT lo_from_bytea(0, 'a large object'::bytea)")
        inv, defs = inventory.catalogs(conn, content=True)
        assert defs["security_label table public.orders provider test_provider"] == "secret"
        assert defs["large_object count"] == "1"
        assert (inv, defs) == _one_at_a_time(conn, monkeypatch)
        assert inventory.definitions(conn, content=True) == defs
        # a drill reads the kinds its manifest recorded (and the locale), exactly as alone
        _, some = inventory.catalogs(conn, content=True, kinds={"column", "type"})
        assert some == _of_kinds(defs, {"column", "type"})
        assert some["type public.event_type"] == "enum ('TEST', 'TRADE')"
        for kind in [*inventory.DEFINITIONS_SQL, "large_object", "large_object_acl"]:
            assert inventory.catalogs(conn, content=True, kinds={kind})[1] == \
                _of_kinds(defs, {kind}), kind
