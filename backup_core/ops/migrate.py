"""`alembic upgrade head` against a restored database, run in a child process.

The target reaches Alembic through every route an `env.py` may read: `sqlalchemy.url`
(overriding the ini's), `DATABASE_URL` and the libpq variables, all in the child's sealed
environment (never argv). Afterwards the target's own revision is read back: a migration
counts only when the copy itself reached the script head.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backup_core.reading import inventory
from backup_core.tools import childenv, db, extras, isolation
from backup_core.tools.conninfo import ConnInfo, redact
from backup_core.tools.errors import ConfigError
from backup_core.tools.runner import last_line, run


@dataclass(frozen=True)
class MigrateResult:
    ok: bool
    before: str | None
    after: str | None
    heads: tuple[str, ...]
    duration_s: float
    output: str
    error: str = ""
    isolation: str = ""  # how Alembic was kept from every database but the target

    @property
    def at_head(self) -> bool:
        return self.after is not None and set(self.after.split(",")) == set(self.heads)

    @property
    def problem(self) -> str:
        """Why the copy is not migrated, in one line; empty when it is."""
        if not self.ok:
            return f"alembic upgrade head failed: {self.error or 'see its output'}"
        if not self.at_head:
            return (f"Alembic reported success but the copy is at {self.after or 'no revision'}"
                    f", not the script head {', '.join(self.heads) or '-'}: its env.py may "
                    "connect to another database")
        return ""


def alembic_env(target: ConnInfo) -> dict[str, str]:
    """What the child sees: the target, by URL and by libpq variables, and nothing else."""
    return {**childenv.libpq_vars(target), "DATABASE_URL": target.sqlalchemy_url,
            "ATB_ALEMBIC_URL": target.sqlalchemy_url, "PYTHONUNBUFFERED": "1"}


def child_argv(ini: Path, python: str = sys.executable) -> list[str]:
    """Alembic in a child of this interpreter: the URL travels in its environment, never
    here (see `alembic_env`)."""
    return [python, "-m", "backup_core.ops.alembic_child", str(ini)]


def _run_child(ini: Path, target: ConnInfo) -> tuple[dict[str, Any], str, str]:
    """Run `alembic_child` once: (its result, its redacted output, its isolation). Where
    the platform allows, it runs network-isolated and reaches the target only through a
    relay that opens no other database: an env.py that finds production's URL anywhere
    (a `.env` file, a variable atb does not know, a hard-coded socket) reaches nothing."""
    with isolation.isolated(child_argv(ini), target) as (argv, reach, iso), \
            tempfile.TemporaryDirectory(prefix="atb-alembic-") as tmp:
        result_file = Path(tmp) / "result.json"
        done = run(argv, what="alembic upgrade head",
                   env={**alembic_env(reach), "ATB_ALEMBIC_RESULT": str(result_file)},
                   check=False, cwd=ini.parent, timeout=3600)
        out = redact((done.stdout + done.stderr).strip())
        try:
            result = json.loads(result_file.read_text())
        except (OSError, ValueError):
            result = None
    if not isinstance(result, dict):
        result = {"ok": False, "heads": [], "error": last_line(out)}
    result["error"] = redact(str(result.get("error") or ""))
    return result, out, iso.describe()


def current_revision(target: ConnInfo) -> str | None:
    with db.connect(target) as conn:
        return inventory.alembic_revision(conn)


def upgrade_head(ini: Path, target: ConnInfo) -> MigrateResult:
    """Run `alembic upgrade head`; a failed migration is a result, not an exception, but
    scripts that cannot even be read are a `ConfigError`."""
    ini = ini.resolve()
    if not ini.is_file():
        raise ConfigError(
            f"Alembic config {ini} not found: pass --alembic-config path/to/alembic.ini")
    extras.require("migrate", what="running Alembic")
    before = current_revision(target)
    t0 = time.monotonic()
    result, out, how = _run_child(ini, target)
    duration = time.monotonic() - t0
    if result.get("heads") is None:
        raise ConfigError(f"cannot read the Alembic scripts of {ini}: {result['error']}",
                          detail=out)
    after = current_revision(target)
    return MigrateResult(ok=bool(result.get("ok")), before=before, after=after,
                         heads=tuple(str(h) for h in result["heads"]),
                         duration_s=round(duration, 3), output=_tail(out),
                         error=result["error"], isolation=how)


def _tail(text: str, lines: int = 60) -> str:
    return os.linesep.join(text.splitlines()[-lines:])
