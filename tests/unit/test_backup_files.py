"""A backup's files as one resource: its teardown sees how the backup ended."""

from __future__ import annotations

from pathlib import Path

import pytest

from backup_core.ops.backup import _Files


def _written(files: _Files) -> None:
    for path in (files.partial, files.manifest_partial, files.roles_partial):
        path.write_text("x")


def test_a_failure_after_publishing_the_manifest_leaves_nothing_that_looks_like_a_backup(
        tmp_path: Path) -> None:
    files = _Files.for_backup(tmp_path / "backup-20261129T201500Z.dump")
    with pytest.raises(KeyboardInterrupt), files.all_or_nothing():
        _written(files)
        files.manifest_partial.rename(files.manifest_final)
        files.roles_partial.rename(files.roles_final)
        raise KeyboardInterrupt  # as a Ctrl-C between publishing the manifest and the dump
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_published_backup_keeps_its_three_files_and_no_partial(tmp_path: Path) -> None:
    final = tmp_path / "backup-20261129T201500Z.dump"
    files = _Files.for_backup(final)
    assert files.partial.parent == tmp_path and files.partial != final
    with files.all_or_nothing():
        _written(files)
        for partial, done in ((files.roles_partial, files.roles_final),
                              (files.manifest_partial, files.manifest_final),
                              (files.partial, final)):
            partial.rename(done)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "backup-20261129T201500Z.dump", "backup-20261129T201500Z.json",
        "backup-20261129T201500Z.roles.sql"]


def test_a_failure_once_the_dump_is_published_keeps_the_backup(tmp_path: Path) -> None:
    files = _Files.for_backup(tmp_path / "backup-20261129T201500Z.dump")
    with pytest.raises(OSError), files.all_or_nothing():
        _written(files)
        files.manifest_partial.rename(files.manifest_final)
        files.roles_partial.rename(files.roles_final)
        files.partial.rename(files.final)
        raise OSError("fsync of the directory failed")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "backup-20261129T201500Z.dump", "backup-20261129T201500Z.json",
        "backup-20261129T201500Z.roles.sql"]
