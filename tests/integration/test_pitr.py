"""Point-in-time drills against the real thing: Debian's pgBackRest 2.45 and PostgreSQL 15.

A session fixture makes a production cluster archiving into a throwaway pgBackRest repository,
migrates the example application into it, writes a heartbeat every second, takes a full
backup and keeps writing; the drills then recover copies of it to points in that history.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from backup_core.ops import heartbeat
from backup_core.pitr import pgbackrest, pitr
from backup_core.tools import db, toolchain
from backup_core.tools.cluster import Cluster, os_account, random_password, service_user
from backup_core.tools.conninfo import ConnInfo
from drills.demo import alembic_upgrade, example_dir, load_datagen
from tests.helpers import (
    atb_inproc,
    checks,
    drill,
    fingerprint,
    interrupt_drill,
    wait_archived,
)

EXAMPLE = example_dir()
STANZA = "trading"
BEAT_S = 1.0  # the heartbeat interval of this test's application
# the account a recovered copy's server runs as here: CI makes atb-sandbox (.ci/run)
DEDICATED = "atb-sandbox" if os_account("atb-sandbox") else "nobody"
# run by the drill's integration command against the recovered copy, as its superuser
AS_THE_COPY = """
import os, sys
import psycopg
with psycopg.connect(os.environ["DATABASE_URL"], autocommit=True) as conn:
    conn.execute("CREATE TEMP TABLE atb_who (name text)")
    conn.execute("COPY atb_who FROM PROGRAM 'id -un'")
    print("ACCOUNT", conn.execute("SELECT name FROM atb_who").fetchone()[0])
    try:
        conn.execute("SELECT pg_read_file(%s)", (sys.argv[1],))
        print("READ done")
    except psycopg.Error as exc:
        print("READ", exc.sqlstate, exc.diag.message_primary)
    restore = conn.execute("SHOW restore_command").fetchone()[0]
    print("RESTORE", restore)
    print("SPOOL", os.path.exists(restore.split()[1].rsplit("/", 1)[0]))
"""


@dataclass
class Production:
    cluster: Cluster
    url: ConnInfo
    config: Path
    repo: Path
    info: pgbackrest.StanzaInfo


def _pgbackrest(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    user = service_user()
    return subprocess.run(["pgbackrest", f"--config={config}", f"--stanza={STANZA}",
                           "--log-level-file=off", *args], capture_output=True, text=True,
                          check=False, user=user, timeout=300)


def _write_config(path: Path, repo: Path, cluster: Cluster) -> None:
    path.write_text(f"""[global]
repo1-path={repo}
repo1-retention-full=2
lock-path={path.parent / "lock"}
log-path={path.parent / "log"}
log-level-console=warn
start-fast=y
compress-type=gz

