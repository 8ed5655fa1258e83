"""Small sidecars beside a backup: its last verification and the history of its drills.

Only evidence about the file itself may condemn a backup. A verification records a failure
only when the file differs from its manifest (or the manifest is unreadable); a drill verdict
says whether the backup caused it, and one it did not cause (a bad option, a sandbox that did
not start, an interrupted run) never hides an earlier PASS.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from backup_core.store.naming import drill_path, verify_path
from backup_core.tools.fsutil import atomic_write_text

# Drill verdicts kept per backup: enough for years of weekly drills, small enough to read
# on every scan.
DRILL_HISTORY = 50
# Verification checks whose failure is evidence about the file (see verify.py); any other
# failure was the tool's or the environment's and is never recorded. `data`: a deep read
# failing where the same pg_restore has just listed the same archive.
FILE_CHECKS = ("exists", "name", "manifest", "size", "sha256", "roles", "data")


@dataclass(frozen=True)
class DrillVerdict:
    passed: bool
    at: str
    report: str = ""
    rto_s: float | None = None
    failed_checks: tuple[str, ...] = ()
    verdict: str = ""  # PASS, FAIL or INCOMPLETE; older records only say passed or not
    # whether the backup caused a verdict other than PASS (a restore error, a data check
    # failing); None in records written before this was asked: a FAIL then counts as caused
    caused: bool | None = None

    @property
    def decides(self) -> bool:
        """A verdict about the backup: a PASS, or a failure the backup caused."""
        return self.passed or (self.verdict != "INCOMPLETE" and self.caused is not False)


@dataclass(frozen=True)
class VerifyRecord:
    ok: bool
    at: str
    deep: bool
    reason: str = ""

    @property
    def condemns(self) -> bool:
        """A failure recorded from evidence about the file; older sidecars also recorded
        tool failures (`toc: ...`, `toolchain: ...`), which prove nothing about it."""
        return not self.ok and self.reason.split(":", 1)[0] in FILE_CHECKS


# Drill checks whose failure is evidence about the backup itself: it did not restore, or what
# came back differs from what the manifest recorded. Others judge the schedule, the RTO, the
# application's migrations and tests, production, or the runbook's pg_restore: a backup is
# not condemned by them.
BACKUP_CHECKS = frozenset({
    "test_backup_integrity_matches_manifest",
    "test_restore_completes_without_errors",
    "test_every_table_has_its_backup_time_row_count",
    "test_every_table_has_its_backup_time_content",
    "test_every_object_has_its_backup_time_definition",
    "test_every_schema_object_recorded_at_backup_is_present",
    "test_revision_before_upgrade_matches_the_backup",
    "test_sequences_are_ahead_of_their_columns",
    "test_indexes_are_valid",
    "test_foreign_keys_hold_for_every_row",
    "test_amcheck_finds_no_corruption",
})
INTEGRITY = "test_backup_integrity_matches_manifest"
INTEGRITY_FAILED = "the backup failed its integrity check: "


def caused_by_backup(verdict: str, failed: Mapping[str, str], *, interrupted: bool) -> bool:
    """Whether a drill's verdict is the backup's doing: a FAIL in which a check about the
    backup's restore or content *failed* (`failed`: check name -> its message). A check that
    errored (its sandbox did not start, a tool was missing), an INCOMPLETE or interrupted run,
    a failure of a check about something else, and an integrity check stopped by a tool's
    failure rather than by evidence about the file prove nothing about the backup."""
    if verdict != "FAIL" or interrupted:
        return False
    for name, message in failed.items():
        if name == INTEGRITY:
            if message.startswith(INTEGRITY_FAILED) and message[len(INTEGRITY_FAILED):].split(
                    ":", 1)[0] in FILE_CHECKS:
                return True
        elif name in BACKUP_CHECKS:
            return True
    return False


def effective(history: tuple[DrillVerdict, ...]) -> DrillVerdict | None:
    """The verdict that stands for the backup: the newest that decides (a PASS or a failure
    the backup caused), else the newest of any kind."""
    deciding = [v for v in history if v.decides]
    if deciding:
        return deciding[-1]
    return history[-1] if history else None


def record_drill(dump: Path, verdict: DrillVerdict) -> tuple[DrillVerdict, ...]:
    """Append `verdict` to the backup's drill history (oldest dropped past `DRILL_HISTORY`).

    The file keeps the old single-record shape at its top level, written from the verdict
    that stands, so an older atb reads the right answer too. Returns the new history."""
    history = (*read_drill_history(dump), verdict)[-DRILL_HISTORY:]
    standing = effective(history) or verdict
    data = {**asdict(standing), "history": [asdict(v) for v in history]}
    atomic_write_text(drill_path(dump), json.dumps(data, indent=2) + "\n")
    return history


def _read(path: Path) -> dict[str, Any] | None:
    """A sidecar's JSON object, or None for anything else (missing, a link, garbage)."""
    try:
        if path.is_symlink() or path.stat().st_size > 1 << 20:
            return None
        data = json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


def _verdict(data: object) -> DrillVerdict | None:
    if not isinstance(data, dict) or not isinstance(data.get("passed"), bool) \
            or not isinstance(data.get("at"), str):
        return None
    failed = data.get("failed_checks", [])
    rto = data.get("rto_s")
    verdict = data.get("verdict")
    caused = data.get("caused")
    return DrillVerdict(
        passed=data["passed"], at=data["at"], report=str(data.get("report", "")),
        verdict=verdict if isinstance(verdict, str) else ("PASS" if data["passed"] else "FAIL"),
        rto_s=float(rto) if isinstance(rto, int | float) and not isinstance(rto, bool) else None,
        failed_checks=tuple(str(c) for c in failed) if isinstance(failed, list) else (),
        caused=caused if isinstance(caused, bool) else None)


def read_drill_history(dump: Path) -> tuple[DrillVerdict, ...]:
    """Every verdict recorded beside `dump`, oldest first (a single-record file is one)."""
    data = _read(drill_path(dump))
    if data is None:
        return ()
    history = data.get("history")
    if isinstance(history, list):
        return tuple(v for v in map(_verdict, history[-DRILL_HISTORY:]) if v is not None)
    single = _verdict(data)
    return () if single is None else (single,)


def read_drill(dump: Path) -> DrillVerdict | None:
    """The verdict that stands for `dump` (see `effective`)."""
    return effective(read_drill_history(dump))


def record_verify(dump: Path, record: VerifyRecord) -> None:
    atomic_write_text(verify_path(dump), json.dumps(asdict(record), indent=2) + "\n")


def read_verify(dump: Path) -> VerifyRecord | None:
    data = _read(verify_path(dump))
    if data is None or not isinstance(data.get("ok"), bool) or not isinstance(data.get("at"), str):
        return None
    return VerifyRecord(ok=data["ok"], at=data["at"], deep=data.get("deep") is True,
                        reason=str(data.get("reason", "")))

