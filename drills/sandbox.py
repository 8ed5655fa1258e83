"""Disposable PostgreSQL for a drill: one interface, three providers.

- `local`: a throwaway cluster from the toolchain, unix socket only, tuned for restore speed.
- `docker`: testcontainers' PostgresContainer with `postgres:<source major>`.
- `server`: a uniquely named scratch database on an existing server, dropped afterwards.
- `auto`: docker when an engine answers within 2 s, else local.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import logging
import os
import secrets
import socket
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlsplit

import psycopg
from psycopg import sql

from backup_core import db, guard, toolchain
from backup_core.cluster import FAST_SETTINGS, Cluster
from backup_core.conninfo import ConnInfo
from backup_core.errors import AtbError, ConfigError, SafetyRefusal

log = logging.getLogger("atb.sandbox")
PROVIDERS = ("auto", "local", "docker", "server")


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

    @property
    def dbname(self) -> str:
        return self.url.dbname

    @property
    def for_tools(self) -> ConnInfo:
        return self.tools_url or self.url


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

@dataclass(frozen=True)
class DockerSpec:
    image: str
    username: str
    password: str
    dbname: str
    command: tuple[str, ...]


def docker_spec(source_major: int) -> DockerSpec:
    """The container a drill asks for: the source's major, durability off for speed."""
    settings = [f"-c{k}={v}" for k, v in FAST_SETTINGS.items()]
    return DockerSpec(image=f"postgres:{source_major}", username="postgres",
                      password=secrets.token_urlsafe(16), dbname="postgres",
                      command=("postgres", *settings))


def docker_endpoint() -> tuple[int, Any]:
    """(socket family, address) of the engine named by DOCKER_HOST, or the default socket."""
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    if host.startswith("unix://"):
        return socket.AF_UNIX, host[len("unix://"):]
    parsed = urlsplit(host.replace("tcp://", "http://", 1))
    return socket.AF_INET, (parsed.hostname or "localhost", parsed.port or 2375)


def docker_available(timeout: float = 2.0) -> bool:
    """True when a Docker engine answers `GET /_ping` within `timeout` seconds."""
    family, address = docker_endpoint()
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(address)
            sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            status = sock.recv(64)
            return status.startswith(b"HTTP/1.") and b" 200 " in status
    except OSError:
        return False


def _postgres_container_class() -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            from testcontainers.community.postgres import (
                PostgresContainer,
            )
        except ImportError:
            from testcontainers.postgres import PostgresContainer
    return PostgresContainer


@contextlib.contextmanager
def _docker(source_major: int, chains: list[toolchain.Toolchain]) -> Iterator[SandboxInfo]:
    spec = docker_spec(source_major)
    t0 = time.monotonic()
    if not docker_available():
        raise AtbError("the docker sandbox needs a Docker engine and none answers at "
                       f"{docker_endpoint()[1]}: start one, set DOCKER_HOST, or use "
                       "--sandbox local")
    cls = _postgres_container_class()
    try:
        container = cls(image=spec.image, username=spec.username, password=spec.password,
                        dbname=spec.dbname, driver=None)
    except Exception as exc:  # docker.errors.DockerException when no engine answers
        raise AtbError(f"the docker sandbox needs a Docker engine: {exc}; use --sandbox local")\
            from exc
    container.with_command(" ".join(spec.command))
    with container:
        admin = ConnInfo.make(dbname="postgres", host=container.get_container_host_ip(),
                              port=int(container.get_exposed_port(5432)), user=spec.username,
                              password=spec.password)
        yield _finish(admin, "docker", t0, _optional_chain(source_major, chains))


# -- local and server ------------------------------------------------------------------------

@contextlib.contextmanager
def _local(source_major: int, chains: list[toolchain.Toolchain]) -> Iterator[SandboxInfo]:
    t0 = time.monotonic()
    chain = toolchain.for_server(source_major, chains)
    with Cluster(chain, settings=dict(FAST_SETTINGS)) as cluster:
        yield _finish(cluster.url(), "local", t0, chain)


@contextlib.contextmanager
def _server(server: ConnInfo, production: ConnInfo | None,
            chains: list[toolchain.Toolchain]) -> Iterator[SandboxInfo]:
    guard.refuse_production_server(server, production)
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
        info = _finish(server, "server", t0, None, owner=name, app=app)
        major = int(info.server_version.split(".")[0])  # atb's own tools (pg_amcheck) run here
        yield replace(info, chain=_optional_chain(major, chains))
    finally:
        with db.connect(server, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(name)))
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))


def _finish(admin: ConnInfo, provider: str, t0: float, chain: toolchain.Toolchain | None, *,
            owner: str | None = None, app: ConnInfo | None = None) -> SandboxInfo:
    """Create the scratch database (owned by `owner`) and describe the sandbox."""
    name = owner or scratch_name()
    with db.connect(admin, autocommit=True) as conn:
        version = db.server_version(conn)
        create = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if owner:
            create = sql.SQL("{} OWNER {}").format(create, sql.Identifier(owner))
        conn.execute(create)
    url = (app or admin).with_dbname(name)
    ident = db.identity_of(url)
    if ident is None:
        raise SafetyRefusal(f"the sandbox database {name} cannot be reached as {url.redacted}")
    return SandboxInfo(provider=provider, server_version=version, url=url, identity=ident,
                       start_s=round(time.monotonic() - t0, 3), chain=chain,
                       tools_url=admin.with_dbname(name))


def _optional_chain(major: int, chains: list[toolchain.Toolchain]) -> toolchain.Toolchain | None:
    try:
        return toolchain.for_restore(major, chains)
    except AtbError:
        return None


def resolve_provider(kind: str, *, docker_probe: Any = docker_available) -> str:
    if kind not in PROVIDERS:
        raise ConfigError(f"--sandbox must be one of {', '.join(PROVIDERS)}, not {kind!r}")
    if kind == "auto":
        return "docker" if docker_probe() else "local"
    return kind


def open_sandbox(kind: str, *, source_major: int, chains: list[toolchain.Toolchain],
                 server: ConnInfo | None = None,
                 production: ConnInfo | None = None) -> contextlib.AbstractContextManager[
                     SandboxInfo]:
    """Context manager over the chosen provider; always torn down, on failure and Ctrl-C."""
    provider = resolve_provider(kind)
    log.info("sandbox provider: %s", provider)
    if provider == "docker":
        return _docker(source_major, chains)
    if provider == "server":
        if server is None:
            raise ConfigError("--sandbox server needs --sandbox-url (or ATB_SANDBOX_URL)")
        return _server(server, production, chains)
    return _local(source_major, chains)
