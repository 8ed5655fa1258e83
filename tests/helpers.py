"""Running the real `atb` command line as a child process, as cron or CI would."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping

from backup_core.conninfo import ConnInfo


def atb(*args: str, env: Mapping[str, str] | None = None, url: ConnInfo | None = None,
        timeout: float = 300, **kwargs: object) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "BACKUP_DIR")}
    if url is not None:
        full_env["DATABASE_URL"] = url.secret_url
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "drills.cli", *args], env=full_env,
                          capture_output=True, text=True, timeout=timeout, check=False,
                          **kwargs)  # type: ignore[call-overload]
