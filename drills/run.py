"""`atb drill run`: the drill in a child pytest process, its result read back as JSON.

pytest is not started twice in one process; the child gets the production URL only as
`ATB_PRODUCTION_URL` (to refuse it), never as `DATABASE_URL`.
"""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from backup_core.conninfo import redact
from backup_core.errors import CommandFailed
from drills.options import DrillOptions

PRODUCTION_ENV = "ATB_PRODUCTION_URL"


@dataclass(frozen=True)
class DrillRun:
    exit_code: int
    result: dict[str, Any]

    @property
    def passed(self) -> bool:
        return bool(self.result.get("verdict") == "PASS")


def drill_argv(options: DrillOptions) -> list[str]:
    return [sys.executable, "-m", "pytest", "-p", "drills.plugin", "-p", "no:cacheprovider",
            "-v", "--no-header", "-rfEx", "--tb=short", *options.as_pytest_args()]


def run_drill(options: DrillOptions, *, on_line: Callable[[str], None] | None = None,
              env: dict[str, str] | None = None) -> DrillRun:
    """Run the drill; raise `CommandFailed` when it could not even produce a result."""
    base = dict(os.environ if env is None else env)
    production = base.pop("DATABASE_URL", None)
    if production:
        base[PRODUCTION_ENV] = production
    if options.sandbox_url:
        base["ATB_SANDBOX_URL"] = options.sandbox_url
    with tempfile.TemporaryDirectory(prefix="atb-drill-") as tmp:
        result_file = Path(tmp) / "result.json"
        argv = drill_argv(replace(options, result_file=result_file))
        tail: collections.deque[str] = collections.deque(maxlen=40)
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, text=True, errors="replace", env=base)
        assert proc.stdout is not None
        try:
            for line in proc.stdout:
                tail.append(line.rstrip("\n"))
                if on_line:
                    on_line(redact(line.rstrip("\n")))
            code = proc.wait()
        except BaseException:
            proc.send_signal(signal.SIGINT)  # pytest tears the sandbox down on SIGINT
            try:
                proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                proc.kill()
            raise
        if not result_file.is_file():
            raise CommandFailed("the drill did not produce a result (pytest exit "
                                f"{code}): {redact(tail[-1] if tail else '')}",
                                detail=redact("\n".join(tail)))
        return DrillRun(exit_code=code, result=json.loads(result_file.read_text()))
