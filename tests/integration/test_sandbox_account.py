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
from backup_core.tools.errors import SafetyRefusal
from drills import sandbox
from tests.conftest import make_database
from tests.helpers import atb_inproc, copy_backup, drill

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


def attempts_script(tmp_path: Path, productions_file: Path) -> Path:
    """The integration command: `ATTEMPTS` run against `productions_file` as the sandbox's
    superuser reaches it."""
    script = tmp_path / "integration.sh"
    (tmp_path / "attempts.py").write_text(ATTEMPTS)
    script.write_text(f"#!/bin/sh\nexec {sys.executable} {tmp_path / 'attempts.py'} "
                      f"{productions_file}\n")
    script.chmod(0o755)
    return script


def denied(path: Path, how: str) -> str:
    return f'42501 could not open file "{path}" for {how}: Permission denied'


def test_a_dump_drills_superuser_runs_as_the_dedicated_account_and_cannot_touch_postgress_files(
        dump: Path, pg15: Cluster, productions_file: Path, tmp_path: Path) -> None:
    """The drill's integration command, as the sandbox's superuser: `COPY FROM PROGRAM 'id -un'`
    names the dedicated account, not `postgres`; reading the file (`pg_read_file`), writing
    it (`COPY TO`) and appending to it by a program are each refused by the host, and the
    file is unchanged. Production's own server (`postgres`) reads it: the file is the kind a
    sandbox run as `postgres` would have reached. `ATB_PG_USER=postgres`, as a host that also
    runs point-in-time drills sets it, does not bring it back: that is the other clusters'."""
    with db.connect(pg15.url(), autocommit=True) as conn:
        assert conn.execute("SELECT pg_read_file(%s)", (str(productions_file),)).fetchone() \
            == (SECRET,)
    script = attempts_script(tmp_path, productions_file)
    done, result = drill("--backup", str(dump), "--no-record", "--integration-cmd", str(script),
                         backup_dir=dump.parents[4], report_dir=tmp_path / "reports",
                         env={"ATB_PG_USER": "postgres", "ATB_SANDBOX_USER": ""})
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


def test_atb_sandbox_user_reaches_the_drills_child_and_its_early_sandbox(
        dump: Path, productions_file: Path, tmp_path: Path) -> None:
    """`ATB_SANDBOX_USER` names the account in `atb drill run` and in its drill child alike:
    the copy made while the child starts and the sandbox it runs are that account's (a
    variable the child did not see would make it the default account's)."""
    other = "nobody" if DEDICATED == "atb-sandbox" else DEDICATED
    script = attempts_script(tmp_path, productions_file)
    done, result = drill("--backup", str(dump), "--no-record", "--integration-cmd", str(script),
                         backup_dir=dump.parents[4], report_dir=tmp_path / "reports",
                         env={"ATB_SANDBOX_USER": other})
    assert result, done.stderr
    assert result["integration"]["output_tail"].splitlines()[:2] == [
        f"ACCOUNT {other}", f"READ {denied(productions_file, 'reading')}"]
    assert productions_file.read_text() == SECRET


