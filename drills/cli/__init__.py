"""`atb`: the command line. Each command parses, calls one core function and renders its
result through `output`; this module is the one place where an error becomes one line on
stderr and an exit code (`AtbError`'s own, 70 with a saved traceback for anything else)."""

from __future__ import annotations

import importlib
import logging
import os
import signal
import sys
import tempfile
import traceback
from collections.abc import Mapping
from typing import Any, NoReturn

import click

from backup_core.tools import masking
from backup_core.tools.conninfo import detach_libpq_environment, redact
from backup_core.tools.errors import AtbError
from drills import console
from drills.cli.params import EXIT_CODES, Checked, check_every_value
from drills.leave import leave

__all__ = ["EXIT_CODES", "Checked", "LazyGroup", "cli", "drill_run", "main", "run"]

# Each command group, as `module:attribute`, imported only when it is run or listed: a
# command does not pay for importing every other group's core (~0.4 s of a drill's start)
COMMANDS = {"audit": "drills.cli.audit:audit", "db": "drills.cli.db:db",
            "demo": "drills.cli.demo:demo", "doctor": "drills.cli.doctor:doctor",
            "drill": "drills.cli.drill:drill", "tests": "drills.cli.heartbeat:tests_group"}


def main(argv: list[str] | None = None) -> NoReturn:
    """Entry point: the one place where our errors become a message and an exit code. As
    the program (`argv` None) it ends without the interpreter's teardown (`drills.leave`);
    called with arguments (the tests, in their own process) it raises `SystemExit`."""
    signal.signal(signal.SIGTERM, _terminate)
    detach_libpq_environment()  # every connection says where it goes; see conninfo
    code = run(argv)
    if argv is None:
        leave(code)
    sys.exit(code)


def run(argv: list[str] | None = None) -> int:
    """Run one command and return its exit code; errors become one line on stderr. The run
    owns the secrets it parses (`masking.owned`): its log lines and errors mask them."""
    with masking.owned(masking.Secrets()) as held:
        return _run(argv, held)


def _run(argv: list[str] | None, held: masking.Secrets) -> int:
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
            sys.stderr.write(redact(exc.detail, held).rstrip() + "\n")
        return _fail(str(exc), exc.exit_code)
    except KeyboardInterrupt:
        return _fail("interrupted; nothing was left half-written", 130)
    except Exception as exc:  # a bug: keep the traceback, show one line
        from backup_core.store.repository import is_store_error, unplaced

        if is_store_error(exc):  # the store refused, on a path no guard covered: exit 4
            logging.getLogger("atb").debug("the store's error", exc_info=True)
            refusal = unplaced(exc)
            return _fail(str(refusal), refusal.exit_code)
        fd, path = tempfile.mkstemp(prefix="atb-crash-", suffix=".log")
        with os.fdopen(fd, "w") as fh:
            fh.write(redact(traceback.format_exc(), held))
        return _fail(f"internal error ({type(exc).__name__}: {redact(str(exc), held)}); traceback "
                     f"saved to {path}; please report it", 70)
    return code if isinstance(code, int) else 0


def _fail(message: str, code: int) -> int:
    line = "; ".join(ln.strip() for ln in redact(message).splitlines() if ln.strip())
    sys.stderr.write(f"atb: error: {line}\n")
    return code


def _terminate(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


class LazyGroup(click.Group):
    """A group whose subcommands are named up front and imported on first use (click's own
    recipe for lazy subcommands); each gets the `Checked` rule for its values as it loads, so
    `--help`, the command reference and the checks are those of the eager group."""

    def __init__(self, *args: Any, lazy: dict[str, str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = dict(lazy)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.lazy and cmd_name not in self.commands:
            module, _, attr = self.lazy[cmd_name].partition(":")
            command = getattr(importlib.import_module(module), attr)
            check_every_value(command)
            self.add_command(command, cmd_name)
        return super().get_command(ctx, cmd_name)

    def load_all(self) -> Mapping[str, click.Command]:
        """Every subcommand imported (the command reference, the tests that walk them)."""
        ctx = click.Context(self)
        for name in self.list_commands(ctx):
            self.get_command(ctx, name)
        return self.commands


@click.group(cls=LazyGroup, lazy=COMMANDS, epilog=EXIT_CODES,
             context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option("-v", "--verbose", count=True, help="Log debug lines (commands run, timings).")
@click.version_option(package_name="atb-backup-drills", prog_name="atb")
def cli(verbose: int) -> None:
    """Back up PostgreSQL with pg_dump and prove, by restore drills, that the backups work."""
    console.setup_logging(verbose, masking.current())  # the object `run` owns
    check_environment(os.environ)


def check_environment(env: Mapping[str, str]) -> None:
    """The settings every command reads from the environment, checked before any work: a
    typo is one line and exit 2, not a value ignored in silence."""
    from backup_core.tools import namespaces, toolchain

    namespaces.check_switch(env)
    toolchain.check_pinned(env)


def __getattr__(name: str) -> Any:
    """`drills.cli.drill_run`: the drill command, imported on first use."""
    if name == "drill_run":
        from drills.cli.drill import drill_run
        return drill_run
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
