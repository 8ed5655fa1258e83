"""Speed features against real servers: the backup's compression, chosen and recorded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from backup_core.store.manifest import read_manifest
from backup_core.store.naming import manifest_path
from backup_core.store.verdicts import DrillVerdict, record_drill
from backup_core.tools.cluster import Cluster
from backup_core.tools.conninfo import ConnInfo
from tests.conftest import make_database
from tests.helpers import atb_inproc, drill


@pytest.fixture(scope="module")
def small18(pg18: Cluster) -> ConnInfo:
    return make_database(pg18, rows=20_000)


def test_default_backup_is_gzip_level_1_recorded_in_the_manifest_and_env_overrides_it(
        small18: ConnInfo, backup_dir: Path) -> None:
    """The wheel's pg_dump has gzip only: the default is level 1; ATB_COMPRESS=none (the
    env spelling of --compress) writes an archive that is larger, and says so."""
    fast = atb_inproc("db", "backup", "--json", "--at", "20261101T120000Z",
                      env={"BACKUP_DIR": str(backup_dir)}, url=small18)
    assert fast.returncode == 0, fast.stderr
    plain = atb_inproc("db", "backup", "--json", "--at", "20261101T130000Z",
                       env={"BACKUP_DIR": str(backup_dir), "ATB_COMPRESS": "none"},
                       url=small18)
    assert plain.returncode == 0, plain.stderr
    gz = read_manifest(manifest_path(Path(json.loads(fast.stdout)["path"])))
    raw = read_manifest(manifest_path(Path(json.loads(plain.stdout)["path"])))
    assert (gz.compression, raw.compression) == ("gzip:1", "none")
    assert raw.size_bytes > 1.5 * gz.size_bytes


def test_a_compression_this_pg_dump_cannot_write_is_refused_before_any_work(
        small18: ConnInfo, backup_dir: Path) -> None:
    done = atb_inproc("db", "backup", "--compress", "zstd:3",
                      env={"BACKUP_DIR": str(backup_dir)}, url=small18)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith(
        "atb: error: pg_dump 18.6 (") and "is built without zstd" in done.stderr
    assert not list(backup_dir.rglob("*.dump*"))
    bad = atb_inproc("db", "backup", "--compress", "gzip:11",
                     env={"BACKUP_DIR": str(backup_dir)}, url=small18)
    assert (bad.returncode, bad.stderr.strip()) == (
        2, "atb: error: --compress gzip takes a level from 1 to 9, not 11")


FSYNC_CHECK = '''
import pytest
from sqlalchemy import text

pytestmark = pytest.mark.drill


def test_the_sandbox_runs_with_the_servers_defaults(drill_engine):
    """--rto-faithful: the RTO is measured as a durable server restores."""
    with drill_engine.connect() as conn:
        got = [conn.execute(text(f"SHOW {name}")).scalar()
               for name in ("fsync", "full_page_writes", "wal_level")]
    assert got == ["on", "on", "replica"]
'''


def test_rto_faithful_drill_states_its_settings_and_the_forecast_of_earlier_drills(
        small18: ConnInfo, tmp_path: Path) -> None:
    """A drill with --rto-faithful runs on a sandbox with durable defaults (a check of ours
    reads them there), says so beside the RTO, and shows what the drill recorded earlier
    beside this backup forecast for it."""
    backups = tmp_path / "b"
    done = atb_inproc("db", "backup", env={"BACKUP_DIR": str(backups)}, url=small18)
    assert done.returncode == 0, done.stderr
    [dump] = backups.rglob("*.dump")
    record_drill(dump, DrillVerdict(passed=True, at="2026-11-28T00:00:00+00:00", rto_s=4.0,
                                    verdict="PASS"))
    (tmp_path / "checks").mkdir()
    (tmp_path / "checks" / "test_faithful.py").write_text(FSYNC_CHECK)
    done, result = drill("--backup", str(dump), "--rto-faithful", "--no-record",
                         "--checks", str(tmp_path / "checks"), "--schedule", "1d",
                         backup_dir=backups, report_dir=tmp_path / "r")
    assert outcome(result, "test_the_sandbox_runs_with_the_servers_defaults") == "passed"
    restored = next(c for c in result["checks"]
                    if c["name"] == "test_restore_completes_without_errors")["evidence"]
    assert "every table and the catalogs read back after the restore (--rto-faithful)" \
        in restored
    rto = result["rto"]
    assert rto["settings"] == "the server's defaults (--rto-faithful)"
    assert (rto["forecast_s"], rto["forecast_how"]) == (
        4.0, "proportional to archive size, from 1 drill")
    md = Path(result["reports"]["md"]).read_text()
    assert "forecast 4.0s (proportional to archive size, from 1 drill); sandbox settings: " \
           "the server's defaults (--rto-faithful)" in md


def outcome(result: dict, name: str) -> str:
    return str(next(c for c in result["checks"] if c["name"] == name)["outcome"])
