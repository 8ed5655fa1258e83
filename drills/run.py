"""`atb drill run`: the drill in a child pytest process, its result read back as JSON.

pytest is not started twice in one process; the child gets the production URL only as
`ATB_PRODUCTION_URL` (to refuse it), never as `DATABASE_URL`. Where the platform allows, the
child runs in new network and mount namespaces (`backup_core.tools.isolation`): its users' checks,
Alembic and the integration command reach only the sandbox, and it sees production only
through the read-only observer this process serves (`drills.observer`), with no password.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from backup_core.pitr import pgbackrest
from backup_core.reading import guard
from backup_core.store import catalog_cache
from backup_core.store.manifest import read_manifest
from backup_core.store.naming import manifest_path
from backup_core.store.verdicts import record_drill
from backup_core.tools import appenv, childenv, isolation, reaper, runner
from backup_core.tools.cluster import cache_root
from backup_core.tools.conninfo import ConnInfo, redact
from backup_core.tools.errors import AtbError, CommandFailed, ConfigError, ToolchainError
from backup_core.tools.isolation import Isolation
from backup_core.tools.relay import Relay
from drills import child, docker_engine, interrupts, observer, sandbox
from drills.console import ProgressFile
from drills.options import DrillOptions
from drills.result import DrillResult, verdict_of

log = logging.getLogger("atb.drill")
PRODUCTION_ENV = "ATB_PRODUCTION_URL"
# the isolation the child runs under, as JSON (level, reason, allowed), for its report
ISOLATION_ENV = "ATB_ISOLATION_FACTS"
# how the docker sandbox finds its engine and pgBackRest its repository (its credentials);
# the integration command gets none of them
TOOL_ENV_PREFIXES = ("DOCKER_", "TESTCONTAINERS_", "TC_", "PGBACKREST_")


# The plugins the drill's pytest child loads, by name: no other installed plugin is
# auto-loaded (PYTEST_DISABLE_PLUGIN_AUTOLOAD), so whatever else the host has installed
# neither changes the drill nor costs it (hypothesis's alone took a third of a small drill).
CHILD_PLUGINS = ("pytest_metadata.plugin", "pytest_html.fixtures", "pytest_html.plugin",
                 "drills.plugin")
# pytest's own plugins a drill has no use for, not even imported: the cache (nothing to
# remember between drills), doctests, JUnit XML, pastebin, and the unraisable-exception
# warnings, whose two full garbage collections at exit took a tenth of a small drill's end
CHILD_BLOCKED = ("cacheprovider", "doctest", "junitxml", "pastebin", "unraisableexception")


def drill_argv(options_file: Path) -> list[str]:
    """The drill's pytest child: its settings in `options_file` (`DrillOptions.to_json`)."""
    # Only the plugins it names (no autoloaded ones: hypothesis, xdist, ...), and none of the
    # project's own `addopts` (a `-n auto` for its suite would split one drill across workers).
    # `drills.child` is `-m pytest` with the same arguments, its sandbox begun before pytest
    # is imported
    plugins = [arg for name in CHILD_PLUGINS for arg in ("-p", name)]
    blocked = [arg for name in CHILD_BLOCKED for arg in ("-p", f"no:{name}")]
    return [sys.executable, "-m", "drills.child", "-o", "addopts=", *plugins, *blocked,
            "-v", "--no-header", "-rfEx", "--tb=short", "--drill",
            f"--drill-options={options_file}"]


