"""A PASS means the copy equals what was dumped.

One test per seeded fault of the fidelity issue, each building the faulty backup against a
real PostgreSQL 15 cluster and asserting the failing check and its message; then clean
backups of the example application at every Alembic revision, drilled with zero false alarms.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from pathlib import Path

import pytest

from backup_core.ops.backup import create_backup
from backup_core.store import catalog
from backup_core.store.manifest import read_manifest, write_manifest
from backup_core.store.naming import manifest_path
from backup_core.tools import db
from backup_core.tools.cluster import Cluster
from backup_core.tools.conninfo import ConnInfo
from drills.demo import example_dir, load_datagen
from tests.conftest import make_database
from tests.helpers import atb, atb_inproc, checks, copy_backup, drill

EXAMPLE = example_dir()
INTEGRATION = f"{sys.executable} -m pytest -q -p no:cacheprovider {EXAMPLE / 'tests'}"


def rewrite_as_if_dumped(path: Path, data: bytes) -> None:
    """Replace a dump's bytes and make its manifest agree: damage that happened before the
    bytes were hashed (a bug, bad memory), which no checksum of the file can catch."""
    path.write_bytes(data)
    m = read_manifest(manifest_path(path))
    from dataclasses import replace
    write_manifest(manifest_path(path), replace(
        m, size_bytes=len(data), sha256=hashlib.sha256(data).hexdigest()))


def single(info: ConnInfo, tmp_path: Path) -> Path:
    return create_backup(info, tmp_path / "backups").path


def outcome(result: dict, name: str) -> dict:
    return next(c for c in result["checks"] if c["name"] == name)


# 1. a column's definition changes inside the uncompressed TOC ------------------------------

def test_a_column_type_damaged_in_the_toc_fails_on_content_and_definition(
    pg15: Cluster, tmp_path: Path
) -> None:
    info = make_database(pg15, rows=300)
    with db.connect(info, autocommit=True) as conn:
        conn.execute("DROP VIEW big_orders")
        conn.execute("ALTER TABLE orders ALTER COLUMN price TYPE numeric(20,8)")
        conn.execute("UPDATE orders SET price = price + 0.12345678")
    path = single(info, tmp_path)
    data = path.read_bytes()
    assert data.count(b"numeric(20,8)") == 1  # the TOC is plain text
    rewrite_as_if_dumped(path, data.replace(b"numeric(20,8)", b"numeric(20,0)"))
    done, result = drill("--backup", str(path), "--schedule", "1d", backup_dir=tmp_path / "x",
                         report_dir=tmp_path / "r")
    assert done.returncode == 1 and result["verdict"] == "FAIL"
    content = outcome(result, "test_every_table_has_its_backup_time_content")
    assert content["outcome"] == "failed" and "public.orders" in content["message"]
    counts = outcome(result, "test_every_table_has_its_backup_time_row_count")
    assert counts["outcome"] == "passed"  # the counts alone would have passed it
    definition = outcome(result, "test_every_object_has_its_backup_time_definition")
    assert definition["outcome"] == "failed"
    assert "column public.orders.price: recorded 'numeric(20,8) not null', restored " \
           "'numeric(20,0) not null'" in definition["message"]


# 2. an extension version differs -----------------------------------------------------------

def test_an_extension_restored_at_another_version_is_named(pg15: Cluster,
                                                           tmp_path: Path) -> None:
    info = make_database(pg15, rows=10)
    with db.connect(info, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION pg_trgm VERSION '1.5'")
    _done, result = drill("--backup", str(single(info, tmp_path)), "--schedule", "1d",
                         backup_dir=tmp_path / "x", report_dir=tmp_path / "r")
    definition = outcome(result, "test_every_object_has_its_backup_time_definition")
    assert definition["outcome"] == "failed"
    assert "extension pg_trgm: recorded 'version 1.5', restored 'version 1.6'" \
        in definition["message"]


# 3. roles travel: the drill restores as the runbook does -----------------------------------

def test_grants_to_production_only_roles_restore_in_the_drill_and_with_roles(
    pg15: Cluster, pg18: Cluster, tmp_path: Path
) -> None:
    info = make_database(pg15, rows=20)
    with db.connect(pg15.url(), autocommit=True) as conn:
        conn.execute("DROP ROLE IF EXISTS fid_reporting")
        conn.execute("DROP ROLE IF EXISTS fid_owner")
        conn.execute("CREATE ROLE fid_owner NOLOGIN")
        conn.execute("CREATE ROLE fid_reporting LOGIN CONNECTION LIMIT 3 IN ROLE fid_owner")
    with db.connect(info, autocommit=True) as conn:
        conn.execute("ALTER TABLE accounts OWNER TO fid_owner")
        conn.execute("GRANT SELECT ON orders TO fid_reporting")
    path = single(info, tmp_path)
    roles_sql = path.with_name(path.name.replace(".dump", ".roles.sql")).read_text()
    assert "CREATE ROLE fid_reporting" in roles_sql and "PASSWORD" not in roles_sql
    _done, result = drill("--backup", str(path), "--schedule", "1d", backup_dir=tmp_path / "x",
                         report_dir=tmp_path / "r")
    assert outcome(result, "test_restore_completes_without_errors")["outcome"] == "passed"
    restored = outcome(result, "test_restore_completes_without_errors")["evidence"]
    assert any("the backup's roles first, then owners and grants" in e for e in restored)
    assert any(re.fullmatch(r"\d of 4 tables read back as their data came in, while the "
                            r"restore went on( \(\d gave way to the restore\))?; the rest "
                            r"and the catalogs after it", e) for e in restored), restored
    definition = outcome(result, "test_every_object_has_its_backup_time_definition")
    assert definition["outcome"] == "passed"
    compared = definition["evidence"][0].split("(", 1)[1].split(")", 1)[0].split(", ")
    assert {"owner", "privileges"} <= set(compared), definition["evidence"]
    # the runbook onto a new server (PostgreSQL 18, where neither role exists)
    target = pg18.url("fid_copy")
    plain = atb_inproc("db", "restore", str(path), env={"ATB_TARGET_URL": target.secret_url})
    assert plain.returncode == 5 and "--with-roles" in plain.stderr
    with_roles = atb_inproc("db", "restore", str(path), "--with-roles", "--json",
                     env={"ATB_TARGET_URL": target.secret_url})
    assert with_roles.returncode == 0, with_roles.stderr
    assert any("created the backup's roles" in g for g in json.loads(with_roles.stdout)["guard"])
    with db.connect(target) as conn:
        assert conn.execute("SELECT tableowner FROM pg_tables WHERE tablename = 'accounts'"
                            ).fetchone() == ("fid_owner",)
        assert conn.execute("SELECT has_table_privilege('fid_reporting', 'public.orders', "
                            "'SELECT')").fetchone() == (True,)
        assert conn.execute("SELECT rolconnlimit FROM pg_roles WHERE rolname = "
                            "'fid_reporting'").fetchone() == (3,)


# 4. honest RTO and RPO ------------------------------------------------------------------------

def test_a_failed_drill_has_no_rto_and_one_backup_is_judged_on_its_schedule(
    pg15: Cluster, tmp_path: Path,
) -> None:
    info = make_database(pg15, rows=10)
    with db.connect(info, autocommit=True) as conn:
        conn.execute("INSERT INTO system_events(type, message) VALUES ('TEST', 'Heartbeat')")
    path = single(info, tmp_path)
    _done, result = drill("--backup", str(path), "--schedule", "1d", backup_dir=tmp_path / "x",
                          report_dir=tmp_path / "r")
    # a daily schedule cannot meet a 15-minute RPO, with one backup as with any number
    assert result["rpo"]["met"] is False
    assert result["rpo"]["summary"] == (
        "target 15m 00s; worst case data loss 1d 00h 00m (from the schedule, every 1d 00h 00m: "
        "1 complete backup, no gap observed yet): NOT MET")
    assert "test_schedule_meets_the_rpo_target" not in result["not_run"]
    assert result["verdict"] == "INCOMPLETE" and result["rto"]["met"] is True
    broken = copy_backup(path, tmp_path / "broken")
    data = bytearray(broken.read_bytes())
    data[len(data) // 2] ^= 0xFF
    broken.write_bytes(bytes(data))
    _done, result = drill("--backup", str(broken), backup_dir=tmp_path / "broken",
                         report_dir=tmp_path / "r")
    assert result["verdict"] == "FAIL"
    assert result["rto"]["measured_s"] is None and result["rto"]["met"] is None
    assert result["rto"]["failed_at"] == "fetch/verify"
    md = Path(result["reports"]["md"]).read_text()
    assert "not measured: the recovery failed at fetch/verify" in md
    index = (tmp_path / "r" / "index.html").read_text()
    assert "1 failed recovery not plotted" in index


# 5. a skipped or deselected check is not a pass ------------------------------------------

def test_a_misspelt_heartbeat_table_makes_the_drill_incomplete_not_passed(
    history: tuple[ConnInfo, Path], tmp_path: Path
) -> None:
    _source, backup_dir = history
    newest = next(b for b in catalog.scan(backup_dir) if b.complete).path
    done, result = drill("--backup", str(newest), "--schedule", "1d",
                         "--heartbeat-table", "system_event",  # the real one is system_events
                         "--alembic-config", str(EXAMPLE / "alembic.ini"),
                         "--integration-cmd", INTEGRATION, backup_dir=backup_dir,
                         report_dir=tmp_path / "r")
    assert done.returncode == 10, done.stderr
    assert result["verdict"] == "INCOMPLETE"
    assert "system_event" in result["not_run"]["test_heartbeat_is_fresh_at_backup_time"]
    # a migration ran: pg_amcheck judged the migrated copy, after it, not the one read back
    [amchecked] = outcome(result, "test_amcheck_finds_no_corruption")["evidence"]
    assert amchecked.startswith("pg_amcheck ") and amchecked.endswith(
        ": exit 0; the restored schemas' tables, indexes and TOAST and the large objects, not "
        "the sandbox's other system catalogs"), amchecked
    # and the copy's facts read afresh after it, not those of the copy read back before it
    [keys] = outcome(result, "test_foreign_keys_hold_for_every_row")["evidence"]
    assert keys.endswith(" checked row by row (after the migration)"), keys
    record = next(b for b in catalog.scan(backup_dir) if b.path == newest)
    assert record.drill is not None and not record.drill.passed
    assert record.checked == "drill-incomplete"
    listed = json.loads(atb_inproc("db", "list", "--json", "--backup-dir", str(backup_dir)).stdout)
    assert next(r for r in listed if r["path"] == str(newest))["checked"] == "drill-incomplete"


def test_deselecting_a_builtin_check_with_k_makes_the_drill_incomplete(
    pytester: pytest.Pytester, history: tuple[ConnInfo, Path], tmp_path: Path
) -> None:
    _source, backup_dir = history
    newest = next(b for b in catalog.scan(backup_dir) if b.complete).path
    result = pytester.runpytest_subprocess(
        "--backup", str(newest), "--sandbox", "local", "--schedule", "1d",
        "--alembic-config", str(EXAMPLE / "alembic.ini"), "--integration-cmd", INTEGRATION,
        "--report-dir", str(tmp_path / "reports"), "-p", "no:cacheprovider", "--no-record",
        "-k", "not sequences")
    result.stdout.fnmatch_lines(["*restore drill verdict: INCOMPLETE*",
                                 "To make the next drill complete:",
                                 "  - run without deselecting "
                                 "test_sequences_are_ahead_of_their_columns (pytest -k or "
                                 "--deselect)"])
    assert result.ret == 10
    [report] = (tmp_path / "reports").rglob("*-drill.json")
    not_run = json.loads(report.read_text())["not_run"]
    assert list(not_run) == ["test_sequences_are_ahead_of_their_columns"]
    assert "deselected" in not_run["test_sequences_are_ahead_of_their_columns"]


# 6. --backup without --backup-dir judges the tree that holds it --------------------------

def test_backup_without_backup_dir_judges_the_schedule_on_its_own_tree(
    history: tuple[ConnInfo, Path], tmp_path: Path
) -> None:
    _source, backup_dir = history
    newest = next(b for b in catalog.scan(backup_dir) if b.complete).path
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    done = atb("drill", "run", "--json", "--sandbox", "local", "--backup", str(newest),
               "--no-record", "--schedule", "1d", "--report-dir", str(tmp_path / "r"),
               cwd=elsewhere, env={"BACKUP_DIR": ""})
    result = json.loads(done.stdout)
    schedule = outcome(result, "test_backups_keep_to_the_schedule")
    assert schedule["outcome"] == "passed", schedule["message"]
    made = len([b for b in catalog.scan(backup_dir) if b.complete])
    assert schedule["evidence"][0].startswith(f"{made} complete backups")


# 7. conditions production already had are findings ----------------------------------------

def test_a_sequence_behind_in_production_is_a_finding_not_a_restore_failure(
    pg15: Cluster, tmp_path: Path
) -> None:
    info = make_database(pg15, rows=10)
    with db.connect(info, autocommit=True) as conn:  # the app inserts explicit ids
        conn.execute("INSERT INTO accounts(id, name) VALUES (500, 'explicit id')")
    path = single(info, tmp_path)
    assert read_manifest(manifest_path(path)).conditions["sequences_behind"]
    _done, result = drill("--backup", str(path), "--schedule", "1d", backup_dir=tmp_path / "x",
                          report_dir=tmp_path / "r")
    sequences = outcome(result, "test_sequences_are_ahead_of_their_columns")
    assert sequences["outcome"] == "finding"
    assert any("present in production at backup time" in f and "accounts_id_seq" in f
               for f in result["findings"])
    # the same copy, had production been sound, is a restore defect
    clean = copy_backup(path, tmp_path / "clean")
    m = read_manifest(manifest_path(clean))
    from dataclasses import replace
    write_manifest(manifest_path(clean), replace(m, conditions={**m.conditions,
                                                                "sequences_behind": []}))
    _done, result = drill("--backup", str(clean), "--schedule", "1d",
                         backup_dir=tmp_path / "clean", report_dir=tmp_path / "r")
    failed = outcome(result, "test_sequences_are_ahead_of_their_columns")
    assert failed["outcome"] == "failed" and "accounts_id_seq" in failed["message"]


# 8. a damaged data block names its table ---------------------------------------------------

def test_a_damaged_data_block_names_the_table(pg15: Cluster, tmp_path: Path) -> None:
    info = make_database(pg15, rows=10)
    with db.connect(info, autocommit=True) as conn:
        conn.execute("CREATE TABLE ledger AS SELECT g AS id, md5(g::text) AS memo "
                     "FROM generate_series(1, 60000) g")
    path = single(info, tmp_path)
    data = bytearray(path.read_bytes())
    middle = len(data) // 2  # well inside ledger's data, the archive's bulk
    data[middle:middle + 32] = bytes(b ^ 0xFF for b in data[middle:middle + 32])
    rewrite_as_if_dumped(path, bytes(data))
    _done, result = drill("--backup", str(path), "--schedule", "1d", backup_dir=tmp_path / "x",
                         report_dir=tmp_path / "r")
    restore = outcome(result, "test_restore_completes_without_errors")
    assert restore["outcome"] == "failed"
    assert "ledger" in restore["message"], restore["message"]
    target = info.with_dbname(info.dbname + "_copy")
    runbook = atb_inproc("db", "restore", str(path), env={"ATB_TARGET_URL": target.secret_url})
    assert runbook.returncode == 5 and "ledger" in runbook.stderr, runbook.stderr


# clean backups, every revision: zero false alarms ------------------------------------------

def test_clean_backups_at_every_revision_pass_with_no_false_alarm(
    history: tuple[ConnInfo, Path], tmp_path: Path
) -> None:
    _source, backup_dir = history
    by_revision: dict[str, Path] = {}
    for b in catalog.scan(backup_dir):
        if b.complete and b.alembic_revision:
            by_revision.setdefault(b.alembic_revision, b.path)
    assert sorted(by_revision) == sorted(load_datagen().REVISIONS)
    for revision, path in sorted(by_revision.items()):
        _done, result = drill("--backup", str(path), "--schedule", "1d", "--no-record",
                             "--alembic-config", str(EXAMPLE / "alembic.ini"),
                             "--integration-cmd", INTEGRATION, backup_dir=backup_dir,
                             report_dir=tmp_path / "r", env={"PATH": os.environ["PATH"]})
        assert result["verdict"] == "PASS", (revision, {
            c["name"]: c["message"][:300] for c in result["checks"]
            if c["outcome"] not in ("passed", "finding")}, result["not_run"])
        assert checks(result)["test_every_table_has_its_backup_time_content"] == "passed"
        assert checks(result)["test_every_object_has_its_backup_time_definition"] == "passed"


def test_excluded_checks_are_recorded_and_evidence_reaches_junit_xml(
    pytester: pytest.Pytester, history: tuple[ConnInfo, Path], tmp_path: Path
) -> None:
    _, backup_dir = history
    newest = next(b for b in catalog.scan(backup_dir) if b.complete).path
    junit = tmp_path / "junit.xml"
    result = pytester.runpytest_subprocess(
        "--backup", str(newest), "--sandbox", "local", "--schedule", "1d", "--no-record",
        "--alembic-config", str(EXAMPLE / "alembic.ini"), "--integration-cmd", INTEGRATION,
        "--report-dir", str(tmp_path / "reports"), "-p", "no:cacheprovider",
        "--drill-exclude", "amcheck_finds_no_corruption", f"--junitxml={junit}")
    assert result.ret == 10
    [report] = (tmp_path / "reports").rglob("*-drill.json")
    assert json.loads(report.read_text())["not_run"] == {
        "test_amcheck_finds_no_corruption": "excluded with --drill-exclude"}
    xml = junit.read_text()
    assert '<property name="check" value="Every table has its backup time content"' in xml
    assert '<property name="evidence" value="' in xml and "content checksums compared" in xml
    unknown = pytester.runpytest_subprocess("--backup", str(newest), "--drill-exclude",
                                            "no_such_check", "-p", "no:cacheprovider")
    assert unknown.ret == pytest.ExitCode.USAGE_ERROR
    unknown.stderr.fnmatch_lines(["*--drill-exclude names no built-in check: test_no_such*"])
    assert not (pytester.path / "reports").exists()  # a mistyped option writes no report


USER_CHECK = '''
import pytest
from sqlalchemy import text

pytestmark = pytest.mark.drill


def test_every_heartbeat_has_a_type(drill_engine):
    """A heartbeat without a type is invisible to monitoring."""
    with drill_engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM system_events WHERE type IS NULL")
                            ).scalar() == 0
'''


def test_users_own_checks_run_beside_the_builtins_and_decide_the_verdict(
    pytester: pytest.Pytester, history: tuple[ConnInfo, Path], tmp_path: Path
) -> None:
    _, backup_dir = history
    newest = next(b for b in catalog.scan(backup_dir) if b.complete).path
    checks_dir = pytester.path / "tests" / "drill"
    checks_dir.mkdir(parents=True)
    (checks_dir / "test_custom.py").write_text(USER_CHECK)
    (pytester.path / "tests" / "test_unmarked.py").write_text(
        "def test_ordinary_unit_test():\n    assert False, 'not a drill check'\n")
    result = pytester.runpytest_subprocess(
        "--backup", str(newest), "--sandbox", "local", "--schedule", "1d", "--no-record",
        "--report-dir", str(tmp_path / "reports"), "-p", "no:cacheprovider", "tests")
    assert "test_ordinary_unit_test" not in result.stdout.str()
    [report] = (tmp_path / "reports").rglob("*-drill.json")
    custom = next(c for c in json.loads(report.read_text())["checks"]
                  if c["name"] == "test_every_heartbeat_has_a_type")
    assert custom["outcome"] == "passed"
    assert custom["why"] == "A heartbeat without a type is invisible to monitoring."
    failing = tmp_path / "failing_check.py"
    failing.write_text(USER_CHECK.replace("== 0", "== -1"))
    done, drilled = drill("--backup", str(newest), "--schedule", "1d", "--no-record",
                          "--checks", str(failing), backup_dir=backup_dir,
                          report_dir=tmp_path / "r2")
    assert done.returncode == 1 and drilled["verdict"] == "FAIL"
    assert outcome(drilled, "test_every_heartbeat_has_a_type")["outcome"] == "failed"
