"""The Docker engine as the drill sees it: does one answer, does it have the image, and a
PostgreSQL container with no network at all, reached through its unix socket in a private
directory of ours (a local engine), or published on loopback only (a TCP engine).

The engine is found as the Docker CLI finds it (the Docker SDK's `from_env`: DOCKER_HOST,
TLS variables, `ssh://` hosts and the current context), so `auto` and testcontainers agree.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import secrets
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from backup_core.tools.cluster import FAST_SETTINGS
from backup_core.tools.reaper import OWNER_LABEL, Owner, reap_containers
from drills.options import DEFAULT_IMAGE

log = logging.getLogger("atb.sandbox")

SOCKET_DIR_IN_CONTAINER = "/var/run/postgresql"
LABEL = "atb.drill"  # on every drill container, so a test (or an operator) can find them
BUILD_HINT = ("deploy/docker/build-postgres-image builds one offline; or use --sandbox local")


@dataclass(frozen=True)
class Engine:
    """What the probe found: `ok` with the engine's address, or why not."""

    ok: bool
    where: str
    why: str = ""

    @property
    def refusal(self) -> str:
        """What a drill that asked for the docker sandbox is told when it cannot have it."""
        return f"the docker sandbox cannot start: {self.why}; {BUILD_HINT}"


@dataclass(frozen=True)
class ContainerSpec:
    image: str
    username: str
    password: str
    dbname: str
    command: tuple[str, ...]


def image_for(template: str | None, major: int) -> str:
    """`--docker-image` with `{major}` filled in (`postgres:{major}` by default)."""
    return (template or DEFAULT_IMAGE).replace("{major}", str(major))


def container_spec(image: str, *, faithful: bool = False) -> ContainerSpec:
    """What the drill asks of the image: a fresh password, durability off for speed (the
    image's defaults when `faithful`)."""
    settings = [] if faithful else [f"-c{k}={v}" for k, v in FAST_SETTINGS.items()]
    return ContainerSpec(image=image, username="postgres", password=secrets.token_urlsafe(16),
                         dbname="postgres", command=("postgres", *settings))


def _client(timeout: float) -> Any:
    import docker

    ssh = os.environ.get("DOCKER_HOST", "").startswith("ssh://")
    return docker.from_env(timeout=max(1, round(timeout)), use_ssh_client=ssh)


def engine_address() -> str:
    """Where the engine is, as the Docker CLI would find it."""
    return _where()


def _where() -> str:
    host = os.environ.get("DOCKER_HOST")
    if host:
        return host
    try:
        from docker.context import ContextAPI

        ctx = ContextAPI.get_current_context()
        if ctx is not None and ctx.Host:
            return str(ctx.Host)
    except Exception:  # an unreadable ~/.docker/config.json is the same as none
        pass
    return "unix:///var/run/docker.sock"