def drill_env(options: DrillOptions, production: ConnInfo | None,
              base: Mapping[str, str] | None = None, *, iso: Isolation | None = None,
              observer_socket: Path | None = None, sandbox_url: str | None = None,
              prepared: Path | None = None) -> dict[str, str]:
    """The pytest child's sealed environment: production only as ATB_PRODUCTION_URL (to be
    recognised and refused), the sandbox server only as ATB_SANDBOX_URL. Isolated, the child
    gets production without its password (it asks the observer instead)."""
    extra: dict[str, str] = {}
    if production is not None and observer_socket is not None:
        # in the application's own form (its dialect prefix), which its code then gets
        extra[PRODUCTION_ENV] = replace(production, secrets=(), env=()).app_url()
        extra[observer.SOCKET_ENV] = str(observer_socket)
    elif production is not None:
        extra[PRODUCTION_ENV] = production.app_url()
        extra.update(dict(production.env))  # where its service= is defined
    if sandbox_url or options.sandbox_url:
        extra["ATB_SANDBOX_URL"] = sandbox_url or options.sandbox_url or ""
    if iso is not None:
        extra[ISOLATION_ENV] = json.dumps(iso.as_dict())
    if prepared is not None:
        extra[sandbox.PREPARED_ENV] = str(prepared)
    extra["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"  # the plugins it needs are on its argv
    # the catalog cache this process's checks read (`child.check_selection`), or none: the
    # child's schedule check scans through the same one (`drill_policy`), read-only: the
    # child never writes the host's trusted cache (isolated, it is bound read-only too)
    extra[catalog_cache.DIR_ENV] = str(catalog_cache.default_dir() or "off")
    extra[catalog_cache.READ_ONLY_ENV] = "1"
    source = os.environ if base is None else base
    extra.update({k: v for k, v in source.items() if k.startswith(TOOL_ENV_PREFIXES)})
    return childenv.sealed(extra, pass_env=options.pass_env, base=base)


def check_docker(options: DrillOptions) -> None:
    """`--sandbox docker` asked for explicitly: say before anything starts (exit 3) when no
    engine answers or it cannot have the image. The image is known here when it names no
    {major} or when --backup's manifest gives the major; else the drill finds out."""
    image: str | None = options.docker_image
    if image and "{major}" in image:
        major = None
        if options.backup is not None:
            with contextlib.suppress(AtbError, OSError):
                major = read_manifest(manifest_path(options.backup)).server_major
        image = docker_engine.image_for(image, major) if major else None
    engine = docker_engine.probe(image)
    if not engine.ok:
        raise ToolchainError(engine.refusal)


# directories pytest does not look into for checks (its `norecursedirs`, in short)
SKIPPED_DIRS = frozenset({"node_modules", "__pycache__", "venv", "build", "dist"})


def check_files(paths: tuple[Path, ...]) -> list[Path]:
    """The Python files pytest would import from `--checks`: each file given, and under
    each directory its test files and conftests."""
    found: list[Path] = []
    for path in paths:
        if path.is_file():
            found.append(path)
            continue
        for root, dirs, files in os.walk(path):
            dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in SKIPPED_DIRS)
            found += [Path(root) / f for f in sorted(files) if f == "conftest.py" or (
                f.endswith(".py") and (f.startswith("test_") or f.endswith("_test.py")))]
    return found


def check_check_files(paths: tuple[Path, ...]) -> None:
    """A check file that is not even Python is a configuration error (exit 2, one line
    naming it) before anything starts: compiled here, never run (your code runs only inside
    the drill's isolation, where one that fails to import is refused the same way)."""
    for file in check_files(paths):
        try:
            compile(file.read_bytes(), str(file), "exec", dont_inherit=True)
        except SyntaxError as exc:
            raise ConfigError(f"check file {file} cannot be collected: "
                              f"{type(exc).__name__}: {exc.msg} (line {exc.lineno})") from exc
        except (OSError, ValueError) as exc:
            raise ConfigError(f"check file {file} cannot be read: {exc}") from exc


def drill_isolation(options: DrillOptions) -> Isolation:
    """How the drill child can be isolated here: the platform's answer, unless the sandbox
    is a container on an engine the namespace cannot share."""
    iso = isolation.probe()
    if not iso.network:
        return iso
    if options.source == "pgbackrest":
        stanza = pgbackrest.Stanza(options.stanza or "", options.pgbackrest_config)
        remote = pgbackrest.remote_repository(stanza)
        if remote is None:
            return iso
        return Isolation(isolation.ENVIRONMENT_ONLY,
                         f"pgBackRest reaches its repository over the network ({remote}): a "
                         "network namespace would cut the drill off from it")
    if options.sandbox in ("docker", "auto"):
        where = docker_engine.engine_address()
        if options.sandbox == "auto" and not docker_engine.probe(None).ok:
            return iso  # auto becomes local: a cluster started inside the namespace
        if not docker_engine.shares_files(where):
            return Isolation(isolation.ENVIRONMENT_ONLY,
                             f"the Docker engine at {where} is not on this host's unix "
                             "socket: its container cannot be reached from inside a network "
                             "namespace")
    return iso


