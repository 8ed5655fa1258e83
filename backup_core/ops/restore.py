"""`atb db restore`: restore a dump into exactly the target database, never anywhere else.

Deliberately never passes `--create`: with it pg_restore connects to `-d` only to drop and
recreate the database named inside the dump, which on the production server replaces
production with the backup.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from psycopg import sql

from backup_core.ops import migrate, roles, split_copy
from backup_core.ops.migrate import MigrateResult, Migration, run_migration
from backup_core.ops.verify import roles_problem
from backup_core.reading import guard, toc
from backup_core.reading import target as target_db
from backup_core.reading.target import maintenance
from backup_core.store.manifest import ManifestError, read_manifest
from backup_core.store.naming import manifest_path, roles_path
from backup_core.tools import appenv, child_reads, childenv, toolchain
from backup_core.tools.commands import pg_restore_list_argv, pg_restore_read_items_argv
from backup_core.tools.conninfo import ConnInfo, redact
from backup_core.tools.errors import (
    AtbError,
    CommandFailed,
    ConfigError,
    ProductionTouched,
    SafetyRefusal,
    VerifyFailed,
)
from backup_core.tools.runner import Completed, first_error_line, run, spawn


@dataclass(frozen=True)
class RestoreResult:
    path: Path
    target: str
    created: bool
    jobs: int
    pg_restore_version: str
    duration_s: float
    migrate: MigrateResult | None = None
    # how production was told apart from the target, and confirmed unchanged after migrating
    guard: tuple[str, ...] = ()


def restore_argv(
    chain: toolchain.Toolchain, path: Path, conninfo: str, *, jobs: int, no_owner: bool,
    single_transaction: bool = False, section: str | None = None, use_list: Path | None = None,
) -> list[str]:
    """The pg_restore command line: a conninfo without secrets, never `--create` and never
    `--clean` (a non-empty target is replaced by swapping names, not by dropping objects).
    `section` and `use_list`: one section of the archive, of only the entries listed."""
    argv = [chain.tool("pg_restore"), f"--dbname={conninfo}", "--no-password",
            "--exit-on-error", "--verbose"]  # verbose: a failure can be traced to its object
    argv += ["--single-transaction"] if single_transaction else [f"--jobs={jobs}"]
    if no_owner:
        argv += ["--no-owner", "--no-privileges"]
    if section is not None:
        argv.append(f"--section={section}")
    if use_list is not None:
        argv.append(f"--use-list={use_list}")
    return [*argv, str(path)]


# Told of each table whose data a restore has committed, while it goes on (a scratch
# restore only): from then on no item of the restore changes that table's rows (triggers,
# rules and policies come in post-data; a partition's rows may be routed in by another
# item, so the reader still judges which tables it reads early). Called on the thread
# that reads pg_restore's output: it must return at once.
LoadedTable = Callable[[toc.TocEntry], None]

# not anchored: the jobs share one stderr, and the program's name and its message are
# written apart, so another job's "pg_restore: " may come first on the line
_FINISHED_DATA = re.compile(r"finished item (\d+) TABLE DATA ")
_DATA_STARTS = re.compile(r'^pg_restore: processing data for table "(.+)"$')
_NEXT_ITEM = re.compile(r"^pg_restore: (creating|executing|processing|restoring) ")


@dataclass
class LoadWatch:
    """Which TABLE DATA items a pg_restore has committed, from its `--verbose` stderr line by
    line (pure). In parallel mode the leader prints `finished item ID TABLE DATA tag` once
    the worker's transaction has committed (the tag alone: the id names the entry). With one
    job there is no such line: an item's data has committed when the next item starts
    (every statement commits on its own, unless `--single-transaction`, never watched)."""

    entries: dict[int, toc.TocEntry]
    parallel: bool
    _loading: toc.TocEntry | None = field(default=None, init=False)

    @classmethod
    def of(cls, entries: list[toc.TocEntry], *, parallel: bool) -> LoadWatch:
        return cls({e.dump_id: e for e in entries if e.desc == "TABLE DATA"}, parallel)

    def line(self, text: str) -> toc.TocEntry | None:
        """The entry whose data this line says has committed, if any."""
        if self.parallel:
            found = _FINISHED_DATA.search(text)
            entry = self.entries.get(int(found.group(1))) if found else None
            # the tag must follow: a name holding these words is not taken for the line
            return entry if found and entry and text[found.end():] == entry.tag else None
        if not _NEXT_ITEM.match(text):
            return None
        done, self._loading = self._loading, None
        starts = _DATA_STARTS.match(text)
        if starts:  # "schema.tag": a name that reads two ways is not reported at all
            named = [e for e in self.entries.values() if f"{e.schema}.{e.tag}" == starts[1]]
            self._loading = named[0] if len(named) == 1 else None
        return done


def _run_watched(argv: list[str], env: dict[str, str], watch: LoadWatch,
                 on_loaded: LoadedTable) -> Completed:
    """pg_restore with its stderr read as it comes (each committed table reported), and
    kept whole for the error message, as `run` keeps it."""
    proc = spawn(argv, what="pg_restore", stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                 env=env)
    lines: list[str] = []
    try:
        assert proc.stderr is not None
        for raw in iter(proc.stderr.readline, b""):
            text = raw.decode("utf-8", "replace")
            lines.append(text)
            entry = watch.line(text.rstrip("\n"))
            if entry is not None:
                on_loaded(entry)
        code = proc.wait()
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    finally:
        if proc.stderr is not None:
            proc.stderr.close()
    return Completed(tuple(argv), code, "", redact("".join(lines)))


def _pg_restore(chain: toolchain.Toolchain, path: Path, target: ConnInfo, *, jobs: int,
                no_owner: bool, single_transaction: bool = False, section: str | None = None,
                use_list: Path | None = None, on_loaded: LoadedTable | None = None,
                entries: list[toc.TocEntry] | None = None) -> None:
    """`on_loaded` (with the archive's `entries`): told of each table's committed data."""
    with childenv.for_tool(target) as (conninfo, tool_env):
        argv = restore_argv(chain, path, conninfo, jobs=jobs, no_owner=no_owner,
                            single_transaction=single_transaction, section=section,
                            use_list=use_list)
        if on_loaded is not None and entries is not None and not single_transaction:
            done = _run_watched(argv, tool_env, LoadWatch.of(entries, parallel=jobs > 1),
                                on_loaded)
        else:
            done = run(argv, what="pg_restore", env=tool_env, check=False)
    if done.returncode != 0:
        raise CommandFailed(f"pg_restore failed: {explain_failure(done.stderr, path, chain)}; "
                            "the target is unchanged", detail=done.stderr)


def _restore_or_drop(chain: toolchain.Toolchain, path: Path, target: ConnInfo, *, jobs: int,
                     no_owner: bool) -> None:
    """Restore into a database this run created, dropping it again if the restore fails.
    It carries the incomplete mark throughout: a kill -9 leaves a database that says so."""
    try:
        target_db.mark_incomplete(target, path.name)
        target_db.checkpoint("staging-created")
        _pg_restore(chain, path, target, jobs=jobs, no_owner=no_owner)
        target_db.checkpoint("restored")
    except BaseException:
        with contextlib.suppress(AtbError, psycopg.Error):
            target_db.drop(target)
        raise


def _restore_into(chain: toolchain.Toolchain, path: Path, target: ConnInfo, *, created: bool,
                  held: bool, scratch: bool, jobs: int, no_owner: bool,
                  evidence: list[str], split: bool = False,
                  on_loaded: LoadedTable | None = None) -> None:
    """The restore proper, in the one way that leaves no half-restored target behind."""
    if created:  # all or nothing: a failed restore drops the database it made
        target_db.create(target)
        _restore_or_drop(chain, path, target, jobs=jobs, no_owner=no_owner)
        target_db.clear_mark(target)  # the very last step: now it is complete
    elif not held and scratch:
        how = _restore_scratch(chain, path, target, jobs=jobs, no_owner=no_owner, split=split,
                               on_loaded=on_loaded)
        if how:
            evidence.append(how)
    elif not held:  # an empty database someone made: one transaction, rolled back on failure
        _pg_restore(chain, path, target, jobs=1, no_owner=no_owner, single_transaction=True)
    else:  # restore beside it, then swap names; the old one is kept until the user drops it
        staging = target.with_dbname(target_db.staging_name(target.dbname))
        target_db.create(staging, tablespace=target_db.properties(target).tablespace)
        _restore_or_drop(chain, path, staging, jobs=jobs, no_owner=no_owner)
        old = target_db.swap(target, staging.dbname)
        evidence.append(f"the previous {target.dbname} is kept as {old}: drop it when you no "
                        "longer need it")


def _restore_scratch(chain: toolchain.Toolchain, path: Path, target: ConnInfo, *, jobs: int,
                     no_owner: bool, split: bool, on_loaded: LoadedTable | None = None) -> str:
    """A database made for this restore alone (a drill's sandbox), restored in parallel.
    With `split`, its largest table's data, which one COPY would carry alone while the other
    jobs run out of work, is loaded over `jobs` sessions beside the rest (`split_copy`):
    the sections in turn, pre-data, data (pg_restore for the others and the split table's
    sessions side by side), post-data (indexes, constraints, foreign keys). `on_loaded` is
    told of each table as its data commits (the split table's when its sessions have all
    committed). Returns how, when split."""
    splitting = split and jobs > 1
    # listed once, for the split and the watch alike; an archive that cannot be listed is
    # restored unwatched, so pg_restore's own run names what is wrong with it
    listing = _listing(chain, path) if splitting or on_loaded is not None else None
    entries = toc.parse_listing(listing) if listing is not None else None
    entry = _split_entry(path, entries, jobs) if splitting and entries is not None else None
    if entry is None:
        _pg_restore(chain, path, target, jobs=jobs, no_owner=no_owner, on_loaded=on_loaded,
                    entries=entries)
        return ""
    assert listing is not None and entries is not None

    def load_split(stop: threading.Event, scratch_dir: Path) -> None:
        split_copy.load_split(chain, path, entry, target, sessions=jobs,
                              scratch_dir=scratch_dir, stop=stop)
        if on_loaded is not None:  # every session has committed
            on_loaded(entry)

    with tempfile.TemporaryDirectory(prefix="atb-restore-") as tmp:
        rest = Path(tmp) / "rest.list"
        rest.write_text("".join(f"{line}\n" for line in listing.splitlines()
                                if line.split(";", 1)[0].strip() != str(entry.dump_id)))
        _pg_restore(chain, path, target, jobs=1, no_owner=no_owner, section="pre-data")
        stop = threading.Event()  # the other tables failed: the split load ends too
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="atb-split") as side:
            loading = side.submit(load_split, stop, Path(tmp))
            try:
                _pg_restore(chain, path, target, jobs=jobs, no_owner=no_owner,
                            section="data", use_list=rest, on_loaded=on_loaded,
                            entries=entries)
            except BaseException:
                stop.set()
                raise
            loading.result()
        _pg_restore(chain, path, target, jobs=jobs, no_owner=no_owner, section="post-data")
    return (f"the data of {entry.schema}.{entry.tag} (the largest table) loaded over {jobs} "
            "COPY sessions beside pg_restore's")


def _listing(chain: toolchain.Toolchain, path: Path) -> str | None:
    """The archive's `pg_restore --list`, or None when it cannot be listed."""
    done = run(pg_restore_list_argv(chain, path), what="pg_restore --list", check=False)
    return done.stdout if done.returncode == 0 else None


def _split_entry(path: Path, entries: list[toc.TocEntry], jobs: int) -> toc.TocEntry | None:
    """The archive's largest table by the manifest's row counts, if worth splitting over
    `jobs` sessions (`split_copy.split_candidate`)."""
    try:
        counts = read_manifest(manifest_path(path)).row_counts
    except ManifestError:
        return None
    if not counts or max(counts.values()) < split_copy.MIN_ROWS:
        return None
    return split_copy.split_candidate(entries, counts, jobs=jobs)


def _roles_for(path: Path, target: ConnInfo) -> list[str]:
    try:
        manifest = read_manifest(manifest_path(path))
    except ManifestError as exc:
        raise ConfigError(f"cannot restore the backup's roles: {exc}") from exc
    if manifest.roles is None:
        raise ConfigError(f"{path.name} carries no roles (made before atb kept them): create "
                          "the roles by hand, or restore with --no-owner")
    problem = roles_problem(path, manifest.roles)
    if problem:
        raise VerifyFailed(f"cannot restore the backup's roles: {problem}")
    return roles.apply_roles(roles_path(path), target)


def _drop_roles(target: ConnInfo, names: list[str]) -> None:
    """Undo the roles a failed restore created (those that own nothing anywhere)."""
    for name in names:
        with contextlib.suppress(AtbError, psycopg.Error), maintenance(target) as conn:
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))


