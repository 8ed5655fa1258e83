"""A local sandbox's data directory copied by `atb drill run` while its child starts
(`Cluster.prepare`) is adopted by the child's cluster only when it was made for that very
cluster; anything else and the cluster makes its own, as before, and what nobody adopted
is removed by its maker."""

from __future__ import annotations

import json
import os
import pwd
import stat
import subprocess
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from backup_core.ops.backup import create_backup
from backup_core.store import catalog
from backup_core.store.catalog import Backup
from backup_core.tools import cluster, db, reaper, removal, toolchain
from backup_core.tools.cluster import Cluster, preparing_lock, service_user, write_marker
from backup_core.tools.conninfo import ConnInfo
from backup_core.tools.errors import SafetyRefusal
from backup_core.tools.runner import run
from drills import child, pick, sandbox
from drills.options import DrillOptions
from drills.plugin import hooks
from drills.run import drill_argv
from tests.conftest import make_database
from tests.helpers import child_options_file


@pytest.fixture(scope="module")
def templates(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One initdb for the module: every cluster after the first copies its template."""
    return tmp_path_factory.mktemp("templates")


def records() -> list[str]:
    folder = reaper.registry_dir(create=False)
    return sorted(p.name for p in folder.glob("*.json")) if folder.is_dir() else []


def test_a_prepared_data_directory_is_adopted_only_by_the_cluster_it_was_made_for(
        tmp_path: Path, chain18: toolchain.Toolchain, templates: Path) -> None:
    base = Path(tempfile.gettempdir()).resolve()
    marker = tmp_path / "prepared.json"
    maker = Cluster(chain18, templates=templates)
    maker.prepare(marker)
    facts = json.loads(marker.read_text())
    prepared = Path(facts["workdir"])
    assert sorted(facts) == ["key", "workdir"] and prepared.parent.resolve() == base
    assert (prepared / "data" / "PG_VERSION").is_file()
    assert f"{prepared.name}.json" in records()  # reaped as anyone's if its maker is killed

    # a marker saying the same directory was made for another server binary, one naming a
    # directory outside where the cluster makes its own, a preparation that failed: each
    # refused at once (the cluster then makes its own, as `start` does without one)
    forged = tmp_path / "forged.json"
    write_marker(forged, {"workdir": str(prepared), "key": {**facts["key"], "version": "0"}})
    elsewhere = tmp_path / "elsewhere.json"
    write_marker(elsewhere, {"workdir": str(tmp_path / f"{reaper.WORKDIR_PREFIX}x"),
                             "key": facts["key"]})
    failed = tmp_path / "failed.json"
    write_marker(failed, {"failed": "ToolchainError: no server"})
    for refused in (forged, elsewhere, failed):
        other = Cluster(maker.toolchain, templates=templates, prepared=refused)
        assert other._adopt_prepared() is False and other.workdir is None
    assert Cluster(maker.toolchain, templates=templates, prepared=marker,
                   run_as="someone-else")._adopt_prepared() is False  # for another account
    with Cluster(chain18, templates=templates, prepared=failed,
                 destroy_mode="immediate") as own:
        assert own.workdir is not None and own.workdir != prepared
        made = own.workdir
    assert not made.exists() and prepared.is_dir()

    with Cluster(chain18, templates=templates, prepared=marker,
                 destroy_mode="immediate") as adopter:
        assert adopter.workdir == prepared
        with db.connect(adopter.url(), autocommit=True) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    assert not prepared.exists() and f"{prepared.name}.json" not in records()
    maker.discard_prepared()  # adopted and removed by its adopter: nothing left to do
    assert not prepared.exists()


def test_a_prepared_data_directory_nobody_adopted_is_removed_by_its_maker(
        tmp_path: Path, chain18: toolchain.Toolchain, templates: Path) -> None:
    maker = Cluster(chain18, templates=templates)
    maker.prepare(tmp_path / "prepared.json")
    prepared = Path(json.loads((tmp_path / "prepared.json").read_text())["workdir"])
    assert prepared.is_dir()
    maker.discard_prepared()
    assert not prepared.exists() and f"{prepared.name}.json" not in records()
    # one another process adopted (its record names that process) is that process's to
    # remove while it lives: never removed here
    maker.prepare(tmp_path / "again.json")
    prepared = Path(json.loads((tmp_path / "again.json").read_text())["workdir"])
    record = reaper.registry_dir() / f"{prepared.name}.json"
    adopted = json.loads(record.read_text())
    adopted["owner"].update(pid=1, start=reaper.process_start(1))
    record.write_text(json.dumps(adopted))
    maker.discard_prepared()
    assert prepared.is_dir() and record.is_file()
    removal.discard(prepared)
    reaper.unregister(record)
    # its adopter killed with the server running on the copy: stopped and removed here
    maker.prepare(tmp_path / "third.json")
    adopter = Cluster(chain18, templates=templates, prepared=tmp_path / "third.json",
                      destroy_mode="immediate")
    adopter.start()
    server, prepared = adopter.pid, adopter.workdir
    assert server is not None and prepared is not None
    record = reaper.registry_dir() / f"{prepared.name}.json"
    adopted = json.loads(record.read_text())
    adopted["owner"].update(pid=1, start="0")  # a process that is gone
    record.write_text(json.dumps(adopted))
    maker.discard_prepared()
    assert reaper.process_start(server) is None and not prepared.exists()
    assert not record.exists()
    adopter._running = False  # killed, in this story: nothing of it left to stop
    adopter.destroy()


def test_an_adopter_waits_for_a_copy_under_way_and_not_for_one_whose_maker_is_gone(
        tmp_path: Path, chain18: toolchain.Toolchain, templates: Path) -> None:
    # no marker and nobody holding its lock (the maker was killed): its own, at once
    t0 = time.monotonic()
    with Cluster(chain18, templates=templates, prepared=tmp_path / "never.json",
                 destroy_mode="immediate") as own:
        assert own.workdir is not None and own.workdir.is_dir()
    assert time.monotonic() - t0 < 10  # not the two minutes a copy under way may take
    # a copy under way (its maker holds the lock): waited for, then adopted
    marker = tmp_path / "prepared.json"
    maker = Cluster(chain18, templates=templates)

    def late() -> None:
        time.sleep(0.3)
        maker.prepare(marker)

    with preparing_lock(marker):
        thread = threading.Thread(target=late)
        thread.start()
        with Cluster(chain18, templates=templates, prepared=marker,
                     destroy_mode="immediate") as adopter:
            assert adopter.workdir == Path(json.loads(marker.read_text())["workdir"])
        thread.join()
    maker.discard_prepared()
    assert adopter.workdir is not None and not adopter.workdir.exists()


def test_a_marker_that_cannot_be_written_frees_the_adopter_at_once(
        tmp_path: Path, sandbox_tmp: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """`atb drill run`'s copy whose marker cannot be written (a full disk, an I/O error)
    must not leave its child waiting two minutes for it: the lock that says a marker is
    coming goes with the attempt, not with the drill."""
    monkeypatch.setattr(tempfile, "tempdir", str(sandbox_tmp))
    marker = tmp_path / "prepared.json"
    (tmp_path / f".{marker.name}.tmp").mkdir()  # where write_marker writes: it cannot
    t0 = time.monotonic()
    with sandbox.preparing(18, None, marker):
        assert cluster._await_marker(marker, timeout=120) is None
        waited = time.monotonic() - t0
    assert waited < 10 and not marker.exists()
    assert "could not say where the sandbox's data directory was copied" in caplog.text
    assert os.listdir(sandbox_tmp) == []  # the copy nobody could adopt, removed


def test_the_drills_early_sandbox_runs_on_the_copy_atb_drill_run_began(
        pg15: Cluster, chains: list[toolchain.Toolchain], tmp_path: Path, sandbox_tmp: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """`atb drill run`'s copy (`sandbox.prepared_for`) is the one its child's sandbox starts
    on (`child.begin`, told through the environment): no second copy is made, and nothing is
    left once both are done."""
    backup = create_backup(make_database(pg15, rows=20), tmp_path / "backups",
                           chains=chains).path
    options = DrillOptions(backup=backup, backup_dir=tmp_path / "backups", sandbox="local",
                           report_dir=tmp_path / "reports")
    options_file = child_options_file(options, tmp_path, sandbox_tmp, monkeypatch)
    with sandbox.prepared_for(options) as marker:
        assert marker is not None
        env = {**os.environ, sandbox.PREPARED_ENV: str(marker)}
        early = child.begin(drill_argv(options_file)[3:], env)
        assert early is not None and sandbox.PREPARED_ENV not in env
        info = early.start.wait()
        workdir = Path(json.loads(marker.read_text())["workdir"])
        assert sorted(p.name for p in sandbox_tmp.glob(f"{reaper.WORKDIR_PREFIX}*")) == [
            workdir.name]  # the one copy, atb's
        assert (workdir / "data" / "postmaster.pid").is_file()  # and the server runs on it
        with db.connect(info.url, autocommit=True) as conn:
            assert conn.execute("SELECT current_setting('data_directory')").fetchone() == (
                str(workdir / "data"),)
        early.start.close(None)
        cluster.await_removals()
    assert os.listdir(sandbox_tmp) == []


def test_a_random_drills_backup_is_picked_once_by_atb_drill_run_and_its_sandbox_begun_early(
        history: tuple[ConnInfo, Path], tmp_path: Path, sandbox_tmp: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Without --backup, `atb drill run` picks (`child.choose`) exactly as the plugin of a
    direct `pytest --drill` would (same seed, window and time: the same file, among as
    many); its copy and its child's early sandbox are made for that backup, and the plugin
    drills it as handed over: the early record adopted, the tree not scanned again."""
    tree = history[1]
    at = datetime.now(UTC).replace(microsecond=0)  # as `check_drill` takes the start
    options = DrillOptions(backup_dir=tree, sandbox="local", seed=424242,
                           report_dir=tmp_path / "reports", started=at)
    chosen = child.choose(options)
    picked = chosen.picked
    assert picked is not None and chosen.backup is None
    plugin, error, among, scanned = hooks._select(options, at)  # its own pick
    assert plugin is not None and error is None and scanned is not None
    assert (picked.path, picked.among) == (plugin.path, among)
    assert among == len(pick.eligible(catalog.scan(tree), now=at, window_days=90)) > 1
    options_file = child_options_file(chosen, tmp_path, sandbox_tmp, monkeypatch)
    with sandbox.prepared_for(chosen) as marker:
        assert marker is not None  # the copy is made for the pick, as for a --backup
        env = {**os.environ, sandbox.PREPARED_ENV: str(marker)}
        early = child.begin(drill_argv(options_file)[3:], env)
        assert early is not None and early.backup == picked.path
        info = early.start.wait()
        workdir = Path(json.loads(marker.read_text())["workdir"])
        with db.connect(info.url, autocommit=True) as conn:  # the server runs on atb's copy
            assert conn.execute("SELECT current_setting('data_directory')").fetchone() == (
                str(workdir / "data"),)
        monkeypatch.setattr(child, "PENDING", early)

        def no_scan(*args: object, **kwargs: object) -> list[Backup]:
            raise AssertionError("the tree scanned again")

        monkeypatch.setattr(catalog, "scan", no_scan)
        handed = DrillOptions.from_json(options_file.read_text(), {})
        assert hooks._select(handed, at) == (early.found, None, among, None)
        assert early.found is not None and early.found.path == plugin.path
        assert early.found.manifest == plugin.manifest
        assert child.take(early.found, handed) is early  # adopted by the drill
        early.start.close(None)
        cluster.await_removals()
    assert os.listdir(sandbox_tmp) == []
def test_the_server_user_cannot_make_root_write_through_a_prepared_data_directory(
        tmp_path: Path, sandbox_tmp: Path, chain18: toolchain.Toolchain,
        templates: Path) -> None:
    """Between the copy and its adoption (or while a cluster copies its own), the server's
    user owns the data directory: a link it puts where postgresql.conf was must not make
    root append the cluster's settings to a file of root's, and the work directory (in a
    sticky /tmp) is not its own to rename away and replace with one of its making."""
    user = service_user()
    assert user is not None, "the suite runs as root, the server as an unprivileged user"
    secret = tmp_path / "root-only"
    secret.write_text("root's\n")
    secret.chmod(0o600)
    base = sandbox_tmp / "tmp"
    base.mkdir()
    base.chmod(0o1777)  # as /tmp: anyone creates, only an entry's owner renames it
    marker = tmp_path / "prepared.json"
    maker = Cluster(chain18, templates=templates, base_dir=base)
    maker.prepare(marker)
    prepared = Path(json.loads(marker.read_text())["workdir"])
    st = prepared.lstat()
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o711)
    uid = pwd.getpwnam(user).pw_uid
    assert (prepared / "data").lstat().st_uid == uid

    def as_user(*argv: str) -> int:
        return run(list(argv), what="as the server's user", run_as=user, check=False,
                   timeout=30).returncode

    assert as_user("mv", "-T", str(prepared), str(base / "atb-pg-theirs")) == 1
    assert as_user("touch", str(prepared / "server.conf")) == 1
    conf = prepared / "data" / "postgresql.conf"
    assert as_user("ln", "-sfT", str(secret), str(conf)) == 0  # the data directory is its
    with Cluster(chain18, templates=templates, base_dir=base, prepared=marker,
                 destroy_mode="immediate") as own:  # refused: a copy of its own
        assert own.workdir is not None and own.workdir != prepared
        st = own.workdir.lstat()
        assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (0, 0o711)
        assert own.logfile.lstat().st_uid == uid and own.logfile.stat().st_size > 0
        with db.connect(own.url(), autocommit=True) as conn:
            assert conn.execute("SHOW max_connections").fetchone() == ("50",)  # ours
        # the lock file, the server user's, naming a process of root's: never signalled
        server = own.pid
        victim = subprocess.Popen(["sleep", "60"])
        pid_file = own.datadir / "postmaster.pid"
        lines = pid_file.read_text().splitlines()
        assert as_user("sh", "-c", 'printf "%s\n" "$@" > "$0.new" && mv "$0.new" "$0"',
                       str(pid_file), str(victim.pid), *lines[1:]) == 0
        assert int(pid_file.read_text().split()[0]) == victim.pid and own.pid == server
    try:
        assert victim.poll() is None  # root's process lives; the server was stopped
        assert server is not None and reaper.process_start(server) is None
    finally:
        victim.kill()
        victim.wait()
    # the link appearing after the adoption's look: the settings are not written at all
    with pytest.raises(SafetyRefusal, match="cannot be written safely"):
        cluster.write_data_file(prepared / "data", "postgresql.conf", "port = 1\n",
                                owner=uid, append=True)
    assert as_user("ln", "-fT", str(prepared / "data" / "PG_VERSION"), str(conf)) == 0
    with pytest.raises(SafetyRefusal, match="not a regular file of the server's own"):
        cluster.write_data_file(prepared / "data", "postgresql.conf", "port = 1\n",
                                owner=uid, append=True)
    assert secret.read_text() == "root's\n" and stat.S_IMODE(secret.stat().st_mode) == 0o600
    maker.discard_prepared()
    assert os.listdir(base) == []
