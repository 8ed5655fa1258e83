"""Application code (Alembic's env.py, the integration command, users' drill checks) runs
where only the sandbox is reachable: a new network namespace (nothing but a loopback of its
own) and a new mount namespace in which every PostgreSQL socket of the host and libpq's
password and service files are covered by /dev/null.

That removes production as a class, not route by route: whatever URL, variable, `.env` file,
service name or hard-coded socket the code uses, nothing outside answers. Application code
(Alembic, the integration command) also runs under a seccomp filter that lets it open no
unix socket at all (`seccomp`): a socket reached by a name nobody covered (a hard link, a
bind mount, the Docker engine's) is closed to it too. It reaches its target on the
namespace's own loopback, forwarded to a `Relay` outside or the sandbox's socket inside. Where the
platform cannot do this (not Linux, no `unshare`, no privileges, `ATB_ISOLATION=off`), the
drill says so and the child still gets a sealed environment (see `childenv`).
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import shutil
import socket
import sys
import tempfile
import threading
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path

from backup_core.tools import db, isolate_exec, isolation_cache, namespaces, seccomp
from backup_core.tools.cluster import cache_root, free_port
from backup_core.tools.conninfo import ConnInfo, ambient_env
from backup_core.tools.errors import AtbError, ConfigError
from backup_core.tools.namespaces import already_inside as already_inside  # re-exported
from backup_core.tools.relay import Relay
from backup_core.tools.runner import run

NETWORK = "network"
ENVIRONMENT_ONLY = "environment only"
SWITCH_ENV = namespaces.SWITCH_ENV  # `off`: environment only (see `namespaces.check_switch`)
# the only name under which libpq, psycopg and asyncpg look for a server's unix socket
SOCKET_PREFIX = ".s.PGSQL."
PROC_NET_UNIX = Path("/proc/net/unix")
_LISTENING = "00010000"  # __SO_ACCEPTCON in /proc/net/unix's Flags column


@dataclass(frozen=True)
class Isolation:
    """How application code is kept from production on this run."""

    level: str  # NETWORK or ENVIRONMENT_ONLY
    reason: str  # why this level (what isolates, or why it cannot)
    allowed: tuple[str, ...] = ()  # what was let through besides the sandbox

    @property
    def network(self) -> bool:
        return self.level == NETWORK

    def describe(self) -> str:
        through = f"; let through: {', '.join(self.allowed)}" if self.allowed else ""
        return f"{self.level} ({self.reason}{through})"

    def as_dict(self) -> dict[str, object]:
        return {"level": self.level, "reason": self.reason, "allowed": list(self.allowed)}


def unshare_argv(unshare: str, *, root: bool) -> list[str]:
    """The namespaces every isolated child gets; without root, through a user namespace whose
    capabilities the launcher keeps (so that mounts and `lo` are ours to change)."""
    # --pid: the launcher's first child is the namespace's init and mounts its own /proc, so
    # no process of the host can be seen, signalled or walked through (/proc/PID/root is
    # the host's file system, where nothing is covered); and nothing outlives the command
    argv = [unshare, "--net", "--mount", "--pid", "--propagation", "private"]
    if not root:  # our own uid inside; the launcher keeps the namespace's capabilities
        argv += ["--user", "--map-current-user", "--keep-caps"]  # (it drops them before exec)
    return [*argv, "--"]


def isolated_argv(argv: list[str], *, hide: Iterable[str], root: bool,
                  unshare_path: str, forward: Mapping[str, str] | None = None,
                  read_only: Iterable[str] = (), no_unix: bool = False) -> list[str]:
    """`argv` run by `isolate_exec` inside new network and mount namespaces, `hide` covered,
    `read_only` bound read-only, each `forward` HOST:PORT listened on inside and carried to
    its unix socket outside; `no_unix`, unable to open any unix socket."""
    hidden = [part for path in hide for part in ("--hide", path)]
    frozen = [part for path in read_only for part in ("--read-only", path)]
    return [*unshare_argv(unshare_path, root=root), sys.executable, "-m",
            "backup_core.tools.isolate_exec", *hidden, *frozen, *_forwards(forward),
            *(["--no-unix"] if no_unix else []), "--", *argv]


def nested_argv(argv: list[str], *, forward: Mapping[str, str] | None = None) -> list[str]:
    """`argv` started from inside the namespaces (the drill's pytest child): no unix socket,
    each `forward` listened on in this namespace's loopback."""
    return [sys.executable, "-m", "backup_core.tools.isolate_exec", *_forwards(forward),
            "--no-unix", "--nested", "--", *argv]


def _forwards(forward: Mapping[str, str] | None) -> list[str]:
    return [part for addr, path in (forward or {}).items()
            for part in ("--forward", f"{addr}={path}")]


def split_service(text: str) -> tuple[str, int]:
    """(host, port) of `HOST:PORT` or `[IPV6]:PORT`."""
    host, sep, port = text.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"--allow-service takes HOST:PORT (a port from 1 to 65535), not "
                          f"{text!r}")
    return host, int(port)


