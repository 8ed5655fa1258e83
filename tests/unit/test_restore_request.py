"""`restore_backup` takes one frozen request and refuses bad input before touching anything."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from backup_core.ops.migrate import Migration
from backup_core.ops.restore import RestoreRequest, restore_backup
from backup_core.tools.appenv import AppEnv
from backup_core.tools.conninfo import ConnInfo
from backup_core.tools.errors import ConfigError

# nothing listens here: reaching the server would fail with another error and exit code
NOWHERE = ConnInfo.make(dbname="copy", host="/nonexistent-socket-dir", port=1)


def test_a_request_is_frozen_with_safe_defaults() -> None:
    request = RestoreRequest(Path("/b/x.dump"), NOWHERE)
    assert (request.clean, request.no_owner, request.with_roles, request.scratch,
            request.allow_production, request.jobs, request.migration,
            request.production) == (False, False, False, False, False, None, None, None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        request.clean = True  # type: ignore[misc]


def test_a_missing_backup_is_refused_before_any_connection(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        restore_backup(RestoreRequest(tmp_path / "x.dump", NOWHERE), chains=[])
    assert str(caught.value) == (f"no backup at {tmp_path / 'x.dump'}: give the path of a "
                                 ".dump file (`atb db list`)")
    assert caught.value.exit_code == 2


def test_a_target_without_a_database_or_a_missing_alembic_ini_is_refused(
        tmp_path: Path) -> None:
    dump = tmp_path / "x.dump"
    dump.write_bytes(b"PGDMP")
    with pytest.raises(ConfigError) as no_db:
        restore_backup(RestoreRequest(dump, ConnInfo.make(dbname="", host="/s")), chains=[])
    assert str(no_db.value) == ("the target postgresql:///?host=%2Fs names no database: "
                                "add /dbname")
    with pytest.raises(ConfigError) as no_ini:
        restore_backup(RestoreRequest(dump, NOWHERE, migration=Migration(
            AppEnv(directory=tmp_path), alembic_config=Path("alembic.ini"))), chains=[])
    assert str(no_ini.value) == (f"Alembic config {tmp_path / 'alembic.ini'} not found: pass "
                                 "--alembic-config path/to/alembic.ini")