[{STANZA}]
pg1-path={cluster.datadir}
pg1-socket-path={cluster.socket_dir}
pg1-port={cluster.port}
pg1-user={cluster.superuser}
""")


@pytest.fixture(scope="module")
def production(chain15: toolchain.Toolchain) -> Iterator[Production]:
    if shutil.which("pgbackrest") is None:
        if os.environ.get("CI"):
            pytest.fail("pgbackrest is required in CI (see .ci/run)")
        pytest.skip("pgbackrest is not installed")
    work = Path(tempfile.mkdtemp(prefix="atb-test-pgbackrest-"))  # the server user reads it
    work.chmod(0o755)
    user = service_user()
    for sub in ("repo", "lock", "log"):
        (work / sub).mkdir()
        if user:
            shutil.chown(work / sub, user, pwd.getpwnam(user).pw_gid)
    config = work / "pgbackrest.conf"
    settings = {"wal_level": "replica", "archive_mode": "on",
                "archive_command": f"pgbackrest --config={config} --stanza={STANZA} "
                                   "archive-push %p"}
    with Cluster(chain15, password=random_password(), tcp=True, settings=settings) as cluster:
        _write_config(config, work / "repo", cluster)
        config.chmod(0o644)
        for step in (["stanza-create"], ["check"]):
            done = _pgbackrest(config, *step)
            assert done.returncode == 0, done.stderr + done.stdout
        with db.connect(cluster.url(), autocommit=True) as conn:
            conn.execute("CREATE DATABASE trading")
        url = cluster.url("trading")
        alembic_upgrade(url, "0003_order_index_status")  # the drill migrates on to head
        with db.connect(url) as conn:  # orders, trades and positions, as the app has them
            load_datagen().fill(conn, orders=200, start=datetime.now(UTC) - timedelta(days=1),
                                end=datetime.now(UTC))
            conn.commit()
        with db.connect(cluster.url(), autocommit=True) as conn:  # a segment a second
            conn.execute("ALTER SYSTEM SET archive_timeout = '1s'")
            conn.execute("SELECT pg_reload_conf()")

        stop = threading.Event()

        def beat() -> None:
            while not stop.is_set():
                heartbeat.insert_heartbeat(url)
                stop.wait(BEAT_S)

        beater = threading.Thread(target=beat, daemon=True)
        beater.start()
        try:
            time.sleep(3)
            done = _pgbackrest(config, "backup", "--type=full")
            assert done.returncode == 0, done.stderr + done.stdout
            time.sleep(12)  # keep writing after the backup: the window to recover into
        finally:
            stop.set()
            beater.join()
        with db.connect(cluster.url(), autocommit=True) as conn:  # quiet from here on
            conn.execute("ALTER SYSTEM RESET archive_timeout")
            conn.execute("SELECT pg_reload_conf()")
        wait_archived(url)
        info = pgbackrest.info(pgbackrest.Stanza(STANZA, config))
        assert len(info.backups) == 1 and info.wal_max is not None
        yield Production(cluster=cluster, url=url, config=config, repo=work / "repo",
                         info=info)
    shutil.rmtree(work, ignore_errors=True)


def _repo_listing(repo: Path) -> dict[str, int]:
    return {str(p.relative_to(repo)): p.stat().st_size for p in repo.rglob("*") if p.is_file()}


def _data_dir_state(cluster: Cluster) -> dict[str, object]:
    """What a restore into the stanza's own data directory would change."""
    data = cluster.datadir
    return {"postmaster.pid": (data / "postmaster.pid").read_bytes(),
            **{name: (data / name).read_bytes() for name in
               ("postgresql.conf", "postgresql.auto.conf", "pg_hba.conf", "PG_VERSION")},
            "signals": sorted(p.name for p in data.iterdir()
                              if p.name in ("recovery.signal", "standby.signal",
                                            "backup_label", "tablespace_map")),
            "identity": db.identity_of(cluster.url())}


def _pitr_drill(p: Production, tmp: Path, *args: str) -> tuple[subprocess.CompletedProcess[str],
                                                                dict]:
    return drill("--source", "pgbackrest", "--stanza", STANZA, "--pgbackrest-config",
                 str(p.config), "--database", "trading", "--rpo-target", "30s",
                 "--alembic-config", str(EXAMPLE / "alembic.ini"), *args,
                 backup_dir=tmp / "no-dumps", report_dir=tmp / "reports", url=p.url)


