"""`atb drill run` copies the sandbox's data directory itself only for a drill whose child
begins its local sandbox before pytest (a dump named by --backup, with its manifest); the
child is told where through its environment and takes the variable out at once."""

from __future__ import annotations

from pathlib import Path

import pytest

from drills import child, sandbox
from drills.options import DrillOptions
from drills.run import drill_env


@pytest.mark.parametrize("changes", [
    {"source": "pgbackrest", "stanza": "main"},  # no dump: nothing to copy for
    {"sandbox": "docker"},  # a container makes its own
    {"backup": None},  # the child chooses the backup later, with the plugin
    {"exclude": ("test_fk_hold",)},  # the child begins no sandbox early then
])
def test_no_copy_for_a_drill_whose_child_begins_no_local_sandbox_early(
        tmp_path: Path, changes: dict[str, object]) -> None:
    dump = tmp_path / "backup-20260101T000000Z.dump"
    dump.write_bytes(b"PGDMP")
    (tmp_path / "backup-20260101T000000Z.json").write_text("{}")
    options = DrillOptions(**{"sandbox": "local", "backup": dump, **changes})  # type: ignore
    with sandbox.prepared_for(options) as prepared:
        assert prepared is None


def test_no_copy_for_a_backup_whose_manifest_cannot_be_read(tmp_path: Path) -> None:
    dump = tmp_path / "backup-20260101T000000Z.dump"
    dump.write_bytes(b"PGDMP")
    (tmp_path / "backup-20260101T000000Z.json").write_text("not json")
    with sandbox.prepared_for(DrillOptions(sandbox="local", backup=dump)) as prepared:
        assert prepared is None


def test_the_child_is_told_where_and_takes_it_out_of_its_environment() -> None:
    env = drill_env(DrillOptions(), None, {"PATH": "/usr/bin"},
                    prepared=Path("/tmp/atb-drill-x/prepared.json"))
    assert env[sandbox.PREPARED_ENV] == "/tmp/atb-drill-x/prepared.json"
    assert sandbox.PREPARED_ENV not in drill_env(DrillOptions(), None, {"PATH": "/usr/bin"})
    assert child.prepared_marker(env) == Path("/tmp/atb-drill-x/prepared.json")
    assert sandbox.PREPARED_ENV not in env
    assert child.prepared_marker(env) is None
