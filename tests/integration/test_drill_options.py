"""Drill options that cannot work are exit 2 (pytest: its usage error) with one line, before a
report name is claimed, a sandbox started or a verdict recorded beside a backup; a sandbox
server that cannot be told apart from production is refused unless the user asserts it."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from backup_core.ops import backup
from backup_core.store.naming import drill_path
from backup_core.tools import db, toolchain
from backup_core.tools.cluster import Cluster
from backup_core.tools.conninfo import ConnInfo
from tests.conftest import make_database
from tests.helpers import atb_inproc, fingerprint

PASS_RECORD = json.dumps({"passed": True, "at": "2026-11-28T10:00:00Z", "report": "r.html",
                          "rto_s": 3.5, "failed_checks": [], "verdict": "PASS"}, indent=2)


@pytest.fixture(scope="module")
def passed(pg15: Cluster, tmp_path_factory: pytest.TempPathFactory,
           chains: list[toolchain.Toolchain]) -> tuple[ConnInfo, Path]:
    """Production and a backup whose last drill PASSED (its record written as a drill does)."""
    info = make_database(pg15, rows=50)
    with db.connect(info, autocommit=True) as conn:
        conn.execute("INSERT INTO system_events(type, message) VALUES ('TEST', 'Heartbeat')")
    path = backup.create_backup(info, tmp_path_factory.mktemp("b") / "backups",
                                chains=chains).path
    drill_path(path).write_text(PASS_RECORD)
    return info, path


def _one_line(done: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in done.stderr
    assert done.stderr.startswith("atb: error: ") and done.stderr.count("\n") == 1, done.stderr
    return done.stderr


BAD = [
    (["--sandbox", "server"], "--sandbox server needs --sandbox-url"),
    (["--sandbox-is-not-production"], "applies to --sandbox server only"),
    (["--source", "pgbackrest"], "--source pgbackrest needs --stanza"),
    (["--backup", "/nonexistent/backup-20261128T100000Z.dump"], "no such backup file"),
    (["--window-days", "0"], "--window-days 0 leaves no backup"),
    (["--checks", "/nonexistent/checks"], "does not exist"),
    (["--exclude", "no_such_check"], "names no built-in check: test_no_such_check"),
    (["--integration-timeout", "whenever"], "cannot read"),
    (["--alembic-config", "/nonexistent/alembic.ini"], "no such file"),
    (["--report-dir", ""], "is empty"),
    (["--alembic-config", ""], "is empty"),
    (["--backup-dir", ""], "is empty"),
    (["--checks", ""], "is empty"),
    (["--integration-cmd", ""], "is empty"),
    (["--integration-cmd", "x" * 100_000], "characters long"),
    (["--report-dir", "r" * 100_000], "characters long"),
]


def test_bad_drill_options_change_nothing(passed: tuple[ConnInfo, Path], tmp_path: Path) -> None:
    prod, path = passed
    before = drill_path(path).read_bytes()
    report_dir = tmp_path / "reports"
    for args, message in BAD:
        done = atb_inproc("drill", "run", "--backup", str(path), "--report-dir",
                          str(report_dir), *args, url=prod)
        assert done.returncode == 2, (args[:2], done.stderr[:300])
        assert message in _one_line(done), (args[:2], done.stderr[:300])
        assert drill_path(path).read_bytes() == before
        assert not report_dir.exists(), args[:2]


@pytest.mark.parametrize(("args", "message"), [
    (["--sandbox", "server"], "--sandbox server needs --sandbox-url"),
    (["--window-days", "0"], "--window-days 0 leaves no backup"),
    (["--checks", "/nonexistent/checks"], "no such file or directory"),
    (["--report-dir", ""], "--report-dir is empty"),
])
def test_bad_drill_options_through_pytest_are_usage_errors(
    args: list[str], message: str, passed: tuple[ConnInfo, Path], pytester: pytest.Pytester
) -> None:
    _, path = passed
    before = drill_path(path).read_bytes()
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--backup", str(path),
                                           "--report-dir", str(pytester.path / "r"), *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*{message}*"])
    assert drill_path(path).read_bytes() == before
    assert not (pytester.path / "r").exists()


def _socket_route(cluster: Cluster) -> ConnInfo:
    return ConnInfo.make(dbname="postgres", host=str(cluster.socket_dir), port=cluster.port,
                         user="postgres")


def test_a_sandbox_server_that_cannot_be_compared_is_refused_unless_asserted(
    passed: tuple[ConnInfo, Path], pg15: Cluster, pg18: Cluster, tmp_path: Path
) -> None:
    """Production unreachable (a wrong password): its own server by another route cannot be
    told apart from another server, so it is refused; the user may assert it."""
    prod, path = passed
    rows = fingerprint(prod)
    unreachable = prod.with_password("not-the-password")
    report_dir = tmp_path / "r"
    for server in (_socket_route(pg15), pg18.url()):
        done = atb_inproc("drill", "run", "--backup", str(path), "--sandbox", "server",
                          "--no-record", "--report-dir", str(report_dir), url=unreachable,
                          env={"ATB_SANDBOX_URL": server.secret_url})
        assert done.returncode == 8, done.stderr
        assert "cannot compare the sandbox server with production" in _one_line(done)
        assert "--sandbox-is-not-production" in done.stderr
        assert not report_dir.exists()
    with db.connect(pg18.url(), autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM pg_database WHERE datname LIKE 'atb_drill_%'"
                            ).fetchone() == (0,)
    done = atb_inproc("drill", "run", "--backup", str(path), "--sandbox", "server",
                      "--no-record", "--sandbox-is-not-production", "--schedule", "1d", "--json",
                      "--report-dir", str(report_dir), url=unreachable,
                      env={"ATB_SANDBOX_URL": pg18.url().secret_url})
    assert done.returncode == 10, done.stderr[-2000:]  # INCOMPLETE: no alembic, no command
    result = json.loads(done.stdout)
    assert result["sandbox"]["provider"] == "server"
    assert result["sandbox"]["note"].startswith(
        "the sandbox server was asserted not to be production's (--sandbox-is-not-production): "
        "not checked")
    assert "asserted not to be production's" in (report_dir.rglob("*-drill.md").__next__()
                                                 .read_text())
    assert fingerprint(prod) == rows
    assert drill_path(path).read_text() == PASS_RECORD


def test_a_failing_check_is_shown_as_its_sections_without_a_traceback_into_its_source(
        pytester: pytest.Pytester, tmp_path: Path) -> None:
    """CheckFailed renders what was expected and found; pytest's `--tb=short` traceback of
    the check's own source says nothing more (and parsing that source cost ~50 ms)."""
    (tmp_path / "bk").mkdir()
    done = pytester.runpytest_subprocess(
        "-p", "drills.plugin", "-p", "no:cacheprovider", "--drill", "--backup-dir",
        str(tmp_path / "bk"), "--report-dir", str(tmp_path / "r"), "--no-record", "--tb=short")
    out = done.stdout.str()
    assert done.ret == 1
    failure = out.split("_ test_backup_integrity_matches_manifest _")[1].split("=====")[0]
    assert failure.split("\n")[1:4] == ["no backup could be selected for the drill", "",
                                        "Expected:"]
    assert "checks.py" not in failure and "raise CheckFailed" not in failure

