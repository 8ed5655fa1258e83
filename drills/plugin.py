"""The restore drill as a pytest plugin: options, the drill's fixtures, and its reports.

Inert unless `--drill` or `--backup` is given; then it collects the built-in checks
(`drills/checks.py`) instead of the project's tests, and writes the HTML report (pytest-html),
a JSON result and a Markdown summary under `--report-dir`.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from backup_core import catalog, db, guard, inventory, isolation, status, toolchain
from backup_core.catalog import Backup
from backup_core.conninfo import ConnInfo, detach_libpq_environment, redact
from backup_core.durations import human
from backup_core.errors import AtbError, ConfigError, ProductionTouched
from backup_core.manifest import Inventory
from backup_core.migrate import MigrateResult, upgrade_head
from backup_core.restore import archive_major, restore_backup
from backup_core.verdicts import DrillVerdict, caused_by_backup, record_drill
from backup_core.verify import VerifyResult, verify_backup
from drills import observer, pick, report, sandbox
from drills.inert import html_text
from drills.options import OPTIONS, DrillOptions
from drills.options import builtin_checks as options_builtin_checks
from drills.result import (
    AlembicFacts,
    DrillResult,
    IntegrationFacts,
    IsolationFacts,
    RpoFacts,
    SandboxFacts,
)
from drills.state import DEFAULT_PHASE, INCOMPLETE, DrillState, ReportPaths

STATE = pytest.StashKey[DrillState]()
USER_CHECKS = pytest.StashKey[tuple[Path, ...]]()
EXIT_INCOMPLETE = 10  # a built-in check did not run: not a pass, not a failure
EVIDENCE = pytest.StashKey[list[str]]()
FINDINGS = pytest.StashKey[list[str]]()
DRILL_REPORT = "atb_drill"  # attribute of a drill check's reports (they travel as JSON)
CHECKS_MODULE = Path(__file__).with_name("checks.py")
PITR_CHECKS_MODULE = Path(__file__).with_name("pitr_checks.py")
log = logging.getLogger("atb.drill")


def _dest(name: str) -> str:
    return next(o.dest for o in OPTIONS if o.name == name)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("drill", "restore drill (atb)")
    for o in OPTIONS:
        if o.kind == "flag":
            group.addoption(f"--{o.name}", dest=o.dest, action="store_true", default=False,
                            help=o.help)
            continue
        shown = f" [default: {o.default}]" if o.default and "[default" not in o.help else ""
        listed = " (comma-separated)" if o.kind in ("list", "paths") else ""
        group.addoption(f"--{o.name}", dest=o.dest, default=None, help=o.help + listed + shown)
        parser.addini(o.dest, help=o.help, default=o.default)


def _active(config: pytest.Config) -> bool:
    return bool(config.getoption(_dest("drill")) or config.getoption(_dest("backup"))
                or config.getoption(_dest("drill-options")))


def _options(config: pytest.Config) -> DrillOptions:
    """The settings from `--drill-options FILE` (as `atb drill run` hands them over), else
    from the pytest options, the ini and the environment (`pytest --drill` by hand)."""
    given = config.getoption(_dest("drill-options"))
    if given:
        try:
            text = Path(given).read_text()
        except OSError as exc:
            raise ConfigError(f"--drill-options {given}: {exc.strerror}") from exc
        return DrillOptions.from_json(text, os.environ)

    def get(name: str) -> str | None:
        value = config.getoption(_dest(name))
        if value is None:
            ini = config.getini(_dest(name))
            value = ini if ini not in ("", None) else None
        return str(value) if value is not None else None

    return DrillOptions.from_values(get, lambda name: config.getoption(_dest(name)),
                                    os.environ)


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "drill: a restore-drill check, run by `atb drill run` "
                                       "and `pytest --drill` beside the built-in checks")
    if not _active(config):
        return
    try:
        options = _options(config)
    except AtbError as exc:
        raise pytest.UsageError(str(exc)) from exc
    builtin = builtin_checks(checks_module(options))  # names checked in DrillOptions
    sandbox.reap()  # sandboxes of killed drills (a no-op under `atb drill run`, which reaped)
    # From here on, nothing in this process or its children sees production: not its URL,
    # not the PG* variables (kept only to recognise production and refuse it).
    detach_libpq_environment()
    raw = os.environ.pop("ATB_PRODUCTION_URL", None) or os.environ.get("DATABASE_URL")
    os.environ.pop("DATABASE_URL", None)
    try:
        production = guard.production_conninfo(raw)
    except ConfigError as exc:
        raise pytest.UsageError(f"the production database cannot be recognised: {exc}") from exc
    started = datetime.now(UTC).replace(microsecond=0)
    if options.source == "pgbackrest":  # the target is picked by drills.pitr_fixtures
        chosen, error, eligible, tree = None, None, 0, None
        from drills import pitr_fixtures
        config.pluginmanager.register(pitr_fixtures, "atb-pitr-fixtures")
    else:
        chosen, error, eligible, tree = _select(options, started)
    database = chosen.database if chosen else (options.database or _only_db(options) or "unknown")
    state = DrillState(options=options, started_at=started, production=production,
                       backup=chosen, selection_error=error,
                       paths=ReportPaths.for_drill(options.report_dir, database, started,
                                                   claim=True))
    state.eligible = eligible
    state.tree = tree
    state.isolation = isolation_facts()
    state.production_before = observer.current()(production)
    state.builtin = builtin
    config.stash[STATE] = state
    # The built-in checks, the user's own check paths, and what the command line named (where
    # only tests marked `drill` run): never the project's whole test suite.
    named = list(config.args) if config.args_source == pytest.Config.ArgsSource.ARGS else []
    config.stash[USER_CHECKS] = tuple(p.resolve() for p in options.checks)
    config.args[:] = [str(checks_module(options)), *(str(p) for p in options.checks), *named]
    if hasattr(config.option, "htmlpath"):
        config.option.htmlpath = str(state.paths.html)
        config.option.self_contained_html = True
    _add_metadata(config, state)


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config,
                                   items: list[pytest.Item]) -> None:
    """Keep the drill's checks: the built-in ones (less --drill-exclude), everything under
    --checks, and elsewhere only tests marked `drill`."""
    state = config.stash.get(STATE, None)
    if state is None:
        return
    own = config.stash.get(USER_CHECKS, ())

    def is_check(item: pytest.Item) -> bool:
        path = Path(str(item.path)).resolve()
        if path == checks_module(state.options).resolve():
            return item.name not in state.options.exclude
        if any(path == p or p in path.parents for p in own):
            return True
        return item.get_closest_marker("drill") is not None

    dropped = [i for i in items if not is_check(i)]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = [i for i in items if i not in dropped]


def checks_module(options: DrillOptions) -> Path:
    return PITR_CHECKS_MODULE if options.source == "pgbackrest" else CHECKS_MODULE


def builtin_checks(module: Path = CHECKS_MODULE) -> tuple[str, ...]:
    """The built-in checks' names (see `drills.options.builtin_checks`)."""
    return options_builtin_checks("pgbackrest" if module == PITR_CHECKS_MODULE else "dump")


