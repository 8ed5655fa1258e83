"""Renderings of a `DrillResult`: JSON for automation, Markdown for the audit wiki, the HTML
summary block inside pytest-html's report, and `reports/index.html` over every drill."""

from __future__ import annotations

import json
import re
from dataclasses import asdict
from pathlib import Path
from urllib.parse import quote

from backup_core.tools.conninfo import redact
from backup_core.tools.durations import human, human_time, plural
from backup_core.tools.fsutil import atomic_write_text, make_dirs
from drills.console import size
from drills.inert import html_text, md_cell, md_code, md_fence, md_text
from drills.result import SCHEMA_ID, DrillResult, RtoFacts
from drills.state import RTO_PHASES


def to_json(result: DrillResult) -> str:
    return redact(json.dumps(asdict(result), indent=2, sort_keys=True)) + "\n"


def pitr_rows(r: DrillResult) -> list[tuple[str, str]]:
    """A point-in-time drill's own facts: where it aimed, what it reached, what was lost."""
    p = r.pitr
    if p is None:
        return []
    window = f"{p.window_start} to {p.window_end}" if p.window_start else "-"
    wal = (f"{p.wal_segments} segments, {p.wal_bytes / 2**20:.1f} MiB"
           + (f" (spool of {p.wal_spool_bytes / 2**20:.1f} MiB fetched beforehand)"
              if p.wal_spool_bytes else "") if p.wal_bytes is not None else "-")
    loss = (f"{human(p.data_loss_s)} (newest heartbeat {p.newest_heartbeat})"
            if p.data_loss_s is not None else "-")
    return [("Target time", f"{p.target or '-'} ({p.target_choice or '-'})"),
            ("Window", window), ("Recovered to", p.recovered_to or p.failure or "-"),
            ("WAL replayed", wal), ("Data loss", loss)]


def summary_rows(r: DrillResult) -> list[tuple[str, str]]:
    """The facts an auditor asks for first, in the order they ask."""
    b, a, rto, rpo, sb = r.backup, r.alembic, r.rto, r.rpo, r.sandbox
    rows = [
        ("Verdict", r.verdict),
        ("Database", r.database),
        ("Backup", b.path or "-"),
        *origin_rows(b.origin),
        ("Selection", b.selection_error or b.selection or "-"),
        ("Backup taken", f"{human_time(b.taken_at)} ({human(b.age_s)} before the drill)"),
        ("Size / SHA-256", f"{size(b.size_bytes)} / {b.sha256 or '-'}"),
        ("Source", f"PostgreSQL {b.source_server_version or '-'}, dumped by pg_dump "
                   f"{b.pg_dump_version or '-'}"),
        ("Sandbox", f"{sb.provider} PostgreSQL {sb.server_version}"
                    + (f" (image {sb.image})" if sb.image else "")
                    + (f"; {sb.note}" if sb.note else "")),
        *isolation_rows(r),
        ("Alembic", f"{a.before or '-'} -> {a.after or '-'} "
                    f"(script head {', '.join(a.heads) or '-'})"),
        ("Data", f"{plural(b.rows, 'row') if b.rows is not None else '- rows'} in "
                 f"{plural(b.tables, 'table') if b.tables is not None else '- tables'} "
                 f"(counts {b.row_counts_mode or '-'} at backup time)"),
        *pitr_rows(r),
        ("RTO", rto_text(rto)),
        *durability_rows(sb.durability),
        ("RTO phases", ", ".join(f"{k} {human(rto.phases[k])}" for k in RTO_PHASES
                                 if k in rto.phases) or "-"),
        ("RPO", rpo.summary or f"target {human(rpo.target_s)}"),
        ("Seed", str(r.seed)),
        ("Drill", f"{human_time(r.started_at)} to {human_time(r.finished_at)}"),
        *evidence_rows(r),
    ]
    if r.pitr is not None:  # a physical backup has no dump facts; its own rows say more
        rows = [row for row in rows if row[0] not in ("Selection", "Size / SHA-256", "Source",
                                                        "Data")]
    if r.interrupted:
        rows.insert(1, ("Interrupted", "the drill was stopped (Ctrl-C or SIGINT) before its "
                                       "checks were over: what did not run was not judged"))
    if r.not_run:
        rows.insert(1, ("Not run", "; ".join(f"{title(k)}: {v}" for k, v in r.not_run.items())))
    if r.integration:
        i = r.integration
        rows.append(("Integration", f"`{i.command}` exit {i.exit_code} in "
                                    f"{human(i.duration_s)}"))
    return rows


