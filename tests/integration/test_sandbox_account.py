"""A dump drill's sandbox server runs as an account that owns nothing of production: what a
restored archive runs as its superuser (`COPY ... FROM/TO PROGRAM`, `pg_read_file`,
`COPY ... TO '/file'`) acts on the host as that account, and cannot read or change a file of
`postgres`'s, the stand-in for production's data directory and pgBackRest's repository."""

from __future__ import annotations

import dataclasses
import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from backup_core.ops.backup import create_backup
from backup_core.tools import cluster, db, reaper, toolchain
from backup_core.tools.cluster import Cluster, os_account
from drills import sandbox
from tests.conftest import make_database
from tests.helpers import atb_inproc, drill

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="as root only: a server not run by "
                                "root runs as the user who started it")
# the account a dump drill's sandbox runs as here: CI makes atb-sandbox (.ci/run)
DEDICATED = "atb-sandbox" if os_account("atb-sandbox") else "nobody"
SECRET = "production's data: postgres's alone\n"

# What a restored archive's superuser can do on the host, run by the integration command
# through the sandbox's superuser (its DATABASE_URL): who the server is, then the file.
ATTEMPTS = '''
import os, sys
import psycopg
from psycopg import sql

path = sys.argv[1]
with psycopg.connect(os.environ["DATABASE_URL"], autocommit=True) as conn:
    conn.execute("CREATE TABLE atb_who (name text)")
    conn.execute("COPY atb_who FROM PROGRAM 'id -un'")
    print("ACCOUNT", conn.execute("SELECT name FROM atb_who").fetchone()[0])
    attempts = {
        "READ": sql.SQL("SELECT pg_read_file({})").format(sql.Literal(path)),
        "WRITE": sql.SQL("COPY (SELECT 'overwritten') TO {}").format(sql.Literal(path)),
        "PROGRAM": sql.SQL("COPY (SELECT 'appended') TO PROGRAM {}").format(
            sql.Literal("cat >> " + path)),
    }
    for what, query in attempts.items():
        try:
            conn.execute(query)
            print(what, "done")
        except psycopg.Error as exc:
            print(what, exc.sqlstate, exc.diag.message_primary)
'''


