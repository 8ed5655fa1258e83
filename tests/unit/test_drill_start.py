"""The drill's start: the sandbox begun before pytest (`drills.child`) is adopted only by
the drill it was made for, and the argv of the copy and removal of a sandbox's files."""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from backup_core.store import catalog
from backup_core.tools import cluster, removal, toolchain
from backup_core.tools.errors import ConfigError, ToolchainError
from drills import child, sandbox
from drills.child import Early, SandboxStart
from drills.options import DrillOptions
from drills.plugin import hooks
from drills.run import drill_argv


def test_the_options_file_is_read_from_the_childs_own_argv() -> None:
    assert child.options_file(drill_argv(Path("/t/options.json"))[3:]) == Path(
        "/t/options.json")
    assert child.options_file(["-v", "--drill"]) is None


def test_only_a_local_dump_drill_naming_its_backup_is_begun_early(tmp_path: Path) -> None:
    dump = tmp_path / "db" / "2026" / "11" / "30" / "backup-20261130T010000Z.dump"
    dump.parent.mkdir(parents=True)
    dump.write_bytes(b"PGDMP")
    local = DrillOptions(backup=dump, backup_dir=tmp_path, sandbox="local")
    found = child.early_target(local)
    assert found is not None and found.path == dump
    assert found == catalog.find(tmp_path, dump.resolve())  # as the plugin judges it
    for other in ("auto", "docker", "server"):
        assert child.early_target(DrillOptions(backup=dump, backup_dir=tmp_path,
                                               sandbox=other)) is None
    assert child.early_target(DrillOptions(backup_dir=tmp_path, sandbox="local")) is None
    assert child.early_target(DrillOptions(backup=tmp_path / "gone.dump",
                                           backup_dir=tmp_path, sandbox="local")) is None
    assert child.begin(["--drill"], {}) is None  # no options file: the plugin starts it
    assert child.begin([f"--drill-options={tmp_path / 'absent.json'}"], {}) is None


