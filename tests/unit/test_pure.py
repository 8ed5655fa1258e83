"""Toolchain choice, naming, durations, URLs, status: pure logic."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from backup_core.ops.restore import restore_argv
from backup_core.ops.status import database_status, prometheus_text
from backup_core.store.catalog import COMPLETE, Backup
from backup_core.store.naming import (
    backup_path,
    db_from_dir,
    dir_name,
    legacy_dir_name,
    parse_stamp,
    taken_at,
)
from backup_core.tools import toolchain
from backup_core.tools.conninfo import ConnInfo, redact
from backup_core.tools.durations import human, parse_duration
from backup_core.tools.errors import ConfigError, ToolchainError


def chain(major: int, source: str = "x") -> toolchain.Toolchain:
    class Fake(toolchain.Toolchain):
        def has(self, tool: str) -> bool:
            return True

    return Fake(bindir=Path(f"/pg/{major}/bin"), version=f"{major}.1", source=source)


def test_pg_dump_is_at_least_the_server_major_preferring_equal() -> None:
    chains = [chain(18), chain(15), chain(16)]
    assert toolchain.for_dump(15, chains).major == 15
    assert toolchain.for_dump(14, chains).major == 15
    assert toolchain.for_dump(17, chains).major == 18
    with pytest.raises(ToolchainError, match="PostgreSQL 19 but the newest pg_dump here is 18"):
        toolchain.for_dump(19, chains)


def test_restore_and_sandbox_majors() -> None:
    chains = [chain(18), chain(15)]
    assert toolchain.for_restore(15, chains).major == 15
    assert toolchain.for_restore(16, chains).major == 18
    assert toolchain.for_server(15, chains).major == 15
    with pytest.raises(ToolchainError):
        toolchain.for_restore(19, [chain(15)])


def test_discovery_order_and_versions(tmp_path: Path) -> None:
    def fake(name: str, version: str) -> Path:
        d = tmp_path / name
        d.mkdir()
        exe = d / "pg_dump"
        exe.write_text(f"#!/bin/sh\necho 'pg_dump (PostgreSQL) {version}'\n")
        exe.chmod(0o755)
        return d

    pinned = fake("pinned", "16.4")
    on_path = fake("onpath", "14.2 (Debian 14.2-1)")
    found = toolchain.discover({"PG_BINDIR": str(pinned), "PATH": str(on_path)})
    assert [(c.source, c.version) for c in found[:2]] == [("PG_BINDIR", "16.4"),
                                                          ("PATH", "14.2")]


def test_parse_version() -> None:
    assert toolchain.parse_version("psql (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)") == "15.18"
    assert toolchain.parse_version("pg_dump (PostgreSQL) 18beta1") == "18"
    assert toolchain.parse_version("nonsense") is None


def test_backup_path_layout_and_sanitising() -> None:
    at = datetime(2026, 11, 23, 23, 4, tzinfo=UTC)
    p = backup_path(Path("/b"), "trading", at)
    assert p == Path("/b/trading/2026/11/23/backup-20261123T230400Z.dump")
    assert taken_at(p) == at
    assert dir_name("../../etc") == "%2E.%2F..%2Fetc" and dir_name(".hidden") == "%2Ehidden"
    with pytest.raises(ConfigError):
        dir_name("")


COLLIDED = ["a b", "a/b", "a_b", "café", "caf_", "日本", "中国", "..", ".", ".hidden", "hidden",
            "a%20b", "Trading", "trading", "x.y", "-", "%"]


def test_directory_names_are_one_to_one_and_read_back() -> None:
    """Every name the first layout made collide gets a directory of its own."""
    dirs = [dir_name(n) for n in COLLIDED]
    assert len(set(dirs)) == len(COLLIDED)
    for name, d in zip(COLLIDED, dirs, strict=True):
        assert db_from_dir(d) == name
        assert "/" not in d and d not in (".", "..") and not d.startswith(".")
    assert dir_name("trading") == "trading" == legacy_dir_name("trading")
    assert db_from_dir("a_b") == "a_b" and db_from_dir("a%2") is None


@given(st.text(min_size=1, max_size=63))
def test_any_database_name_round_trips(name: str) -> None:
    d = dir_name(name)
    assert db_from_dir(d) == name and "/" not in d and not d.startswith(".")
    assert len(d.encode()) <= 255 or len(name.encode()) > 63


def test_parse_stamp_accepts_both_forms() -> None:
    a = parse_stamp("20261123T230400Z")
    assert a == parse_stamp("2026-11-23T23:04:00Z") == parse_stamp("2026-11-24T00:04:00+01:00")
    with pytest.raises(ConfigError):
        parse_stamp("yesterday")


def test_durations() -> None:
    assert parse_duration("15m") == 900 and parse_duration("1h30m") == 5400
    assert parse_duration("90") == 90 and parse_duration("7d") == 7 * 86400
    with pytest.raises(ConfigError):
        parse_duration("soon")
    assert human(3725) == "1h 02m"


def test_urls_are_redacted_everywhere() -> None:
    text = "failed for postgresql://app:hunter2@db:5432/x and postgres://b:pw@h/y"
    assert "hunter2" not in redact(text) and ":pw@" not in redact(text)
    socket_url = ConnInfo.make(dbname="d", host="/tmp/sock", port=5433, user="postgres")
    assert socket_url.libpq_url == "postgresql://postgres@/d?host=%2Ftmp%2Fsock&port=5433"
    assert ConnInfo.parse(socket_url.libpq_url).host == "/tmp/sock"


def test_a_target_without_password_borrows_it_only_for_the_same_user_and_server() -> None:
    prod = ConnInfo.parse("postgresql://app:s3cret@db:5432/trading")
    same = ConnInfo.parse("postgresql://app@db:5432/trading_restore").with_password_from(prod)
    assert same.password == "s3cret"
    for other in ("postgresql://admin@db:5432/x", "postgresql://app@db2:5432/x",
                  "postgresql://app@db:6432/x"):
        assert ConnInfo.parse(other).with_password_from(prod).password == ""
    own = ConnInfo.parse("postgresql://app:own@db:5432/x").with_password_from(prod)
    assert own.password == "own"


def test_restore_argv_never_uses_create() -> None:
    info = ConnInfo.parse("postgresql://u:secret@h/db_restore")
    argv = restore_argv(chain(15), Path("/x.dump"), info.conninfo, jobs=2, no_owner=True)
    assert "--create" not in argv and "-C" not in argv and "--clean" not in argv
    assert "--jobs=2" in argv
    single = restore_argv(chain(15), Path("/x.dump"), info.conninfo, jobs=2, no_owner=False,
                          single_transaction=True)
    assert "--single-transaction" in single and not any(a.startswith("--jobs") for a in single)
    assert "--dbname=dbname=db_restore host=h user=u" in argv
    assert not any("secret" in a for a in argv)


NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def at(hours_ago: float) -> Backup:
    t = NOW - timedelta(hours=hours_ago)
    return Backup(path=Path(f"/b/{t:%s}.dump"), database="app", state=COMPLETE, taken_at=t,
                  size=10, mtime=0)


def test_hourly_backups_meet_the_schedule_but_not_a_15_minute_rpo() -> None:
    items = [at(h + 0.5) for h in range(48)]
    s = database_status(items, database="app", now=NOW, schedule_s=3600, rpo_s=900)
    assert s.largest_gap_s == 3600
    assert not any("schedule" in m for m in s.missed)
    assert s.missed == (
        "newest backup is 30m 00s old, RPO target is 15m 00s",
        "backups every 1h 00m cannot meet the RPO target of 15m 00s: the data lost in the "
        "worst case is the time between two backups; back up at least every 15m 00s, or "
        "archive WAL",
        "largest gap between backups in the last 7 days is 1h 00m, above the RPO target of "
        "15m 00s")
    relaxed = database_status(items, database="app", now=NOW, schedule_s=3600, rpo_s=3600)
    assert relaxed.ok


def test_a_stopped_schedule_is_reported() -> None:
    items = [at(h + 30) for h in range(10)]
    s = database_status(items, database="app", now=NOW, schedule_s=3600, rpo_s=7200)
    assert any("schedule is every" in m for m in s.missed)
    text = prometheus_text([s])
    assert 'atb_backup_targets_met{database="app"} 0' in text
    assert 'atb_backup_count{database="app"} 10' in text


def test_workflow_inputs_never_reach_a_shell_script_by_interpolation() -> None:
    """`${{ inputs.x }}` inside `run:` is spliced into the script before the shell parses it:
    a crafted backup path would run as code. Inputs go through `env:` only."""
    root = Path(__file__).resolve().parents[2]
    for workflow in (root / ".github" / "workflows").glob("*.yml"):
        lines = workflow.read_text().splitlines()
        in_run, indent = False, 0
        for line in lines:
            stripped = line.lstrip()
            if stripped.startswith("run:"):
                in_run, indent = True, len(line) - len(stripped)
                assert "${{" not in stripped, f"{workflow.name}: {line}"
                continue
            if in_run and stripped and len(line) - len(stripped) <= indent:
                in_run = False
            if in_run:
                assert "${{" not in line, f"{workflow.name}: expression in a script: {line}"
