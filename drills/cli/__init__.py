"""`atb`: the command line. Each command parses, calls one core function and renders its
result through `output`; this module is the one place where an error becomes one line on
stderr and an exit code (`AtbError`'s own, 70 with a saved traceback for anything else)."""

from __future__ import annotations

import logging
import os
import signal
import sys
import tempfile
import traceback
from typing import Any, NoReturn

import click

from backup_core.tools.conninfo import detach_libpq_environment, redact
from backup_core.tools.errors import AtbError
from drills import console
from drills.cli.audit import audit
from drills.cli.db import db
from drills.cli.demo import demo
from drills.cli.doctor import doctor
from drills.cli.drill import drill, drill_run
from drills.cli.heartbeat import tests_group
from drills.cli.params import EXIT_CODES, Checked, check_every_value

__all__ = ["EXIT_CODES", "Checked", "cli", "drill_run", "main", "run"]


def main(argv: list[str] | None = None) -> NoReturn:
    """Entry point: the one place where our errors become a message and an exit code."""
    signal.signal(signal.SIGTERM, _terminate)
    detach_libpq_environment()  # every connection says where it goes; see conninfo
    sys.exit(run(argv))


def run(argv: list[str] | None = None) -> int:
    """Run one command and return its exit code; errors become one line on stderr."""
    try:
        code = cli.main(args=argv, prog_name="atb", standalone_mode=False)
    except click.exceptions.Abort:
        return _fail("interrupted", 130)
    except click.exceptions.NoArgsIsHelpError as exc:  # a bare group: its help, as asked
        exc.show()
        return exc.exit_code
    except click.ClickException as exc:  # bad usage: one line, like every other error
        where = f"{exc.ctx.command_path}: " if isinstance(exc, click.UsageError) and exc.ctx \
            else ""
        return _fail(where + exc.format_message(), exc.exit_code)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 0
    except AtbError as exc:
        if exc.detail and logging.getLogger("atb").isEnabledFor(logging.DEBUG):
            sys.stderr.write(redact(exc.detail).rstrip() + "\n")
        return _fail(str(exc), exc.exit_code)
    except KeyboardInterrupt:
        return _fail("interrupted; nothing was left half-written", 130)
    except Exception as exc:  # a bug: keep the traceback, show one line
        fd, path = tempfile.mkstemp(prefix="atb-crash-", suffix=".log")
        with os.fdopen(fd, "w") as fh:
            fh.write(redact(traceback.format_exc()))
        return _fail(f"internal error ({type(exc).__name__}: {redact(str(exc))}); traceback "
                     f"saved to {path}; please report it", 70)
    return code if isinstance(code, int) else 0


def _fail(message: str, code: int) -> int:
    line = "; ".join(ln.strip() for ln in redact(message).splitlines() if ln.strip())
    sys.stderr.write(f"atb: error: {line}\n")
    return code


def _terminate(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


@click.group(epilog=EXIT_CODES, context_settings={"help_option_names": ["-h", "--help"],
                                                  "show_default": True})
@click.option("-v", "--verbose", count=True, help="Log debug lines (commands run, timings).")
@click.version_option(package_name="atb-backup-drills", prog_name="atb")
def cli(verbose: int) -> None:
    """Back up PostgreSQL with pg_dump and prove, by restore drills, that the backups work."""
    console.setup_logging(verbose)


for _command in (audit, db, demo, doctor, drill, tests_group):
    cli.add_command(_command)
check_every_value(cli)