def default_jobs() -> int:
    return max(1, os.cpu_count() or 1)


def explain_failure(stderr: str, path: Path | None = None,
                    chain: toolchain.Toolchain | None = None) -> str:
    """pg_restore's failure in one line a user can act on, naming the object it failed on."""
    missing_role = re.search(r'role "([^"]+)" does not exist', stderr)
    if missing_role:
        return (f"role {missing_role.group(1)!r}, which owns or is granted objects in the dump, "
                "does not exist on the target server: restore with --with-roles (the backup "
                "keeps its roles), create it by hand, or pass --no-owner to restore without "
                "owners and grants")
    error = first_error_line(stderr).removeprefix("pg_restore: error: ")
    culprit = failing_object(stderr, path, chain)
    text = f"{error} (in {culprit})" if culprit and culprit not in error else error
    named = _named_damage(error, culprit, path, chain)
    return f"{named}: {text}" if named else text


_NOT_EXIST = re.compile(r'(schema|extension) "([^"]+)" does not exist')
_NOT_CREATED = re.compile(r"TOC entry \d+: (SCHEMA|EXTENSION) (?:- )?(\S+)")


def _named_damage(error: str, culprit: str, path: Path | None,
                  chain: toolchain.Toolchain | None) -> str:
    """A missing schema or extension, named as such: an error deep in some table or index
    (an operator class, `schema "public" already exists`) hides where it comes from."""
    lacks: list[str] = []
    if path is not None and chain is not None:
        with contextlib.suppress(ManifestError):
            m = read_manifest(manifest_path(path))
            listing = run(pg_restore_list_argv(chain, path), what="pg_restore --list",
                          check=False).stdout
            lacks = toc.lacking(toc.parse_listing(listing), m.inventory, m.definitions)
    if lacks:
        return f"the archive lacks {', '.join(lacks)}, recorded at backup time"
    found = _NOT_EXIST.search(error)
    if found:
        return f"{found.group(1)} {found.group(2)} is missing"
    entry = _NOT_CREATED.match(culprit)
    return f"{entry.group(1).lower()} {entry.group(2)} was not created" if entry else ""


