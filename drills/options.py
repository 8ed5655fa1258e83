"""The drill's settings: pytest command-line options over ini keys over defaults."""

from __future__ import annotations

import ast
import os
import secrets
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from backup_core import isolation
from backup_core.childenv import check_pass_env
from backup_core.durations import check_seconds, parse_duration
from backup_core.errors import ConfigError
from backup_core.heartbeat import table_parts
from drills.docker_engine import DEFAULT_IMAGE


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


OPTIONS: tuple[Option, ...] = (
    Option("source", "What to drill: pg_dump backups (dump), or point-in-time recovery from "
                     "a pgBackRest stanza (pgbackrest: needs --stanza).", "dump",
           kind="choice", choices=("dump", "pgbackrest")),
    Option("stanza", "The pgBackRest stanza to recover from (with --source pgbackrest).",
           metavar="NAME"),
    Option("pgbackrest-config", "pgBackRest's config file.  [default: pgBackRest's own]",
           kind="file"),
    Option("target-time", "With --source pgbackrest: the time to recover to (ISO 8601, with "
                          "a zone), or random: uniform over the recoverable window of the "
                          "last --window-days, from --seed.", "random", metavar="TIME"),
    Option("backup", "Drill this one dump instead of a random pick (a developer verifying it).",
           kind="file"),
    Option("backup-dir", "Root of the backup tree.  [default: with --backup, the tree that "
                         "holds it; else $BACKUP_DIR or ./backups]", kind="dir",
           envvar="BACKUP_DIR"),
    Option("database", "Database to drill when the tree holds several.", metavar="NAME"),
    Option("window-days", "Pick among complete backups of the last N days.", "90",
           kind="days"),
    Option("seed", "Seed of the random pick (recorded in the report).  [default: random]",
           kind="int"),
    Option("sandbox", "Where to restore: auto is docker when an engine answers and has (or "
                      "can pull) --docker-image, else local (saying why); or a scratch "
                      "database on --sandbox-url.", "auto", kind="choice",
           choices=("auto", "local", "docker", "server")),
    Option("sandbox-is-not-production", "With --sandbox server: you assert the server is not "
                                        "production's, for when production cannot be reached "
                                        "to compare them (recorded in the report as asserted, "
                                        "not checked).", kind="flag"),
    Option("docker-image", "Image for the docker sandbox, {major} being the backup's "
                           "PostgreSQL major (a PostGIS image, a registry mirror, or one "
                           "built by deploy/docker/build-postgres-image).",
           DEFAULT_IMAGE, metavar="IMAGE", envvar="ATB_DOCKER_IMAGE"),
    Option("sandbox-url", "With --sandbox server: a maintenance URL of a server for scratch "
                          "databases (set it in the environment if it holds a password).",
           metavar="URL", envvar="ATB_SANDBOX_URL"),
    Option("alembic-config", "The application's alembic.ini; without it the migration checks "
                             "do not run (INCOMPLETE).", kind="file"),
    Option("integration-cmd", "Command run with DATABASE_URL and the PG* variables at the "
                              "restored sandbox, e.g. 'pytest tests/integration'.",
           metavar="CMD"),
    Option("integration-timeout", "Longest the integration command may run.", "30m"),
    Option("checks", "Your own drill checks (test files or directories), run beside the "
                     "built-in ones and reported as checks; tests marked `drill` in paths "
                     "given on the pytest command line run too.", kind="paths",
           metavar="PATH"),
    Option("drill-exclude", "Built-in checks to leave out (their names, with or without "
                            "test_); they are listed as not run and the verdict is "
                            "INCOMPLETE, never PASS.", kind="list", metavar="CHECK",
           cli_name="exclude"),
    Option("pass-env", "Environment variables the integration command also gets (its "
                       "environment is otherwise an allow-list; PG* and database URLs always "
                       "point at the sandbox).", kind="list", metavar="NAME"),
    Option("allow-service", "An address the drill's isolated processes may also reach (a "
                            "cache, a mock server), on a loopback address; recorded in the "
                            "report. Production's address is refused.", kind="list",
           metavar="HOST:PORT"),
    Option("heartbeat-table", "Table holding the heartbeat SystemEvent rows.",
           "system_events"),
    Option("rto-target", "Recovery time objective the measured restore must meet.", "60m"),
    Option("rpo-target", "Recovery point objective the backup schedule is judged against.",
           "15m"),
    Option("schedule", "How often backups are meant to run.", "1h"),
    Option("runbook-pg-major", "pg_restore major the incident runbook uses.  [default: the "
                               "source server's major]", kind="int"),
    Option("jobs", "Parallel pg_restore jobs.  [default: number of cores]", kind="count"),
    Option("report-dir", "Where the reports go: <dir>/<db>/<time>-drill.{html,json,md}.",
           "reports", kind="dir"),
    Option("result-file", "Also write the JSON result here (used by `atb drill run`).",
           kind="file", cli=False),
    Option("drill", "Run the restore drill instead of the test suite.", kind="flag",
           cli=False),
    Option("strict-rpo", "Fail the drill when the schedule cannot meet the RPO target "
                         "(default: reported as a finding).", kind="flag"),
    Option("no-record", "Do not record the verdict beside the backup.", kind="flag"),
)


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


