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