def check_service(text: str) -> str:
    """`--allow-service HOST:PORT`, on a loopback address (the namespace listens on the same
    address inside, so the suite's configuration works unchanged); exit 2 otherwise."""
    host, port = split_service(text)
    if host != "localhost":
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise ConfigError(f"--allow-service {text}: only loopback addresses (127.0.0.1, "
                              "::1, localhost) can be let into the drill's namespace; run a "
                              "local forwarder to the service and name that")
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _addresses(host: str, port: int) -> set[tuple[str, int]]:
    try:
        return {(str(info[4][0]), port) for info in socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM)}
    except OSError:
        return set()


def refuse_production_service(services: Iterable[str], production: ConnInfo | None) -> None:
    """Refuse (exit 2) a service that is production's address by any host of its conninfo
    (resolved), or production's port on loopback when production listens on a socket or on
    loopback (the same server, by another route)."""
    if production is None:
        return
    hosts = (production.get("hostaddr") or production.host or "/tmp").split(",")
    ports = (production.port or "5432").split(",")
    prod: set[tuple[str, int]] = set()
    local_ports: set[int] = set()
    for i, host in enumerate(hosts):
        port = int(ports[i] if i < len(ports) else ports[-1])
        if host.startswith("/") or host.startswith("@"):
            local_ports.add(port)
            continue
        found = _addresses(host, port)
        prod |= found
        if any(ipaddress.ip_address(a.split("%")[0]).is_loopback for a, _ in found):
            local_ports.add(port)
    for text in services:
        host, port = split_service(text)
        if _addresses(host, port) & prod or port in local_ports:
            raise ConfigError(f"--allow-service {text} is production's address "
                              f"({production.redacted}): it is never let through")


NETWORK_REASON = ("new network and mount namespaces: only the sandbox is reachable; the host's "
                  "PostgreSQL sockets, pgpass and service files are hidden, and application "
                  "code can open no unix socket")


def _probe_memory(unshare: str) -> tuple[Path, str]:
    """(where the probe's yes is kept, its key for this machine now: `isolation_cache`)."""
    launcher = [m.__file__ or "" for m in (isolate_exec, namespaces, seccomp)]
    return cache_root() / "isolation", isolation_cache.probe_key(
        isolation_cache.key_parts(unshare, launcher))


@cache
def probe() -> Isolation:
    """What this platform allows, tried once per process: the launcher run in trial
    (namespaces, loopback, a cover, the capability drop) before `true`. A yes is kept for
    this boot (`isolation_cache`): later drills skip the trial, never a check."""
    if namespaces.switched_off(os.environ):
        return Isolation(ENVIRONMENT_ONLY, f"{SWITCH_ENV}=off")
    if not sys.platform.startswith("linux"):
        return Isolation(ENVIRONMENT_ONLY, f"network namespaces need Linux ({sys.platform})")
    unshare = shutil.which("unshare")
    if unshare is None:
        return Isolation(ENVIRONMENT_ONLY, "unshare (util-linux) is not installed")
    memory, key = _probe_memory(unshare)
    if isolation_cache.remembered(memory, key):
        return Isolation(NETWORK, NETWORK_REASON)
    root = os.geteuid() == 0
    # the launcher itself, covering a file: every step a real child needs, tried once, with
    # the sealed environment a real child gets
    with tempfile.NamedTemporaryFile(prefix="atb-probe-") as trial:
        try:
            done = run(isolated_argv(["true"], hide=[trial.name], root=root,
                                     unshare_path=unshare),
                       what="the isolation probe", check=False, timeout=30)
        except (AtbError, OSError) as exc:
            return Isolation(ENVIRONMENT_ONLY, f"unshare cannot run: {exc}")
    if done.returncode != 0:
        why = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
        how = "as root" if root else "through a user namespace"
        return Isolation(ENVIRONMENT_ONLY, f"the namespaces cannot be made {how}: {why}")
    isolation_cache.remember(memory, key)
    return Isolation(NETWORK, NETWORK_REASON)


