"""The restore drill as a pytest plugin (entry point `drills.plugin`, or `-p drills.plugin`).

Inert unless `--drill`, `--drill-options` or `--backup` is given; then it collects the
built-in checks (`drills/checks.py`) instead of the project's tests, and writes the HTML report
(pytest-html), a JSON result and a Markdown summary under `--report-dir`. Its parts:
`hooks` (options, configuration, collection), `fixtures` (the frozen outcomes the checks
judge), `recording` (the check records and the result, assembled once) and `html`
(pytest-html's report made inert). pytest registers this module; the names below are what it
finds here.
"""

from __future__ import annotations

from drills.plugin.fixtures import (
    Evidence,
    Findings,
    IntegrationOutcome,
    MigrationOutcome,
    RestoreOutcome,
    RtoOutcome,
    drill,
    drill_backup,
    drill_chains,
    drill_conditions,
    drill_engine,
    drill_final_url,
    drill_integration,
    drill_integrity,
    drill_migration,
    drill_migration_outcome,
    drill_policy,
    drill_restore,
    drill_rpo,
    drill_rto,
    drill_sandbox,
    drill_url,
    evidence,
    findings,
)
from drills.plugin.hooks import (
    pytest_addoption,
    pytest_collection_modifyitems,
    pytest_configure,
    pytest_report_header,
)
from drills.plugin.html import (
    pytest_html_report_title,
    pytest_html_results_summary,
    pytest_html_results_table_header,
    pytest_html_results_table_row,
    pytest_runtest_logreport,
)
from drills.plugin.recording import (
    pytest_runtest_makereport,
    pytest_sessionfinish,
    pytest_terminal_summary,
    pytest_unconfigure,
)

__all__ = [
    "Evidence", "Findings", "IntegrationOutcome", "MigrationOutcome", "RestoreOutcome",
    "RtoOutcome", "drill", "drill_backup", "drill_chains", "drill_conditions", "drill_engine",
    "drill_final_url", "drill_integration", "drill_integrity", "drill_migration",
    "drill_migration_outcome", "drill_policy", "drill_restore", "drill_rpo", "drill_rto",
    "drill_sandbox", "drill_url", "evidence", "findings", "pytest_addoption",
    "pytest_collection_modifyitems", "pytest_configure", "pytest_html_report_title",
    "pytest_html_results_summary", "pytest_html_results_table_header",
    "pytest_html_results_table_row", "pytest_report_header", "pytest_runtest_logreport",
    "pytest_runtest_makereport", "pytest_sessionfinish", "pytest_terminal_summary",
    "pytest_unconfigure",
]
