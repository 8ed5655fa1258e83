"""The application's own environment, as its code runs in a drill or `restore --migrate`: its
interpreter and working directory, the sandbox's URL in production's form under
`DATABASE_URL` and the application's own variable names, and nothing else of ours.

Alembic, the migration command and the integration command all get their environment from
`AppEnv.environ`, and run through `run_app` (a process group of their own). Everything an
`AppEnv` names is checked by `check` before any restore starts: a configuration error is
exit 2, never a verdict.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from backup_core.tools import childenv, runner
from backup_core.tools.conninfo import ConnInfo, libpq_env_keywords
from backup_core.tools.durations import human
from backup_core.tools.errors import ConfigError

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
TIMED_OUT = 124
NOT_FOUND = 127


@dataclass(frozen=True)
class AppEnv:
    """Where and how the application's code runs.

    `python` is the application's interpreter (`--app-python`): its directory goes first on
    PATH, as an activated virtualenv's would, so the migration command finds the
    application's own programs. `url_env` names the variables (`--app-url-env`) that get the
    sandbox's URL beside DATABASE_URL; `dialect` is production's URL prefix
    (`postgresql+asyncpg`), kept so the application's driver is the one it configured."""

    directory: Path = field(default_factory=Path.cwd)
    python: Path | None = None
    url_env: tuple[str, ...] = ()
    pass_env: tuple[str, ...] = ()
    dialect: str = ""

    def environ(self, target: ConnInfo, extra: Mapping[str, str] | None = None,
                base: Mapping[str, str] | None = None) -> dict[str, str]:
        """The sealed environment (see `childenv`) with the target under every name the
        application may read it by."""
        url = target.app_url(self.dialect)
        env = childenv.sealed({**childenv.libpq_vars(target), "DATABASE_URL": url,
                               **{name: url for name in self.url_env}, **(extra or {})},
                              pass_env=self.pass_env, base=base)
        if self.python is not None:
            env["PATH"] = os.pathsep.join([str(self.python.parent),
                                           *([env["PATH"]] if env.get("PATH") else [])])
            if (self.python.parent.parent / "pyvenv.cfg").is_file():
                env["VIRTUAL_ENV"] = str(self.python.parent.parent)
        return env

    @property
    def interpreter(self) -> str:
        """The interpreter Alembic runs under: the application's (`--app-python`), else an
        activated virtualenv's (VIRTUAL_ENV), else atb's own."""
        if self.python is not None:
            return str(self.python)
        active = os.environ.get("VIRTUAL_ENV")
        if active and (Path(active) / "bin" / "python").is_file():
            return str(Path(active) / "bin" / "python")
        return sys.executable


def interpreter_path(text: str, *, cwd: Path | None = None) -> Path:
    """`--app-python` as an absolute path, symlinks kept: a virtualenv's `bin/python` is a
    link to the base interpreter, and resolving it would leave the virtualenv."""
    path = Path(os.path.expanduser(text))
    if not path.is_absolute():
        path = (cwd or Path.cwd()) / path
    return Path(os.path.normpath(path))


def check_url_env(names: Iterable[str]) -> tuple[str, ...]:
    """`--app-url-env` names: variable names, and none that libpq or atb reads itself."""
    out = []
    for name in names:
        if not _NAME.match(name):
            raise ConfigError(f"--app-url-env {name!r} is not an environment variable name")
        if name in libpq_env_keywords() or name.startswith("ATB_"):
            raise ConfigError(f"--app-url-env {name}: a libpq or atb variable cannot carry "
                              "the application's URL (DATABASE_URL and PG* are set already)")
        out.append(name)
    return tuple(dict.fromkeys(out))


def check(app: AppEnv, *, command: str | None = None,
          base: Mapping[str, str] | None = None) -> list[str]:
    """Refuse (exit 2, one line) what cannot run: a working directory that is not one, an
    interpreter that is not a program, a command that does not split or whose program is not
    found on the PATH the application gets. Returns the command's argv (empty without one)."""
    if not app.directory.is_dir():
        raise ConfigError(f"--app-dir {app.directory}: no such directory")
    if app.python is not None and not (app.python.is_file()
                                       and os.access(app.python, os.X_OK)):
        raise ConfigError(f"--app-python {app.python}: not an executable file")
    if command is None:
        return []
    argv = split_command(command, what="--migrate-cmd")
    path = app.environ(ConnInfo.make(dbname="-"), base=base).get("PATH", "")
    find_program(argv[0], path=path, cwd=app.directory, what="--migrate-cmd")
    return argv


