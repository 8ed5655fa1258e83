"""The application's own migration against a restored copy, in the application's own
environment (`AppEnv`): its migration command (`--migrate-cmd`), or `alembic -c INI upgrade
head` run by its interpreter from its working directory (`--alembic-config`,
`--app-python`, `--app-dir`). Either runs isolated like the integration command: where the
platform allows, in new namespaces that reach only the copy, through a relay.

The copy reaches the application under every name it may read: DATABASE_URL and the
`--app-url-env` variables (in production's form, its dialect prefix kept), the libpq
variables and, for Alembic, `sqlalchemy.url`; all in the child's sealed environment, never
argv. Afterwards the copy's own Alembic revision is read back: a migration counts only when
the copy itself reached the script head. `check` refuses, before anything is restored, a
configuration that cannot run (exit 2): that is never a verdict on a backup.
"""

from __future__ import annotations

import configparser
import json
import os
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from backup_core.reading import inventory
from backup_core.tools import appenv, childenv, db, isolation
from backup_core.tools.appenv import AppEnv
from backup_core.tools.conninfo import ConnInfo, redact
from backup_core.tools.errors import ConfigError
from backup_core.tools.runner import last_line

CHILD = Path(__file__).with_name("alembic_child.py")
PROBE_TIMEOUT_S = 300.0


@dataclass(frozen=True)
class Migration:
    """How the application migrates a copy: its own `command`, else `alembic -c
    alembic_config upgrade head`, in `app`'s environment."""

    app: AppEnv
    alembic_config: Path | None = None
    command: str | None = None
    timeout_s: float = 3600.0

    @property
    def what(self) -> str:
        """The migration as a user would type it."""
        if self.command:
            return self.command
        return f"alembic -c {self.alembic_config} upgrade head"

    @property
    def ini(self) -> Path | None:
        """The Alembic config as `alembic -c` finds it: relative to the working directory."""
        if self.alembic_config is None:
            return None
        return self.app.directory / self.alembic_config


@dataclass(frozen=True)
class MigrateResult:
    ok: bool
    before: str | None
    after: str | None
    heads: tuple[str, ...]  # empty when unknown (a migration command, no Alembic config)
    duration_s: float
    output: str
    error: str = ""
    isolation: str = ""  # how the application's code was kept from every database but the copy
    command: str = ""  # what ran, as a user would type it
    exit_code: int = 0

    @property
    def at_head(self) -> bool:
        """The copy at the scripts' head; with no heads known, whatever the command left."""
        if not self.heads:
            return True
        return self.after is not None and set(self.after.split(",")) == set(self.heads)

    @property
    def problem(self) -> str:
        """Why the copy is not migrated, in one line; empty when it is."""
        what = f"`{self.command}`" if self.command else "alembic upgrade head"
        if not self.ok:
            return f"{what} failed (exit {self.exit_code}): {self.error or 'see its output'}"
        if not self.at_head:
            return (f"{what} reported success but the copy is at {self.after or 'no revision'}"
                    f", not the script head {', '.join(self.heads) or '-'}: its env.py may "
                    "connect to another database")
        return ""


def alembic_env(target: ConnInfo) -> dict[str, str]:
    """The target by URL and by libpq variables, for atb's own Alembic runs (the demo's)."""
    return {**childenv.libpq_vars(target), "DATABASE_URL": target.sqlalchemy_url,
            "PYTHONUNBUFFERED": "1"}


def alembic_argv(ini: Path, python: str) -> list[str]:
    """Alembic's own command line in the application's interpreter (`alembic_child`'s source
    given with -c: nothing of atb is importable there); the URL travels in the environment."""
    return [python, "-c", CHILD.read_text(), "-c", str(ini), "upgrade", "head"]


def heads_argv(ini: Path, python: str) -> list[str]:
    """`alembic heads` in the application's interpreter: its scripts read, no database."""
    return [python, "-m", "alembic", "-c", str(ini), "heads"]


def check(migration: Migration) -> None:
    """Everything the migration needs, before anything is restored (exit 2, one line): the
    working directory and interpreter, the command's program, and an Alembic config that is
    readable, parses, and whose scripts the application's interpreter can read with its own
    Alembic (`alembic heads`, isolated, with no database in reach)."""
    appenv.check(migration.app, command=migration.command)
    ini = migration.ini
    if ini is None:
        if migration.command is None:
            raise ConfigError("nothing to migrate with: give --migrate-cmd or --alembic-config")
        return
    try:
        text = ini.read_text()
    except OSError as exc:
        raise ConfigError(f"--alembic-config {ini}: cannot be read: "
                          f"{exc.strerror or exc}") from exc
    try:
        configparser.ConfigParser(interpolation=None).read_string(text, source=str(ini))
    except configparser.Error as exc:
        first = str(exc).splitlines()[0]
        raise ConfigError(f"--alembic-config {ini}: not an ini file: {first}") from exc
    python = migration.app.interpreter
    argv, _ = isolation.wrap(heads_argv(ini, python), no_unix=True)
    code, out = appenv.run_app(argv, env=_probe_env(migration.app), cwd=migration.app.directory,
                               timeout=PROBE_TIMEOUT_S)
    if code == 0:
        return
    if "No module named alembic" in out:
        raise ConfigError(f"--alembic-config: {python} has no alembic module: pass "
                          "--app-python with the application's own interpreter")
    raise ConfigError(f"cannot read the Alembic scripts of {ini} with {python} (`alembic "
                      f"heads` exit {code}): {redact(error_line(out))}", detail=redact(out))