def test_the_early_sandbox_and_the_plugin_choose_the_given_backup_with_one_function(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dump = tmp_path / "db" / "backup-20261130T010000Z.dump"
    dump.parent.mkdir()
    dump.write_bytes(b"PGDMP")
    found, error = child.given_backup(dump, tmp_path)
    assert (found.path if found else None, error) == (dump, None)
    gone = tmp_path / "gone.dump"
    assert child.given_backup(gone, tmp_path) == (None, f"no backup at {gone}")
    odd = tmp_path / "db" / "nightly.dump"
    odd.write_bytes(b"PGDMP")
    assert child.given_backup(odd, tmp_path) == (
        None, f"{odd} is not named like an atb backup (backup-YYYYMMDDTHHMMSSZ.dump)")
    options = DrillOptions(backup=odd, backup_dir=tmp_path)  # the plugin's selection
    assert hooks._select(options, datetime.now(UTC)) == (
        None, f"{odd} is not named like an atb backup (backup-YYYYMMDDTHHMMSSZ.dump)", 0, None)
    chosen = hooks._select(DrillOptions(backup=dump, backup_dir=tmp_path), datetime.now(UTC))
    assert chosen[1:] == (None, 1, None) and chosen[0] == found
    # the toolchains the early sandbox's thread found are the metadata's: not searched twice
    assert child.found_chains() is None
    events: list[str] = []
    early, _ = _early(tmp_path / "2", events)
    monkeypatch.setattr(child, "PENDING", early)
    assert child.found_chains() == []
    # and the record it was begun for is the plugin's: its manifest is not read again
    early.found, early.backup_dir = found, tmp_path
    assert child.given_backup(dump, tmp_path)[0] is found
    assert child.given_backup(dump, tmp_path / "db")[0] is not found  # another tree: judged
    assert child.given_backup(gone, tmp_path) == (None, f"no backup at {gone}")
    failed: Future[list[toolchain.Toolchain]] = Future()
    failed.set_exception(ToolchainError("no PostgreSQL"))
    monkeypatch.setattr(early, "chains", failed)
    assert child.found_chains() is None
    early.start.close(None)


LEAVING = """
import atexit, sys, threading
from drills.leave import leave
atexit.register(lambda: print("atexit ran", flush=True))
print("buffered", end="")
if sys.argv[1] == "profiled":
    sys.setprofile(lambda *_: None)
if sys.argv[1] == "thread":
    threading.Thread(target=lambda: (__import__("time").sleep(0.2), print(" thread done",
                                                                          end=""))).start()
leave(int(sys.argv[2]))
"""


@pytest.mark.parametrize(("threads", "code", "out"), [
    ("none", 10, "bufferedatexit ran\n"),
    ("none", 0, "bufferedatexit ran\n"),
    ("thread", 1, "buffered thread doneatexit ran\n"),
    ("profiled", 3, "bufferedatexit ran\n")])
def test_leaving_runs_the_exit_handlers_flushes_and_waits_for_other_threads(
        threads: str, code: int, out: str) -> None:
    """`leave` skips only the interpreter's teardown: the exit code, the buffered output and
    the atexit handlers are a normal exit's; another thread still running is waited for, and a
    profiler gets its normal exit."""
    done = subprocess.run([sys.executable, "-c", LEAVING, threads, str(code)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert (done.returncode, done.stdout, done.stderr) == (code, out, "")


def _early(tmp_path: Path, events: list[str]) -> tuple[Early, catalog.Backup]:
    dump = tmp_path / "db" / "backup-20261130T010000Z.dump"
    dump.parent.mkdir(parents=True, exist_ok=True)
    dump.write_bytes(b"PGDMP")

    @contextlib.contextmanager
    def manager() -> Iterator[object]:
        events.append("started")
        yield object()
        events.append("torn down")

    start = SandboxStart(manager, "local")  # type: ignore[arg-type]
    backup = catalog.Backup(path=dump, database="db", state="ok", taken_at=datetime.now(UTC),
                            size=5, mtime=0.0)
    chains: Future[list[toolchain.Toolchain]] = Future()
    chains.set_result([])
    return Early(backup=dump, sandbox="local", faithful=False, chains=chains,
                 start=start), backup


def test_an_early_sandbox_is_adopted_once_and_only_for_its_own_backup(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    events: list[str] = []
    early, backup = _early(tmp_path, events)
    monkeypatch.setattr(child, "PENDING", early)
    options = DrillOptions(backup=backup.path, backup_dir=tmp_path, sandbox="local")
    assert child.take(backup, options) is early
    assert child.take(backup, options) is None  # adopted once
    early.start.close(None)
    assert events == ["started", "torn down"]
    # made for other settings (--rto-faithful): not adopted, and torn down at once
    events.clear()
    other, backup = _early(tmp_path / "2", events)
    monkeypatch.setattr(child, "PENDING", other)
    faithful = DrillOptions(backup=backup.path, backup_dir=tmp_path, sandbox="local",
                            rto_faithful=True)
    assert child.take(backup, faithful) is None
    assert events == ["started", "torn down"]
    assert other.taken


def test_a_sandboxs_files_are_copied_owned_and_removed_by_one_process_each() -> None:
    assert cluster.copy_tree_argv(Path("/c/initdb-18"), Path("/w/data")) == [
        "cp", "-R", "--preserve=mode,timestamps,links", "--no-dereference", "--",
        "/c/initdb-18", "/w/data"]
    assert cluster.chown_tree_argv(Path("/w/data"), "postgres") == [
        "chown", "-R", "--no-dereference", "--", "postgres:", "/w/data"]
    assert removal.argv(Path("/tmp/atb-pg-x")) == [
        sys.executable, "-I", "-S", str(Path(removal.__file__).resolve()), "/tmp/atb-pg-x"]


def _engine(path: Path, reply: bytes) -> threading.Thread:
    """A unix socket answering one request with `reply`, as the Docker engine would."""
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(reply)
        server.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


def test_the_docker_sdk_is_needed_only_when_the_engine_holds_containers_of_ours(
        tmp_path: Path) -> None:
    assert sandbox.engine_list_request("atb.owner") == (
        b"GET /containers/json?all=1&filters=%7B%22label%22%3A%5B%22atb.owner%22%5D%7D "
        b"HTTP/1.0\r\nHost: docker\r\n\r\n")
    home = {"DOCKER_CONFIG": str(tmp_path / "none")}
    sock = tmp_path / "e.sock"
    _engine(sock, b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n[]\n").join(0)
    assert sandbox.local_engine_holds_none({**home, "DOCKER_HOST": f"unix://{sock}"})
    sock.unlink()
    _engine(sock, b'HTTP/1.0 200 OK\r\n\r\n[{"Id": "abc"}]\n')
    assert not sandbox.local_engine_holds_none({**home, "DOCKER_HOST": f"unix://{sock}"})
    sock.unlink()
    _engine(sock, b"HTTP/1.0 500 Server Error\r\n\r\n[]")
    assert not sandbox.local_engine_holds_none({**home, "DOCKER_HOST": f"unix://{sock}"})
    assert not sandbox.local_engine_holds_none({**home, "DOCKER_HOST": f"unix://{sock}x"})
    assert not sandbox.local_engine_holds_none({**home, "DOCKER_HOST": "tcp://10.0.0.1:2375"})
    config = tmp_path / "ctx"
    config.mkdir()
    (config / "config.json").write_text('{"currentContext": "remote"}')
    assert not sandbox.local_engine_holds_none({"DOCKER_CONFIG": str(config)})


def test_an_immediate_stop_signals_once_and_sees_the_end_of_a_process_it_did_not_start(
) -> None:
    """A sandbox's server is not our child (pg_ctl started it): its end is read from /proc,
    where a zombie waiting for its parent counts as ended."""
    proc = subprocess.Popen(["sleep", "30"])
    assert not cluster._exited(proc.pid)
    assert cluster._quit(proc.pid) is True  # SIGQUIT ends `sleep` as it ends the postmaster
    assert cluster._exited(proc.pid)  # a zombie until reaped: ended all the same
    assert proc.wait(timeout=10) == -signal.SIGQUIT
    assert cluster._exited(proc.pid) and cluster._quit(proc.pid) is True  # gone: nothing to do


def test_the_pick_atb_drill_run_hands_its_child_travels_only_in_the_options_file(
        tmp_path: Path) -> None:
    """`picked` is no option of pytest, the ini or the command line (a direct `pytest
    --drill` always picks for itself): only the options file carries it, intact."""
    from drills.options import OPTIONS, Picked

    assert not any("pick" in o.name or o.name == "started" for o in OPTIONS)
    dump = tmp_path / "db" / "2026" / "11" / "30" / "backup-20261130T010000Z.dump"
    picked = Picked(path=dump, among=3)
    at = datetime(2026, 11, 30, 12, 0, 1, tzinfo=UTC)
    options = DrillOptions(backup_dir=tmp_path, sandbox="local", seed=7, picked=picked,
                           started=at)
    read = DrillOptions.from_json(options.to_json(), {})
    assert read.picked == picked and read.backup is None and read.seed == 7
    assert read.started == at
    assert (read.target, DrillOptions(backup_dir=tmp_path).target) == (dump, None)
    text = options.to_json().replace('"among": 3', '"among": "three"')
    with pytest.raises(ConfigError, match=r"^--drill-options: picked: not a picked backup"):
        DrillOptions.from_json(text, {})
    naive = options.to_json().replace('12:00:01+00:00', '12:00:01')
    with pytest.raises(ConfigError, match=r"^--drill-options: started: "
                       r"2026-11-30T12:00:01 has no UTC offset$"):
        DrillOptions.from_json(naive, {})


def test_a_start_written_with_another_offset_is_the_same_utc_second(tmp_path: Path) -> None:
    """`started` given as 14:00:01.75+02:00 is 12:00:01 UTC: the report's name (`ReportPaths`)
    and the ledger's `started_at` (the report's start, `state.result`) say it labelled Z,
    the fraction dropped, as a drill started in UTC would."""
    from drills.state import ReportPaths

    text = DrillOptions(backup_dir=tmp_path, started=datetime(2026, 11, 30, 12, 0, 1,
                                                              tzinfo=UTC)).to_json()
    shifted = text.replace("2026-11-30T12:00:01+00:00", "2026-11-30T14:00:01.750000+02:00")
    assert shifted != text
    read = DrillOptions.from_json(shifted, {})
    started = child.started_at(read, datetime(2026, 12, 1, tzinfo=UTC))
    assert started == datetime(2026, 11, 30, 12, 0, 1, tzinfo=UTC)
    assert started.utcoffset() is not None and started.tzinfo is UTC
    paths = ReportPaths.for_drill(tmp_path / "r", "shop", started)
    assert paths.json == tmp_path / "r" / "shop" / "20261130T120001Z-drill.json"
    assert started.isoformat(timespec="seconds") == "2026-11-30T12:00:01+00:00"
    with pytest.raises(ConfigError, match=r"^--drill-options: started: not a time: "):
        DrillOptions.from_json(text.replace("2026-11-30T12:00:01+00:00", "noon"), {})


def test_a_tree_with_nothing_to_pick_is_left_to_the_plugin_and_a_given_backup_is_kept(
        tmp_path: Path) -> None:
    """`child.choose`: an empty tree (the plugin says why in the drill's report), another
    sandbox than a local one, or --backup: no pick handed over; a typo in the tree is
    refused as before (exit 2)."""
    from drills.options import Picked

    (tmp_path / "db").mkdir()
    assert [child.picks(DrillOptions(backup_dir=tmp_path, **kw)) for kw in (
        {"sandbox": "local"}, {"sandbox": "docker"}, {"sandbox": "auto"},
        {"sandbox": "local", "source": "pgbackrest", "stanza": "main"},
        {"sandbox": "local", "backup": tmp_path / "db" / "x.dump"})] == [
            True, False, False, False, False]
    for sandbox_kind in ("local", "docker"):
        options = DrillOptions(backup_dir=tmp_path, sandbox=sandbox_kind)
        assert child.choose(options) is options
    with pytest.raises(ConfigError, match="no such directory"):
        child.choose(DrillOptions(backup_dir=tmp_path / "typo", sandbox="local"))
    dump = tmp_path / "db" / "2026" / "11" / "30" / "backup-20261130T010000Z.dump"
    dump.parent.mkdir(parents=True)
    dump.write_bytes(b"PGDMP")
    stale = Picked(path=tmp_path / "other.dump", among=2)
    given = DrillOptions(backup=dump, backup_dir=tmp_path, sandbox="local", picked=stale)
    assert child.choose(given) == replace(given, picked=None)  # --backup wins, checked
    handed = DrillOptions(backup_dir=tmp_path / "typo", sandbox="local", picked=stale)
    assert child.choose(handed) is handed  # checked once already, by whoever picked it


def test_the_copy_and_the_childs_early_sandbox_are_decided_by_one_function(
        tmp_path: Path) -> None:
    """`DrillOptions.early_dump` is the one decision of both `sandbox.prepared_for` (the copy
    `atb drill run` makes) and `child.begin` (the server its child starts): a dump drill on a
    local sandbox whose backup is known (--backup, or the pick), without --drill-exclude."""
    from drills.options import Picked
    from tests.unit.test_catalog_cache import tree

    dump = tmp_path / "trading" / "2026" / "11" / "29" / "backup-20261129T110000Z.dump"
    picked = Picked(path=dump, among=2)
    cases = [({"backup": None}, None), ({"picked": picked}, dump),
             ({"sandbox": "docker", "picked": picked}, None),
             ({"sandbox": "auto", "picked": picked}, None),
             ({"source": "pgbackrest", "stanza": "main", "picked": picked}, None),
             ({"exclude": ("test_indexes_are_valid",), "picked": picked}, None)]
    assert child.early_target(DrillOptions(backup_dir=tmp_path, sandbox="local",
                                           picked=picked)) is None  # no file: no record yet
    assert tree(tmp_path, 1) == [dump]  # a complete backup, manifest and all
    for given, expected in cases:  # it exists: only the decision says no
        options = DrillOptions(**{"backup_dir": tmp_path, "sandbox": "local", **given})
        assert (given, options.early_dump) == (given, expected)
        early = child.early_target(options)
        assert (given, early and early.path) == (given, expected), early
    assert DrillOptions(backup=dump, sandbox="local").early_dump == dump
    excluded = DrillOptions(backup=dump, backup_dir=tmp_path, sandbox="local",
                            exclude=("test_indexes_are_valid",))
    assert (excluded.early_dump, child.early_target(excluded)) == (None, None)
    with sandbox.prepared_for(excluded) as prepared:  # no copy for it either
        assert prepared is None


def test_a_drill_run_by_atb_drill_run_starts_when_it_took_its_start() -> None:
    """`DrillOptions.started` is the drill's start (`child.started_at`) in every form, a
    pick's or `--backup`'s: its report's start is the instant the window of a "random among
    N" was counted from; a direct `pytest --drill` starts now, to the second, in UTC."""
    now = datetime(2026, 11, 30, 12, 0, 3, 654321, tzinfo=UTC)
    at = datetime(2026, 11, 30, 12, 0, 1, tzinfo=UTC)
    assert child.started_at(DrillOptions(started=at), now) == at
    assert child.started_at(DrillOptions(backup=Path("/etc/hostname"), started=at), now) == at
    assert child.started_at(DrillOptions(), now) == datetime(2026, 11, 30, 12, 0, 3,
                                                             tzinfo=UTC)


def test_no_backup_of_a_database_is_worded_in_one_place_from_the_tree(tmp_path: Path) -> None:
    """`child.no_backup_of`: the refusal before the drill (exit 2) and the drill's report say
    it in the same words, from what the tree holds (as scanned, or scanned here)."""
    day = tmp_path / "shop" / "2026" / "11" / "30"
    day.mkdir(parents=True)
    (day / "backup-20261130T010203Z.dump").write_bytes(b"x")
    found = catalog.scan(tmp_path)
    words = ("no backup of database gone: the tree has no directory gone/ for it (the tree "
             "holds backups of shop)")
    assert child.no_backup_of("gone", tmp_path, found) == words
    assert child.no_backup_of("gone", tmp_path) == words
    (tmp_path / "gone").mkdir()
    assert child.no_backup_of("gone", tmp_path) == (
        "no backup of database gone: the directory gone/ holds no backup of it (the tree "
        "holds backups of shop)")
    assert child.no_backup_of("gone", tmp_path, []) == (
        "no backup of database gone: the directory gone/ holds no backup of it (the tree "
        "holds no backups)")


def test_the_child_scans_through_the_catalog_cache_this_process_read(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The drill's schedule check (`drill_policy`) reads the tree through the catalog cache
    the pick read: the child is told which one, or that there is none."""
    from drills.run import drill_env

    monkeypatch.setenv("ATB_CATALOG_CACHE", str(tmp_path / "cache"))
    env = drill_env(DrillOptions(), None, {"PATH": "/usr/bin"})
    assert env["ATB_CATALOG_CACHE"] == str(tmp_path / "cache")
    monkeypatch.setenv("ATB_CATALOG_CACHE", "off")
    assert drill_env(DrillOptions(), None, {"PATH": "/usr/bin"})["ATB_CATALOG_CACHE"] == "off"
    monkeypatch.delenv("ATB_CATALOG_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert drill_env(DrillOptions(), None, {"PATH": "/usr/bin"})["ATB_CATALOG_CACHE"] == str(
        tmp_path / "xdg" / "atb" / "catalog")


def test_the_child_reads_the_catalog_cache_read_only_and_it_is_bound_so(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The host's trusted cache is never written from inside a drill: the child is told to
    read it only, and its directory is one of the read-only binds, unless it holds where the
    drill writes (then the drill is refused, exit 2)."""
    from backup_core.store import catalog_cache
    from drills.run import drill_env, read_only_trees

    env = drill_env(DrillOptions(), None, {"PATH": "/usr/bin"})
    assert env[catalog_cache.READ_ONLY_ENV] == "1"
    tree, cache, scratch = tmp_path / "tree", tmp_path / "cache", tmp_path / "scratch"
    tree.mkdir()
    scratch.mkdir()
    options = DrillOptions(backup_dir=tree, report_dir=tmp_path / "reports")
    assert read_only_trees(options, scratch, catalog=cache) == [str(tree)]  # none yet
    assert catalog_cache.prepare(cache)
    assert read_only_trees(options, scratch, catalog=cache) == [str(tree), str(cache)]
    holding = replace(options, report_dir=cache / "reports")
    with pytest.raises(ConfigError) as refused:
        read_only_trees(holding, scratch, catalog=cache)
    assert str(refused.value) == (
        f"the catalog cache {cache} (ATB_CATALOG_CACHE) holds {cache / 'reports'}, where the "
        "drill writes: it could not be read-only in the drill; give the cache a directory of "
        "its own")


def test_a_catalog_cache_holding_the_reports_is_refused_before_anything_starts(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`check_drill` refuses it with the binds' own words, before the selection is read or a
    sandbox's files copied (it was refused only once the copy had begun)."""
    from drills.run import check_drill

    cache = tmp_path / "cache"
    monkeypatch.setenv("ATB_CATALOG_CACHE", str(cache))
    options = DrillOptions(backup_dir=tmp_path / "no-tree", report_dir=cache / "reports")
    with pytest.raises(ConfigError) as refused:
        check_drill(options)
    assert str(refused.value) == (
        f"the catalog cache {cache} (ATB_CATALOG_CACHE) holds {cache / 'reports'}, where the "
        "drill writes: it could not be read-only in the drill; give the cache a directory of "
        "its own")
    assert not cache.exists()


def test_the_tree_is_scanned_beside_the_restore_when_a_check_asks_for_the_schedule() -> None:
    """`_will_use`: decided by the fixture a check asks for (itself or through another,
    pytest's closure), a user's check too, not by a list of check names."""
    from types import SimpleNamespace

    from drills.plugin.fixtures import _will_use

    def request(*closures: tuple[str, ...]) -> Any:
        items = [SimpleNamespace(fixturenames=list(c)) for c in closures]
        return SimpleNamespace(session=SimpleNamespace(items=[*items, object()]))

    assert _will_use(request(("drill", "drill_rpo", "drill_policy")), "drill_policy") is True
    assert _will_use(request(("drill",), ("drill_restore",)), "drill_policy") is False
    assert _will_use(request(), "drill_policy") is False
