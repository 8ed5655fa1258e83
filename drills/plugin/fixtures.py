"""The drill's fixtures: each produces one frozen outcome (the backup verified, the sandbox,
the restore read back, the migration, the RPO and RTO measured, the integration command's
run) and records it for the report; the checks only judge them. The types here (`Evidence`,
`Findings`, the outcomes) are what checks, built-in or the user's, may import."""

from __future__ import annotations

import functools
import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

import psycopg
import pytest

from backup_core.ops import status
from backup_core.ops.migrate import MigrateResult, run_migration
from backup_core.ops.restore import RestoreRequest, archive_major, restore_backup
from backup_core.ops.verify import VerifyResult, verify_backup
from backup_core.reading import forecast, guard, inventory
from backup_core.store import catalog, catalog_cache
from backup_core.store.catalog import Backup
from backup_core.store.manifest import Inventory
from backup_core.tools import db, isolation, toolchain
from backup_core.tools.cluster import FAST_SETTINGS, settings_text
from backup_core.tools.conninfo import ConnInfo, redact
from backup_core.tools.durations import human
from backup_core.tools.errors import AtbError, ProductionTouched
from drills import beside, child, observer, sandbox
from drills.child import SandboxStart
from drills.result import (
    AlembicFacts,
    IntegrationFacts,
    RpoFacts,
    SandboxFacts,
)
from drills.state import DrillState

STATE = pytest.StashKey[DrillState]()
CHAINS = pytest.StashKey[list[toolchain.Toolchain]]()
EVIDENCE = pytest.StashKey[list[str]]()
FINDINGS = pytest.StashKey[list[str]]()
DRILL_REPORT = "atb_drill"  # attribute of a drill check's reports (they travel as JSON)


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
    # started beside the read-back (see drills.beside) and still running while the checks
    # that need neither judge the rest: the copy's own table of contents, and pg_amcheck's
    # run when nothing changes the copy before its check (no migration)
    listing: Future[beside.Listing] | None = None
    amcheck: Future[beside.Amcheck] | None = None
    # and, when nothing changes the copy before the checks (no migration), what the checks
    # after the read-back ask of it, on one connection (see `beside.CopyFacts`)
    facts: Future[beside.CopyFacts] | None = None
    read_back: str = ""  # when the tables were read back: during the restore, or after


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
    """The drill's session: options, chosen backup, and the outcomes fixtures recorded."""
    state = pytestconfig.stash.get(STATE, None)
    if state is None:
        pytest.skip("not a drill run: pass --drill or --backup PATH")
    return state


@pytest.fixture(scope="session")
def drill_chains(pytestconfig: pytest.Config) -> list[toolchain.Toolchain]:
    return pytestconfig.stash.get(CHAINS, None) or toolchain.discover()


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
def drill_integrity(request: pytest.FixtureRequest, drill: DrillState, drill_backup: Backup,
                    drill_chains: list[toolchain.Toolchain]) -> VerifyResult:
    if drill.options.source == "dump" and any(
            "drill_sandbox" in getattr(item, "fixturenames", ()) for item in request.session.items):
        request.getfixturevalue("drill_sandbox_start")  # the sandbox starts while we verify
    with drill.phase("fetch/verify"):
        return verify_backup(drill_backup.path, chains=drill_chains, record=False)


def _source_major(backup: Backup, chains: list[toolchain.Toolchain]) -> int:
    if backup.manifest is not None:
        return backup.manifest.server_major
    return archive_major(backup.path, chains)


EARLY_SANDBOX = pytest.StashKey[SandboxStart]()


def _open_sandbox(drill: DrillState, backup: Backup, chains: list[toolchain.Toolchain]
                  ) -> AbstractContextManager[sandbox.SandboxInfo]:
    server = ConnInfo.parse(drill.options.sandbox_url, what="ATB_SANDBOX_URL") \
        if drill.options.sandbox_url else None
    locale = inventory.DatabaseLocale.from_definitions(backup.manifest.definitions) \
        if backup.manifest else None
    return sandbox.open_sandbox(drill.options.sandbox, source_major=_source_major(backup, chains),
                                chains=chains, server=server, production=drill.production,
                                docker_image=drill.options.docker_image,
                                asserted=drill.options.sandbox_is_not_production,
                                locale=locale, faithful=drill.options.rto_faithful)


