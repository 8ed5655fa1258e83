"""The audit wiki as a reader sees it: its Markdown pages rendered by a GFM renderer
(markdown-it-py with GFM tables and strikethrough, raw HTML allowed as wikis allow it: the
pages must be inert by themselves) into one HTML page, which headless Chromium screenshots
(`drills.render`). `python -m drills.wiki_preview PNG` makes the README's docs/wiki-index.png
from a wiki published here, into a git repository of its own, by the real publish."""

from __future__ import annotations

import os
import sys
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

from backup_core.ops.publish import Wiki
from backup_core.store.naming import dir_name
from backup_core.tools.runner import run
from drills import render, report
from drills.inert import html_text
from drills.result import (
    AlembicFacts,
    BackupFacts,
    CheckRecord,
    DrillResult,
    PitrFacts,
    RpoFacts,
    RtoFacts,
    SandboxFacts,
)
from drills.wiki import INDEX, publish_drills

SAMPLE_NOW = datetime(2026, 11, 29, 6, 0, 17, tzinfo=UTC)  # the README's picture, reproducible
STYLE = """
body{font-family:-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;font-size:15px;
 color:#1f2328;margin:0;background:#f6f8fa}
.page{background:white;border:1px solid #d0d7de;border-radius:6px;margin:16px 24px;
 padding:8px 32px 24px}
.crumb{color:#59636e;font-size:13px;padding:12px 0 0}
h1{border-bottom:1px solid #d1d9e0;padding-bottom:.3em;font-size:1.8em}
h2{border-bottom:1px solid #d1d9e0;padding-bottom:.3em;font-size:1.4em}
table{border-collapse:collapse;margin:12px 0}
th,td{border:1px solid #d1d9e0;padding:5px 12px;text-align:left;vertical-align:top}
tr:nth-child(2n){background:#f6f8fa}
code{background:#eff1f3;border-radius:4px;padding:.1em .3em;font-size:85%}
a{color:#0969da;text-decoration:none}
"""


def to_html(markdown: str) -> str:
    """One page's Markdown as a wiki renders it (GFM tables, raw HTML passed through)."""
    from markdown_it import MarkdownIt

    md = MarkdownIt("commonmark", {"html": True}).enable("table").enable("strikethrough")
    return str(md.render(markdown))


def preview(pages: list[tuple[str, str]], *, title: str = "Audit wiki") -> str:
    """The pages (wiki path, Markdown) one below the other, each framed as a wiki page."""
    body = "".join(f"<div class='crumb'>wiki / {html_text(path)}</div>"
                   f"<div class='page'>{to_html(markdown)}</div>" for path, markdown in pages)
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html_text(title)}"
            f"</title><style>{STYLE}</style></head><body>{body}</body></html>\n")


def wiki_pages(clone: Path, drill_page: str) -> list[tuple[str, str]]:
    """The index and one drill's page, as the wiki holds them."""
    return [(path, (clone / path).read_text()) for path in (INDEX, f"{drill_page}.md")]