def forget_probe() -> None:
    """The launcher could not isolate after a yes: the next drill probes again."""
    probe.cache_clear()
    unshare = shutil.which("unshare")
    if unshare is not None:
        isolation_cache.forget(*_probe_memory(unshare))


def listening_pg_sockets(table: str) -> list[str]:
    """Paths of the listening `.s.PGSQL.*` sockets in a /proc/net/unix table."""
    found = []
    for line in table.splitlines()[1:]:
        cols = line.split()
        if len(cols) >= 8 and cols[3] == _LISTENING and cols[7].startswith("/") \
                and Path(cols[7]).name.startswith(SOCKET_PREFIX):
            found.append(cols[7])
    return found


# where servers make their sockets by default (Debian's, upstream's) besides PGHOST's
DEFAULT_SOCKET_DIRS = ("/run/postgresql", "/var/run/postgresql", "/tmp")


def socket_dirs(env: Mapping[str, str]) -> list[str]:
    """Directories to search for sockets on disk besides /proc/net/unix, which lists only
    this network namespace's: a server in a container whose socket directory is mounted
    from the host is reachable by its path, yet listed nowhere here."""
    dirs = [*DEFAULT_SOCKET_DIRS, *(h for h in env.get("PGHOST", "").split(",")
                                   if h.startswith("/"))]
    return list(dict.fromkeys(dirs))


def socket_files(dirs: Iterable[str]) -> list[str]:
    """The `.s.PGSQL.*` sockets in `dirs` (not below them)."""
    found = []
    for d in dirs:
        with contextlib.suppress(OSError):
            found += [str(p) for p in Path(d).glob(f"{SOCKET_PREFIX}*")
                      if p.is_socket()]
    return found


def libpq_files(env: Mapping[str, str]) -> list[Path]:
    """Where libpq reads passwords and service definitions unless told otherwise."""
    home = Path(env.get("HOME") or Path.home())
    files = [home / ".pgpass", home / ".pg_service.conf",
             Path("/etc/postgresql-common/pg_service.conf")]
    for var in ("PGPASSFILE", "PGSERVICEFILE"):
        if env.get(var):
            files.append(Path(env[var]))
    if env.get("PGSYSCONFDIR"):
        files.append(Path(env["PGSYSCONFDIR"]) / "pg_service.conf")
    return files


def hidden_paths(allow: Iterable[str] = (), *, env: Mapping[str, str] | None = None,
                 table: str | None = None, dirs: Iterable[str] | None = None) -> list[str]:
    """What to cover inside the namespace: every PostgreSQL socket listening on this host
    (read here, in the host's namespace: inside, /proc/net/unix is empty) but those in
    `allow`, and libpq's password and service files that exist."""
    env = {**os.environ, **ambient_env()} if env is None else env
    if table is None:
        try:
            table = PROC_NET_UNIX.read_text(errors="replace")
        except OSError:
            table = ""
    keep = {os.path.realpath(p) for p in allow}
    found = listening_pg_sockets(table) + socket_files(socket_dirs(env) if dirs is None
                                                       else dirs)
    paths = [p for p in found if os.path.realpath(p) not in keep and os.path.exists(p)]
    paths += [str(f) for f in libpq_files(env) if f.is_file()]
    signing = env.get("ATB_SIGNING_KEY_FILE")  # the ledger's key: application code inside
    if signing and os.path.isfile(signing):  # could otherwise sign a forged drill record
        paths.append(signing)
    return sorted(dict.fromkeys(paths))


INSIDE = Isolation(NETWORK, "inside the drill's network namespace already")
APPLICATION_REASON = ("new network and mount namespaces, and no unix socket can be opened "
                      "(seccomp): only the sandbox is reachable, over the namespace's own "
                      "loopback")
APPLICATION_INSIDE = Isolation(NETWORK, "inside the drill's network namespace, and no unix "
                                        "socket can be opened (seccomp): only the sandbox is "
                                        "reachable, over the namespace's own loopback")