def pytest_sessionstart(session: pytest.Session) -> None:
    """A dump drill's sandbox starts with the session, while pytest collects the checks and
    the backup is verified (`SandboxStart`); under `atb drill run` it may have begun
    before pytest was even imported (`drills.child`), and is adopted here."""
    config = session.config
    state = config.stash.get(STATE, None)
    if state is None or state.backup is None or state.options.source != "dump" \
            or config.option.collectonly:
        return
    early = child.take(state.backup, state.options)
    if early is not None:
        config.stash[CHAINS] = early.chains.result()
        config.stash[EARLY_SANDBOX] = early.start
        return
    config.stash[CHAINS] = chains = toolchain.discover()
    config.stash[EARLY_SANDBOX] = SandboxStart(
        functools.partial(_open_sandbox, state, state.backup, chains), state.options.sandbox)


def pytest_sessionfinish(session: pytest.Session) -> None:
    """A sandbox started with the session that no check asked for, torn down (else its
    fixture did)."""
    start = session.config.stash.get(EARLY_SANDBOX, None)
    state = session.config.stash.get(STATE, None)
    if start is not None and state is not None:
        start.close(state)


@pytest.fixture(scope="session")
def drill_sandbox_start(pytestconfig: pytest.Config, drill: DrillState, drill_backup: Backup,
                        drill_chains: list[toolchain.Toolchain]) -> Iterator[SandboxStart]:
    """The disposable server, starting (see `SandboxStart`); torn down when the drill ends."""
    start = pytestconfig.stash.get(EARLY_SANDBOX, None) or SandboxStart(
        functools.partial(_open_sandbox, drill, drill_backup, drill_chains),
        drill.options.sandbox)
    try:
        yield start
    finally:
        start.close(drill)


@pytest.fixture(scope="session")
def drill_sandbox(request: pytest.FixtureRequest, drill: DrillState,
                  drill_integrity: VerifyResult) -> Iterator[sandbox.SandboxInfo]:
    """A disposable server; DATABASE_URL points at it for the rest of the drill. It started
    beside the verification, so its phase in the RTO is what its start took beyond the
    verification's time (at least what the drill waited for it): the recovery's path is the
    longer of the two, not their sum, and not the part pytest's own start hid."""
    if not drill_integrity.ok:
        pytest.skip(f"not attempted: the backup failed its integrity check "
                    f"({drill_integrity.reason})")
    start: SandboxStart = request.getfixturevalue("drill_sandbox_start")
    with drill.phase("sandbox start"):
        info = start.wait()
    drill.phases["sandbox start"] = round(max(
        drill.phases["sandbox start"], info.start_s - drill.phases.get("fetch/verify", 0.0)), 3)
    drill.rto_settings = ("the shared server's own settings" if info.provider == "server"
                          else settings_text({} if drill.options.rto_faithful
                                             else FAST_SETTINGS))
    os.environ["DATABASE_URL"] = info.url.app_url(
        drill.production.dialect if drill.production else "")
    drill.sandbox = SandboxFacts(provider=info.provider, server_version=info.server_version,
                                 database=info.dbname, identity=str(info.identity),
                                 url=info.url.redacted, image=info.image, note=info.note,
                                 durability=_durability(info.url))
    if info.note and drill.on_note is not None:  # when the sandbox is chosen, not at the end
        drill.on_note(info.note)
    try:
        yield info
    finally:
        os.environ.pop("DATABASE_URL", None)


DURABILITY_SETTINGS = ("fsync", "synchronous_commit", "full_page_writes")


def _durability(url: ConnInfo) -> dict[str, str]:
    """The sandbox's durability settings as the server reports them (the RTO is measured
    under them); empty when they cannot be read."""
    try:
        with db.connect(url, autocommit=True) as conn:
            rows = conn.execute("SELECT name, setting FROM pg_settings WHERE name = ANY(%s)",
                                (list(DURABILITY_SETTINGS),)).fetchall()
    except (AtbError, psycopg.Error):
        return {}
    found = {str(k): str(v) for k, v in rows}
    return {k: found[k] for k in DURABILITY_SETTINGS if k in found}


