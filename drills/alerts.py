"""What a notification says: a drill that did not pass, a drill policy not kept. Plain text
(apprise renders it for each service), every string from a report redacted."""

from __future__ import annotations

from backup_core.ops.status import Status
from backup_core.store.naming import printable
from backup_core.tools.notify import Notice
from drills.report import summary_rows, title
from drills.result import DrillResult

NOTIFY_ON = ("FAIL", "INCOMPLETE")
ROWS = ("Verdict", "Database", "Backup", "RTO", "RPO", "Data loss", "Not run", "Drill")


def drill_notice(r: DrillResult) -> Notice | None:
    """The notice for a drill that did not pass (None for a PASS)."""
    if r.verdict not in NOTIFY_ON:
        return None
    lines = [f"{k}: {v}" for k, v in summary_rows(r) if k in ROWS]
    failed = [c for c in r.checks if c.outcome in ("failed", "error")]
    lines += [f"FAILED {c.title}: {c.message.splitlines()[0] if c.message else ''}"
              for c in failed]
    lines += [f"NOT RUN {title(name)}: {why}" for name, why in r.not_run.items()]
    lines.append(f"Report: {r.reports.get('html', '-')}")
    return Notice(title=f"atb restore drill {r.verdict}: {r.database}", body="\n".join(lines),
                  failure=r.verdict == "FAIL")


def overdue_notices(statuses: tuple[Status, ...]) -> list[Notice]:
    """One notice per database whose newest passing drill is older than the policy."""
    return [Notice(title=f"atb restore drill overdue: {printable(s.database)}",
                   body=f"{printable(s.database)}: {s.drill_overdue}", failure=False)
            for s in statuses if s.drill_overdue]