def origin_rows(origin: dict[str, str]) -> list[tuple[str, str]]:
    """A backup drilled from the repository: where it was, as stored, and its hashes."""
    return [(k[:1].upper() + k[1:].replace("sha256", "SHA-256"), v) for k, v in origin.items()]


def evidence_rows(r: DrillResult) -> list[tuple[str, str]]:
    """The ledger's additions (`atb drill run`): the proof the drill can fail, the key that
    signs the record, and the controls the evidence serves, one plain line each."""
    e = r.evidence
    if e is None:
        return []
    rows = []
    if e.detection is not None:
        d = e.detection
        rows.append(("Detection", (f"caught by {'; '.join(map(title, d.caught_by))}"
                                   if d.caught else
                                   "NOT CAUGHT: the drill passed a damaged copy")
                     + f" (damage: {'; '.join(d.damage) or '-'})"
                     + (f"; {d.error}" if d.error else "")))
    rows.append(("Ledger key", f"Ed25519 SHA-256 {e.key_fingerprint}" if e.key_fingerprint
                 else "not signed (no ATB_SIGNING_KEY_FILE)"))
    rows += [("Control", c) for c in e.controls]
    return rows


def isolation_rows(r: DrillResult) -> list[tuple[str, str]]:
    """How application code was kept from production (escaped by the renderers as every
    other row)."""
    i = r.isolation
    if i is None:
        return []
    through = f"; let through: {', '.join(i.allowed)}" if i.allowed else ""
    return [("Isolation", f"{i.level}: {i.reason}{through}")]


def durability_rows(settings: dict[str, str]) -> list[tuple[str, str]]:
    """One line naming the sandbox's durability settings the RTO was measured under: with
    them off, a restore into a production-like server takes longer."""
    if not settings:
        return []
    order = ("fsync", "synchronous_commit", "full_page_writes")  # as a DBA lists them
    ranked = sorted(settings.items(), key=lambda kv: (order.index(kv[0]) if kv[0] in order
                                                      else len(order), kv[0]))
    shown = ", ".join(f"{k}={v}" for k, v in ranked)
    if all(v == "on" for v in settings.values()):
        return [("RTO measured", f"with durability on ({shown})")]
    return [("RTO measured", f"in a sandbox with durability off ({shown}): a server with "
                             "durability on restores more slowly")]


def rto_text(rto: RtoFacts) -> str:
    """The RTO line: a time only for a recovery that completed (a failed one says where it
    failed, never "not measured" beside a measurement); the forecast of the earlier drills and
    the sandbox's settings either way."""
    forecast = (f"; forecast {human(rto.forecast_s)} ({rto.forecast_how})"
                if rto.forecast_s is not None else "")
    settings = f"; sandbox settings: {rto.settings}" if rto.settings else ""
    if rto.failed_at == "checks":  # measured, and the RTO check may have passed on it
        spent = sum(rto.phases.values())
        return (f"{human(spent)} measured, target {human(rto.target_s)}: not counted, a "
                "check of the restored database failed (the recovery did not deliver a "
                f"sound database){forecast}{settings}")
    if rto.failed_at == "interrupted":
        return (f"not measured: the drill was interrupted (target {human(rto.target_s)})"
                f"{forecast}{settings}")
    if rto.failed_at or rto.measured_s is None:
        return (f"not measured: the recovery failed at {rto.failed_at or 'an early phase'}"
                f" (target {human(rto.target_s)}){forecast}{settings}")
    return (f"{human(rto.measured_s)} measured, target {human(rto.target_s)}: "
            f"{'met' if rto.met else 'NOT MET'}{forecast}{settings}")


# Proper names as they are written, where a function name cannot: `rpo` is the RPO.
_PROPER = {"rpo": "RPO", "rto": "RTO", "pg restore": "pg_restore", "pg dump": "pg_dump",
           "pg amcheck": "pg_amcheck", "amcheck": "amcheck", "alembic": "Alembic",
           "sha256": "SHA-256", "sql": "SQL", "wal": "WAL", "pitr": "PITR",
           "postgresql": "PostgreSQL", "pgbackrest": "pgBackRest"}
_PROPER_RE = re.compile(r"\b(" + "|".join(sorted(map(re.escape, _PROPER), key=len,
                                                  reverse=True)) + r")\b")


def title(name: str) -> str:
    """A check's name as a reader's sentence: `test_indexes_are_valid` -> `Indexes are valid`,
    `test_schedule_meets_the_rpo_target` -> `Schedule meets the RPO target`."""
    words = _PROPER_RE.sub(lambda m: _PROPER[m.group(1)],
                           name.removeprefix("test_").replace("_", " "))
    if words.split(" ", 1)[0] in _PROPER.values():  # pgBackRest stays pgBackRest
        return words
    return words[:1].upper() + words[1:]


