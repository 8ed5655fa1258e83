"""`atb db backup` against real servers: content, consistency, atomicity, safety."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from backup_core.ops import backup
from backup_core.ops.verify import sha256_file
from backup_core.reading import inventory
from backup_core.store import catalog
from backup_core.store.manifest import read_manifest
from backup_core.store.naming import manifest_path
from backup_core.tools import db, toolchain
from backup_core.tools.cluster import Cluster
from backup_core.tools.errors import ToolchainError
from backup_core.tools.locking import DatabaseLock
from tests.conftest import make_database
from tests.helpers import atb, atb_inproc


def test_pg15_server_is_dumped_by_pg_dump_15_with_a_complete_manifest(
    pg15: Cluster, backup_dir: Path, chains: list[toolchain.Toolchain]
) -> None:
    info = make_database(pg15, rows=500)
    done = atb_inproc("db", "backup", "--json", "--at", "20261101T120000Z",
               env={"BACKUP_DIR": str(backup_dir)}, url=info)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    path = Path(result["path"])
    assert path == backup_dir / info.dbname / "2026/11/01/backup-20261101T120000Z.dump"
    m = read_manifest(manifest_path(path))
    assert m.pg_dump_version.startswith("15.") and m.server_version.startswith("15.")
    assert (m.size_bytes, m.sha256) == sha256_file(path)
    assert m.row_counts == {"public.accounts": 10, "public.alembic_version": 1,
                            "public.orders": 500, "public.system_events": 0}
    assert m.alembic_revision == "0001_initial"
    inv = m.inventory["public"]
    assert inv["views"] == ["big_orders"]
    assert "orders_account_idx" in inv["indexes"]
    assert "order_count()" in inv["functions"]
    assert "orders.orders_account_id_fkey" in inv["constraints"]
    assert m.toc_entries > 10
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(manifest_path(path).stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert info.password not in manifest_path(path).read_text()


def test_pg18_server_with_only_pg_dump_15_fails_naming_both_versions(
    pg18: Cluster, backup_dir: Path, chain15: toolchain.Toolchain
) -> None:
    info = make_database(pg18, rows=10)
    only15 = [chain15]
    with pytest.raises(ToolchainError) as err:
        backup.create_backup(info, backup_dir, chains=only15)
    assert "PostgreSQL 18" in str(err.value) and "pg_dump here is 15" in str(err.value)
    assert not list(backup_dir.rglob("*.dump*"))


def test_row_counts_are_taken_in_the_dumps_snapshot_while_writes_continue(
    pg15: Cluster, backup_dir: Path, chains: list[toolchain.Toolchain]
) -> None:
    info = make_database(pg15, rows=200_000)
    stop = threading.Event()
    inserted = 0

    def writer() -> None:
        nonlocal inserted
        with db.connect(info, autocommit=True) as conn:
            while not stop.is_set():
                conn.execute("INSERT INTO orders(account_id, price) VALUES (1, 1)")
                inserted += 1

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        time.sleep(0.2)
        result = backup.create_backup(info, backup_dir, chains=chains)
        time.sleep(0.2)
    finally:
        stop.set()
        thread.join()
    assert inserted > 0
    target = make_database(pg15, rows=0)
    with db.connect(target, autocommit=True) as conn:
        conn.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
    from backup_core.ops.restore import RestoreRequest, restore_backup

    restore_backup(RestoreRequest(result.path, target, clean=True), chains=chains)
    with db.connect(target) as conn:
        restored = inventory.count_rows(conn, "public", "orders")
    with db.connect(info) as conn:
        live = inventory.count_rows(conn, "public", "orders")
    assert result.manifest.row_counts["public.orders"] == restored
    assert live > restored, "writes after the snapshot must not be in the dump"


def test_estimate_and_off_row_count_modes(pg15: Cluster, backup_dir: Path,
                                          chains: list[toolchain.Toolchain]) -> None:
    info = make_database(pg15, rows=100)
    with db.connect(info, autocommit=True) as conn:
        conn.execute("ANALYZE")
    est = backup.create_backup(info, backup_dir, row_counts="estimate", chains=chains,
                               at=backup.datetime(2026, 1, 1, tzinfo=backup.UTC))
    off = backup.create_backup(info, backup_dir, row_counts="off", chains=chains)
    assert est.manifest.row_counts_mode == "estimate"
    assert est.manifest.row_counts["public.orders"] == 100
    assert off.manifest.row_counts == {} and off.manifest.inventory


def test_kill_9_mid_backup_leaves_no_backup_and_keeps_existing_ones(
    pg15: Cluster, backup_dir: Path
) -> None:
    info = make_database(pg15, rows=10)
    with db.connect(info, autocommit=True) as conn:
        conn.execute("CREATE TABLE blob AS SELECT g, repeat(md5(g::text), 40) AS pad "
                     "FROM generate_series(1, 300000) g")
    first = atb_inproc("db", "backup", "--at", "20261120T000000Z",
                       env={"BACKUP_DIR": str(backup_dir)}, url=info)
    assert first.returncode == 0, first.stderr
    old = next(backup_dir.rglob("*.dump"))
    old_hash = sha256_file(old)
    env = {**os.environ, "DATABASE_URL": info.secret_url, "BACKUP_DIR": str(backup_dir)}
    proc = subprocess.Popen([sys.executable, "-m", "drills.cli", "db", "backup"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    partial: list[Path] = []
    while time.monotonic() < deadline and not partial:
        partial = [p for p in backup_dir.rglob(".*partial*") if p.stat().st_size > 0]
        time.sleep(0.01)
    assert partial, "the backup never started writing"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    items = catalog.scan(backup_dir)
    assert [b.path for b in items if b.complete] == [old]
    assert any(b.state == catalog.PARTIAL for b in items)
    assert sha256_file(old) == old_hash
    listing = atb_inproc("db", "list", "--json", env={"BACKUP_DIR": str(backup_dir)})
    states = {Path(r["path"]).name: r["state"] for r in json.loads(listing.stdout)}
    assert states[old.name] == "complete"
    assert "partial" in states.values()
    # the lock died with the process: prune clears the abandoned partial, keeps the backup
    pruned = atb_inproc("db", "prune", "--json", env={"BACKUP_DIR": str(backup_dir)})
    assert pruned.returncode == 0, pruned.stderr
    assert not list(backup_dir.rglob(".*partial*"))
    assert [b.path for b in catalog.scan(backup_dir) if b.complete] == [old]
    assert sha256_file(old) == old_hash


def test_a_failing_pg_dump_leaves_no_file(pg15: Cluster, backup_dir: Path) -> None:
    info = make_database(pg15, rows=10)
    with db.connect(info, autocommit=True) as conn:
        conn.execute("CREATE ROLE limited LOGIN PASSWORD 'limited-secret'")
        conn.execute("GRANT SELECT ON orders, accounts, alembic_version TO limited")

    limited = info.with_params(user="limited").with_password("limited-secret")
    env = {"BACKUP_DIR": str(backup_dir)}
    done = atb_inproc("db", "backup", "--row-counts", "off", env=env, url=limited)
    assert done.returncode == 5, done.stderr
    assert done.stderr.count("\n") == 1 and "pg_dump failed" in done.stderr
    assert "permission denied for table system_events" in done.stderr
    # reading the tables ourselves meets the missing privilege first: its cause is named
    counted = atb_inproc("db", "backup", env=env, url=limited)
    assert counted.returncode == 5 and counted.stderr.count("\n") == 1
    assert "permission denied for" in counted.stderr
    assert "needs SELECT on every table and sequence" in counted.stderr
    for out in (done, counted):
        assert "limited-secret" not in out.stderr + out.stdout
    assert not [p for p in backup_dir.rglob("*") if p.is_file() and p.name != ".lock"]


def test_a_second_concurrent_run_exits_6_or_waits_with_wait(pg15: Cluster,
                                                            backup_dir: Path) -> None:
    info = make_database(pg15, rows=10)
    env = {"BACKUP_DIR": str(backup_dir)}
    with DatabaseLock(backup.lock_path(backup_dir, info.dbname)):
        busy = atb("db", "backup", env=env, url=info)
        assert busy.returncode == 6
        assert "another backup of this database is running" in busy.stderr
        assert "--wait" in busy.stderr
        waiting = subprocess.Popen(
            [sys.executable, "-m", "drills.cli", "db", "backup", "--wait"],
            env={**os.environ, **env, "DATABASE_URL": info.secret_url},
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(1.5)
        assert waiting.poll() is None, "--wait must block while the lock is held"
    _out, err = waiting.communicate(timeout=120)
    assert waiting.returncode == 0, err
    assert len([b for b in catalog.scan(backup_dir) if b.complete]) == 1


def test_database_names_are_sanitised_into_one_path_component(
    pg15: Cluster, backup_dir: Path, chains: list[toolchain.Toolchain]
) -> None:
    with db.connect(pg15.url(), autocommit=True) as conn:
        conn.execute('CREATE DATABASE "../evil/db"')
    result = backup.create_backup(pg15.url("../evil/db"), backup_dir, chains=chains)
    assert result.path.is_relative_to(backup_dir)
    assert result.path.relative_to(backup_dir).parts[0] == "%2E.%2Fevil%2Fdb"
