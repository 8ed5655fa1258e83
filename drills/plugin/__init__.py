"""The restore drill as a pytest plugin (entry point `drills.plugin`, or `-p drills.plugin`).

Inert unless `--drill`, `--drill-options` or `--backup` is given; then it collects the
built-in checks (`drills/checks.py`) instead of the project's tests, and writes the HTML report
(pytest-html), a JSON result and a Markdown summary under `--report-dir`. Its parts:
`hooks` (configuration, collection), `fixtures` (the frozen outcomes the checks judge),
`recording` (the check records and the result, assembled once), `html` (pytest-html's report
made inert) and `progress` (the phases, reported to `atb drill run` as JSON lines).

The entry point loads into every pytest run of the environment it is installed in, so this
module is all that loads there: it declares the options (from the light table in
`drills.options`) and, only when a drill is asked for, imports and registers the parts. A run
that is not a drill gets `inactive` instead: the drill's fixtures, each skipping. The names
below (`Evidence`, `Findings`, the outcomes, the fixtures and hooks) are imported from the
parts on first use.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import pytest

from backup_core.tools import namespaces
from drills.options import OPTIONS

# the drill's parts, registered as plugins of their own when a drill is configured
PARTS = ("drills.plugin.fixtures", "drills.plugin.hooks", "drills.plugin.html",
         "drills.plugin.recording", "drills.plugin.progress")
# names this package offers, and the part each lives in (imported on first use)
_LAZY = {
    **dict.fromkeys(("Evidence", "Findings", "IntegrationOutcome", "MigrationOutcome",
                     "RestoreOutcome", "RtoOutcome", "drill", "drill_backup", "drill_chains",
                     "drill_conditions", "drill_engine", "drill_final_url",
                     "drill_integration", "drill_integrity", "drill_migration",
                     "drill_migration_outcome", "drill_policy", "drill_restore", "drill_rpo",
                     "drill_rto", "drill_sandbox", "drill_sandbox_start", "drill_url",
                     "evidence", "findings"),
                    "drills.plugin.fixtures"),
    **dict.fromkeys(("pytest_collection_modifyitems", "pytest_report_header"),
                    "drills.plugin.hooks"),
    **dict.fromkeys(("pytest_html_report_title", "pytest_html_results_summary",
                     "pytest_html_results_table_header", "pytest_html_results_table_row",
                     "pytest_runtest_logreport"), "drills.plugin.html"),
    **dict.fromkeys(("pytest_runtest_makereport", "pytest_sessionfinish",
                     "pytest_terminal_summary"), "drills.plugin.recording"),
}


def __getattr__(name: str) -> Any:
    """`from drills.plugin import Evidence` and the like: the part, imported now."""
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def dest(name: str) -> str:
    return next(o.dest for o in OPTIONS if o.name == name)


def pytest_addoption(parser: pytest.Parser, pluginmanager: pytest.PytestPluginManager) -> None:
    if namespaces.already_inside():  # before any conftest of yours is imported: sealed
        importlib.import_module("drills.plugin.sealed_threads").install(pluginmanager)
    group = parser.getgroup("drill", "restore drill (atb)")
    for o in OPTIONS:
        if o.kind == "flag":
            group.addoption(f"--{o.name}", dest=o.dest, action="store_true", default=False,
                            help=o.help)
            continue
        shown = f" [default: {o.default}]" if o.default and "[default" not in o.help else ""
        listed = " (comma-separated)" if o.kind in ("list", "paths") else ""
        group.addoption(f"--{o.name}", dest=o.dest, default=None, help=o.help + listed + shown)
        parser.addini(o.dest, help=o.help, default=o.default)


def active(config: pytest.Config) -> bool:
    """A drill was asked for: `--drill`, `--backup` or `--drill-options`."""
    return bool(config.getoption(dest("drill")) or config.getoption(dest("backup"))
                or config.getoption(dest("drill-options")))


@pytest.hookimpl(wrapper=True)
def pytest_load_initial_conftests(early_config: pytest.Config) -> Any:
    """The project's conftest.py where the drill runs is loaded by design (its fixtures serve
    your checks); one that cannot be imported is the drill's configuration: `atb drill run`
    exits 2 with one line naming it (`drills.run`), as for a check file."""
    try:
        return (yield)
    except Exception as exc:  # pytest's ConftestImportFailure (private): its path and cause
        given = getattr(early_config.known_args_namespace, dest("drill-options"), None)
        path, cause = getattr(exc, "path", None), getattr(exc, "cause", None) or exc.__cause__
        if given and isinstance(path, str | Path) and cause is not None:
            from drills.plugin.hooks import conftest_refused

            conftest_refused(Path(given), Path(path), cause)  # never raises
        raise


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "drill: a restore-drill check, run by `atb drill run` "
                                       "and `pytest --drill` beside the built-in checks")
    if not active(config):
        config.pluginmanager.register(importlib.import_module("drills.plugin.inactive"),
                                      "atb-drill-inactive")
        return
    for part in PARTS:
        config.pluginmanager.register(importlib.import_module(part), f"atb-{part}")
    from drills.plugin import hooks

    hooks.configure_drill(config)


__all__ = ["PARTS", "active", "dest", "pytest_addoption", "pytest_configure",
           "pytest_load_initial_conftests"]
