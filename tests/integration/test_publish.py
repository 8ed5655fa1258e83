"""`atb audit publish` against a real git server started here: `git http-backend` behind a
small HTTP server on 127.0.0.1 that asks for a password (Basic auth), as GitHub and GitLab
wikis do over https."""

from __future__ import annotations

import base64
import json
import os
import random
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from drills import report
from drills.result import (
    AlembicFacts,
    BackupFacts,
    CheckRecord,
    DrillResult,
    PitrFacts,
    RpoFacts,
    RtoFacts,
    SandboxFacts,
)
from tests.helpers import ArgvSampler, atb_inproc

USER, PASSWORD = "auditor", "wiki-token-5f3a9c1e7b"
EVIL = "<img src=x onerror=alert(1)>|db"


@dataclass
class GitServer:
    """Bare repositories under `root`, served by `git http-backend`; `hold_clones` makes the
    next N clones wait for each other, so N publishers start from the same tip."""

    root: Path
    port: int = 0
    requests: list[str] = field(default_factory=list)
    hold_clones: threading.Barrier | None = None
    push_lock: threading.Lock = field(default_factory=threading.Lock)
    held: int = 0

    def url(self, repo: str, *, password: str = PASSWORD) -> str:
        return f"http://{USER}:{password}@127.0.0.1:{self.port}/{repo}"

    def repo(self, name: str, *, refuse: str = "") -> Path:
        path = self.root / name
        subprocess.run(["git", "init", "--quiet", "--bare", "--initial-branch=master",
                        str(path)], check=True)
        if refuse:
            hook = path / "hooks" / "pre-receive"
            hook.write_text(f"#!/bin/sh\necho '{refuse}' >&2\nexit 1\n")
            hook.chmod(0o755)
        return path

    def log(self, name: str) -> list[str]:
        """The wiki's history, oldest first: each commit and its parents."""
        out = subprocess.run(["git", f"--git-dir={self.root / name}", "log", "--reverse",
                              "--format=%H %P", "master"], capture_output=True, text=True,
                             check=True).stdout
        return out.splitlines()

    def show(self, name: str, path: str) -> str:
        return subprocess.run(["git", f"--git-dir={self.root / name}", "show", f"master:{path}"],
                              capture_output=True, text=True, check=True).stdout


def _handler(server: GitServer) -> type[BaseHTTPRequestHandler]:
    expected = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            return

        def do_GET(self) -> None:
            self._cgi()

        def do_POST(self) -> None:
            self._cgi()

        def _body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                data = b""
                while True:
                    size = int(self.rfile.readline().strip(), 16)
                    if size == 0:
                        self.rfile.readline()
                        return data
                    data += self.rfile.read(size)
                    self.rfile.readline()
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _cgi(self) -> None:
            server.requests.append(f"{self.command} {self.path} "
                                   f"auth={self.headers.get('Authorization') == expected}")
            if self.headers.get("Authorization") != expected:
                self.send_response(401)
                self.send_header("WWW-Authenticate", 'Basic realm="wiki"')
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            path, _, query = self.path.partition("?")
            body = self._body()
            barrier = server.hold_clones
            if query == "service=git-upload-pack" and barrier is not None:
                with server.push_lock:
                    server.held += 1
                    hold = server.held <= barrier.parties
                if hold:
                    barrier.wait()
            env = {"PATH": os.environ["PATH"], "GIT_PROJECT_ROOT": str(server.root),
                   "GIT_HTTP_EXPORT_ALL": "1", "PATH_INFO": path, "QUERY_STRING": query,
                   "REQUEST_METHOD": self.command, "REMOTE_USER": USER,
                   "REMOTE_ADDR": "127.0.0.1", "CONTENT_LENGTH": str(len(body)),
                   "CONTENT_TYPE": self.headers.get("Content-Type", ""),
                   "HTTP_CONTENT_ENCODING": self.headers.get("Content-Encoding", ""),
                   "GIT_PROTOCOL": self.headers.get("Git-Protocol", "")}
            pushing = path.endswith("/git-receive-pack")
            if pushing:
                server.push_lock.acquire()
            try:
                out = subprocess.run(["git", "http-backend"], input=body, env=env,
                                     capture_output=True, check=False).stdout
            finally:
                if pushing:
                    server.push_lock.release()
            head, payload = cgi_split(out)
            headers = [ln.split(b":", 1) for ln in head.splitlines() if b":" in ln]
            status = next((int(v.split()[0]) for k, v in headers if k.lower() == b"status"),
                          200)
            self.send_response(status)
            for k, v in headers:
                if k.lower() != b"status":
                    self.send_header(k.decode(), v.strip().decode())
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

    return Handler


