"""Verification catches damage; restore goes exactly where it is told and nowhere else."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from backup_core.ops import backup
from backup_core.reading import guard, inventory
from backup_core.tools import commands, db, toolchain
from backup_core.tools.cluster import Cluster
from backup_core.tools.conninfo import ConnInfo
from backup_core.tools.errors import SafetyRefusal
from backup_core.tools.runner import run
from tests.conftest import make_database
from tests.helpers import atb_inproc


@pytest.fixture
def one_backup(pg15: Cluster, backup_dir: Path,
               chains: list[toolchain.Toolchain]) -> tuple[ConnInfo, Path]:
    info = make_database(pg15, rows=2000)
    return info, backup.create_backup(info, backup_dir, chains=chains).path


def test_an_intact_backup_verifies_shallow_and_deep(one_backup: tuple[ConnInfo, Path],
                                                    backup_dir: Path) -> None:
    _, path = one_backup
    from backup_core.store.naming import verify_path

    verify_path(path).mkdir()  # the verdict cannot be written, as in a read-only BACKUP_DIR
    blocked = atb_inproc("db", "verify", "--latest", env={"BACKUP_DIR": str(backup_dir)})
    assert (blocked.returncode, blocked.stdout) == (0, f"OK   {path}\n")
    [warned] = blocked.stderr.splitlines()
    assert f"WARNING the verdict on {path} was not recorded beside it (list still shows it " \
           "unverified): " in warned
    listing = json.loads(atb_inproc("db", "list", "--json",
                                    env={"BACKUP_DIR": str(backup_dir)}).stdout)
    assert [i["checked"] for i in listing if i["path"] == str(path)] == ["unverified"]
    verify_path(path).rmdir()
    done = atb_inproc("db", "verify", "--latest", "--deep", "--json",
                      env={"BACKUP_DIR": str(backup_dir)})
    assert done.returncode == 0, done.stderr
    [result] = json.loads(done.stdout)
    assert result["ok"]
    assert [c["name"] for c in result["checks"]] == ["size", "sha256", "roles", "toc", "data"]
    listing = json.loads(atb_inproc("db", "list", "--json",
                                    env={"BACKUP_DIR": str(backup_dir)}).stdout)
    assert listing[0]["checked"] == "verified (deep)"


def test_a_bit_flip_fails_verification(one_backup: tuple[ConnInfo, Path]) -> None:
    _, path = one_backup
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    done = atb_inproc("db", "verify", str(path))
    assert done.returncode == 1
    assert done.stdout.startswith("FAIL") and "sha256" in done.stdout and "altered" in done.stdout


def test_a_truncated_dump_fails_verification(one_backup: tuple[ConnInfo, Path]) -> None:
    _, path = one_backup
    with path.open("r+b") as fh:
        fh.truncate(path.stat().st_size // 2)
    done = atb_inproc("db", "verify", str(path), "--json")
    assert done.returncode == 1
    assert "truncated" in json.loads(done.stdout)[0]["reason"]


def test_deep_verify_reads_data_the_toc_check_cannot_see(
    one_backup: tuple[ConnInfo, Path], chains: list[toolchain.Toolchain]
) -> None:
    """A damaged data block with a matching manifest (e.g. damaged before hashing) shows only
    under --deep: that is what --deep is for."""
    _, path = one_backup
    data = bytearray(path.read_bytes())
    for i in range(len(data) - 4096, len(data) - 64):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))
    from backup_core.ops.verify import sha256_file, verify_backup
    from backup_core.store.manifest import read_manifest, write_manifest
    from backup_core.store.naming import manifest_path

    m = read_manifest(manifest_path(path))
    size, digest = sha256_file(path)
    from dataclasses import replace

    write_manifest(manifest_path(path), replace(m, size_bytes=size, sha256=digest))
    assert verify_backup(path, chains=chains).ok
    deep = verify_backup(path, deep=True, chains=chains)
    assert not deep.ok and deep.reason.startswith("data:")


def test_restore_creates_the_target_and_restores_exact_counts(
    pg15: Cluster, one_backup: tuple[ConnInfo, Path]
) -> None:
    source, path = one_backup
    target = source.with_dbname(source.dbname + "_restore")
    done = atb_inproc("db", "restore", str(path), "--json", url=source,
               env={"ATB_TARGET_URL": target.secret_url})
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["created"] is True
    with db.connect(target) as conn:
        assert inventory.count_rows(conn, "public", "orders") == 2000


def test_restore_refuses_the_production_database_and_a_non_empty_target(
    pg15: Cluster, one_backup: tuple[ConnInfo, Path]
) -> None:
    source, path = one_backup
    refused = atb_inproc("db", "restore", str(path), url=source,
                  env={"ATB_TARGET_URL": source.secret_url})
    assert refused.returncode == 8
    assert "it is the DATABASE_URL database" in refused.stderr
    # the same database named through another host spelling is still recognised
    alias = source.with_params(host="localhost")
    with pytest.raises(SafetyRefusal):
        guard.refuse_production_target(alias, source, allowed=False)
    other = make_database(pg15, rows=1)
    nonempty = atb_inproc("db", "restore", str(path), url=source,
                   env={"ATB_TARGET_URL": other.secret_url})
    assert nonempty.returncode == 8 and "not empty" in nonempty.stderr
    cleaned = atb_inproc("db", "restore", str(path), "--clean", url=source,
                  env={"ATB_TARGET_URL": other.secret_url})
    assert cleaned.returncode == 0, cleaned.stderr
    with db.connect(other) as conn:
        assert inventory.count_rows(conn, "public", "orders") == 2000


def test_the_policys_create_step_would_replace_production_ours_does_not(
    pg15: Cluster, one_backup: tuple[ConnInfo, Path], chains: list[toolchain.Toolchain]
) -> None:
    """The policy's `pg_restore -d mydb_restore --clean --create` would restore into the
    database named in the dump, production's own (the archive names it),
    and production would lose every write since the backup. `atb db restore` restores into
    exactly the target and leaves production's writes alone."""
    source, path = one_backup
    with db.connect(source, autocommit=True) as conn:
        conn.execute("INSERT INTO accounts(name) VALUES ('written after the backup')")
    target = source.with_dbname(source.dbname + "_restore")
    assert source.password not in target.libpq_url  # nothing secret on the command line
    done = atb_inproc("db", "restore", str(path), "--target-url", target.libpq_url, url=source)
    assert done.returncode == 0, done.stderr
    with db.connect(source) as conn:
        assert conn.execute("SELECT count(*) FROM accounts WHERE name = "
                            "'written after the backup'").fetchone() == (1,)
    with db.connect(target) as conn:
        assert inventory.count_rows(conn, "public", "accounts") == 10
    # why the runbook's step would clobber production: the archive names production's own
    # database, which that option drops and recreates (never run here, nor anywhere in atb)
    chain = toolchain.for_restore(15, chains)
    toc = run(commands.pg_restore_list_argv(chain, path), what="pg_restore --list").stdout
    assert [ln.split() for ln in toc.splitlines() if ln.startswith(";     dbname:")] == [
        [";", "dbname:", source.dbname]]


