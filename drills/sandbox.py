"""Disposable PostgreSQL for a drill: one interface, three providers.

- `local`: a throwaway cluster from the toolchain, unix socket only, tuned for restore speed.
- `docker`: testcontainers' PostgresContainer with `--docker-image` (`postgres:{major}`).
- `server`: a uniquely named scratch database on an existing server, dropped afterwards.
- `auto`: docker when an engine answers within 2 s and has (or can pull) the image, else
  local, saying why.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import logging
import os
import secrets
import socket
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from backup_core.reading import guard
from backup_core.reading.inventory import DatabaseLocale, read_locale
from backup_core.store.manifest import read_manifest
from backup_core.store.naming import manifest_path
from backup_core.tools import db, isolation, reaper, removal, toolchain
from backup_core.tools.cluster import (
    FAST_SETTINGS,
    Cluster,
    cache_root,
    point_in_time_account,
    preparing_lock,
    sandbox_account,
    write_marker,
)
from backup_core.tools.conninfo import ConnInfo
from backup_core.tools.errors import AtbError, ConfigError, ConnectionFailed, SafetyRefusal
from backup_core.tools.runner import run
from drills import docker_engine, observer
from drills.options import DrillOptions

log = logging.getLogger("atb.sandbox")
PROVIDERS = ("auto", "local", "docker", "server")
# where `atb drill run` says its drill child's local sandbox may find its data directory
# already copied (`preparing`); the child takes it out of its environment at once
PREPARED_ENV = "ATB_PREPARED_DATADIR"


@dataclass(frozen=True)
class SandboxInfo:
    """Where the drill restores: a database that exists only for this drill.

    `url` is what the drill and the application use; on a shared server it is a login role
    made for this drill alone, so the server's admin credentials stay in atb."""

    provider: str
    server_version: str
    url: ConnInfo
    identity: db.Identity
    start_s: float
    chain: toolchain.Toolchain | None = field(default=None, compare=False)
    # what atb's own tools (pg_amcheck) use; never handed to application code
    tools_url: ConnInfo | None = field(default=None, compare=False, repr=False)
    image: str = ""  # the docker provider's image
    note: str = ""  # why `auto` did not choose docker
    # the scratch database's encoding and locale, and why it is not production's (the
    # server lacks that locale), said before anything is restored
    locale: str = ""
    locale_missing: str = ""

    @property
    def dbname(self) -> str:
        return self.url.dbname

    @property
    def for_tools(self) -> ConnInfo:
        return self.tools_url or self.url


def reap() -> list[str]:
    """Every sandbox, local or docker, whose drill is gone: stopped and removed (one log line
    each). Docker's half lives here: the core never imports the Docker SDK. Not from inside
    the isolation: its PID namespace hides every owner, so all would look gone."""
    if isolation.already_inside():
        return []
    return [*reaper.reap_local(), *docker_engine.reap_docker()]


@contextlib.contextmanager
def reaping() -> Iterator[None]:
    """`reap` around a block: the local half now, the Docker half (the SDK's import and the
    engine's answer, most of its cost) on a thread that overlaps the block and is joined when
    it ends. A sandbox of a live drill is never reaped, so the order does not matter."""
    if isolation.already_inside():
        yield
        return
    reaper.reap_local()

    def reap_docker() -> None:  # the engine asked on the thread too: a slow one waits there
        if not local_engine_holds_none():  # else the SDK's import (0.2 CPU s) not needed
            docker_engine.reap_docker()

    thread = threading.Thread(target=reap_docker, name="atb-reap-docker", daemon=True)
    thread.start()
    try:
        yield
    finally:
        thread.join()


DEFAULT_DOCKER_SOCKET = "/var/run/docker.sock"


def engine_list_request(label: str) -> bytes:
    """The engine API's request for every container (running or not) carrying `label`
    (pure): the Docker SDK's `containers.list(all=True, filters={"label": label})`."""
    filters = urllib.parse.quote(json.dumps({"label": [label]}, separators=(",", ":")))
    return (f"GET /containers/json?all=1&filters={filters} HTTP/1.0\r\n"
            "Host: docker\r\n\r\n").encode()


