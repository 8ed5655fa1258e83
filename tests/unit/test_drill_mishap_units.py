"""Pure parts of how a drill meets its mishaps: progress lines for a phase an interrupt
or an error ended, the sandbox note shown as it happens, a check file compiled (never run)
before anything starts, and the repository rows of a report."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import pytest

from backup_core.tools.errors import ConfigError
from drills import console, report, run
from drills.plugin.progress import Channel
from drills.result import CheckRecord
from drills.state import DrillState


def test_a_phase_ended_by_an_interrupt_or_an_error_is_not_said_done() -> None:
    assert console.phase_line({"event": "phase", "phase": "restore", "state": "interrupted",
                               "seconds": 0.6}) == ("restore interrupted after 0.6s", True)
    assert console.phase_line({"event": "phase", "phase": "restore", "state": "failed",
                               "seconds": 2.0}) == ("restore failed after 2.0s", True)


def test_the_sandbox_note_is_a_warning_when_it_arrives(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    channel = Channel(tmp_path / "progress.jsonl")
    channel.note("auto chose local: no engine")
    [event] = [json.loads(line) for line in (tmp_path / "progress.jsonl").read_text()
               .splitlines()]
    assert (event["event"], event["text"]) == ("note", "auto chose local: no engine")
    with caplog.at_level(logging.WARNING, logger="atb.drill"):
        console.DrillProgress(stream=io.StringIO())(event)
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("WARNING", "auto chose local: no engine")]


def test_check_files_are_compiled_never_run_and_a_syntax_error_names_the_file(
        tmp_path: Path) -> None:
    checks = tmp_path / "bc"
    (checks / "sub").mkdir(parents=True)
    (checks / ".hidden").mkdir()
    (checks / "conftest.py").write_text("raise SystemExit('run!')\n")
    (checks / "test_ok.py").write_text("def test_x():\n    pass\n")
    (checks / "helper.py").write_text("def (:\n")  # not a test file: pytest never imports it
    (checks / ".hidden" / "test_no.py").write_text("def (:\n")
    bad = checks / "sub" / "test_bad.py"
    bad.write_text("x = 1\ndef test_x(:\n")
    assert run.check_files((checks,)) == [checks / "conftest.py", checks / "test_ok.py", bad]
    with pytest.raises(ConfigError) as caught:
        run.check_check_files((checks,))
    assert str(caught.value) == (f"check file {bad} cannot be collected: SyntaxError: invalid "
                                 "syntax (line 2)")
    bad.unlink()
    run.check_check_files((checks,))  # the conftest that would exit was only compiled


def test_a_backup_from_the_repository_has_its_rows_in_the_summary() -> None:
    rows = report.origin_rows({"repository": "s3://b/p", "object": "db/x.dump",
                               "stored sha256": "aa", "plain sha256": "bb"})
    assert rows == [("Repository", "s3://b/p"), ("Object", "db/x.dump"),
                    ("Stored SHA-256", "aa"), ("Plain SHA-256", "bb")]


def _state(**options: object) -> DrillState:
    from datetime import UTC, datetime

    from drills.options import DrillOptions
    from drills.state import ReportPaths

    now = datetime(2026, 11, 30, 8, 0, tzinfo=UTC)
    state = DrillState(options=DrillOptions(seed=3, **options),  # type: ignore[arg-type]
                       started_at=now, production=None, backup=None, selection_error=None,
                       paths=ReportPaths.for_drill(Path("/r"), "app", now))
    state.builtin = ("test_indexes_are_valid", "test_application_integration_suite_passes")
    return state


def test_an_interrupted_drill_is_incomplete_says_so_and_measures_no_rto() -> None:
    state = _state()
    state.checks = [CheckRecord(name="test_indexes_are_valid", title="Indexes are valid",
                                outcome="passed")]
    state.interrupted = True
    result = state.result()
    assert (result.verdict, result.interrupted) == ("INCOMPLETE", True)
    assert result.not_run == {"test_application_integration_suite_passes":
                              "not run: interrupted"}
    assert (result.rto.failed_at, result.rto.measured_s) == ("interrupted", None)
    rows = dict(report.summary_rows(result))
    assert rows["Interrupted"].startswith("the drill was stopped (Ctrl-C or SIGINT)")
    assert rows["RTO"].startswith("not measured: the drill was interrupted")
    assert report.next_steps(result) == []  # nothing to configure: run it again
    state.checks = []  # interrupted before any check: still not a FAIL
    assert state.result().verdict == "INCOMPLETE"


def test_a_drill_from_the_repository_names_its_url_and_pick_not_the_download() -> None:
    origin = {"url": "s3://b/p/db/x.dump", "selection": "given with --backup db/x.dump",
              "repository": "s3://b/p", "object": "db/x.dump"}
    state = _state(backup=Path("/tmp/atb-fetch-1/db/2026/11/30/x.dump"),
                   origin=json.dumps(origin))
    b = state.result().backup
    assert (b.path, b.selection, b.origin) == ("s3://b/p/db/x.dump",
                                               "given with --backup db/x.dump",
                                               {"repository": "s3://b/p",
                                                "object": "db/x.dump"})


def test_a_killed_downloads_decrypted_dump_is_reaped_and_a_live_ones_kept(
        tmp_path: Path) -> None:
    """`atb-fetch-*` holds a decrypted dump while a drill or a restore from the repository
    runs: after a `kill -9` it is removed by the next reaping, as the drill's own are."""
    from backup_core.tools import reaper
    from drills import leftovers

    gone, live, alien = (tmp_path / "atb-fetch-gone", tmp_path / "atb-fetch-live",
                         tmp_path / "atb-fetch-alien")
    for folder in (gone, live, alien):
        folder.mkdir()
        (folder / "backup.dump").write_bytes(b"PGDMP")
    me = reaper.Owner.current()
    (gone / reaper.OWNER_MARK).write_text(f"999999999:{me.start}@{me.host}")
    reaper.mark_owner(live)
    assert leftovers.reap(tmp_path) == [
        f"removed {gone}, the temporary directory of a drill that is gone (pid 999999999)"]
    assert not gone.exists() and (live / "backup.dump").exists()
    assert (alien / "backup.dump").exists()  # no mark: not positively ours, never touched


