"""Alembic against exactly one database, in a child process of its own.

`python -m backup_core.ops.alembic_child INI` with the database in
`ATB_ALEMBIC_URL` (environment, never argv). The URL overrides the ini's `sqlalchemy.url`, so
every `env.py` reaches the copy: the stock templates (which read the ini), one that reads
`DATABASE_URL` (set to the same URL by the parent), async ones (psycopg 3 serves both). A
`pyproject.toml` beside the ini with `[tool.alembic]` is read as Alembic's CLI would.
The outcome (the script heads, read before upgrading, and whether `upgrade head` succeeded)
goes to the JSON file named by `ATB_ALEMBIC_RESULT`: one interpreter start per migration.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory


def load_config(ini: Path, url: str) -> Config:
    toml = ini.parent / "pyproject.toml"
    use_toml = toml.is_file() and "[tool.alembic" in toml.read_text(errors="replace")
    cfg = Config(str(ini), toml_file=str(toml) if use_toml else None)
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def exception_line(exc: BaseException) -> str:
    """`Type: message`, the line a traceback ends with, without SQLAlchemy's links."""
    name = type(exc).__qualname__
    module = type(exc).__module__
    lines = [ln for ln in str(exc).strip().splitlines()
             if ln.strip() and not ln.startswith("(Background on this error")]
    head = f"{module}.{name}" if module not in ("builtins", "__main__") else name
    return f"{head}: {lines[0]}" if lines else head


def main(argv: list[str]) -> int:
    [ini] = argv
    url = os.environ.pop("ATB_ALEMBIC_URL")
    result_file = Path(os.environ.pop("ATB_ALEMBIC_RESULT"))
    # heads None: the scripts themselves could not be read (a configuration error)
    result: dict[str, Any] = {"ok": False, "heads": None, "error": ""}
    try:
        cfg = load_config(Path(ini), url)
        result["heads"] = sorted(ScriptDirectory.from_config(cfg).get_heads())
        command.upgrade(cfg, "head")
        result["ok"] = True
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # SystemExit from an env.py is a failure like any other
        traceback.print_exc()
        result["error"] = exception_line(exc)
    result_file.write_text(json.dumps(result))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