def cgi_split(out: bytes) -> tuple[bytes, bytes]:
    """A CGI program's output as (its header lines, its body byte for byte): the headers end
    at the first blank line, however their lines end. (Line ends were once rewritten over the
    whole output: a pack whose compressed bytes held CR LF came out corrupt, and a publisher
    racing another failed to fetch the other's commit: exit 11, once in CI.)"""
    ends = [(i, len(sep)) for sep in (b"\r\n\r\n", b"\n\n") for i in [out.find(sep)] if i >= 0]
    if not ends:
        return out, b""
    at, size = min(ends)
    return out[:at].replace(b"\r\n", b"\n"), out[at + size:]


@contextmanager
def serve_git(root: Path) -> Iterator[GitServer]:
    """A git server over HTTP on 127.0.0.1 for the repositories under `root`."""
    server = GitServer(root)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(server))
    server.port = httpd.server_address[1]
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture(scope="module")
def git_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GitServer]:
    with serve_git(tmp_path_factory.mktemp("git-server")) as server:
        yield server


def make_drill(report_dir: Path, database: str, started: datetime, *, verdict: str = "PASS",
               pitr: bool = False) -> DrillResult:
    """A drill's reports as `atb drill run` writes them (JSON and Markdown by its renderer, an
    HTML file beside them), for the wiki to take."""
    from backup_core.store.naming import dir_name

    stem = report_dir / dir_name(database) / f"{started:%Y%m%dT%H%M%SZ}-drill"
    result = DrillResult(
        verdict=verdict, database=database, started_at=started.isoformat(),
        finished_at=(started + timedelta(seconds=42)).isoformat(), seed=7,
        backup=BackupFacts(path=f"/backups/{database}.dump", taken_at="2026-11-29T20:00:00Z"),
        sandbox=SandboxFacts(provider="local", server_version="15.14"),
        alembic=AlembicFacts(before="0001", after="0005"),
        rto=RtoFacts(target_s=3600, measured_s=12.5, met=True),
        rpo=RpoFacts(target_s=900, largest_gap_s=3600),
        integration=None, not_run={},
        checks=(CheckRecord(name="test_indexes_are_valid", title="Indexes are valid",
                            outcome="passed" if verdict == "PASS" else "failed",
                            message="" if verdict == "PASS" else "index `<b>` is invalid"),),
        findings=(), options={},
        pitr=PitrFacts(stanza="main", data_loss_s=75.0) if pitr else None,
        reports={"html": f"{stem}.html", "json": f"{stem}.json", "md": f"{stem}.md"})
    stem.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{stem}.html").write_text(f"<html><body>Verdict: {verdict}</body></html>\n")
    report.write_reports(result)
    return result


