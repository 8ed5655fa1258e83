"""The drill's configuration: the drill's settings read once (from
`--drill-options FILE`, or the pytest options and the ini), the backup chosen, and the checks
collected: the built-in ones, the user's own, and nothing of the project's test suite."""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import os
import types
from collections.abc import Callable, Generator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from backup_core.reading import guard
from backup_core.store import catalog, catalog_cache
from backup_core.store.catalog import Backup
from backup_core.tools import appenv, isolation, masking, toolchain
from backup_core.tools.conninfo import detach_libpq_environment, redact
from backup_core.tools.errors import AtbError, ConfigError
from drills import child, observer, pick, sandbox
from drills.failures import CheckFailed
from drills.options import DrillOptions, builtin_checks
from drills.plugin import dest, progress, sealed_threads
from drills.plugin.fixtures import STATE
from drills.result import (
    IsolationFacts,
)
from drills.state import INCOMPLETE, DrillState, ReportPaths

USER_CHECKS = pytest.StashKey[tuple[Path, ...]]()
CHECKS_MODULE = Path(__file__).parent.with_name("checks.py")
PITR_CHECKS_MODULE = Path(__file__).parent.with_name("pitr_checks.py")


def _dest(name: str) -> str:
    return dest(name)


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


def configure_drill(config: pytest.Config) -> None:
    """The drill's configuration, once a drill is asked for (`drills.plugin` calls it)."""
    # The drill owns the secrets it parses: its reports and log lines mask them.
    owner = contextlib.ExitStack()
    owner.enter_context(masking.owned(masking.Secrets()))
    config.add_cleanup(owner.close)
    try:
        options = _options(config)
    except AtbError as exc:
        raise pytest.UsageError(str(exc)) from exc
    scanned = None  # the whole tree as that check scanned it: not scanned again to pick
    # a typo in where the backups are, or a sandbox account that would own what the sandbox
    # must not touch: usage errors, before anything starts
    try:
        if not child.SELECTION_CHECKED:  # else `atb drill run` checked both (`check_drill`)
            scanned = child.check_selection(options)
            sandbox.check_account(options)
    except AtbError as exc:
        raise pytest.UsageError(str(exc)) from exc
    builtin = builtin_checks(options.source)  # the check functions, imported
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
    try:  # `atb drill run` refused it already; a direct `pytest --drill` is refused here
        appenv.refuse_production_env(options.pass_env, production)
    except ConfigError as exc:
        raise pytest.UsageError(str(exc)) from exc
    started = child.started_at(options, datetime.now(UTC))  # atb drill run's, when it ran us
    if options.source == "pgbackrest":  # the target is picked by drills.pitr_fixtures
        chosen, error, eligible, tree = None, None, 0, None
        from drills import pitr_fixtures
        config.pluginmanager.register(pitr_fixtures, "atb-pitr-fixtures")
    else:
        chosen, error, eligible, tree = _select(options, started, scanned)
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
    channel = progress.open_channel(config, options.progress_file,
                                    chosen.size if chosen else None)
    state.on_phase, state.on_note = channel.phase, channel.note
    config.stash[STATE] = state
    _CURRENT[:] = [(state, config)]
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
    builtin = _resolved(checks_module(state.options))

    def is_check(item: pytest.Item) -> bool:
        path = Path(str(item.path)).resolve()
        if path == builtin:
            return item.name not in state.options.exclude
        if any(path == p or p in path.parents for p in own):
            return True
        return item.get_closest_marker("drill") is not None

    dropped = [i for i in items if not is_check(i)]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = [i for i in items if i not in dropped]


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Generator[
        None, pytest.CollectReport, pytest.CollectReport]:
    """A check file (or its conftest) that cannot be imported or collected is the drill's
    configuration, not a verdict on the backup: the first one, in one line, ends the drill
    with no report and no record (`drills.plugin.recording`). pytest itself stops after
    collection when one failed, so no restore runs."""
    report = yield
    state = collector.config.stash.get(STATE, None)
    if report.failed and state is not None and state.collection_error is None:
        lines = [ln.strip() for ln in str(report.longrepr).splitlines() if ln.strip()]
        last = lines[-1].removeprefix("E").strip() if lines else "cannot be collected"
        state.collection_error = (f"check file {collector.path} cannot be collected: "
                                  f"{redact(last)}")
        no_page()  # its page is not written either
    return report


