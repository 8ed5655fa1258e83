"""The drill's pytest child, its sandbox begun before pytest is imported.

`atb drill run` starts `python -m drills.child PYTEST-ARGS`: for a dump drill on a
local sandbox this module reads `--drill-options`, then starts the sandbox on a thread of its
own (toolchains found, the initdb template copied, the server started) while the main thread
imports pytest, its plugins and the drill's parts and collects the checks: about half a second
of a small drill that was spent one after the other. The plugin's `pytest_sessionstart` adopts
the sandbox (`take`) when it was made for the backup the drill chose, with the same
settings; a sandbox nobody adopted is torn down before the process exits. Anything this
module cannot do early (another provider, no backup known: neither `--backup` nor the one
`atb drill run` picked, `choose`; a file it cannot read) is left to
the plugin, which then starts the sandbox with the session as before.

Only atb's own code runs on the early thread (the sandbox provider, the cluster): your
conftest files and checks are imported later, by pytest, in sealed threads as always
(`drills.plugin.sealed_threads`).
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import signal
import sys
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from backup_core.reading import inventory
from backup_core.store import catalog, catalog_cache
from backup_core.store.catalog import Backup
from backup_core.store.naming import DUMP_SUFFIX, MANIFEST_SUFFIX, taken_at
from backup_core.tools import cluster, toolchain
from backup_core.tools.conninfo import detach_libpq_environment
from backup_core.tools.errors import AtbError, ConfigError
from drills import pick, sandbox
from drills.options import DrillOptions, Picked

if TYPE_CHECKING:
    from drills.state import DrillState

OPTIONS_FLAG = "--drill-options="
# what the docker provider imports on first use (drills.docker_engine)
DOCKER_MODULES = ("docker", "docker.context", "docker.errors",
                  "testcontainers.community.postgres", "testcontainers.core.config",
                  "testcontainers.core.wait_strategies")


def preload(names: tuple[str, ...]) -> None:
    """Modules the sandbox's thread would import, imported first on this one: two threads
    importing at once can see a module half made (Python lets one of them through a module
    still initialising, to break a lock cycle): `module 'requests' has no attribute
    'exceptions'`."""
    for name in names:
        with contextlib.suppress(ImportError):
            importlib.import_module(name)


class SandboxStart:
    """The sandbox starting on a thread of its own, begun as the backup's verification begins
    (or earlier, `begin`): neither needs the other, so a drill waits for the longer of the
    two, not their sum. A sandbox started for a backup that then fails its verification, or
    that no drill adopted, is torn down unused."""

    def __init__(self, open_manager: Callable[[], AbstractContextManager[sandbox.SandboxInfo]],
                 kind: str) -> None:
        if kind in ("docker", "auto"):
            preload(DOCKER_MODULES)
        self.manager: AbstractContextManager[sandbox.SandboxInfo] | None = None
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="atb-sandbox")
        self.future = self.pool.submit(self._enter, open_manager)

    def _enter(self, open_manager: Callable[[], AbstractContextManager[sandbox.SandboxInfo]]
               ) -> sandbox.SandboxInfo:
        manager = open_manager()
        info = manager.__enter__()
        self.manager = manager  # only a sandbox that started is torn down
        return info

    def wait(self) -> sandbox.SandboxInfo:
        return self.future.result()

    def close(self, drill: DrillState | None) -> None:
        """Tear the sandbox down once it started (once: later calls do nothing); timed as
        the drill's teardown phase when there is a drill."""
        self.pool.shutdown(wait=True)
        manager, self.manager = self.manager, None
        if manager is None:
            return
        if drill is None:
            manager.__exit__(None, None, None)
            return
        with drill.phase("sandbox teardown"):
            manager.__exit__(None, None, None)


@dataclass
class Early:
    """A sandbox begun before pytest, for `backup` with `options`' provider and settings."""

    backup: Path
    sandbox: str
    faithful: bool
    chains: Future[list[toolchain.Toolchain]]
    start: SandboxStart
    taken: bool = False
    # the catalog's record of `backup` (its manifest read once) under `backup_dir`
    found: Backup | None = None
    backup_dir: Path | None = None


PENDING: Early | None = None
# whether `check_selection` ran before this process (`atb drill run` checks it, then starts
# `python -m drills.child`; a direct `pytest --drill` has it checked by the plugin)
SELECTION_CHECKED = False
# The interpreter's switch interval while the sandbox starts beside pytest's imports: the
# sandbox's thread mostly waits (on its programs, the server, the disk), and each time it
# wakes it needs the interpreter lock the importing thread holds; by default it waits up to
# 5 ms for it, dozens of times (a convoy: its start took 1.3-1.7 s instead of 0.9-1.1 s
# under load). Restored once the sandbox is up.
EARLY_SWITCH_S = 0.0005


