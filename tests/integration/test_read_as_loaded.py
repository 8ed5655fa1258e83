"""A drill reads each table back as soon as the restore reports its data committed, while
the restore goes on: every table is reported, only once its rows are all in, under every
way a drill restores (parallel, one job, the split load); a table read early gives exactly
what a read after the restore gives; a read holds its table's lock only while it reads, and
waits on the restore, never the other way."""

from __future__ import annotations

import time
from typing import Any

import psycopg
import pytest

from backup_core.ops import backup, split_copy
from backup_core.ops.restore import RestoreRequest, restore_backup
from backup_core.reading import inventory, toc
from backup_core.store.catalog import Backup, scan
from backup_core.tools import db, toolchain
from backup_core.tools.cluster import Cluster
from backup_core.tools.conninfo import ConnInfo
from tests.conftest import make_database

EXTRA = """
    CREATE SCHEMA "s.x";
    CREATE TABLE "s.x".a (i int PRIMARY KEY, t text);
    INSERT INTO "s.x".a SELECT g, g::text FROM generate_series(1, 50) g;
    CREATE TABLE p (i int, t text) PARTITION BY RANGE (i);
    CREATE TABLE p1 PARTITION OF p FOR VALUES FROM (0) TO (100);
    CREATE TABLE p2 PARTITION OF p FOR VALUES FROM (100) TO (200);
    INSERT INTO p SELECT g, 'v' || g FROM generate_series(0, 199) g;
    CREATE MATERIALIZED VIEW mv AS SELECT account_id, count(*) FROM orders GROUP BY 1;
    CREATE SEQUENCE sq; SELECT setval('sq', 42);
    CREATE TABLE empty (i int);
"""
TABLES = {"public.accounts", "public.orders", "public.system_events", "public.alembic_version",
          "s.x.a", "public.p1", "public.p2", "public.empty"}


@pytest.fixture(scope="module")
def dumped(pg15: Cluster, tmp_path_factory: pytest.TempPathFactory,
           chains: list[toolchain.Toolchain]) -> Backup:
    info = make_database(pg15, rows=3000)
    with db.connect(info, autocommit=True) as conn:
        conn.execute(EXTRA)
    out = tmp_path_factory.mktemp("read-as-loaded")
    backup.create_backup(info, out, chains=chains)
    return scan(out)[0]