def check_drill(options: DrillOptions, *, production: ConnInfo | None = None,
                env: Mapping[str, str] | None = None) -> DrillOptions:
    """Every refusal of the drill's configuration, before anything starts (no sandbox's files
    copied, no child): `SafetyRefusal` (exit 8) for a sandbox server that is production's,
    `ConfigError` (exit 2) for the rest; the options with the backup picked once where the
    drill picks it here (`child.choose`)."""
    isolation.refuse_production_service(options.allow_service, production)
    appenv.refuse_production_env(options.pass_env, production, env)
    if options.sandbox == "server" and options.sandbox_url:
        guard.refuse_production_server(
            ConnInfo.parse(options.sandbox_url, what="ATB_SANDBOX_URL"), production,
            asserted=options.sandbox_is_not_production)
    check_catalog_cache(catalog_cache.default_dir(), drill_writes(options))
    if options.started is None:  # the drill's start in every form (`child.started_at`)
        options = replace(options, started=datetime.now(UTC).replace(microsecond=0))
    options = child.choose(options)  # the selection checked, and the backup picked once
    check_check_files(options.checks)
    sandbox.check_account(options)  # root, postgres's, the backups' owner: exit 2
    if options.sandbox == "docker" and options.source == "dump":
        check_docker(options)
    if options.source == "pgbackrest":  # before anything starts: exit 3 with no pgbackrest,
        # exit 2 for a stanza it does not know
        pgbackrest.info(pgbackrest.Stanza(options.stanza or "", options.pgbackrest_config))
    return options


def run_drill(options: DrillOptions, *, production: ConnInfo | None = None,
              on_line: Callable[[str], None] | None = None,
              env: Mapping[str, str] | None = None,
              on_event: Callable[[dict[str, Any]], None] | None = None,
              prepared: Path | None = None, checked: bool = False) -> DrillResult:
    """Run the drill and return its frozen result; raise `CommandFailed` when it could not
    even produce a result, and `SafetyRefusal` (exit 8), before anything starts, for a
    sandbox server that is production's. `prepared`: the sandbox's files already being
    copied (`sandbox.prepared_for`, begun by the caller, whose private directory is then the
    drill's scratch directory too: removed when the caller's block ends). `checked`: the
    caller ran `check_drill`, passes the options it returned, and began the copy where one
    is made (`prepared`; None: no copy for this drill)."""
    if not checked:
        options = check_drill(options, production=production, env=env)
    with contextlib.ExitStack() as stack:
        if prepared is None and not checked:  # first: the sandbox's files copied while
            # the isolation is probed and the child starts (a caller that checked began it)
            prepared = stack.enter_context(sandbox.prepared_for(options))
        if prepared is not None:  # the copy's private directory is the drill's scratch one
            tmp = str(prepared.parent)
        else:
            tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="atb-drill-"))
            reaper.mark_owner(Path(tmp))  # removed by the next drill if this one is killed
        iso = drill_isolation(options)
        # isolated, the child sees the backups read-only, so this process records the verdict
        record_here = iso.network and options.record
        result_file = Path(tmp) / "result.json"
        options_file = Path(tmp) / "options.json"
        # the child's phases come back as JSON lines in this file (drills.plugin.progress)
        progress_file = Path(tmp) / "progress.jsonl"
        options_file.write_text(replace(options, result_file=result_file,
                                        progress_file=progress_file if on_event else None,
                                        record=options.record and not record_here).to_json())
        argv = drill_argv(options_file)
        observer_socket, sandbox_url, allow = None, None, []
        if iso.network:
            if production is not None:
                observer_socket = stack.enter_context(observer.serve(production))
            if options.sandbox == "server" and options.sandbox_url:
                relay = stack.enter_context(Relay(ConnInfo.parse(
                    options.sandbox_url, what="ATB_SANDBOX_URL")))
                sandbox_url, allow = relay.url().secret_url, [str(relay.socket_path)]
            forward = {}
            for service in options.allow_service:  # let through: a relay outside, a
                host, port = isolation.split_service(service)  # listener inside
                out = stack.enter_context(Relay(ConnInfo.make(dbname="-", host=host,
                                                              port=port), raw=True))
                forward[service] = str(out.socket_path)
            # made now if it is not yet, so that it is bound read-only (never made inside)
            catalog = catalog_cache.default_dir()
            catalog_cache.prepare(catalog)
            argv, iso = isolation.wrap(argv, allow=allow, forward=forward,
                                       read_only=read_only_trees(options, Path(tmp),
                                                                 catalog=catalog))
        base = drill_env(options, production, env, iso=iso, observer_socket=observer_socket,
                         sandbox_url=sandbox_url, prepared=prepared)
        tail: collections.deque[str] = collections.deque(maxlen=40)
        if on_event is not None:
            stack.enter_context(ProgressFile(progress_file, on_event))
        # SIGHUP if atb dies (through the launcher of its namespaces too): the child tears
        # its sandbox down and ends, writing no report nobody would record (drills.child)
        proc = runner.spawn_text(argv, what="the drill", env=base,
                                 parent_death_signal=signal.SIGHUP)
        assert proc.stdout is not None
        interrupted = False
        try:
            try:
                follow(proc.stdout, tail, on_line)
            except KeyboardInterrupt:  # Ctrl-C: the child heeds the first SIGINT it gets
                interrupted = True  # (a terminal's, or this one), tears its sandbox down,
                proc.send_signal(signal.SIGINT)  # writes its reports: all followed here
                follow(proc.stdout, tail, on_line)
            code = proc.wait()
            if result_file.is_file():  # reported: a first Ctrl-C now waits for the record too
                interrupts.reported()
        except BaseException as exc:
            try:
                if not isinstance(exc, interrupts.Abandoned):  # (a third Ctrl-C waits no more)
                    proc.send_signal(signal.SIGINT)  # pytest tears the sandbox down on SIGINT
                    proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                pass
            finally:  # and killed if it has not ended (an Abandoned while waiting, too)
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            raise
        finally:
            proc.stdout.close()  # the pipe is ours: closed on every path, not by the collector
        if interrupted and not result_file.is_file():
            raise KeyboardInterrupt  # nothing was reported: nothing to record
        refused = Path(tmp) / "config-error.txt"  # drills.plugin.hooks.config_error_file
        if not result_file.is_file() and refused.is_file():
            raise ConfigError(refused.read_text().strip())
        if not result_file.is_file():
            if iso.network:  # the launcher (or `unshare` before it) may have refused: a
                isolation.forget_probe()  # kept yes is dropped, the next drill probes again
            raise CommandFailed("the drill did not produce a result (pytest exit "
                                f"{code}): {redact(tail[-1] if tail else '')}",
                                detail=redact("\n".join(tail)))
        result = DrillResult.from_dict(json.loads(result_file.read_text()))
    # a dump's verdict goes beside it; a pgBackRest recovery has no file to record beside
    if record_here and result.backup.path and options.source == "dump":
        try:
            record_drill(Path(result.backup.path),
                         verdict_of(result, interrupted=result.interrupted))
        except AtbError as exc:
            log.warning("could not record the verdict beside the backup: %s", exc)
    return result