def no_page() -> None:
    """pytest-html writes no page for this drill (its configuration could not run, or
    `atb drill run` is gone)."""
    if not _CURRENT:
        return
    manager = _CURRENT[0][1].pluginmanager
    for plugin in manager.get_plugins():
        if type(plugin).__module__.startswith("pytest_html."):
            manager.unregister(plugin)


def current_state() -> DrillState | None:
    """This process's drill (one a process: pytest is not run twice in one), for the hooks
    that see no config."""
    return _CURRENT[0][0] if _CURRENT else None


_CURRENT: list[tuple[DrillState, pytest.Config]] = []


def config_error_file(result_file: Path | None) -> Path | None:
    """Where the child says the drill's configuration cannot run (one line), for
    `atb drill run` to exit 2 with it: beside its result file."""
    return result_file.with_name("config-error.txt") if result_file is not None else None


def conftest_refused(options_file: Path, conftest: Path, cause: BaseException) -> None:
    """A conftest that cannot be imported, said in one line where `atb drill run` reads it
    (`config_error_file`) for the drill given by `options_file`. Never raises: pytest's own
    error, which it is said beside, must stand whatever happens here."""
    try:
        result = json.loads(options_file.read_text()).get("result_file")
        where = config_error_file(Path(result)) if isinstance(result, str) else None
        if where is None:
            return
        why = (f"{cause.msg} (line {cause.lineno})" if isinstance(cause, SyntaxError)
               else str(cause))
        where.write_text(redact(f"conftest {conftest} cannot be imported: "
                                f"{type(cause).__name__}: {why}") + "\n")
    except Exception:  # pytest's own error is raised all the same, in its own words
        return


def pytest_itemcollected(item: pytest.Item) -> None:
    """Your check, in a network-isolated drill, runs in a thread that can open no unix
    socket, whatever its kind (a function, a method, a unittest case), and so does what it
    leaves to run at teardown (a seccomp filter binds one thread and what it starts; atb's own
    work in the main thread keeps its sockets: the Docker engine's, the sandbox's)."""
    state = item.config.stash.get(STATE, None)
    if state is not None:
        _plain_check_failures(item)
    if state is None or not isolation.already_inside() or not _yours(item.path, state):
        return
    runtest = item.runtest

    def sealed_runtest() -> None:
        if sealed_checks(state):
            sealed_threads.in_sealed_thread(runtest, name=f"atb-check-{item.name}")
        else:
            runtest()

    item.runtest = sealed_runtest  # type: ignore[method-assign]
    _seal_finalizers(item)


def _plain_check_failures(item: pytest.Item) -> None:
    """A check's `CheckFailed` is reported as its own sections (expected, found, the tool's
    output), not under a traceback into the check's source, which says nothing more: reading
    and parsing that source took a failing check ~50 ms of the drill's checks phase."""
    shown = item.repr_failure

    def repr_failure(excinfo: pytest.ExceptionInfo[BaseException], *args: Any,
                     **kwargs: Any) -> Any:
        if excinfo.errisinstance(CheckFailed):
            return excinfo.getrepr(style="value")
        return shown(excinfo, *args, **kwargs)

    item.repr_failure = repr_failure  # type: ignore[method-assign]


def pytest_collectstart(collector: pytest.Collector) -> None:
    """Your check files are collected in a sealed thread too, inside the drill's namespaces:
    imported (their module-level code), their parameters generated (`pytest_generate_tests`,
    `ids=`); the built-in checks are atb's own."""
    state = collector.config.stash.get(STATE, None)
    if state is None or isinstance(collector, pytest.Session) \
            or not isolation.already_inside() or not _yours(collector.path, state):
        return
    collect = collector.collect
    collector.collect = sealed_threads.sealed(  # type: ignore[method-assign]
        collect, name="atb-collect")


def _yours(path: Path, state: DrillState) -> bool:
    where = Path(str(path)).resolve()
    return where != _resolved(checks_module(state.options)) and sealed_threads.yours_at(where)


def _seal_finalizers(owner: Any) -> None:
    """What your code leaves to run later (`request.addfinalizer`) runs sealed too."""
    add = owner.addfinalizer

    def adding(finalizer: Callable[[], object]) -> None:
        add(sealed_threads.sealed(finalizer, name="atb-finalizer")
            if sealed_threads.yours(finalizer) else finalizer)

    object.__setattr__(owner, "addfinalizer", adding)