ANALYZING = pytest.StashKey[Future[None]]()
TREE_SCAN = pytest.StashKey[Future[list[Backup]]]()
@pytest.fixture(scope="session")
def drill_restore(drill: DrillState, drill_backup: Backup, drill_sandbox: sandbox.SandboxInfo,
                  drill_chains: list[toolchain.Toolchain],
                  request: pytest.FixtureRequest) -> Iterator[RestoreOutcome]:
    """Restore, then read back counts and inventory before anything can change them, with
    ANALYZE, pg_amcheck and the listings started beside."""
    url = drill_sandbox.url
    # As the runbook restores: the backup's roles first, then with owners and grants. A shared
    # server (--sandbox server) is not ours to add roles to; there owners are left out.
    with_owners = drill_sandbox.provider != "server" and bool(
        drill_backup.manifest and drill_backup.manifest.roles)
    mode = ("the backup's roles first, then owners and grants" if with_owners else
            "without owners and grants: " + ("a shared server takes no roles"
                                             if drill_sandbox.provider == "server"
                                             else "the backup carries no roles"))
    workers = min(4, os.cpu_count() or 2)
    side = ThreadPoolExecutor(max_workers=4, thread_name_prefix="atb-beside")
    # the read-back's connections (its catalogs' and its workers'), opened while the copy
    # restores, on the core the restore leaves idle
    opened = _Opened(url, side.submit(lambda: [_stable(url) for _ in range(workers + 1)]))
    # and the archive's own table of contents, which needs the archive alone
    toc_read = (side.submit(beside.archive_toc, drill_backup, drill_chains)
                if _will_run(request, "test_every_archive_entry_is_in_the_restored_database")
                else None)
    # and the tree the schedule is judged on (`drill_policy`), which needs nothing restored
    if drill.tree is None and _will_use(request, "drill_policy"):
        request.config.stash[TREE_SCAN] = side.submit(_scan_tree, drill)
    recorded = drill_backup.manifest.row_checksums if drill_backup.manifest else {}
    methods = {t: inventory.checksum_method(v) for t, v in recorded.items()}
    # the kinds of definitions the manifest recorded: the ones the checks compare
    kinds = inventory.recorded_kinds(drill_backup.manifest)
    # Each table read back as soon as its data has committed, while the restore goes on
    # (its indexes, constraints, other tables): no later item changes its rows. Not with
    # --rto-faithful, whose restore phase is then the production figure, read-back after
    early = None if drill.options.rto_faithful else inventory.ReadAsLoaded(
        opened, workers=workers, checksums=bool(recorded), methods=methods, kinds=kinds)
    failed: RestoreOutcome | None = None
    with drill.phase("restore"):
        try:
            done = restore_backup(RestoreRequest(
                drill_backup.path, url, no_owner=not with_owners, with_roles=with_owners,
                jobs=drill.options.jobs, production=drill.reachable_production, scratch=True,
                split=not drill.options.rto_faithful,
                on_loaded=(lambda e: early.loaded(e.schema, e.tag)) if early else None),
                chains=drill_chains)
        except AtbError as exc:
            failed = RestoreOutcome(ok=False, error=str(exc), detail=redact(exc.detail),
                                    mode=mode)
        except BaseException:
            _stop(early, opened, side)
            raise
    if failed is not None:  # yielded once the restore's phase has ended, not inside it
        _stop(early, opened, side)
        yield failed
        return
    # Beside the read-back, and past it while the checks judge what was read: ANALYZE (a
    # step of the recovery, in the RTO: the counts, checksums and catalogs read are the same
    # with or without planner statistics), and the listings, pg_amcheck and the copy's facts
    # the checks judge (read-only, like every check before the migration). Each is waited
    # for where it is needed, so the cores left idle by the checks' own Python (one
    # process) do that work, not a wait before them. ANALYZE's phase is the time waited for
    # it: the RTO's phases add up to the recovery's path, the time they overlap counted once
    try:
        request.config.stash[ANALYZING] = side.submit(beside.analyze, url)
        with drill.phase("checks"):
            listed = (side.submit(beside.listings, drill_backup, drill_sandbox, drill_chains,
                                  taken=toc_read.result) if toc_read is not None else None)
            unchanged = drill.options.migration() is None
            checked = (side.submit(beside.amcheck, drill_sandbox, catalogs=False)
                       if unchanged and _will_run(request, "test_amcheck_finds_no_corruption")
                       else None)
            wanted = {k for k, check in beside.FACT_CHECKS.items() if _will_run(request, check)}
            facts = (side.submit(beside.copy_facts, url, wanted=wanted,
                                 heartbeat_table=drill.options.heartbeat_table,
                                 archive=toc_read.result if toc_read is not None else None)
                     if unchanged and wanted else None)
            try:
                back = (early.finish() if early is not None else
                        inventory.read_back(opened, workers=workers, checksums=bool(recorded),
                                            methods=methods, kinds=kinds))
            finally:
                opened.close()
        drill.checks_started = time.monotonic()
        read_when = "every table and the catalogs read back after the restore (--rto-faithful)"
        if early is not None:
            gave = f" ({len(early.gave_way)} gave way to the restore)" if early.gave_way else ""
            read_when = (f"{len(early.early)} of {len(back.counts)} tables read back as their "
                         f"data came in, while the restore went on{gave}; the rest and the "
                         "catalogs after it")
        yield RestoreOutcome(ok=True, pg_restore_version=done.pg_restore_version,
                             jobs=done.jobs, counts=back.counts, checksums=back.checksums,
                             inventory=back.inventory, definitions=back.definitions,
                             with_owners=with_owners, mode=mode, listing=listed,
                             amcheck=checked, facts=facts, read_back=read_when)
    finally:
        # on Ctrl-C or an error, not held until pg_amcheck is done: the sandbox's teardown
        # (after this one's) ends what still runs beside
        side.shutdown(wait=False, cancel_futures=True)