def options_file(argv: list[str]) -> Path | None:
    """The `--drill-options=FILE` of a pytest command line (as `drills.run.drill_argv`
    writes it), or None (pure)."""
    found = [a.removeprefix(OPTIONS_FLAG) for a in argv if a.startswith(OPTIONS_FLAG)]
    return Path(found[-1]) if found else None


def check_selection(options: DrillOptions) -> list[Backup] | None:
    """A typo in where the backups are is the configuration's, not the backup's: refused
    (`ConfigError`, exit 2) before a report name is claimed, a sandbox started or anything
    recorded. `--backup` must name a dump of ours (the manifest's `.json` names its dump),
    outside the tree one beside its manifest; without it, the backup tree must exist, not be
    a level off the real one, and hold a `--database` unless it was drilled before. Returns
    the tree as scanned to judge that (without `--backup`), for `choose` to pick from."""
    from backup_core.store.manifest import ManifestError, read_manifest
    from backup_core.store.naming import manifest_path, printable

    if options.source != "dump":
        return None
    given = options.backup
    if given is None:
        if not options.backup_dir.is_dir():
            raise ConfigError(f"BACKUP_DIR (--backup-dir) {options.backup_dir}: no such "
                              "directory")
        # through the catalog cache, as `atb db list` reads the tree: a warm one parses no
        # manifest again (a tree of 2,000 backups took 0.3 s a scan without it)
        found = catalog.scan(options.backup_dir, cache_dir=catalog_cache.default_dir())
        hint = catalog.real_tree(found, root=options.backup_dir)  # as list and status say
        if hint:
            raise ConfigError(hint)
        name = options.database
        if name is not None and any(b.is_backup for b in found) \
                and not catalog.database_dirs(options.backup_dir, name):
            from drills import ledger

            # a name never drilled, beside others, is a typo; one drilled before has lost
            # its backups (and an empty tree is backups not being taken): the drill FAILs
            if not ledger.drilled(options.report_dir, name):
                raise ConfigError(f"--database {printable(name)}: "
                                  f"{no_backup_of(name, options.backup_dir, found)}, and no "
                                  "drill of it is in the ledger")
        return found
    if given.name.endswith(MANIFEST_SUFFIX) and taken_at(
            given.with_name(given.name[:-len(MANIFEST_SUFFIX)] + DUMP_SUFFIX)) is not None:
        dump = given.with_name(given.name[:-len(MANIFEST_SUFFIX)] + DUMP_SUFFIX)
        raise ConfigError(f"--backup {given} is a backup's manifest: give its dump, {dump}")
    if not given.is_file():
        raise ConfigError(f"--backup {given}: " + (
            "a directory, not a backup file" if given.is_dir() else "no such file"))
    if taken_at(given) is None or not given.name.endswith(DUMP_SUFFIX):
        raise ConfigError(f"--backup {given} is not an atb backup (a "
                          "backup-YYYYMMDDTHHMMSSZ.dump beside its manifest)")
    try:
        parts = given.resolve().relative_to(options.backup_dir.resolve()).parts
    except ValueError:
        parts = ()
    if pick.filed(parts):  # its directory names its database; a manifest missing there is
        return None  # the backup's fault: the drill FAILs its integrity check
    try:  # outside the tree, its manifest alone says which database it holds
        read_manifest(manifest_path(given))
    except ManifestError as exc:
        raise ConfigError(f"--backup {printable(str(given))}: {exc}: the drill cannot tell "
                          "which database it holds; give a dump beside the manifest `atb db "
                          "backup` wrote with it") from exc
    return None


def no_backup_of(database: str, backup_dir: Path, found: list[Backup] | None = None) -> str:
    """Why the tree has no backup of `database` to drill, in the words `pick.none_of` makes
    true of it (whether it has the database's directory; the databases it does hold, from
    `found`, the whole tree as scanned, else scanned here): the one wording of the refusal
    before the drill (`check_selection`, exit 2) and of the drill's report
    (`drills.plugin.hooks`)."""
    if found is None:  # through the catalog cache, as every other scan of the tree here
        found = catalog.scan(backup_dir, cache_dir=catalog_cache.default_dir())
    return pick.none_of(database, filed=bool(catalog.database_dirs(backup_dir, database)),
                        held=sorted({b.database for b in found if b.is_backup}))


def picks(options: DrillOptions) -> bool:
    """Whether `atb drill run` picks the drill's backup itself (`choose`): a dump drill on a
    local sandbox, without `--backup`, not picked yet (pure)."""
    return options.source == "dump" and options.sandbox == "local" \
        and options.backup is None and options.picked is None