def _only_db(options: DrillOptions) -> str | None:
    names = [name for _, name in catalog.database_dirs(options.backup_dir)]
    return names[0] if len(names) == 1 else None


def _select(options: DrillOptions, now: datetime) -> tuple[
        Backup | None, str | None, int, list[Backup] | None]:
    """(the backup to drill, why none could be, how many were eligible, the tree as scanned
    to pick from: the schedule is then judged on the same records, not on a second scan)."""
    if options.backup is not None:
        path = options.backup.resolve()
        if not path.is_file():
            return None, f"no backup at {options.backup}", 0, None
        found = catalog.find(options.backup_dir, path)
        if found is None:
            return None, f"{options.backup} is not named like an atb backup " \
                         "(backup-YYYYMMDDTHHMMSSZ.dump)", 0, None
        return found, None, 1, None
    backups = catalog.scan(options.backup_dir, options.database)
    eligible = len(pick.eligible(backups, now=now, window_days=options.window_days,
                                 database=options.database))
    try:
        chosen = pick.pick(backups, now=now, window_days=options.window_days, seed=options.seed,
                           database=options.database)
    except pick.NothingToDrill as exc:
        return None, f"{exc} (looked in {options.backup_dir})", eligible, backups
    return chosen, None, eligible, backups


DIRECT = ("run by pytest --drill, not atb drill run: the checks share pytest's process; "
          "Alembic and the integration command each run isolated where the platform allows")


