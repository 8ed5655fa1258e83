"""What the drill runs beside the read-back: ANALYZE split over two connections analyzes what a
database-wide ANALYZE does (a database made twice alike, one analyzed each way); pg_amcheck of
a dump's copy reads the restored relations and the large objects, not initdb's catalogs."""

from __future__ import annotations

import os
from typing import Any

import pytest

from backup_core.tools import childenv, db
from backup_core.tools.cluster import Cluster
from backup_core.tools.commands import pg_amcheck_argv
from backup_core.tools.conninfo import ConnInfo
from backup_core.tools.runner import run
from drills import beside
from drills.sandbox import SandboxInfo
from tests.conftest import make_database

STATISTICS = """SELECT n.nspname || '.' || c.relname || '.' || s.staattnum
                FROM pg_statistic s JOIN pg_class c ON c.oid = s.starelid
                JOIN pg_namespace n ON n.oid = c.relnamespace ORDER BY 1"""


def test_analyze_in_two_lists_gives_every_statistic_a_database_wide_analyze_does(
        pg15: Cluster) -> None:
    split, whole = make_database(pg15, rows=300), make_database(pg15, rows=300)
    beside.analyze(split)
    with db.connect(whole, autocommit=True) as conn:
        conn.execute("ANALYZE")
        expected = [r[0] for r in conn.execute(STATISTICS).fetchall()]
    with db.connect(split) as conn:
        found = [r[0] for r in conn.execute(STATISTICS).fetchall()]
    assert found == expected
    assert "public.orders.3" in found and "pg_catalog.pg_class.1" in found


LARGE_OBJECTS = {"pg_catalog.pg_largeobject", "pg_catalog.pg_largeobject_loid_pn_index",
                 "pg_catalog.pg_largeobject_metadata",
                 "pg_catalog.pg_largeobject_metadata_oid_index"}


def _amchecked(cluster: Cluster, info: ConnInfo, **kw: Any) -> tuple[int, set[str]]:
    """pg_amcheck's exit code and the relations it says it checked (schema.name)."""
    with childenv.for_tool(info) as (conninfo, env):
        done = run([*pg_amcheck_argv(cluster.toolchain, conninfo, **kw), "--verbose"],
                   what="pg_amcheck", env=env, check=False)
    return done.returncode, {line.split('"')[1].split(".", 1)[1] for line in
                             (done.stdout + done.stderr).splitlines() if "checking" in line}


@pytest.mark.parametrize("version", ["pg15", "pg18"])
def test_pg_amcheck_of_a_restored_dump_reads_user_relations_and_large_objects_only(
        version: str, request: pytest.FixtureRequest) -> None:
    """A dump restored into a new database: its tables, their indexes and TOAST are read,
    and its large objects (production's data in pg_catalog); initdb's other system
    catalogs, the sandbox server's own making, are left out."""
    cluster: Cluster = request.getfixturevalue(version)
    info = make_database(cluster, rows=10)
    with db.connect(info, autocommit=True) as conn:
        conn.execute("SELECT lo_from_bytea(0, 'a large object'::bytea)")
        toast = {str(r[0]) for r in conn.execute(
            "SELECT reltoastrelid::regclass FROM pg_class WHERE relname IN "
            "('orders', 'system_events')").fetchall()}
    code, checked = _amchecked(cluster, info, jobs=2, catalogs=False)
    assert code == 0
    assert {"public.orders", "public.orders_pkey", "public.orders_account_idx",
            "public.accounts", "public.accounts_name_key", "public.system_events",
            *toast, *{f"{t}_index" for t in toast}} <= checked
    assert len(toast) == 2 and all(t.startswith("pg_toast.pg_toast_") for t in toast)
    assert {r for r in checked if r.startswith("pg_catalog.")} == LARGE_OBJECTS
    assert not any(r.startswith("information_schema.") for r in checked)
    code, whole = _amchecked(cluster, info)
    assert code == 0 and {"pg_catalog.pg_class", *LARGE_OBJECTS, *checked} <= whole


def test_pg_amcheck_of_a_restored_dump_without_a_table_passes(pg15: Cluster) -> None:
    """Views, functions and large objects but no table: the large objects' relations are
    still checked, so pg_amcheck never finds 'no relations to check' (exit 1, a false
    FAIL), and the drill's check passes."""
    name = f"tableless_{os.getpid()}"
    with db.connect(pg15.url(), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    info = pg15.url(name)
    with db.connect(info, autocommit=True) as conn:
        conn.execute("CREATE VIEW answer AS SELECT 42 AS n; "
                     "CREATE FUNCTION one() RETURNS int LANGUAGE sql AS 'SELECT 1'; "
                     "SELECT lo_from_bytea(0, 'kept'::bytea)")
    assert _amchecked(pg15, info, catalogs=False) == (0, LARGE_OBJECTS)
    done = beside.amcheck(SandboxInfo(provider="local", server_version="15", url=info,
                                      identity=db.Identity("", 0, name), start_s=0.0,
                                      chain=pg15.toolchain), catalogs=False)
    assert (done.returncode, done.error, done.skipped, done.catalogs) == (0, None, "", False)
