"""The RTO forecast: a fit of the drills' restore times against archive size, the size
trend, and `atb db status --forecast-rto` exiting 1 past 80 % of the target."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from backup_core.reading import forecast
from backup_core.reading.forecast import GB, Point, fit
from backup_core.store.catalog import COMPLETE, Backup
from backup_core.store.manifest import Manifest
from backup_core.store.naming import backup_path, manifest_path
from backup_core.store.verdicts import DrillVerdict, record_drill
from tests.helpers import atb_inproc

NOW = datetime(2026, 11, 29, 12, tzinfo=UTC)


def backup(days_ago: float, size: int, rto: float | None = None,
           verdict: str = "PASS") -> Backup:
    at = NOW - timedelta(days=days_ago)
    drills = () if rto is None else (DrillVerdict(passed=verdict == "PASS", at="x", rto_s=rto,
                                                  verdict=verdict),)
    return Backup(path=Path(f"/b/app/backup-{at:%Y%m%dT%H%M%SZ}.dump"), database="app",
                  state=COMPLETE, taken_at=at, size=size, mtime=0, drills=drills)


def test_least_squares_over_drills_of_different_sizes() -> None:
    model = fit([Point(1 * GB, 12.0, "a"), Point(2 * GB, 22.0, "b"), Point(3 * GB, 32.0, "c")])
    assert model is not None
    assert (round(model.fixed_s, 6), round(model.per_gb_s, 6), model.drills) == (2.0, 10.0, 3)
    assert model.how == "least squares over 3 drills"
    assert model.rto(4 * GB) == pytest.approx(42.0)


def test_one_drill_or_a_falling_fit_scales_through_the_origin() -> None:
    one = fit([Point(GB // 2, 30.0, "a")])
    assert one is not None and (one.fixed_s, one.per_gb_s) == (0.0, 60.0)
    assert one.how == "proportional to archive size, from 1 drill"
    noisy = fit([Point(1 * GB, 30.0, "a"), Point(2 * GB, 20.0, "b")])  # bigger was faster
    assert noisy is not None and (noisy.fixed_s, noisy.per_gb_s) == (0.0, 50.0 / 3)
    assert fit([]) is None


def test_forecast_of_the_newest_backup_and_of_the_size_trend() -> None:
    """Growing 10 MiB a day from 1 GiB, drills at 100 s/GiB + 10 s: the newest (1 GiB +
    60 * 10 MiB) forecasts 168.6 s; in 90 days 256.4 s; 80 % of a 5 min target is 240 s,
    passed on day 64.5 from now."""
    mib = 1 << 20
    items = [backup(60 - d, GB + d * 10 * mib) for d in range(61)]
    items[0] = backup(60, GB, rto=110.0)
    items[30] = backup(30, GB + 300 * mib, rto=110.0 + 300 / 1024 * 100)
    got = forecast.forecast(items, database="app", target_s=300, now=NOW)
    assert got is not None
    assert got.growth_bytes_per_day == pytest.approx(10 * mib, rel=1e-6)
    assert got.newest_rto_s == pytest.approx(10 + 100 * (1 + 600 / 1024), abs=0.01)
    assert got.trend_rto_s == pytest.approx(10 + 100 * (1 + 1500 / 1024), abs=0.01)
    assert (got.warn_at_s, got.warning) == (240.0, True)
    assert got.passes_on == f"{NOW + timedelta(days=(230 / 100 * 1024 - 1624) / 10):%Y-%m-%d}"
    relaxed = forecast.forecast(items, database="app", target_s=3600, now=NOW)
    assert relaxed is not None and relaxed.warning is False


def test_no_forecast_without_a_drill_that_restored() -> None:
    items = [backup(1, GB), backup(2, GB, rto=50.0, verdict="INCOMPLETE")]
    assert forecast.forecast(items, database="app", target_s=3600, now=NOW) is None


def _tree(root: Path, rto_s: float) -> None:
    for days in (2, 1):
        at = NOW - timedelta(days=days)
        path = backup_path(root, "app", at)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" * 1000)
        manifest_path(path).write_text(Manifest(
            database="app", file=path.name, taken_at=at.isoformat(), started_at=at.isoformat(),
            finished_at=at.isoformat(), duration_s=1.0, size_bytes=1000, sha256="0" * 64,
            pg_dump_version="18.6", server_version="18.6", toc_entries=1,
            alembic_revision=None, row_counts_mode="off", source_id="s").to_json())
    record_drill(path, DrillVerdict(passed=True, at=NOW.isoformat(), rto_s=rto_s,
                                    verdict="PASS"))


def test_status_forecast_rto_exits_1_past_80_percent_of_the_target(tmp_path: Path) -> None:
    _tree(tmp_path / "b", rto_s=50.0)
    args = ["db", "status", "--backup-dir", str(tmp_path / "b"), "--schedule", "3d",
            "--rpo", "3d", "--window", "3d", "--rto-target", "1m"]
    warned = atb_inproc(*args)
    assert warned.returncode == 0, warned.stdout + warned.stderr  # shown, not gated
    assert "app: RTO forecast 50s for the newest backup (1000 B)" in warned.stdout
    assert "  WARNING: forecast passes 80 % of the RTO target 1m 00s" in warned.stdout
    gated = atb_inproc(*args, "--forecast-rto", "--json")
    assert gated.returncode == 1
    found = json.loads(gated.stdout)["forecasts"][0]
    assert (found["newest_rto_s"], found["target_s"], found["model"]["drills"]) == (50.0, 60, 1)
    fine = atb_inproc(*args[:-1], "1h", "--forecast-rto")
    assert fine.returncode == 0 and "  OK: within 80 % of the RTO target 1h 00m" in fine.stdout