def _new_target(cluster: Cluster, name: str) -> ConnInfo:
    with db.connect(cluster.url(), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return cluster.url(name)


def _stable(url: ConnInfo) -> psycopg.Connection[Any]:
    conn = db.connect(url, autocommit=True)
    inventory.stabilise_output(conn)
    conn.autocommit = False
    return conn


@pytest.mark.parametrize("jobs,split", [(2, False), (1, False), (3, True)])
def test_each_table_is_reported_once_all_its_rows_are_in(
    pg15: Cluster, dumped: Backup, chains: list[toolchain.Toolchain], jobs: int, split: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """At the moment a table is reported, another session already counts every row the
    backup recorded: its data item has committed."""
    monkeypatch.setattr(split_copy, "MIN_ROWS", 1000)  # orders (3000 rows) split
    assert dumped.manifest is not None
    recorded = dumped.manifest.row_counts
    target = _new_target(pg15, f"ral_{jobs}_{split}_{dumped.path.stem[-6:]}")
    seen: dict[str, int] = {}
    with db.connect(target, autocommit=True) as watcher:

        def loaded(entry: toc.TocEntry) -> None:
            name = inventory.qualified(entry.schema, entry.tag)
            assert name not in seen
            seen[name] = inventory.count_rows(watcher, entry.schema, entry.tag)

        done = restore_backup(RestoreRequest(dumped.path, target, no_owner=True, jobs=jobs,
                                             scratch=True, split=split, on_loaded=loaded),
                              chains=chains)
    assert any("loaded over 3 COPY sessions" in g for g in done.guard) is split
    # with one job, the last data item is told by the next item's start (here: a sequence's)
    assert seen == {t: recorded[t] for t in TABLES}
    assert seen["public.orders"] == 3000 and seen["public.p2"] == 100


def test_a_table_read_early_gives_what_a_read_after_the_restore_gives(
    pg15: Cluster, dumped: Backup, chains: list[toolchain.Toolchain],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The drill's read-back with the tables read as they came in, against the read-back
    of the same copy after the restore: equal, name for name, and equal to the manifest;
    partitions are left to the end (another item's rows may be routed into them)."""
    monkeypatch.setattr(split_copy, "MIN_ROWS", 1000)
    m = dumped.manifest
    assert m is not None
    methods = {t: inventory.checksum_method(v) for t, v in m.row_checksums.items()}
    target = _new_target(pg15, f"ral_early_{dumped.path.stem[-6:]}")
    early = inventory.ReadAsLoaded(lambda: _stable(target), workers=2,
                                   checksums=True, methods=methods)
    restore_backup(RestoreRequest(dumped.path, target, no_owner=True, jobs=2, scratch=True,
                                  split=True, on_loaded=lambda e: early.loaded(e.schema, e.tag)),
                   chains=chains)
    during = early.finish()
    after = inventory.read_back(lambda: _stable(target), workers=2,
                                checksums=True, methods=methods)
    assert during == after
    assert during.checksums == m.row_checksums and during.counts == m.row_counts
    # a read that held up the restore gave way, and was read after it
    assert sorted(early.early + early.gave_way) == sorted(TABLES - {"public.p1", "public.p2"})


def test_a_read_waits_on_the_restores_lock_and_holds_its_own_only_while_it_reads(
    pg15: Cluster, dumped: Backup, chains: list[toolchain.Toolchain],
) -> None:
    """As pg_restore's `ALTER TABLE ... ADD CONSTRAINT` does, a session holds the table
    exclusively: the read waits for it. Once read, the reader holds no lock on the table
    (the next ALTER TABLE does not wait on it), and nothing deadlocks."""
    target = _new_target(pg15, f"ral_locks_{dumped.path.stem[-6:]}")
    restore_backup(RestoreRequest(dumped.path, target, no_owner=True, jobs=2, scratch=True),
                   chains=chains)
    early = inventory.ReadAsLoaded(lambda: _stable(target), workers=2,
                                   checksums=True)
    with db.connect(target) as restore_session:
        restore_session.execute("LOCK TABLE public.orders IN ACCESS EXCLUSIVE MODE")
        early.loaded("public", "orders")
        time.sleep(0.3)
        assert early.early == []  # waiting for the lock
        restore_session.commit()
    deadline = time.monotonic() + 10
    while not early.early and time.monotonic() < deadline:
        time.sleep(0.01)
    assert early.early == ["public.orders"]
    with db.connect(target, autocommit=True) as conn:
        conn.execute("SET lock_timeout TO '2s'")
        held = conn.execute(
            "SELECT count(*) FROM pg_locks l WHERE l.relation = 'public.orders'::regclass "
            "AND l.pid <> pg_backend_pid()").fetchone()
        conn.execute("ALTER TABLE public.orders ADD CONSTRAINT positive CHECK (price >= 0)")
    assert held == (0,)
    assert early.finish().counts["public.orders"] == 3000


def test_a_read_under_way_that_holds_up_the_restore_gives_way_and_is_read_after(
    pg15: Cluster,
) -> None:
    """A session of the restore that waits for a table being read early (its `ALTER TABLE`
    wants the table alone) is not kept waiting for the read: the read is cancelled within
    the watcher's interval and the table read after the restore, with the same result."""
    target = _new_target(pg15, f"ral_give_way_{id(pg15)}")
    with db.connect(target, autocommit=True) as conn:
        # about 0.5 s to read on one backend, for little to write: arrays printed to hash
        conn.execute("CREATE UNLOGGED TABLE big AS SELECT g AS a, (SELECT array_agg(x) "
                     "FROM generate_series(1, 20000) x) AS arr FROM generate_series(1, 500) g")
        inventory.stabilise_output(conn)
        expected = inventory.count_and_checksum(conn, "public", "big")

    def serial() -> psycopg.Connection[Any]:  # one slow backend, no parallel workers
        conn = _stable(target)
        conn.execute("SET max_parallel_workers_per_gather TO 0")
        conn.commit()
        return conn

    early = inventory.ReadAsLoaded(serial, workers=1, checksums=True)
    with db.connect(target, autocommit=True) as restore_session:
        restore_session.execute("SET lock_timeout TO '5s'")
        early.loaded("public", "big")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not restore_session.execute(
                "SELECT 1 FROM pg_stat_activity WHERE state = 'active' "
                "AND query LIKE 'SELECT count(*), coalesce(sum(%'").fetchall():
            time.sleep(0.005)
        t0 = time.monotonic()
        restore_session.execute("ALTER TABLE big ADD CONSTRAINT positive CHECK (a > 0)")
        waited = time.monotonic() - t0
    back = early.finish()  # the reader's threads joined: what each did is recorded
    assert early.gave_way == ["public.big"] and early.early == []
    assert waited < 0.5, waited
    assert (back.counts["public.big"], back.checksums["public.big"]) == expected
    with db.connect(pg15.url(), autocommit=True) as conn:  # its pages not left to checkpoint
        conn.execute(f'DROP DATABASE "{target.dbname}"')
