"""`atb db status`: are backups keeping to the schedule and the RPO target?

Pure functions over catalog records, plus node_exporter textfile rendering.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import ClassVar

from backup_core.pitr.wal_status import ArchiveStatus
from backup_core.store.catalog import FUTURE, Backup
from backup_core.store.naming import printable
from backup_core.tools.durations import human, plural


@dataclass(frozen=True)
class Status:
    database: str
    backups: int
    newest: str | None
    newest_age_s: float | None
    newest_size: int | None
    newest_duration_s: float | None
    largest_gap_s: float | None
    window_days: float
    schedule_s: float
    rpo_s: float
    last_drill_passed: str | None
    missed: tuple[str, ...] = field(default=())
    # the data lost in the worst case: the largest observed gap, and never less than the
    # schedule's interval (two backups seconds apart do not make an hourly schedule faster)
    worst_loss_s: float | None = None
    # sound backups per source (server and database): more than one is worth knowing
    sources: dict[str, int] = field(default_factory=dict)
    # the newest passing drill against the drill policy (`--max-drill-age`): told (and
    # notified), not a miss of the backups' targets
    max_drill_age_s: float | None = None
    drill_overdue: str = ""
    # derived values that belong to the published record (`--json`)
    JSON_PROPERTIES: ClassVar[tuple[str, ...]] = ("ok",)

    @property
    def ok(self) -> bool:
        return not self.missed


def database_status(
    backups: list[Backup], *, database: str, now: datetime, schedule_s: float, rpo_s: float,
    grace_s: float = 300, window_days: float = 7, max_drill_age_s: float | None = None,
) -> Status:
    """Judge one database's complete backups against the schedule and the RPO target.

    The worst case data loss over the window is the largest gap between consecutive backups
    (or since the newest one): a 15-minute RPO cannot be met by hourly dumps, and we say so.
    """
    done = sorted((b for b in backups if b.complete and b.database == database and b.taken_at),
                  key=lambda b: b.taken_at or now)
    missed = anomalies(backups, database=database, now=now, window_days=window_days)
    sources = Counter(b.source for b in done)
    missed += mixed_sources(done, schedule_s=schedule_s + grace_s)
    if not done:
        return Status(database, 0, None, None, None, None, None, window_days, schedule_s, rpo_s,
                      None, ("no complete backup found", *missed))
    newest = done[-1]
    assert newest.taken_at is not None
    age = (now - newest.taken_at).total_seconds()
    start = now - timedelta(days=window_days)
    times = [b.taken_at for b in done if b.taken_at and b.taken_at >= start]
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(times)]
    gaps.append(age)
    largest = max(gaps)
    worst = max(largest, schedule_s)
    if age > schedule_s + grace_s:
        missed.append(f"newest backup is {human(age)} old, schedule is every {human(schedule_s)}")
    if age > rpo_s:
        missed.append(f"newest backup is {human(age)} old, RPO target is {human(rpo_s)}")
    missed += rpo_misses(schedule_s=schedule_s, rpo_s=rpo_s, largest_gap_s=largest,
                         window_days=window_days)
    drilled = [b for b in done if b.drill is not None and b.drill.passed]
    last_drill = max((b.drill.at for b in drilled if b.drill), default=None)
    return Status(
        database=database, backups=len(done), newest=newest.taken_at.isoformat(),
        newest_age_s=round(age, 1), newest_size=newest.size,
        newest_duration_s=newest.manifest.duration_s if newest.manifest else None,
        largest_gap_s=round(largest, 1), window_days=window_days, schedule_s=schedule_s,
        rpo_s=rpo_s, last_drill_passed=last_drill, missed=tuple(missed),
        sources=dict(sorted(sources.items())), worst_loss_s=round(worst, 1),
        max_drill_age_s=max_drill_age_s,
        drill_overdue=drill_overdue(last_drill, now=now, max_age_s=max_drill_age_s),
    )


def drill_overdue(last_passed: str | None, *, now: datetime, max_age_s: float | None) -> str:
    """Why the drill policy is not kept (no passing drill within `max_age_s`), or ""."""
    if max_age_s is None:
        return ""
    if last_passed is None:
        return f"no passing drill recorded; the policy asks for one every {human(max_age_s)}"
    try:
        age = (now - datetime.fromisoformat(last_passed)).total_seconds()
    except (ValueError, TypeError):
        return f"the newest passing drill's time {last_passed!r} cannot be read"
    if age <= max_age_s:
        return ""
    return (f"newest passing drill {last_passed} is {human(age)} old; the policy asks for one "
            f"every {human(max_age_s)}")


def rpo_misses(*, schedule_s: float, rpo_s: float, largest_gap_s: float | None,
               window_days: float) -> list[str]:
    """The RPO judged on the schedule and the observed gaps together: a schedule slower than
    the target misses it whatever the backups so far happen to show (two of them seconds
    apart, or a single one), and an observed gap above the target misses it too."""
    found = []
    if schedule_s > rpo_s:
        found.append(f"backups every {human(schedule_s)} cannot meet the RPO target of "
                     f"{human(rpo_s)}: the data lost in the worst case is the time between two "
                     f"backups; back up at least every {human(rpo_s)}, or archive WAL")
    if largest_gap_s is not None and largest_gap_s > rpo_s:
        found.append(f"largest gap between backups in the last {_days(window_days)} is "
                     f"{human(largest_gap_s)}, above the RPO target of {human(rpo_s)}")
    return found


def _days(days: float) -> str:
    return f"{days:g} day" if days == 1 else f"{days:g} days"


def mixed_sources(done: list[Backup], *, schedule_s: float) -> list[str]:
    """One database's directory holding backups of two servers, one of which stopped: they
    never cover each other, and the stopped one is no longer being backed up here. (Backups
    from before atb recorded the server are left out: an upgrade is not a second server.)"""
    newest: dict[str, datetime] = {}
    count: Counter[str] = Counter()
    for b in done:
        if b.taken_at is None or b.source.startswith("unknown source"):
            continue
        count[b.source] += 1
        newest[b.source] = max(newest.get(b.source, b.taken_at), b.taken_at)
    if len(newest) < 2:
        return []
    latest = max(newest.values())
    return [f"{plural(count[src], 'backup')} of {src} stopped at {at:%Y-%m-%dT%H:%M:%SZ} "
            f"while another server's continue in the same directory ({len(newest)} sources): "
            "two servers write this database's backups into one BACKUP_DIR; they never cover "
            "each other"
            for src, at in sorted(newest.items())
            if (latest - at).total_seconds() > schedule_s]


def anomalies(backups: list[Backup], *, database: str, now: datetime,
              window_days: float) -> list[str]:
    """Backups that exist but cannot be trusted: dated in the future (a clock was wrong), or
    not sound within the window (bad manifest, damaged, failed verification)."""
    mine = [b for b in backups if b.database == database and b.is_backup]
    found = []
    future = [b for b in mine if b.state == FUTURE]
    if future:
        found.append(f"{plural(len(future), 'backup')} dated in the future (newest "
                     f"{max(b.taken_at for b in future if b.taken_at):%Y-%m-%dT%H:%M:%SZ}): a "
                     f"clock was wrong; {'it is' if len(future) == 1 else 'they are'} not "
                     "counted")
    start = now - timedelta(days=window_days)
    unsound = Counter(b.state for b in mine if not b.complete and b.state != FUTURE
                      and b.taken_at and b.taken_at >= start)
    if unsound:
        n = sum(unsound.values())
        found.append(f"{plural(n, 'backup')} in the last {_days(window_days)} "
                     f"{'is' if n == 1 else 'are'} not sound ("
                     + ", ".join(f"{k} {v}" for k, v in sorted(unsound.items()))
                     + "): see `atb db list`")
    return found


def _number(value: float) -> str:
    """A sample value as Prometheus parses it, exactly: integers in full, floats round-trip."""
    if float(value).is_integer() and abs(value) < 2**63:
        return str(int(value))
    return repr(float(value))


def prometheus_text(statuses: list[Status], archives: Sequence[ArchiveStatus] = ()) -> str:
    """node_exporter textfile metrics, one series per database (and per pgBackRest stanza)."""
    metrics: dict[str, tuple[str, list[str]]] = {
        "atb_backup_last_success_timestamp_seconds": ("gauge", []),
        "atb_backup_last_size_bytes": ("gauge", []),
        "atb_backup_last_duration_seconds": ("gauge", []),
        "atb_backup_count": ("gauge", []),
        "atb_backup_largest_gap_seconds": ("gauge", []),
        "atb_backup_targets_met": ("gauge", []),
        "atb_drill_last_pass_timestamp_seconds": ("gauge", []),
    }

    def add(name: str, db: str, value: float | None) -> None:
        if value is not None:
            metrics[name][1].append(f'{name}{{database="{_label(db)}"}} {_number(value)}')

    for s in statuses:
        add("atb_backup_last_success_timestamp_seconds", s.database,
            datetime.fromisoformat(s.newest).timestamp() if s.newest else None)
        add("atb_backup_last_size_bytes", s.database, s.newest_size)
        add("atb_backup_last_duration_seconds", s.database, s.newest_duration_s)
        add("atb_backup_count", s.database, s.backups)
        add("atb_backup_largest_gap_seconds", s.database, s.largest_gap_s)
        add("atb_backup_targets_met", s.database, 1 if s.ok else 0)
        add("atb_drill_last_pass_timestamp_seconds", s.database,
            datetime.fromisoformat(s.last_drill_passed).timestamp() if s.last_drill_passed
            else None)
    for a in archives:
        for name, value in (("atb_wal_archive_lag_seconds", a.lag_s),
                            ("atb_pitr_window_seconds", a.window_s),
                            ("atb_wal_archive_targets_met", 1 if a.ok else 0)):
            metrics.setdefault(name, ("gauge", []))
            if value is not None:
                metrics[name][1].append(f'{name}{{stanza="{_label(a.stanza)}"}} '
                                        f"{_number(value)}")
    lines: list[str] = []
    for name, (kind, samples) in metrics.items():
        lines += [f"# TYPE {name} {kind}", *samples]
    return "\n".join(lines) + "\n"


def _label(value: str) -> str:
    """A label value as Prometheus reads it: UTF-8 (a name in other bytes escaped), quoted."""
    value = printable(value)
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