def test_a_drill_to_a_random_time_passes_with_the_loss_measured(
        production: Production, tmp_path: Path) -> None:
    before_rows, before_dir = fingerprint(production.url), _data_dir_state(production.cluster)
    before_repo = _repo_listing(production.repo)
    integration = f"{sys.executable} -m pytest -q -p no:cacheprovider {EXAMPLE / 'tests'}"
    done, result = _pitr_drill(production, tmp_path, "--seed", "7", "--integration-cmd",
                               integration)
    assert done.returncode == 0, done.stdout + done.stderr
    assert result["verdict"] == "PASS"
    outcomes = checks(result)
    assert outcomes["test_recovery_reaches_the_target_time"] == "passed"
    assert outcomes["test_data_loss_is_within_the_rpo_target"] == "passed"
    assert outcomes["test_alembic_upgrade_head_reaches_the_script_head"] == "passed"
    assert outcomes["test_amcheck_finds_no_corruption"] == "passed"
    pitr = result["pitr"]
    target = datetime.fromisoformat(pitr["target"])
    backup = production.info.backups[0]
    assert backup.stopped <= target <= datetime.fromisoformat(pitr["window_end"])
    assert pitr["backup_label"] == backup.label and "seed 7" in pitr["target_choice"]
    assert 0 <= pitr["data_loss_s"] < BEAT_S + 0.5, pitr  # bounded by the interval
    newest = datetime.fromisoformat(pitr["newest_heartbeat"])
    assert newest <= target and pitr["recovered_to"] and pitr["wal_bytes"] > 0
    # whole segments (one timeline: no history file), at least those replayed
    assert pitr["wal_spool_bytes"] % pgbackrest.SEGMENT_BYTES == 0, pitr
    assert pitr["wal_spool_bytes"] >= pitr["wal_segments"] * pgbackrest.SEGMENT_BYTES > 0, pitr
    assert result["alembic"]["before"] == "0003_order_index_status" and \
        result["alembic"]["after"] == "0005_rename_balance_equity"
    assert {"restore files", "start", "WAL replay", "migrate", "checks"} <= \
        set(result["rto"]["phases"])
    assert result["rpo"]["met"] is True and "archiving current" in result["rpo"]["summary"]
    html = Path(result["reports"]["html"]).read_text()
    assert "measured data loss" in html and ": met" in html
    assert "MiB fetched beforehand)" in html
    # the same seed picks the same target; the copy's superuser (what the backup holds) acts
    # on the host as an account that owns nothing, not as the repository's reader: it
    # cannot read the repository, and its restore_command only copies from atb's spool
    script = tmp_path / "as-the-copy.py"
    script.write_text(AS_THE_COPY)
    repo_file = production.repo / "backup" / STANZA / "backup.info"
    again, replay = _pitr_drill(production, tmp_path / "again", "--seed", "7",
                                "--integration-cmd",
                                f"{sys.executable} {script} {repo_file}")
    assert replay["pitr"]["target"] == pitr["target"], again.stderr
    said = replay["integration"]["output_tail"].splitlines()
    assert said[:2] == [f"ACCOUNT {DEDICATED}", f'READ 42501 could not open file "{repo_file}" '
                        "for reading: Permission denied"], said
    assert said[2].startswith("RESTORE cp /") and said[2].endswith('/wal/%f "%p"'), said
    assert said[3] == "SPOOL False", said  # removed once the copy was promoted
    # the stanza's server, its data directory and its repository are as they were
    assert fingerprint(production.url) == before_rows
    assert _data_dir_state(production.cluster) == before_dir
    assert _repo_listing(production.repo) == before_repo
    assert not list((production.repo / "archive").rglob("????????.history")), \
        "a recovered copy pushed its new timeline into the stanza's archive"


def test_the_repositorys_reader_as_the_copys_account_is_refused_before_anything(
        production: Production, tmp_path: Path) -> None:
    """`ATB_SANDBOX_USER=postgres`: the copy's server would read the repository again. One
    line, exit 2, before anything is restored or a report written."""
    done, _ = drill("--source", "pgbackrest", "--stanza", STANZA, "--pgbackrest-config",
                    str(production.config), "--database", "trading",
                    backup_dir=tmp_path / "no-dumps", report_dir=tmp_path / "reports",
                    url=production.url, env={"ATB_SANDBOX_USER": "postgres"})
    uid = pwd.getpwnam("postgres").pw_uid
    assert (done.returncode, done.stdout, done.stderr) == (
        2, "", f"atb: error: refusing postgres for the drill's sandbox server: its uid {uid} is "
        "that of postgres, which reads pgBackRest's repository for the drill; set "
        "ATB_SANDBOX_USER to an account that owns nothing of production (e.g. atb-sandbox: "
        "useradd --system --no-create-home --shell /usr/sbin/nologin --user-group "
        "atb-sandbox)\n")
    assert not (tmp_path / "reports").exists()


def test_a_target_after_the_last_archived_wal_fails_clearly(
        production: Production, tmp_path: Path) -> None:
    late = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    done, result = _pitr_drill(production, tmp_path, "--target-time", late)
    assert done.returncode == 1 and result["verdict"] == "FAIL", done.stdout + done.stderr
    assert checks(result)["test_recovery_reaches_the_target_time"] == "failed"
    message = next(c["message"] for c in result["checks"]
                   if c["name"] == "test_recovery_reaches_the_target_time")
    assert "is after the last archived WAL" in message and late[:19] in message
    assert result["rto"]["measured_s"] is None


