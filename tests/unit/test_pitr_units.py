"""Point-in-time logic that needs no server: WAL names, the window's pick, why a recovery
stopped, and archiving judged against the RPO."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from backup_core.ops import status
from backup_core.pitr import pgbackrest, pitr, wal_status
from backup_core.tools import masking
from backup_core.tools.conninfo import redact
from backup_core.tools.errors import AtbError, ConfigError
from drills.options import DrillOptions, parse_target

T0 = datetime(2026, 11, 24, 9, 0, tzinfo=UTC)


def _backup(label: str, stopped: datetime) -> pgbackrest.BackupSet:
    return pgbackrest.BackupSet(label=label, type="full", stopped=stopped,
                                wal_stop="000000010000000000000003")


def _info(*backups: pgbackrest.BackupSet, wal_max: str = "00000001000000000000000A",
          status_text: str = "ok") -> pgbackrest.StanzaInfo:
    return pgbackrest.StanzaInfo(name="main", status=status_text, pg_version="15",
                                 backups=backups, wal_min="000000010000000000000001",
                                 wal_max=wal_max)


def test_wal_segment_names_roll_over_to_the_next_log() -> None:
    assert pgbackrest.next_segment("000000010000000000000009") == "00000001000000000000000A"
    assert pgbackrest.next_segment("0000000100000000000000FF") == "000000010000000100000000"
    assert pgbackrest.previous_segment("000000010000000100000000") == \
        "0000000100000000000000FF"
    assert pgbackrest.previous_segment(pgbackrest.next_segment("0000000200000003000000A7")) \
        == "0000000200000003000000A7"
    with pytest.raises(ValueError):
        pgbackrest.fetch_argv("pgbackrest", pgbackrest.Stanza("main"), "../../etc/passwd",
                              Path("/w/x"), datadir=None, lock_dir=Path("/w/lock"))


def test_the_target_is_uniform_over_the_window_and_replayable() -> None:
    w = pitr.Window(start=T0, end=T0 + timedelta(days=3), backups=2)
    picks = [pitr.pick_target(w, seed) for seed in range(200)]
    assert all(w.start <= t <= w.end for t in picks)
    assert pitr.pick_target(w, 11) == pitr.pick_target(w, 11)
    assert min(picks) < T0 + timedelta(hours=12) and max(picks) > T0 + timedelta(days=2, hours=12)
    assert all(t.microsecond % 1000 == 0 for t in picks)


def test_the_backup_is_the_newest_that_finished_before_the_target() -> None:
    info = _info(_backup("a", T0), _backup("b", T0 + timedelta(days=1)),
                 _backup("c", T0 + timedelta(days=2)))
    assert pitr.backup_for(info, T0 + timedelta(days=1, hours=5)).label == "b"
    assert pitr.backup_for(info, T0 + timedelta(days=1)).label == "b"
    with pytest.raises(AtbError, match="no backup of stanza main finished before"):
        pitr.backup_for(info, T0 - timedelta(seconds=1))


LOG = """2026-11-24 09:27:30.300 UTC [1] LOG:  starting point-in-time recovery to {target}
2026-11-24 09:27:30.310 UTC [2] LOG:  restored log file "000000010000000000000003" from archive
2026-11-24 09:27:30.320 UTC [2] LOG:  redo starts at 0/3000028
2026-11-24 09:27:30.330 UTC [2] LOG:  restored log file "000000010000000000000004" from archive
2026-11-24 09:27:30.438 UTC [2] LOG:  last completed transaction was at log time \
2026-11-24 09:10:05.845458+00
2026-11-24 09:27:30.438 UTC [2] FATAL:  recovery ended before configured recovery target was reached
"""


def test_a_recovery_that_stops_short_says_which_segment_is_missing() -> None:
    failed = pitr.explain(LOG, _info(wal_max="00000001000000000000000A"), T0)
    assert failed.segment == "000000010000000000000005"
    assert "WAL segment 000000010000000000000005 is missing from the archive" in str(failed)
    assert "goes on to 00000001000000000000000A" in str(failed)
    assert "09:10:05" in str(failed)


def test_a_target_past_the_archive_is_told_apart_from_a_gap() -> None:
    failed = pitr.explain(LOG, _info(wal_max="000000010000000000000004"), T0)
    assert failed.segment is None
    assert f"the target {T0.isoformat()} is after the last archived WAL" in str(failed)


def test_any_other_startup_failure_shows_the_servers_fatal_line() -> None:
    log = ('2026-11-24 09:27:30.300 UTC [1] FATAL:  could not access file "timescaledb": '
           "No such file or directory\n")
    failed = pitr.explain(log, _info(), T0)
    assert str(failed) == ('the recovered copy did not start: could not access file '
                           '"timescaledb": No such file or directory')


def _archiver(archived: datetime | None, failed: datetime | None = None,
              mode: str = "on") -> wal_status.Archiver:
    return wal_status.Archiver(
        last_archived_wal="00000001000000000000000A" if archived else None,
        last_archived_at=archived,
        last_failed_wal="00000001000000000000000B" if failed else None,
        last_failed_at=failed, failed_count=3 if failed else 0, archive_mode=mode)


def test_archiving_is_judged_against_the_rpo() -> None:
    info = _info(_backup("a", T0))
    now = T0 + timedelta(hours=2)
    current = wal_status.judge(info, _archiver(now - timedelta(minutes=4)), now=now, rpo_s=900)
    assert current.ok and current.lag_s == 240 and current.window_s == 2 * 3600 - 240
    lagging = wal_status.judge(info, _archiver(now - timedelta(minutes=20)), now=now,
                               rpo_s=900)
    assert not lagging.ok and "archiving lags 20m" in lagging.missed[0]
    failing = wal_status.judge(info, _archiver(now - timedelta(minutes=4),
                                               now - timedelta(minutes=1)), now=now, rpo_s=900)
    assert [m for m in failing.missed if m.startswith("archiving is failing: "
                                                      "00000001000000000000000B")]
    recovered = wal_status.judge(info, _archiver(now - timedelta(minutes=1),
                                                 now - timedelta(minutes=4)), now=now, rpo_s=900)
    assert recovered.ok  # a failure since followed by a success is history
    off = wal_status.judge(_info(), _archiver(None, mode="off"), now=now, rpo_s=900)
    assert {"archive_mode is off: nothing is archived",
            "no pgBackRest backup: there is nothing to replay WAL onto",
            "no WAL segment has been archived yet"} <= set(off.missed)
    text = status.prometheus_text([], [current, lagging])
    assert 'atb_wal_archive_lag_seconds{stanza="main"} 240' in text
    assert 'atb_wal_archive_targets_met{stanza="main"} 0' in text


def test_target_times_need_a_zone_and_a_stanza() -> None:
    assert parse_target("random") is None and parse_target(None) is None
    assert parse_target("2026-11-24T09:30:00Z") == datetime(2026, 11, 24, 9, 30, tzinfo=UTC)
    assert parse_target("2026-11-24T10:30:00+01:00") == datetime(2026, 11, 24, 9, 30,
                                                                 tzinfo=UTC)
    with pytest.raises(ConfigError, match="has no time zone"):
        parse_target("2026-11-24T09:30:00")
    with pytest.raises(ConfigError, match="ISO 8601"):
        parse_target("yesterday")
    values = {"source": "pgbackrest"}
    with pytest.raises(ConfigError, match="--source pgbackrest needs --stanza"):
        DrillOptions.from_values(values.get, lambda name: False)
    with pytest.raises(ConfigError, match=r"--pgbackrest-config /nonexistent\.conf: no such file"):
        DrillOptions.from_values({**values, "stanza": "main",
                                  "pgbackrest-config": "/nonexistent.conf"}.get,
                                 lambda name: False)
    opts = DrillOptions.from_values({**values, "stanza": "main",
                                     "target-time": "2026-11-24T09:30:00Z"}.get,
                                    lambda name: False)
    again = DrillOptions.from_json(opts.to_json(), {})
    assert (again.source, again.target_time) == ("pgbackrest", datetime(2026, 11, 24, 9, 30,
                                                                        tzinfo=UTC))


def test_the_copys_restore_command_copies_from_its_spool_and_names_no_repository() -> None:
    """The recovered copy's server runs as an account that cannot read the repository: its
    restore_command copies what atb fetched beforehand (`pitr.prefetch_wal`), quoted for the
    server's shell, and carries no stanza, config or credentials."""
    assert pgbackrest.spool_restore_command(Path("/tmp/atb-pg-x/wal")) == \
        'cp /tmp/atb-pg-x/wal/%f "%p"'
    assert pgbackrest.spool_restore_command(Path("/tmp/a b/wal")) == \
        "cp '/tmp/a b/wal'/%f \"%p\""
    argv = pgbackrest.restore_argv(
        "/usr/bin/pgbackrest", pgbackrest.Stanza("main", Path("/etc/pgbackrest.conf")),
        Path("/w/data"), target=T0, backup="20261124-090000F", lock_dir=Path("/w/lock"),
        restore_command=pgbackrest.spool_restore_command(Path("/w/wal")))
    assert argv == [
        "/usr/bin/pgbackrest", "--config=/etc/pgbackrest.conf", "--stanza=main",
        "--log-level-file=off", "--pg1-path=/w/data", "--lock-path=/w/lock", "restore",
        "--set=20261124-090000F", "--type=time", "--target=2026-11-24T09:00:00+00:00",
        "--target-timeline=latest", "--target-action=promote", "--archive-mode=off",
        '--recovery-option=restore_command=cp /w/wal/%f "%p"']
    with pytest.raises(ValueError):
        pgbackrest.fetch_argv("pgbackrest", pgbackrest.Stanza("main"), "00000002.history/../x",
                              Path("/w/x"), datadir=Path("/w/data"), lock_dir=Path("/w/lock"))