_TOC_ENTRY = re.compile(r"from TOC entry (\d+); \d+ \d+ (.+?)(?: \S+)?$", re.MULTILINE)
_PROCESSING = re.compile(r'processing data for table "([^"]+)"')
_LAUNCH = re.compile(r"launching item (\d+) (.+)$", re.MULTILINE)
_FINISHED = re.compile(r"finished item (\d+) ", re.MULTILINE)
_BLOCK = re.compile(r"block ID (\d+)")


def failing_object(stderr: str, path: Path | None = None,
                   chain: toolchain.Toolchain | None = None) -> str:
    """The archive entry pg_restore was working on when it failed, from its verbose output:
    the TOC entry it names, the table whose data it was reading, the one item a parallel
    restore launched and never finished, or the entry a missing block ID belongs to."""
    head = stderr[: stderr.find("error:")] if "error:" in stderr else stderr
    named = _TOC_ENTRY.findall(stderr)
    if named:
        return f"TOC entry {named[-1][0]}: {named[-1][1]}"
    launched: dict[str, str] = dict(_LAUNCH.findall(head))
    if launched and path is not None and chain is not None:
        alone = _damaged_alone(chain, path, launched)
        if alone:
            return alone
    done = set(_FINISHED.findall(head))
    open_items = [what for n, what in launched.items() if n not in done]
    if len(open_items) == 1:
        return str(open_items[0])
    block = _BLOCK.search(stderr)
    if block and path is not None and chain is not None:
        listing = run(pg_restore_list_argv(chain, path), what="pg_restore --list",
                      check=False).stdout
        for line in listing.splitlines():
            if line.startswith(f"{block.group(1)}; "):
                return " ".join(line.split()[3:-1])
    processing = _PROCESSING.findall(head)
    return f"the data of table {processing[-1]}" if processing else ""


