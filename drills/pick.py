"""Which backup to drill: uniformly random among complete backups in the window, by seed."""

from __future__ import annotations

import random
from datetime import datetime, timedelta

from backup_core.store.catalog import Backup
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
    return random.Random(seed).choice(choices)
