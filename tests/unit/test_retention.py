"""Prune decisions on lists of values: every rule, no files."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from backup_core.store.catalog import COMPLETE, NO_MANIFEST, PARTIAL, STRAY, Backup
from backup_core.store.retention import Policy, plan_prune
from backup_core.store.verdicts import DrillVerdict

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def b(hours_ago: float, state: str = COMPLETE, db: str = "app",
      drill: bool | None = None) -> Backup:
    at = NOW - timedelta(hours=hours_ago)
    return Backup(path=Path(f"/b/{db}/{at:%Y%m%dT%H%M%S}.dump"), database=db, state=state,
                  taken_at=at if state != PARTIAL else None, size=1, mtime=0,
                  drills=() if drill is None else (DrillVerdict(passed=drill, at="x"),))


def deleted(plan_items: list[Backup], **policy: float) -> set[Path]:
    plan = plan_prune(plan_items, now=NOW, policy=Policy(**policy))  # type: ignore[arg-type]
    return {x.path for x in plan.delete}


def test_backups_inside_the_window_are_kept_older_ones_deleted() -> None:
    items = [b(h * 24) for h in range(12)]
    gone = deleted(items, retention_days=7, keep_last=1)
    assert gone == {x.path for x in items[8:]}


def test_nothing_expires_when_no_backup_is_recent_backups_stopped_or_the_clock_is_ahead() -> None:
    items = [b(24 * (10 + d)) for d in range(6)]
    plan = plan_prune(items, now=NOW, policy=Policy(retention_days=7, keep_last=3))
    assert plan.delete == []
    assert all(any(r.startswith("no sound backup of its source within 7 days") for r in d.reasons)
               for d in plan.decisions)


def test_floor_keeps_newest_three_when_one_recent_backup_replaces_the_old() -> None:
    items = [b(1)] + [b(24 * (10 + d)) for d in range(6)]
    gone = deleted(items, retention_days=7, keep_last=3)
    assert gone == {x.path for x in items[3:]}


def test_floor_counts_only_complete_backups_and_never_deletes_another() -> None:
    items = [b(1), b(240, NO_MANIFEST), b(250), b(260), b(270), b(280)]
    gone = deleted(items, retention_days=7, keep_last=3)
    # the manifest-less dump is kept: not known to be a backup
    assert gone == {items[4].path, items[5].path}


def test_daily_weekly_monthly_tiers_keep_the_newest_of_each_period() -> None:
    items = [b(h) for h in range(0, 24 * 90, 6)]  # every 6 hours for 90 days
    plan = plan_prune(items, now=NOW, policy=Policy(retention_days=7, keep_last=3,
                                                   keep_daily=30, keep_weekly=8, keep_monthly=3))
    kept = {d.backup.path: d.reasons for d in plan.decisions if d.keep}
    daily = [p for p, r in kept.items() if "daily tier" in r]
    assert len(daily) == 30
    assert sum("weekly tier" in r for r in kept.values()) == 8
    assert sum("monthly tier" in r for r in kept.values()) == 3
    oldest_kept = min(x.taken_at for x in items if x.path in kept and x.taken_at)
    assert NOW - oldest_kept > timedelta(days=50)


def test_newest_drill_verified_backup_is_never_deleted() -> None:
    items = [b(24 * d, drill=(d in (20, 30))) for d in range(40)]
    gone = deleted(items, retention_days=7, keep_last=3)
    assert items[20].path not in gone and items[30].path in gone


def test_partial_files_wait_while_a_backup_runs_and_go_when_abandoned() -> None:
    items = [b(1), b(0, PARTIAL)]
    busy = plan_prune(items, now=NOW, policy=Policy(), busy=frozenset({"app"}))
    assert not busy.delete
    idle = plan_prune(items, now=NOW, policy=Policy())
    assert [x.state for x in idle.delete] == [PARTIAL]


def test_stray_files_are_never_planned_for_deletion() -> None:
    items = [b(1000, STRAY)]
    plan = plan_prune(items, now=NOW, policy=Policy())
    assert not plan.delete and [d.keep for d in plan.decisions] == [True]


def test_databases_are_judged_separately() -> None:
    items = [b(24 * 20, db="a"), b(24 * 21, db="a"), b(24 * 20, db="b")]
    assert not deleted(items, retention_days=7, keep_last=2)