def choose(options: DrillOptions, now: datetime | None = None) -> DrillOptions:
    """The selection checked (`check_selection`), and for a dump drill on a local sandbox
    without `--backup`, the backup picked: by the plugin's own pick (`drills.pick`, the seed,
    the window counted from the drill's start, `started_at`) over the tree that check just
    scanned, handed to the child (`picked`) so that its sandbox is begun early for it
    (`early_target`, `sandbox.prepared_for`) and its plugin drills it without scanning or
    picking again. A tree with nothing to pick is left to the plugin, which says why in the
    drill's report, as before. Options already picked for are returned as they are."""
    if options.picked is not None and options.backup is None:
        return options  # checked and picked by whoever picked it
    found = check_selection(options)
    if options.backup is not None:  # --backup wins over a pick handed before it
        return replace(options, picked=None) if options.picked is not None else options
    if found is None or not picks(options):
        return options
    try:
        chosen, among = pick.picked(found, now=started_at(options, now or datetime.now(UTC)),
                                    window_days=options.window_days, seed=options.seed,
                                    database=options.database)
    except pick.NothingToDrill:
        return options
    return replace(options, picked=Picked(path=chosen.path, among=among))


def started_at(options: DrillOptions, now: datetime) -> datetime:
    """When the drill started, to the second: the instant `atb drill run` took for it
    (`DrillOptions.started`, in every form: the report's start, the ledger's, and what the
    window of a pick's "random among N" and the schedule's judgment count from, so that the
    report's seed and start pick the same backup again); else `now` (pure)."""
    if options.started is not None:
        return options.started
    return now.astimezone(UTC).replace(microsecond=0)


def given_backup(backup: Path, backup_dir: Path) -> tuple[Backup | None, str | None]:
    """The backup `--backup` names, as the catalog judges it, or why there is none to drill:
    the one choice both the early sandbox (`early_target`) and the plugin's selection
    (`drills.plugin.hooks`) make, so the sandbox begun early is the one the drill adopts."""
    path = backup.resolve()
    if not path.is_file():
        return None, f"no backup at {backup}"
    early = PENDING  # the record the early sandbox was begun for: its manifest not read twice
    if early is not None and early.found is not None and early.found.path == path.absolute() \
            and early.backup_dir == backup_dir:
        return early.found, None
    found = catalog.find(backup_dir, path)
    if found is None:
        return None, f"{backup} is not named like an atb backup (backup-YYYYMMDDTHHMMSSZ.dump)"
    return found, None


def known_backup(options: DrillOptions) -> tuple[Backup | None, str | None] | None:
    """The backup a dump drill drills when it is known before its plugin runs (`--backup`,
    or the one `atb drill run` picked: `choose`), as the catalog judges it, or why there is
    none; None when the plugin is to pick it. The one reading both the early sandbox
    (`early_target`) and the plugin's selection make."""
    if options.source != "dump":
        return None
    if options.backup is not None:
        return given_backup(options.backup, options.backup_dir)
    picked = options.picked
    if picked is None:
        return None
    early = PENDING  # the record the early sandbox was begun for: its manifest not read twice
    if early is not None and early.found is not None and early.found.path == picked.path \
            and early.backup_dir == options.backup_dir:
        return early.found, None
    return read_whole(options.backup_dir, picked.path)


def read_whole(backup_dir: Path, path: Path) -> tuple[Backup | None, str | None]:
    """The picked backup at `path` read whole from its manifest (a pick from cached heads
    holds no row counts), or why it cannot be drilled; named as the tree's scan named it,
    as the reports did when the plugin picked."""
    found = catalog.find(backup_dir, path)
    if found is None or not found.complete:
        return None, f"the backup picked, {path}, is gone or no longer complete"
    return replace(found, path=path), None


def early_target(options: DrillOptions) -> Backup | None:
    """The catalog's record of the backup whose sandbox is begun before pytest, when one is
    (`DrillOptions.early_dump`, the decision `sandbox.prepared_for` makes too)."""
    if options.early_dump is None:
        return None
    known = known_backup(options)
    return known[0] if known is not None else None


def found_chains() -> list[toolchain.Toolchain] | None:
    """The toolchains the early sandbox's thread found (its first step), waited for; None
    when no sandbox was begun early or its search failed (the caller then searches)."""
    early = PENDING
    if early is None:
        return None
    try:
        return early.chains.result()
    except Exception:  # its own error is the sandbox's, reported when it is waited for
        return None