def test_a_full_s3_url_given_as_backup_is_kept_as_typed() -> None:
    """6a: `--backup s3://bucket/key` with --repo reached the reports as `s3:/bucket/key`
    (click made a Path of it): every file and directory option is its text as typed."""
    import click

    from drills.cli.drill import drill_settings

    seen: dict[str, object] = {}
    command = click.command("run")(drill_settings(lambda **values: seen.update(values)))
    command.main(["--backup", "s3://b/p/shop/2026/11/30/backup-20261130T010203Z.dump",
                  "--report-dir", "r//x"], standalone_mode=False)
    assert (seen["backup"], seen["report_dir"]) == (
        "s3://b/p/shop/2026/11/30/backup-20261130T010203Z.dump", "r//x")


def test_interrupts_stop_the_drill_then_wait_for_its_record_then_abandon_it(
        capfd: pytest.CaptureFixture[str]) -> None:
    """N4 and its review: the first SIGINT interrupts the drill; the second says, in one
    line, that the record is being finished and waits; the third abandons it. Each is
    noted (`signalled`), the first too, though it raised."""
    from drills.interrupts import WAITING, Abandoned, Interrupts

    handler = Interrupts()
    with pytest.raises(KeyboardInterrupt) as first:
        handler(2, None)
    assert not isinstance(first.value, Abandoned)
    assert (handler.armed, handler.signalled, handler.waiting) == (False, True, False)
    handler(15, None)
    assert (handler.armed, handler.signalled, handler.waiting) == (False, True, True)
    assert capfd.readouterr().err == WAITING == (
        "atb: finishing the drill's record; interrupt again to abandon it\n")
    with pytest.raises(Abandoned):
        handler(2, None)
    assert capfd.readouterr().err == ""


def test_once_the_drill_has_reported_a_first_interrupt_waits_and_a_second_abandons(
        capfd: pytest.CaptureFixture[str]) -> None:
    """Review item 7: once the child has written its result (`reported`, called by
    `drills.run`), a first Ctrl-C waits for the record too; the next abandons it."""
    import signal

    from drills.interrupts import WAITING, Abandoned, handling, reported

    reported()  # no handler of ours installed: nothing happens
    with handling() as handler:
        assert signal.getsignal(signal.SIGTERM) is handler
        reported()
        handler(2, None)
        assert capfd.readouterr().err == WAITING
        with pytest.raises(Abandoned):
            handler(2, None)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


@pytest.mark.parametrize(("value", "off"), [("off", True), (" OFF ", True), ("", False)])
def test_the_isolation_switch_is_read_one_way(value: str, off: bool) -> None:
    from backup_core.tools import namespaces

    namespaces.check_switch({"ATB_ISOLATION": value})
    assert namespaces.switched_off({"ATB_ISOLATION": value}) is off


def test_a_conftest_said_to_fail_never_masks_pytests_own_error(tmp_path: Path) -> None:
    """Review item 5: saying which conftest failed (for `atb drill run`'s one line) can
    fail in any way, an unreadable options file, an error that cannot be printed: it never
    raises, so pytest's own error stands; when it can, it writes the line beside the result
    file (`config_error_file`)."""
    from drills.plugin.hooks import config_error_file, conftest_refused

    class Unprintable(Exception):
        def __str__(self) -> str:
            raise RuntimeError("cannot be said")

    options, conftest = tmp_path / "options.json", tmp_path / "conftest.py"
    where = config_error_file(tmp_path / "result.json")
    assert where == tmp_path / "config-error.txt"
    for text, cause in [(None, ImportError("x")), ("[]", ImportError("x")),
                        ('{"result_file": 7}', ImportError("x")),
                        (json.dumps({"result_file": str(tmp_path / "result.json")}),
                         Unprintable())]:
        if text is not None:
            options.write_text(text)
        conftest_refused(options, conftest, cause)
        assert not where.exists()
    conftest_refused(options, conftest, ImportError("No module named 'nope'"))
    assert where.read_text() == (f"conftest {conftest} cannot be imported: ImportError: "
                                 "No module named 'nope'\n")


def test_no_backup_of_a_database_is_said_as_it_is() -> None:
    """Review item 3: a missing directory and an empty one are told apart, with the
    databases the tree does hold (their names printable)."""
    from drills.pick import none_of

    assert none_of("gone", filed=False, held=["a", "b\x1b"]) == (
        "no backup of database gone: the tree has no directory gone/ for it (the tree holds "
        "backups of a, b\\x1b)")
    assert none_of("shop", filed=True, held=[]) == (
        "no backup of database shop: the directory shop/ holds no backup of it (the tree "
        "holds no backups)")


@pytest.mark.parametrize(("parts", "filed"), [
    (("shop", "2026", "11", "30", "backup-20261130T010203Z.dump"), True),
    (("shop", "2026", "11", "backup-20261130T010203Z.dump"), False),
    (("shop", "26", "11", "30", "backup-20261130T010203Z.dump"), False),
    (("shop", "2026", "xx", "30", "backup-20261130T010203Z.dump"), False),
    ((), False)])
def test_a_dump_is_filed_in_the_tree_only_at_db_year_month_day(
        parts: tuple[str, ...], filed: bool) -> None:
    from drills import pick

    assert pick.filed(parts) is filed