def local_engine_holds_none(env: Mapping[str, str] | None = None, *,
                            timeout: float = 2.0) -> bool:
    """True only when the engine on this host's default unix socket answers that it holds
    no container of atb's: nothing to reap, so the Docker SDK need not be imported. Any
    other engine (DOCKER_HOST elsewhere, a Docker context), no answer, or any container of
    ours: False, and `reap_docker` looks as before."""
    env = os.environ if env is None else env
    host = env.get("DOCKER_HOST", "")
    if host and not host.startswith("unix://"):
        return False
    path = host.removeprefix("unix://") or DEFAULT_DOCKER_SOCKET
    config = Path(env.get("DOCKER_CONFIG") or Path.home() / ".docker") / "config.json"
    try:
        if not host and config.is_file() and json.loads(config.read_text()).get(
                "currentContext", "default") != "default":
            return False  # a context may name another engine: the SDK knows how to read it
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(path)
            sock.sendall(engine_list_request(reaper.OWNER_LABEL))
            reply = b""
            while chunk := sock.recv(65536):
                reply += chunk
    except (OSError, ValueError, AttributeError):
        return False
    head, _, body = reply.partition(b"\r\n\r\n")
    if not head.startswith((b"HTTP/1.0 200", b"HTTP/1.1 200")):
        return False
    try:
        return bool(json.loads(body) == [])
    except ValueError:
        return False


def scratch_name() -> str:
    return f"atb_drill_{secrets.token_hex(4)}"


def confirm_sandbox(url: ConnInfo, sandbox: SandboxInfo) -> str:
    """Fail loudly unless `url` really reaches the sandbox database; returns the evidence."""
    found = db.identity_of(url)
    if found is None or not found.same_database(sandbox.identity):
        raise SafetyRefusal(
            f"refusing to continue: {url.redacted} reaches {found or 'nothing'}, not the drill "
            f"sandbox {sandbox.identity}")
    return f"connected to sandbox {found}"