# What makes each built-in check run next time, when it did not run for want of setup.
_MIGRATION = ("give the application's migration: --alembic-config alembic.ini (or its own "
              "command with --migrate-cmd)")
_STEPS = {
    "test_revision_before_upgrade_matches_the_backup": _MIGRATION,
    "test_alembic_upgrade_head_reaches_the_script_head": _MIGRATION,
    "test_application_integration_suite_passes": (
        "give the application's tests: --integration-cmd 'pytest -q tests/integration'"),
    "test_schedule_meets_the_rpo_target": (
        "say how often backups run: --schedule 1h (the RPO is then judged from it)"),
    "test_amcheck_finds_no_corruption": (
        "install pg_amcheck of the sandbox's PostgreSQL major (postgresql-client), or drill "
        "in a sandbox where atb is superuser (--sandbox local or docker)"),
}


def next_steps(r: DrillResult) -> list[str]:
    """For an INCOMPLETE drill: the exact options or commands that would make the next drill
    run every check it skipped (in the order of the checks, each said once)."""
    steps: list[str] = []
    for name, why in r.not_run.items():
        if "--drill-exclude" in why:
            step = f"leave out --exclude {name.removeprefix('test_')}"
        elif "deselected" in why:
            step = f"run without deselecting {name} (pytest -k or --deselect)"
        elif name == "test_heartbeat_is_fresh_at_backup_time":
            step = ("name the application's events table with --heartbeat-table, or leave "
                    "it out to use atb's own (`atb tests heartbeat --init`)"
                    if "--heartbeat-table" in why else
                    "create atb's heartbeat table on production with `atb tests heartbeat "
                    "--init --grant-to <backup role>`, schedule `atb tests heartbeat` every 5 "
                    "minutes, and drill a backup taken after that")
        elif "--row-counts" in why:
            step = "take backups with row counts and checksums: `atb db backup` (the default " \
                   "--row-counts checksum)"
        elif "not run: the" in why or "interrupted" in why or "not attempted" in why \
                or "no backup selected" in why:
            continue  # an earlier failure: the FAIL says what to fix, not a setting
        else:
            step = _STEPS.get(name, f"{title(name)}: {why}")
        if step not in steps:
            steps.append(step)
    return steps


COLORS = {"PASS": "#1a7f37", "INCOMPLETE": "#9a6700", "FAIL": "#cf222e"}


def summary_row_html(key: str, value: str) -> str:
    """One row of the summary table, both cells escaped (and the value redacted)."""
    return (f"<tr><th style='text-align:left;padding:2px 12px 2px 0'>{html_text(key)}</th>"
            f"<td style='font-family:monospace'>{html_text(redact(value))}</td></tr>")


def summary_html(r: DrillResult) -> str:
    color = COLORS.get(r.verdict, "#cf222e")
    cells = "".join(summary_row_html(k, v) for k, v in summary_rows(r)[1:])
    findings = "".join(f"<li>{html_text(redact(f))}</li>" for f in r.findings)
    steps = "".join(f"<li>{html_text(st)}</li>"
                    for st in (next_steps(r) if r.verdict == "INCOMPLETE" else []))
    failed = [c for c in r.checks if c.outcome in ("failed", "error")]
    failures = "".join(f"<li><b>{html_text(c.title)}</b>: "
                       f"{html_text(redact(c.message.splitlines()[0]) if c.message else '')}</li>"
                       for c in failed)
    return (
        NO_SCRIPT_STYLE
        + f"<div id='drill-verdict' style='font-size:2em;font-weight:bold;color:white;"
        f"background:{color};padding:8px 16px;display:inline-block'>Verdict: "
        f"{html_text(r.verdict)}</div>"
        f"<table id='drill-summary' style='margin:12px 0'>{cells}</table>"
        + (f"<h3>Failed checks</h3><ul id='drill-failures'>{failures}</ul>" if failures else "")
        + (f"<h3>Findings</h3><ul id='drill-findings'>{findings}</ul>" if findings else "")
        + (f"<h3>To make the next drill complete</h3><ul id='drill-next'>{steps}</ul>"
           if steps else "")
        + checks_html(r)
    )