def wrap(argv: list[str], *, allow: Iterable[str] = (),
         env: Mapping[str, str] | None = None,
         forward: Mapping[str, str] | None = None,
         read_only: Iterable[str] = (), no_unix: bool = False) -> tuple[list[str], Isolation]:
    """`argv` as it should run: inside the namespaces when the platform allows and we are
    not inside them already; else unchanged (the caller still seals its environment).
    `no_unix` (application code): unable to open any unix socket, inside them already too."""
    env = os.environ if env is None else env
    if already_inside(env):
        return (nested_argv(argv, forward=forward) if no_unix else argv), \
            APPLICATION_INSIDE if no_unix else INSIDE
    iso = probe()
    if not iso.network:
        return argv, iso
    unshare = shutil.which("unshare")
    assert unshare is not None
    allow = [*allow, *(forward or {}).values()]
    reason = APPLICATION_REASON if no_unix else iso.reason
    return isolated_argv(argv, hide=hidden_paths(allow), root=os.geteuid() == 0,
                         unshare_path=unshare, forward=forward,
                         read_only=read_only, no_unix=no_unix), Isolation(
                             iso.level, reason, tuple(forward or ()))


@contextlib.contextmanager
def isolated(argv: list[str], target: ConnInfo) -> Iterator[tuple[list[str], ConnInfo,
                                                                  Isolation]]:
    """(argv, the URL to give it, the isolation) for application code that may reach
    `target` and nothing else, where the platform allows: network-isolated, unable to open
    any unix socket, `target` on the namespace's loopback (a relay outside that opens only
    its database; inside the drill already, its socket carried there)."""
    if already_inside():
        reach, forward = loopback_route(target, free_port())
        yield nested_argv(argv, forward=forward), reach, APPLICATION_INSIDE
        return
    if not probe().network:
        yield argv, target, probe()
        return
    found = resolved(target)
    with Relay(found, only_database=found.dbname) as relay:
        reach, forward = loopback_route(relay.url(), relay.port)
        wrapped, iso = wrap(argv, allow=[str(relay.socket_path)], forward=forward,
                            no_unix=True)
        yield wrapped, reach, replace(iso, allowed=())


@contextlib.contextmanager
def loopback(target: ConnInfo) -> Iterator[ConnInfo]:
    """`target` as code under the filter reaches it from this process: a server on a unix
    socket (the docker sandbox's, a relay's) carried from a port on this namespace's
    loopback by threads of ours, which are not under the filter; a server on TCP as it is."""
    reach, forward = loopback_route(target, free_port())
    if not forward:
        yield target
        return
    [(addr, path)] = forward.items()
    listener = isolate_exec.listen(addr)
    threading.Thread(target=isolate_exec.forward_to, args=(listener, path), name="atb-loopback",
                     daemon=True).start()
    try:
        yield reach
    finally:
        with contextlib.suppress(OSError):
            listener.shutdown(socket.SHUT_RDWR)  # wakes the accept
        listener.close()


def failure_hint(iso: Isolation, reach: ConnInfo) -> str:
    """What to add to application code's failure when isolation may be its cause: a
    connection it makes elsewhere fails with the driver's words, which rarely say why."""
    if not iso.network:
        return ""
    return (f" (it ran isolated: only the target is reachable, at {reach.host}:{reach.port}, "
            "and no unix socket can be opened)")


def loopback_route(target: ConnInfo, port: int) -> tuple[ConnInfo, dict[str, str]]:
    """(`target` as application code inside reaches it, the forward that carries it): a
    server on a unix socket is listened for on 127.0.0.1:`port` (the code can open no unix
    socket); one on TCP is reached as it is (the namespace lets nothing else through)."""
    host = (target.host or "").split(",")[0]
    if not host.startswith("/"):
        return target, {}
    path = f"{host}/{SOCKET_PREFIX}{(target.port or '5432').split(',')[0]}"
    # no sslmode: the relay and a server on its socket both answer a TLS request with "no",
    # and a URL naming it is refused by drivers that are not libpq (SQLAlchemy's asyncpg)
    return (target.with_params(host="127.0.0.1", port=str(port), hostaddr="", sslmode=""),
            {f"127.0.0.1:{port}": path})


def resolved(target: ConnInfo) -> ConnInfo:
    """`target` with the host and port libpq actually reached, when a service file or the
    defaults chose them (the relay needs an address; the child gets no service file)."""
    if target.host and not target.get("service"):
        return target
    with db.connect(target) as conn:
        params = {k: v for k, v in conn.info.get_parameters().items() if k != "service"}
        password = conn.info.password
        params.update(host=conn.info.host, port=str(conn.info.port))
    found = target.with_params(**params, service="", hostaddr="")
    return found if found.password or not password else found.with_password(password)