@pytest.hookimpl(wrapper=True)
def pytest_fixture_setup(fixturedef: Any, request: pytest.FixtureRequest) -> Any:
    """Your own fixtures (in your check files and their conftests) run sealed too, inside
    the drill's namespaces: setup and teardown each in a sealed thread."""
    if request.config.stash.get(STATE, None) is not None and isolation.already_inside():
        _seal_fixture(fixturedef)
    return (yield)


def _seal_fixture(fixturedef: Any) -> None:
    """Every fixture but atb's own: yours, and pytest's that call yours (`setup_module`,
    `setup_method`). A fixture method (of your test class) stays one: pytest binds it to the
    test's instance, so the method's function is sealed and bound as it was."""
    func = fixturedef.func
    plain = getattr(func, "__func__", func)
    if getattr(plain, "_atb_sealed", False) or inspect.iscoroutinefunction(plain) \
            or inspect.isasyncgenfunction(plain) or sealed_threads.atbs(plain):
        return
    wrapped = sealed_threads.sealed(plain, name="atb-fixture")
    object.__setattr__(fixturedef, "func", types.MethodType(wrapped, func.__self__)
                       if hasattr(func, "__self__") else wrapped)
    _seal_finalizers(fixturedef)


def sealed_checks(state: DrillState) -> bool:
    """Your checks run sealed inside the drill's namespaces, where every sandbox is reached
    on their loopback (`drill_url`)."""
    return state.sandbox is not None and isolation.already_inside()


@functools.cache
def _resolved(module: Path) -> Path:
    """One of atb's own check modules, resolved once: every collected item is compared with
    it (a resolve is a system call a path component)."""
    return module.resolve()


def checks_module(options: DrillOptions) -> Path:
    return PITR_CHECKS_MODULE if options.source == "pgbackrest" else CHECKS_MODULE


def _only_db(options: DrillOptions) -> str | None:
    names = [name for _, name in catalog.database_dirs(options.backup_dir)]
    return names[0] if len(names) == 1 else None


def _select(options: DrillOptions, now: datetime, scanned: list[Backup] | None = None,
            ) -> tuple[Backup | None, str | None, int, list[Backup] | None]:
    """(the backup to drill, why none could be, how many were eligible, the tree as scanned
    to pick from: the schedule is then judged on the same records, not on a second scan).
    Under `atb drill run` the pick was made there, once (`child.choose`): its choice is
    taken as it is, the tree scanned only when the schedule is judged. `scanned` is the whole
    tree as `child.check_selection` scanned it in this process (a direct `pytest --drill`):
    picked from, not scanned again; any other scan reads the tree through the catalog cache."""
    known = child.known_backup(options)  # --backup, or the pick `atb drill run` made
    if known is not None:
        found, error = known
        among = options.picked.among if options.picked and options.backup is None else 1
        return found, error, 0 if found is None else among, None
    cache = catalog_cache.default_dir()
    whole = scanned
    if scanned is None:
        backups = catalog.scan(options.backup_dir, options.database, cache_dir=cache)
    elif options.database is None:
        backups = scanned
    else:
        backups = catalog.of_database(scanned, options.backup_dir, options.database)
    try:  # the catalog filtered once
        chosen, eligible = pick.picked(backups, now=now, window_days=options.window_days,
                                       seed=options.seed, database=options.database)
    except pick.NothingToDrill as exc:
        eligible = len(pick.eligible(backups, now=now, window_days=options.window_days,
                                     database=options.database))
        why = str(exc)
        if options.database is not None and not any(b.is_backup for b in backups):
            if whole is None:
                whole = catalog.scan(options.backup_dir, cache_dir=cache)
            why = child.no_backup_of(options.database, options.backup_dir, whole)  # say where
        return None, f"{why} (looked in {options.backup_dir})", eligible, backups
    if not chosen.head_only:
        return chosen, None, eligible, backups
    drilled, error = child.read_whole(options.backup_dir, chosen.path)  # the cache kept a head
    return drilled, error, eligible, backups


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
    chains = child.found_chains() or toolchain.discover()  # not searched twice
    meta["Toolchains"] = ", ".join(f"{c.version} ({c.source})" for c in chains)
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


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    """Under `pytest --drill` too, an INCOMPLETE drill ends with what completes the next."""
    state = config.stash.get(STATE, None)
    if state is None or state.verdict() != INCOMPLETE:
        return
    from drills.plugin.recording import drill_result
    from drills.report import next_steps

    steps = next_steps(drill_result(config, state))
    if steps:
        terminalreporter.write_line("To make the next drill complete:")
        for step in steps:
            terminalreporter.write_line(f"  - {step}")
