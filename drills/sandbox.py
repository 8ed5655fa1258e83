"""Disposable PostgreSQL for a drill: one interface, three providers.

- `local`: a throwaway cluster from the toolchain, unix socket only, tuned for restore speed.
- `docker`: testcontainers' PostgresContainer with `postgres:<source major>`.
- `server`: a uniquely named scratch database on an existing server, dropped afterwards.
- `auto`: docker when an engine answers within 2 s, else local.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import socket
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from psycopg import sql

from backup_core import db, toolchain
from backup_core.cluster import FAST_SETTINGS, Cluster
from backup_core.conninfo import ConnInfo
from backup_core.errors import AtbError, ConfigError, SafetyRefusal
from backup_core.restore import same_database

log = logging.getLogger("atb.sandbox")
PROVIDERS = ("auto", "local", "docker", "server")


@dataclass(frozen=True)
class SandboxInfo:
    """Where the drill restores: a database that exists only for this drill."""

    provider: str
    server_version: str
    admin: ConnInfo
    dbname: str
    identity: str
    start_s: float
    chain: toolchain.Toolchain | None = field(default=None, compare=False)

    @property
    def url(self) -> ConnInfo:
        return self.admin.with_dbname(self.dbname)


def scratch_name() -> str:
    return f"atb_drill_{secrets.token_hex(4)}"


def identity_of(info: ConnInfo) -> tuple[str, str]:
    """(database name, server identity) as the server itself reports them."""
    with db.connect(info, autocommit=True) as conn:
        row = conn.execute("SELECT current_database()").fetchone()
        return str(row[0]) if row else "", db.server_identity(conn)


def confirm_sandbox(url: ConnInfo, sandbox: SandboxInfo) -> str:
    """Fail loudly unless `url` really reaches the sandbox database; returns the evidence."""
    name, ident = identity_of(url)
    if name != sandbox.dbname or ident != sandbox.identity:
        raise SafetyRefusal(
            f"refusing to continue: {url.redacted} reaches database {name!r} on server {ident}, "
            f"not the drill sandbox {sandbox.dbname!r} on {sandbox.identity}"
        )
    return f"connected to sandbox database {name} on server {ident}"


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
        admin = ConnInfo(dbname="postgres", host=container.get_container_host_ip(),
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
    if production is not None and same_database(server, production):
        raise SafetyRefusal("the server sandbox URL is the DATABASE_URL database: give a "
                            "maintenance database of a server that may hold scratch databases")
    t0 = time.monotonic()
    info = _finish(server, "server", t0, None)
    try:
        yield info
    finally:
        with db.connect(server, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(info.dbname)))


def _finish(admin: ConnInfo, provider: str, t0: float,
            chain: toolchain.Toolchain | None) -> SandboxInfo:
    name = scratch_name()
    with db.connect(admin, autocommit=True) as conn:
        version = db.server_version(conn)
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    _, ident = identity_of(admin.with_dbname(name))
    return SandboxInfo(provider=provider, server_version=version, admin=admin, dbname=name,
                       identity=ident, start_s=round(time.monotonic() - t0, 3), chain=chain)


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
