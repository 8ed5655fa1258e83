"""Every command line atb builds, checked exactly, and the cluster's programs run through an
injected runner: nothing here starts a process."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pytest

from backup_core.ops import migrate, roles, split_copy
from backup_core.ops.backup import dump_argv
from backup_core.ops.restore import restore_argv
from backup_core.pitr import pgbackrest
from backup_core.tools import cluster, commands, toolchain
from backup_core.tools.compression import Compression
from backup_core.tools.conninfo import ConnInfo
from backup_core.tools.errors import CommandFailed, ToolchainError
from backup_core.tools.runner import Completed, run, spawn
from drills import demo
from drills.render import chromium_argv


class _AllTools(toolchain.Toolchain):
    def has(self, tool: str) -> bool:
        return True


PG = _AllTools(bindir=Path("/pg/15/bin"), version="15.4", source="test")
CONNINFO = ConnInfo.make(dbname="shop", host="db.example", user="backup",
                         password="s3cret-pw").conninfo


def test_pg_dump_argv_is_a_snapshot_dump_with_a_conninfo_and_no_password() -> None:
    assert dump_argv(PG, CONNINFO, "00000003-0000001B-1", Compression("gzip", 1)) == [
        "/pg/15/bin/pg_dump", "--format=custom", "--compress=1",
        "--snapshot=00000003-0000001B-1", "--no-password",
        "--dbname=dbname=shop host=db.example user=backup"]
    pg18 = _AllTools(bindir=Path("/pg/18/bin"), version="18.1", source="test")
    assert dump_argv(pg18, CONNINFO, "S", Compression("zstd", 1))[2] == "--compress=zstd:1"


def test_pg_restore_argv_exact_for_parallel_and_single_transaction() -> None:
    assert restore_argv(PG, Path("/b/x.dump"), CONNINFO, jobs=3, no_owner=True) == [
        "/pg/15/bin/pg_restore", "--dbname=dbname=shop host=db.example user=backup",
        "--no-password", "--exit-on-error", "--verbose", "--jobs=3", "--no-owner",
        "--no-privileges", "/b/x.dump"]
    assert restore_argv(PG, Path("/b/x.dump"), CONNINFO, jobs=3, no_owner=False,
                        single_transaction=True) == [
        "/pg/15/bin/pg_restore", "--dbname=dbname=shop host=db.example user=backup",
        "--no-password", "--exit-on-error", "--verbose", "--single-transaction", "/b/x.dump"]


def test_pg_restore_argv_exact_for_one_section_of_listed_entries() -> None:
    assert restore_argv(PG, Path("/b/x.dump"), CONNINFO, jobs=2, no_owner=True, section="data",
                        use_list=Path("/t/rest.list")) == [
        "/pg/15/bin/pg_restore", "--dbname=dbname=shop host=db.example user=backup",
        "--no-password", "--exit-on-error", "--verbose", "--jobs=2", "--no-owner",
        "--no-privileges", "--section=data", "--use-list=/t/rest.list", "/b/x.dump"]


def test_one_tables_data_as_copy_text_argv_exact() -> None:
    assert split_copy.table_data_argv(PG, Path("/b/x.dump"), Path("/t/one.list")) == [
        "/pg/15/bin/pg_restore", "--data-only", "--file=-", "--use-list=/t/one.list",
        "/b/x.dump"]


def test_pg_dumpall_roles_argv_puts_the_database_name_in_a_conninfo_of_its_own() -> None:
    assert roles.dump_argv(PG, CONNINFO, "my db") == [
        "/pg/15/bin/pg_dumpall", "--roles-only", "--no-role-passwords", "--no-password",
        "--dbname=dbname=shop host=db.example user=backup", "--database=dbname='my db'"]
    assert roles.dump_argv(PG, CONNINFO, "a=b")[-1] == "--database=dbname=a=b"  # libpq: a name


def test_pg_restore_list_read_waldump_and_amcheck_argv() -> None:
    assert commands.pg_restore_list_argv(PG, Path("/b/x.dump")) == [
        "/pg/15/bin/pg_restore", "--list", "/b/x.dump"]
    assert commands.pg_restore_read_argv(PG, Path("/b/x.dump")) == [
        "/pg/15/bin/pg_restore", "--file=/dev/null", "/b/x.dump"]
    assert commands.pg_restore_read_items_argv(PG, Path("/b/x.dump"), Path("/t/one")) == [
        "/pg/15/bin/pg_restore", "--file=/dev/null", "--use-list=/t/one", "/b/x.dump"]
    assert commands.pg_restore_stream_argv(PG, deep=False) == ["/pg/15/bin/pg_restore",
                                                                "--list"]
    assert commands.pg_restore_stream_argv(PG, deep=True) == ["/pg/15/bin/pg_restore",
                                                               "--file=/dev/null"]
    assert commands.pg_waldump_argv(PG, Path("/t/000000010000000000000003")) == [
        "/pg/15/bin/pg_waldump", "--rmgr=Transaction", "/t/000000010000000000000003"]
    assert commands.pg_amcheck_argv(PG, "dbname=shop host=/s") == [
        "/pg/15/bin/pg_amcheck", "--install-missing", "--no-password", "dbname=shop host=/s"]
    assert commands.pg_amcheck_argv(PG, "dbname=shop host=/s", jobs=2) == [
        "/pg/15/bin/pg_amcheck", "--install-missing", "--no-password", "--jobs=2",
        "dbname=shop host=/s"]
    assert commands.pg_amcheck_argv(PG, "dbname=shop host=/s", jobs=2, catalogs=False) == [
        "/pg/15/bin/pg_amcheck", "--install-missing", "--no-password",
        "--exclude-schema=information_schema",
        "--exclude-relation=pg_catalog.(pg_[^l]*|pg_l[^a]*|pg_la[^r]*)", "--jobs=2",
        "dbname=shop host=/s"]
    assert toolchain.version_argv("/pg/15/bin/pg_dump") == ["/pg/15/bin/pg_dump", "--version"]
    assert commands.pg_dump_schema_argv(PG, "dbname=shop host=/s", Path("/t/s.dump")) == [
        "/pg/15/bin/pg_dump", "--format=custom", "--schema-only", "--no-password",
        "--file=/t/s.dump", "--dbname=dbname=shop host=/s"]


def test_initdb_argv_with_and_without_a_password_file() -> None:
    base = ["/pg/15/bin/initdb", "-D", "/w/data", "-U", "postgres", "--encoding=UTF8",
            "--locale=C", "--auth-local=trust", "--no-sync"]
    assert cluster.initdb_argv(PG, Path("/w/data"), superuser="postgres", pwfile=None) == [
        *base, "--auth-host=trust"]
    assert cluster.initdb_argv(PG, Path("/w/data"), superuser="postgres",
                               pwfile=Path("/w/pwfile")) == [
        *base, "--auth-host=scram-sha-256", "--pwfile=/w/pwfile"]
    assert cluster.initdb_argv(PG, Path("/w/data"), superuser="postgres", pwfile=None,
                               locale="en_US.utf8")[5:7] == ["--encoding=UTF8",
                                                             "--locale=en_US.utf8"]


def test_pg_ctl_start_and_stop_argv() -> None:
    assert cluster.pg_ctl_start_argv(PG, Path("/w/data"), logfile=Path("/w/server.log"),
                                     timeout=60) == [
        "/pg/15/bin/pg_ctl", "-D", "/w/data", "-l", "/w/server.log", "-w", "-t", "60", "start"]
    assert cluster.pg_ctl_stop_argv(PG, Path("/w/data"), mode="immediate") == [
        "/pg/15/bin/pg_ctl", "-D", "/w/data", "-m", "immediate", "-w", "-t", "30", "stop"]


def test_alembic_argv_carries_no_url() -> None:
    assert migrate.alembic_argv(Path("/app/alembic.ini"), "/venv/bin/python") == [
        "/venv/bin/python", "-c", migrate.CHILD.read_text(), "-c", "/app/alembic.ini",
        "upgrade", "head"]
    assert migrate.heads_argv(Path("/app/alembic.ini"), "/venv/bin/python") == [
        "/venv/bin/python", "-m", "alembic", "-c", "/app/alembic.ini", "heads"]
    assert demo.alembic_upgrade_argv(Path("/ex/alembic.ini"), "0003", python="/v/python") == [
        "/v/python", "-m", "alembic", "-c", "/ex/alembic.ini", "upgrade", "0003"]


def test_pgbackrest_argv_for_a_stanza_and_a_point_in_time_restore() -> None:
    stanza = pgbackrest.Stanza("main", Path("/etc/pgbackrest/pgbackrest.conf"))
    exe = "/usr/bin/pgbackrest"
    assert pgbackrest.stanza_argv(exe, stanza, "info", "--output=json") == [
        exe, "--config=/etc/pgbackrest/pgbackrest.conf", "--stanza=main",
        "--log-level-file=off", "info", "--output=json"]
    assert pgbackrest.stanza_argv(exe, pgbackrest.Stanza("x")) == [
        exe, "--stanza=x", "--log-level-file=off"]
    assert pgbackrest.stanza_argv(exe, None, "version") == [exe, "version"]
    at = datetime(2026, 11, 29, 20, 15, 0, tzinfo=UTC)
    argv = pgbackrest.restore_argv(exe, stanza, Path("/w/data dir"), target=at,
                                   backup="20261129-200000F", lock_dir=Path("/w/lock"),
                                   restore_command=pgbackrest.spool_restore_command(
                                       Path("/w/wal dir")))
    fetch = "cp '/w/wal dir'/%f \"%p\""
    assert argv == [
        exe, "--config=/etc/pgbackrest/pgbackrest.conf", "--stanza=main",
        "--log-level-file=off", "--pg1-path=/w/data dir", "--lock-path=/w/lock", "restore",
        "--set=20261129-200000F", "--type=time", "--target=2026-11-29T20:15:00+00:00",
        "--target-timeline=latest", "--target-action=promote", "--archive-mode=off",
        f"--recovery-option=restore_command={fetch}"]


def test_chromium_argv_is_headless_without_network_and_a_throwaway_profile() -> None:
    assert chromium_argv("/usr/bin/chromium", Path("/p"), Path("/r/report.html"),
                         "--dump-dom") == [
        "/usr/bin/chromium", "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-quic", "--user-data-dir=/p", "--dump-dom", "file:///r/report.html"]


@dataclass
class Recorder:
    """A runner that starts nothing: it records each call and plays initdb's one effect."""

    calls: list[tuple[str, list[str], str | None]] = field(default_factory=list)
    fail: str = ""

    def __call__(self, argv: Sequence[str], *, what: str, env: Mapping[str, str] | None = None,
                 check: bool = True, timeout: float | None = None, run_as: str | None = None,
                 cwd: Path | None = None) -> Completed:
        self.calls.append((what, list(argv), run_as))
        if what == "initdb":
            Path(argv[2]).mkdir(exist_ok=True)  # the cluster made it empty for initdb
        if what == self.fail:
            raise CommandFailed(f"{what} failed: boom", detail="boom")
        return Completed(tuple(argv), 0, "", "")