def script_heads(migration: Migration) -> tuple[str, ...]:
    """The scripts' heads as the application's own `alembic heads` reads them (isolated, no
    database in reach); empty when it cannot say."""
    assert migration.ini is not None
    argv, _ = isolation.wrap(heads_argv(migration.ini, migration.app.interpreter),
                           no_unix=True)
    code, out = appenv.run_app(argv, env=_probe_env(migration.app),
                               cwd=migration.app.directory, timeout=PROBE_TIMEOUT_S)
    return parse_heads(out) if code == 0 else ()


def parse_heads(output: str) -> tuple[str, ...]:
    """`alembic heads` output (`v3.2.0.a (head)`, one a line, logging around it)."""
    return tuple(sorted(ln.split()[0] for ln in output.splitlines()
                        if ln.rstrip().endswith("(head)") and ln.split()))


def _probe_env(app: AppEnv) -> dict[str, str]:
    """The application's environment with no database in it at all."""
    env = app.environ(ConnInfo.make(dbname="atb-no-database", host="/dev/null"))
    for name in ("DATABASE_URL", *app.url_env):
        env.pop(name, None)
    return {k: v for k, v in env.items() if not k.startswith("PG") or k in (
        "PGPASSFILE", "PGSERVICEFILE", "PGSYSCONFDIR")}


def current_revision(target: ConnInfo) -> str | None:
    with db.connect(target) as conn:
        return inventory.alembic_revision(conn)


def run_migration(migration: Migration, target: ConnInfo) -> MigrateResult:
    """Migrate `target` as the application does; a failed migration is a result, not an
    exception (`check` has refused what could not even start)."""
    before = current_revision(target)
    app = migration.app
    if migration.command:
        argv = appenv.split_command(migration.command, what="--migrate-cmd")
    else:
        assert migration.ini is not None
        argv = alembic_argv(migration.ini, app.interpreter)
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="atb-migrate-") as tmp, \
            isolation.isolated(argv, target) as (wrapped, reach, iso):
        result_file = Path(tmp) / "result.json"
        extra = {"PYTHONUNBUFFERED": "1"}
        if not migration.command:
            extra.update(ATB_ALEMBIC_URL=reach.app_url(app.dialect),
                         ATB_ALEMBIC_RESULT=str(result_file))
        code, out = appenv.run_app(wrapped, env=app.environ(reach, extra), cwd=app.directory,
                                   timeout=migration.timeout_s)
        heads = _heads(result_file)
        how = iso.describe()
        hint = isolation.failure_hint(iso, reach) if code != 0 else ""
    if migration.command and migration.ini is not None and code == 0:
        heads = script_heads(migration)  # the command's result judged against the scripts
    duration = time.monotonic() - t0
    out = _scrub(out, target)
    after = current_revision(target)
    return MigrateResult(ok=code == 0, before=before, after=after, heads=heads,
                         duration_s=round(duration, 3), output=_tail(out),
                         error="" if code == 0 else error_line(out) + hint, isolation=how,
                         command=migration.what, exit_code=code)


_EXCEPTION_LINE = re.compile(r"^(FAILED|[A-Za-z_][\w.]*): \S")


def error_line(output: str) -> str:
    """The line that says what went wrong: a traceback's last `Type: message` (or
    Alembic's `FAILED: ...`), without SQLAlchemy's pointer to its docs; else the last line."""
    lines = [ln.rstrip() for ln in output.splitlines() if ln.strip()
             and not ln.startswith("(Background on this error")]
    for ln in reversed(lines):
        if _EXCEPTION_LINE.match(ln) and not ln.startswith(("Traceback", "  ")):
            return ln
    return last_line(output)


def _heads(result_file: Path) -> tuple[str, ...]:
    try:
        data = json.loads(result_file.read_text())
    except (OSError, ValueError):
        return ()
    heads = data.get("heads") if isinstance(data, dict) else None
    return tuple(str(h) for h in heads) if isinstance(heads, list) else ()


def _scrub(text: str, target: ConnInfo) -> str:
    text = redact(text)
    return text.replace(target.password, "***") if target.password else text


def _tail(text: str, lines: int = 60) -> str:
    return os.linesep.join(text.splitlines()[-lines:])
