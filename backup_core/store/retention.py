"""`atb db prune`: which backups to keep, decided on a list of values, then carried out.

Prune deletes only what it positively knows. A file is a deletion candidate only when it is a
sound backup (`complete`), older than the retention, and not needed by the floor, the tiers or
the newest drill-verified backup *of its own source* (server and database): backups of
different sources never cover each other. Everything else (damaged, unreadable, mis-filed,
dated in the future, not ours) is kept and listed with its reason. A tree where most files
look wrong, or whose clock cannot be trusted, is refused whole: nothing is deleted.

The decision is pure (`plan_prune`) so every rule can be tested without files; `apply_prune`
only deletes what the plan says, each backup so that an interruption never leaves a record
that looks sound (the dump is first moved to a hidden name, then the rest goes).
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from backup_core.store.catalog import (
    CLOCK_SKEW,
    COMPLETE,
    FUTURE,
    ORPHAN_MANIFEST,
    PARTIAL,
    PRUNING,
    Backup,
    collector_paused,
    real_tree,
    require_tree,
    scan,
)
from backup_core.store.naming import (
    DUMP_SUFFIX,
    MANIFEST_SUFFIX,
    PARTIAL_MARK,
    dir_name,
    drill_path,
    manifest_path,
    printable,
    pruned_dump,
    pruning_path,
    roles_path,
    verify_path,
)
from backup_core.tools.errors import AtbError, SafetyRefusal, StorageError
from backup_core.tools.fsutil import fsync_dir, kill_point

log = logging.getLogger("atb.prune")

# A partial file is positively known to be garbage once no backup of its database holds the
# lock: the writer holds it for the partial file's whole life and the kernel releases it when
# the writer dies, even by kill -9; and a partial file is never the only copy of a backup (the
# final name is linked to it before the partial name goes).


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
    # why nothing may be deleted in this tree (empty: the plan may be carried out)
    refusal: str = ""

    @property
    def delete(self) -> list[Backup]:
        return [] if self.refusal else [d.backup for d in self.decisions if not d.keep]

    @property
    def keep(self) -> list[Backup]:
        return [d.backup for d in self.decisions if d.keep or self.refusal]


def _tier_keys(kind: str) -> Callable[[datetime], tuple[int, ...]]:
    if kind == "daily":
        return lambda t: (t.year, t.month, t.day)
    if kind == "weekly":
        return lambda t: tuple(t.isocalendar()[:2])
    return lambda t: (t.year, t.month)


def _kept_reason(b: Backup) -> str:
    if b.state == FUTURE:
        return "dated in the future: kept, never counted"
    if b.state == PARTIAL:
        return "partial file of a backup"
    return f"{b.state}: not known to be a sound backup" + (f" ({b.problem})" if b.problem
                                                           else "")


def plan_prune(
    backups: list[Backup], *, now: datetime, policy: Policy, busy: frozenset[str] = frozenset(),
    root: Path | None = None,
) -> PrunePlan:
    """Decide, per source, what to keep and why; everything kept has at least one reason.

    `busy` names databases with a backup in progress: their partial files are left alone.
    `root` is the tree's root (`BACKUP_DIR`), to recognise a tree filed one level below it.
    """
    with collector_paused():  # tens of thousands of records: see `catalog.collector_paused`
        return _plan_prune(backups, now=now, policy=policy, busy=busy, root=root)


def _plan_prune(backups: list[Backup], *, now: datetime, policy: Policy, busy: frozenset[str],
                root: Path | None) -> PrunePlan:
    decisions: list[Decision] = []
    by_source: dict[tuple[str, str], list[Backup]] = {}
    dead = {b.path.parent / b.path.name.split(PARTIAL_MARK, 1)[0][1:] for b in backups
            if b.state == PARTIAL and b.database not in busy}
    for b in backups:
        if b.state == COMPLETE and b.taken_at is not None:
            by_source.setdefault((b.database, b.source), []).append(b)
        elif b.state == PRUNING:
            decisions.append(Decision(b, False, ("an interrupted prune had started to delete "
                                                 "it",)))
        elif b.state == PARTIAL and b.database not in busy:
            decisions.append(Decision(b, False, ("partial file of a backup that died (no "
                                                 "backup of its database is running)",)))
        elif b.state == ORPHAN_MANIFEST and b.path.with_name(
                b.path.name[: -len(MANIFEST_SUFFIX)] + DUMP_SUFFIX) in dead:
            decisions.append(Decision(b, False, ("manifest of a backup that died before its "
                                                 "dump was published (its partial dump is "
                                                 "here, no backup running)",)))
        elif b.state == PARTIAL and b.database in busy:
            decisions.append(Decision(b, True, ("backup in progress",)))
        else:
            decisions.append(Decision(b, True, (_kept_reason(b),)))
    cutoff = now - timedelta(days=policy.retention_days)
    for (_, source), items in sorted(by_source.items()):
        sound = sorted(items, key=lambda b: (b.taken_at or now, str(b.path)), reverse=True)
        reasons: dict[Path, list[str]] = {b.path: [] for b in sound}
        for b in sound:
            if b.taken_at and b.taken_at >= cutoff:
                reasons[b.path].append(f"within {policy.retention_days:g} days")
        for b in sound[: max(policy.keep_last, 1)]:
            reasons[b.path].append(f"newest {max(policy.keep_last, 1)} of its source (floor)")
        for kind, count in (("daily", policy.keep_daily), ("weekly", policy.keep_weekly),
                            ("monthly", policy.keep_monthly)):
            key = _tier_keys(kind)
            seen: list[tuple[int, ...]] = []
            for b in sound:
                assert b.taken_at is not None
                k = key(b.taken_at)
                if k in seen:
                    continue
                if len(seen) >= count:
                    break
                seen.append(k)
                reasons[b.path].append(f"{kind} tier")
        drilled = next((b for b in sound if b.drill is not None and b.drill.passed), None)
        if drilled is not None:
            reasons[drilled.path].append("newest drill-verified")
        if not any(b.taken_at and b.taken_at >= cutoff for b in sound):
            # Nothing of this source is recent, by our clock: either its backups stopped or
            # the clock runs ahead. Either way an old backup is replaced by nothing newer, so
            # nothing of it expires (a clock a year ahead would otherwise age out a week).
            stale = (f"no sound backup of its source within {policy.retention_days:g} days "
                     f"(newest {sound[0].taken_at:%Y-%m-%dT%H:%MZ}, this host says "
                     f"{now:%Y-%m-%dT%H:%MZ}): nothing expires until a new one is taken; "
                     "check the backup job and the clock")
            for b in sound:
                reasons[b.path].append(stale)
        for b in sound:
            why = reasons[b.path]
            decisions.append(Decision(b, bool(why), tuple(why) if why else (
                f"older than {policy.retention_days:g} days; {len(sound)} sound backups of "
                f"{source}",)))
    return PrunePlan(tuple(decisions), refusal=refusal(backups, now=now, root=root))


def refusal(backups: list[Backup], *, now: datetime, root: Path | None = None) -> str:
    """Why this tree must not be pruned at all (empty when it may): a `BACKUP_DIR` one level
    too high, most dumps not sound, or a clock behind the backups it would judge."""
    dumps = [b for b in backups if b.is_backup and b.state != FUTURE]
    unsound = [b for b in dumps if not b.complete]
    hint = real_tree(backups, root=root)
    if hint:
        return f"{hint}; nothing was deleted"
    if dumps and not any(b.complete for b in dumps):
        return (f"none of the {len(dumps)} backups found is sound ({_states(unsound)}): is "
                "BACKUP_DIR the backup tree? nothing was deleted")
    if len(unsound) * 2 > len(dumps):
        return (f"{len(unsound)} of {len(dumps)} backups are not sound ({_states(unsound)}): "
                "a tree that looks this wrong is not pruned; see `atb db list`; nothing was "
                "deleted")
    # an ISO time starts with its date: one two days before the limit cannot pass it, whatever
    # its offset, so 50,000 manifests cost a string comparison each, not a parse
    floor = f"{now + CLOCK_SKEW - timedelta(days=2):%Y-%m-%d}"
    finished = [(_finished(b), b) for b in backups if b.state in (COMPLETE, FUTURE)
                and b.manifest is not None and b.manifest.finished_at[:10] >= floor]
    latest = max(((t, b) for t, b in finished if t is not None), default=None,
                 key=lambda tb: tb[0])
    if latest is not None and latest[0] > now + CLOCK_SKEW:
        return (f"the clock is behind the newest backup: {printable(latest[1].path.name)} "
                f"finished at {latest[0]:%Y-%m-%dT%H:%M:%SZ} (server time) but this host "
                f"says it is {now:%Y-%m-%dT%H:%M:%SZ}; fix the clock (NTP), or move that "
                "backup out of the tree if it was mis-dated; nothing was deleted")
    return ""


def _states(items: list[Backup]) -> str:
    counts: dict[str, int] = {}
    for b in items:
        counts[b.state] = counts.get(b.state, 0) + 1
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))


def _finished(b: Backup) -> datetime | None:
    if b.manifest is None:
        return None
    try:
        at = datetime.fromisoformat(b.manifest.finished_at)
    except ValueError:
        return None
    return at if at.tzinfo is not None else None


@dataclass(frozen=True)
class PruneResult:
    deleted: tuple[Path, ...]
    removed_dirs: tuple[Path, ...]


def apply_prune(plan: PrunePlan, backup_dir: Path) -> PruneResult:
    """Delete the planned backups with their sidecars, then empty date directories.

    Each backup goes in an order that never leaves a record that looks sound: the dump is
    renamed to a hidden `.pruning` name (atomic), then its sidecars and manifest, then the
    renamed dump. Any failure stops at once with a `StorageError` (exit 7)."""
    if plan.refusal:
        raise SafetyRefusal(plan.refusal)
    deleted: list[Path] = []
    parents: set[Path] = set()
    root = backup_dir.resolve()
    # a dead backup's orphan manifest before its partial dump, whose presence is the proof
    todo = sorted((b for b in plan.delete if _inside(b.path, root)),
                  key=lambda b: b.state != ORPHAN_MANIFEST)
    for b in plan.delete:
        if b not in todo:
            log.warning("not pruning %s: it is not inside %s", printable(str(b.path)), root)
    for folder in {b.path.parent for b in todo}:
        if not os.access(folder, os.W_OK):
            raise StorageError(f"cannot delete in {printable(str(folder))}: "
                               f"{os.strerror(errno.EACCES)} or read-only; nothing was deleted")
    for b in todo:
        try:
            deleted += _delete_one(b)
        except OSError as exc:
            raise StorageError(f"cannot delete {printable(str(b.path))}: "
                               f"{exc.strerror or exc}; {len(deleted)} files were deleted "
                               "before it, every remaining backup is whole") from exc
        parents.add(b.path.parent)
        log.info("pruned %s", printable(str(b.path)))
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


def _delete_one(b: Backup) -> list[Path]:
    """Delete one backup (or partial file, or an interrupted prune's leftovers)."""
    if b.state == PARTIAL:
        b.path.unlink(missing_ok=True)
        return [b.path]
    if b.state == ORPHAN_MANIFEST:  # a dead backup's roles file went out with its manifest
        never = b.path.with_name(b.path.name[: -len(MANIFEST_SUFFIX)] + DUMP_SUFFIX)
        roles_path(never).unlink(missing_ok=True)
        b.path.unlink(missing_ok=True)
        return [roles_path(never), b.path]
    dump = pruned_dump(b.path) if b.state == PRUNING else b.path
    assert dump is not None
    hidden = pruning_path(dump)
    if b.state != PRUNING:
        os.rename(dump, hidden)  # from here no scan sees a backup, sound or not
        fsync_dir(dump.parent)
        kill_point("prune-renamed")
    gone = []
    for p in (drill_path(dump), verify_path(dump), roles_path(dump), manifest_path(dump)):
        try:
            p.unlink()  # a symbolic link itself, never its target
            gone.append(p)
        except FileNotFoundError:
            continue
        kill_point("prune-sidecar-deleted")
    hidden.unlink(missing_ok=True)
    gone.append(dump)
    return gone


def _inside(path: Path, root: Path) -> bool:
    """True when `path`'s directory, with every link resolved, is inside `root`."""
    return path.parent.resolve().is_relative_to(root)


def busy_databases(backup_dir: Path, databases: set[str]) -> frozenset[str]:
    from backup_core.tools.locking import is_locked

    found = set()
    for db in databases:
        try:
            lock = backup_dir / dir_name(db) / ".lock"
        except AtbError:  # a name no directory can have: no lock either
            continue
        if is_locked(lock):
            found.add(db)
    return frozenset(found)


@dataclass(frozen=True)
class Deleted:
    path: Path
    source: str
    reasons: tuple[str, ...]


@dataclass(frozen=True)
class Kept:
    path: Path
    state: str
    source: str
    reasons: tuple[str, ...]


@dataclass(frozen=True)
class PruneReport:
    """What `atb db prune` decided and did; `decisions` (in the tree's order) is for people,
    the other fields are the published record (`--json`)."""

    dry_run: bool
    policy: Policy
    delete: tuple[Path, ...]
    delete_reasons: tuple[Deleted, ...]
    keep: tuple[Kept, ...]
    removed_dirs: tuple[Path, ...]
    decisions: tuple[Decision, ...] = field(default=(), metadata={"json": False})


def prune(backup_dir: Path, policy: Policy, *, dry_run: bool = False,
          now: datetime | None = None, cache_dir: Path | None = None) -> PruneReport:
    """Plan the prune of the whole tree, refuse it whole (exit 8) when the tree looks wrong,
    carry it out unless `dry_run`, and say what was kept and deleted, and why."""
    items = scan(require_tree(backup_dir), cache_dir=cache_dir)  # only manifests' heads
    busy = busy_databases(backup_dir, {b.database for b in items})
    plan = plan_prune(items, now=now or datetime.now(UTC), policy=policy, busy=busy,
                      root=backup_dir)
    if plan.refusal:
        raise SafetyRefusal(plan.refusal)
    done = None if dry_run else apply_prune(plan, backup_dir)
    with collector_paused():  # a record per backup, no cycles (see catalog.collector_paused)
        return _report(plan, policy, dry_run=dry_run, done=done)


def _report(plan: PrunePlan, policy: Policy, *, dry_run: bool,
            done: PruneResult | None) -> PruneReport:
    return PruneReport(
        dry_run=dry_run, policy=policy, delete=tuple(b.path for b in plan.delete),
        delete_reasons=tuple(Deleted(d.backup.path, d.backup.source, d.reasons)
                             for d in plan.decisions if not d.keep),
        keep=tuple(Kept(d.backup.path, d.backup.state, d.backup.source, d.reasons)
                   for d in plan.decisions if d.keep),
        removed_dirs=done.removed_dirs if done else (), decisions=plan.decisions)