def test_cluster_runs_initdb_and_pg_ctl_through_the_injected_runner(tmp_path: Path) -> None:
    runner = Recorder()
    with cluster.Cluster(PG, base_dir=tmp_path, runner=runner, start_timeout=45) as c:
        assert c.workdir is not None
        work = c.workdir
        started = list(runner.calls)
    user = cluster.service_user()
    data = str(work / "data")
    expected = [
        ("initdb", cluster.initdb_argv(PG, work / "data", superuser="postgres", pwfile=None),
         user),
        ("pg_ctl start", ["/pg/15/bin/pg_ctl", "-D", data, "-l", str(work / "server.log"),
                          "-w", "-t", "45", "start"], user),
    ]
    if user:  # as root the server runs as the service user, once checked it can run postgres
        expected.insert(0, ("postgres --version", ["/pg/15/bin/postgres", "--version"], user))
    assert started == expected
    assert runner.calls[len(expected):] == [
        ("pg_ctl stop", ["/pg/15/bin/pg_ctl", "-D", data, "-m", "fast", "-w", "-t", "30",
                         "stop"], user)]
    assert not work.exists()


def test_a_cluster_whose_server_does_not_start_is_removed_and_says_why(tmp_path: Path) -> None:
    runner = Recorder(fail="pg_ctl start")
    with pytest.raises(CommandFailed) as caught, cluster.Cluster(PG, base_dir=tmp_path,
                                                                 runner=runner):
        pass
    # as root the log is made beforehand, the server's user's (it cannot create files in
    # the work directory): there, but empty
    log = "(empty server log)" if cluster.service_user() else "(no server log)"
    assert str(caught.value) == f"the throwaway PostgreSQL 15.4 server did not start: {log}"
    assert caught.value.detail == "boom"
    assert [what for what, _, _ in runner.calls][-1] == "pg_ctl start"  # never started: no stop
    assert os.listdir(tmp_path) == []


