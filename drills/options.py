"""The drill's settings: pytest command-line options over ini keys over defaults."""

from __future__ import annotations

import importlib
import json
import os
import secrets
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from backup_core.tools.durations import check_seconds, parse_duration
from backup_core.tools.errors import ConfigError

if TYPE_CHECKING:  # imported where used: the plugin's entry point stays light
    from backup_core.ops.migrate import Migration
    from backup_core.tools.appenv import AppEnv

# Light on purpose: the pytest plugin's entry point declares its options from this table in
# every pytest run of the environment, drill or not (the value checks import what they need).
DEFAULT_IMAGE = "postgres:{major}"  # drills.docker_engine's default, declared here


@dataclass(frozen=True)
class Option:
    """One drill setting, declared once: the pytest option `--<name>`, the ini key
    `drill_<name>` and (unless `cli` is False) the `atb drill run` option are all made from
    it. `kind` says how the command line checks it; values reach `DrillOptions` as text."""

    name: str
    help: str
    default: str | None = None
    kind: str = "text"  # text, file, dir, int, count, days, choice, list, paths, flag
    metavar: str = ""
    envvar: str = ""
    choices: tuple[str, ...] = ()
    cli: bool = True
    cli_name: str = ""  # the `atb drill run` spelling, where it differs

    @property
    def dest(self) -> str:
        return "drill_" + self.name.removeprefix("drill-").replace("-", "_")

    @property
    def flag(self) -> str:
        return self.cli_name or self.name


def setting(name: str, help: str, default: str | None = None, *, value: Any = MISSING,
            convert: Callable[[str], Any] | None = None, repr: bool = True,
            **kw: Any) -> Any:
    """A `DrillOptions` field carrying its `Option` (click, pytest and the ini are made from
    it): its value when not given is `value`, else the text default converted, else the
    text default itself (a flag is False, a list empty)."""
    option = Option(name, help, default, **kw)
    if value is MISSING:
        value = (False if option.kind == "flag" else () if option.kind in ("list", "paths")
                 else None if default is None else convert(default) if convert is not None
                 else default)
    return field(default=value, repr=repr, metadata={"option": option})


# the pytest-only switches that are not settings of the drill
DRILL = Option("drill", "Run the restore drill instead of the test suite.", kind="flag",
               cli=False)
DRILL_OPTIONS = Option("drill-options", "The drill's settings as a JSON file (written by "
                                        "`atb drill run` for its pytest child), instead of "
                                        "the options above.", kind="file", cli=False)


MAX_PATH = 4096
MAX_TEXT = 8192


def check_text(name: str, value: str) -> str:
    """A drill option's value as given: never empty (an empty path is not "no path"),
    never longer than any real value, never holding a NUL."""
    option = next((o for o in OPTIONS if o.name == name), None)
    limit = MAX_PATH if option is not None and option.kind in ("file", "dir", "paths") \
        else MAX_TEXT
    if not value.strip():
        raise ConfigError(f"--{name} is empty: give a value, or leave the option out")
    if option is not None and option.kind == "choice" and value not in option.choices:
        raise ConfigError(f"--{name} must be one of {', '.join(option.choices)}, not "
                          f"{value[:80]!r}")
    if len(value) > limit:
        raise ConfigError(f"--{name} is {len(value)} characters long: at most {limit}")
    if "\0" in value:
        raise ConfigError(f"--{name} contains a NUL character")
    return value


CHECK_MODULES = {"dump": "drills.checks", "pgbackrest": "drills.pitr_checks"}


def builtin_checks(source: str = "dump") -> tuple[str, ...]:
    """The built-in checks' names, in the order they run: the check functions their module
    defines, or takes from the dump drill's checks."""
    module = importlib.import_module(CHECK_MODULES[source])
    return tuple(name for name, value in vars(module).items()
                 if name.startswith("test_") and callable(value))