def _copy(p: Production, work: Path, *, repo: bool = False,
          pg1_path: Path | None = None) -> Production:
    """The stanza with its own config in `work`: a copy of the repository, or of pg1-path."""
    text = p.config.read_text()
    copy = p.repo
    if repo:
        copy = work / "repo"
        subprocess.run(["cp", "-a", str(p.repo), str(copy)], check=True)
        text = text.replace(str(p.repo), str(copy))
    if pg1_path is not None:
        text = text.replace(f"pg1-path={p.cluster.datadir}", f"pg1-path={pg1_path}")
    config = work / "pgbackrest.conf"
    config.write_text(text)
    config.chmod(0o644)
    return Production(p.cluster, p.url, config, copy, p.info)


def _newest_heartbeat(p: Production) -> str:
    """The newest heartbeat's commit: recovering to it needs every segment up to there."""
    with db.connect(p.url) as conn:
        newest = conn.execute("SELECT max(created_at) FROM system_events").fetchone()[0]
    return str(newest.isoformat())


def _recovery_message(result: dict) -> str:
    return str(next(c["message"] for c in result["checks"]
                    if c["name"] == "test_recovery_reaches_the_target_time"))


def test_a_missing_wal_segment_fails_the_drill_naming_it(
        production: Production, tmp_path: Path, sandbox_tmp: Path) -> None:
    """A copy of the repository with one segment gone from the middle of the window."""
    copy = _copy(production, sandbox_tmp, repo=True)
    backup = production.info.backups[0]
    missing = pgbackrest.next_segment(pgbackrest.next_segment(backup.wal_stop))
    assert production.info.wal_max is not None and missing < production.info.wal_max
    [segment_file] = list(copy.repo.rglob(f"{missing}-*"))
    segment_file.unlink()
    done, result = _pitr_drill(copy, tmp_path, "--target-time", _newest_heartbeat(production))
    assert done.returncode == 1 and result["verdict"] == "FAIL", done.stdout + done.stderr
    assert f"WAL segment {missing} is missing from the archive" in _recovery_message(result)
    assert result["pitr"]["failure"].startswith(f"WAL segment {missing}")


def test_a_corrupt_wal_segment_fails_naming_pgbackrests_error_not_missing(
        production: Production, tmp_path: Path, sandbox_tmp: Path) -> None:
    """archive-get failing otherwise than "not in the archive" (here a damaged file; a store
    unreachable or a wrong cipher pass alike) is not the end of the archive."""
    copy = _copy(production, sandbox_tmp, repo=True)
    damaged = pgbackrest.next_segment(production.info.backups[0].wal_stop)
    [segment_file] = list(copy.repo.rglob(f"{damaged}-*"))
    segment_file.write_bytes(b"not gzip" * 64)
    done, result = _pitr_drill(copy, tmp_path, "--target-time", _newest_heartbeat(production))
    assert done.returncode == 1 and result["verdict"] == "FAIL", done.stdout + done.stderr
    message = _recovery_message(result)
    assert f"could not fetch {damaged} from the archive: pgbackrest archive-get {damaged} " \
        "failed (exit " in message, message
    assert "ERROR: [" in message and "missing" not in message, message


def test_a_config_whose_pg1_path_holds_no_cluster_still_drills(
        production: Production, tmp_path: Path, sandbox_tmp: Path) -> None:
    """A dedicated restore host: the config's pg1-path has no pg_control. The WAL is fetched
    with the restored copy's pg_control, as its restore_command would."""
    elsewhere = sandbox_tmp / "no-cluster-here"
    elsewhere.mkdir()
    copy = _copy(production, sandbox_tmp, pg1_path=elsewhere)
    done, result = _pitr_drill(copy, tmp_path, "--target-time", _newest_heartbeat(production),
                               "--integration-cmd", "true")
    assert done.returncode == 0 and result["verdict"] == "PASS", done.stdout + done.stderr
    assert checks(result)["test_recovery_reaches_the_target_time"] == "passed"
    assert result["pitr"]["wal_bytes"] > 0


