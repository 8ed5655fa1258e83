"""The drill's start: the sandbox begun before pytest (`drills.child`) is adopted only by
the drill it was made for, and the argv of the copy and removal of a sandbox's files."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from concurrent.futures import Future
from datetime import UTC, datetime
from pathlib import Path

import pytest

from backup_core.store import catalog
from backup_core.tools import cluster, toolchain
from drills import child
from drills.child import Early, SandboxStart
from drills.options import DrillOptions
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
    assert cluster.remove_tree_argv(Path("/tmp/atb-pg-x")) == [
        "rm", "-rf", "--one-file-system", "--", "/tmp/atb-pg-x"]
