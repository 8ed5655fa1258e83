"""`atb drill run`: a restore drill of one backup, its verdict and the paths of its reports."""

from __future__ import annotations

import logging
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import click

from backup_core.tools import extras
from drills import console, render, sandbox
from drills.cli import output
from drills.cli.params import DAYS, EXIT_CODES, F, days, json_option, production
from drills.options import OPTIONS, DrillOptions, Option
from drills.result import DrillResult


def drill_settings(command: F) -> F:
    """`atb drill run`'s options, made from the one declaration of each (`drills.options`),
    as the pytest plugin makes its options and ini keys from the same table."""
    for o in reversed([o for o in OPTIONS if o.cli]):
        command = click.option(f"--{o.flag}", o.flag.replace("-", "_"),
                               **_click_settings(o))(command)
    return command


def _click_settings(o: Option) -> dict[str, Any]:
    kw: dict[str, Any] = {"help": o.help}
    if o.metavar:
        kw["metavar"] = o.metavar
    if o.envvar:
        kw.update(envvar=o.envvar, show_envvar=True)
    if o.kind == "flag":
        return {**kw, "is_flag": True}
    if o.kind in ("list", "paths"):
        kw.update(multiple=True, help=o.help + " (repeatable)")
    types: dict[str, Any] = {
        "file": click.Path(dir_okay=False, path_type=Path),
        "dir": click.Path(file_okay=False, path_type=Path),
        "paths": click.Path(exists=True, path_type=Path), "int": int,
        "count": click.IntRange(min=1), "days": DAYS, "choice": click.Choice(o.choices)}
    if o.kind in types:
        kw["type"] = types[o.kind]
    if o.kind == "days":
        kw["callback"] = days
    if o.default is not None:
        kw["default"] = float(o.default) if o.kind == "days" else o.default
    return kw


@click.group(epilog=EXIT_CODES)
def drill() -> None:
    """Restore drills: prove that a backup restores, migrates and serves the application."""


@drill.command("run", epilog=EXIT_CODES)
@drill_settings
@click.option("--pdf", is_flag=True,
              help="Also write the report as a PDF beside the HTML, as a reader without "
                   "JavaScript sees it (needs Chromium), for wikis that take attachments.")
@json_option
def drill_run(pdf: bool, as_json: bool, **values: Any) -> None:
    """Restore a random backup of the window (or --backup) into a sandbox, migrate it, run
    the checks and the integration command, and write the audit reports. Exits 0 on PASS,
    1 on FAIL, 10 when INCOMPLETE."""
    from drills.run import run_drill

    extras.require("drill", what="the restore drill")
    if pdf:
        render.require()
    options = _options(values)
    progress = console.Progress("drill")
    try:  # sandboxes of killed drills are reaped meanwhile (each logged in one line)
        with sandbox.reaping():
            result = run_drill(options, production=production(os.environ.get("DATABASE_URL")),
                               on_line=lambda line: drill_line(progress, line))
    finally:
        progress.close()
    if result.sandbox.note:
        logging.getLogger("atb.drill").warning("%s", result.sandbox.note)
    if pdf:
        html_path = Path(result.reports["html"])
        render.render(html_path, pdf=html_path.with_suffix(".pdf"))
        result = replace(result, reports={**result.reports,
                                          "pdf": str(html_path.with_suffix(".pdf"))})
    output.show(result, as_json=as_json, text=drill_summary)
    if not result.passed:
        raise SystemExit(10 if result.verdict == "INCOMPLETE" else 1)


def _options(values: dict[str, Any]) -> DrillOptions:
    """The drill's options from click's values, through the one declaration of each."""
    text: dict[str, str | None] = {}
    flags: dict[str, bool] = {}
    for o in OPTIONS:
        if not o.cli:
            continue
        value = values[o.flag.replace("-", "_")]
        if o.kind == "flag":
            flags[o.name] = bool(value)
        elif o.kind in ("list", "paths"):
            text[o.name] = ",".join(str(v) for v in value) or None
        else:
            text[o.name] = None if value is None else str(value)
    return DrillOptions.from_values(text.get, flags.get, os.environ)


def drill_line(progress: console.Progress, line: str) -> None:
    """One progress line per check, read from the drill child's `pytest -v` output."""
    if "::test_" in line and any(w in line for w in ("PASSED", "FAILED", "ERROR", "SKIPPED",
                                                       "XFAIL")):
        name = line.split("::", 1)[1].split()[0].removeprefix("test_").replace("_", " ")
        status = next(w for w in ("PASSED", "FAILED", "ERROR", "SKIPPED", "XFAIL") if w in line)
        progress(f"{status.lower()}: {name}", 0)


def drill_summary(r: DrillResult) -> str:
    """The verdict, the summary rows, each check's outcome, and where the reports are."""
    from drills.report import summary_rows

    lines = [f"{k + ':':<14} {v}" for k, v in summary_rows(r)]
    lines.append("")
    for c in r.checks:
        lines.append(f"  {c.outcome.upper():<8} {c.title}")
        if c.outcome in ("failed", "error") and c.message:
            lines.append(f"           {c.message.splitlines()[0]}")
    for f in r.findings:
        lines.append(f"  FINDING  {f}")
    for name, why in r.not_run.items():
        lines.append(f"  NOT RUN  {name.removeprefix('test_').replace('_', ' ')}: {why}")
    lines += ["", f"report: {r.reports['html']}", f"json:   {r.reports['json']}",
              f"wiki:   {r.reports['md']}"]
    if "pdf" in r.reports:
        lines.append(f"pdf:    {r.reports['pdf']}")
    return "\n".join(lines)