def scram_verifier(password: str, *, iterations: int = 4096) -> str:
    """A SCRAM-SHA-256 verifier, as psql's \\password computes it: the server (and its
    statement log) sees the verifier, never the password."""
    salt = os.urandom(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    server_key = hmac.new(salted, b"Server Key", "sha256").digest()
    stored_key = hashlib.sha256(client_key).digest()
    b64 = base64.b64encode
    return (f"SCRAM-SHA-256${iterations}:{b64(salt).decode()}${b64(stored_key).decode()}:"
            f"{b64(server_key).decode()}")


# -- docker ----------------------------------------------------------------------------------

@contextlib.contextmanager
def _docker(image: str, engine: docker_engine.Engine, source_major: int,
            chains: list[toolchain.Toolchain], locale: DatabaseLocale | None = None, *,
            faithful: bool = False
            ) -> Iterator[SandboxInfo]:
    t0 = time.monotonic()
    if not engine.ok:
        raise AtbError(engine.refusal)
    spec = docker_engine.container_spec(image, faithful=faithful)
    loopback = docker_engine.engine_is_local(engine.where)
    with contextlib.ExitStack() as stack:
        socket_dir = None
        if docker_engine.shares_files(engine.where):
            socket_dir = stack.enter_context(_socket_dir())
        container = docker_engine.postgres_container(spec, loopback=loopback,
                                                     socket_dir=socket_dir)
        try:
            container.start()
        except BaseException as exc:  # Ctrl-C while it starts, too: never leave a container
            container.stop()
            if not isinstance(exc, Exception):
                raise
            raise AtbError(f"the docker sandbox {image} did not start: "
                           f"{docker_engine.short_error(exc)}") from exc
        try:
            if socket_dir is not None:
                host, port = str(socket_dir), 5432
            else:
                host, port = docker_engine.address(container, loopback=loopback)
            admin = ConnInfo.make(dbname="postgres", host=host, port=port,
                                  user=spec.username, password=spec.password)
            info = _finish(admin, "docker", t0, _optional_chain(source_major, chains),
                           locale=locale)
            yield replace(info, image=image)
        finally:
            container.stop()


@contextlib.contextmanager
def _socket_dir() -> Iterator[Path]:
    """Where the container's server makes its socket: writable by the container's postgres
    (0777) inside a directory only we can enter (0700), removed afterwards."""
    private = Path(tempfile.mkdtemp(prefix="atb-docker-"))
    shared = private / "run"
    shared.mkdir()
    shared.chmod(0o777)
    try:
        yield shared
    finally:
        removal.discard(private)


# -- local and server ------------------------------------------------------------------------

def _local_cluster(chain: toolchain.Toolchain, locale: DatabaseLocale | None,
                   **settings: Any) -> Cluster:
    """The local sandbox's cluster, not yet started: its data directory is a copy of the
    initdb template for its server binary and production's locale (`cluster_locale`). Its
    server runs as `sandbox_account` (`ATB_SANDBOX_USER`, else `atb-sandbox`, else
    `nobody`), never `postgres`, whoever chose it: it runs what the restored archive holds
    as its superuser, files of the host included. (A point-in-time sandbox is not made
    here, but runs as such an account too: `backup_core.pitr.recovered`.)"""
    return Cluster(chain, locale=cluster_locale(locale, machine_locales()),
                   templates=cache_root() / "initdb", run_as=sandbox_account().name,
                   **settings)


def check_account(options: DrillOptions) -> None:
    """The account a drill's local sandbox would run as, checked before anything starts
    (`ConfigError`, exit 2, for one that is root or shares an owner with `postgres` or with
    the backups a dump drill reads, or with the repository's reader for a point-in-time
    drill); nothing to check when the drill makes no local sandbox. `--sandbox auto` is checked too,
    though Docker may serve it: whether it does is known only once the engine answers
    (`resolve_provider`, seconds later, mid-drill), and auto falls back to a local sandbox,
    so the account it would then run as is refused up front."""
    if options.source != "dump":  # point-in-time: always a local cluster (`pitr.recovered`)
        point_in_time_account()
        return
    if options.sandbox not in ("local", "auto"):
        return
    owners: dict[int, str] = {}
    for tree in (options.backup_dir, options.backup.parent if options.backup else None):
        with contextlib.suppress(OSError):
            if tree is not None:
                owners.setdefault(tree.stat().st_uid, f"the owner of the backups in {tree}")
    sandbox_account(owners=owners)


@contextlib.contextmanager
def _local(source_major: int, chains: list[toolchain.Toolchain],
           locale: DatabaseLocale | None = None, *, faithful: bool = False,
           prepared: Path | None = None) -> Iterator[SandboxInfo]:
    t0 = time.monotonic()
    chain = toolchain.for_server(source_major, chains)
    # inside the drill's namespaces: sealed, on the namespace's own loopback (nothing the
    # restored database runs, as its superuser can, opens a socket of the host); trusted
    # there as its socket is outside, since only the drill's processes share that loopback
    with _local_cluster(chain, locale, settings={} if faithful else dict(FAST_SETTINGS),
                        sealed=isolation.already_inside(), destroy_mode="immediate",
                        remove_later=True, prepared=prepared) as cluster:
        yield _finish(cluster.url(), "local", t0, chain, locale=locale)


@contextlib.contextmanager
def prepared_for(options: DrillOptions) -> Iterator[Path | None]:
    """For a drill whose child begins its local sandbox before pytest (`child.begin`: a dump
    named by --backup or picked by `child.choose`, with its manifest), that sandbox's data
    directory copied by this process while the child starts (`preparing`): the file the
    child waits for, or None. It is in a private directory (`atb-drill-*`, removed with the
    block, or by the next drill if this one is killed) that `run_drill` takes as the drill's
    scratch directory. The caller checked the sandbox's account (`run.check_drill`)."""
    known = options.early_dump  # --backup, or the pick, on a local sandbox (one decision)
    if known is None:
        yield None
        return
    try:
        manifest = read_manifest(manifest_path(known))
    except (AtbError, OSError, ValueError):
        yield None  # the child reads it again and says what is wrong
        return
    with tempfile.TemporaryDirectory(prefix="atb-drill-") as tmp:
        reaper.mark_owner(Path(tmp))
        marker = Path(tmp) / "prepared.json"
        with preparing(manifest.server_major,
                       DatabaseLocale.from_definitions(manifest.definitions), marker):
            yield marker


@contextlib.contextmanager
def preparing(source_major: int, locale: DatabaseLocale | None,
              marker: Path) -> Iterator[None]:
    """The local sandbox's data directory copied from its template on a thread of this
    process while the drill's child starts (an interpreter, its imports, pytest's): the
    child's cluster adopts it (`Cluster.prepared`, through `PREPARED_ENV`) when it was made
    for the same server and locale, else copies its own. Whatever nobody adopted is removed
    when the block ends, after the child."""
    made: list[Cluster] = []
    held = contextlib.ExitStack()
    # taken before the child exists, released once the marker is written or could not be
    # (a full disk): the child stops waiting when nobody holds it (`_await_marker`)
    held.enter_context(preparing_lock(marker))

    def work() -> None:
        with held:
            try:
                try:
                    chain = toolchain.for_server(source_major, toolchain.discover())
                    made.append(_local_cluster(chain, locale))
                except Exception as exc:  # no toolchain for it: the child says so, as before
                    write_marker(marker, {"failed": f"{type(exc).__name__}: {exc}"})
                    return
                made[0].prepare(marker)
            except OSError as exc:
                log.warning("could not say where the sandbox's data directory was copied "
                            "(%s): the drill makes its own", exc)

    thread = threading.Thread(target=work, name="atb-prepare-sandbox", daemon=True)
    try:
        thread.start()
    except BaseException:
        held.close()
        raise
    try:
        yield
    finally:
        thread.join()
        if made:
            made[0].discard_prepared()


def machine_locales() -> list[str]:
    """What `locale -a` lists: the locales a local cluster can be initialised with."""
    try:
        return run(["locale", "-a"], what="locale -a", timeout=10).stdout.split()
    except AtbError:
        return []


def cluster_locale(locale: DatabaseLocale | None, available: list[str]) -> str:
    """The locale a local sandbox's cluster is initialised with: production's collation
    where it is a UTF-8 locale this machine has (the name as `locale -a` spells it), else
    C. The drill's database takes production's locale either way; this makes the cluster's
    own defaults (its other databases, new ones) alike too."""
    if locale is None or locale.encoding != "UTF8" or locale.collate != locale.ctype:
        return "C"

    def key(name: str) -> str:
        return name.lower().replace("-", "").replace("_", "")

    return next((a for a in available if key(a) == key(locale.collate)
                 and "utf8" in key(a)), "C")


@contextlib.contextmanager
def _server(server: ConnInfo, production: ConnInfo | None,
            chains: list[toolchain.Toolchain], asserted: bool = False,
            locale: DatabaseLocale | None = None) -> Iterator[SandboxInfo]:
    checked = guard.refuse_production_server(server, production, asserted=asserted,
                                             observer=observer.current())
    t0 = time.monotonic()
    name = scratch_name()
    password = secrets.token_urlsafe(18)
    try:
        with db.connect(server, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                sql.Identifier(name), sql.Literal(scram_verifier(password))))
    except psycopg.Error as exc:
        raise SafetyRefusal(f"the sandbox server's user cannot create the drill's own login "
                            f"role ({exc.diag.message_primary or exc}): it needs CREATEROLE and "
                            "CREATEDB") from exc
    app = server.with_params(user=name).with_password(password)
    try:
        info = _finish(server, "server", t0, None, owner=name, app=app, locale=locale)
        major = int(info.server_version.split(".")[0])  # atb's own tools (pg_amcheck) run here
        yield replace(info, chain=_optional_chain(major, chains),
                      note=checked if checked.startswith(guard.ASSERTED) else "")
    finally:
        with db.connect(server, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(name)))
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))


