"""Where a drill meets the ledger: `atb drill run` adds the evidence facts to its result
(the key that signs, the controls served, the proof the drill can fail), writes them into the
reports, then appends the drill's record to `<report-dir>/ledger.ndjson`."""

from __future__ import annotations

import socket
from dataclasses import replace
from importlib import metadata
from pathlib import Path
from typing import Any

from backup_core.store import ledger
from backup_core.store.ledger import Appended
from backup_core.store.naming import manifest_path
from backup_core.store.signing import Signer
from backup_core.tools.conninfo import redact
from backup_core.tools.errors import AtbError
from backup_core.tools.fsutil import atomic_write_text
from drills import report
from drills.options import DrillOptions
from drills.result import DetectionFacts, DrillResult, EvidenceFacts


def evidence(signer: Signer | None) -> EvidenceFacts:
    """The ledger's facts a drill's reports carry: the key that signs its record, the
    controls it serves (the drill's child writes them, `drills.plugin.recording`)."""
    return EvidenceFacts(signer.public.fingerprint if signer else None, ledger.CONTROLS)


def annotate(result: DrillResult, *, signer: Signer | None,
             detection: DetectionFacts | None) -> DrillResult:
    """The result with its evidence facts; a detection run that was not caught makes the
    whole drill FAIL (a drill never seen to fail proves nothing). The JSON and Markdown
    reports are written again, and the HTML's summary gets the same rows."""
    facts = replace(evidence(signer), detection=detection)
    verdict = "FAIL" if detection is not None and not detection.caught else result.verdict
    new = replace(result, evidence=facts, verdict=verdict)
    report.write_reports(new)
    _patch_html(Path(new.reports["html"]), new, verdict_changed=verdict != result.verdict,
                shown=report.evidence_rows(result))
    return new


def _patch_html(path: Path, r: DrillResult, *, verdict_changed: bool,
                shown: list[tuple[str, str]]) -> None:
    """pytest-html wrote the page in the drill's child: its summary table (ours, marked by
    its id) gets the evidence rows it does not show yet, escaped as every other row."""
    try:
        page = path.read_text()
    except OSError:
        return
    marker = "<table id='drill-summary' style='margin:12px 0'>"
    rows = "".join(report.summary_row_html(k, v) for k, v in report.evidence_rows(r)
                   if (k, v) not in shown)
    if marker not in page:
        return
    page = page.replace(marker, marker + rows, 1)
    if verdict_changed:
        page = page.replace("Verdict: PASS</div>", "Verdict: FAIL</div>", 1).replace(
            f"background:{report.COLORS['PASS']};padding", f"background:{report.COLORS['FAIL']};"
            "padding", 1)
    atomic_write_text(path, page, mode=0o644)


def fields(r: DrillResult, options: DrillOptions) -> dict[str, Any]:
    """The drill as its ledger record holds it (the reports' hashes are added on append)."""
    b = r.backup
    manifest_sha = b.origin.get("manifest sha256")  # fetched from the repository
    if manifest_sha is None and options.source == "dump" and b.path:
        mpath = manifest_path(Path(b.path))
        if mpath.is_file():
            manifest_sha = ledger.file_sha256(mpath)
    e = r.evidence
    d = e.detection if e else None
    try:
        version = metadata.version("atb-backup-drills")
    except metadata.PackageNotFoundError:
        version = "unknown"
    return {
        "database": r.database, "source": options.source,
        "backup": {"path": b.path, "sha256": b.sha256, "size_bytes": b.size_bytes,
                   "taken_at": b.taken_at, "manifest_sha256": manifest_sha,
                   **({"origin": dict(b.origin)} if b.origin else {})},
        "verdict": r.verdict, "started_at": r.started_at, "finished_at": r.finished_at,
        "rto_s": r.rto.measured_s, "rto_target_s": r.rto.target_s,
        "data_loss_s": r.pitr.data_loss_s if r.pitr else None,
        "failed_checks": [c.name for c in r.checks if c.outcome in ("failed", "error")],
        "detection": None if d is None else {"caught": d.caught, "caught_by": list(d.caught_by),
                                             "damage": list(d.damage), "verdict": d.verdict},
        "options": {k: redact(v) if isinstance(v, str) else v for k, v in r.options.items()},
        # how the backup was chosen, in the reports' words (the seed alone does not say)
        "seed": r.seed, "selection": redact(b.selection_error or b.selection),
        "atb_version": version, "host": socket.gethostname(),
    }


def record(r: DrillResult, options: DrillOptions, *, signer: Signer | None) -> Appended:
    """Append the drill's record, naming every report file it wrote."""
    reports = {kind: Path(p) for kind, p in r.reports.items() if Path(p).is_file()}
    return ledger.append(options.report_dir, fields(r, options), reports=reports,
                         signer=signer)


def drilled(report_dir: Path, database: str) -> bool:
    """Whether the ledger in `report_dir` holds a record of a drill of `database`: a name
    drilled before is a database whose backups went missing, not a typo."""
    if not ledger.ledger_path(report_dir).is_file():
        return False
    try:
        return any(r.get("database") == database for _, r in ledger.read_records(report_dir))
    except AtbError:  # unreadable: judged when the record is appended
        return False