def short_error(exc: BaseException) -> str:
    """The engine's own explanation (what `docker` would print), in one line."""
    text = str(getattr(exc, "explanation", None) or exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


def probe(image: str | None, *, timeout: float = 2.0) -> Engine:
    """Whether a drill could start `image` now: an engine answers within `timeout` and the
    image is present or its registry knows it (asked without pulling). With no image, only
    whether an engine answers."""
    where = _where()
    if importlib.util.find_spec("docker") is None:
        return Engine(False, where, "the Docker SDK is not installed "
                                    "(pip install 'atb-backup-drills[drill]')")
    socket_path = where.removeprefix("unix://") if where.startswith("unix://") else ""
    if socket_path and not os.path.exists(socket_path):
        return Engine(False, where, f"no Docker engine answers at {where} (no such socket)")
    try:
        client = _client(timeout)
    except Exception as exc:
        return Engine(False, where, f"no Docker engine answers at {where} ({short_error(exc)})")
    try:
        return _probe_with(client, image, where)
    finally:
        client.close()


def _probe_with(client: Any, image: str | None, where: str) -> Engine:
    import docker.errors

    try:
        client.ping()
    except Exception as exc:
        return Engine(False, where, f"no Docker engine answers at {where} ({short_error(exc)})")
    if image is None:
        return Engine(True, where)
    try:
        client.images.get(image)
        return Engine(True, where)
    except docker.errors.ImageNotFound:
        pass
    except Exception as exc:
        return Engine(False, where, f"the engine at {where} cannot list images "
                                    f"({short_error(exc)})")
    try:
        client.api.inspect_distribution(image)
        return Engine(True, where)
    except Exception as exc:
        return Engine(False, where, f"the image {image} is not on the engine at {where} and "
                                    f"cannot be pulled ({short_error(exc)})")


def engine_is_local(where: str) -> bool:
    """A unix socket or a loopback TCP engine: its published ports can stay on 127.0.0.1."""
    if where.startswith(("unix://", "npipe://")):
        return True
    host = urlsplit(where).hostname or ""
    return host in ("localhost", "127.0.0.1", "::1")


def shares_files(where: str) -> bool:
    """An engine on this host's unix socket: a directory of ours can be mounted into its
    containers, so the sandbox needs no network (and is reachable from a namespace)."""
    return where.startswith("unix://")


def postgres_container(spec: ContainerSpec, *, loopback: bool,
                       socket_dir: Path | None = None) -> Any:
    """testcontainers' PostgresContainer for `spec`, named and labelled for atb, and ready
    when `pg_isready` says so (testcontainers' own wait runs psql with the password on its
    command line). With `socket_dir`: no network at all (`network_mode="none"`, no port
    published), its socket directory mounted from `socket_dir`. Else its port is published
    on 127.0.0.1 when the engine is local."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from testcontainers.community.postgres import PostgresContainer
        from testcontainers.core.config import testcontainers_config
        from testcontainers.core.wait_strategies import ExecWaitStrategy
    # testcontainers says "Pulling image" at INFO even for a local image; its errors still
    # reach us. Set here, when it is used, not as a side effect of importing this module.
    logging.getLogger("testcontainers").setLevel(logging.WARNING)
    if "TESTCONTAINERS_RYUK_DISABLED" not in os.environ:
        # atb removes its container itself; the reaper's image is one more pull, which
        # offline engines cannot make. Set the variable to false to have it as well.
        testcontainers_config.ryuk_disabled = True

    host = SOCKET_DIR_IN_CONTAINER if socket_dir is not None else "127.0.0.1"

    class DrillContainer(PostgresContainer):
        def _connect(self) -> None:
            ExecWaitStrategy(["pg_isready", "--host", host, "--username",
                              self.username, "--dbname", self.dbname]).wait_until_ready(self)

    container = DrillContainer(image=spec.image, username=spec.username,
                               password=spec.password, dbname=spec.dbname, driver=None)
    container.with_command(list(spec.command))
    container.with_name(f"atb-drill-{secrets.token_hex(4)}")
    labels = {LABEL: "1", OWNER_LABEL: Owner.current().label}
    if socket_dir is not None:
        container.ports.clear()  # nothing published: there is no network to publish on
        container.with_volume_mapping(str(socket_dir), SOCKET_DIR_IN_CONTAINER, "rw")
        container.with_kwargs(labels=labels, network_mode="none")
        return container
    container.with_kwargs(labels=labels)
    if loopback:
        ports: dict[str, Any] = container.ports
        ports["5432"] = ("127.0.0.1",)  # a random port, on loopback only
    return container


def address(container: Any, *, loopback: bool) -> tuple[str, int]:
    """Where the started container's PostgreSQL answers: on a local engine the port published
    on 127.0.0.1 (testcontainers would pick the bridge gateway when atb itself runs in a
    container, where a loopback-only port is not published); else testcontainers' choice."""
    if loopback:
        mapped = container.get_docker_client().port(container.get_container_id(), 5432)
        return "127.0.0.1", int(mapped)
    return container.get_container_host_ip(), int(container.get_exposed_port(5432))


def drill_containers() -> list[str]:
    """Names of the drill containers the engine still has (running or not)."""
    client = _client(5)
    try:
        return [c.name for c in client.containers.list(all=True, filters={"label": LABEL})]
    finally:
        client.close()


def reap_docker(timeout: float = 3.0) -> list[str]:
    """`reap_containers` over the local engine's atb containers; nothing when no engine
    answers or the Docker SDK is not installed."""
    try:
        import docker
    except ImportError:
        return []
    try:
        client = docker.from_env(timeout=timeout)
    except Exception:  # no engine: nothing of ours can be running there
        return []
    try:
        found = client.containers.list(all=True, filters={"label": OWNER_LABEL})
        return reap_containers(found, lambda c: c.remove(force=True, v=True))
    except Exception as exc:  # the engine went away or refused: say so, never fail a drill
        log.warning("cannot look for docker sandboxes left by killed drills: %s", exc)
        return []
    finally:
        client.close()
