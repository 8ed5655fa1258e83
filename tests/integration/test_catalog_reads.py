"""The catalogs read in one pipeline give what they gave one query at a time, a drill's read
of the kinds its manifest recorded gives those kinds exactly, and a security label, read only
where one exists, is still read where one does."""

from __future__ import annotations

from typing import Any

import psycopg

from backup_core.reading import inventory
from backup_core.tools import db
from backup_core.tools.cluster import Cluster
from tests.conftest import make_database


def _one_at_a_time(conn: psycopg.Connection[Any]) -> dict[str, str]:
    """Every definition query sent alone, as `definitions` did before the pipeline."""
    found: dict[str, str] = {}
    for kind, query in inventory.DEFINITIONS_SQL.items():
        for name, text in conn.execute(query).fetchall():
            found[f"{kind} {name}"] = text
    return found


def test_catalogs_at_once_equal_each_read_alone_and_a_security_label_is_read(
        pg15: Cluster) -> None:
    info = make_database(pg15, rows=10)
    with db.connect(info, autocommit=True) as conn:
        inventory.stabilise_output(conn)
        inv, defs = inventory.catalogs(conn, content=True)
        assert (inv, defs) == (inventory.schema_inventory(conn),
                               inventory.definitions(conn, content=True))
        assert not any(k.startswith("security_label ") for k in defs)
        assert inv["public"]["tables"] == ["accounts", "alembic_version", "orders",
                                           "system_events"]
        assert defs["column public.orders.price"] == "numeric(18,8) not null"
        assert defs["database encoding"] == "UTF8"
        # a drill reads the kinds its manifest recorded (and the locale), exactly as whole
        _, some = inventory.catalogs(conn, content=True, kinds={"column", "type"})
        assert some == {k: v for k, v in defs.items()
                        if k.split(" ", 1)[0] in ("column", "type", "database")}
        assert some["type public.event_type"] == "enum ('TEST', 'TRADE')"
        # no label provider is loaded in a test cluster: the catalog row is written directly
        conn.execute("SET allow_system_table_mods TO on")
        conn.execute("INSERT INTO pg_seclabel VALUES ('public.orders'::regclass, "
                     "'pg_class'::regclass, 0, 'test_provider', 'secret')")
        labelled = inventory.definitions(conn, content=True)
        assert labelled["security_label table public.orders provider test_provider"] == \
            "secret"
        alone = _one_at_a_time(conn)
        assert {k: v for k, v in labelled.items() if k.startswith("security_label ")} == \
            {k: v for k, v in alone.items() if k.startswith("security_label ")}
