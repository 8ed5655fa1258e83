"""Speed features against real servers: the backup's compression, chosen and recorded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from backup_core.store.manifest import read_manifest
from backup_core.store.naming import manifest_path
from backup_core.tools.cluster import Cluster
from backup_core.tools.conninfo import ConnInfo
from tests.conftest import make_database
from tests.helpers import atb_inproc


@pytest.fixture(scope="module")
def small18(pg18: Cluster) -> ConnInfo:
    return make_database(pg18, rows=20_000)


def test_default_backup_is_gzip_level_1_recorded_in_the_manifest_and_env_overrides_it(
        small18: ConnInfo, backup_dir: Path) -> None:
    """The wheel's pg_dump has gzip only: the default is level 1; ATB_COMPRESS=none (the
    env spelling of --compress) writes an archive that is larger, and says so."""
    fast = atb_inproc("db", "backup", "--json", "--at", "20261101T120000Z",
                      env={"BACKUP_DIR": str(backup_dir)}, url=small18)
    assert fast.returncode == 0, fast.stderr
    plain = atb_inproc("db", "backup", "--json", "--at", "20261101T130000Z",
                       env={"BACKUP_DIR": str(backup_dir), "ATB_COMPRESS": "none"},
                       url=small18)
    assert plain.returncode == 0, plain.stderr
    gz = read_manifest(manifest_path(Path(json.loads(fast.stdout)["path"])))
    raw = read_manifest(manifest_path(Path(json.loads(plain.stdout)["path"])))
    assert (gz.compression, raw.compression) == ("gzip:1", "none")
    assert raw.size_bytes > 1.5 * gz.size_bytes


def test_a_compression_this_pg_dump_cannot_write_is_refused_before_any_work(
        small18: ConnInfo, backup_dir: Path) -> None:
    done = atb_inproc("db", "backup", "--compress", "zstd:3",
                      env={"BACKUP_DIR": str(backup_dir)}, url=small18)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith(
        "atb: error: pg_dump 18.6 (") and "is built without zstd" in done.stderr
    assert not list(backup_dir.rglob("*.dump*"))
    bad = atb_inproc("db", "backup", "--compress", "gzip:11",
                     env={"BACKUP_DIR": str(backup_dir)}, url=small18)
    assert (bad.returncode, bad.stderr.strip()) == (
        2, "atb: error: --compress gzip takes a level from 1 to 9, not 11")