def publish(url: str, report_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return atb_inproc("audit", "publish", "--json", "--report-dir", str(report_dir), *args,
                      env={"ATB_WIKI_URL": url})


def test_publish_twice_adds_a_page_and_keeps_history(git_server: GitServer,
                                                     tmp_path: Path) -> None:
    git_server.repo("twice.wiki.git")
    reports = tmp_path / "reports"
    t0 = datetime(2026, 11, 29, 20, 0, tzinfo=UTC)
    make_drill(reports, "trading", t0)
    (reports / "ledger.ndjson").write_text('{"seq": 1}\n')

    first = publish(git_server.url("twice.wiki.git"), reports)
    assert first.returncode == 0, first.stderr
    done = json.loads(first.stdout)
    assert done["attempts"] == 1 and done["branch"] == "master"
    page = "restore-drills/trading/20261129T200000Z-drill"
    assert sorted(done["files"]) == sorted(
        ["Restore-drills.md", f"{page}.md", f"{page}.html", f"{page}.json",
         "restore-drills/ledger-" + _ledger_id('{"seq": 1}') + ".ndjson"])
    # the page is the report byte for byte: its hash still matches the ledger's
    assert git_server.show("twice.wiki.git", f"{page}.md") == \
        (reports / "trading" / "20261129T200000Z-drill.md").read_text()

    again = publish(git_server.url("twice.wiki.git"), reports)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["commit"] is None  # nothing new: no empty commit

    make_drill(reports, EVIL, t0 + timedelta(days=1), verdict="FAIL", pitr=True)
    (reports / "ledger.ndjson").write_text('{"seq": 1}\n{"seq": 2}\n')
    second = publish(git_server.url("twice.wiki.git"), reports)
    assert second.returncode == 0, second.stderr
    log = git_server.log("twice.wiki.git")
    assert len(log) == 2 and log[1].split()[1] == log[0].split()[0]  # a child of the first
    index = git_server.show("twice.wiki.git", "Restore-drills.md")
    rows = [ln for ln in index.splitlines() if ln.startswith("| 2026")]
    assert rows == [
        "| 2026-11-30 20:00 | &lt;img src=x onerror=alert(1)>\\|db | **FAIL** | "
        "12s (met) | 1m 15s | [page](restore-drills/%253Cimg%2520src%253Dx%2520onerror%253D"
        "alert%25281%2529%253E%257Cdb/20261130T200000Z-drill) · [HTML](restore-drills/%253Cimg"
        "%2520src%253Dx%2520onerror%253Dalert%25281%2529%253E%257Cdb/20261130T200000Z-drill"
        ".html) |",
        "| 2026-11-29 20:00 | trading | **PASS** | 12s (met) | up to 1h 00m | "
        f"[page]({page}) · [HTML]({page}.html) |"]
    # the same ledger, longer: one page, replaced, not a second one
    ledger = "restore-drills/ledger-" + _ledger_id('{"seq": 1}') + ".ndjson"
    assert git_server.show("twice.wiki.git", ledger) == '{"seq": 1}\n{"seq": 2}\n'
    assert f"[{ledger.rsplit('/', 1)[1]}]({ledger})" in index


def _ledger_id(first: str) -> str:
    import hashlib

    return hashlib.sha256(first.encode()).hexdigest()[:12]


def test_the_git_server_serves_a_pack_byte_for_byte(git_server: GitServer,
                                                    tmp_path: Path) -> None:
    """The server these tests publish to hands git's packs over whole: a clone of a wiki
    holding bytes that compress to CR LF pairs (it failed: `invalid index-pack output`)."""
    bare = git_server.repo("binary.wiki.git")
    work = tmp_path / "work"
    subprocess.run(["git", "init", "--quiet", "--initial-branch=master", str(work)], check=True)
    data = random.Random(7).randbytes(200_000)
    (work / "blob.bin").write_bytes(data)
    who = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    for argv in (["add", "blob.bin"], ["commit", "--quiet", "-m", "blob"],
                 ["push", "--quiet", str(bare), "HEAD:master"]):
        subprocess.run(["git", "-C", str(work), *argv], check=True, env={**os.environ, **who})
    clone = subprocess.run(["git", "clone", "--quiet", git_server.url("binary.wiki.git"),
                            str(tmp_path / "clone")], capture_output=True, text=True,
                           check=False)
    assert (clone.returncode, clone.stderr) == (0, "")
    assert (tmp_path / "clone" / "blob.bin").read_bytes() == data


def test_two_publishers_at_once_both_land_on_a_linear_history(git_server: GitServer,
                                                              tmp_path: Path) -> None:
    """Two hosts publish at once (both clone the same tip before either pushes), as child
    processes logging every git argv: both drills land, the history stays linear, and the
    wiki's password is on no command line and in no log line."""
    git_server.repo("race.wiki.git")
    a, b = tmp_path / "host-a", tmp_path / "host-b"
    t0 = datetime(2026, 11, 29, 21, 0, tzinfo=UTC)
    make_drill(a, "trading", t0)
    make_drill(b, "billing", t0 + timedelta(minutes=5))
    git_server.held, git_server.hold_clones = 0, threading.Barrier(2, timeout=60)
    env = {**os.environ, "ATB_WIKI_URL": git_server.url("race.wiki.git")}
    try:
        with ArgvSampler() as ps:
            procs = [subprocess.Popen(
                [*atb_argv(), "-v", "audit", "publish", "--json", "--report-dir", str(d)],
                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                for d in (a, b)]
            outs = [p.communicate(timeout=120) for p in procs]
    finally:
        git_server.hold_clones = None
    # what went wrong, whole: the error line ends a long debug log (it was cut before it)
    assert [p.returncode for p in procs] == [0, 0], [err.splitlines()[-3:] for _, err in outs]
    attempts = sorted(json.loads(out)["attempts"] for out, _ in outs)
    assert attempts == [1, 2]  # one push lost the race and was redone from the new tip
    log = git_server.log("race.wiki.git")
    assert len(log) == 2 and len(log[0].split()) == 1  # the first: a root commit
    assert log[1].split()[1:] == [log[0].split()[0]]  # linear: one parent, the first
    index = git_server.show("race.wiki.git", "Restore-drills.md")
    assert "| trading |" in index and "| billing |" in index and "2 drills" in index
    logs = "".join(err for _, err in outs)
    assert ("run git -c core.hooksPath=/dev/null -c core.symlinks=false push --porcelain "
            "origin HEAD:refs/heads/master") in logs
    assert PASSWORD not in logs + "".join(out for out, _ in outs)
    assert any(b"git-remote-http" in c for c in ps.seen)  # sampled while git ran
    assert ps.leaked(PASSWORD) == []
    assert "POST /race.wiki.git/git-receive-pack auth=True" in git_server.requests


def atb_argv() -> list[str]:
    import sys

    return [sys.executable, "-m", "drills.cli"]


def test_a_refused_push_is_one_line_exit_11_and_leaves_nothing(git_server: GitServer,
                                                               tmp_path: Path) -> None:
    git_server.repo("locked.wiki.git", refuse="wiki is frozen for the audit")
    reports = tmp_path / "reports"
    make_drill(reports, "trading", datetime(2026, 11, 29, 22, 0, tzinfo=UTC))
    before = {p: p.read_bytes() for p in reports.rglob("*") if p.is_file()}
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    done = atb_inproc("audit", "publish", "--report-dir", str(reports),
                      env={"ATB_WIKI_URL": git_server.url("locked.wiki.git"),
                           "TMPDIR": str(scratch)})
    assert done.returncode == 11
    assert done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith(
        f"atb: error: the wiki http://{USER}@127.0.0.1:{git_server.port}/locked.wiki.git "
        "refused the push: [remote rejected] (pre-receive hook declined) (the wiki said: "
        "wiki is frozen for the audit); nothing was published"), done.stderr
    assert {p: p.read_bytes() for p in reports.rglob("*") if p.is_file()} == before
    assert list(scratch.iterdir()) == []  # the clone is gone
    refs = subprocess.run(["git", f"--git-dir={git_server.root / 'locked.wiki.git'}",
                           "for-each-ref"],
                          capture_output=True, text=True, check=True).stdout
    assert refs == ""


def test_a_wrong_password_and_no_wiki_are_one_line_each(git_server: GitServer,
                                                        tmp_path: Path) -> None:
    git_server.repo("guarded.wiki.git")
    reports = tmp_path / "reports"
    make_drill(reports, "trading", datetime(2026, 11, 29, 23, 0, tzinfo=UTC))
    wrong = publish(git_server.url("guarded.wiki.git", password="not-the-token-0000"), reports)
    assert wrong.returncode == 11
    assert wrong.stderr.startswith(
        f"atb: error: cannot read the wiki http://{USER}@127.0.0.1:{git_server.port}/"
        "guarded.wiki.git: "), wrong.stderr
    assert "not-the-token-0000" not in wrong.stderr
    none = atb_inproc("audit", "publish", "--report-dir", str(reports))
    assert (none.returncode, none.stderr) == (
        2, "atb: error: no wiki given: pass --wiki URL or set ATB_WIKI_URL\n")
    # a drill that would publish nowhere does not start
    drill = atb_inproc("drill", "run", "--publish", "--backup", str(tmp_path / "none.dump"),
                       "--report-dir", str(tmp_path / "drill-reports"))
    assert (drill.returncode, drill.stderr) == (
        2, "atb: error: no wiki given: pass --wiki URL or set ATB_WIKI_URL\n")
    assert not (tmp_path / "drill-reports").exists()


def test_a_link_planted_in_the_wiki_is_never_written_through(git_server: GitServer,
                                                             tmp_path: Path) -> None:
    """Someone with write access to the wiki commits `restore-drills` as a link to a
    directory of the publishing host: atb checks it out as a plain file and refuses."""
    bare = git_server.repo("planted.wiki.git")
    outside = tmp_path / "outside"
    outside.mkdir()
    work = tmp_path / "attacker"
    subprocess.run(["git", "init", "--quiet", "--initial-branch=master", str(work)], check=True)
    (work / "restore-drills").symlink_to(outside)
    git = ["git", "-c", "user.name=x", "-c", "user.email=x@x"]
    subprocess.run([*git, "add", "restore-drills"], check=True, cwd=work)
    subprocess.run([*git, "commit", "--quiet", "-m", "link"], check=True, cwd=work)
    subprocess.run([*git, "push", "--quiet", str(bare), "master"], check=True, cwd=work)
    reports = tmp_path / "reports"
    make_drill(reports, "trading", datetime(2026, 11, 27, 9, 0, tzinfo=UTC))
    done = publish(git_server.url("planted.wiki.git"), reports)
    assert done.returncode == 11
    assert done.stderr == ("atb: error: the wiki holds restore-drills as a link or a file "
                           "where atb keeps a directory: it writes through neither; nothing "
                           "was published\n")
    assert list(outside.iterdir()) == []
    assert len(git_server.log("planted.wiki.git")) == 1