def test_without_atb_sandbox_the_sandbox_runs_as_nobody(
        chain18: toolchain.Toolchain, productions_file: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The fallback on a host without `atb-sandbox` (its name changed to one no host has):
    the server, its data directory and its socket directory are `nobody`'s, and it reads no
    file of `postgres`'s either."""
    monkeypatch.setattr(cluster, "SANDBOX_ACCOUNT", "atb-sandbox-absent")
    monkeypatch.delenv("ATB_SANDBOX_USER", raising=False)
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
    """`ATB_SANDBOX_USER` naming no account is the user's typo, not `postgres`: refused before
    the drill starts (no report written), by `atb drill run` and `pytest --drill` alike, and
    `doctor` says the same with exit 2, on stdout and in one line on stderr."""
    env = {"ATB_SANDBOX_USER": "atb-no-such"}
    done, _ = drill("--backup", str(dump), "--no-record", backup_dir=dump.parents[4],
                    report_dir=tmp_path / "reports", env=env)
    said = "ATB_SANDBOX_USER=atb-no-such: no such account on this host"
    assert (done.returncode, done.stdout, done.stderr) == (2, "", f"atb: error: {said}\n")
    assert not (tmp_path / "reports").exists()
    direct = subprocess.run(  # `pytest --drill`: pytest's usage error, before any report
        [sys.executable, "-m", "pytest", "--drill", "--backup", str(dump), "--sandbox",
         "local", "--report-dir", str(tmp_path / "reports"), "-p", "no:cacheprovider"],
        cwd=tmp_path, env={**os.environ, **env}, capture_output=True,
        text=True, timeout=120, check=False)
    assert (direct.returncode, direct.stderr.strip()) == (4, f"ERROR: {said}")
    assert not (tmp_path / "reports").exists()
    doctor = atb_inproc("doctor", env=env)
    line = f"dump drills' local sandbox server: refused: {said}"
    assert (doctor.returncode, doctor.stderr) == (2, f"atb: error: {line}\n")
    assert line in doctor.stdout.splitlines()


def fix(account: str) -> str:
    """What a refusal of the default account tells the administrator to do."""
    if account == "atb-sandbox":
        return "give atb-sandbox a uid and group of its own, or set ATB_SANDBOX_USER"
    return f"create atb-sandbox ({cluster.SETUP_HINT}), or set ATB_SANDBOX_USER"


def test_an_account_owning_the_backups_or_postgress_is_refused_whoever_chose_it(
        dump: Path, tmp_path: Path) -> None:
    """The backups' tree owned by the dedicated account (its server could change what the
    drill reads), and `ATB_SANDBOX_USER=postgres` (the user's choice, production's
    account): each refused in one line, exit 2, before anything starts."""
    tree = tmp_path / "backups"
    backup = copy_backup(dump, tree)
    shutil.chown(tree, DEDICATED, None)
    uid = pwd.getpwnam(DEDICATED).pw_uid
    done, _ = drill("--backup", str(backup), "--no-record", backup_dir=tree,
                    report_dir=tmp_path / "reports", env={"ATB_SANDBOX_USER": ""})
    assert (done.returncode, done.stdout, done.stderr) == (
        2, "", f"atb: error: refusing {DEDICATED} for the drill's sandbox server: its uid {uid} "
        f"is that of the owner of the backups in {tree}; {fix(DEDICATED)}\n")
    done, _ = drill("--backup", str(dump), "--no-record", backup_dir=dump.parents[4],
                    report_dir=tmp_path / "reports", env={"ATB_SANDBOX_USER": "postgres"})
    postgres = pwd.getpwnam("postgres").pw_uid
    assert (done.returncode, done.stdout, done.stderr) == (
        2, "", f"atb: error: refusing postgres for the drill's sandbox server: its uid "
        f"{postgres} is that of postgres, which owns production's data and pgBackRest's "
        "repository; set ATB_SANDBOX_USER to an account that owns nothing of production "
        f"(e.g. atb-sandbox: {cluster.SETUP_HINT})\n")
    assert not (tmp_path / "reports").exists()


def test_doctor_says_who_runs_each_drills_sandbox_and_why() -> None:
    env = {"ATB_PG_USER": "", "ATB_SANDBOX_USER": ""}
    done = atb_inproc("doctor", "--json", env=env)
    assert done.returncode == 0, done.stderr
    why = ("an account of atb's own that owns nothing of production" if DEDICATED
           == "atb-sandbox" else "the fallback: no atb-sandbox account exists (for an account "
           "of atb's own that owns nothing: useradd --system --no-create-home --shell "
           "/usr/sbin/nologin --user-group atb-sandbox)")
    server = "local sandbox server"
    assert json.loads(done.stdout)["sandbox_accounts"] == [
        {"drill": "dump", "role": server, "account": DEDICATED, "why": why, "refused": "",
         "unavailable": ""},
        {"drill": "point-in-time", "role": server, "account": DEDICATED, "why": why,
         "refused": "", "unavailable": ""},
        {"drill": "point-in-time", "role": "pgBackRest restore and WAL fetch",
         "account": "postgres", "refused": "", "why": "pgBackRest's repository and spool "
         "are its", "unavailable": ""}]
    text = atb_inproc("doctor", env=env).stdout.splitlines()
    assert text[-3:] == [f"dump drills' local sandbox server runs as {DEDICATED} ({why})",
                         f"point-in-time drills' local sandbox server runs as {DEDICATED} "
                         f"({why})",
                         "point-in-time drills' pgBackRest restore and WAL fetch runs as "
                         "postgres (pgBackRest's repository and spool are its)"]
    # ATB_PG_USER is the repository's reader's (and every other cluster's): a typo there is
    # refused too, where it was silently `postgres`; the dump sandbox's is unchanged
    typo = atb_inproc("doctor", env={**env, "ATB_PG_USER": "atb-no-such"})
    said = "ATB_PG_USER=atb-no-such: no such account on this host"
    assert (typo.returncode, typo.stderr) == (
        2, f"atb: error: point-in-time drills' local sandbox server: refused: {said}\n")
    assert typo.stdout.splitlines()[-3:] == [
        f"dump drills' local sandbox server runs as {DEDICATED} ({why})",
        f"point-in-time drills' local sandbox server: refused: {said}",
        f"point-in-time drills' pgBackRest restore and WAL fetch: refused: {said}"]
    # the repository's reader named as the point-in-time sandbox's account: refused
    same = atb_inproc("doctor", env={**env, "ATB_PG_USER": DEDICATED})
    uid = pwd.getpwnam(DEDICATED).pw_uid
    assert (same.returncode, same.stderr) == (
        2, f"atb: error: point-in-time drills' local sandbox server: refused: refusing "
        f"{DEDICATED} for the drill's sandbox server: its uid {uid} is that of {DEDICATED}, "
        f"which reads pgBackRest's repository for the drill (ATB_PG_USER); {fix(DEDICATED)}\n")


@pytest.mark.skipif(os.geteuid() != 0, reason="accounts are chosen only as root")
def test_doctor_on_a_host_with_no_reader_says_point_in_time_is_unavailable_not_refused(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """No `postgres`, no `atb-sandbox` (the embedded PostgreSQL only): reader and sandbox
    would both be `nobody`. No choice of the user's is wrong: doctor exits 0, and names
    ATB_PG_USER nowhere, since it is not set."""
    from backup_core.ops import survey

    real = cluster.os_account
    monkeypatch.setattr(cluster, "os_account",
                        lambda name: None if name in ("postgres", "atb-sandbox") else real(name))
    monkeypatch.delenv("ATB_PG_USER", raising=False)
    monkeypatch.delenv("ATB_SANDBOX_USER", raising=False)
    [dump, pitr, reader] = survey.sandbox_accounts()
    assert (dump.account, dump.refused, reader.account, reader.refused) == \
        ("nobody", "", "nobody", "")
    assert (pitr.account, pitr.refused) == (None, "")
    assert pitr.unavailable == (
        "no postgres account to read a pgBackRest repository here, and the fallback reader "
        f"is the sandbox's own account (refusing nobody for the drill's sandbox server: its "
        f"uid {pwd.getpwnam('nobody').pw_uid} is that of nobody, which reads pgBackRest's "
        f"repository for the drill; create atb-sandbox ({cluster.SETUP_HINT}), or set "
        "ATB_SANDBOX_USER)")
    done = atb_inproc("doctor", env={"ATB_PG_USER": "", "ATB_SANDBOX_USER": ""})
    assert (done.returncode, done.stderr) == (0, ""), done.stdout
    assert f"point-in-time drills' local sandbox server: unavailable: {pitr.unavailable}" \
        in done.stdout.splitlines()
    assert "ATB_PG_USER" not in done.stdout


def prepared_copy(marker: Path) -> Path:
    """The work directory `sandbox.preparing` copied, once its marker says where."""
    facts = cluster._await_marker(marker, timeout=60)
    assert facts is not None and "workdir" in facts, facts
    return Path(str(facts["workdir"]))


def data_directory(info: sandbox.SandboxInfo) -> tuple[str, str]:
    """Where the sandbox's server runs, and as whom (`COPY FROM PROGRAM 'id -un'`)."""
    with db.connect(info.url, autocommit=True) as conn:
        conn.execute("CREATE TABLE atb_who (name text)")
        conn.execute("COPY atb_who FROM PROGRAM 'id -un'")
        row = conn.execute("SELECT current_setting('data_directory'), name FROM atb_who"
                           ).fetchone()
    assert row is not None
    return str(row[0]), str(row[1])


def test_the_parents_prepared_copy_is_the_dedicated_accounts_and_adopted_for_it_alone(
        chain18: toolchain.Toolchain, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`atb drill run` copies the sandbox's data directory while its child starts
    (`sandbox.preparing`) for the account the child's sandbox will run as: the copy's facts
    name it, its data directory is that account's, and the child's sandbox runs on it; a
    child told another account (`ATB_SANDBOX_USER` changed in between) makes its own."""
    monkeypatch.delenv("ATB_SANDBOX_USER", raising=False)
    marker = tmp_path / "prepared.json"
    with sandbox.preparing(18, None, marker):
        workdir = prepared_copy(marker)
        assert json.loads(marker.read_text())["key"]["run_as"] == DEDICATED
        assert (workdir / "data").stat().st_uid == pwd.getpwnam(DEDICATED).pw_uid
        with sandbox._local(18, [chain18], prepared=marker) as info:
            assert data_directory(info) == (str(workdir / "data"), DEDICATED)
    cluster.await_removals()
    assert not workdir.exists()
    other = "nobody" if DEDICATED == "atb-sandbox" else None
    if other is None:  # no second account to change to on a host without atb-sandbox
        return
    again = tmp_path / "again.json"
    with sandbox.preparing(18, None, again):
        made = prepared_copy(again)
        monkeypatch.setenv("ATB_SANDBOX_USER", other)
        with sandbox._local(18, [chain18], prepared=again) as info:
            where, who = data_directory(info)
            assert (where != str(made / "data"), who) == (True, other)
        assert made.is_dir()  # not adopted: its maker removes it
    cluster.await_removals()
    assert not made.exists()


def test_no_account_but_the_servers_and_root_connects_to_an_unsealed_clusters_socket(
        chain15: toolchain.Toolchain) -> None:
    """Local connections are trusted, so whoever opens the socket is the superuser and runs
    `COPY ... TO PROGRAM` as the server's account (`postgres` for a point-in-time sandbox):
    the socket (0700, not PostgreSQL's 0777) and its directory (0700) are that account's.
    `nobody` is refused by the host; root and the server's own account (pgBackRest's
    clients) connect."""
    psql = chain15.tool("psql")
    with Cluster(chain15, destroy_mode="immediate") as server:  # as `pitr.recovered` makes it
        assert server.run_as == "postgres"
        sock = server.socket_dir / f".s.PGSQL.{server.port}"
        owner = pwd.getpwnam("postgres").pw_uid
        assert (server.socket_dir.stat().st_uid, server.socket_dir.stat().st_mode & 0o777) \
            == (owner, 0o700)
        assert (sock.stat().st_uid, sock.stat().st_mode & 0o777) == (owner, 0o700)

        def psql_as(*who: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [*who, psql, "-h", str(server.socket_dir), "-p", str(server.port), "-U",
                 server.superuser, "-d", "postgres", "-Atc", "SELECT current_user"],
                capture_output=True, text=True, cwd="/", timeout=60, check=False,
                env={"PATH": os.environ["PATH"]})

        nobody = psql_as("setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups")
        assert (nobody.returncode, nobody.stdout, nobody.stderr.splitlines()[0]) == (
            2, "", f'psql: error: connection to server on socket "{sock}" failed: '
            "Permission denied")
        for who in ((), ("setpriv", "--reuid=postgres", "--regid=postgres", "--clear-groups")):
            done = psql_as(*who)
            assert (done.returncode, done.stdout, done.stderr) == (0, "postgres\n", ""), who


def test_a_cluster_on_tcp_without_a_password_must_be_sealed(
        chain15: toolchain.Toolchain) -> None:
    """Without a password TCP clients are trusted: on the host's loopback that is any local
    account as superuser. Refused before anything is made."""
    open_one = Cluster(chain15, tcp=True)
    with pytest.raises(SafetyRefusal) as raised:
        open_one.start()
    assert (str(raised.value), raised.value.exit_code) == (
        "a local cluster listening on TCP without a password must be sealed in the drill's "
        "network namespace: any local account would connect to it as superuser", 8)
    assert open_one.workdir is None


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


class _Stop(Exception):
    pass


@pytest.mark.skipif(os.geteuid() != 0, reason="ownership is handed over only as root")
def test_a_populated_data_directory_is_ours_until_populate_hands_it_over(
        chain15: toolchain.Toolchain) -> None:
    """`pitr.recovered` fills it as the repository's reader, then gives it to the sandbox's
    account: before that it is never the sandbox's, so nothing of the server's account can
    write into a directory another account is filling."""
    seen: list[tuple[int, int, int]] = []

    def populate(datadir: Path, run_as: str | None) -> None:
        st = datadir.stat()
        seen.append((st.st_uid, st.st_gid, st.st_mode & 0o777))
        raise _Stop

    with pytest.raises(_Stop), Cluster(chain15, populate=populate, run_as=DEDICATED):
        pass
    assert seen == [(0, 0, 0o700)]
