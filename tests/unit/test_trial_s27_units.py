"""Pure parts of what the s27 trial's mends rest on: progress lines for a phase an interrupt
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