def _stop(early: inventory.ReadAsLoaded | None, opened: _Opened,
          side: ThreadPoolExecutor) -> None:
    """What the read-back started, ended: the restore failed or was interrupted."""
    if early is not None:
        early.close()
    opened.close()
    side.shutdown(wait=False, cancel_futures=True)


def _wait_for_analyze(config: pytest.Config, drill: DrillState) -> None:
    """ANALYZE, started beside the read-back, done: before the migration, your checks'
    engine, the integration command and the RTO's measure. Its phase is the time waited
    for it here (once), beyond the work it overlapped."""
    running = config.stash.get(ANALYZING, None)
    if running is not None:
        del config.stash[ANALYZING]
        with drill.phase("analyze"):
            running.result()


def _will_use(request: pytest.FixtureRequest, fixture: str) -> bool:
    """Whether any of the drill's checks (built-in or the user's) asks for `fixture`, itself
    or through another fixture: no list of check names to keep in step."""
    return any(fixture in getattr(item, "fixturenames", ()) for item in request.session.items)


def _will_run(request: pytest.FixtureRequest, check: str) -> bool:
    """Whether a built-in check is among the drill's (not left out by --drill-exclude)."""
    return any(item.name == check for item in request.session.items)


class _Opened:
    """Connections opened ahead (`ready`), handed out as asked, then new ones; those never
    handed out are closed by `close` (a connection that failed to open ahead is opened
    again when asked, so its error is the read-back's)."""

    def __init__(self, url: ConnInfo, ready: Future[list[Any]]) -> None:
        self.url, self.ready, self.lock = url, ready, threading.Lock()
        self.spare: list[Any] | None = None

    def _take(self) -> list[Any]:
        if self.spare is None:
            try:
                self.spare = self.ready.result()
            except (AtbError, psycopg.Error):
                self.spare = []
        return self.spare

    def __call__(self) -> Any:
        with self.lock:
            spare = self._take()
            if spare:
                return spare.pop()
        return _stable(self.url)

    def close(self) -> None:
        with self.lock:
            if self.spare is None and not self.ready.cancel():
                self._take()
            for conn in self.spare or []:
                conn.close()
            self.spare = []