def _damaged_alone(chain: toolchain.Toolchain, path: Path, launched: dict[str, str]) -> str:
    """A parallel restore reads several items at once, and its error does not say whose
    data was damaged: each data item it launched is read again alone (into /dev/null,
    nothing restored), and the one that fails is named."""
    listing = run(pg_restore_list_argv(chain, path), what="pg_restore --list",
                  check=False).stdout
    entries = {e.dump_id: e for e in toc.parse_listing(listing)}
    data = [entries[int(n)] for n in launched
            if int(n) in entries and entries[int(n)].desc in toc.DATA_DESCS]
    with tempfile.TemporaryDirectory(prefix="atb-item-") as tmp:
        use = Path(tmp) / "item.list"
        for entry in data:
            use.write_text(f"{entry.dump_id};\n")
            done = run(pg_restore_read_items_argv(chain, path, use), what="pg_restore (one item)",
                       check=False)
            if done.returncode != 0:
                return (f"the data of table {entry.schema}.{entry.tag}"
                        if entry.desc == "TABLE DATA" else entry.text)
    return ""


def archive_major(path: Path, chains: list[toolchain.Toolchain]) -> int:
    """The pg_dump major that wrote `path`: from its manifest, else from its own header."""
    try:
        return read_manifest(manifest_path(path)).pg_dump_major
    except ManifestError:
        pass
    newest = toolchain.newest(chains, "pg_restore")
    out = run(pg_restore_list_argv(newest, path), what="pg_restore --list").stdout
    for line in out.splitlines():
        if "Dumped by pg_dump version:" in line:
            return int(line.split(":", 1)[1].strip().split(".")[0])
    return newest.major