def follow(lines: Iterable[str], tail: collections.deque[str],
           on_line: Callable[[str], None] | None) -> None:
    """The child's output, to its end: its last lines kept, each shown redacted."""
    for line in lines:
        tail.append(line.rstrip("\n"))
        if on_line:
            on_line(redact(line.rstrip("\n")))


def read_only_trees(options: DrillOptions, scratch: Path, *,
                    catalog: Path | None = None) -> list[str]:
    """The backup trees the drill reads, to be bound read-only in its namespace: application
    code run as root there cannot delete or change a backup. A tree that holds where the drill
    must write (its reports, its scratch directory) is left writable.

    `catalog`, the host's catalog cache directory (made before, `catalog_cache.prepare`), is
    bound read-only whenever it exists: code there could otherwise read its key and forge
    heads that the next list, prune or pick on the host would trust. One that holds where the
    drill writes cannot be, and is refused (exit 2) before the child starts."""
    trees = {options.backup_dir.resolve()}
    if options.backup is not None:
        trees.add(options.backup.resolve().parent)
    writes = drill_writes(options, scratch)
    bound = sorted(str(t) for t in trees if t.is_dir()
                   and not any(w == t or w.is_relative_to(t) for w in writes))
    if catalog is not None and catalog.is_dir():
        check_catalog_cache(catalog, writes)
        bound.append(str(catalog.resolve()))
    return bound


def drill_writes(options: DrillOptions, scratch: Path | None = None) -> tuple[Path, ...]:
    """Where the drill writes (resolved): its reports, its scratch directory (under the
    temporary directory until it is made), the temporary directory, atb's cache."""
    made = () if scratch is None else (scratch.resolve(),)
    return (options.report_dir.resolve(), *made, Path(tempfile.gettempdir()).resolve(),
            cache_root().resolve())


def check_catalog_cache(catalog: Path | None, writes: tuple[Path, ...]) -> None:
    """The host's catalog cache directory can be bound read-only in the drill's namespace:
    it holds none of `writes`, where the drill writes (exit 2 otherwise)."""
    if catalog is None:
        return
    cache = catalog.resolve()
    inside = [w for w in writes if w == cache or w.is_relative_to(cache)]
    if inside:
        raise ConfigError(f"the catalog cache {cache} (ATB_CATALOG_CACHE) holds {inside[0]}, "
                          "where the drill writes: it could not be read-only in the drill; "
                          "give the cache a directory of its own")