def begin(argv: list[str], env: dict[str, str] | os._Environ[str]) -> Early | None:
    """The sandbox for the drill `argv` describes, starting on its thread; None when it
    cannot be begun early (the plugin then starts it with the session)."""
    prepared = prepared_marker(env)
    path = options_file(argv)
    if path is None:
        return None
    try:
        text = path.read_text()
        if json.loads(text).get("exclude"):  # `early_dump` says no; and not parsed: checking
            return None  # --exclude's names imports the checks before pytest can rewrite them
        options = DrillOptions.from_json(text, env)
        backup = early_target(options)
    except (AtbError, OSError, ValueError):
        return None  # the plugin reads them again and says what is wrong
    if backup is None or backup.manifest is None:  # no manifest: the plugin reads the
        return None  # archive's header for its major, as before
    manifest = backup.manifest
    # as the plugin does before its sandbox connects: no ambient PG* variable steers the
    # sandbox's connections (kept aside to recognise production, `conninfo`)
    detach_libpq_environment()
    chains: Future[list[toolchain.Toolchain]] = Future()

    def open_manager() -> AbstractContextManager[sandbox.SandboxInfo]:
        try:
            found = toolchain.discover()
        except BaseException as exc:
            chains.set_exception(exc)
            raise
        chains.set_result(found)
        return sandbox.open_sandbox(
            "local", source_major=manifest.server_major, chains=found,
            locale=inventory.DatabaseLocale.from_definitions(manifest.definitions),
            faithful=options.rto_faithful, prepared=prepared)

    return Early(backup=backup.path, sandbox=options.sandbox, faithful=options.rto_faithful,
                 chains=chains, start=SandboxStart(open_manager, options.sandbox),
                 found=backup, backup_dir=options.backup_dir)


def prepared_marker(env: dict[str, str] | os._Environ[str]) -> Path | None:
    """Where `atb drill run` says the sandbox's data directory is being copied
    (`sandbox.preparing`), taken out of the environment: nothing the drill runs needs it."""
    value = env.pop(sandbox.PREPARED_ENV, "")
    return Path(value) if value else None


def take(backup: Backup, options: DrillOptions) -> Early | None:
    """The early sandbox, adopted by the drill when it was made for this `backup` with these
    settings; else None (one made for another backup is torn down now)."""
    early = PENDING
    if early is None or early.taken:
        return None
    if early.backup != backup.path or early.sandbox != options.sandbox \
            or early.faithful != options.rto_faithful:
        early.taken = True
        early.start.close(None)
        return None
    early.taken = True
    return early


def interrupt_once(signum: int, frame: object) -> None:
    """The first SIGINT (or SIGHUP) interrupts the drill; the ones after it are ignored, so
    that its teardown and reports are not cut short: a Ctrl-C reaches this process from the
    terminal, from `atb drill run` and from each launcher of its namespaces, all at once.
    SIGHUP is `atb drill run` gone (its parent-death signal, `kill -9`): nobody will record
    the drill, so the sandbox is torn down and no report is written (ORPHANED)."""
    global ORPHANED
    for sig in INTERRUPTS:
        signal.signal(sig, signal.SIG_IGN)
    ORPHANED = signum == signal.SIGHUP
    if ORPHANED:  # nobody reads our output any more: a write must not fail the teardown
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        os.close(devnull)
    raise KeyboardInterrupt


INTERRUPTS = (signal.SIGINT, signal.SIGHUP)
# `atb drill run` died (SIGHUP, its parent-death signal): tear down, report nothing
ORPHANED = False


def main(argv: list[str]) -> int:
    """Begin the sandbox, run pytest on `argv` (as `python -m pytest` would), and tear down
    a sandbox nobody adopted."""
    global PENDING, SELECTION_CHECKED
    SELECTION_CHECKED = True  # by `atb drill run`, before it started this child
    for sig in INTERRUPTS:
        signal.signal(sig, interrupt_once)
    PENDING = begin(argv, os.environ)
    if PENDING is not None:  # until the sandbox is up (see EARLY_SWITCH_S)
        default = sys.getswitchinterval()
        sys.setswitchinterval(EARLY_SWITCH_S)
        PENDING.start.future.add_done_callback(lambda _: sys.setswitchinterval(default))
    try:
        import pytest  # imported now, beside the sandbox's start

        sys.argv[1:] = argv
        return pytest.console_main()
    finally:
        if PENDING is not None and not PENDING.taken:
            PENDING.taken = True
            PENDING.start.close(None)
        cluster.await_removals()  # the sandbox's files, removed while the reports were written


if __name__ == "__main__":  # run as `drills.child`, not `__main__`: the plugin reads PENDING
    from drills import child
    from drills.leave import leave

    leave(child.main(sys.argv[1:]))  # no interpreter teardown for the parent to wait for