def _stable(url: ConnInfo) -> Any:
    """A connection whose rows print as they did in the backup's snapshot."""
    conn = db.connect(url, autocommit=True)
    inventory.stabilise_output(conn)
    conn.autocommit = False
    return conn


@pytest.fixture(scope="session")
def drill_url(drill_restore: RestoreOutcome, drill_sandbox: sandbox.SandboxInfo
              ) -> Iterator[ConnInfo]:
    """The restored database (before migration). Inside the drill's namespaces, on their
    loopback: your checks run where no unix socket opens (see `hooks.pytest_itemcollected`),
    so a sandbox on a socket (a container's, a relay's) is carried there."""
    if not drill_restore.ok:
        pytest.skip("not run: the restore failed")
    if not isolation.already_inside():
        yield drill_sandbox.url
        return
    with isolation.loopback(drill_sandbox.url) as reach:
        yield reach


@pytest.fixture(scope="session")
def drill_migration_outcome(drill: DrillState, drill_url: ConnInfo,
                            drill_sandbox: sandbox.SandboxInfo,
                            request: pytest.FixtureRequest) -> MigrationOutcome:
    """The application's own migration (`--migrate-cmd`, or `alembic upgrade head`) on the
    restored sandbox, in the application's environment, after confirming it is the
    sandbox, with production compared before and after."""
    migration = drill.options.migration(_dialect(drill))
    if migration is None:
        pytest.skip("no --migrate-cmd or --alembic-config given: migrations not exercised")
    _wait_for_analyze(request.config, drill)  # the recovery's order: ANALYZE, then migrate
    confirmed = sandbox.confirm_sandbox(drill_url, drill_sandbox)
    production = drill.reachable_production
    look = observer.current()
    before = look(production)
    with drill.phase("migrate"):
        result = run_migration(migration, drill_url)
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


def _dialect(drill: DrillState) -> str:
    """Production's URL prefix (`postgresql+asyncpg`), which the application's code gets."""
    return drill.production.dialect if drill.production else ""


@pytest.fixture(scope="session")
def drill_migration(drill_migration_outcome: MigrationOutcome) -> MigrateResult:
    """Alembic's result on the restored sandbox (see `drill_migration_outcome`)."""
    return drill_migration_outcome.result


@pytest.fixture(scope="session")
def drill_final_url(request: pytest.FixtureRequest, drill: DrillState,
                    drill_url: ConnInfo) -> ConnInfo:
    """The database the application would use: migrated when a migration is given."""
    if drill.options.migration() is not None:
        result: MigrateResult = request.getfixturevalue("drill_migration")
        if not result.ok:
            pytest.skip("not run: the migration failed")
    return drill_url


@pytest.fixture(scope="session")
def drill_engine(drill_final_url: ConnInfo, drill: DrillState,
                 request: pytest.FixtureRequest) -> Iterator[Any]:
    """A SQLAlchemy engine on the restored (and migrated) sandbox, for your own checks."""
    from sqlalchemy import create_engine

    _wait_for_analyze(request.config, drill)  # your queries planned with statistics

    engine = create_engine(drill_final_url.sqlalchemy_url)
    yield engine
    engine.dispose()


def _scan_tree(drill: DrillState) -> list[Backup]:
    """The drill's database's backups, through the catalog cache, as `atb db list` reads
    them (the schedule's judgment needs only the manifests' heads and what is judged live:
    sizes, drill verdicts), so a tree the drill's selection just scanned
    (`child.check_selection`) is not parsed again (0.2 s at 1,000 backups)."""
    return catalog.scan(drill.options.backup_dir, drill.database,
                        cache_dir=catalog_cache.default_dir())