@pytest.fixture(scope="module")
def dump(pg15: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One small backup for the module's drills."""
    info = make_database(pg15, rows=20)
    return create_backup(info, tmp_path_factory.mktemp("acct-backups")).path


@pytest.fixture
def productions_file() -> Iterator[Path]:
    """A file of `postgres`'s, mode 0600, in a directory anyone may pass through: as a file
    of production's data directory is to its server's account."""
    folder = Path(tempfile.mkdtemp(prefix="atb-acct-"))
    try:
        folder.chmod(0o755)
        path = folder / "production-data"
        path.write_text(SECRET)
        path.chmod(0o600)
        shutil.chown(path, "postgres", "postgres")
        yield path
    finally:
        shutil.rmtree(folder)


def denied(path: Path, how: str) -> str:
    return f'42501 could not open file "{path}" for {how}: Permission denied'


def test_a_dump_drills_superuser_runs_as_the_dedicated_account_and_cannot_touch_postgress_files(
        dump: Path, pg15: Cluster, productions_file: Path, tmp_path: Path) -> None:
    """The drill's integration command, as the sandbox's superuser: `COPY FROM PROGRAM 'id -un'`
    names the dedicated account, not `postgres`; reading the file (`pg_read_file`), writing
    it (`COPY TO`) and appending to it by a program are each refused by the host, and the
    file is unchanged. Production's own server (`postgres`) reads it: the file is the kind a
    sandbox run as `postgres` would have reached."""
    with db.connect(pg15.url(), autocommit=True) as conn:
        assert conn.execute("SELECT pg_read_file(%s)", (str(productions_file),)).fetchone() \
            == (SECRET,)
    script = tmp_path / "integration.sh"
    (tmp_path / "attempts.py").write_text(ATTEMPTS)
    script.write_text(f"#!/bin/sh\nexec {sys.executable} {tmp_path / 'attempts.py'} "
                      f"{productions_file}\n")
    script.chmod(0o755)
    done, result = drill("--backup", str(dump), "--no-record", "--integration-cmd", str(script),
                         backup_dir=dump.parents[4], report_dir=tmp_path / "reports")
    assert result, done.stderr
    assert result["sandbox"]["provider"] == "local"
    assert result["integration"]["output_tail"].splitlines() == [
        f"ACCOUNT {DEDICATED}",
        f"READ {denied(productions_file, 'reading')}",
        f"WRITE {denied(productions_file, 'writing')}",
        f'PROGRAM 38000 program "cat >> {productions_file}" failed']
    assert productions_file.read_text() == SECRET
    st = productions_file.stat()
    assert (pwd.getpwuid(st.st_uid).pw_name, st.st_mode & 0o777) == ("postgres", 0o600)


def test_without_atb_sandbox_the_sandbox_runs_as_nobody(
        chain18: toolchain.Toolchain, productions_file: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The fallback on a host without `atb-sandbox` (its name changed to one no host has):
    the server, its data directory and its socket directory are `nobody`'s, and it reads no
    file of `postgres`'s either."""
    monkeypatch.setattr(cluster, "SANDBOX_ACCOUNT", "atb-sandbox-absent")
    monkeypatch.delenv("ATB_PG_USER", raising=False)
    nobody = pwd.getpwnam("nobody").pw_uid
    with sandbox.open_sandbox("local", source_major=18, chains=[chain18]) as info:
        with db.connect(info.url, autocommit=True) as conn:
            conn.execute("CREATE TABLE atb_who (name text)")
            conn.execute("COPY atb_who FROM PROGRAM 'id -un'")
            assert conn.execute("SELECT name FROM atb_who").fetchone() == ("nobody",)
            row = conn.execute("SHOW data_directory").fetchone()
            assert row is not None
            datadir = Path(str(row[0]))
            with pytest.raises(psycopg.Error) as raised:
                conn.execute("SELECT pg_read_file(%s)", (str(productions_file),))
            assert (raised.value.sqlstate, raised.value.diag.message_primary) == (
                "42501", f'could not open file "{productions_file}" for reading: Permission '
                "denied")
        assert datadir.stat().st_uid == nobody
        assert (datadir.parent / "sock").stat().st_uid == nobody
        assert datadir.parent.stat().st_uid == 0 and datadir.parent.stat().st_mode & 0o777 \
            == 0o711
    assert productions_file.read_text() == SECRET


def test_an_account_a_dump_drill_refuses_is_one_line_and_exit_2_before_anything(
        dump: Path, tmp_path: Path) -> None:
    """`ATB_PG_USER` naming no account is the user's typo, not `postgres`: refused before the
    drill starts (no report written), by `atb drill run` and `pytest --drill` alike, and
    `doctor` says the same with exit 2."""
    done, _ = drill("--backup", str(dump), "--no-record", backup_dir=dump.parents[4],
                    report_dir=tmp_path / "reports", env={"ATB_PG_USER": "atb-no-such"})
    said = "ATB_PG_USER=atb-no-such: no such account on this host"
    assert (done.returncode, done.stdout, done.stderr) == (2, "", f"atb: error: {said}\n")
    assert not (tmp_path / "reports").exists()
    direct = subprocess.run(  # `pytest --drill`: pytest's usage error, before any report
        [sys.executable, "-m", "pytest", "--drill", "--backup", str(dump), "--sandbox",
         "local", "--report-dir", str(tmp_path / "reports"), "-p", "no:cacheprovider"],
        cwd=tmp_path, env={**os.environ, "ATB_PG_USER": "atb-no-such"}, capture_output=True,
        text=True, timeout=120, check=False)
    assert (direct.returncode, direct.stderr.strip()) == (4, f"ERROR: {said}")
    assert not (tmp_path / "reports").exists()
    doctor = atb_inproc("doctor", env={"ATB_PG_USER": "atb-no-such"})
    assert doctor.returncode == 2, doctor.stderr
    assert f"dump drills' local sandbox server: refused: {said}" in doctor.stdout.splitlines()


def test_doctor_says_who_runs_each_drills_sandbox_and_why() -> None:
    done = atb_inproc("doctor", "--json", env={"ATB_PG_USER": ""})
    assert done.returncode == 0, done.stderr
    why = ("an account of atb's own that owns nothing of production" if DEDICATED
           == "atb-sandbox" else "the fallback: no atb-sandbox account exists (for an account "
           "of atb's own that owns nothing: useradd --system --no-create-home --shell "
           "/usr/sbin/nologin --user-group atb-sandbox)")
    assert json.loads(done.stdout)["sandbox_accounts"] == [
        {"drill": "dump", "account": DEDICATED, "why": why, "refused": ""},
        {"drill": "point-in-time", "account": "postgres", "refused": "",
         "why": "pgBackRest's repository and spool are its: the restore and the server must "
                "read them"}]
    text = atb_inproc("doctor", env={"ATB_PG_USER": ""}).stdout.splitlines()
    assert text[-2:] == [f"dump drills' local sandbox server runs as {DEDICATED} ({why})",
                         "point-in-time drills' local sandbox server runs as postgres "
                         "(pgBackRest's repository and spool are its: the restore and the "
                         "server must read them)"]


def test_the_reaper_signals_no_process_but_one_of_the_sandbox_accounts(tmp_path: Path) -> None:
    """A killed drill's sandbox left a pid file its server's account wrote (so could the
    restored archive's `COPY ... TO PROGRAM`): naming a process of root's whose command line
    names the data directory, it makes the reaper (root) signal nothing; the directory is
    still removed."""
    registry = tmp_path / "registry"
    registry.mkdir(mode=0o700)
    workdir = Path(tempfile.mkdtemp(prefix=reaper.WORKDIR_PREFIX))
    datadir = workdir / "data"
    datadir.mkdir(mode=0o700)
    shutil.chown(datadir, DEDICATED, None)
    victim = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)",
                               str(datadir)])
    try:
        (datadir / "postmaster.pid").write_text(f"{victim.pid}\n{datadir}\n")
        gone = subprocess.Popen(["true"])
        gone.wait()
        owner = reaper.Owner(gone.pid, "0", socket.gethostname())
        (registry / f"{workdir.name}.json").write_text(json.dumps(
            {"workdir": str(workdir), "owner": dataclasses.asdict(owner)}))
        assert reaper.reap_local(registry) == [
            f"reaped the local sandbox of a drill that is gone (pid {gone.pid}): removed "
            f"{workdir}"]
        assert victim.poll() is None and not workdir.exists()
    finally:
        victim.kill()
        victim.wait()
        shutil.rmtree(workdir, ignore_errors=True)