def parse_target(text: str | None) -> datetime | None:
    """`random` (None) or an ISO 8601 time with its zone."""
    if not text or text == "random":
        return None
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise ConfigError(f"--target-time takes an ISO 8601 time such as "
                          f"2026-11-24T09:30:00Z, or random; not {text!r}") from exc
    if value.tzinfo is None:
        raise ConfigError(f"--target-time {text!r} has no time zone: add Z or +HH:MM")
    return value.astimezone(UTC)


def tree_of(backup: Path | None, given: Path | None) -> Path:
    """The backup tree whose schedule a drill judges: the one that holds `--backup` (the
    given tree when the backup lies inside it, else the tree around the backup's own
    `<db>/<YYYY>/<MM>/<DD>/` directories), or the given one, or ./backups."""
    if backup is None:
        return given or Path("backups")
    resolved = backup.resolve()
    if given is not None and resolved.is_relative_to(given.resolve()):
        return given
    return resolved.parents[4] if len(resolved.parents) > 4 else resolved.parent


@dataclass(frozen=True)
class Picked:
    """The backup `atb drill run` picked for its child (`drills.child.choose`: the plugin's
    pick, by the seed and window, over the tree it scanned to check the selection, at the
    drill's start, `DrillOptions.started`), among `among` eligible ones: the early sandbox is
    begun for it and the plugin drills it, so nothing scans or picks again. Never an option
    of pytest or the command line: only the options file `atb drill run` writes for its
    child carries it."""

    path: Path
    among: int

    def as_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "among": self.among}

    @classmethod
    def from_dict(cls, data: Any) -> Picked:
        try:
            return cls(path=Path(data["path"]), among=int(data["among"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"--drill-options: picked: not a picked backup: {exc}") from exc


def parse_started(text: Any) -> datetime:
    """The drill's start as the options file gives it: an ISO time with a UTC offset (it is
    compared with the backups' times), as the report and the ledger name it: UTC, to the
    second, whatever offset or fraction it was written with."""
    try:
        value = datetime.fromisoformat(text)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"--drill-options: started: not a time: {exc}") from exc
    if value.utcoffset() is None:
        raise ConfigError(f"--drill-options: started: {text} has no UTC offset")
    return value.astimezone(UTC).replace(microsecond=0)


@dataclass(frozen=True)
class DrillOptions:
    """The drill's settings, each declared once on its field (`setting`)."""

    source: str = setting(
        "source",
        "What to drill: pg_dump backups (dump), or point-in-time recovery from a pgBackRest "
        "stanza (pgbackrest: needs --stanza).",
        "dump", kind="choice", choices=("dump", "pgbackrest"))
    stanza: str | None = setting(
        "stanza",
        "The pgBackRest stanza to recover from (with --source pgbackrest).",
        metavar="NAME")
    pgbackrest_config: Path | None = setting(
        "pgbackrest-config",
        "pgBackRest's config file.  [default: pgBackRest's own]",
        kind="file")
    target_time: datetime | None = setting(
        "target-time",
        "With --source pgbackrest: the time to recover to (ISO 8601, with a zone), or random: "
        "uniform over the recoverable window of the last --window-days, from --seed.",
        "random", metavar="TIME", value=None)
    backup: Path | None = setting(
        "backup",
        "Drill this one dump instead of a random pick (a developer verifying it).",
        kind="file")
    backup_dir: Path = setting(
        "backup-dir",
        "Root of the backup tree.  [default: with --backup, the tree that holds it; else "
        "$BACKUP_DIR or ./backups]",
        kind="dir", envvar="BACKUP_DIR", value=Path("backups"))
    database: str | None = setting(
        "database",
        "Database to drill when the tree holds several.",
        metavar="NAME")
    window_days: float = setting(
        "window-days",
        "Pick among complete backups of the last N days.",
        "90", kind="days", convert=float)
    seed: int = setting(
        "seed",
        "Seed of the random pick (recorded in the report).  [default: random]",
        kind="int", value=0)
    sandbox: str = setting(
        "sandbox",
        "Where to restore: auto is docker when an engine answers and has (or can pull) "
        "--docker-image, else local (saying why); or a scratch database on --sandbox-url.",
        "auto", kind="choice", choices=("auto", "local", "docker", "server"))
    sandbox_is_not_production: bool = setting(
        "sandbox-is-not-production",
        "With --sandbox server: you assert the server is not production's, for when production "
        "cannot be reached to compare them (recorded in the report as asserted, not checked).",
        kind="flag")
    docker_image: str = setting(
        "docker-image",
        "Image for the docker sandbox, {major} being the backup's PostgreSQL major (a PostGIS "
        "image, a registry mirror, or one built by deploy/docker/build-postgres-image).",
        DEFAULT_IMAGE, metavar="IMAGE", envvar="ATB_DOCKER_IMAGE")
    sandbox_url: str | None = setting(
        "sandbox-url",
        "With --sandbox server: a maintenance URL of a server for scratch databases (set it in "
        "the environment if it holds a password).",
        metavar="URL", envvar="ATB_SANDBOX_URL", repr=False)
    alembic_config: Path | None = setting(
        "alembic-config",
        "The application's alembic.ini (relative to --app-dir): the copy is migrated as "
        "`alembic -c INI upgrade head` run there by --app-python would; without it or "
        "--migrate-cmd the migration checks do not run (INCOMPLETE).",
        kind="file", envvar="ATB_ALEMBIC_CONFIG")
    migrate_cmd: str | None = setting(
        "migrate-cmd",
        "The application's own migration command, run in --app-dir against the restored copy "
        "(isolated like --integration-cmd, the copy in DATABASE_URL and --app-url-env), e.g. "
        "'prefect server database upgrade -y'; with --alembic-config too, the command migrates "
        "and the config gives the script head the copy must reach.",
        metavar="CMD", envvar="ATB_MIGRATE_CMD")
    app_python: Path | None = setting(
        "app-python",
        "The application's interpreter (its virtualenv's bin/python): Alembic runs as its "
        "`-m alembic`, and its directory leads the PATH of the migration and integration "
        "commands.  [default: $VIRTUAL_ENV's, else atb's]",
        kind="file", metavar="PATH", envvar="ATB_APP_PYTHON")
    app_dir: Path | None = setting(
        "app-dir",
        "The application's working directory for Alembic, the migration and the integration "
        "commands.  [default: the directory atb was started from]",
        kind="dir", envvar="ATB_APP_DIR")
    app_url_env: tuple[str, ...] = setting(
        "app-url-env",
        "A variable under which the application reads its database URL (OPTUNA_STORAGE, "
        "PREFECT_API_DATABASE_CONNECTION_URL): it gets the copy's URL, as DATABASE_URL does, "
        "in production's form.",
        kind="list", metavar="NAME")
    integration_cmd: str | None = setting(
        "integration-cmd",
        "Command run with DATABASE_URL and the PG* variables at the restored sandbox, e.g. "
        "'pytest tests/integration'.",
        metavar="CMD")
    integration_timeout_s: float = setting(
        "integration-timeout",
        "Longest the integration command may run.",
        "30m", convert=parse_duration)
    checks: tuple[Path, ...] = setting(
        "checks",
        "Your own drill checks (test files or directories), run beside the built-in ones and "
        "reported as checks; tests marked `drill` in paths given on the pytest command line run"
        " too.",
        kind="paths", metavar="PATH")
    exclude: tuple[str, ...] = setting(
        "drill-exclude",
        "Built-in checks to leave out (their names, with or without test_); they are listed as "
        "not run and the verdict is INCOMPLETE, never PASS.",
        kind="list", metavar="CHECK", cli_name="exclude")
    pass_env: tuple[str, ...] = setting(
        "pass-env",
        "Environment variables the integration command also gets (its environment is otherwise "
        "an allow-list; PG* and database URLs always point at the sandbox).",
        kind="list", metavar="NAME")
    allow_service: tuple[str, ...] = setting(
        "allow-service",
        "An address the drill's isolated processes may also reach (a cache, a mock server), on "
        "a loopback address; recorded in the report. Production's address is refused.",
        kind="list", metavar="HOST:PORT")
    heartbeat_table: str = setting(
        "heartbeat-table",
        "Table holding the heartbeat SystemEvent rows.",
        "system_events")
    rto_target_s: float = setting(
        "rto-target",
        "Recovery time objective the measured restore must meet.",
        "60m", convert=parse_duration)
    rpo_target_s: float = setting(
        "rpo-target",
        "Recovery point objective the backup schedule is judged against.",
        "15m", convert=parse_duration)
    schedule_s: float = setting(
        "schedule",
        "How often backups are meant to run.",
        "1h", convert=parse_duration)
    runbook_pg_major: int | None = setting(
        "runbook-pg-major",
        "pg_restore major the incident runbook uses.  [default: the source server's major]",
        kind="int")
    jobs: int | None = setting(
        "jobs",
        "Parallel pg_restore jobs.  [default: number of cores]",
        kind="count")
    report_dir: Path = setting(
        "report-dir",
        "Where the reports go: <dir>/<db>/<time>-drill.{html,json,md}.",
        "reports", kind="dir", convert=Path)
    result_file: Path | None = setting(
        "result-file",
        "Also write the JSON result here (used by `atb drill run`).",
        kind="file", cli=False)
    progress_file: Path | None = setting(
        "progress-file",
        "Append the drill's progress here as JSON lines (used by `atb drill run`).",
        kind="file", cli=False)
    ledger_key: str | None = setting(
        "ledger-key",
        "The fingerprint of the key that signs the drill's ledger record, for its reports "
        "(used by `atb drill run`, which signs it).", cli=False)
    origin: str | None = setting(
        "backup-origin",
        "Where --backup was fetched from, as JSON facts for the reports and the ledger (used "
        "by `atb drill run --repo`).", cli=False)
    strict_rpo: bool = setting(
        "strict-rpo",
        "Fail the drill when the schedule cannot meet the RPO target (default: reported as a "
        "finding).",
        kind="flag")
    rto_faithful: bool = setting(
        "rto-faithful",
        "Measure the RTO under the sandbox server's default settings (fsync, full-page writes, "
        "WAL as production has them) instead of the settings a throwaway sandbox allows.",
        kind="flag")
    record: bool = setting(
        "no-record",
        "Do not record the verdict beside the backup.",
        kind="flag", value=True)
    # the backup `atb drill run` picked (not a setting: no option, no ini key; `Picked`)
    picked: Picked | None = None
    # when `atb drill run` started the drill (UTC, to the second; not a setting either): the
    # report's start, the ledger's, and the instant a pick's window is counted from, in
    # every form (`drills.child.started_at`); None under a direct `pytest --drill`
    started: datetime | None = None

    @classmethod
    def from_values(cls, raw_get: Any, flag: Any,
                    env: Mapping[str, str] | None = None) -> DrillOptions:
        """Build from `get(name) -> str | None` and `flag(name) -> bool` lookups (an option
        not given is read from `env` where it names a variable, else takes its declared
        default), refusing (`ConfigError`, exit 2) every value and combination that cannot
        work: this runs before a report name is claimed, a sandbox started or a verdict
        recorded."""
        from backup_core.ops import migrate
        from backup_core.tools import appenv, isolation
        from backup_core.tools.childenv import check_pass_env

        environ = {} if env is None else env

        def get(name: str) -> str | None:
            o = option(name)
            value = raw_get(name)
            if value is None and o.envvar:
                value = environ.get(o.envvar) or None
            if value is None:
                value = o.default
            return None if value is None else check_text(name, str(value))

        def text(name: str) -> str:
            return get(name) or str(option(name).default)

        def path(name: str) -> Path | None:
            value = get(name)
            return Path(value) if value else None

        def number(name: str, kind: type[int] | type[float]) -> Any:
            value = get(name)
            if value in (None, ""):
                return None
            try:
                return kind(value)
            except ValueError as exc:
                raise ConfigError(f"--{name} takes a number, not {value!r}") from exc

        def words(name: str) -> list[str]:
            return (get(name) or "").replace(",", " ").split()

        backup = path("backup")
        seed = number("seed", int)
        source = text("source")
        if source == "pgbackrest" and not get("stanza"):
            raise ConfigError("--source pgbackrest needs --stanza NAME")
        config = path("pgbackrest-config")
        if config is not None and not config.is_file():
            raise ConfigError(f"--pgbackrest-config {config}: no such file")
        options = cls(
            source=source,
            stanza=get("stanza") or None,
            pgbackrest_config=config,
            target_time=parse_target(get("target-time")),
            backup=backup,
            backup_dir=tree_of(backup, path("backup-dir")),
            database=get("database") or None,
            window_days=check_seconds(number("window-days", float) * 86400,
                                      text=text("window-days"), what="--window-days")
            / 86400,
            seed=seed if seed is not None else secrets.randbelow(2**31),
            sandbox=text("sandbox"),
            sandbox_url=get("sandbox-url") or None,
            docker_image=text("docker-image"),
            alembic_config=path("alembic-config"),
            migrate_cmd=get("migrate-cmd") or None,
            app_python=appenv.interpreter_path(get("app-python") or "")
            if get("app-python") else None,
            app_dir=Path(os.path.abspath(get("app-dir") or "")) if get("app-dir") else None,
            app_url_env=appenv.check_url_env(words("app-url-env")),
            integration_cmd=get("integration-cmd") or None,
            integration_timeout_s=parse_duration(text("integration-timeout")),
            pass_env=check_pass_env(words("pass-env")),
            allow_service=tuple(isolation.check_service(a) for a in words("allow-service")),
            checks=tuple(Path(p.strip()) for p in (get("checks") or "").split(",")
                         if p.strip()),
            exclude=tuple(n if n.startswith("test_") else f"test_{n}"
                          for n in words("drill-exclude")),
            heartbeat_table=text("heartbeat-table"),
            rto_target_s=parse_duration(text("rto-target")),
            rpo_target_s=parse_duration(text("rpo-target")),
            schedule_s=parse_duration(text("schedule")),
            runbook_pg_major=number("runbook-pg-major", int),
            jobs=number("jobs", int),
            report_dir=Path(text("report-dir")),
            result_file=path("result-file"),
            progress_file=path("progress-file"),
            ledger_key=get("ledger-key") or None,
            origin=get("backup-origin") or None,
            strict_rpo=bool(flag("strict-rpo")),
            rto_faithful=bool(flag("rto-faithful")),
            sandbox_is_not_production=bool(flag("sandbox-is-not-production")),
            record=not flag("no-record"),
        )
        options.validate()
        migration = options.migration()
        if migration is not None:  # its interpreter and scripts, before anything starts
            migrate.check(migration)
        return options

    @property
    def target(self) -> Path | None:
        """The dump the drill is known to drill before its plugin runs: `--backup`, or the
        one `atb drill run` picked (`picked`); None when the plugin picks it."""
        if self.source != "dump":
            return None
        return self.backup or (self.picked.path if self.picked is not None else None)

    @property
    def early_dump(self) -> Path | None:
        """The dump whose local sandbox is begun before pytest: its files copied by `atb
        drill run` while the child starts (`drills.sandbox.prepared_for`), its server
        started by the child before pytest is imported (`drills.child.begin`). A dump drill
        whose backup is known (`target`) on a local sandbox, without --drill-exclude
        (checking its names imports the checks, and with them the plugin, before pytest can
        rewrite their asserts); else None. The one decision both make (pure)."""
        if self.sandbox != "local" or self.exclude:
            return None
        return self.target

    def app_env(self, dialect: str = "") -> AppEnv:
        """Where the application's code runs: its directory, interpreter and variables."""
        from backup_core.tools.appenv import AppEnv

        return AppEnv(directory=self.app_dir or Path.cwd(), python=self.app_python,
                      url_env=self.app_url_env, pass_env=self.pass_env, dialect=dialect)

    def migration(self, dialect: str = "") -> Migration | None:
        """How the copy is migrated (`--migrate-cmd` over `--alembic-config`), or None."""
        from backup_core.ops.migrate import Migration

        if self.alembic_config is None and self.migrate_cmd is None:
            return None
        return Migration(app=self.app_env(dialect), alembic_config=self.alembic_config,
                         command=self.migrate_cmd)

    def to_json(self) -> str:
        """The settings for the drill's pytest child (`--drill-options FILE`), all but the
        sandbox URL, which may hold a password and travels as ATB_SANDBOX_URL."""
        data: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "sandbox_url":
                continue
            if f.name == "checks":  # the child may resolve them elsewhere
                value = [str(p.resolve()) for p in value]
            elif isinstance(value, Picked):
                value = value.as_dict()
            elif isinstance(value, datetime):
                value = value.isoformat()
            elif isinstance(value, Path):
                value = str(value)
            elif isinstance(value, tuple):
                value = [str(v) for v in value]
            data[f.name] = value
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str, env: Mapping[str, str]) -> DrillOptions:
        """The settings `to_json` wrote (the sandbox URL from ATB_SANDBOX_URL), checked
        again: the files they name may have gone."""
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise ConfigError(f"--drill-options: not a JSON object of drill settings: "
                              f"{exc}") from exc
        if not isinstance(data, dict):
            raise ConfigError("--drill-options: not a JSON object of drill settings")
        values: dict[str, Any] = {}
        for f in fields(cls):
            if f.name not in data or f.name == "sandbox_url":
                continue
            value, kind = data[f.name], str(f.type)
            if value is None:
                pass
            elif kind.startswith("Picked"):
                value = Picked.from_dict(value)
            elif f.name == "started":
                value = parse_started(value)
            elif kind.startswith("tuple[Path"):
                value = tuple(Path(v) for v in value)
            elif kind.startswith("tuple"):
                value = tuple(str(v) for v in value)
            elif "datetime" in kind:
                value = datetime.fromisoformat(value)
            elif "Path" in kind:
                value = Path(value)
            values[f.name] = value
        try:
            options = cls(**values, sandbox_url=env.get("ATB_SANDBOX_URL") or None)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"--drill-options: {exc}") from exc
        options.validate()
        return options

    def validate(self) -> None:
        """The combinations that cannot work, refused before anything starts."""
        if self.sandbox == "server" and not self.sandbox_url:
            raise ConfigError("--sandbox server needs --sandbox-url (or ATB_SANDBOX_URL)")
        if self.sandbox_is_not_production and self.sandbox != "server":
            raise ConfigError("--sandbox-is-not-production applies to --sandbox server only")
        if self.window_days <= 0:
            raise ConfigError(f"--window-days {self.window_days:g} leaves no backup to drill: "
                              "give a number of days above 0")
        if self.backup is not None and not self.backup.is_file():
            raise ConfigError(f"--backup {self.backup}: no such backup file (`atb db list` "
                              "shows them)")
        from backup_core.tools import appenv

        appenv.check(self.app_env())  # its directory and interpreter, migration or not
        migration = self.migration()
        ini = migration.ini if migration is not None else None
        if ini is not None and not ini.is_file():
            raise ConfigError(f"--alembic-config {ini}: no such file")
        for given in self.checks:
            if not given.exists():
                raise ConfigError(f"--checks: no such file or directory: {given}")
            if not os.access(given, os.R_OK | (os.X_OK if given.is_dir() else 0)):
                raise ConfigError(f"--checks {given}: cannot be read")
        from backup_core.ops.heartbeat import table_parts

        table_parts(self.heartbeat_table, what="--heartbeat-table")
        # listing the checks imports them (and pytest): only when there is a name to check
        builtin = builtin_checks(self.source) if self.exclude else ()
        unknown = sorted(set(self.exclude) - set(builtin))
        if unknown:
            raise ConfigError(f"--drill-exclude names no built-in check: {', '.join(unknown)} "
                              f"(the checks: {', '.join(builtin)})")


def option(name: str) -> Option:
    return next(o for o in OPTIONS if o.name == name)


# every drill option in the order the help lists them: the settings, then pytest's switches
SETTINGS: tuple[Option, ...] = tuple(f.metadata["option"] for f in fields(DrillOptions)
                                     if "option" in f.metadata)
OPTIONS: tuple[Option, ...] = (*SETTINGS[:-2], DRILL, *SETTINGS[-2:], DRILL_OPTIONS)
