"""The drill's recording: one hook collects each check's record (outcome, evidence,
findings, its declared phase); when the checks are over the result is assembled once, the
reports written and the verdict recorded beside the backup."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Generator
from dataclasses import replace
from typing import Any

import pytest

from backup_core.store import ledger
from backup_core.store.verdicts import record_drill
from backup_core.tools.conninfo import redact
from backup_core.tools.errors import AtbError
from drills import child, report
from drills.plugin.fixtures import DRILL_REPORT, EVIDENCE, FINDINGS, STATE
from drills.result import DrillResult, EvidenceFacts, verdict_of
from drills.state import DEFAULT_PHASE, INCOMPLETE, DrillState, check_message

EXIT_INCOMPLETE = 10  # a built-in check did not run: not a pass, not a failure
log = logging.getLogger("atb.drill")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[
        None, Any, None]:
    state = item.config.stash.get(STATE, None)
    if state is not None and call.when == "call":
        # evidence as pytest's own user properties, as `record_property` would: JUnit XML
        # and every other plugin see it (copied onto the report as it is made)
        item.user_properties.append(("check", report.title(item.name)))
        item.user_properties.append(("why", _why(item)))
        item.user_properties.extend(("evidence", redact(line))
                                    for line in item.stash.get(EVIDENCE, []))
    outcome = yield
    rep: pytest.TestReport = outcome.get_result()
    if state is None:
        return
    setattr(rep, DRILL_REPORT, True)  # for the hooks that see only the report
    if rep.longrepr is not None and not isinstance(rep.longrepr, tuple):
        text = str(rep.longrepr)
        if redact(text) != text:  # a URL with a password in a traceback: never in a report
            rep.longrepr = redact(text)
    lines: list[str] = item.stash.get(EVIDENCE, [])
    marker = item.get_closest_marker("drill")
    rec = state.records.setdefault(item.nodeid, {
        "name": item.name, "title": report.title(item.name), "why": _why(item),
        "outcome": "", "duration_s": 0.0, "message": "",
        "phase": str(marker.kwargs.get("phase", DEFAULT_PHASE)) if marker else DEFAULT_PHASE})
    rec["duration_s"] = round(rec["duration_s"] + rep.duration, 3)
    rec["evidence"] = tuple(lines)
    found: list[str] = item.stash.get(FINDINGS, [])
    rec["findings"] = tuple(found)
    if rep.when == "setup" and rep.outcome != "passed":
        rec["outcome"] = "skipped" if rep.skipped else "error"
    elif rep.when == "call":
        if hasattr(rep, "wasxfail"):
            rec["outcome"] = "finding"
            rec["message"] = str(rep.wasxfail)
        else:
            rec["outcome"] = rep.outcome
    elif rep.when == "teardown" and rep.failed:
        rec["outcome"] = "error"
    if rep.skipped and not rec["message"] and isinstance(rep.longrepr, tuple):
        rec["message"] = str(rep.longrepr[2]).removeprefix("Skipped: ")
    if rep.failed and call.excinfo is not None:
        rec["message"] = redact(check_message(call.excinfo.value))


def _why(item: pytest.Item) -> str:
    """A check's docstring on one line: why it matters, as the report says."""
    fn = getattr(item, "function", None)
    return " ".join(((fn.__doc__ or "") if fn else "").split())


RESULT = pytest.StashKey[DrillResult]()


def drill_result(config: pytest.Config, state: DrillState) -> DrillResult:
    """The drill's result, assembled once when the checks are over (pytest-html's summary
    asks for it before the reports are written)."""
    if RESULT not in config.stash:
        state.collect()
        result = state.result()
        if state.options.result_file is not None:
            # under `atb drill run`: the ledger's facts (its key, the controls) in the reports
            # as they are first written, not written again by the parent
            result = replace(result, evidence=EvidenceFacts(state.options.ledger_key,
                                                            ledger.CONTROLS))
        config.stash[RESULT] = result
    return config.stash[RESULT]


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    state = session.config.stash.get(STATE, None)
    if state is None or exitstatus == pytest.ExitCode.USAGE_ERROR:
        return
    if state.collection_error is not None:
        _refuse(session, state, state.collection_error)
        return
    if child.ORPHANED:  # `atb drill run` was killed: its sandbox is torn down, and no
        _give_back(state)  # report is written that no ledger would know of
        return
    result = drill_result(session.config, state)
    report.write_reports(result)
    if state.options.result_file is not None:
        state.options.result_file.write_text(report.to_json(result))
    if state.backup is not None and state.options.record:
        # appended to the backup's history; a verdict the backup did not cause (a check that
        # errored, an interrupted run, INCOMPLETE) never hides an earlier PASS. Under `atb
        # drill run` in namespaces the parent records it: the backups are read-only in here
        try:
            record_drill(state.backup.path, verdict_of(
                result, interrupted=exitstatus == pytest.ExitCode.INTERRUPTED))
        except AtbError as exc:
            log.warning("could not record the verdict beside the backup: %s", exc)
    if result.verdict == INCOMPLETE:
        session.exitstatus = EXIT_INCOMPLETE
    elif result.verdict != "PASS" and session.exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_keyboard_interrupt(excinfo: pytest.ExceptionInfo[BaseException]) -> None:
    """Ctrl-C (or `atb drill run` passing one on): the drill says it was interrupted; the
    checks it did not reach are "not run: interrupted", and its record is still kept."""
    from drills.plugin.hooks import current_state, no_page

    state = current_state()
    if state is not None:
        state.interrupted = True
        if child.ORPHANED:
            no_page()


def _refuse(session: pytest.Session, state: DrillState, error: str) -> None:
    """The drill's configuration cannot run: no report (the name claimed for it is given
    back, pytest-html writes no page), no verdict, no ledger record; one line on stderr
    (and for `atb drill run`, which exits 2 with it, in its file)."""
    from drills.plugin.hooks import config_error_file

    _give_back(state)
    where = config_error_file(state.options.result_file)
    if where is not None:
        where.write_text(error + "\n")
    else:
        sys.stderr.write(f"atb: error: {error}\n")
    session.exitstatus = pytest.ExitCode.USAGE_ERROR


def _give_back(state: DrillState) -> None:
    """The report name claimed for this drill, given back: no report is written."""
    for path in (state.paths.json, state.paths.html, state.paths.md):
        path.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        state.paths.json.parent.rmdir()  # only when nothing else is in it


def pytest_unconfigure(config: pytest.Config) -> None:
    """`pytest --drill` by hand: the drill's record in the ledger, once pytest-html has
    written its page (under `atb drill run` the parent appends it, after its own steps)."""
    state = config.stash.get(STATE, None)
    if state is None or state.options.result_file is not None or RESULT not in config.stash:
        return
    from backup_core.store.signing import signer_from_env
    from drills import ledger

    try:
        ledger.record(config.stash[RESULT], state.options, signer=signer_from_env(os.environ))
    except AtbError as exc:
        log.warning("could not append the drill to the ledger: %s", exc)


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    state = config.stash.get(STATE, None)
    if state is None or state.collection_error is not None:
        return
    terminalreporter.write_sep("=", f"restore drill verdict: {state.verdict()}")
    terminalreporter.write_line(f"report: {state.paths.html}")
    terminalreporter.write_line(f"json:   {state.paths.json}")
    terminalreporter.write_line(f"wiki:   {state.paths.md}")
