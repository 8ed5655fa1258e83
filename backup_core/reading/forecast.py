"""The RTO forecast: from the drills recorded beside each backup (restore time against archive
size, per source), the RTO the newest backup would take, and the one the size trend leads to,
before growth breaks the target.

A pure decision over catalog records: the fit is least squares of RTO on archive size
(`fixed + per_gb * size`); one drill, or drills of one size, give a line through the origin
(every second scales with size: the pessimistic reading of a single point).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from backup_core.store.catalog import Backup

GB = 1 << 30
WARN_FRACTION = 0.8  # the forecast warns when it passes this share of the RTO target
HORIZON_DAYS = 90.0
TREND_DAYS = 90.0  # the size trend is fitted over the backups of this many days


@dataclass(frozen=True)
class Point:
    size_bytes: int
    rto_s: float
    at: str


@dataclass(frozen=True)
class Model:
    fixed_s: float
    per_gb_s: float
    drills: int
    how: str

    def rto(self, size_bytes: float) -> float:
        return self.fixed_s + self.per_gb_s * size_bytes / GB


@dataclass(frozen=True)
class RtoForecast:
    """One source's forecast; `warning` when either forecast passes 80 % of the target."""

    database: str
    source: str
    model: Model
    newest: str
    newest_size_bytes: int
    newest_rto_s: float
    growth_bytes_per_day: float | None
    horizon_days: float
    trend_size_bytes: int | None
    trend_rto_s: float | None
    target_s: float
    passes_on: str | None  # the day the trend's forecast passes 80 % of the target

    @property
    def warn_at_s(self) -> float:
        return WARN_FRACTION * self.target_s

    @property
    def warning(self) -> bool:
        worst = max(self.newest_rto_s, self.trend_rto_s or 0.0)
        return worst > self.warn_at_s


def points(backups: list[Backup]) -> list[Point]:
    """Every drill that restored (a PASS or FAIL with a measured RTO; never an INCOMPLETE
    one) of a sound backup, with that backup's archive size."""
    found = []
    for b in backups:
        if not b.complete:
            continue
        for v in b.drills:
            if v.rto_s is not None and v.rto_s > 0 and v.verdict != "INCOMPLETE":
                found.append(Point(b.size, v.rto_s, v.at))
    return found


def fit(found: list[Point]) -> Model | None:
    """RTO against archive size: least squares where the sizes differ, else through the
    origin; never a negative fixed cost or a falling slope (noise would forecast growth
    as getting faster)."""
    if not found:
        return None
    xs = [p.size_bytes / GB for p in found]
    ys = [p.rto_s for p in found]
    n = len(found)
    through_origin = Model(0.0, sum(ys) / max(sum(xs), 1e-12), n,
                           f"proportional to archive size, from {n} drill{'s' * (n > 1)}")
    mean_x, mean_y = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mean_x) ** 2 for x in xs)
    if n < 2 or sxx <= (1e-3 * max(mean_x, 1e-9)) ** 2:
        return through_origin
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / sxx
    fixed = mean_y - slope * mean_x
    if slope <= 0 or fixed < 0:
        return through_origin
    return Model(fixed, slope, n, f"least squares over {n} drills")


def size_trend(backups: list[Backup], *, now: datetime) -> float | None:
    """Archive growth in bytes per day over the sound backups of the last `TREND_DAYS`."""
    recent = [(b.taken_at, b.size) for b in backups if b.complete and b.taken_at is not None
              and b.taken_at >= now - timedelta(days=TREND_DAYS)]
    if len(recent) < 2:
        return None
    days = [(at - now).total_seconds() / 86400 for at, _ in recent]
    sizes = [float(s) for _, s in recent]
    mean_d, mean_s = sum(days) / len(days), sum(sizes) / len(sizes)
    sdd = sum((d - mean_d) ** 2 for d in days)
    if sdd == 0:
        return None
    return sum((d - mean_d) * (s - mean_s) for d, s in zip(days, sizes, strict=True)) / sdd


def forecast(backups: list[Backup], *, database: str, target_s: float, now: datetime,
             horizon_days: float = HORIZON_DAYS) -> RtoForecast | None:
    """The forecast for the newest source of `database` (None without a sound backup or a
    drill that restored one)."""
    sound = [b for b in backups if b.database == database and b.complete]
    if not sound:
        return None
    newest = max(sound, key=lambda b: (b.taken_at or datetime.min.replace(tzinfo=now.tzinfo),
                                       b.path.name))
    mine = [b for b in sound if b.source == newest.source]
    model = fit(points(mine))
    if model is None:
        return None
    growth = size_trend(mine, now=now)
    trend_size = None if growth is None else max(0, int(newest.size + growth * horizon_days))
    passes_on = None
    limit = WARN_FRACTION * target_s
    if growth is not None and growth > 0 and model.per_gb_s > 0:
        needed = (limit - model.fixed_s) / model.per_gb_s * GB
        days = (needed - newest.size) / growth
        if days > 0:
            passes_on = f"{now + timedelta(days=min(days, 36500)):%Y-%m-%d}"
    return RtoForecast(
        database=database, source=newest.source, model=model, newest=newest.path.name,
        newest_size_bytes=newest.size, newest_rto_s=round(model.rto(newest.size), 3),
        growth_bytes_per_day=None if growth is None else round(growth, 1),
        horizon_days=horizon_days, trend_size_bytes=trend_size,
        trend_rto_s=None if trend_size is None else round(model.rto(trend_size), 3),
        target_s=target_s, passes_on=passes_on)
