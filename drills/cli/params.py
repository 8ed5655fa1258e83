"""What every command shares: the exit-code epilog, common options, and one rule for every
text and path value (`Checked`)."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from backup_core.store.naming import printable
from backup_core.tools.conninfo import ConnInfo
from backup_core.tools.errors import ConfigError

EXIT_CODES = """\b
Exit codes:
  0   success
  1   a check failed or a target was missed (verify, status, heartbeat --check, drill, audit)
  2   bad usage or configuration (malformed URL, bad option)
  3   PostgreSQL binaries missing or of the wrong version
  4   cannot connect (server down, wrong password, unknown database, object store refusing)
  5   a PostgreSQL tool failed (its error is shown)
  6   another backup of the same database is running
  7   the backup directory cannot be written (permissions, full disk)
  8   refused: the action could destroy data (or production changed while atb worked)
  9   a backup failed verification (roles for --with-roles, a repository object's hashes)
  10  drill incomplete: a built-in check was skipped or not run (reasons in the report)
  11  the audit wiki could not be reached or refused the push (nothing was published)
  70  internal error (a bug: the traceback is saved to a file named in the message)
  130 interrupted"""

F = TypeVar("F", bound=Callable[..., Any])
DAYS = click.FloatRange(min=0, max=36500)


def days(ctx: click.Context, param: click.Parameter, value: float) -> float:
    """A number of days: finite, 0 to a century (1e308 and nan are typos, not policies)."""
    if value is not None and not math.isfinite(value):
        raise click.BadParameter(f"{value!r} is not a number of days: give 0 to 36500")
    return value


def database_url_option() -> Callable[[F], F]:
    return click.option("--database-url", envvar="DATABASE_URL", show_envvar=True,
                        metavar="URL",
                        help="The database: a postgresql:// URL (SQLAlchemy prefixes such as "
                             "postgresql+asyncpg:// accepted) or a libpq keyword string; what "
                             "it leaves out comes from PGHOST, PGUSER, PGPASSWORD and the other "
                             "libpq variables.  [default: the libpq variables alone] Set it in "
                             "the environment: argv is visible in ps.")


backup_dir_option = click.option(
    "--backup-dir", envvar="BACKUP_DIR", show_envvar=True, default="./backups",
    type=click.Path(file_okay=False, path_type=Path), help="Root of the backup tree.")
json_option = click.option("--json", "as_json", is_flag=True,
                           help="Print the result as JSON on stdout.")


def conn(url: str | None, what: str = "DATABASE_URL") -> ConnInfo:
    return ConnInfo.parse(url or "", what=what)


def production(url: str | None) -> ConnInfo | None:
    """Production as restore and drill must recognise it. Unparseable is an error (exit 2):
    a guard never switches itself off."""
    from backup_core.reading import guard  # the database reader: not for every command

    return guard.production_conninfo(url)


def signer_needs_repo(repo: str | None, signer: Path | None) -> None:
    """`--repo-signer` given on the command line checks only what `--repo` fetches: without
    it nothing would be checked, so say so (exit 2) rather than seem to. From its variable
    (`ATB_REPO_SIGNER`, set host-wide) it applies whenever --repo is used, silent otherwise."""
    if signer is None or repo:
        return
    source = click.get_current_context().get_parameter_source("repo_signer")
    if source == click.core.ParameterSource.COMMANDLINE:
        raise ConfigError("--repo-signer checks backups fetched with --repo, and there is no "
                          "--repo here: nothing would be checked")


def rel(path: Path, root: Path) -> str:
    """A path for a person: relative to the tree, bytes that are not UTF-8 escaped (a path
    the scan built under `root` is its text after root's, without pathlib's parse: a list
    of 50,000 backups spent 0.2 s there)."""
    text, under = str(path), str(root)
    if under not in ("", ".", "/") and text.startswith(under + "/"):
        return printable(text[len(under) + 1:])
    try:
        return printable(str(path.relative_to(root)))
    except ValueError:
        return printable(text)


# -- every text and path value ---------------------------------------------------------------

MAX_PATH = 4096  # PATH_MAX: no longer path can be opened
MAX_TEXT = 8192  # longer than any URL, name or command a person or a cron line gives
EMPTY_MEANS_DEFAULT = frozenset({"database_url", "production_url"})  # "" = the PG* variables


class Checked(click.ParamType[Any]):
    """A text or path value as given, refused (exit 2, one line) when it is empty where an
    empty value means nothing, longer than any real value, or holds a NUL, before its own
    type reads it: one rule for every option and argument of every command, present and
    future (see `check_every_value`), instead of a check per option."""

    def __init__(self, inner: click.ParamType[Any], *, empty_ok: bool) -> None:
        self.inner = inner
        self.name = inner.name
        self.empty_ok = empty_ok

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> Any:
        if isinstance(value, str):
            limit = MAX_PATH if isinstance(self.inner, click.Path) else MAX_TEXT
            if not value and not self.empty_ok:
                self.fail("is empty: give a value, or leave the option out", param, ctx)
            if len(value) > limit:
                self.fail(f"is {len(value)} characters long: at most {limit}", param, ctx)
            if "\0" in value:
                self.fail("contains a NUL character", param, ctx)
        return self.inner.convert(value, param, ctx)

    def get_metavar(self, param: click.Parameter, ctx: click.Context) -> str | None:
        return self.inner.get_metavar(param, ctx)

    def split_envvar_value(self, rv: str) -> Any:
        return self.inner.split_envvar_value(rv)


def check_every_value(command: click.Command) -> None:
    """Give every text and path parameter of `command`, or of every command under it when it
    is a group, the `Checked` rule."""
    if isinstance(command, click.Group):
        for sub in command.commands.values():
            check_every_value(sub)
        return
    for param in command.params:
        if isinstance(param.type, (click.Path, click.types.StringParamType)):
            param.type = Checked(param.type, empty_ok=param.name in EMPTY_MEANS_DEFAULT)
