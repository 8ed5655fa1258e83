"""A first drill's statements, without a server: the RPO judged on the schedule, the RTO
line, the steps that complete an INCOMPLETE drill, the wording, the progress channel, and
the pytest plugin's cost in a run that is not a drill."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from backup_core.ops.status import database_status
from backup_core.store.catalog import COMPLETE, Backup
from backup_core.tools.durations import human, human_time, plural
from drills import console, report
from drills.cli.drill import drill_summary
from drills.options import DrillOptions
from drills.plugin import inactive
from drills.plugin.fixtures import rpo_facts
from drills.plugin.progress import Channel
from drills.result import CheckRecord, RpoFacts, RtoFacts
from drills.state import DrillState, ReportPaths

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def backup(seconds_ago: float) -> Backup:
    at = NOW - timedelta(seconds=seconds_ago)
    return Backup(path=Path(f"/b/app/backup-{at:%Y%m%dT%H%M%SZ}.dump"), database="app",
                  state=COMPLETE, taken_at=at, size=1, mtime=0)


# -- the RPO, judged on the schedule and the observed gaps together ---------------------------

def test_two_backups_seconds_apart_do_not_make_an_hourly_schedule_meet_a_15_minute_rpo() -> None:
    s = database_status([backup(20), backup(10)], database="app", now=NOW, schedule_s=3600,
                        rpo_s=900)
    assert s.largest_gap_s == 10.0 and s.worst_loss_s == 3600
    assert s.missed == (
        "backups every 1h 00m cannot meet the RPO target of 15m 00s: the data lost in the "
        "worst case is the time between two backups; back up at least every 15m 00s, or "
        "archive WAL",)
    fast = database_status([backup(20), backup(10)], database="app", now=NOW, schedule_s=900,
                           rpo_s=900)
    assert fast.ok and fast.worst_loss_s == 900


def test_a_single_backup_is_judged_from_the_configured_schedule() -> None:
    one = database_status([backup(60)], database="app", now=NOW, schedule_s=3600, rpo_s=900)
    facts = rpo_facts(one, target_s=900, schedule_s=3600)
    assert facts.met is False and facts.largest_gap_s is None
    assert facts.summary == ("target 15m 00s; worst case data loss 1h 00m (from the schedule, "
                             "every 1h 00m: 1 complete backup, no gap observed yet): NOT MET")
    met = rpo_facts(one, target_s=900, schedule_s=600)
    assert met.met is True and met.summary.endswith("(from the schedule, every 10m 00s: 1 "
                                                    "complete backup, no gap observed yet): met")
    two = database_status([backup(20), backup(10)], database="app", now=NOW, schedule_s=3600,
                          rpo_s=900)
    assert rpo_facts(two, target_s=900, schedule_s=3600).summary == (
        "target 15m 00s; worst case data loss 1h 00m (largest gap between backups in the last 7 "
        "days 10s, schedule every 1h 00m): NOT MET")
    none = database_status([], database="app", now=NOW, schedule_s=3600, rpo_s=900)
    assert rpo_facts(none, target_s=900, schedule_s=3600) == RpoFacts(
        target_s=900, summary="target 15m 00s; no complete backup in the tree to judge it by")


# -- the RTO line ----------------------------------------------------------------------------

def test_the_rto_line_never_says_not_measured_beside_a_measurement() -> None:
    checked = RtoFacts(target_s=3600, failed_at="checks", phases={"restore": 3.0, "checks": 1.5})
    assert report.rto_text(checked) == (
        "4.5s measured, target 1h 00m: not counted, a check of the restored database failed "
        "(the recovery did not deliver a sound database)")
    restore = RtoFacts(target_s=3600, failed_at="restore", phases={"restore": 3.0})
    assert report.rto_text(restore) == ("not measured: the recovery failed at restore "
                                        "(target 1h 00m)")
    assert report.rto_text(RtoFacts(target_s=3600, measured_s=42.0, met=True)) == (
        "42s measured, target 1h 00m: met")


def test_the_report_names_the_durability_settings_the_rto_was_measured_under() -> None:
    off = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}
    assert report.durability_rows(off) == [(
        "RTO measured", "in a sandbox with durability off (fsync=off, synchronous_commit=off, "
                        "full_page_writes=off): a server with durability on restores more "
                        "slowly")]
    on = dict.fromkeys(off, "on")
    assert report.durability_rows(on) == [(
        "RTO measured", "with durability on (fsync=on, synchronous_commit=on, "
                        "full_page_writes=on)")]
    assert report.durability_rows({}) == []


# -- an INCOMPLETE drill says what completes the next one ------------------------------------

def _incomplete() -> Any:
    state = DrillState(options=DrillOptions(seed=3), started_at=NOW, production=None,
                       backup=backup(60), selection_error=None,
                       paths=ReportPaths.for_drill(Path("/r"), "app", NOW))
    skipped = {
        "test_heartbeat_is_fresh_at_backup_time": "no heartbeat table in the backup: neither "
        "the application's system_events nor atb's atb.heartbeat",
        "test_revision_before_upgrade_matches_the_backup": "no --alembic-config given: "
                                                           "migrations not exercised",
        "test_alembic_upgrade_head_reaches_the_script_head": "no --alembic-config given: "
                                                             "migrations not exercised",
        "test_schedule_meets_the_rpo_target": "RPO not judged: target 15m 00s; no complete "
                                              "backup in the tree to judge it by",
        "test_application_integration_suite_passes": "no --integration-cmd given",
    }
    state.checks = [CheckRecord(name="test_indexes_are_valid", title="Indexes are valid",
                                outcome="passed")] + [
        CheckRecord(name=n, title=report.title(n), outcome="skipped", message=why)
        for n, why in skipped.items()]
    state.builtin = (*(c.name for c in state.checks), "test_amcheck_finds_no_corruption")
    state.options = replace(state.options, exclude=("test_amcheck_finds_no_corruption",))
    return state.result()


def test_an_incomplete_summary_ends_with_what_completes_the_next_drill() -> None:
    result = _incomplete()
    assert result.verdict == "INCOMPLETE"
    steps = [
        "leave out --exclude amcheck_finds_no_corruption",
        "create atb's heartbeat table on production with `atb tests heartbeat --init "
        "--grant-to <backup role>`, schedule `atb tests heartbeat` every 5 minutes, and drill "
        "a backup taken after that",
        "give the application's migration: --alembic-config alembic.ini (or its own command "
        "with --migrate-cmd)",
        "say how often backups run: --schedule 1h (the RPO is then judged from it)",
        "give the application's tests: --integration-cmd 'pytest -q tests/integration'",
    ]
    assert report.next_steps(result) == steps
    text = drill_summary(result)
    assert text.endswith("\n".join(["To make the next drill complete:",
                                    *(f"  - {s}" for s in steps)]))
    assert ("  NOT RUN  Schedule meets the RPO target: RPO not judged: target 15m 00s; no "
            "complete backup in the tree to judge it by") in text.splitlines()
    assert "## To make the next drill complete" in report.to_markdown(result)
    # times for a person, in UTC to the second
    assert "Backup taken:  2026-11-23 11:59:00 UTC (1m 00s before the drill)" in text
    assert "Drill:         2026-11-23 12:00:00 UTC to 20" in text
    assert "id='drill-next'" in report.summary_html(result)
    passed = replace(result, verdict="PASS", not_run={})
    assert report.next_steps(passed) == [] and "next drill" not in drill_summary(passed)


# -- wording ---------------------------------------------------------------------------------

def test_durations_times_and_counts_read_unambiguously() -> None:
    assert human(7 * 86400 + 30) == "7d 00h 00m"
    assert human(2 * 86400 + 3 * 3600 + 5 * 60) == "2d 03h 05m"
    assert (human(4.25), human(42), human(185), human(7800)) == ("4.2s", "42s", "3m 05s",
                                                                 "2h 10m")
    assert human_time(1795000000) == "2026-11-18 11:06:40 UTC"
    assert human_time("2026-11-23T23:04:00+00:00") == "2026-11-23 23:04:00 UTC"
    assert human_time(NOW) == "2026-11-23 12:00:00 UTC"
    assert (plural(1, "complete backup"), plural(2, "complete backup"),
            plural(1, "index", "indexes"), plural(0, "sequence")) == (
        "1 complete backup", "2 complete backups", "1 index", "0 sequences")


def test_check_titles_write_proper_names_as_they_are_written() -> None:
    assert [report.title(n) for n in (
        "test_schedule_meets_the_rpo_target", "test_measured_rto_is_within_target",
        "test_archive_is_readable_by_the_runbook_pg_restore",
        "test_alembic_upgrade_head_reaches_the_script_head", "test_indexes_are_valid",
        "test_pgbackrest_recovers_the_target_time")] == [
        "Schedule meets the RPO target", "Measured RTO is within target",
        "Archive is readable by the runbook pg_restore",
        "Alembic upgrade head reaches the script head", "Indexes are valid",
        "pgBackRest recovers the target time"]


def test_status_wording_counts_and_names_the_window() -> None:
    one = database_status([backup(60), replace(backup(30), state="damaged")], database="app",
                          now=NOW, schedule_s=3600, rpo_s=7200)
    assert one.missed == ("1 backup in the last 7 days is not sound (damaged 1): see "
                          "`atb db list`",)


# -- progress: JSON lines from the drill's child, lines for a person -------------------------

def test_progress_events_read_as_phase_lines() -> None:
    assert console.phase_line({"event": "phase", "phase": "restore", "state": "start"}) == (
        "restore...", False)
    assert console.phase_line({"event": "phase", "phase": "restore", "state": "done",
                               "seconds": 3.2, "bytes": 5 * 2**20, "rate": 2**20}) == (
        "restore done in 3.2s: 5.0 MiB archive at 1.0 MiB/s", True)
    assert console.phase_line({"event": "check", "title": "Indexes are valid",
                               "outcome": "passed"}) == ("check PASSED: Indexes are valid",
                                                         False)
    assert console.phase_line({"event": "report", "state": "start"}) == (
        "writing the reports", False)
    assert console.phase_line({"event": "unknown"}) is None


def test_the_child_channel_reaches_the_parent_as_json_lines(tmp_path: Path) -> None:
    path = tmp_path / "progress.jsonl"
    channel = Channel(path, archive_bytes=4096)
    seen: list[dict[str, Any]] = []
    with console.ProgressFile(path, seen.append):
        channel.phase("sandbox start", "start", 0.0)
        channel.phase("sandbox start", "done", 1.25)
        channel.phase("restore", "done", 2.0)
        with path.open("a") as fh:
            fh.write('{"event": "check", "title": "half')  # a line still being written
    seen = [e for e in seen if e is not console.TICK]  # ticks: time passing, for a terminal
    assert [(e["event"], e.get("phase"), e.get("state")) for e in seen] == [
        ("phase", "sandbox", "start"), ("phase", "sandbox", "done"),
        ("phase", "restore", "done")]
    assert (seen[2]["bytes"], seen[2]["rate"], seen[2]["seconds"]) == (4096, 2048, 2.0)
    Channel(None).emit("phase", phase="x")  # no channel: nothing written, nothing raised
    Channel(tmp_path / "missing" / "p.jsonl").emit("phase")  # unwritable: dropped


def test_a_drill_phase_tells_its_listener() -> None:
    heard: list[tuple[str, str]] = []
    state = DrillState(options=DrillOptions(seed=1), started_at=NOW, production=None,
                       backup=None, selection_error=None,
                       paths=ReportPaths.for_drill(Path("/r"), "app", NOW))
    state.on_phase = lambda name, what, seconds: heard.append((name, what))
    with state.phase("restore"):
        time.sleep(0)
    assert heard == [("restore", "start"), ("restore", "done")] and "restore" in state.phases


# -- the plugin costs nothing in a pytest run that is not a drill ----------------------------

LIGHT = {"drills", "drills.plugin", "drills.plugin.inactive", "drills.options", "backup_core",
         "backup_core.tools", "backup_core.tools.durations", "backup_core.tools.errors",
         "backup_core.tools.namespaces"}  # a readlink: is this the drill's namespace


def test_the_entry_point_imports_only_the_option_table() -> None:
    code = ("import sys, drills.plugin; print(sorted(m for m in sys.modules if m.split('.')[0] "
            "in ('drills', 'backup_core', 'psycopg', 'sqlalchemy', 'alembic', 'pytest_html', "
            "'docker', 'testcontainers')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    assert set(json.loads(done.stdout.replace("'", '"'))) <= LIGHT


def test_a_pytest_run_that_is_not_a_drill_loads_no_drill_part(tmp_path: Path) -> None:
    (tmp_path / "test_plain.py").write_text(
        "import sys\n\n"
        "def test_plain():\n"
        "    heavy = {'psycopg', 'drills.plugin.fixtures', 'drills.checks', 'sqlalchemy'}\n"
        "    assert not heavy & set(sys.modules), heavy & set(sys.modules)\n"
        "    assert 'drills.plugin' in sys.modules\n\n"
        "def test_a_drill_check_skips(drill_url):\n"
        "    raise AssertionError('never runs')\n")
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "-p", "drills.plugin", "-rs", str(tmp_path)], capture_output=True,
                          text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 passed, 1 skipped" in done.stdout
    assert inactive.REASON in done.stdout


def test_the_inactive_fixtures_are_the_drill_fixtures() -> None:
    from drills.plugin import fixtures

    real = {name for name, value in vars(fixtures).items()
            if type(value).__name__ == "FixtureFunctionDefinition"}
    assert set(inactive.NAMES) == real


class _Terminal:
    def __init__(self) -> None:
        self.text = ""

    def isatty(self) -> bool:
        return True

    def write(self, text: str) -> None:
        self.text += text

    def flush(self) -> None:
        pass


def test_on_a_terminal_phases_done_stay_and_the_current_one_is_refreshed() -> None:
    screen = _Terminal()
    shown = console.DrillProgress(stream=screen)
    shown({"event": "phase", "phase": "restore", "state": "start"})
    shown({"event": "phase", "phase": "restore", "state": "done", "seconds": 2.0,
           "bytes": 2048, "rate": 1024})
    shown({"event": "check", "title": "Indexes are valid", "outcome": "failed"})
    shown({"event": "tick"})  # less than a second since: nothing redrawn
    shown.since -= 5  # as if the check had been on screen for five seconds
    shown.drawn -= 5
    shown(console.TICK)
    shown.close()
    assert screen.text == ("\r\x1b[Kdrill: restore... [0s]"
                           "\r\x1b[Kdrill: restore done in 2.0s: 2.0 KiB archive at 1.0 KiB/s\n"
                           "\r\x1b[Kdrill: check FAILED: Indexes are valid [0s]"
                           "\r\x1b[Kdrill: check FAILED: Indexes are valid [5s]"
                           "\r\x1b[K")


def test_a_server_identity_reads_as_a_time_not_epoch_seconds() -> None:
    from backup_core.tools.db import Identity

    ident = Identity("port 5432, started 1795000000.123456", 16384, "app")
    assert str(ident) == ("database app (oid 16384) on server port 5432, started "
                          "2026-11-18 11:06:40.123456 UTC")
    assert ident.server == "port 5432, started 1795000000.123456"  # compared as it was
