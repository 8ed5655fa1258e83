"""`alembic -c INI upgrade head` as Alembic's own command line runs it, in the application's
interpreter: this file's source is given to that interpreter with `-c`, so it needs nothing
but the application's Alembic (no atb module is importable there) and runs from the working
directory, as `python -m alembic` does.

Two things differ from a bare `alembic` and nothing else: `sqlalchemy.url` is set to the
sandbox (`ATB_ALEMBIC_URL`, read from the environment, never argv) so the stock `env.py`
templates reach the copy; and after the command, whatever it did, the scripts' heads are
written as JSON to `ATB_ALEMBIC_RESULT`. Nothing is imported or read before `env.py`: the
scripts are loaded for the heads only once the command has finished, and an async `env.py`
owns its event loop in a fresh interpreter.
"""

from __future__ import annotations

import json
import os
import sys
from argparse import Namespace
from typing import Any


def with_driver(url: str, configured: str | None) -> str:
    """`url` with the driver the ini's own PostgreSQL URL names (`+asyncpg`), when production's
    URL names none: an async env.py needs its async driver."""
    scheme, sep, rest = url.partition("://")
    theirs = (configured or "").partition("://")[0]
    if sep and "+" not in scheme and theirs.startswith("postgres") and "+" in theirs:
        return f"{scheme}+{theirs.split('+', 1)[1]}://{rest}"
    return url


def main(argv: list[str]) -> int:
    from alembic.config import CommandLine, Config

    url = os.environ.pop("ATB_ALEMBIC_URL", "")
    result_file = os.environ.pop("ATB_ALEMBIC_RESULT", "")
    seen: dict[str, Any] = {}

    class AtbCommandLine(CommandLine):
        def run_cmd(self, config: Config, options: Namespace) -> None:
            seen["config"] = config
            if url:
                config.set_main_option("sqlalchemy.url",
                                       with_driver(url, config.get_main_option("sqlalchemy.url"))
                                       .replace("%", "%%"))
            super().run_cmd(config, options)

    code = 0
    try:
        AtbCommandLine(prog="alembic").main(argv)
    except SystemExit as exc:  # Alembic's CLI exits 1 on a failed command, after printing it
        code = exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
    finally:
        if result_file:
            heads = None
            if "config" in seen:
                try:
                    from alembic.script import ScriptDirectory

                    heads = sorted(ScriptDirectory.from_config(seen["config"]).get_heads())
                except Exception:  # the scripts cannot be read: no heads to report
                    heads = None
            with open(result_file, "w") as fh:
                json.dump({"heads": heads}, fh)
    return code


if __name__ == "__main__":
    sys.argv[0] = "alembic"
    sys.exit(main(sys.argv[1:]))
