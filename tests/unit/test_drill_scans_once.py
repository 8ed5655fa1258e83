"""A direct `pytest --drill` picks its backup from the scan its selection check made, and
drills that backup's whole manifest, not the head the catalog cache keeps of it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from backup_core.store import catalog, catalog_cache
from backup_core.store.catalog import Backup
from backup_core.store.manifest import Manifest
from backup_core.store.naming import backup_path, manifest_path
from drills import child
from drills.options import DrillOptions
from drills.plugin import hooks

NOW = datetime.now(UTC).replace(microsecond=0)


def tree(root: Path) -> None:
    for database, hours in (("trading", range(1, 6)), ("ledger", range(2, 4))):
        for h in hours:
            at = NOW - timedelta(hours=h)
            path = backup_path(root, database, at)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"PGDMP")
            manifest_path(path).write_text(Manifest(
                database=database, file=path.name, taken_at=at.isoformat(),
                started_at=at.isoformat(), finished_at=at.isoformat(), duration_s=1.0,
                size_bytes=5, sha256="0" * 64, pg_dump_version="18.6", server_version="18.6",
                toc_entries=40, alembic_revision="0005", row_counts_mode="exact",
                row_counts={"public.t": h}).to_json())


@pytest.mark.parametrize("database", [None, "trading", "ledger", "absent"])
def test_a_direct_drill_picks_from_the_selection_checks_scan_as_from_its_own(
        tmp_path: Path, database: str | None, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "bk"
    tree(root)
    options = DrillOptions(backup_dir=root, seed=7, database=database)
    alone = hooks._select(options, NOW)  # its own scan, as under `atb drill run --sandbox docker`
    catalog.scan(root, cache_dir=catalog_cache.default_dir())  # the cache warm
    scanned = child.check_selection(options) if database != "absent" else \
        catalog.scan(root, cache_dir=catalog_cache.default_dir())
    assert scanned is not None and all(b.head_only for b in scanned)

    def no_second_scan(*args: object, **kwargs: object) -> list[Backup]:
        raise AssertionError("scanned again")

    monkeypatch.setattr(catalog, "scan", no_second_scan)
    chosen, error, eligible, backups = hooks._select(options, NOW, scanned)
    assert (chosen, error, eligible) == alone[:3]
    assert backups is not None and alone[3] is not None
    assert [b.path for b in backups] == [b.path for b in alone[3]]
    if database is None:  # two databases in the tree: the drill needs one named
        assert chosen is None and error is not None and error.startswith(
            "backups of several databases (ledger, trading): name one with --database")
        return
    if database == "absent":
        assert chosen is None and error is not None and error.startswith(
            "no backup of database absent")
        return
    assert chosen is not None and chosen.database == database and not chosen.head_only
    assert chosen.manifest is not None and chosen.manifest.row_counts == {
        "public.t": int((NOW - (chosen.taken_at or NOW)).total_seconds() // 3600)}
