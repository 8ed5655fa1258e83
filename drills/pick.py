"""Which backup to drill: uniformly random among complete backups in the window, by seed."""

from __future__ import annotations

import random
from datetime import datetime, timedelta

from backup_core.store.catalog import Backup
from backup_core.store.naming import dir_name, printable
from backup_core.tools.errors import AtbError


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


def none_of(database: str, *, filed: bool, held: list[str]) -> str:
    """Why the tree has no backup of `database` to drill, in words that are true of it:
    `filed`, it has the database's directory (and nothing in it); `held`, the databases it
    does hold backups of."""
    where = (f"the directory {printable(dir_name(database))}/ holds no backup of it" if filed
             else f"the tree has no directory {printable(dir_name(database))}/ for it")
    return (f"no backup of database {printable(database)}: {where} ("
            + (f"the tree holds backups of {', '.join(printable(n) for n in held)})" if held
               else "the tree holds no backups)"))


def filed(parts: tuple[str, ...]) -> bool:
    """Whether a path inside the tree, as `parts` below it, is where a backup is filed
    (`<db>/<YYYY>/<MM>/<DD>/<file>`): its directory then names its database."""
    return len(parts) == 5 and [len(p) for p in parts[1:4]] == [4, 2, 2] \
        and "".join(parts[1:4]).isdigit()
