"""`atb drill run`'s child begins a local sandbox before pytest is imported (`drills.child`):
the server is the drill's, adopted by it, and its files are removed in the background once it
stopped, all gone by the time the child exits."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from backup_core.ops.backup import create_backup
from backup_core.store import catalog
from backup_core.tools import cluster, db, toolchain
from backup_core.tools.cluster import Cluster
from backup_core.tools.errors import ConnectionFailed
from drills import child
from drills.options import DrillOptions
from drills.run import drill_argv
from tests.conftest import make_database
from tests.helpers import child_options_file


def test_a_sandbox_begun_before_pytest_serves_the_drill_and_leaves_nothing(
        pg15: Cluster, chains: list[toolchain.Toolchain], tmp_path: Path, sandbox_tmp: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    backup = create_backup(make_database(pg15, rows=50), tmp_path / "backups",
                           chains=chains).path
    options = DrillOptions(backup=backup, backup_dir=tmp_path / "backups", sandbox="local",
                           report_dir=tmp_path / "reports")
    options_file = child_options_file(options, tmp_path, sandbox_tmp, monkeypatch)
    early = child.begin(drill_argv(options_file)[3:], os.environ)
    assert early is not None
    monkeypatch.setattr(child, "PENDING", early)
    found = catalog.find(options.backup_dir, backup.resolve())
    assert found is not None
    assert child.take(found, options) is early
    assert [c.bindir for c in early.chains.result()] == [c.bindir for c in chains]
    info = early.start.wait()
    assert info.provider == "local"
    with db.connect(info.url, autocommit=True) as conn:
        row = conn.execute("SELECT current_database(), current_setting('fsync')").fetchone()
    assert row == (info.dbname, "off")
    early.start.close(None)
    with pytest.raises(ConnectionFailed):  # the server is gone at once ...
        db.connect(info.url, autocommit=True).close()
    cluster.await_removals()  # ... and its files once the background rm is done
    assert os.listdir(sandbox_tmp) == []
