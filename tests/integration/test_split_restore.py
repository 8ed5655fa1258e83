"""A drill's restore loads its largest table over several COPY sessions: every row exactly
as it was, whatever its values hold (newlines, backslashes, a line of `\\.`, NULLs, bytes)."""

from __future__ import annotations

from pathlib import Path

import pytest

from backup_core.ops import backup, restore, split_copy
from backup_core.ops.restore import RestoreRequest, restore_backup
from backup_core.reading import inventory, toc
from backup_core.store.manifest import read_manifest
from backup_core.store.naming import manifest_path
from backup_core.tools import commands, db, toolchain
from backup_core.tools.cluster import Cluster
from backup_core.tools.errors import CommandFailed
from backup_core.tools.runner import run
from tests.conftest import make_database
from tests.helpers import fingerprint

TRICKY = ["line\nbreak", "back\\slash", "\\.", "tab\there", "", "caf\u00e9 \u2603", "\r\n",
          "-- not a comment", "\\N"]


def test_the_largest_tables_data_loaded_over_sessions_restores_exactly(
    pg15: Cluster, tmp_path: Path, chains: list[toolchain.Toolchain],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    info = make_database(pg15, rows=3000)
    with db.connect(info, autocommit=True) as conn:
        conn.execute("ALTER TABLE orders ADD COLUMN raw bytea, ADD COLUMN f float8")
        for i, text in enumerate(TRICKY):
            conn.execute("UPDATE orders SET note = %s, raw = %s, f = %s WHERE id %% 9 = %s",
                         (text, text.encode(), -0.0 if i % 2 else 1.5, i))
        conn.execute("UPDATE orders SET note = NULL WHERE id % 11 = 0")
    dump = backup.create_backup(info, tmp_path / "b", chains=chains).path
    manifest = read_manifest(manifest_path(dump))
    # small reads, so rows are cut across them; any table of 1000 rows is worth splitting
    monkeypatch.setattr(split_copy, "CHUNK", 4096)
    monkeypatch.setattr(split_copy, "MIN_ROWS", 1000)
    target = pg15.url(f"split_{info.dbname}")
    with db.connect(pg15.url(), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{target.dbname}"')
    done = restore_backup(RestoreRequest(dump, target, no_owner=True, jobs=3, scratch=True,
                                         split=True),
                          chains=chains)
    assert ("the data of public.orders (the largest table) loaded over 3 COPY sessions "
            "beside pg_restore's") in done.guard
    with db.connect(target) as conn:
        inventory.stabilise_output(conn)
        restored = {f"public.{t}": inventory.count_and_checksum(conn, "public", t)
                    for t in ("orders", "accounts", "system_events", "alembic_version")}
        assert inventory.schema_inventory(conn) == manifest.inventory
        invalid = conn.execute("SELECT count(*) FROM pg_constraint WHERE NOT convalidated"
                               ).fetchone()
    assert {k: str(v[1]) for k, v in restored.items()} == \
        {k: manifest.row_checksums[k] for k in restored}
    assert restored["public.orders"][0] == 3000
    assert invalid == (0,)
    assert fingerprint(target) == fingerprint(info)


def test_a_session_that_fails_fails_the_load_in_one_line(
    pg15: Cluster, tmp_path: Path, chains: list[toolchain.Toolchain],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    info = make_database(pg15, rows=3000)
    dump = backup.create_backup(info, tmp_path / "b", chains=chains).path
    target = pg15.url(f"fail_{info.dbname}")
    with db.connect(pg15.url(), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{target.dbname}"')
    chain = toolchain.for_restore(15, chains)
    restore._pg_restore(chain, dump, target, jobs=1, no_owner=True, section="pre-data")
    with db.connect(target, autocommit=True) as conn:  # rows the server will refuse
        conn.execute("ALTER TABLE orders ADD CONSTRAINT cheap CHECK (price < 100)")
    listing = run(commands.pg_restore_list_argv(chain, dump), what="list").stdout
    [entry] = [e for e in toc.parse_listing(listing)
               if e.desc == "TABLE DATA" and e.tag == "orders"]
    monkeypatch.setattr(split_copy, "CHUNK", 4096)
    with pytest.raises(CommandFailed) as failed:
        split_copy.load_split(chain, dump, entry, target, sessions=3, scratch_dir=tmp_path)
    assert str(failed.value) == ('loading the data of public.orders: new row for relation '
                                 '"orders" violates check constraint "cheap"')


def test_pg_restore_failing_inside_the_table_is_named_by_its_own_error(
    pg15: Cluster, tmp_path: Path, chains: list[toolchain.Toolchain],
) -> None:
    """An archive cut short inside the table's data: the load fails with pg_restore's own
    line, not only that its output ended early."""
    info = make_database(pg15, rows=3000)
    dump = backup.create_backup(info, tmp_path / "b", chains=chains).path
    chain = toolchain.for_restore(15, chains)
    listing = run(commands.pg_restore_list_argv(chain, dump), what="list").stdout
    [entry] = [e for e in toc.parse_listing(listing)
               if e.desc == "TABLE DATA" and e.tag == "orders"]
    cut_short = tmp_path / "cut.dump"
    whole = dump.read_bytes()
    cut_short.write_bytes(whole[: len(whole) // 2])
    target = pg15.url(f"cut_{info.dbname}")
    with db.connect(pg15.url(), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{target.dbname}"')
    restore._pg_restore(chain, dump, target, jobs=1, no_owner=True, section="pre-data")
    with pytest.raises(CommandFailed) as failed:
        split_copy.load_split(chain, cut_short, entry, target, sessions=2,
                              scratch_dir=tmp_path)
    message = str(failed.value)
    assert message.startswith("pg_restore could not read the data of public.orders: "
                              "pg_restore: error: "), message
    assert "\n" not in message
    with db.connect(target) as conn:  # nothing of it committed
        assert conn.execute("SELECT count(*) FROM orders").fetchone() == (0,)