@dataclass(frozen=True)
class RestoreRequest:
    """What to restore where, and how.

    `clean` lets a non-empty target be replaced (restored beside it and swapped in by name);
    `scratch` says the (empty) target was made for this restore alone, as a drill's sandbox
    is: it is restored in parallel, and with `split` its largest table's data over several
    sessions (`split_copy`; not what `atb db restore` does, so `--rto-faithful` leaves it
    out). `with_roles` first creates the roles the backup needs and
    the server lacks (see `roles`), so owners and grants restore on a new server.
    `migration` migrates the copy afterwards as the application does (its command or its
    Alembic, in its environment), watching `production` stay unchanged. `on_loaded`, for a
    `scratch` restore, is told of each table as its data commits, while the restore goes on
    (see `LoadedTable`): a drill reads a table back then."""

    path: Path
    target: ConnInfo
    production: ConnInfo | None = None
    allow_production: bool = False
    clean: bool = False
    jobs: int | None = None
    no_owner: bool = False
    migration: Migration | None = None
    scratch: bool = False
    split: bool = False
    with_roles: bool = False
    on_loaded: LoadedTable | None = None


def restore_backup(request: RestoreRequest, *,
                   chains: list[toolchain.Toolchain] | None = None,
                   progress: Callable[[str, int], None] | None = None) -> RestoreResult:
    """Restore `request.path` into `request.target` (created if missing), then optionally
    migrate it. Never leaves a half-restored target: a database it creates is dropped again
    on failure, an existing empty one is restored in one transaction, and a non-empty one
    (`clean`) is restored beside it and swapped in by name. `progress` gets each phase and
    the archive's bytes read so far (a terminal's line, as `backup` shows its own)."""
    req = request
    _check_request(req)
    evidence = [guard.refuse_system_database(req.target),
                guard.refuse_production_target(req.target, req.production,
                                               allowed=req.allow_production)]
    if req.migration is not None and not req.allow_production:
        evidence.append(guard.refuse_migrating_beside_production(req.target, req.production))
    chains = toolchain.discover() if chains is None else chains
    chain = toolchain.for_restore(archive_major(req.path, chains), chains)
    jobs = req.jobs or default_jobs()
    created, held = _target_state(req.target, clean=req.clean)
    t0 = time.monotonic()
    made_roles = _roles_for(req.path, req.target) if req.with_roles else []
    if made_roles:
        evidence.append(f"created the backup's roles {', '.join(made_roles)} on the target "
                        "server")
    elif req.with_roles:
        evidence.append("every role the backup needs exists on the target server")
    if req.clean and not created:
        earlier = target_db.leftovers(req.target)
        if earlier:
            evidence.append(f"left by earlier --clean restores of {req.target.dbname}: "
                            f"{', '.join(earlier)}: drop them when you no longer need them")
    try:
        with child_reads.reads_reported(
                None if progress is None else lambda n: progress("restore", n)):
            _restore_into(chain, req.path, req.target, created=created, held=held,
                          scratch=req.scratch, jobs=jobs, no_owner=req.no_owner,
                          evidence=evidence, split=req.split, on_loaded=req.on_loaded)
    except BaseException:
        _drop_roles(req.target, made_roles)
        raise
    duration = time.monotonic() - t0
    if progress is not None and req.migration is not None:
        progress("migrate", 0)
    migration = _migrate(req, evidence) if req.migration is not None else None
    return RestoreResult(path=req.path, target=req.target.redacted, created=created, jobs=jobs,
                         pg_restore_version=chain.version, duration_s=round(duration, 3),
                         migrate=migration, guard=tuple(evidence))


