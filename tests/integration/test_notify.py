"""--notify through apprise to a local HTTP receiver started here (`json://127.0.0.1:PORT/`):
a drill that does not pass, and a drill policy not kept (`atb db status --max-drill-age`). A
notification that fails changes no verdict and no exit code, and never shows its token."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from backup_core.store.verdicts import DrillVerdict, record_drill
from backup_core.tools.conninfo import ConnInfo
from tests.helpers import atb_inproc, copy_backup, drill, oldest
from tests.integration.test_publish import PASSWORD, GitServer, serve_git

TOKEN = "hooktoken-8c1f2e9a"


class Receiver:
    """Every POST it got, as (path, JSON body); a path under /down/ answers 500."""

    def __init__(self) -> None:
        self.got: list[tuple[str, dict[str, str]]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                return

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                receiver.got.append((self.path, json.loads(body)))
                self.send_response(500 if self.path.startswith("/down/") else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]

    def url(self, path: str) -> str:
        return f"json://atb:{TOKEN}@127.0.0.1:{self.port}/{path}"


@pytest.fixture(scope="module")
def git_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GitServer]:
    with serve_git(tmp_path_factory.mktemp("git-server")) as server:
        yield server


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    thread = threading.Thread(target=r.httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield r
    finally:
        r.httpd.shutdown()
        r.httpd.server_close()


def test_a_drill_that_does_not_pass_notifies_publishes_and_keeps_its_exit_code(
        history: tuple[ConnInfo, Path], tmp_path: Path, sandbox_tmp: Path, receiver: Receiver,
        git_server: GitServer) -> None:
    """A drill that does not pass: the working receiver gets the verdict, the one answering
    500 is one warning line without its token, the exit code is the verdict's, and
    --publish puts the report into the wiki."""
    source, backup_dir = history
    mine = copy_backup(oldest(backup_dir), tmp_path / "backups")
    git_server.repo("drill.wiki.git")
    receiver.got.clear()
    done, result = drill("--backup", str(mine), "--schedule", "1d", "--publish",
                         "--notify", receiver.url("hook/drill"),
                         "--notify", receiver.url("down/drill"),
                         backup_dir=tmp_path / "backups", report_dir=tmp_path / "reports",
                         url=source, env={"TMPDIR": str(sandbox_tmp),
                                          "ATB_WIKI_URL": git_server.url("drill.wiki.git")})
    verdict = result["verdict"]
    # no migration checks, no integration command: INCOMPLETE at best (the copy of the oldest
    # backup may also fail a check of its own: then FAIL)
    assert (verdict, done.returncode) in (("INCOMPLETE", 10), ("FAIL", 1)), done.stderr
    assert sorted(path for path, _ in receiver.got) == ["/down/drill", "/hook/drill"]
    body = dict(receiver.got)["/hook/drill"]
    assert body["title"] == f"atb restore drill {verdict}: trading"
    assert body["type"] == ("failure" if verdict == "FAIL" else "warning")
    assert f"Verdict: {verdict}" in body["message"]
    assert "NOT RUN Revision before upgrade matches the backup" in body["message"]
    assert f"Report: {result['reports']['html']}" in body["message"]
    warnings = [ln for ln in done.stderr.splitlines() if "notification to" in ln]
    assert len(warnings) == 1, done.stderr
    assert warnings[0].endswith(
        f"atb.notify WARNING notification to json://atb:***@127.0.0.1:{receiver.port}/down/"
        "drill failed: Failed to send JSON POST notification: Internal server error., "
        "error=500. (the outcome stands)")
    assert TOKEN not in done.stderr + done.stdout
    assert PASSWORD not in done.stderr + done.stdout
    page = f"restore-drills/trading/{Path(result['reports']['md']).stem}.md"
    assert git_server.show("drill.wiki.git", page) == Path(result["reports"]["md"]).read_text()
    index = git_server.show("drill.wiki.git", "Restore-drills.md")
    assert f"| trading | **{verdict}** |" in index


def test_status_notifies_when_the_newest_passing_drill_is_too_old(
        history: tuple[ConnInfo, Path], tmp_path: Path, receiver: Receiver) -> None:
    _, backup_dir = history
    tree = tmp_path / "backups"
    dump = copy_backup(oldest(backup_dir), tree)
    args = ("db", "status", "--backup-dir", str(tree), "--schedule", "30d", "--rpo", "30d",
            "--window", "30d", "--notify", receiver.url("hook/status"))
    receiver.got.clear()

    never = atb_inproc(*args)
    assert never.returncode == 0, never.stderr  # the backups' targets alone decide it
    assert "DRILL OVERDUE: no passing drill recorded; the policy asks for one every 92d 00h 00m" \
        in never.stdout
    assert receiver.got == [("/hook/status", {
        "version": "1.0", "title": "atb restore drill overdue: trading",
        "message": "trading: no passing drill recorded; the policy asks for one every 92d 00h 00m",
        "attachments": [], "type": "warning"})]

    old = (datetime.now(UTC) - timedelta(days=100)).replace(microsecond=0)
    record_drill(dump, DrillVerdict(passed=True, at=old.isoformat(), verdict="PASS"))
    stale = atb_inproc(*args, "--json")
    assert stale.returncode == 0, stale.stderr
    [status] = json.loads(stale.stdout)
    assert status["drill_overdue"] == (f"newest passing drill {old.isoformat()} is 100d 00h 00m "
                                       "old; the policy asks for one every 92d 00h 00m")
    assert len(receiver.got) == 2 and receiver.got[1][1]["message"] == \
        f"trading: {status['drill_overdue']}"

    # within the policy (--max-drill-age 101d): nothing said, nobody told
    kept = atb_inproc(*args, "--max-drill-age", "101d")
    assert kept.returncode == 0 and "DRILL OVERDUE" not in kept.stdout
    assert len(receiver.got) == 2

    # a receiver that is down: one warning, the same exit code, no token anywhere
    down = atb_inproc(*args[:-1], receiver.url("down/status"))
    assert down.returncode == 0
    assert TOKEN not in down.stdout + down.stderr
    assert f"notification to json://atb:***@127.0.0.1:{receiver.port}/down/status failed" \
        in down.stderr


def test_a_notification_url_apprise_cannot_read_stops_before_any_work(tmp_path: Path) -> None:
    done = atb_inproc("db", "status", "--backup-dir", str(tmp_path / "none"),
                      "--notify", f"nosuchservice://{TOKEN}@host/x")
    assert (done.returncode, done.stderr) == (
        2, "atb: error: --notify nosuchservice://***: not a notification URL apprise "
           "understands (see https://github.com/caronc/apprise/wiki)\n")