def _finish(admin: ConnInfo, provider: str, t0: float, chain: toolchain.Toolchain | None, *,
            owner: str | None = None, app: ConnInfo | None = None,
            locale: DatabaseLocale | None = None) -> SandboxInfo:
    """Create the scratch database (owned by `owner`) with production's encoding and locale
    where the server has them, and describe the sandbox."""
    name = owner or scratch_name()
    missing = ""
    with db.connect(admin, autocommit=True) as conn:
        version = db.server_version(conn)
        create = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if owner:
            create = sql.SQL("{} OWNER {}").format(create, sql.Identifier(owner))
        if locale is not None:
            try:
                conn.execute(sql.SQL("{} {}").format(create, like_production(locale)))
            except psycopg.Error as exc:
                missing = (f"the sandbox server (PostgreSQL {version}) cannot create a database "
                           f"like production's ({locale.describe()}): "
                           f"{exc.diag.message_primary or exc}; restored under its defaults")
                log.warning("%s", missing)
                locale = None
        if locale is None:
            conn.execute(create)
    url, tools = (app or admin).with_dbname(name), admin.with_dbname(name)
    ident, made = _reached(url, name=name, read=url == tools)
    if ident is None:
        raise SafetyRefusal(f"the sandbox database {name} cannot be reached as {url.redacted}")
    if not made:  # the drill's own role is not atb's: the locale read as atb
        with db.connect(tools) as conn:
            made = _locale(conn, name)
    return SandboxInfo(provider=provider, server_version=version, url=url, identity=ident,
                       start_s=round(time.monotonic() - t0, 3), chain=chain,
                       tools_url=admin.with_dbname(name), locale=made,
                       locale_missing=missing)


