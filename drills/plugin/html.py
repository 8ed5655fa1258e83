"""The drill's pytest-html report: its summary block, its Check and Evidence columns, and
every value a check or the environment can put in it made inert text."""

from __future__ import annotations

import re
from typing import Any

import pytest

from backup_core.tools.conninfo import redact
from drills import report
from drills.inert import html_text
from drills.plugin.fixtures import DRILL_REPORT, STATE
from drills.plugin.recording import drill_result


@pytest.hookimpl(optionalhook=True)
def pytest_html_results_summary(prefix: list[str], summary: list[str], postfix: list[str],
                                session: pytest.Session) -> None:
    state = session.config.stash.get(STATE, None)
    if state is not None:
        prefix.append(report.summary_html(drill_result(session.config, state)))


@pytest.hookimpl(optionalhook=True)
def pytest_html_report_title(report: Any) -> None:
    state = report._config.stash.get(STATE, None) if hasattr(report, "_config") else None
    if state is not None:
        report.title = f"Restore drill: {state.database} ({state.started_at:%Y-%m-%d %H:%M}Z)"
        # pytest-html's script writes the environment table's values (metadata: the drill's
        # database, paths, anything a plugin or the environment put there) as HTML
        environment = report.data.get("environment")
        if isinstance(environment, dict):
            report.set_data("environment", {k: _inert_value(v) for k, v in environment.items()})


def _inert_value(value: object) -> object:
    """A metadata value as pytest-html's script will insert it as HTML: escaped text."""
    if isinstance(value, dict):
        return {html_text(k): html_text(redact(str(v))) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [html_text(redact(str(v))) for v in value]
    return html_text(redact(str(value)))


@pytest.hookimpl(optionalhook=True)
def pytest_html_results_table_header(cells: list[str]) -> None:
    cells.insert(2, "<th>Check</th>")
    cells.insert(3, "<th>Evidence</th>")


@pytest.hookimpl(optionalhook=True)
def pytest_html_results_table_row(report: pytest.TestReport | pytest.CollectReport,
                                   cells: list[str]) -> None:
    """Our columns, and the Test and Links cells set again from escaped text: pytest-html puts
    the node id (a parametrize id can hold any markup) and the links' names in as they are,
    and its script inserts every cell as HTML."""
    props = [(k, str(v)) for k, v in getattr(report, "user_properties", ())]
    title = next((v for k, v in props if k == "check"), report.nodeid)
    why = next((v for k, v in props if k == "why"), "")
    lines = [v for k, v in props if k == "evidence"]
    if len(cells) >= 4:
        when = getattr(report, "when", "call")
        test_id = report.nodeid + ("" if when == "call" else f"::{when}")
        cells[1] = f'<td class="col-testId">{html_text(redact(test_id))}</td>'
        cells[3] = f'<td class="col-links">{_links(getattr(report, "extras", ()))}</td>'
    cells.insert(2, f"<td title='{html_text(redact(why))}'>{html_text(redact(title))}</td>")
    cells.insert(3, "<td>" + "<br>".join(html_text(redact(x)) for x in lines) + "</td>")


def _links(extras: Any) -> str:
    """pytest-html's link cell, its names and addresses escaped (they come from checks)."""
    links = [e for e in extras if isinstance(e, dict)
             and e.get("format_type") in ("json", "text", "url")]
    return "".join(f'<a target="_blank" href="{html_text(e.get("content", ""))}" '
                   f'class="col-links__extra {html_text(e.get("format_type", ""))}">'
                   f'{html_text(e.get("name") or "")}</a>' for e in links)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """A check's pytest-html extras made inert before pytest-html reads them: HTML becomes a
    plain-text attachment, a link only an http(s) address; everything else is text."""
    if not getattr(report, DRILL_REPORT, False):
        return
    extras = getattr(report, "extras", None)
    if isinstance(extras, list):
        extras[:] = [_inert_extra(e) for e in extras if isinstance(e, dict)]


def _inert_extra(extra: dict[str, Any]) -> dict[str, Any]:
    kind, content = extra.get("format_type"), extra.get("content")
    name = redact(str(extra.get("name") or ""))  # escaped where it is shown (`_links`)
    if kind in ("image", "video", "json"):
        return {**extra, "name": name}
    if kind == "url" and isinstance(content, str) and re.match(r"(?i)https?://", content):
        return {**extra, "name": name}
    text = content.decode(errors="replace") if isinstance(content, bytes) else str(content)
    return {**extra, "name": name or "text", "format_type": "text", "extension": "txt",
            "mime_type": "text/plain", "content": redact(text)}
