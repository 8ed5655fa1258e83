"""What a child process may see: an allow-list of our environment plus one database's libpq
settings, so that production's URL, password and `PG*` variables never reach a child by
inheritance. Every child atb starts (PostgreSQL tools, Alembic, the integration command,
the drill's pytest) gets its environment from `sealed`."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

from psycopg.conninfo import make_conninfo

from backup_core.tools.conninfo import SERVICE_ENV, ConnInfo, libpq_env_keywords
from backup_core.tools.errors import ConfigError

ALLOWED = frozenset({
    "PATH", "HOME", "USER", "LOGNAME", "SHELL", "TERM", "LANG", "LANGUAGE", "TZ", "TMPDIR",
    "TEMP", "TMP", "VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "PYTHONDONTWRITEBYTECODE",
    "PYTHONUNBUFFERED", "PYTHONIOENCODING", "PYTHONUTF8", "PYTHONWARNINGS", "SSL_CERT_FILE",
    "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "NO_COLOR", "FORCE_COLOR", "COLUMNS", "LINES", "CI",
    "PG_BINDIR", "ATB_PG_USER", "SOURCE_DATE_EPOCH", "ATB_ISOLATION", "ATB_ISOLATION_ACTIVE",
    "ATB_ISOLATION_OWNER", "ATB_SANDBOX_USER",
})
ALLOWED_PREFIXES = ("LC_",)
# Never passed on, even when asked: they name or unlock a database.
# ATB_PREPARED_DATADIR: where `atb drill run` says a sandbox's data directory was copied
# (drills.sandbox.PREPARED_ENV), for the child it started and no one else to name
FORBIDDEN = frozenset({"DATABASE_URL", "ATB_TARGET_URL", "ATB_SANDBOX_URL",
                       "ATB_PRODUCTION_URL", "PGSERVICE", "ATB_PREPARED_DATADIR"})


def _forbidden(name: str) -> bool:
    return name in FORBIDDEN or name in libpq_env_keywords() or name in SERVICE_ENV


def check_pass_env(names: Iterable[str]) -> tuple[str, ...]:
    """Validate `--pass-env` names: the libpq variables and database URLs cannot be passed."""
    bad = sorted(n for n in names if _forbidden(n))
    if bad:
        raise ConfigError(f"--pass-env cannot pass {', '.join(bad)}: the drill points the "
                          "database variables at the sandbox itself")
    return tuple(names)


# Where libpq looks for passwords and services in a sealed child: paths under /dev/null, which
# is not a directory, so nothing can ever exist there. libpq then reads no password file (as
# if there were none) and names the missing service file when a `service=` is asked for;
# nothing is created, so nothing is left behind by a child that is killed.
NO_LIBPQ_FILES = {"PGPASSFILE": "/dev/null/pgpass", "PGSERVICEFILE": "/dev/null/pg_service.conf",
                  "PGSYSCONFDIR": "/dev/null"}


def sealed(extra: Mapping[str, str] | None = None, *, pass_env: Iterable[str] = (),
           base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The allow-listed part of `base` (our environment), the names in `pass_env`, libpq's
    password and service files pointed where none can exist, then `extra` (a database's libpq
    variables, DATABASE_URL for the sandbox)."""
    base = os.environ if base is None else base
    wanted = set(pass_env)
    env = {k: v for k, v in base.items()
           if (k in ALLOWED or k.startswith(ALLOWED_PREFIXES) or k in wanted)
           and not _forbidden(k)}
    env.update(NO_LIBPQ_FILES)
    env.update(extra or {})
    return env


def libpq_vars(info: ConnInfo) -> dict[str, str]:
    """`PG*` variables with which a libpq program given no arguments reaches `info`."""
    by_keyword = {kw: var for var, kw in libpq_env_keywords().items()}
    env = {by_keyword[k]: v for k, v in info.params if k in by_keyword}
    if info.password:
        env["PGPASSWORD"] = info.password
    env.update(dict(info.env))
    return env


@contextlib.contextmanager
def for_tool(info: ConnInfo) -> Iterator[tuple[str, dict[str, str]]]:
    """(conninfo for `--dbname`, environment entries) with which a libpq tool reaches `info`
    with no secret on its argv. `sslpassword`, which has no variable, goes through a
    private service file that lives as long as the `with` block."""
    env = libpq_vars(info)
    if not info.password and not info.get("passfile"):
        # a database the user named for atb's own tools (production for pg_dump) may rely
        # on ~/.pgpass, which sealed environments otherwise point away from
        pgpass = Path(os.environ.get("HOME") or Path.home()) / ".pgpass"
        if pgpass.is_file():
            env["PGPASSFILE"] = str(pgpass)
    ssl_password = dict(info.secrets).get("sslpassword")
    if not ssl_password:
        yield info.conninfo, env
        return
    if info.get("service"):
        raise ConfigError("sslpassword together with service= cannot be passed to the "
                          "PostgreSQL tools: put sslpassword in the service file instead")
    with tempfile.TemporaryDirectory(prefix="atb-svc-") as tmp:
        path = Path(tmp) / "pg_service.conf"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(f"[atb]\nsslpassword={ssl_password}\n")
        env["PGSERVICEFILE"] = str(path)
        yield make_conninfo(info.conninfo, service="atb"), env