# pytest-html fills its results table with JavaScript; read without it (a wiki preview, an
# archive, a text browser) its placeholders say "still running". The table below carries the
# whole audit in plain HTML, and these parts are hidden where scripts do not run.
NO_SCRIPT_STYLE = ("<noscript><style>.summary__reload, .controls, p.filter, p.run-count, "
                   "#results-table, #environment-header, #environment {display: none}"
                   "</style></noscript>")
OUTCOME_COLORS = {"passed": "#1a7f37", "finding": "#9a6700", "skipped": "#57606a",
                  "failed": "#cf222e", "error": "#cf222e"}


def checks_html(r: DrillResult) -> str:
    """Every check with its outcome, evidence and failure, readable with scripts off."""
    rows = []
    for c in r.checks:
        color = OUTCOME_COLORS.get(c.outcome, "#57606a")
        detail = "<br>".join(html_text(redact(e)) for e in c.evidence)
        if c.message and c.outcome != "passed":
            detail += f"<pre style='white-space:pre-wrap;margin:4px 0'>" \
                      f"{html_text(redact(c.message))}</pre>"
        rows.append(f"<tr><td title='{html_text(c.why)}'><b>{html_text(c.title)}</b>"
                    f"<div style='color:#57606a;font-size:0.85em'>{html_text(c.why)}</div></td>"
                    f"<td style='color:{color};font-weight:bold'>"
                    f"{html_text(c.outcome.upper())}</td>"
                    f"<td>{detail}</td></tr>")
    for name, why in r.not_run.items():
        if name not in {c.name for c in r.checks}:
            rows.append(f"<tr><td><b>{html_text(title(name))}</b></td>"
                        f"<td style='color:#57606a;font-weight:bold'>NOT RUN</td>"
                        f"<td>{html_text(why)}</td></tr>")
    return ("<h3>Checks</h3><table id='drill-checks' style='border-collapse:collapse'>"
            "<tr><th style='text-align:left'>Check</th><th style='text-align:left'>Result</th>"
            "<th style='text-align:left'>Evidence</th></tr>" + "".join(rows) + "</table>"
            "<style>#drill-checks td{border-top:1px solid #d0d7de;padding:4px 8px;"
            "vertical-align:top}</style>")


def to_markdown(r: DrillResult) -> str:
    """The wiki page. Every string from the database, pytest, Alembic or a tool is made inert
    (`drills.inert`): escaped text, code spans, or fences longer than any backtick run."""
    lines = [f"# Restore drill: {_md_text(r.database)}, {_md_text(r.started_at[:10])}: "
             f"**{_md_text(r.verdict)}**", "", "| | |", "|---|---|"]
    lines += [f"| {_md(k)} | {_md(v)} |" for k, v in summary_rows(r)]
    lines += ["", "## Checks", "", "| Check | Result | Evidence |", "|---|---|---|"]
    for c in r.checks:
        evidence = "; ".join(c.evidence) or (c.message.splitlines()[0] if c.message else "")
        lines.append(f"| {_md(c.title)} | {_md(c.outcome.upper())} | {_md(evidence)} |")
    if r.findings:
        lines += ["", "## Findings", ""] + [f"- {_md_text(f)}" for f in r.findings]
    steps = next_steps(r) if r.verdict == "INCOMPLETE" else []
    if steps:
        lines += ["", "## To make the next drill complete", ""] + [f"- {_md_text(st)}"
                                                                  for st in steps]
    failed = [c for c in r.checks if c.outcome in ("failed", "error")]
    for c in failed:
        lines += ["", f"### {_md_text(c.title)}: {_md_text(c.outcome)}", "",
                  md_fence(redact(c.message.strip()))]
    lines += ["", f"Full report: {md_code(redact(r.reports['html']))} "
                  f"(JSON: {md_code(redact(r.reports['json']))})", ""]
    return redact("\n".join(lines))


def _md(text: str) -> str:
    """A table cell: redacted, then inert."""
    return md_cell(redact(str(text)))


def _md_text(text: str) -> str:
    return md_text(redact(str(text)))


def write_reports(r: DrillResult) -> None:
    """The JSON and Markdown files beside the HTML, then the index over every drill."""
    json_path, md_path = Path(r.reports["json"]), Path(r.reports["md"])
    make_dirs(json_path.parent)
    atomic_write_text(json_path, to_json(r), mode=0o644)
    atomic_write_text(md_path, to_markdown(r), mode=0o644)
    write_index(json_path.parent.parent)


# what the index shows of each drill: its other facts (checks, evidence, sandbox...) are not
# parsed, most of the index's cost at every drill once a report directory holds a year's
INDEX_FIELDS = ("verdict", "database", "started_at", "backup", "alembic", "rto")