CHECK_MODULES = {"dump": Path(__file__).with_name("checks.py"),
                 "pgbackrest": Path(__file__).with_name("pitr_checks.py")}


def builtin_checks(source: str = "dump") -> tuple[str, ...]:
    """The built-in checks' names, read from their module without importing it (defined
    there, or taken from the dump drill's checks by assignment)."""
    names = []
    for node in ast.parse(CHECK_MODULES[source].read_text()).body:
        if isinstance(node, ast.FunctionDef):
            names.append(node.name)
        elif isinstance(node, ast.Assign):
            names += [t.id for t in node.targets if isinstance(t, ast.Name)]
    return tuple(n for n in names if n.startswith("test_"))


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
class DrillOptions:
    source: str = "dump"
    stanza: str | None = None
    pgbackrest_config: Path | None = None
    target_time: datetime | None = None  # None: random over the window
    backup: Path | None = None
    backup_dir: Path = Path("backups")
    database: str | None = None
    window_days: float = 90
    seed: int = 0
    sandbox: str = "auto"
    sandbox_url: str | None = field(default=None, repr=False)
    sandbox_is_not_production: bool = False
    docker_image: str = DEFAULT_IMAGE
    alembic_config: Path | None = None
    integration_cmd: str | None = None
    integration_timeout_s: float = 1800
    pass_env: tuple[str, ...] = ()
    allow_service: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    checks: tuple[Path, ...] = ()
    heartbeat_table: str = "system_events"
    rto_target_s: float = 3600
    rpo_target_s: float = 900
    schedule_s: float = 3600
    runbook_pg_major: int | None = None
    jobs: int | None = None
    report_dir: Path = Path("reports")
    result_file: Path | None = None
    strict_rpo: bool = False
    record: bool = True

    @classmethod
    def from_values(cls, raw_get: Any, flag: Any) -> DrillOptions:
        """Build from `get(name) -> str | None` and `flag(name) -> bool` lookups, refusing
        (`ConfigError`, exit 2) every value and combination that cannot work: this runs
        before a report name is claimed, a sandbox started or a verdict recorded."""
        def get(name: str) -> str | None:
            value = raw_get(name)
            return None if value is None else check_text(name, str(value))

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

        backup = path("backup")
        backup_dir = tree_of(backup, path("backup-dir") or (
            Path(os.environ["BACKUP_DIR"]) if os.environ.get("BACKUP_DIR") else None))
        seed = number("seed", int)
        days = number("window-days", float)
        source = get("source") or "dump"
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
            backup_dir=backup_dir,
            database=get("database") or None,
            window_days=check_seconds((90.0 if days is None else days) * 86400,
                                      text=str(get("window-days")), what="--window-days")
            / 86400,
            seed=seed if seed is not None else secrets.randbelow(2**31),
            sandbox=get("sandbox") or "auto",
            sandbox_url=get("sandbox-url") or os.environ.get("ATB_SANDBOX_URL") or None,
            docker_image=get("docker-image") or os.environ.get("ATB_DOCKER_IMAGE")
            or DEFAULT_IMAGE,
            alembic_config=path("alembic-config"),
            integration_cmd=get("integration-cmd") or None,
            integration_timeout_s=parse_duration(get("integration-timeout") or "30m"),
            pass_env=check_pass_env((get("pass-env") or "").replace(",", " ").split()),
            allow_service=tuple(isolation.check_service(a) for a in
                                (get("allow-service") or "").replace(",", " ").split()),
            checks=tuple(Path(p.strip()) for p in (get("checks") or "").split(",")
                         if p.strip()),
            exclude=tuple(n if n.startswith("test_") else f"test_{n}" for n in
                          (get("drill-exclude") or "").replace(",", " ").split()),
            heartbeat_table=get("heartbeat-table") or "system_events",
            rto_target_s=parse_duration(get("rto-target") or "60m"),
            rpo_target_s=parse_duration(get("rpo-target") or "15m"),
            schedule_s=parse_duration(get("schedule") or "1h"),
            runbook_pg_major=number("runbook-pg-major", int),
            jobs=number("jobs", int),
            report_dir=path("report-dir") or Path("reports"),
            result_file=path("result-file"),
            strict_rpo=bool(flag("strict-rpo")),
            sandbox_is_not_production=bool(flag("sandbox-is-not-production")),
            record=not flag("no-record"),
        )
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
        if self.alembic_config is not None and not self.alembic_config.is_file():
            raise ConfigError(f"--alembic-config {self.alembic_config}: no such file")
        for given in self.checks:
            if not given.exists():
                raise ConfigError(f"--checks: no such file or directory: {given}")
            if not os.access(given, os.R_OK | (os.X_OK if given.is_dir() else 0)):
                raise ConfigError(f"--checks {given}: cannot be read")
        table_parts(self.heartbeat_table, what="--heartbeat-table")
        builtin = builtin_checks(self.source)
        unknown = sorted(set(self.exclude) - set(builtin))
        if unknown:
            raise ConfigError(f"--drill-exclude names no built-in check: {', '.join(unknown)} "
                              f"(the checks: {', '.join(builtin)})")

    def as_pytest_args(self) -> list[str]:
        """The same options as pytest arguments, for running the drill in a child process."""
        args = ["--drill"]
        for f in fields(self):
            value = getattr(self, f.name)
            name = f.name.replace("_", "-")
            if f.name == "sandbox_url":
                continue  # may hold a password: travels as ATB_SANDBOX_URL, never on argv
            if f.name in ("strict_rpo", "sandbox_is_not_production"):
                args += [f"--{name}"] if value else []
            elif f.name == "record":
                args += [] if value else ["--no-record"]
            elif f.name in ("pass_env", "allow_service"):
                args += [f"--{name}={','.join(value)}"] if value else []
            elif f.name == "checks":
                args += [f"--checks={','.join(str(p.resolve()) for p in value)}"] if value \
                    else []
            elif f.name == "target_time":
                args += [f"--target-time={value.isoformat()}"] if value else []
            elif f.name == "exclude":
                args += [f"--drill-exclude={','.join(value)}"] if value else []
            elif value is not None:
                if f.name.endswith("_s"):
                    name = name[:-2]
                    value = f"{value:.3f}".rstrip("0").rstrip(".") + "s"
                args.append(f"--{name}={value}")
        return args
