"""Small sidecars beside a backup: the last verification and the last restore drill."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from backup_core.fsutil import atomic_write_text
from backup_core.naming import drill_path, verify_path


@dataclass(frozen=True)
class DrillVerdict:
    passed: bool
    at: str
    report: str = ""
    rto_s: float | None = None
    failed_checks: tuple[str, ...] = ()


@dataclass(frozen=True)
class VerifyRecord:
    ok: bool
    at: str
    deep: bool
    reason: str = ""


def record_drill(dump: Path, verdict: DrillVerdict) -> None:
    atomic_write_text(drill_path(dump), json.dumps(asdict(verdict), indent=2) + "\n")


def read_drill(dump: Path) -> DrillVerdict | None:
    try:
        data = json.loads(drill_path(dump).read_text())
        data["failed_checks"] = tuple(data.get("failed_checks", ()))
        return DrillVerdict(**data)
    except (OSError, ValueError, TypeError):
        return None


def record_verify(dump: Path, record: VerifyRecord) -> None:
    atomic_write_text(verify_path(dump), json.dumps(asdict(record), indent=2) + "\n")


def read_verify(dump: Path) -> VerifyRecord | None:
    try:
        return VerifyRecord(**json.loads(verify_path(dump).read_text()))
    except (OSError, ValueError, TypeError):
        return None