def load_results(report_dir: Path) -> list[tuple[DrillResult, str]]:
    """Every drill report under `report_dir`, newest first, with its HTML's relative path:
    the facts the index shows (`INDEX_FIELDS`), the rest left at their defaults."""
    found = []
    for path in report_dir.glob("*/*-drill.json"):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError, RecursionError):
            continue
        if isinstance(data, dict) and data.get("schema") == SCHEMA_ID:
            try:
                result = DrillResult.from_dict({k: data[k] for k in INDEX_FIELDS if k in data})
            except (TypeError, ValueError):
                continue
            found.append((result, str(path.with_suffix(".html").relative_to(report_dir))))
    return sorted(found, key=lambda pair: pair[0].started_at, reverse=True)


def rto_chart(results: list[DrillResult], width: int = 640, height: int = 160) -> str:
    """An inline SVG of the measured RTO of completed recoveries over time (oldest left),
    with the target as a line; failed recoveries have no RTO and are counted, not plotted."""
    points = [(r.started_at, float(r.rto.measured_s)) for r in reversed(results)
              if r.rto.measured_s is not None and not r.rto.failed_at]
    failed = sum(1 for r in results if r.rto.failed_at)
    if not points:
        return "<p>No completed recovery yet" + (f" ({failed} failed)" if failed else "") + ".</p>"
    target = max(r.rto.target_s for r in results)
    top = max(max(v for _, v in points), 1e-6) * 1.2
    step = (width - 40) / max(len(points) - 1, 1)

    def y(v: float) -> float:
        return height - 20 - (height - 40) * min(v, top) / top

    coords = " ".join(f"{20 + i * step:.1f},{y(v):.1f}" for i, (_, v) in enumerate(points))
    dots = "".join(f"<circle cx='{20 + i * step:.1f}' cy='{y(v):.1f}' r='3'><title>"
                   f"{html_text(t)}: {human(v)}</title></circle>"
                   for i, (t, v) in enumerate(points))
    target_line = (f"<line x1='20' x2='{width - 20}' y1='{y(target):.1f}' y2='{y(target):.1f}' "
                   f"stroke='#cf222e' stroke-dasharray='4'/>" if target <= top else "")
    return (f"<svg id='rto-trend' width='{width}' height='{height}' "
            f"xmlns='http://www.w3.org/2000/svg' role='img' aria-label='RTO trend'>"
            f"<text x='20' y='12' font-size='11'>measured RTO of completed recoveries (max "
            f"{human(top / 1.2)}; target {human(target)}"
            + (f"; {plural(failed, 'failed recovery', 'failed recoveries')} not plotted"
               if failed else "") + ")</text>"
            f"<polyline fill='none' stroke='#0969da' stroke-width='2' points='{coords}'/>"
            f"{dots}{target_line}</svg>")


def _rto_cell(rto: RtoFacts) -> str:
    if rto.failed_at == "interrupted":  # as the wiki's index says it (`wiki.rto_cell`)
        return "not measured: interrupted"
    return f"failed at {rto.failed_at}" if rto.failed_at else human(rto.measured_s)


def write_index(report_dir: Path) -> Path:
    pairs = load_results(report_dir)
    rows = "".join(
        f"<tr><td>{html_text(r.started_at)}</td><td>{html_text(r.database)}</td>"
        f"<td style='color:{COLORS.get(r.verdict, '#cf222e')};"
        f"font-weight:bold'>{html_text(r.verdict)}</td>"
        f"<td>{html_text(r.backup.taken_at or '-')}</td>"
        f"<td>{html_text(_rto_cell(r.rto))}</td>"
        f"<td>{html_text(r.alembic.before or '-')} &rarr; "
        f"{html_text(r.alembic.after or '-')}</td>"
        f"<td><a href='{html_text(quote(link))}'>report</a></td></tr>"
        for r, link in pairs)
    page = (
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>Restore drills</title>"
        "<style>body{font-family:sans-serif;margin:2em}td,th{padding:4px 10px;"
        "border-bottom:1px solid #ddd;text-align:left}</style></head><body>"
        f"<h1>Restore drills</h1><p>{len(pairs)} drills, newest first.</p>"
        f"{rto_chart([r for r, _ in pairs])}"
        "<table><tr><th>Drill (UTC)</th><th>Database</th><th>Verdict</th><th>Backup taken</th>"
        f"<th>RTO</th><th>Alembic</th><th></th></tr>{rows}</table></body></html>\n")
    path = report_dir / "index.html"
    atomic_write_text(path, redact(page), mode=0o644)
    return path