def test_identity_is_the_same_over_every_route_and_for_every_role(
    pg15: Cluster, pg18: Cluster
) -> None:
    """The guard compares what the server reports (postmaster start, port, database OID), so
    the same database over TCP, `localhost`, the unix socket and as a role that may not run
    pg_control_system() is one database; another server is another."""
    info = make_database(pg15, rows=1)
    with db.connect(pg15.url(), autocommit=True) as conn:
        conn.execute("DROP ROLE IF EXISTS plain")
        conn.execute("CREATE ROLE plain LOGIN PASSWORD 'plain-pw'")
        conn.execute("REVOKE EXECUTE ON FUNCTION pg_control_system() FROM PUBLIC")
    try:
        routes = [info, info.with_params(host="localhost"),
                  ConnInfo.make(dbname=info.dbname, host=str(pg15.socket_dir), port=pg15.port,
                                user="postgres"),
                  info.with_params(user="plain").with_password("plain-pw")]
        idents = [db.identity_of(r) for r in routes]
        assert all(i is not None for i in idents)
        assert len({(i.server, i.database_oid) for i in idents if i}) == 1
        other = db.identity_of(pg18.url())
        assert other is not None and other.server != idents[0].server  # type: ignore[union-attr]
        postgres = db.identity_of(pg15.url())
        assert postgres is not None and not postgres.same_database(idents[0])  # type: ignore
    finally:
        with db.connect(pg15.url(), autocommit=True) as conn:
            conn.execute("GRANT EXECUTE ON FUNCTION pg_control_system() TO PUBLIC")