def isolation_facts() -> IsolationFacts:
    """The isolation `atb drill run` put this process in (ATB_ISOLATION_FACTS), checked
    against where it really runs; under a direct `pytest --drill`, environment only."""
    raw = os.environ.pop("ATB_ISOLATION_FACTS", "")
    try:
        data = json.loads(raw) if raw else {}
    except ValueError:
        data = {}
    if not isinstance(data, dict) or not data.get("level"):
        return IsolationFacts(level=isolation.ENVIRONMENT_ONLY, reason=DIRECT)
    if data["level"] == isolation.NETWORK and not isolation.already_inside():
        return IsolationFacts(level=isolation.ENVIRONMENT_ONLY,
                              reason="atb said network-isolated, but this process is not")
    return IsolationFacts(level=str(data["level"]), reason=str(data.get("reason", "")),
                          allowed=tuple(str(a) for a in data.get("allowed") or ()))


def _add_metadata(config: pytest.Config, state: DrillState) -> None:
    try:
        from pytest_metadata.plugin import metadata_key
    except ImportError:
        return
    meta = config.stash.get(metadata_key, None)
    if meta is None:
        return
    meta["Drill database"] = state.database
    meta["Drill backup"] = str(state.backup.path) if state.backup else "-"
    meta["Drill seed"] = str(state.options.seed)
    meta["Toolchains"] = ", ".join(f"{c.version} ({c.source})" for c in toolchain.discover())
    for key in list(meta):
        if isinstance(meta[key], str):
            meta[key] = redact(meta[key])


def pytest_report_header(config: pytest.Config) -> list[str] | None:
    state = config.stash.get(STATE, None)
    if state is None:
        return None
    chosen = str(state.backup.path) if state.backup else \
        f"pgBackRest stanza {state.options.stanza}" if state.options.source == "pgbackrest" \
        else f"none ({state.selection_error})"
    return [f"restore drill: backup {chosen}", f"seed {state.options.seed}, sandbox "
            f"{state.options.sandbox}, report {state.paths.html}"]


# -- fixtures --------------------------------------------------------------------------------

@dataclass(frozen=True)
class RestoreOutcome:
    ok: bool
    error: str = ""
    detail: str = ""
    pg_restore_version: str = ""
    jobs: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    checksums: dict[str, str] = field(default_factory=dict)
    inventory: Inventory = field(default_factory=dict)
    definitions: dict[str, str] = field(default_factory=dict)
    with_owners: bool = False
    mode: str = ""  # how it was restored, as the runbook does


@dataclass(frozen=True)
class MigrationOutcome:
    """`alembic upgrade head` on the sandbox, with what was confirmed around it: that the
    target was the sandbox, and production's state after (or how it changed)."""

    result: MigrateResult
    sandbox_confirmed: str = ""
    production_after: str = ""
    production_touched: str = ""


@dataclass(frozen=True)
class RtoOutcome:
    """The recovery's phases as measured when the migrated database was checked."""

    phases: dict[str, float]
    measured_s: float


@dataclass(frozen=True)
class IntegrationOutcome:
    facts: IntegrationFacts
    sandbox_confirmed: str
    isolation: str


@pytest.fixture(scope="session")
def drill(pytestconfig: pytest.Config) -> DrillState:
    """The drill's state: options, chosen backup, phase timings, facts for the report."""
    state = pytestconfig.stash.get(STATE, None)
    if state is None:
        pytest.skip("not a drill run: pass --drill or --backup PATH")
    return state


