"""Bad input: one clear line on stderr, a documented exit code, no traceback, no secret."""

from __future__ import annotations

import os
import resource
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from backup_core.tools import toolchain
from backup_core.tools.cluster import Cluster
from backup_core.tools.conninfo import ConnInfo
from drills import cli
from tests.conftest import make_database
from tests.helpers import atb_inproc


def _one_line(done: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in done.stderr
    assert done.stderr.startswith("atb: error: ") and done.stderr.count("\n") == 1, done.stderr
    return done.stderr


@pytest.mark.fast  # starts nothing: refused before any server is needed
def test_unreachable_server(backup_dir: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    done = atb_inproc("db", "backup", env={"BACKUP_DIR": str(backup_dir),
                                    "DATABASE_URL": f"postgresql://u:pw@127.0.0.1:{port}/x"})
    assert done.returncode == 4
    assert "is the server running" in _one_line(done)


def test_wrong_password_is_reported_without_the_password(pg15: Cluster, backup_dir: Path) -> None:
    info = pg15.url().with_password("Wr0ng-S3cret-pw")
    done = atb_inproc("db", "backup", env={"BACKUP_DIR": str(backup_dir)}, url=info)
    assert done.returncode == 4
    line = _one_line(done)
    assert "password authentication failed" in line and "Wr0ng-S3cret-pw" not in line
    assert "postgresql://postgres:***@127.0.0.1" in line


def test_unknown_database(pg15: Cluster, backup_dir: Path) -> None:
    done = atb_inproc("db", "backup", env={"BACKUP_DIR": str(backup_dir)},
               url=pg15.url("no_such_db"))
    assert done.returncode == 4
    assert "does not exist" in _one_line(done)


@pytest.mark.fast  # starts nothing: refused before any server is needed
@pytest.mark.parametrize("url", ["mysql://u:pw@h/db", "postgresql://u:pw@h:notaport/db",
                                 "postgresql://u:pw@h"])
def test_malformed_url(url: str, backup_dir: Path) -> None:
    done = atb_inproc("db", "backup", env={"BACKUP_DIR": str(backup_dir), "DATABASE_URL": url})
    assert done.returncode == 2
    line = _one_line(done)
    assert ":pw@" not in line


def test_missing_binaries(pg15: Cluster, backup_dir: Path, monkeypatch: pytest.MonkeyPatch,
                          capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    monkeypatch.setattr(toolchain, "DEBIAN_ROOT", tmp_path / "none")
    monkeypatch.setattr(toolchain, "embedded_bindir", lambda: None)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv("DATABASE_URL", pg15.url().secret_url)
    with pytest.raises(SystemExit) as exit_:
        cli.main(["db", "backup", "--backup-dir", str(backup_dir)])
    assert exit_.value.code == 3
    err = capsys.readouterr().err
    assert err.startswith("atb: error: ") and "install pg_dump 15 or newer" in err


def test_unwritable_backup_dir(pg15: Cluster, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    done = atb_inproc("db", "backup", env={"BACKUP_DIR": str(blocker / "backups")}, url=pg15.url())
    assert done.returncode == 7
    assert "choose a writable BACKUP_DIR" in _one_line(done) or "cannot write" in done.stderr


def test_full_disk_leaves_no_partial_file(pg15: Cluster, backup_dir: Path) -> None:
    info = make_database(pg15, rows=50_000)
    env = {**os.environ, "DATABASE_URL": info.secret_url, "BACKUP_DIR": str(backup_dir)}

    def small_disk() -> None:  # the kernel refuses writes past 64 KiB: EFBIG, like ENOSPC
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))

    done = subprocess.run([sys.executable, "-m", "drills.cli", "db", "backup"], env=env,
                          capture_output=True, text=True, preexec_fn=small_disk, check=False)
    assert done.returncode == 7, done.stderr
    assert "no backup was written" in _one_line(done)
    assert not [p for p in backup_dir.rglob("*") if p.is_file() and p.name != ".lock"]


def test_no_password_on_any_argv_or_output(pg15: Cluster, backup_dir: Path,
                                           monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    info = make_database(pg15, rows=100)
    assert info.password
    seen: list[list[str]] = []
    real_init = subprocess.Popen.__init__

    def spy(self: subprocess.Popen[bytes], args: list[str], *a: object, **kw: object) -> None:
        seen.append([str(x) for x in args])
        real_init(self, args, *a, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(subprocess.Popen, "__init__", spy)
    monkeypatch.setenv("DATABASE_URL", info.secret_url)
    for args in (["-v", "db", "backup", "--backup-dir", str(backup_dir)],
                 ["-v", "db", "verify", "--latest", "--deep", "--backup-dir", str(backup_dir)],
                 ["-v", "db", "list", "--json", "--backup-dir", str(backup_dir)]):
        with pytest.raises(SystemExit) as exit_:
            cli.main(args)
        assert exit_.value.code == 0
    dump = next(backup_dir.rglob("*.dump"))
    target = info.with_dbname(info.dbname + "_r")
    monkeypatch.setenv("ATB_TARGET_URL", target.secret_url)
    with pytest.raises(SystemExit):
        cli.main(["-v", "db", "restore", str(dump)])
    out = capsys.readouterr()
    assert any("pg_dump" in a[0] for a in seen) and any("pg_restore" in a[0] for a in seen)
    for argv in seen:
        assert not any(info.password in a for a in argv), argv
    assert info.password not in out.out + out.err
    assert "run " in out.err  # debug logging of argv was on
    for f in backup_dir.rglob("*"):
        if f.is_file():
            assert info.password.encode() not in f.read_bytes()[:1_000_000]


def test_password_not_visible_in_proc_cmdline_of_pg_dump(pg15: Cluster,
                                                         backup_dir: Path) -> None:
    """What `ps` shows: read the running children's /proc/<pid>/cmdline."""
    info = make_database(pg15, rows=200_000)
    env = {**os.environ, "DATABASE_URL": info.secret_url, "BACKUP_DIR": str(backup_dir)}
    proc = subprocess.Popen([sys.executable, "-m", "drills.cli", "db", "backup"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cmdlines: list[bytes] = []
    while proc.poll() is None:
        for pid in os.listdir("/proc"):
            if pid.isdigit():
                try:
                    cmdlines.append(Path(f"/proc/{pid}/cmdline").read_bytes())
                except OSError:
                    continue
    assert proc.returncode == 0
    dumps = [c for c in cmdlines if b"pg_dump" in c and b"--snapshot" in c]
    assert dumps, "pg_dump was never seen running"
    assert all(info.password.encode() not in c for c in cmdlines)


@pytest.mark.fast  # starts nothing: refused before any server is needed
def test_conninfo_never_prints_the_password() -> None:
    info = ConnInfo.parse("postgresql://app:s%40cret@db.example:6432/trading?sslmode=require")
    assert info.password == "s@cret"
    for shown in (str(info), repr(info), info.redacted, info.libpq_url):
        assert "s@cret" not in shown and "s%40cret" not in shown
    assert info.libpq_url == "postgresql://app@db.example:6432/trading?sslmode=require"
