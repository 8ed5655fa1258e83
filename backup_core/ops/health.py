"""`atb db status`: every database's backups (and a pgBackRest stanza's WAL archiving)
judged against the schedule and the RPO, and the same judgement as Prometheus metrics."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from backup_core.ops import offsite, status
from backup_core.pitr import wal_status
from backup_core.pitr.pgbackrest import Stanza
from backup_core.reading import forecast
from backup_core.store import catalog
from backup_core.tools.conninfo import ConnInfo
from backup_core.tools.durations import parse_duration
from backup_core.tools.errors import ConfigError
from backup_core.tools.fsutil import atomic_write_text


@dataclass(frozen=True)
class Targets:
    """The objectives, as given (`1h`, `15m`, `7d`): parsed before any work starts."""

    schedule: str = "1h"
    rpo: str = "15m"
    window: str = "7d"
    max_drill_age: str = "92d"
    rto: str = "1h"


@dataclass(frozen=True)
class HealthReport:
    databases: tuple[status.Status, ...]
    stanzas: tuple[wal_status.ArchiveStatus, ...]
    rpo_s: float
    offsite: tuple[offsite.OffsiteStatus, ...] = ()  # with --repo
    # the RTO forecast of each database with drills on record; a miss only with `gate`
    forecasts: tuple[forecast.RtoForecast, ...] = ()
    gate: bool = False

    @property
    def ok(self) -> bool:
        return (all(s.ok for s in self.databases) and all(a.ok for a in self.stanzas)
                and all(o.ok for o in self.offsite)
                and not (self.gate and any(f.warning for f in self.forecasts)))


def check_health(
    backup_dir: Path, targets: Targets, *, database: str | None = None,
    stanza: Stanza | None = None, server_url: str | None = None,
    prometheus: Path | None = None, now: datetime | None = None,
    repo: str | None = None, offsite_lag: str = "1h", forecast_rto: bool = False,
) -> HealthReport:
    """Judge each database of the tree (or `database`), and with `stanza` its WAL archiving
    as `server_url`'s archiver reports it; write the metrics to `prometheus` atomically."""
    schedule_s = parse_duration(targets.schedule, what="--schedule")
    rpo_s = parse_duration(targets.rpo, what="--rpo")
    window_days = parse_duration(targets.window, what="--window") / 86400
    max_drill_age_s = parse_duration(targets.max_drill_age, what="--max-drill-age")
    lag_s = parse_duration(offsite_lag, what="--offsite-lag")
    rto_s = parse_duration(targets.rto, what="--rto-target")
    items = catalog.scan(backup_dir if stanza is not None else catalog.require_tree(
        backup_dir), database)  # pgBackRest's status alone needs no tree
    hint = catalog.real_tree(items, root=backup_dir)
    if hint:  # its databases would be named "2026": judged, they say nothing true
        raise ConfigError(hint)
    names = [database] if database else sorted({b.database for b in items if b.is_backup})
    if not names and stanza is None:
        raise ConfigError(f"no backups under {backup_dir}: run `atb db backup` first")
    now = now or datetime.now(UTC)
    databases = tuple(status.database_status(items, database=n, now=now, schedule_s=schedule_s,
                                             rpo_s=rpo_s, window_days=window_days,
                                             max_drill_age_s=max_drill_age_s)
                      for n in names)
    stanzas = () if stanza is None else (wal_status.archive_status(
        stanza, ConnInfo.parse(server_url or "", what="DATABASE_URL"), now=now, rpo_s=rpo_s),)
    remote = () if repo is None else offsite.offsite_status(repo, backup_dir, max_lag_s=lag_s,
                                                            database=database, now=now)
    if prometheus is not None:
        atomic_write_text(prometheus, status.prometheus_text(list(databases), stanzas)
                          + (offsite.prometheus_text(remote) if repo else ""), mode=0o644)
    forecasts = tuple(f for f in (forecast.forecast(items, database=n, target_s=rto_s, now=now)
                                  for n in names) if f is not None)
    return HealthReport(databases, stanzas, rpo_s, offsite=remote, forecasts=forecasts,
                        gate=forecast_rto)