@pytest.fixture(scope="session")
def drill_chains() -> list[toolchain.Toolchain]:
    return toolchain.discover()


@pytest.fixture(scope="session")
def drill_backup(drill: DrillState) -> Backup:
    if drill.backup is None:
        pytest.skip(f"no backup selected: {drill.selection_error}")
    return drill.backup


@pytest.fixture(scope="session")
def drill_conditions(drill_backup: Backup) -> dict[str, list[str]]:
    """What production already had at backup time (invalid indexes, orphans...), as its
    manifest recorded: reproduced faithfully, they are findings, not failures."""
    return dict(drill_backup.manifest.conditions) if drill_backup.manifest else {}


@pytest.fixture(scope="session")
def drill_integrity(drill: DrillState, drill_backup: Backup,
                    drill_chains: list[toolchain.Toolchain]) -> VerifyResult:
    with drill.phase("fetch/verify"):
        return verify_backup(drill_backup.path, chains=drill_chains, record=False)


def _source_major(backup: Backup, chains: list[toolchain.Toolchain]) -> int:
    if backup.manifest is not None:
        return backup.manifest.server_major
    return archive_major(backup.path, chains)


@pytest.fixture(scope="session")
def drill_sandbox(drill: DrillState, drill_backup: Backup, drill_integrity: VerifyResult,
                  drill_chains: list[toolchain.Toolchain]) -> Iterator[sandbox.SandboxInfo]:
    """A disposable server; DATABASE_URL points at it for the rest of the drill."""
    if not drill_integrity.ok:
        pytest.skip(f"not attempted: the backup failed its integrity check "
                    f"({drill_integrity.reason})")
    server = ConnInfo.parse(drill.options.sandbox_url, what="ATB_SANDBOX_URL") \
        if drill.options.sandbox_url else None
    with drill.phase("sandbox start"):
        manager = sandbox.open_sandbox(drill.options.sandbox,
                                       source_major=_source_major(drill_backup, drill_chains),
                                       chains=drill_chains, server=server,
                                       production=drill.production,
                                       docker_image=drill.options.docker_image,
                                       asserted=drill.options.sandbox_is_not_production)
        info = manager.__enter__()
    os.environ["DATABASE_URL"] = info.url.app_url(
        drill.production.dialect if drill.production else "")
    drill.sandbox = SandboxFacts(provider=info.provider, server_version=info.server_version,
                                 database=info.dbname, identity=str(info.identity),
                                 url=info.url.redacted, image=info.image, note=info.note)
    try:
        yield info
    finally:
        os.environ.pop("DATABASE_URL", None)
        with drill.phase("sandbox teardown"):
            manager.__exit__(None, None, None)


@pytest.fixture(scope="session")
def drill_restore(drill: DrillState, drill_backup: Backup, drill_sandbox: sandbox.SandboxInfo,
                  drill_chains: list[toolchain.Toolchain]) -> RestoreOutcome:
    """Restore, ANALYZE, then read back counts and inventory before anything can change them."""
    url = drill_sandbox.url
    # As the runbook restores: the backup's roles first, then with owners and grants. A shared
    # server (--sandbox server) is not ours to add roles to; there owners are left out.
    with_owners = drill_sandbox.provider != "server" and bool(
        drill_backup.manifest and drill_backup.manifest.roles)
    mode = ("the backup's roles first, then owners and grants" if with_owners else
            "without owners and grants: " + ("a shared server takes no roles"
                                             if drill_sandbox.provider == "server"
                                             else "the backup carries no roles"))
    with drill.phase("restore"):
        try:
            done = restore_backup(drill_backup.path, url, no_owner=not with_owners,
                                  with_roles=with_owners, jobs=drill.options.jobs,
                                  chains=drill_chains, production=drill.reachable_production,
                                  scratch=True)
        except AtbError as exc:
            return RestoreOutcome(ok=False, error=str(exc), detail=redact(exc.detail),
                                  mode=mode)
    with drill.phase("analyze"), db.connect(url, autocommit=True) as conn:
        conn.execute("ANALYZE")
    with drill.phase("checks"):
        with _stable(url) as conn:
            tables = [(s, t) for s, t, _ in inventory.user_tables(conn)]
            inv = inventory.schema_inventory(conn)
            defs = inventory.definitions(conn)
        wanted = bool(drill_backup.manifest and drill_backup.manifest.row_checksums)
        counts, sums = inventory.table_contents(tables, lambda: _stable(url),
                                                workers=min(4, os.cpu_count() or 2),
                                                checksums=wanted)
    drill.checks_started = time.monotonic()
    return RestoreOutcome(ok=True, pg_restore_version=done.pg_restore_version, jobs=done.jobs,
                          counts=counts, checksums=sums, inventory=inv, definitions=defs,
                          with_owners=with_owners, mode=mode)