def test_a_wal_fetch_reads_pg_control_from_the_restored_copy() -> None:
    """As the copy's own restore_command did: pgBackRest picks the archive matching the
    restored cluster, not whatever the config's pg1-path holds (production's, or nothing)."""
    stanza = pgbackrest.Stanza("main", Path("/etc/pgbackrest.conf"))
    assert pgbackrest.fetch_argv("/usr/bin/pgbackrest", stanza, "000000010000000000000003",
                                 Path("/w/wal/000000010000000000000003"),
                                 datadir=Path("/w/data"), lock_dir=Path("/w/lock")) == [
        "/usr/bin/pgbackrest", "--config=/etc/pgbackrest.conf", "--stanza=main",
        "--log-level-file=off", "--pg1-path=/w/data", "--lock-path=/w/lock",
        "--no-archive-async", "archive-get", "000000010000000000000003",
        "/w/wal/000000010000000000000003"]
    assert pgbackrest.fetch_argv("/usr/bin/pgbackrest", stanza, "00000002.history",
                                 Path("/t/00000002.history"), datadir=None,
                                 lock_dir=Path("/t/lock"))[4:6] == [
        "--lock-path=/t/lock", "--no-archive-async"]


def test_pgbackrests_error_is_one_line_with_its_cause_and_no_secret_masked(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGBACKREST_REPO1_CIPHER_PASS", "s3cr3t-pass")
    stderr = ("WARN: something first\nERROR: [042]: unable to get 000000010000000000000003:\n"
              "       repo1: 15-1/x.gz [CryptoError] key s3cr3t-pass is wrong\n")
    assert pgbackrest.tool_message(stderr) == (
        "ERROR: [042]: unable to get 000000010000000000000003: repo1: 15-1/x.gz [CryptoError] "
        "key *** is wrong")
    assert pgbackrest.tool_message("") == "no message"
    # only secrets are masked, whatever their length: the stanza, log level and paths stay
    # readable (every PGBACKREST_* value was masked, so `main` in a path became ***)
    monkeypatch.setenv("PGBACKREST_STANZA", "main")
    monkeypatch.setenv("PGBACKREST_LOG_LEVEL_CONSOLE", "info")
    monkeypatch.setenv("PGBACKREST_REPO1_S3_KEY", "AK")
    monkeypatch.setenv("PGBACKREST_REPO1_S3_KEY_SECRET", "xAKy")
    stderr = ("ERROR: [055]: unable to open missing file '/var/lib/postgresql/15/main/global/"
              "pg_control' for read for stanza main with key xAKy and AK\n")
    assert pgbackrest.tool_message(stderr) == (
        "ERROR: [055]: unable to open missing file '/var/lib/postgresql/15/main/global/"
        "pg_control' for read for stanza main with key *** and ***")


def test_pgbackrests_secrets_are_masked_in_every_failure_once_handed_to_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Not only archive-get's message: once `tool_env` hands the secrets to pgBackRest, any
    text the run redacts (a failed restore's or info's `CommandFailed`, a log line) masks
    them; the stanza's name is no secret and stays."""
    monkeypatch.setenv("PGBACKREST_REPO1_CIPHER_PASS", "cipher-Pass-9")
    monkeypatch.setenv("PGBACKREST_STANZA", "main-stanza")
    with masking.owned(masking.Secrets()):
        text = "pgbackrest restore failed: main-stanza: bad cipher-Pass-9"
        assert redact(text) == text
        assert pgbackrest.tool_env()["PGBACKREST_STANZA"] == "main-stanza"
        assert redact(text) == "pgbackrest restore failed: main-stanza: bad ***"


def test_the_recovery_target_type_is_named_once_and_the_prefetch_refuses_another() -> None:
    """The prefetch stops at the first commit after the target, which means a time: the
    restore asks for the type named in one place, and the prefetch refuses any other
    before fetching anything."""
    assert pgbackrest.TARGET_TYPE == "time"
    argv = pgbackrest.restore_argv("/usr/bin/pgbackrest", pgbackrest.Stanza("main"),
                                   Path("/w/data"), target=T0, backup="b",
                                   lock_dir=Path("/w/lock"), restore_command="cp")
    assert "--type=time" in argv
    with pytest.raises(ValueError, match="prefetch_wal stops at the first commit after a "
                                         "time; a 'lsn' recovery target would need"):
        pitr.prefetch_wal(pgbackrest.Stanza("main"), _info(), _backup("a", T0), T0,
                          None, Path("/nonexistent"),  # type: ignore[arg-type]
                          datadir=Path("/nonexistent"), lock_dir=Path("/nonexistent"),
                          run_as=None, target_type="lsn")


def test_each_segment_is_read_from_the_timeline_the_newest_history_says() -> None:
    """Timeline 3's history: 1 until 0/3000000, 2 until 0/5A00000, then 3. The server reads
    segment 4 from timeline 2 (not 3, which only begins in segment 5), and 5 from 3."""
    text = ("1\t0/3000000\tno recovery target specified\n\n"
            "2\t0/5A00000\tbefore 2026-11-24 09:00:00+00\n")
    begins = pitr.history_begins(text, 3)
    assert begins == {1: 0, 2: 0x3000000, 3: 0x5A00000}
    assert [pitr.timelines_for(n, begins) for n in (2, 3, 4, 5, 6)] == [
        [1], [2, 1], [2, 1], [3, 2, 1], [3, 2, 1]]
    assert pitr.history_begins("", 1) == {1: 0}
    assert pitr.segment_number("000000030000000100000002") == 0x102
