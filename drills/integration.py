"""The application's integration command, run against the restored sandbox: isolated where
the platform allows, with a sealed environment, as a process group of its own, its JUnit
cases read back. A plain function: the drill's fixture runs it and records the outcome."""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from backup_core.tools import childenv, isolation, runner
from backup_core.tools.conninfo import ConnInfo, redact
from backup_core.tools.durations import human
from drills.result import IntegrationFacts


def run_integration(command: str, url: ConnInfo, *, dialect: str, pass_env: tuple[str, ...],
                    timeout_s: float) -> tuple[IntegrationFacts, str]:
    """(what the command did, how it was isolated)."""
    with tempfile.TemporaryDirectory(prefix="atb-junit-") as tmp, \
            isolation.isolated(shlex.split(command), url) as (argv, reach, iso):
        junit = Path(tmp) / "junit.xml"
        env = childenv.sealed({**childenv.libpq_vars(reach),
                               "DATABASE_URL": reach.app_url(dialect),
                               "PYTEST_ADDOPTS": f"--junitxml={junit}"},
                              pass_env=pass_env)
        t0 = time.monotonic()
        try:
            code, out = _run_command(argv, env, timeout_s)
        except FileNotFoundError as exc:
            code, out = 127, f"command not found: {exc.filename}"
        cases = _junit_cases(junit)
        how = iso.describe()
    tail = _scrub("\n".join(out.splitlines()[-40:]), url)
    return IntegrationFacts(command=command, exit_code=code,
                            duration_s=round(time.monotonic() - t0, 3), output_tail=tail,
                            cases=tuple(cases)), how


def _run_command(argv: list[str], env: dict[str, str], timeout: float) -> tuple[int, str]:
    """(exit code, output) of the integration command, run as a process group of its own:
    on a timeout, an interruption or atb's death, the whole group goes, not only its
    first process (a shell script's children would otherwise outlive the drill)."""
    proc = runner.spawn_text(argv, what="the integration command", env=env, new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
        return proc.returncode, out
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        return 124, f"timed out after {human(timeout)}"
    except BaseException:
        _kill_group(proc)
        raise


def _kill_group(proc: subprocess.Popen[str]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()


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
