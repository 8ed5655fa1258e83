"""`atb db status --stanza`: is WAL archiving keeping the RPO?

What could be lost right now is everything since the last segment pgBackRest archived:
`pg_stat_archiver` on the server says when that was and whether archiving is failing;
`pgbackrest info` says which backups the point-in-time window starts from.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import ClassVar

from backup_core.pitr import pgbackrest
from backup_core.pitr.pgbackrest import Stanza, StanzaInfo
from backup_core.tools import db
from backup_core.tools.conninfo import ConnInfo
from backup_core.tools.durations import human


@dataclass(frozen=True)
class ArchiveStatus:
    stanza: str
    repo_status: str
    backups: int
    newest_backup: str | None
    oldest_backup_stop: str | None
    last_archived_wal: str | None
    last_archived_at: str | None
    last_failed_wal: str | None
    last_failed_at: str | None
    failed_count: int
    lag_s: float | None  # now minus the last archived segment's time
    window_s: float | None  # oldest backup's stop to the last archived segment
    rpo_s: float
    missed: tuple[str, ...] = field(default=())
    # derived values that belong to the published record (`--json`)
    JSON_PROPERTIES: ClassVar[tuple[str, ...]] = ("ok",)

    @property
    def ok(self) -> bool:
        return not self.missed


@dataclass(frozen=True)
class Archiver:
    """The server's `pg_stat_archiver` row, and whether archiving is on at all."""

    last_archived_wal: str | None
    last_archived_at: datetime | None
    last_failed_wal: str | None
    last_failed_at: datetime | None
    failed_count: int
    archive_mode: str


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def read_archiver(server: ConnInfo) -> Archiver:
    with db.connect(server) as conn:
        row = conn.execute("SELECT last_archived_wal, last_archived_time, last_failed_wal, "
                           "last_failed_time, failed_count, current_setting('archive_mode') "
                           "FROM pg_stat_archiver").fetchone()
    assert row is not None
    return Archiver(last_archived_wal=row[0], last_archived_at=_utc(row[1]),
                    last_failed_wal=row[2], last_failed_at=_utc(row[3]),
                    failed_count=int(row[4] or 0), archive_mode=str(row[5]))


def judge(info: StanzaInfo, archiver: Archiver, *, now: datetime,
          rpo_s: float) -> ArchiveStatus:
    """Pure: the stanza and the archiver's counters against the RPO."""
    archived, failed = archiver.last_archived_at, archiver.last_failed_at
    lag = (now - archived).total_seconds() if archived else None
    oldest = min((b.stopped for b in info.backups), default=None)
    window = (archived - oldest).total_seconds() if archived and oldest else None
    missed = []
    if archiver.archive_mode == "off":
        missed.append("archive_mode is off: nothing is archived")
    if info.status != "ok":
        missed.append(f"pgBackRest reports the stanza as: {info.status}")
    if not info.backups:
        missed.append("no pgBackRest backup: there is nothing to replay WAL onto")
    if archived is None:
        missed.append("no WAL segment has been archived yet")
    elif lag is not None and lag > rpo_s:
        missed.append(f"archiving lags {human(lag)}, more than the RPO of {human(rpo_s)}: the "
                      f"last segment archived was {archiver.last_archived_wal} at "
                      f"{archived.isoformat()}")
    if failed is not None and (archived is None or failed > archived):
        missed.append(f"archiving is failing: {archiver.last_failed_wal} failed at "
                      f"{failed.isoformat()} ({archiver.failed_count} failures so far); "
                      "see the server log for archive_command's error")
    newest = max(info.backups, key=lambda b: b.stopped, default=None)
    return ArchiveStatus(
        stanza=info.name, repo_status=info.status, backups=len(info.backups),
        newest_backup=newest.label if newest else None,
        oldest_backup_stop=oldest.isoformat() if oldest else None,
        last_archived_wal=archiver.last_archived_wal,
        last_archived_at=archived.isoformat() if archived else None,
        last_failed_wal=archiver.last_failed_wal,
        last_failed_at=failed.isoformat() if failed else None,
        failed_count=archiver.failed_count, lag_s=lag, window_s=window,
        rpo_s=rpo_s, missed=tuple(missed))


def archive_status(stanza: Stanza, server: ConnInfo, *, now: datetime,
                   rpo_s: float) -> ArchiveStatus:
    return judge(pgbackrest.info(stanza), read_archiver(server), now=now, rpo_s=rpo_s)
