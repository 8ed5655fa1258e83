"""ANALYZE split over two connections analyzes what a database-wide ANALYZE does: the same
relations get statistics (a database made twice alike, one analyzed each way)."""

from __future__ import annotations

from backup_core.tools import db
from backup_core.tools.cluster import Cluster
from drills import beside
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


def test_pg_amcheck_of_a_restored_dump_reads_every_user_relation_and_no_system_catalog(
        pg15: Cluster) -> None:
    """A dump restored into a new database: its tables, their indexes and TOAST are read;
    the system catalogs, the sandbox server's own making, are left out."""
    from backup_core.tools import childenv
    from backup_core.tools.commands import pg_amcheck_argv
    from backup_core.tools.runner import run

    info = make_database(pg15, rows=10)
    with childenv.for_tool(info) as (conninfo, env):
        done = run([*pg_amcheck_argv(pg15.toolchain, conninfo, jobs=2, catalogs=False),
                    "--verbose"], what="pg_amcheck", env=env)
        whole = run([*pg_amcheck_argv(pg15.toolchain, conninfo), "--verbose"], what="pg_amcheck",
                    env=env)
    checked = {line.split('"')[1].split(".", 1)[1] for line in
               (done.stdout + done.stderr).splitlines() if "checking" in line}
    assert {"public.orders", "public.orders_pkey", "public.orders_account_idx",
            "public.accounts", "public.accounts_name_key", "public.system_events"} <= checked
    assert not any(r.startswith(("pg_catalog.", "information_schema.")) for r in checked)
    assert "pg_catalog.pg_class" in (whole.stdout + whole.stderr)