def _reached(url: ConnInfo, *, name: str, read: bool) -> tuple[db.Identity | None, str]:
    """Who `url` reaches (None: nobody) and, `read`, the database's locale on the same
    connection (one connection fewer on the sandbox's start); a locale that cannot be read
    is its own error, not a sandbox that cannot be reached."""
    with contextlib.ExitStack() as stack:
        try:
            conn = stack.enter_context(db.connect(url, autocommit=True))
            ident = db.identity(conn)
        except (ConnectionFailed, psycopg.Error):
            return None, ""
        return ident, _locale(conn, name) if read else ""


def _locale(conn: psycopg.Connection[Any], name: str) -> str:
    """The sandbox database's encoding and locale, as the report says them."""
    try:
        return read_locale(conn).describe()
    except psycopg.Error as exc:
        raise AtbError(f"the locale of the sandbox database {name} could not be read: "
                       f"{exc}") from exc


def like_production(locale: DatabaseLocale) -> sql.Composed:
    """CREATE DATABASE's options for production's encoding and locale: from template0, the
    only template a database of another encoding or locale may copy."""
    parts = [sql.SQL("TEMPLATE template0 ENCODING {} LC_COLLATE {} LC_CTYPE {}").format(
        sql.Literal(locale.encoding), sql.Literal(locale.collate), sql.Literal(locale.ctype))]
    if locale.provider == "icu":
        parts.append(sql.SQL("LOCALE_PROVIDER icu ICU_LOCALE {}").format(
            sql.Literal(locale.locale)))
        if locale.icu_rules:
            parts.append(sql.SQL("ICU_RULES {}").format(sql.Literal(locale.icu_rules)))
    elif locale.provider == "builtin":
        parts.append(sql.SQL("LOCALE_PROVIDER builtin BUILTIN_LOCALE {}").format(
            sql.Literal(locale.locale)))
    return sql.SQL(" ").join(parts)


def _optional_chain(major: int, chains: list[toolchain.Toolchain]) -> toolchain.Toolchain | None:
    try:
        return toolchain.for_restore(major, chains)
    except AtbError:
        return None


def resolve_provider(kind: str, engine: docker_engine.Engine | None) -> tuple[str, str]:
    """The provider to use and, when `auto` could not use Docker, why (from the probe of
    `engine`, made once for both the choice and the container)."""
    if kind not in PROVIDERS:
        raise ConfigError(f"--sandbox must be one of {', '.join(PROVIDERS)}, not {kind!r}")
    if kind != "auto":
        return kind, ""
    assert engine is not None
    if engine.ok:
        return "docker", ""
    return "local", f"auto chose local: {engine.why}"


def open_sandbox(kind: str, *, source_major: int, chains: list[toolchain.Toolchain],
                 server: ConnInfo | None = None, production: ConnInfo | None = None,
                 docker_image: str | None = None, asserted: bool = False,
                 locale: DatabaseLocale | None = None, faithful: bool = False,
                 prepared: Path | None = None
                 ) -> contextlib.AbstractContextManager[SandboxInfo]:
    """Context manager over the chosen provider; always torn down, on failure and Ctrl-C.
    The scratch database takes `locale` (production's, from the manifest) where it can;
    `faithful`: the server's default settings, not the tuned ones (`--rto-faithful`);
    `prepared`: where a local cluster's data directory may be ready (`preparing`)."""
    image = docker_engine.image_for(docker_image, source_major)
    engine = docker_engine.probe(image) if kind in ("auto", "docker") else None
    provider, why = resolve_provider(kind, engine)
    log.info("sandbox provider: %s", provider)
    if provider == "docker":
        assert engine is not None
        return _docker(image, engine, source_major, chains, locale, faithful=faithful)
    if provider == "server":
        if server is None:
            raise ConfigError("--sandbox server needs --sandbox-url (or ATB_SANDBOX_URL)")
        return _server(server, production, chains, asserted, locale)
    if why:
        log.warning("%s", why)
        return _noted(_local(source_major, chains, locale, faithful=faithful), why)
    return _local(source_major, chains, locale, faithful=faithful, prepared=prepared)


@contextlib.contextmanager
def _noted(manager: contextlib.AbstractContextManager[SandboxInfo],
           note: str) -> Iterator[SandboxInfo]:
    """The local sandbox `auto` fell back to, carrying the reason into the report."""
    with manager as info:
        yield replace(info, note=note)
