"""Small sidecars beside a backup: the last verification and the last restore drill."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from backup_core.fsutil import atomic_write_text
from backup_core.naming import drill_path, verify_path


@dataclass(frozen=True)
class DrillVerdict:
    passed: bool
    at: str
    report: str = ""
    rto_s: float | None = None
    failed_checks: tuple[str, ...] = ()
    verdict: str = ""  # PASS, FAIL or INCOMPLETE; older records only say passed or not


@dataclass(frozen=True)
class VerifyRecord:
    ok: bool
    at: str
    deep: bool
    reason: str = ""


def record_drill(dump: Path, verdict: DrillVerdict) -> None:
    atomic_write_text(drill_path(dump), json.dumps(asdict(verdict), indent=2) + "\n")


def _read(path: Path) -> dict[str, Any] | None:
    """A sidecar's JSON object, or None for anything else (missing, a link, garbage)."""
    try:
        if path.is_symlink() or path.stat().st_size > 1 << 20:
            return None
        data = json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


def read_drill(dump: Path) -> DrillVerdict | None:
    data = _read(drill_path(dump))
    if data is None or not isinstance(data.get("passed"), bool) \
            or not isinstance(data.get("at"), str):
        return None
    failed = data.get("failed_checks", [])
    rto = data.get("rto_s")
    verdict = data.get("verdict")
    return DrillVerdict(
        passed=data["passed"], at=data["at"], report=str(data.get("report", "")),
        verdict=verdict if isinstance(verdict, str) else ("PASS" if data["passed"] else "FAIL"),
        rto_s=float(rto) if isinstance(rto, int | float) and not isinstance(rto, bool) else None,
        failed_checks=tuple(str(c) for c in failed) if isinstance(failed, list) else ())


def record_verify(dump: Path, record: VerifyRecord) -> None:
    atomic_write_text(verify_path(dump), json.dumps(asdict(record), indent=2) + "\n")


def read_verify(dump: Path) -> VerifyRecord | None:
    data = _read(verify_path(dump))
    if data is None or not isinstance(data.get("ok"), bool) or not isinstance(data.get("at"), str):
        return None
    return VerifyRecord(ok=data["ok"], at=data["at"], deep=data.get("deep") is True,
                        reason=str(data.get("reason", "")))