def _stable(url: ConnInfo) -> Any:
    """A connection whose rows print as they did in the backup's snapshot."""
    conn = db.connect(url, autocommit=True)
    inventory.stabilise_output(conn)
    conn.autocommit = False
    return conn


@pytest.fixture(scope="session")
def drill_url(drill_restore: RestoreOutcome, drill_sandbox: sandbox.SandboxInfo) -> ConnInfo:
    """The restored database (before migration)."""
    if not drill_restore.ok:
        pytest.skip("not run: the restore failed")
    return drill_sandbox.url


@pytest.fixture(scope="session")
def drill_migration_outcome(drill: DrillState, drill_url: ConnInfo,
                            drill_sandbox: sandbox.SandboxInfo) -> MigrationOutcome:
    """`alembic upgrade head` on the restored sandbox, after confirming it is the sandbox,
    with production compared before and after."""
    ini = drill.options.alembic_config
    if ini is None:
        pytest.skip("no --alembic-config given: migrations not exercised")
    confirmed = sandbox.confirm_sandbox(drill_url, drill_sandbox)
    production = drill.reachable_production
    look = observer.current()
    before = look(production)
    with drill.phase("migrate"):
        result = upgrade_head(ini, drill_url)
    after, touched = "", ""
    try:
        after = guard.confirm_unchanged(production, before, observer=look)
    except ProductionTouched as exc:
        touched = str(exc)
    drill.alembic = AlembicFacts(before=result.before, after=result.after,
                                 heads=tuple(result.heads), ok=result.ok,
                                 duration_s=result.duration_s)
    return MigrationOutcome(result=result, sandbox_confirmed=confirmed,
                            production_after=after, production_touched=touched)


@pytest.fixture(scope="session")
def drill_migration(drill_migration_outcome: MigrationOutcome) -> MigrateResult:
    """Alembic's result on the restored sandbox (see `drill_migration_outcome`)."""
    return drill_migration_outcome.result


@pytest.fixture(scope="session")
def drill_final_url(request: pytest.FixtureRequest, drill: DrillState,
                    drill_url: ConnInfo) -> ConnInfo:
    """The database the application would use: migrated when an Alembic config is given."""
    if drill.options.alembic_config is not None:
        result: MigrateResult = request.getfixturevalue("drill_migration")
        if not result.ok:
            pytest.skip("not run: the migration failed")
    return drill_url


@pytest.fixture(scope="session")
def drill_engine(drill_final_url: ConnInfo) -> Iterator[Any]:
    """A SQLAlchemy engine on the restored (and migrated) sandbox, for your own checks."""
    from sqlalchemy import create_engine

    engine = create_engine(drill_final_url.sqlalchemy_url)
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def drill_policy(drill: DrillState, drill_backup: Backup) -> status.Status:
    """The backup tree judged against the schedule and RPO (scanned once per drill)."""
    backups = drill.tree if drill.tree is not None else catalog.scan(
        drill.options.backup_dir, drill.database)
    return status.database_status(backups, database=drill.database, now=drill.started_at,
                                  schedule_s=drill.options.schedule_s,
                                  rpo_s=drill.options.rpo_target_s)