def split_command(command: str, *, what: str) -> list[str]:
    try:
        argv = shlex.split(command)
    except ValueError as exc:
        raise ConfigError(f"{what} {command!r} cannot be split into words: {exc}") from exc
    if not argv:
        raise ConfigError(f"{what} is empty")
    return argv


def find_program(program: str, *, path: str, cwd: Path, what: str) -> str:
    """Where `program` is, as the child would find it (a name on PATH, or a path relative to
    its working directory)."""
    if "/" in program:
        found = cwd / program
        if found.is_file() and os.access(found, os.X_OK):
            return str(found)
        raise ConfigError(f"{what}: {program} is not an executable file (relative to {cwd})")
    hit = shutil.which(program, path=path)
    if hit is None:
        raise ConfigError(f"{what}: program {program} not found on PATH (give --app-python "
                          "to run the application's own virtualenv)")
    return hit


def run_app(argv: list[str], *, env: Mapping[str, str], cwd: Path,
            timeout: float) -> tuple[int, str]:
    """(exit code, output) of application code, run as a process group of its own: on a
    timeout, an interruption or atb's death, the whole group goes, not only its first
    process (a shell script's children would otherwise outlive the drill). A program that
    cannot be started is exit 127, a timeout exit 124, as a shell says."""
    try:
        proc = runner.spawn_text(argv, what="application code", env=env, new_session=True,
                                 cwd=cwd)
    except (FileNotFoundError, PermissionError) as exc:
        return NOT_FOUND, f"command not found: {exc.filename or argv[0]}"
    try:
        out, _ = proc.communicate(timeout=timeout)
        return proc.returncode, out
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        return TIMED_OUT, f"timed out after {human(timeout)}"
    except BaseException:
        _kill_group(proc)
        raise


def _kill_group(proc: subprocess.Popen[str]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()


def names_production(value: str, production: ConnInfo) -> bool:
    """Whether `value` names production's database: a URL or keyword string in it (whole, or
    any `scheme://` part of a longer text) on production's host and port with its database;
    in text that holds no connection string, production's database name beside its host or
    port (`db.internal:5433/shop`)."""
    prod_db = production.dbname
    if not prod_db:
        return False
    candidates = [value, *re.findall(r"[A-Za-z][\w+.-]*://[^\s'\"<>]+", value)]
    parsed = False
    for text in candidates:
        if "://" not in text and "dbname=" not in text:
            continue  # a word parsed as conninfo would take PGDATABASE and the like
        try:
            info = ConnInfo.parse(text, what="a variable")
        except (ConfigError, ValueError):
            continue
        parsed = True
        if info.dbname == prod_db and _same_server(info, production):
            return True
    if parsed:  # a connection string that names another database or server
        return False
    words = set(re.split(r"[\s/:@?&=;,'\"()\[\]{}]+", value))
    if prod_db not in words:
        return False
    hosts = {h for h in (production.host or "").split(",") if h}
    port = production.port or "5432"
    return bool(hosts & words) or port in words


def _same_server(info: ConnInfo, production: ConnInfo) -> bool:
    local = {"", "localhost", "127.0.0.1", "::1"}

    def where(c: ConnInfo) -> tuple[str, str]:
        host = c.host or ""
        return ("local" if host in local or host.startswith("/") else host,
                c.port or "5432")

    return where(info) == where(production)


def refuse_production_env(names: Iterable[str], production: ConnInfo | None,
                          env: Mapping[str, str] | None = None) -> None:
    """`--pass-env NAME` whose value names production: refused (exit 2) before anything
    starts; the application's code gets the sandbox under DATABASE_URL and --app-url-env."""
    if production is None:
        return
    env = os.environ if env is None else env
    for name in names:
        if name in env and names_production(env[name], production):
            raise ConfigError(f"--pass-env {name}: its value names the production database "
                              f"({production.redacted}); pass the sandbox's URL under that "
                              f"name with --app-url-env {name} instead")
