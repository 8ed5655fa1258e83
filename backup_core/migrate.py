"""`alembic upgrade head` against a restored database, run as a child process.

The application's `env.py` reads `DATABASE_URL`; we hand it the target's URL through the
environment only (never argv), and run Alembic in a child so its imports cannot touch us.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from backup_core import db, inventory
from backup_core.conninfo import ConnInfo
from backup_core.errors import ConfigError
from backup_core.runner import run


@dataclass(frozen=True)
class MigrateResult:
    ok: bool
    before: str | None
    after: str | None
    heads: tuple[str, ...]
    duration_s: float
    output: str

    @property
    def at_head(self) -> bool:
        return self.after is not None and set(self.after.split(",")) == set(self.heads)


def alembic_env(target: ConnInfo) -> dict[str, str]:
    """What the child sees: DATABASE_URL (and the password) for the target only."""
    return {"DATABASE_URL": target.secret_url, "PYTHONUNBUFFERED": "1", **target.child_env()}


def _alembic(ini: Path, *args: str, target: ConnInfo, check: bool) -> tuple[int, str]:
    if not ini.is_file():
        raise ConfigError(
            f"Alembic config {ini} not found: pass --alembic-config path/to/alembic.ini"
        )
    done = run([sys.executable, "-m", "alembic", "-c", str(ini), *args], what="alembic " + args[0],
               env=alembic_env(target), check=check, cwd=ini.parent, timeout=3600)
    out = (done.stdout + done.stderr).strip()
    if target.password:
        out = out.replace(target.password, "***")
    return done.returncode, out


def script_heads(ini: Path, target: ConnInfo) -> tuple[str, ...]:
    """The head revision(s) of the script directory, as `alembic heads` prints them."""
    _, out = _alembic(ini, "heads", target=target, check=True)
    return tuple(sorted(ln.split()[0] for ln in out.splitlines() if "(head)" in ln))


def current_revision(target: ConnInfo) -> str | None:
    with db.connect(target) as conn:
        return inventory.alembic_revision(conn)


def upgrade_head(ini: Path, target: ConnInfo) -> MigrateResult:
    """Run `alembic upgrade head`; a failed migration is a result, not an exception."""
    ini = ini.resolve()
    heads = script_heads(ini, target)
    before = current_revision(target)
    t0 = time.monotonic()
    code, out = _alembic(ini, "upgrade", "head", target=target, check=False)
    duration = time.monotonic() - t0
    after = current_revision(target)
    return MigrateResult(ok=code == 0, before=before, after=after, heads=heads,
                         duration_s=round(duration, 3), output=_tail(out))


def _tail(text: str, lines: int = 60) -> str:
    return os.linesep.join(text.splitlines()[-lines:])