@pytest.fixture(scope="session")
def drill_rpo(drill: DrillState, drill_policy: status.Status) -> RpoFacts:
    """The RPO the backup schedule gives: the largest gap between two backups, against the
    target (unknown with fewer than two backups)."""
    s, target = drill_policy, drill.options.rpo_target_s
    if s.backups < 2:
        rpo = RpoFacts(target_s=target, summary=f"target {human(target)}; unknown: "
                                                f"{s.backups} complete backups, and a gap "
                                                "needs two")
    else:
        worst = s.largest_gap_s or 0.0
        met = worst <= target
        rpo = RpoFacts(target_s=target, largest_gap_s=s.largest_gap_s,
                       newest_age_s=s.newest_age_s, met=met,
                       summary=f"target {human(target)}; worst case data loss {human(worst)} "
                               f"(largest gap between backups over {s.window_days:g} days): "
                               + ("met" if met else "NOT MET"))
    drill.rpo = rpo
    return rpo


@pytest.fixture(scope="session")
def drill_rto(drill: DrillState, drill_final_url: ConnInfo) -> RtoOutcome:
    """The recovery time as measured up to a migrated, checked database: the "checks"
    phase runs from the end of the restore to now, less the migration."""
    if drill.checks_started is not None:
        elapsed = time.monotonic() - drill.checks_started
        drill.phases["checks"] = round(drill.phases.get("checks", 0.0) + elapsed
                                       - drill.phases.get("migrate", 0.0), 3)
        drill.checks_started = None
    return RtoOutcome(phases=dict(drill.phases), measured_s=drill.rto_s())


@pytest.fixture(scope="session")
def drill_integration(drill: DrillState, drill_final_url: ConnInfo,
                      drill_sandbox: sandbox.SandboxInfo) -> IntegrationOutcome:
    """The application's integration command, run isolated against the restored (and
    migrated) sandbox, its JUnit cases read back."""
    from drills import integration

    command = drill.options.integration_cmd
    if not command:
        pytest.skip("no --integration-cmd given")
    confirmed = sandbox.confirm_sandbox(drill_final_url, drill_sandbox)
    with drill.phase("integration"):
        facts, how = integration.run_integration(
            command, drill_final_url, dialect=drill.production.dialect if drill.production
            else "", pass_env=drill.options.pass_env,
            timeout_s=drill.options.integration_timeout_s)
    drill.integration = facts
    return IntegrationOutcome(facts=facts, sandbox_confirmed=confirmed, isolation=how)


class Evidence(list[str]):
    def add(self, line: str) -> None:
        self.append(redact(line))


class Findings(list[str]):
    """What a check found that production already had: reported, not failed."""

    def add(self, line: str) -> None:
        self.append(redact(line))


@pytest.fixture
def evidence(request: pytest.FixtureRequest) -> Evidence:
    """Lines that show what a check saw; they go into the report's Evidence column."""
    ev = Evidence()
    request.node.stash[EVIDENCE] = ev
    return ev


@pytest.fixture
def findings(request: pytest.FixtureRequest) -> Findings:
    """A check's findings; they go into the report's findings."""
    found = Findings()
    request.node.stash[FINDINGS] = found
    return found


# -- reporting -------------------------------------------------------------------------------

