"""Which backup to drill: uniformly random among complete backups in the window, by seed."""

from __future__ import annotations

import random
from datetime import datetime, timedelta
from pathlib import Path

from backup_core.store import catalog
from backup_core.store.catalog import Backup
from backup_core.store.manifest import ManifestError, read_manifest
from backup_core.store.naming import manifest_path, printable
from backup_core.tools.errors import AtbError, ConfigError


class NothingToDrill(AtbError):
    """The window holds no complete backup."""


def eligible(backups: list[Backup], *, now: datetime, window_days: float,
             database: str | None = None) -> list[Backup]:
    start = now - timedelta(days=window_days)
    found = [b for b in backups if b.complete and b.taken_at and b.taken_at >= start
             and (database is None or b.database == database)]
    return sorted(found, key=lambda b: str(b.path))


def pick(backups: list[Backup], *, now: datetime, window_days: float, seed: int,
         database: str | None = None) -> Backup:
    """The same seed over the same inventory always picks the same backup."""
    return picked(backups, now=now, window_days=window_days, seed=seed, database=database)[0]


def picked(backups: list[Backup], *, now: datetime, window_days: float, seed: int,
           database: str | None = None) -> tuple[Backup, int]:
    """`pick`'s choice and how many eligible backups it was made among (the catalog
    filtered once)."""
    dbs = sorted({b.database for b in backups if b.complete})
    if database is None and len(dbs) > 1:
        raise NothingToDrill(f"backups of several databases ({', '.join(dbs)}): "
                             "name one with --database")
    choices = eligible(backups, now=now, window_days=window_days, database=database)
    if not choices:
        raise NothingToDrill(
            f"no complete backup in the last {window_days:g} days"
            + (f" for database {database}" if database else "")
            + ": backups are not being taken, or BACKUP_DIR points elsewhere"
        )
    return random.Random(seed).choice(choices), len(choices)


def check_tree(backup_dir: Path, database: str | None) -> None:
    """A tree the drill cannot pick from, refused (`ConfigError`, exit 2) before anything
    starts: one a level off the real one (the backups' own `<YYYY>/` directories, or a tree
    one level down), and a `--database` it holds no directory of. A tree that merely holds no
    recent backup is the drill's verdict (FAIL: backups are not being taken), not this."""
    tops = catalog.database_dirs(backup_dir)
    if not any(_years(folder) for folder, _ in tops):
        off = _one_level_off(backup_dir, [folder for folder, _ in tops])
        if off:
            raise ConfigError(f"BACKUP_DIR {printable(str(backup_dir))} holds no database's "
                              f"directory (<db>/<YYYY>/<MM>/<DD>/): {off}")
    if database is not None and not catalog.database_dirs(backup_dir, database):
        held = ", ".join(printable(name) for _, name in tops)
        raise ConfigError(f"--database {printable(database)}: no backups of it in BACKUP_DIR "
                          f"{printable(str(backup_dir))} ("
                          + (f"it holds backups of {held})" if held else "it holds none)"))


def check_manifest(backup: Path, backup_dir: Path) -> None:
    """A `--backup` outside the tree is known by its manifest alone (which database, what it
    holds): without a readable one beside it there is nothing to drill it as (exit 2). Filed
    in the tree, its directory names the database, and a missing manifest is the backup's
    fault: the drill FAILs its integrity check."""
    try:
        parts = backup.absolute().relative_to(backup_dir.absolute()).parts
    except ValueError:
        parts = ()
    if len(parts) == 5 and [len(p) for p in parts[1:4]] == [4, 2, 2] \
            and "".join(parts[1:4]).isdigit():  # <db>/<YYYY>/<MM>/<DD>/<file>
        return
    try:
        read_manifest(manifest_path(backup))
    except ManifestError as exc:
        raise ConfigError(f"--backup {printable(str(backup))}: {exc}: the drill cannot tell "
                          "which database it holds; give a dump beside the manifest `atb db "
                          "backup` wrote with it") from exc


def _years(folder: Path) -> list[Path]:
    """`folder`'s `<YYYY>/` directories (a database's directory holds them)."""
    return [d for d in _dirs(folder) if len(d.name) == 4 and d.name.isdigit()]


def _dirs(folder: Path) -> list[Path]:
    try:
        return sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    except OSError:
        return []


def _one_level_off(backup_dir: Path, tops: list[Path]) -> str:
    """What to do when `backup_dir` is one database's directory (it holds `<YYYY>/<MM>/`) or
    the directory above the tree (a directory in it holds `<db>/<YYYY>/`); empty otherwise."""
    years = [d for d in tops if len(d.name) == 4 and d.name.isdigit()
             and any(len(m.name) == 2 and m.name.isdigit() for m in _dirs(d))]
    if years:
        return (f"it looks like one database's directory (it holds {years[0].name}/); point "
                f"BACKUP_DIR at its parent, {printable(str(backup_dir.absolute().parent))}")
    for top in tops:
        for db in _dirs(top):
            if _years(db):
                return (f"{printable(str(top))} looks like the backup tree (it holds "
                        f"{db.name}/{_years(db)[0].name}/); point BACKUP_DIR there")
    return ""