def _check_request(req: RestoreRequest) -> None:
    """Bad input refused before anything is touched."""
    if not req.path.is_file():
        raise ConfigError(f"no backup at {req.path}: give the path of a .dump file "
                          "(`atb db list`)")
    if not req.target.dbname:
        raise ConfigError(f"the target {req.target.redacted} names no database: add /dbname")
    if req.migration is not None:  # before anything is restored, not after
        ini = req.migration.ini
        if req.migration.command is None and ini is not None and not ini.is_file():
            raise ConfigError(f"Alembic config {ini} not found: pass "
                              "--alembic-config path/to/alembic.ini")
        appenv.refuse_production_env(req.migration.app.pass_env, req.production)
        migrate.check(req.migration)


def _target_state(target: ConnInfo, *, clean: bool) -> tuple[bool, bool]:
    """(created, held): whether the target must be created, and whether it holds anything
    (then only `clean` may replace it, and only with nobody connected)."""
    created = not target_db.exists(target)
    interrupted = None if created else target_db.incomplete(target)
    if interrupted and not clean:
        raise SafetyRefusal(f"target {target.redacted} holds an interrupted restore ("
                            f"{interrupted}): it is not a complete database; pass --clean to "
                            "replace it (it is kept aside), or drop it")
    closed = not created and not target_db.properties(target).allow_connections
    # a database that takes no connections cannot be looked into: treated as holding data
    held = {} if created else {"unknown contents (ALLOW_CONNECTIONS false)": 1} if closed \
        else target_db.contents(target)
    if interrupted:  # replaced by a swap like any database, whatever it holds
        held = {**held, "interrupted restore": 1}
    if held and not clean:
        kinds = ", ".join(f"{n} {k}" for k, n in held.items())
        raise SafetyRefusal(f"target {target.redacted} is not empty ({kinds}): restore into a "
                            "new database, or pass --clean to restore beside it and swap it in")
    connected = target_db.sessions(target) if held else 0
    if connected:
        raise SafetyRefusal(f"{connected} sessions are connected to {target.dbname}: --clean "
                            "swaps the restored copy in by renaming, so close them first "
                            "(nothing was changed)")
    return created, bool(held)


def _migrate(req: RestoreRequest, evidence: list[str]) -> MigrateResult:
    """The application's migration on the restored copy, with production watched throughout."""
    assert req.migration is not None
    watched = None if req.allow_production else req.production
    before = guard.observe(watched)
    migration = run_migration(req.migration, req.target)
    try:
        evidence.append(guard.confirm_unchanged(watched, before))
    except ProductionTouched as exc:
        state = f"NOT migrated: {migration.problem}" if migration.problem else "migrated"
        raise ProductionTouched(f"{exc}. The copy {req.target.redacted} is restored but "
                                f"{state}") from exc
    if migration.problem:
        raise CommandFailed(f"{req.target.redacted} is restored but NOT migrated: "
                            f"{migration.problem}", detail=migration.output)
    return migration