@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[
        None, Any, None]:
    state = item.config.stash.get(STATE, None)
    if state is not None and call.when == "call":
        # evidence as pytest's own user properties, as `record_property` would: JUnit XML
        # and every other plugin see it (copied onto the report as it is made)
        item.user_properties.append(("check", report.title(item.name)))
        item.user_properties.append(("why", _why(item)))
        item.user_properties.extend(("evidence", redact(line))
                                    for line in item.stash.get(EVIDENCE, []))
    outcome = yield
    rep: pytest.TestReport = outcome.get_result()
    if state is None:
        return
    setattr(rep, DRILL_REPORT, True)  # for the hooks that see only the report
    if rep.longrepr is not None and not isinstance(rep.longrepr, tuple):
        text = str(rep.longrepr)
        if redact(text) != text:  # a URL with a password in a traceback: never in a report
            rep.longrepr = redact(text)
    lines: list[str] = item.stash.get(EVIDENCE, [])
    marker = item.get_closest_marker("drill")
    rec = state.records.setdefault(item.nodeid, {
        "name": item.name, "title": report.title(item.name), "why": _why(item),
        "outcome": "", "duration_s": 0.0, "message": "",
        "phase": str(marker.kwargs.get("phase", DEFAULT_PHASE)) if marker else DEFAULT_PHASE})
    rec["duration_s"] = round(rec["duration_s"] + rep.duration, 3)
    rec["evidence"] = tuple(lines)
    found: list[str] = item.stash.get(FINDINGS, [])
    rec["findings"] = tuple(found)
    if rep.when == "setup" and rep.outcome != "passed":
        rec["outcome"] = "skipped" if rep.skipped else "error"
    elif rep.when == "call":
        if hasattr(rep, "wasxfail"):
            rec["outcome"] = "finding"
            rec["message"] = str(rep.wasxfail)
        else:
            rec["outcome"] = rep.outcome
    elif rep.when == "teardown" and rep.failed:
        rec["outcome"] = "error"
    if rep.skipped and not rec["message"] and isinstance(rep.longrepr, tuple):
        rec["message"] = str(rep.longrepr[2]).removeprefix("Skipped: ")
    if rep.failed and call.excinfo is not None:
        rec["message"] = redact(str(call.excinfo.value))


def _why(item: pytest.Item) -> str:
    """A check's docstring on one line: why it matters, as the report says."""
    fn = getattr(item, "function", None)
    return " ".join(((fn.__doc__ or "") if fn else "").split())


@pytest.hookimpl(optionalhook=True)
def pytest_html_results_summary(prefix: list[str], summary: list[str], postfix: list[str],
                                session: pytest.Session) -> None:
    state = session.config.stash.get(STATE, None)
    if state is not None:
        prefix.append(report.summary_html(drill_result(session.config, state)))


@pytest.hookimpl(optionalhook=True)
def pytest_html_report_title(report: Any) -> None:
    state = report._config.stash.get(STATE, None) if hasattr(report, "_config") else None
    if state is not None:
        report.title = f"Restore drill: {state.database} ({state.started_at:%Y-%m-%d %H:%M}Z)"
        # pytest-html's script writes the environment table's values (metadata: the drill's
        # database, paths, anything a plugin or the environment put there) as HTML
        environment = report.data.get("environment")
        if isinstance(environment, dict):
            report.set_data("environment", {k: _inert_value(v) for k, v in environment.items()})


