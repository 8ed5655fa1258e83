"""`atb db prune`: which backups to keep, decided on a list of values, then carried out.

The decision is pure (`plan_prune`) so every rule can be tested without files; `apply_prune`
only deletes what the plan says.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from backup_core.catalog import FUTURE, PARTIAL, Backup
from backup_core.fsutil import fsync_dir
from backup_core.naming import dir_name, drill_path, manifest_path, roles_path, verify_path

log = logging.getLogger("atb.prune")


@dataclass(frozen=True)
class Policy:
    retention_days: float = 7
    keep_last: int = 3
    keep_daily: int = 0
    keep_weekly: int = 0
    keep_monthly: int = 0


@dataclass(frozen=True)
class Decision:
    backup: Backup
    keep: bool
    reasons: tuple[str, ...]


@dataclass(frozen=True)
class PrunePlan:
    decisions: tuple[Decision, ...]

    @property
    def delete(self) -> list[Backup]:
        return [d.backup for d in self.decisions if not d.keep]

    @property
    def keep(self) -> list[Backup]:
        return [d.backup for d in self.decisions if d.keep]


def _tier_keys(kind: str) -> Callable[[datetime], tuple[int, ...]]:
    if kind == "daily":
        return lambda t: (t.year, t.month, t.day)
    if kind == "weekly":
        return lambda t: tuple(t.isocalendar()[:2])
    return lambda t: (t.year, t.month)


def plan_prune(
    backups: list[Backup], *, now: datetime, policy: Policy, busy: frozenset[str] = frozenset()
) -> PrunePlan:
    """Decide, per database, what to keep and why; everything kept has at least one reason.

    `busy` names databases with a backup in progress: their partial files are left alone.
    """
    decisions: list[Decision] = []
    by_db: dict[str, list[Backup]] = {}
    for b in backups:
        by_db.setdefault(b.database, []).append(b)
    cutoff = now - timedelta(days=policy.retention_days)
    for db, items in sorted(by_db.items()):
        dumps = sorted((b for b in items if b.is_backup and b.taken_at),
                       key=lambda b: b.taken_at or now, reverse=True)
        reasons: dict[Path, list[str]] = {b.path: [] for b in dumps}
        complete = [b for b in dumps if b.complete]
        for b in dumps:
            if b.state == FUTURE:
                reasons[b.path].append("dated in the future: kept, never counted")
            elif b.taken_at and b.taken_at >= cutoff:
                reasons[b.path].append(f"within {policy.retention_days:g} days")
        for b in complete[: policy.keep_last]:
            reasons[b.path].append(f"newest {policy.keep_last} (floor)")
        for kind, count in (("daily", policy.keep_daily), ("weekly", policy.keep_weekly),
                            ("monthly", policy.keep_monthly)):
            key = _tier_keys(kind)
            seen: list[tuple[int, ...]] = []
            for b in complete:
                assert b.taken_at is not None
                k = key(b.taken_at)
                if k in seen:
                    continue
                if len(seen) >= count:
                    break
                seen.append(k)
                reasons[b.path].append(f"{kind} tier")
        drilled = next((b for b in complete if b.drill is not None and b.drill.passed), None)
        if drilled is not None:
            reasons[drilled.path].append("newest drill-verified")
        for b in dumps:
            decisions.append(Decision(b, bool(reasons[b.path]), tuple(reasons[b.path])))
        for b in items:
            if b.state == PARTIAL:
                if db in busy:
                    decisions.append(Decision(b, True, ("backup in progress",)))
                else:
                    decisions.append(Decision(b, False, ()))
    return PrunePlan(tuple(decisions))


@dataclass(frozen=True)
class PruneResult:
    deleted: tuple[Path, ...]
    removed_dirs: tuple[Path, ...]


def apply_prune(plan: PrunePlan, backup_dir: Path) -> PruneResult:
    """Delete the planned dumps with their sidecars, then empty date directories."""
    deleted: list[Path] = []
    parents: set[Path] = set()
    root = backup_dir.resolve()
    for b in plan.delete:
        if not _inside(b.path, root):
            log.warning("not pruning %s: it is not inside %s", b.path, root)
            continue
        paths = [b.path]
        if b.state != PARTIAL:
            paths += [manifest_path(b.path), drill_path(b.path), verify_path(b.path),
                      roles_path(b.path)]
        for p in paths:
            try:
                p.unlink()  # a symbolic link itself, never its target
                deleted.append(p)
            except FileNotFoundError:
                continue
        parents.add(b.path.parent)
        log.info("pruned %s", b.path)
    removed: list[Path] = []
    for folder in sorted(parents, key=lambda p: len(p.parts), reverse=True):
        current = folder.resolve()
        while current != root and root in current.parents and len(current.relative_to(root)
                                                                   .parts) > 1:
            try:
                current.rmdir()
            except OSError:
                break
            removed.append(current)
            current = current.parent
    for folder in {p.parent for p in parents}:
        if folder.exists():
            fsync_dir(folder)
    return PruneResult(tuple(deleted), tuple(removed))


def _inside(path: Path, root: Path) -> bool:
    """True when `path`'s directory, with every link resolved, is inside `root`."""
    return path.parent.resolve().is_relative_to(root)


def busy_databases(backup_dir: Path, databases: set[str]) -> frozenset[str]:
    from backup_core.locking import is_locked

    return frozenset(db for db in databases
                     if is_locked(backup_dir / dir_name(db) / ".lock"))