def test_server_conf_listens_on_loopback_or_nowhere_and_quotes_settings() -> None:
    assert cluster.server_conf(port=5432, tcp=False, socket_dir=Path("/w/sock"),
                               settings={"work_mem": "64MB", "fsync": "off"},
                               hba_file=None) == {
        "listen_addresses": "''", "port": "5432", "unix_socket_directories": "'/w/sock'",
        "logging_collector": "off", "max_connections": "50", "work_mem": "'64MB'",
        "fsync": "off", "unix_socket_permissions": "0700"}
    conf = cluster.server_conf(port=40001, tcp=True, socket_dir=Path("/w/sock"),
                               settings={"search_path": "it's"},
                               hba_file=Path("/w/data/pg_hba.conf"))
    assert conf["listen_addresses"] == "'127.0.0.1'"
    assert conf["search_path"] == "'it''s'"
    assert (conf["hba_file"], conf["ssl"]) == ("'/w/data/pg_hba.conf'", "off")


def test_a_missing_program_is_one_actionable_error_from_run_and_spawn() -> None:
    message = ("pg_dump: program /nowhere/pg_dump not found; install PostgreSQL client tools "
               "or set PG_BINDIR (see `atb doctor`)")
    with pytest.raises(ToolchainError) as ran:
        run(["/nowhere/pg_dump", "--version"], what="pg_dump")
    assert str(ran.value) == message
    with pytest.raises(ToolchainError) as spawned:
        spawn(["/nowhere/pg_dump"], what="pg_dump", stdout=subprocess.PIPE,
              stderr=subprocess.DEVNULL)
    assert str(spawned.value) == message
    assert ran.value.exit_code == spawned.value.exit_code == 3