def _inert_value(value: object) -> object:
    """A metadata value as pytest-html's script will insert it as HTML: escaped text."""
    if isinstance(value, dict):
        return {html_text(k): html_text(redact(str(v))) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [html_text(redact(str(v))) for v in value]
    return html_text(redact(str(value)))


@pytest.hookimpl(optionalhook=True)
def pytest_html_results_table_header(cells: list[str]) -> None:
    cells.insert(2, "<th>Check</th>")
    cells.insert(3, "<th>Evidence</th>")


@pytest.hookimpl(optionalhook=True)
def pytest_html_results_table_row(report: pytest.TestReport | pytest.CollectReport,
                                   cells: list[str]) -> None:
    """Our columns, and the Test and Links cells set again from escaped text: pytest-html puts
    the node id (a parametrize id can hold any markup) and the links' names in as they are,
    and its script inserts every cell as HTML."""
    props = [(k, str(v)) for k, v in getattr(report, "user_properties", ())]
    title = next((v for k, v in props if k == "check"), report.nodeid)
    why = next((v for k, v in props if k == "why"), "")
    lines = [v for k, v in props if k == "evidence"]
    if len(cells) >= 4:
        when = getattr(report, "when", "call")
        test_id = report.nodeid + ("" if when == "call" else f"::{when}")
        cells[1] = f'<td class="col-testId">{html_text(redact(test_id))}</td>'
        cells[3] = f'<td class="col-links">{_links(getattr(report, "extras", ()))}</td>'
    cells.insert(2, f"<td title='{html_text(redact(why))}'>{html_text(redact(title))}</td>")
    cells.insert(3, "<td>" + "<br>".join(html_text(redact(x)) for x in lines) + "</td>")


def _links(extras: Any) -> str:
    """pytest-html's link cell, its names and addresses escaped (they come from checks)."""
    links = [e for e in extras if isinstance(e, dict)
             and e.get("format_type") in ("json", "text", "url")]
    return "".join(f'<a target="_blank" href="{html_text(e.get("content", ""))}" '
                   f'class="col-links__extra {html_text(e.get("format_type", ""))}">'
                   f'{html_text(e.get("name") or "")}</a>' for e in links)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """A check's pytest-html extras made inert before pytest-html reads them: HTML becomes a
    plain-text attachment, a link only an http(s) address; everything else is text."""
    if not getattr(report, DRILL_REPORT, False):
        return
    extras = getattr(report, "extras", None)
    if isinstance(extras, list):
        extras[:] = [_inert_extra(e) for e in extras if isinstance(e, dict)]


def _inert_extra(extra: dict[str, Any]) -> dict[str, Any]:
    kind, content = extra.get("format_type"), extra.get("content")
    name = redact(str(extra.get("name") or ""))  # escaped where it is shown (`_links`)
    if kind in ("image", "video", "json"):
        return {**extra, "name": name}
    if kind == "url" and isinstance(content, str) and re.match(r"(?i)https?://", content):
        return {**extra, "name": name}
    text = content.decode(errors="replace") if isinstance(content, bytes) else str(content)
    return {**extra, "name": name or "text", "format_type": "text", "extension": "txt",
            "mime_type": "text/plain", "content": redact(text)}


RESULT = pytest.StashKey[DrillResult]()


def drill_result(config: pytest.Config, state: DrillState) -> DrillResult:
    """The drill's result, assembled once when the checks are over (pytest-html's summary
    asks for it before the reports are written)."""
    if RESULT not in config.stash:
        state.collect()
        config.stash[RESULT] = state.result()
    return config.stash[RESULT]


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    state = session.config.stash.get(STATE, None)
    if state is None or exitstatus == pytest.ExitCode.USAGE_ERROR:
        return
    result = drill_result(session.config, state)
    report.write_reports(result)
    if state.options.result_file is not None:
        state.options.result_file.write_text(report.to_json(result))
    if state.backup is not None and state.options.record:
        # appended to the backup's history; a verdict the backup did not cause (a check that
        # errored, an interrupted run, INCOMPLETE) never hides an earlier PASS
        caused = caused_by_backup(result.verdict, {c.name: c.message for c in result.checks
                                                   if c.outcome == "failed"},
                                  interrupted=exitstatus == pytest.ExitCode.INTERRUPTED)
        try:
            record_drill(state.backup.path, DrillVerdict(
                passed=result.passed, at=result.finished_at, report=str(state.paths.html),
                rto_s=result.rto.measured_s, verdict=result.verdict, caused=caused,
                failed_checks=tuple(c.name for c in result.checks
                                    if c.outcome in ("failed", "error"))))
        except AtbError as exc:
            log.warning("could not record the verdict beside the backup: %s", exc)
    if result.verdict == INCOMPLETE:
        session.exitstatus = EXIT_INCOMPLETE
    elif result.verdict != "PASS" and session.exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    state = config.stash.get(STATE, None)
    if state is None:
        return
    terminalreporter.write_sep("=", f"restore drill verdict: {state.verdict()}")
    terminalreporter.write_line(f"report: {state.paths.html}")
    terminalreporter.write_line(f"json:   {state.paths.json}")
    terminalreporter.write_line(f"wiki:   {state.paths.md}")