def sample_drills(report_dir: Path, now: datetime) -> list[DrillResult]:
    """A quarter of drills of two databases, as `atb drill run` reports them: passes, a
    point-in-time drill, an incomplete one and a failure with a hostile table name."""
    specs = [  # days ago, database, verdict, RTO, pitr
        (0, "trading", "PASS", 212.4, False), (13, "trading", "PASS", 198.0, True),
        (41, "billing", "INCOMPLETE", 95.2, False),
        (63, "trading", "FAIL", None, False), (88, "billing", "PASS", 90.1, False)]
    results = []
    for days, database, verdict, rto, pitr in specs:
        started = (now - timedelta(days=days)).replace(microsecond=0)
        stem = report_dir / dir_name(database) / f"{started:%Y%m%dT%H%M%SZ}-drill"
        failed = verdict == "FAIL"
        checks = (
            CheckRecord(name="test_restore_completes_without_errors",
                        title="Restore completes without errors",
                        outcome="failed" if failed else "passed",
                        message=("pg_restore: error: could not create table "
                                 "\"<img src=x onerror=alert(1)>\"") if failed else "",
                        evidence=() if failed else ("14 tables restored",)),
            CheckRecord(name="test_every_table_has_its_backup_time_row_count",
                        title="Every table has its backup time row count",
                        outcome="error" if failed else "passed",
                        evidence=() if failed else ("14 tables, 1,204,311 rows",)))
        result = DrillResult(
            verdict=verdict, database=database, started_at=started.isoformat(),
            finished_at=(started + timedelta(seconds=(rto or 40) + 30)).isoformat(), seed=days,
            backup=BackupFacts(path=f"backups/{database}/backup-"
                                    f"{started - timedelta(days=9):%Y%m%dT%H%M%SZ}.dump",
                               taken_at=(started - timedelta(days=9)).isoformat(),
                               age_s=9 * 86400.0, size_bytes=48_213_004, sha256="9f2c" * 16,
                               tables=14, rows=1_204_311, row_counts_mode="checksum"),
            sandbox=SandboxFacts(provider="docker", server_version="15.14",
                                 image="postgres:15"),
            alembic=AlembicFacts(before="0003_trade_fee", after="0005_rename_balance_equity",
                                 heads=("0005_rename_balance_equity",), ok=not failed),
            rto=RtoFacts(target_s=3600, measured_s=rto, met=rto is not None,
                         failed_at="restore" if failed else None),
            rpo=RpoFacts(target_s=900, largest_gap_s=3600.0, met=False),
            integration=None,
            not_run={"test_application_integration_suite_passes": "no --integration-cmd "
                     "given"} if verdict == "INCOMPLETE" else {},
            checks=checks, findings=(), options={},
            pitr=PitrFacts(stanza="main", target_choice="random, seed 13", data_loss_s=41.0)
            if pitr else None,
            reports={"html": f"{stem}.html", "json": f"{stem}.json", "md": f"{stem}.md"})
        stem.parent.mkdir(parents=True, exist_ok=True)
        Path(f"{stem}.html").write_text(f"<html><body>Verdict: {verdict}</body></html>\n")
        report.write_reports(result)
        results.append(result)
    return results


def publish_sample(root: Path, *, now: datetime | None = None) -> tuple[Path, str]:
    """Publish the sample drills into a fresh git repository under `root` by the real
    publish; return a clone of it and the newest drill's page."""
    bare, clone = root / "wiki.git", root / "clone"
    run(["git", "init", "--quiet", "--bare", "--initial-branch=master", str(bare)],
        what="git init")
    results = sample_drills(root / "reports", now or datetime.now(UTC))
    publish_drills(Wiki.parse(str(bare)), root / "reports")
    run(["git", "clone", "--quiet", str(bare), str(clone)], what="git clone")
    newest = results[0]
    return clone, f"restore-drills/{dir_name(newest.database)}/{Path(newest.reports['md']).stem}"


def make_screenshot(png: Path, *, now: datetime | None = None) -> str:
    """The README's picture: the sample wiki's index and newest drill page, rendered and
    screenshot into `png`. Returns the HTML that was rendered."""
    png = png.resolve()
    here = Path.cwd()
    with tempfile.TemporaryDirectory(prefix="atb-wiki-shot-") as tmp:
        os.chdir(tmp)  # the reports name themselves `reports/...`, as a drill run here would
        try:
            clone, page = publish_sample(Path(), now=now)
            page_html = preview(wiki_pages(clone, page))
            html = Path(tmp) / "wiki.html"
            html.write_text(page_html)
            render.render(html, png=png, width=1200, height=1200)
        finally:
            os.chdir(here)
    return page_html


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/wiki-index.png")
    make_screenshot(target, now=SAMPLE_NOW)
    print(target)
