"""Prune decides only what it positively knows: properties over arbitrary catalogs.

Hypothesis draws catalog shapes (depth, names in any bytes, clocks, several sources and
databases, every state, drill histories) and checks the pure `plan_prune`: a sound backup that
is the newest of its source or inside the retention is never deleted, nothing that is not
sound is deleted, and a deleted backup is always covered by enough newer sound backups of its
*own* source.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from backup_core.store import catalog
from backup_core.store.catalog import (
    BAD_MANIFEST,
    COMPLETE,
    CORRUPT,
    DAMAGED,
    FUTURE,
    MISFILED,
    NO_MANIFEST,
    ORPHAN_MANIFEST,
    PARTIAL,
    PRUNING,
    STRAY,
    Backup,
)
from backup_core.store.manifest import Manifest
from backup_core.store.naming import db_from_dir, dir_name, printable, stamp
from backup_core.store.retention import Policy, plan_prune, refusal
from backup_core.store.verdicts import (
    DrillVerdict,
    VerifyRecord,
    caused_by_backup,
    effective,
    read_drill,
    read_drill_history,
    record_drill,
)

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
STATES = [COMPLETE, COMPLETE, COMPLETE, NO_MANIFEST, BAD_MANIFEST, DAMAGED, CORRUPT, FUTURE,
          MISFILED, PARTIAL, STRAY, ORPHAN_MANIFEST, PRUNING]


def manifest(db: str, at: datetime, source_id: str, finished: datetime | None = None) -> Manifest:
    return Manifest(database=db, file=f"backup-{stamp(at)}.dump", taken_at=at.isoformat(),
                    started_at=at.isoformat(), finished_at=(finished or at).isoformat(),
                    duration_s=1.0, size_bytes=1, sha256="0" * 64, pg_dump_version="15.8",
                    server_version="15.8", toc_entries=1, alembic_revision=None,
                    row_counts_mode="off", source_id=source_id)


def backup(db: str, at: datetime, *, state: str = COMPLETE, source_id: str = "system 1",
           folder: Path = Path("/b"), drills: tuple[DrillVerdict, ...] = (),
           mtime: float = 0.0) -> Backup:
    name = f"backup-{stamp(at)}.dump"
    return Backup(path=folder / dir_name(db) / f"{at:%Y/%m/%d}" / name, database=db,
                  state=state, taken_at=None if state == PARTIAL else at, size=1, mtime=mtime,
                  manifest=manifest(db, at, source_id) if state in (COMPLETE, FUTURE, CORRUPT,
                                                                    MISFILED) else None,
                  drills=drills)


NAMES = st.sampled_from(["app", "appdb", "a b", "café"]) | st.binary(min_size=1, max_size=6) \
    .map(os.fsdecode)
SEGMENTS = st.lists(st.binary(min_size=1, max_size=5).filter(lambda b: b"/" not in b
                                                             and b not in (b".", b".."))
                    .map(os.fsdecode), max_size=3)
VERDICTS = st.builds(DrillVerdict, passed=st.booleans(), at=st.just("2026-01-01T00:00:00Z"),
                     verdict=st.sampled_from(["PASS", "FAIL", "INCOMPLETE"]),
                     caused=st.sampled_from([None, True, False]))


@st.composite
def catalogs(draw: st.DrawFn) -> list[Backup]:
    items = []
    for _ in range(draw(st.integers(0, 40))):
        at = NOW - timedelta(hours=draw(st.integers(-24 * 30, 24 * 400)))
        db = draw(NAMES)
        folder = Path("/b", *draw(SEGMENTS))
        items.append(backup(
            db, at, state=draw(st.sampled_from(STATES)), folder=folder,
            source_id=draw(st.sampled_from(["", "system 1", "system 2", "server port 5432"])),
            drills=tuple(draw(st.lists(VERDICTS, max_size=3))),
            mtime=(NOW - timedelta(hours=draw(st.integers(-10, 100)))).timestamp()))
    unique = {b.path: b for b in items}  # a scan sees each path once
    return list(unique.values())


POLICIES = st.builds(Policy, retention_days=st.floats(0, 400), keep_last=st.integers(1, 5),
                     keep_daily=st.integers(0, 10), keep_weekly=st.integers(0, 5),
                     keep_monthly=st.integers(0, 3))


@settings(max_examples=250, deadline=None)
@given(items=catalogs(), policy=POLICIES, busy=st.frozensets(NAMES, max_size=2),
       skew=st.integers(-24 * 400, 24 * 30))
def test_prune_never_deletes_what_it_does_not_positively_know(
    items: list[Backup], policy: Policy, busy: frozenset[str], skew: int
) -> None:
    now = NOW + timedelta(hours=skew)  # this host's clock, right or wrong
    plan = plan_prune(items, now=now, policy=policy, busy=busy)
    assert all(d.reasons for d in plan.decisions), "every decision says why"
    if plan.refusal:
        assert plan.delete == []
    sound = [b for b in items if b.state == COMPLETE]
    for b in plan.delete:
        if b.state == PARTIAL:
            assert b.database not in busy  # the lock is free: its writer is dead
            continue
        if b.state == ORPHAN_MANIFEST:  # only beside the partial dump of a dead backup
            assert any(p.state == PARTIAL and p.database not in busy and p.path.parent ==
                       b.path.parent and p.path.name.startswith(f".{b.path.stem}.dump.partial-")
                       for p in items)
            continue
        assert b.state in (COMPLETE, PRUNING), f"deleted a {b.state} file"
        if b.state == PRUNING:
            continue
        assert b.taken_at is not None
        assert b.taken_at < now - timedelta(days=policy.retention_days), "inside retention"
        mine = [s for s in sound if (s.database, s.source) == (b.database, b.source)]
        newer = [s for s in mine if s.taken_at and (s.taken_at, str(s.path)) >
                 (b.taken_at, str(b.path))]
        assert len(newer) >= policy.keep_last, "not covered by its own source's backups"
        if b.drill is not None and b.drill.passed:
            assert any(s.drill and s.drill.passed for s in newer), "newest drill-verified went"


@settings(max_examples=200, deadline=None)
@given(items=catalogs(), policy=POLICIES)
def test_the_newest_sound_backup_of_every_source_survives(items: list[Backup],
                                                          policy: Policy) -> None:
    plan = plan_prune(items, now=NOW, policy=policy)
    gone = {b.path for b in plan.delete}
    newest: dict[tuple[str, str], Backup] = {}
    for b in items:
        if b.state == COMPLETE and b.taken_at is not None:
            key = (b.database, b.source)
            if key not in newest or (b.taken_at, str(b.path)) > (
                    newest[key].taken_at, str(newest[key].path)):  # type: ignore[operator]
                newest[key] = b
    assert not {b.path for b in newest.values()} & gone


def test_a_dead_backups_manifest_goes_with_its_partial_dump_and_only_then() -> None:
    at = NOW - timedelta(days=1)
    sound = backup("app", at - timedelta(days=1))
    dump = backup("app", at).path
    orphan = Backup(path=dump.with_suffix(".json"), database="app", state=ORPHAN_MANIFEST,
                    taken_at=None, size=1, mtime=0)
    partial = Backup(path=dump.with_name(f".{dump.name}.partial-1-abc"), database="app",
                     state=PARTIAL, taken_at=None, size=1, mtime=0)
    other = Backup(path=dump.with_name("backup-20200101T000000Z.json"), database="app",
                   state=ORPHAN_MANIFEST, taken_at=None, size=1, mtime=0)
    plan = plan_prune([sound, orphan, partial, other], now=NOW, policy=Policy())
    assert {b.path for b in plan.delete} == {orphan.path, partial.path}
    busy = plan_prune([sound, orphan, partial, other], now=NOW, policy=Policy(),
                      busy=frozenset({"app"}))
    assert busy.delete == []


def test_backups_of_another_server_never_cover_this_ones() -> None:
    a = [backup("appdb", NOW - timedelta(days=10 + d), source_id="system 1") for d in range(5)]
    b = [backup("appdb", NOW - timedelta(days=d), source_id="system 2") for d in range(25)]
    plan = plan_prune(a + b, now=NOW, policy=Policy(retention_days=7, keep_last=3))
    assert {x.path for x in plan.delete} == {x.path for x in a[3:] + b[8:]}
    assert all("of its source" in " ".join(d.reasons) for d in plan.decisions
               if d.keep and d.backup in a)


def test_old_manifests_without_a_source_are_their_own_group() -> None:
    old = [backup("app", NOW - timedelta(days=20 + d), source_id="") for d in range(5)]
    new = [backup("app", NOW - timedelta(days=d), source_id="system 9") for d in range(10)]
    gone = {x.path for x in plan_prune(old + new, now=NOW, policy=Policy(keep_last=3)).delete}
    # the old group has nothing recent: none of it expires; the new one keeps its 7 days
    assert gone == {x.path for x in new[8:]}
    assert old[0].source == "unknown source of database app"


def test_a_backup_dir_one_level_too_high_is_refused_with_the_real_root() -> None:
    items = [backup("d", NOW - timedelta(days=d), folder=Path("/srv/x/backups"), state=MISFILED)
             for d in range(30)]
    why = refusal(items, now=NOW)
    assert why.startswith("/srv/x/backups looks like the real backup tree")
    assert plan_prune(items, now=NOW, policy=Policy(retention_days=1)).delete == []


def test_a_tree_one_level_down_is_named_even_without_readable_manifests() -> None:
    items = [backup("d", NOW - timedelta(days=d), folder=Path("/srv/x/backups"),
                    state=NO_MANIFEST) for d in range(3)]
    assert refusal(items, now=NOW, root=Path("/srv/x")).startswith(
        "/srv/x/backups looks like the real backup tree")
    assert refusal(items, now=NOW, root=Path("/srv/x/backups")).startswith("none of the 3")


def test_a_tree_that_is_mostly_not_sound_is_refused() -> None:
    items = [backup("a", NOW - timedelta(days=d), state=DAMAGED if d % 3 else COMPLETE)
             for d in range(30)]
    assert refusal(items, now=NOW).startswith("20 of 30 backups are not sound (damaged 20)")
    half = [backup("a", NOW - timedelta(days=d), state=DAMAGED if d % 2 else COMPLETE)
            for d in range(30)]
    assert refusal(half, now=NOW) == ""
    none = [backup("a", NOW - timedelta(days=d), state=NO_MANIFEST) for d in range(3)]
    assert refusal(none, now=NOW).startswith("none of the 3 backups found is sound")


def test_a_clock_behind_the_newest_backup_refuses() -> None:
    items = [backup("a", NOW - timedelta(days=d)) for d in range(10)]
    assert refusal(items, now=NOW) == ""
    assert refusal(items, now=NOW - timedelta(minutes=4)) == ""
    assert refusal(items, now=NOW - timedelta(days=365)).startswith(
        "the clock is behind the newest backup: backup-20261123T120000Z.dump finished at "
        "2026-11-23T12:00:00Z (server time) but this host says it is 2025-11-23T12:00:00Z")


def test_a_pass_stands_until_a_failure_the_backup_caused() -> None:
    passed = DrillVerdict(passed=True, at="1", verdict="PASS")
    not_caused = DrillVerdict(passed=False, at="2", verdict="FAIL", caused=False)
    incomplete = DrillVerdict(passed=False, at="3", verdict="INCOMPLETE", caused=False)
    caused = DrillVerdict(passed=False, at="4", verdict="FAIL", caused=True)
    assert effective((passed, not_caused, incomplete)) == passed
    assert effective((passed, not_caused, caused)) == caused
    assert effective((not_caused,)) == not_caused
    legacy = DrillVerdict(passed=False, at="5", verdict="FAIL")  # before `caused` was asked
    assert effective((passed, legacy)) == legacy


def test_drill_history_is_appended_bounded_and_reads_old_single_records(tmp_path: Path) -> None:
    dump = tmp_path / "backup-20261123T120000Z.dump"
    sidecar = tmp_path / "backup-20261123T120000Z.drill.json"
    sidecar.write_text(json.dumps({"passed": True, "at": "old", "verdict": "PASS"}))
    assert [v.at for v in read_drill_history(dump)] == ["old"]
    for i in range(60):
        record_drill(dump, DrillVerdict(passed=False, at=str(i), verdict="FAIL", caused=False))
    history = read_drill_history(dump)
    assert len(history) == 50 and history[-1].at == "59" and history[0].at == "10"
    assert read_drill(dump) == history[-1]  # the PASS fell out of the bounded history
    record_drill(dump, DrillVerdict(passed=True, at="p", verdict="PASS"))
    record_drill(dump, DrillVerdict(passed=False, at="q", verdict="FAIL", caused=False))
    assert read_drill(dump).at == "p"  # type: ignore[union-attr]
    assert json.loads(sidecar.read_text())["at"] == "p"  # older atb reads the standing one


def test_only_failures_of_checks_about_the_backup_are_caused_by_it() -> None:
    restore = {"test_restore_completes_without_errors": "pg_restore failed"}
    assert caused_by_backup("FAIL", restore, interrupted=False)
    assert not caused_by_backup("FAIL", restore, interrupted=True)
    assert not caused_by_backup("FAIL", {"test_measured_rto_is_within_target": "slow"},
                                interrupted=False)
    assert not caused_by_backup("FAIL", {}, interrupted=False)  # only errors: environment
    assert not caused_by_backup("INCOMPLETE", restore, interrupted=False)
    integrity = "test_backup_integrity_matches_manifest"
    assert caused_by_backup("FAIL", {integrity: "the backup failed its integrity check: "
                                                "sha256: 1a2b… differs"}, interrupted=False)
    assert not caused_by_backup("FAIL", {integrity: "pg_restore 15.8 (/x) --list failed on "
                                                    "/b/x.dump, whose size and sha256 match"},
                                interrupted=False)
    assert not caused_by_backup("FAIL", {"test_archive_is_readable_by_the_runbook_pg_restore":
                                         "pg_restore 15.8 could not list the archive"},
                                interrupted=False)


def test_only_evidence_about_the_file_condemns_it() -> None:
    assert VerifyRecord(ok=False, at="x", deep=False, reason="sha256: differs").condemns
    assert VerifyRecord(ok=False, at="x", deep=False, reason="manifest: unreadable").condemns
    assert VerifyRecord(ok=False, at="x", deep=True, reason="data: bad block").condemns
    for tool in ("toc: pg_restore: error", "toolchain: no pg_restore"):
        assert not VerifyRecord(ok=False, at="x", deep=False, reason=tool).condemns


def test_names_in_any_bytes_print_escaped_and_never_name_a_database() -> None:
    name = os.fsdecode(b"x\xffy\n")
    assert printable(name) == "x\\xffy\\n"
    assert db_from_dir(os.fsdecode(b"\xff")) is None
    assert dir_name(os.fsdecode(b"\xff")) == "%FF"
    assert catalog.Backup(path=Path(name), database=name, state=STRAY, taken_at=None, size=0,
                          mtime=0).source == f"unknown source of database {name}"
