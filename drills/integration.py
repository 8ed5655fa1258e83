"""The application's integration command, run against the restored sandbox: isolated where
the platform allows, with a sealed environment, as a process group of its own, its JUnit
cases read back. A plain function: the drill's fixture runs it and records the outcome."""

from __future__ import annotations

import shlex
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from backup_core.tools import appenv, isolation
from backup_core.tools.appenv import AppEnv
from backup_core.tools.conninfo import ConnInfo, redact
from drills.result import IntegrationFacts


def run_integration(command: str, url: ConnInfo, *, app: AppEnv,
                    timeout_s: float) -> tuple[IntegrationFacts, str]:
    """(what the command did, how it was isolated): run in the application's environment
    (`app`: its directory, interpreter, and the copy under DATABASE_URL in production's form
    and under its own variables)."""
    with tempfile.TemporaryDirectory(prefix="atb-junit-") as tmp, \
            isolation.isolated(shlex.split(command), url) as (argv, reach, iso):
        junit = Path(tmp) / "junit.xml"
        env = app.environ(reach, {"PYTEST_ADDOPTS": f"--junitxml={junit}"})
        t0 = time.monotonic()
        code, out = appenv.run_app(argv, env=env, cwd=app.directory, timeout=timeout_s)
        cases = _junit_cases(junit)
        how = iso.describe()
    tail = _scrub("\n".join(out.splitlines()[-40:]), url)
    return IntegrationFacts(command=command, exit_code=code,
                            duration_s=round(time.monotonic() - t0, 3), output_tail=tail,
                            cases=tuple(cases)), how


def _scrub(text: str, url: ConnInfo) -> str:
    text = redact(text)
    return text.replace(url.password, "***") if url.password else text


def _junit_cases(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError:
        return []
    cases = []
    for case in root.iter("testcase"):
        outcome = "passed"
        for tag in ("failure", "error", "skipped"):
            if case.find(tag) is not None:
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[tag]
        cases.append({"name": f"{case.get('classname', '')}::{case.get('name', '')}",
                      "outcome": outcome, "time_s": float(case.get("time", 0) or 0)})
    return cases