@pytest.fixture(scope="session")
def drill_policy(drill: DrillState, drill_backup: Backup,
                 pytestconfig: pytest.Config) -> status.Status:
    """The backup tree judged against the schedule and RPO (scanned once per drill: by the
    plugin's own pick, else beside the restore, `drill_restore`, not after it in the RTO's
    checks phase, else here)."""
    scanning = pytestconfig.stash.get(TREE_SCAN, None)
    try:
        backups = drill.tree if drill.tree is not None else \
            scanning.result() if scanning is not None else _scan_tree(drill)
    except CancelledError:  # submitted, but still queued when a failed restore stopped what
        # ran beside it: the pool cancels what none of its threads had taken yet
        backups = _scan_tree(drill)
    model = forecast.fit(forecast.points([b for b in backups if b.source == drill_backup.source]))
    if model is not None:  # the drills recorded before this one: forecast against measured
        drill.rto_forecast = (round(model.rto(drill_backup.size), 3), model.how)
    return status.database_status(backups, database=drill.database, now=drill.started_at,
                                  schedule_s=drill.options.schedule_s,
                                  rpo_s=drill.options.rpo_target_s)


@pytest.fixture(scope="session")
def drill_rpo(drill: DrillState, drill_policy: status.Status) -> RpoFacts:
    """The RPO the backup schedule gives: the data lost in the worst case is the largest
    gap between two backups, and never less than the schedule's interval, so a single backup
    is judged from the configured schedule (none at all cannot be judged)."""
    drill.rpo = rpo_facts(drill_policy, target_s=drill.options.rpo_target_s,
                          schedule_s=drill.options.schedule_s)
    return drill.rpo


def rpo_facts(s: status.Status, *, target_s: float, schedule_s: float) -> RpoFacts:
    """The RPO judged on the schedule and the observed gaps together (pure)."""
    if s.backups == 0:
        return RpoFacts(target_s=target_s, summary=f"target {human(target_s)}; no complete "
                                                   "backup in the tree to judge it by")
    observed = s.largest_gap_s if s.backups >= 2 else None
    worst = max(observed or 0.0, schedule_s)
    met = worst <= target_s
    why = (f"largest gap between backups in the last {s.window_days:g} days "
           f"{human(observed)}, schedule every {human(schedule_s)}" if observed is not None
           else f"from the schedule, every {human(schedule_s)}: 1 complete backup, no gap "
                "observed yet")
    return RpoFacts(target_s=target_s, largest_gap_s=observed, newest_age_s=s.newest_age_s,
                    met=met, summary=f"target {human(target_s)}; worst case data loss "
                                     f"{human(worst)} ({why}): {'met' if met else 'NOT MET'}")


@pytest.fixture(scope="session")
def drill_rto(drill: DrillState, drill_final_url: ConnInfo,
              request: pytest.FixtureRequest) -> RtoOutcome:
    """The recovery time as measured up to a migrated, checked database: the "checks"
    phase runs from the end of the restore to now, less the migration and the wait for
    ANALYZE (both after the read-back: their own phases)."""
    _wait_for_analyze(request.config, drill)
    if drill.checks_started is not None:
        elapsed = time.monotonic() - drill.checks_started
        drill.phases["checks"] = round(drill.phases.get("checks", 0.0) + elapsed
                                       - drill.phases.get("migrate", 0.0)
                                       - drill.phases.get("analyze", 0.0), 3)
        drill.checks_started = None
    return RtoOutcome(phases=dict(drill.phases), measured_s=drill.rto_s())


@pytest.fixture(scope="session")
def drill_integration(drill: DrillState, drill_final_url: ConnInfo,
                      drill_sandbox: sandbox.SandboxInfo,
                      request: pytest.FixtureRequest) -> IntegrationOutcome:
    """The application's integration command, run isolated against the restored (and
    migrated) sandbox, its JUnit cases read back."""
    from drills import integration

    command = drill.options.integration_cmd
    if not command:
        pytest.skip("no --integration-cmd given")
    _wait_for_analyze(request.config, drill)
    confirmed = sandbox.confirm_sandbox(drill_final_url, drill_sandbox)
    with drill.phase("integration"):
        facts, how = integration.run_integration(
            command, drill_final_url, app=drill.options.app_env(_dialect(drill)),
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
