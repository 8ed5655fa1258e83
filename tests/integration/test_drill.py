"""The restore drill end to end against real clusters: verdicts, reports, safety, teardown."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from backup_core.reading import inventory
from backup_core.store import catalog
from backup_core.store.manifest import read_manifest, write_manifest
from backup_core.store.naming import manifest_path
from backup_core.tools import db
from backup_core.tools.cluster import Cluster
from backup_core.tools.conninfo import ConnInfo
from drills import pick
from drills.demo import example_dir
from drills.options import DrillOptions
from drills.plugin import hooks
from tests.helpers import atb_inproc, checks, copy_backup, drill, oldest

EXAMPLE = example_dir()
# the checks that cannot run without --alembic-config and --integration-cmd
NOT_CONFIGURED = {"test_revision_before_upgrade_matches_the_backup",
                  "test_alembic_upgrade_head_reaches_the_script_head",
                  "test_application_integration_suite_passes"}
INTEGRATION = f"{sys.executable} -m pytest -q -p no:cacheprovider {EXAMPLE / 'tests'}"


def test_a_passing_drill_migrates_an_old_backup_and_reports_it(
    history: tuple[ConnInfo, Path], tmp_path: Path, sandbox_tmp: Path
) -> None:
    source, backup_dir = history
    old = oldest(backup_dir)
    with db.connect(source) as conn:
        before_counts = inventory.count_rows(conn, "public", "orders")
        before_rev = inventory.alembic_revision(conn)
        beats = conn.execute("SELECT count(*) FROM system_events").fetchone()
    started = time.monotonic()
    done, result = drill("--backup", str(old), "--schedule", "1d",
                         "--alembic-config", str(EXAMPLE / "alembic.ini"),
                         "--integration-cmd", INTEGRATION, backup_dir=backup_dir,
                         report_dir=tmp_path / "reports", url=source,
                         env={"TMPDIR": str(sandbox_tmp)})
    took = time.monotonic() - started
    assert done.returncode == 0, done.stdout + done.stderr
    assert result["verdict"] == "PASS"
    outcomes = checks(result)
    assert outcomes["test_schedule_meets_the_rpo_target"] == "finding"
    assert all(v == "passed" for k, v in outcomes.items()
               if k != "test_schedule_meets_the_rpo_target"), outcomes
    assert result["alembic"]["before"] == "0001_initial"
    assert result["alembic"]["after"] == "0005_rename_balance_equity"
    assert result["sandbox"]["server_version"].startswith("15.")
    assert 0 < result["rto"]["measured_s"] < 600
    # phases that overlap (ANALYZE beside the read-back) are counted once: the recovery's
    # path is never longer than the whole run
    assert result["rto"]["measured_s"] < took
    assert result["integration"]["exit_code"] == 0
    assert len(result["integration"]["cases"]) == 5
    html = Path(result["reports"]["html"]).read_text()
    assert "Verdict: PASS" in html
    assert "0001_initial -&gt; 0005_rename_balance_equity" in html
    assert "RTO" in html and "measured, target 1h 00m: met" in html
    assert "RPO target NOT MET" in html
    assert "test_positions_equal_the_sum_of_trades" in html
    assert source.password not in html
    md = Path(result["reports"]["md"]).read_text()
    assert "**PASS**" in md and "| Every table has its backup time row count | PASSED |" in md
    index = (tmp_path / "reports" / "index.html").read_text()
    assert "rto-trend" in index and "PASS" in index
    # production was never touched: same revision, same rows, no heartbeat inserted
    with db.connect(source) as conn:
        assert inventory.count_rows(conn, "public", "orders") == before_counts
        assert inventory.alembic_revision(conn) == before_rev
        assert conn.execute("SELECT count(*) FROM system_events").fetchone() == beats
    # the verdict is recorded beside the backup for prune and status
    listed = {r["path"]: r for r in json.loads(atb_inproc("db", "list", "--json",
                                                          "--backup-dir", str(backup_dir)).stdout)}
    assert listed[str(old)]["checked"] == "drill-passed"
    status = json.loads(atb_inproc("db", "status", "--json", "--backup-dir",
                                   str(backup_dir)).stdout)
    [record] = [b for b in catalog.scan(backup_dir) if b.path == old]
    assert record.drill is not None and record.drill.passed
    assert status[0]["last_drill_passed"] == record.drill.at  # this drill is the newest one
    # the sandbox left no directory and no server behind
    assert list(sandbox_tmp.iterdir()) == []
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert str(sandbox_tmp) not in ps


def test_a_corrupted_dump_fails_at_integrity_and_is_not_restored(
    history: tuple[ConnInfo, Path], tmp_path: Path, sandbox_tmp: Path
) -> None:
    dump = copy_backup(oldest(history[1]), tmp_path / "bk")
    data = bytearray(dump.read_bytes())
    data[len(data) // 3] ^= 0x40
    dump.write_bytes(bytes(data))
    done, result = drill("--backup", str(dump), backup_dir=tmp_path / "bk",
                         report_dir=tmp_path / "reports", env={"TMPDIR": str(sandbox_tmp)})
    assert done.returncode == 1 and result["verdict"] == "FAIL"
    outcomes = checks(result)
    assert outcomes["test_backup_integrity_matches_manifest"] == "failed"
    assert outcomes["test_sandbox_database_is_like_production"] == "skipped"
    assert outcomes["test_restore_completes_without_errors"] == "skipped"
    # the sandbox started while the backup was verified is torn down unused
    assert "sandbox teardown" in result["rto"]["other_phases"]
    assert list(sandbox_tmp.iterdir()) == []
    message = next(c["message"] for c in result["checks"]
                   if c["name"] == "test_backup_integrity_matches_manifest")
    assert "sha256" in message and "altered" in message
    html = Path(result["reports"]["html"]).read_text()
    assert "Verdict: FAIL" in html and "integrity" in html


def test_a_failing_migration_shows_the_alembic_error(history: tuple[ConnInfo, Path],
                                                     tmp_path: Path) -> None:
    broken = tmp_path / "app"
    shutil.copytree(EXAMPLE, broken, ignore=shutil.ignore_patterns("__pycache__"))
    (broken / "migrations/versions/0006_broken.py").write_text(
        '"""A migration that fails on real data."""\n'
        "from alembic import op\n\n"
        'revision = "0006_broken"\ndown_revision = "0005_rename_balance_equity"\n'
        "branch_labels = None\ndepends_on = None\n\n\n"
        "def upgrade() -> None:\n"
        '    op.execute("ALTER TABLE orders ADD CONSTRAINT tiny CHECK (quantity < 0)")\n\n\n'
        "def downgrade() -> None:\n    pass\n")
    done, result = drill("--backup", str(oldest(history[1])), "--alembic-config",
                         str(broken / "alembic.ini"), "--no-record",
                         backup_dir=history[1], report_dir=tmp_path / "reports")
    assert done.returncode == 1
    outcomes = checks(result)
    assert outcomes["test_alembic_upgrade_head_reaches_the_script_head"] == "failed"
    assert outcomes["test_sequences_are_ahead_of_their_columns"] == "skipped"
    html = Path(result["reports"]["html"]).read_text()
    assert "is violated by some row" in html and "0006_broken" in html


def test_a_row_count_mismatch_is_detected(history: tuple[ConnInfo, Path],
                                          tmp_path: Path) -> None:
    dump = copy_backup(oldest(history[1]), tmp_path / "bk")
    m = read_manifest(manifest_path(dump))
    counts = dict(m.row_counts)
    counts["public.orders"] += 1
    counts["public.ghost_table"] = 5
    write_manifest(manifest_path(dump), replace(m, row_counts=counts))
    done, result = drill("--backup", str(dump), backup_dir=tmp_path / "bk",
                         report_dir=tmp_path / "reports")
    assert done.returncode == 1
    check = next(c for c in result["checks"]
                 if c["name"] == "test_every_table_has_its_backup_time_row_count")
    assert check["outcome"] == "failed"
    assert "public.ghost_table: missing" in check["message"]
    assert f"public.orders: recorded {counts['public.orders']}, restored " \
           f"{counts['public.orders'] - 1}" in check["message"]


def test_a_failing_integration_command_fails_the_drill(history: tuple[ConnInfo, Path],
                                                       tmp_path: Path) -> None:
    cmd = f"{sys.executable} -c \"import os, sys; print(os.environ['DATABASE_URL']); sys.exit(3)\""
    done, result = drill("--backup", str(oldest(history[1])), "--integration-cmd", cmd,
                         "--no-record", backup_dir=history[1], report_dir=tmp_path / "r")
    assert done.returncode == 1
    assert checks(result)["test_application_integration_suite_passes"] == "failed"
    assert result["integration"]["exit_code"] == 3
    assert "atb_drill_" in result["integration"]["output_tail"]  # it saw the sandbox's URL


def test_an_empty_window_is_a_clear_failure(pg15: Cluster, tmp_path: Path) -> None:
    info = pg15.url("postgres")
    env = {"BACKUP_DIR": str(tmp_path / "bk")}
    long_ago = (datetime.now(UTC) - timedelta(days=200)).strftime("%Y%m%dT%H%M%SZ")
    assert atb_inproc("db", "backup", "--at", long_ago, env=env, url=info).returncode == 0
    done, result = drill(backup_dir=tmp_path / "bk", report_dir=tmp_path / "r")
    assert done.returncode == 1 and result["verdict"] == "FAIL"
    assert "no complete backup in the last 90 days" in result["backup"]["selection_error"]
    html = Path(result["reports"]["html"]).read_text()
    assert "no complete backup in the last 90 days" in html


def test_the_same_seed_picks_the_same_backup(history: tuple[ConnInfo, Path],
                                             tmp_path: Path) -> None:
    """`atb drill run` picks (`drills.child.choose`, so that the sandbox is begun for the
    backup early) the very backup the plugin picks under a direct `pytest --drill`, and the
    reports and the ledger say it was picked at random, with the seed, as before."""
    picks = set()
    tree = history[1]
    for _ in range(2):
        args = ("--seed", "424242", "--no-record", "--rto-target", "1h")
        before = datetime.now(UTC).replace(microsecond=0)
        _, result = drill(*args, backup_dir=tree, report_dir=tmp_path / "r")
        picks.add(result["backup"]["path"])
        assert result["seed"] == 424242
        # what README promises: the report's seed and start pick the drilled backup again
        # (the start `atb drill run` took, which `configure_drill` made the report's)
        started = datetime.fromisoformat(result["started_at"])
        assert before <= started <= datetime.now(UTC)
        again = pick.pick(catalog.scan(tree), now=started, window_days=90, seed=424242)
        assert str(again.path) == result["backup"]["path"]
    assert len(picks) == 1
    now = datetime.now(UTC).replace(microsecond=0)
    plugin, _, among, _ = hooks._select(DrillOptions(backup_dir=tree, seed=424242), now)
    assert plugin is not None and picks == {str(plugin.path)}  # the plugin's own pick
    words = f"random among {among} complete backups of the last 90 days (seed 424242)"
    assert result["backup"]["selection"] == words
    assert json.loads(Path(result["reports"]["json"]).read_text())["backup"]["selection"] \
        == words
    assert "given with --backup" not in Path(result["reports"]["md"]).read_text()
    records = [json.loads(line) for line in
               (tmp_path / "r" / "ledger.ndjson").read_text().splitlines()]
    assert [(r["selection"], r["seed"], r["backup"]["path"]) for r in records] == [
        (words, 424242, str(plugin.path))] * 2


def test_pytest_backup_path_verifies_one_dump_through_the_plugin(
    pytester: pytest.Pytester, history: tuple[ConnInfo, Path], tmp_path: Path
) -> None:
    pytester.makepyfile(test_unrelated="def test_not_collected_in_a_drill():\n    assert False\n")
    dump = oldest(history[1])
    result = pytester.runpytest_subprocess(
        "--backup", str(dump), "--sandbox", "local", "--no-record", "--schedule", "1d",
        "--report-dir", str(tmp_path / "reports"), "-p", "no:cacheprovider")
    outcomes = result.parseoutcomes()
    assert outcomes.get("failed", 0) == 0, result.stdout.str()
    assert outcomes["passed"] >= 10
    # no Alembic config and no integration command: those checks did not run, so no PASS
    result.stdout.fnmatch_lines(["*restore drill verdict: INCOMPLETE*"])
    assert result.ret == 10
    [report] = (tmp_path / "reports").rglob("*-drill.json")
    assert set(json.loads(report.read_text())["not_run"]) == NOT_CONFIGURED
    assert "test_not_collected_in_a_drill" not in result.stdout.str()


def test_interrupting_a_drill_tears_the_sandbox_down(history: tuple[ConnInfo, Path],
                                                     tmp_path: Path, sandbox_tmp: Path) -> None:
    slow = f"{sys.executable} -c \"import time; time.sleep(60)\""
    env = {**os.environ, "TMPDIR": str(sandbox_tmp)}
    env.pop("DATABASE_URL", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "drills.cli", "drill", "run", "--sandbox", "local", "--backup",
         str(oldest(history[1])), "--integration-cmd", slow, "--no-record",
         "--report-dir", str(tmp_path / "r")], env=env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    import time

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
        if "time.sleep(60)" in ps:
            break
        time.sleep(0.2)
    assert any(sandbox_tmp.iterdir()), "the sandbox should exist while the drill runs"
    proc.send_signal(2)
    proc.communicate(timeout=120)
    assert proc.returncode == 130
    assert list(sandbox_tmp.iterdir()) == []
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert str(sandbox_tmp) not in ps


def test_server_sandbox_restores_into_a_scratch_database_and_drops_it(
    history: tuple[ConnInfo, Path], pg15: Cluster, tmp_path: Path
) -> None:
    source, backup_dir = history
    admin = pg15.url("postgres")
    done, result = drill("--backup", str(oldest(backup_dir)), "--sandbox", "server",
                         "--no-record", "--schedule", "1d", backup_dir=backup_dir,
                         report_dir=tmp_path / "r", env={"ATB_SANDBOX_URL": admin.secret_url})
    assert done.returncode == 10, done.stdout[-2000:]
    assert result["verdict"] == "INCOMPLETE" and set(result["not_run"]) == NOT_CONFIGURED
    assert result["sandbox"]["provider"] == "server"
    assert result["sandbox"]["database"].startswith("atb_drill_")
    with db.connect(admin) as conn:
        left = conn.execute("SELECT datname FROM pg_database WHERE datname LIKE 'atb_drill_%'")
        assert left.fetchall() == []
    # the production database itself is refused as a sandbox server
    refused, result = drill("--backup", str(oldest(backup_dir)), "--sandbox", "server",
                            "--no-record", backup_dir=backup_dir, report_dir=tmp_path / "r",
                            env={"ATB_SANDBOX_URL": source.secret_url}, url=source)
    assert refused.returncode == 8, refused.stderr
    assert "the sandbox server is production's server" in refused.stderr
    assert result == {}  # refused before the drill started: no report, no scratch database