def test_status_watches_archiving_and_fails_when_it_stops(
        production: Production, tmp_path: Path) -> None:
    prom = tmp_path / "atb.prom"
    args = ("db", "status", "--stanza", STANZA, "--pgbackrest-config", str(production.config),
            "--backup-dir", str(tmp_path / "none"), "--rpo", "15m", "--prometheus", str(prom))
    wait_archived(production.url)
    ok = atb_inproc(*args, "--json", url=production.url)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    [stanza] = json.loads(ok.stdout)["stanzas"]
    assert stanza["ok"] and stanza["lag_s"] < 60 and stanza["window_s"] > 10
    metrics = prom.read_text()
    assert f'atb_wal_archive_lag_seconds{{stanza="{STANZA}"}}' in metrics
    assert f'atb_pitr_window_seconds{{stanza="{STANZA}"}}' in metrics
    assert production.url.password not in ok.stdout + ok.stderr + metrics
    with db.connect(production.cluster.url(), autocommit=True) as conn:
        conn.execute("ALTER SYSTEM SET archive_command = 'false'")
        conn.execute("SELECT pg_reload_conf()")
    try:
        time.sleep(0.5)
        with db.connect(production.url, autocommit=True) as conn:
            heartbeat.insert_heartbeat(production.url)
            conn.execute("SELECT pg_switch_wal()")
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                row = conn.execute("SELECT failed_count FROM pg_stat_archiver").fetchone()
                if row and row[0] > 0:
                    break
                time.sleep(0.2)
        stopped = atb_inproc(*args, url=production.url)
        assert stopped.returncode == 1, stopped.stdout + stopped.stderr
        assert "MISSED: archiving is failing" in stopped.stdout
        assert 'atb_wal_archive_targets_met{stanza="trading"} 0' in prom.read_text()
    finally:
        with db.connect(production.cluster.url(), autocommit=True) as conn:
            conn.execute("ALTER SYSTEM RESET archive_command")
            conn.execute("SELECT pg_reload_conf()")


def test_doctor_names_the_pgbackrest_found(production: Production) -> None:
    done = atb_inproc("doctor", "--json")
    found = json.loads(done.stdout)["pgbackrest"]
    assert found["found"].endswith(" 2.45") or found["found"].split()[-1] >= "2.45"
    assert found["supported_majors"][1] >= 15
    text = atb_inproc("doctor").stdout
    assert "pgbackrest: " in text and "supports PostgreSQL" in text


def test_an_unknown_stanza_is_refused_before_anything_starts(
        production: Production, tmp_path: Path) -> None:
    done = atb_inproc("drill", "run", "--source", "pgbackrest", "--stanza", "nosuch",
               "--pgbackrest-config", str(production.config), "--report-dir",
               str(tmp_path / "r"))
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.strip() == (f"atb: error: pgBackRest has no stanza 'nosuch' in "
                                   f"{production.config}: missing stanza path")
    assert not (tmp_path / "r").exists()


def test_interrupting_a_point_in_time_drill_removes_the_copy(
        production: Production, tmp_path: Path, sandbox_tmp: Path) -> None:
    def copy_exists() -> None:
        assert any(p.name.startswith("atb-pg-") for p in sandbox_tmp.iterdir())

    code, out, err = interrupt_drill(
        ["--source", "pgbackrest", "--stanza", STANZA, "--pgbackrest-config",
         str(production.config), "--database", "trading"], tmp_path, copy_exists,
        env={"TMPDIR": str(sandbox_tmp)})
    assert code == 130, out + err
    assert list(sandbox_tmp.iterdir()) == []
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert str(sandbox_tmp) not in ps


def test_the_archives_wal_is_parsed_as_its_reader_not_as_root(
        production: Production, chain15: toolchain.Toolchain, sandbox_tmp: Path) -> None:
    """pg_waldump reads WAL from the repository: it runs as the account that reads it (here
    through a wrapper that records who ran it), not as root."""
    bindir, who = sandbox_tmp / "bin", sandbox_tmp / "who"
    bindir.mkdir()
    (bindir / "postgres").symlink_to(chain15.bindir / "postgres")
    wrapper = bindir / "pg_waldump"
    wrapper.write_text(f'#!/bin/sh\nid -un >> {who}\nexec {chain15.bindir}/pg_waldump "$@"\n')
    wrapper.chmod(0o755)
    who.touch(mode=0o666)
    who.chmod(0o666)
    chain = dataclasses.replace(chain15, bindir=bindir)
    newest = pitr.newest_commit(pgbackrest.Stanza(STANZA, production.config), production.info,
                                chain)
    assert newest > production.info.backups[0].stopped
    assert set(who.read_text().split()) == {service_user() or pwd.getpwuid(os.getuid()).pw_name}
