"""A throwaway PostgreSQL cluster: `initdb` into a temporary directory, `pg_ctl` start and stop.

Used by the drill's local sandbox, the demo's stand-in production, and the test suite.
PostgreSQL refuses to run as root, so as root the server runs as an unprivileged user.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import pwd
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType, TracebackType

from backup_core.tools import locking, reaper, removal
from backup_core.tools.conninfo import ConnInfo, redact
from backup_core.tools.errors import (
    AtbError,
    CommandFailed,
    ConfigError,
    SafetyRefusal,
    ToolchainError,
)
from backup_core.tools.fsutil import make_dirs
from backup_core.tools.runner import Runner, run, spawn
from backup_core.tools.toolchain import Toolchain, version_argv

log = logging.getLogger("atb.cluster")

# Settings for a cluster whose data is disposable: durability traded for restore speed.
FAST_SETTINGS: Mapping[str, str] = MappingProxyType({
    "fsync": "off",
    "full_page_writes": "off",
    "synchronous_commit": "off",
    "wal_level": "minimal",
    "max_wal_senders": "0",
    "max_wal_size": "4GB",
    "checkpoint_timeout": "30min",
    "maintenance_work_mem": "512MB",
    "autovacuum": "off",
})




def settings_text(settings: Mapping[str, str]) -> str:
    """The server settings a restore was measured under, for the report."""
    if not settings:
        return "the server's defaults (--rto-faithful)"
    return "tuned for a throwaway server: " + ", ".join(f"{k}={v}" for k, v in settings.items())


# The account every local server but a drill's sandbox runs as, as root, and the one that
# reads pgBackRest's repository: the user's choice, else `postgres`, else `nobody`.
SERVICE_USER_ENV = "ATB_PG_USER"
# The account a drill's sandbox server (dump or point-in-time) runs as, as root: the user's
# choice, else `atb-sandbox`, else `nobody`. A variable of its own: a point-in-time drill needs
# ATB_PG_USER to be the repository's reader (postgres), which a sandbox must never be.
SANDBOX_USER_ENV = "ATB_SANDBOX_USER"


def service_user() -> str | None:
    """The unprivileged account a cluster's server runs as when we are root (None when we are
    not): `ATB_PG_USER`, else `postgres`, else `nobody`. Every cluster but a drill's
    sandbox (`sandbox_account`, `point_in_time_account`), and what reads pgBackRest's
    repository and spool, which are `postgres`'s (a point-in-time drill's restore and WAL
    fetch); the suite's stand-in productions are `postgres`'s as a real one is.
    `ConfigError` (exit 2) for an `ATB_PG_USER` naming no account (a typo is not
    `postgres`) or root."""
    if os.geteuid() != 0:
        return None
    explicit = os.environ.get(SERVICE_USER_ENV, "")
    if explicit:
        account = os_account(explicit)
        if account is None:
            raise ConfigError(f"{SERVICE_USER_ENV}={explicit}: no such account on this host")
        if account.uid == 0:  # said now, not by initdb once the work has begun
            raise ConfigError(f"{SERVICE_USER_ENV}={explicit}: it is uid 0 (root), which "
                              "PostgreSQL refuses to run as: name an unprivileged account")
        return explicit
    for name in ("postgres", "nobody"):
        if os_account(name) is not None:
            return name
    raise ToolchainError("running as root and no unprivileged user exists: set "
                         f"{SERVICE_USER_ENV}")


# The account a dump drill's sandbox server runs as, as root without ATB_SANDBOX_USER: one of
# atb's own that owns nothing. That server runs what a restored archive holds as its
# superuser, and `COPY ... TO PROGRAM` or `COPY ... TO '/file'` acts as this account on the
# host's files (the namespaces hide production's sockets, not its files): as `postgres` it
# could read or overwrite production's data directory and pgBackRest's repository.
SANDBOX_ACCOUNT = "atb-sandbox"
# Else `nobody`, which owns nothing on a sound host; but other daemons may run as it and NFS
# maps root's files to it (root_squash), so an account of atb's own is better, and is
# refused like `atb-sandbox` when it shares an owner with what it must not touch.
FALLBACK_ACCOUNT = "nobody"
SETUP_HINT = (f"useradd --system --no-create-home --shell /usr/sbin/nologin "
              f"--user-group {SANDBOX_ACCOUNT}")
# whose files (production's data directory, pgBackRest's repository) no sandbox may share
PROTECTED_ACCOUNT = "postgres"


@dataclass(frozen=True)
class OsAccount:
    """An account of this host, as the server would run under it (`runner.demote_ids`: its
    uid and primary group, no other groups)."""

    name: str
    uid: int
    gid: int


def os_account(name: str) -> OsAccount | None:
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        return None
    return OsAccount(name, entry.pw_uid, entry.pw_gid)


@dataclass(frozen=True)
class RunAs:
    """Who a local cluster's server runs as (None: we are not root, so it runs as us), and
    why, in words `atb doctor` shows."""

    name: str | None
    why: str


def choose_sandbox_account(*, root: bool, explicit: str, accounts: Mapping[str, OsAccount],
                           owners: Mapping[int, str] | None = None) -> RunAs:
    """The account a drill's sandbox server runs as (pure: `accounts` are those of the
    host among `explicit`, `atb-sandbox`, `nobody` and `postgres`): `ATB_SANDBOX_USER`
    (`explicit`), the user's choice; else `atb-sandbox`, else `nobody`. Whoever chose it,
    `ConfigError` (exit 2) for an account that is root, whose uid is `postgres`'s or one of
    `owners`' (uid: what that owner holds, e.g. the backups), or whose primary group is
    `postgres`'s (the only group the server runs with, `runner.demote_ids`): such an account
    would own, or read as a group, what the sandbox must not touch. (A group shared with
    another of `owners` is not looked at: backups are written 0600.) Accounts are never
    created here: that is the administrator's act (`SETUP_HINT`)."""
    if not root:
        return RunAs(None, "not run as root: the server runs as this user")
    if explicit:
        chosen = accounts.get(explicit)
        if chosen is None:
            raise ConfigError(f"{SANDBOX_USER_ENV}={explicit}: no such account on this host")
        fix = (f"set {SANDBOX_USER_ENV} to an account that owns nothing of production "
               f"(e.g. {SANDBOX_ACCOUNT}: {SETUP_HINT})")
        why = f"{SANDBOX_USER_ENV}, your choice"
    else:
        found = accounts.get(SANDBOX_ACCOUNT) or accounts.get(FALLBACK_ACCOUNT)
        if found is None:
            raise ConfigError(f"running as root and neither {SANDBOX_ACCOUNT} nor "
                              f"{FALLBACK_ACCOUNT} exists for the drill's sandbox server: "
                              f"create it ({SETUP_HINT}) or set {SANDBOX_USER_ENV}")
        chosen = found
        fix = (f"give {chosen.name} a uid and group of its own, or set {SANDBOX_USER_ENV}"
               if chosen.name == SANDBOX_ACCOUNT else
               f"create {SANDBOX_ACCOUNT} ({SETUP_HINT}), or set {SANDBOX_USER_ENV}")
        why = ("an account of atb's own that owns nothing of production"
               if chosen.name == SANDBOX_ACCOUNT else
               f"the fallback: no {SANDBOX_ACCOUNT} account exists (for an account of atb's "
               f"own that owns nothing: {SETUP_HINT})")
    protected = dict(owners or {})
    guarded = accounts.get(PROTECTED_ACCOUNT)
    if guarded is not None:
        protected.setdefault(guarded.uid, f"{PROTECTED_ACCOUNT}, which owns production's data "
                             "and pgBackRest's repository")
    if chosen.uid == 0:
        raise ConfigError(f"refusing {chosen.name} for the drill's sandbox server: it is uid 0 "
                          f"(root); {fix}")
    if chosen.uid in protected:
        raise ConfigError(f"refusing {chosen.name} for the drill's sandbox server: its uid "
                          f"{chosen.uid} is that of {protected[chosen.uid]}; {fix}")
    if guarded is not None and chosen.gid == guarded.gid:
        raise ConfigError(f"refusing {chosen.name} for the drill's sandbox server: its group "
                          f"{chosen.gid} is {PROTECTED_ACCOUNT}'s (group-readable files of "
                          f"production and pgBackRest's repository); {fix}")
    return RunAs(chosen.name, why)


def sandbox_account(*, owners: Mapping[int, str] | None = None) -> RunAs:
    """`choose_sandbox_account` for this host and environment, read when called."""
    explicit = os.environ.get(SANDBOX_USER_ENV, "")
    names = {explicit, SANDBOX_ACCOUNT, FALLBACK_ACCOUNT, PROTECTED_ACCOUNT} - {""}
    found = {name: account for name in names if (account := os_account(name)) is not None}
    return choose_sandbox_account(root=os.geteuid() == 0, explicit=explicit, accounts=found,
                                  owners=owners)


def point_in_time_account() -> RunAs:
    """The account a point-in-time sandbox's server runs as: the dump sandbox's
    (`sandbox_account`), refused too when it is the account that reads pgBackRest's
    repository (`service_user`): that one restores the files and fetches the WAL for the
    server (`pitr.recovered`), which then needs neither the repository nor its credentials."""
    reader = service_user()
    account = os_account(reader) if reader else None
    chosen = f" ({SERVICE_USER_ENV})" if os.environ.get(SERVICE_USER_ENV) else ""
    owners = {account.uid: f"{reader}, which reads pgBackRest's repository for the "
              f"drill{chosen}"} if account else {}
    return sandbox_account(owners=owners)


def service_account() -> RunAs:
    """`service_user`, and why: what `atb doctor` says of who restores a point-in-time
    sandbox's files and fetches its WAL."""
    name = service_user()
    if name is None:
        return RunAs(None, "not run as root: the server runs as this user")
    if name == os.environ.get(SERVICE_USER_ENV):
        return RunAs(name, f"{SERVICE_USER_ENV}, your choice")
    if name == PROTECTED_ACCOUNT:
        return RunAs(name, "pgBackRest's repository and spool are its")
    return RunAs(name, f"no {PROTECTED_ACCOUNT} account (pgBackRest's repository and spool "
                 "must be readable by it)")


DEFAULT_CACHE_DIR = Path("/var/cache/atb")


def cache_root() -> Path:
    """Where readable copies of private toolchains go: `ATB_CACHE_DIR`, read when needed
    (not at import, so a test or an entry point that sets it is obeyed)."""
    return Path(os.environ.get("ATB_CACHE_DIR") or DEFAULT_CACHE_DIR)


def initdb_argv(chain: Toolchain, datadir: Path, *, superuser: str,
                pwfile: Path | None, locale: str = "C") -> list[str]:
    """A fast cluster, C-locale unless told (a UTF-8 locale); with a password file, scram for
    TCP clients (the password travels in the file, never on the command line), else trust."""
    argv = [chain.tool("initdb"), "-D", str(datadir), "-U", superuser, "--encoding=UTF8",
            f"--locale={locale}", "--auth-local=trust", "--no-sync"]
    if pwfile is not None:
        return [*argv, "--auth-host=scram-sha-256", f"--pwfile={pwfile}"]
    return [*argv, "--auth-host=trust"]


def pg_ctl_start_argv(chain: Toolchain, datadir: Path, *, logfile: Path,
                      timeout: float) -> list[str]:
    return [chain.tool("pg_ctl"), "-D", str(datadir), "-l", str(logfile), "-w", "-t",
            f"{timeout:.0f}", "start"]


def pg_ctl_stop_argv(chain: Toolchain, datadir: Path, *, mode: str) -> list[str]:
    return [chain.tool("pg_ctl"), "-D", str(datadir), "-m", mode, "-w", "-t", "30", "stop"]


def _runs_as(chain: Toolchain, user: str, runner: Runner) -> bool:
    """True when `user` can execute the toolchain's server (every directory above it must
    let that user through)."""
    try:
        done = runner(version_argv(chain.tool("postgres")), what="postgres --version", run_as=user,
                      check=False, timeout=30)
    except (AtbError, OSError):
        return False
    return done.returncode == 0


def servable(chain: Toolchain, user: str | None, *, cache_dir: Path | None = None,
             runner: Runner = run) -> Toolchain:
    """`chain`, or a copy of its installation that `user` can run: binaries inside a
    virtualenv under a 0700 home (root's, say) cannot be executed by the service user. The
    copy is cached per version and install path, owned by root and readable by all."""
    if not user or _runs_as(chain, user, runner):
        return chain
    cache = cache_dir or cache_root()
    install = chain.bindir.parent
    # A wheel's binaries find their libraries relative to themselves (auditwheel puts them in
    # a sibling `<package>.libs`): the copy keeps `<package>/<install>` beside those.
    package = install.parent
    libs = sorted(package.parent.glob(f"{package.name}.libs"))
    key = hashlib.sha256(str(install.resolve()).encode()).hexdigest()[:12]
    dest = cache / f"pg-{chain.version}-{key}"
    bindir = dest / package.name / install.name / chain.bindir.name
    hint = (f"PostgreSQL {chain.version} in {install} cannot be run by the service user "
            f"{user} (a directory above it is private)")
    try:
        make_dirs(cache)
        st = cache.lstat()  # checked before anything is changed: chmod follows links
        if stat.S_ISLNK(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
            raise ToolchainError(f"{hint}, and {cache} is not a private cache of ours: remove "
                                 "it, or install PostgreSQL outside private directories")
        cache.chmod(0o755)  # make_dirs made it 0700: the service user must get through
        if not (bindir / "postgres").exists():
            tmp = cache / f".{dest.name}.tmp-{os.getpid()}"
            removal.discard(tmp)
            shutil.copytree(install, tmp / package.name / install.name, symlinks=True)
            for lib in libs:
                shutil.copytree(lib, tmp / lib.name, symlinks=True)
            for path in [tmp, *tmp.rglob("*")]:
                if not path.is_symlink():
                    mode = path.stat().st_mode
                    path.chmod(mode | 0o444 | (0o111 if mode & 0o111 or path.is_dir() else 0))
            try:
                tmp.rename(dest)
            except OSError:  # another run made it first
                removal.discard(tmp)
    except (OSError, AtbError) as exc:
        if isinstance(exc, ToolchainError):
            raise
        raise ToolchainError(f"{hint}, and a readable copy could not be made in {cache} "
                             f"({exc}): make the directories above {install} traversable "
                             f"(chmod o+x), or set PG_BINDIR to a system PostgreSQL") from exc
    copy = Toolchain(bindir=bindir, version=chain.version,
                     source=f"{chain.source}, readable copy")
    if not _runs_as(copy, user, runner):
        raise ToolchainError(f"{hint}, and neither can its copy in {dest}: set PG_BINDIR to a "
                             "system PostgreSQL")
    log.info("using a readable copy of PostgreSQL %s in %s (the original is in a private "
             "directory)", chain.version, dest)
    return copy


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Cluster:
    """Context manager: a running cluster on entry, stopped and deleted on exit (Ctrl-C too).

    With `tcp=False` the server opens no TCP port and listens on a unix socket inside its
    temporary directory. A `password` enables scram authentication for TCP clients. `sealed`
    (a sandbox inside the drill's network namespace, whose loopback is its own): the server
    can open no unix socket, its own included, so nothing run through it (dblink, a foreign
    server, COPY TO PROGRAM) reaches a socket of the host; it listens on TCP only.
    """

    toolchain: Toolchain
    password: str = ""
    tcp: bool = False
    settings: dict[str, str] = field(default_factory=dict)
    superuser: str = "postgres"
    base_dir: Path | None = None
    # Fills the empty data directory instead of initdb (a pgBackRest restore): called with
    # the directory (ours, 0700: populate gives it to whoever fills it, then to the server's
    # account) and the user the server runs as; the cluster then gets our pg_hba.conf.
    populate: Callable[[Path, str | None], None] | None = None
    start_timeout: float = 60
    env: dict[str, str] = field(default_factory=dict)  # for the server (its restore_command)
    runner: Runner = run  # every program the cluster runs goes through it
    locale: str = "C"  # initdb's; a local sandbox takes production's where the machine has it
    sealed: bool = False
    # A private directory of initdb templates (see `template_path`): the data directory is a
    # copy of one made earlier for the same server binary, locale and superuser, not a fresh
    # initdb (most of a drill sandbox's start). Only a cluster without a password uses it,
    # and every copy shares the template's system identifier: for sandboxes, never a source.
    templates: Path | None = None
    # how `destroy` stops the server: a drill's sandbox, whose files are deleted next, skips
    # the shutdown checkpoint ("immediate": seconds after a large restore); a cluster whose
    # WAL is archived must stop "fast", so its last segment reaches the archive
    destroy_mode: str = "fast"
    # `destroy` leaves the files to a process of their own (`removal`) once the server has
    # stopped, so the drill writes its reports meanwhile; `await_removals` waits for it (and
    # at exit)
    remove_later: bool = False
    # A data directory another process is copying from the template for this cluster
    # (`prepare`, begun by `atb drill run` while its child starts): the file that says where,
    # once it is whole. Adopted only when it was made for this same server binary, locale,
    # superuser and service user; anything else (not ready in time, failed, another key)
    # and the cluster makes its own, as before.
    prepared: Path | None = None
    # The account the server runs as when we are root (None: as us): `service_user` unless
    # told. A drill's sandbox is told `sandbox_account` or `point_in_time_account` (an
    # account that owns nothing of production; a point-in-time sandbox's files are restored
    # by `service_user`, which reads pgBackRest's repository, and then given to it).
    # Everything done as or for the server follows it: the data directory's owner, the
    # templates and prepared copies it may take, the process `pid` names and `stop` signals.
    run_as: str | None = field(default_factory=service_user)
    workdir: Path | None = field(default=None, init=False)
    port: int = field(default=5432, init=False)
    _running: bool = field(default=False, init=False)
    _record: Path | None = field(default=None, init=False)  # see backup_core.tools.reaper
    # `pg_ctl start`, still ending after the server said it was ready (`_start_and_watch`)
    _starter: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)
    _postmaster: int | None = field(default=None, init=False)  # the server's pid, once started

    def __post_init__(self) -> None:
        self.tcp = self.tcp or self.sealed  # sealed: no unix socket, so TCP it is

    @property
    def datadir(self) -> Path:
        assert self.workdir is not None
        return self.workdir / "data"

    @property
    def socket_dir(self) -> Path:
        assert self.workdir is not None
        return self.workdir / "sock"

    @property
    def logfile(self) -> Path:
        assert self.workdir is not None
        return self.workdir / "server.log"

    @property
    def pid(self) -> int | None:
        """The server's pid, from its lock file, when that names this cluster's server: the
        server's user writes the file (so can whatever a restored database runs as it), and
        we may signal the pid as root (`_stop`). The one seen when it started, while it
        still runs."""
        uid = _uid(self.run_as)
        if self._postmaster is not None and reaper.serves(self._postmaster, self.datadir, uid):
            return self._postmaster
        try:
            pid = int((self.datadir / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        return pid if reaper.serves(pid, self.datadir, uid) else None

    def url(self, dbname: str = "postgres") -> ConnInfo:
        if self.tcp:
            return ConnInfo.make(dbname=dbname, host="127.0.0.1", port=self.port,
                                 user=self.superuser, password=self.password)
        return ConnInfo.make(dbname=dbname, host=str(self.socket_dir), port=self.port,
                             user=self.superuser)

    def __enter__(self) -> Cluster:
        try:
            self.start()
        except BaseException:
            self.destroy()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.destroy()

    def start(self) -> None:
        if not self.toolchain.can_serve:
            raise ToolchainError(f"{self.toolchain.bindir} has no initdb/pg_ctl/postgres")
        if self.tcp and not self.password and not self.sealed:
            # without a password TCP clients are trusted (`initdb_argv`): on the host's
            # loopback any local account would be the superuser; only inside the drill's
            # network namespace (sealed), whose loopback is its own, is that safe
            raise SafetyRefusal("a local cluster listening on TCP without a password must be "
                                "sealed in the drill's network namespace: any local account "
                                "would connect to it as superuser")
        run_as = self.run_as
        self.toolchain = servable(self.toolchain, run_as, runner=self.runner)
        if not self._adopt_prepared():
            self._make_workdir(run_as)
            self._fill_datadir(run_as)
        self.port = free_port() if self.tcp else 5432
        conf = server_conf(port=self.port, tcp=self.tcp,
                           socket_dir=None if self.sealed else self.socket_dir,
                           settings=self.settings,
                           hba_file=(self.datadir / "pg_hba.conf"
                                     if self.populate is not None else None))
        write_data_file(self.datadir, "postgresql.conf",
                        "\n# atb throwaway cluster\n"
                        + "".join(f"{k} = {v}\n" for k, v in conf.items()),
                        owner=_uid(run_as), append=True)
        self._pg_ctl_start(run_as)
        self._running = True
        self._postmaster = self.pid
        log.debug("cluster %s started (PostgreSQL %s)", self.workdir, self.toolchain.version)

    def prepare(self, marker: Path) -> None:
        """Make this cluster's work directory and data directory without starting it, then
        say where in `marker` (with what it was made for, `prepared_key`), or that it failed:
        for a cluster of the same settings in another process to adopt (`prepared`). The
        caller removes the directory if nobody adopted it (`discard_prepared`)."""
        facts: dict[str, object] = {"failed": "interrupted"}
        try:
            run_as = self.run_as
            self.toolchain = servable(self.toolchain, run_as, runner=self.runner)
            self._make_workdir(run_as)
            self._fill_datadir(run_as)
            facts = {"workdir": str(self.workdir), "key": prepared_key(self)}
        except Exception as exc:  # said to the adopter, which then makes its own
            facts = {"failed": f"{type(exc).__name__}: {exc}"}
        finally:
            write_marker(marker, facts)

    def discard_prepared(self) -> None:
        """Remove what `prepare` made, unless another process adopted it: its reaper record
        then names that process, which removes it; one already gone (killed) left its server
        running on it: stopped and removed here, as the reaper does."""
        record, self._record = self._record, None
        if record is None:
            return
        if not _still_ours(record):
            if os.path.lexists(record):
                reaper.reap_local(record.parent)  # only records whose owner is gone
            return
        if self.workdir is not None and self.workdir.exists():
            removal.discard(self.workdir)
        reaper.unregister(record)

    def _adopt_prepared(self) -> bool:
        """Use the data directory `prepared` says another process made for exactly this
        cluster (waited for, as its copy may still run), its server's account included (a
        copy given to another account is not ours to run); False: make our own."""
        if self.prepared is None or self.populate is not None or self.password:
            return False
        facts = _await_marker(self.prepared, timeout=120)
        if facts is None or "workdir" not in facts:
            log.debug("prepared data directory not used: %s",
                      facts.get("failed") if facts else "not ready in time")
            return False
        workdir = Path(str(facts["workdir"]))
        base = Path(self.base_dir or tempfile.gettempdir()).resolve()
        if facts.get("key") != prepared_key(self) or not workdir.is_absolute() \
                or workdir.parent.resolve() != base \
                or not workdir.name.startswith(reaper.WORKDIR_PREFIX):
            log.debug("prepared data directory %s not used: made for another cluster", workdir)
            return False
        unsafe = _unsafe_prepared(self.prepared, workdir, _uid(self.run_as))
        if unsafe:
            log.warning("prepared data directory %s not used: %s", workdir, unsafe)
            return False
        self.workdir = workdir
        self._record = reaper.register(workdir)  # ours now: torn down and reaped as ours
        log.debug("data directory prepared beforehand in %s", workdir)
        return True

    def _make_workdir(self, run_as: str | None) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix=reaper.WORKDIR_PREFIX, dir=self.base_dir))
        # before the server exists: a kill -9 from here on leaves a record the next drill
        # (or `atb doctor`) reaps, since pg_ctl's server does not die with us
        self._record = reaper.register(self.workdir)
        # 0700, the server's account's (below): only it and root reach the socket, whatever
        # `unix_socket_permissions` a setting or a restored postgresql.auto.conf says
        self.socket_dir.mkdir(mode=0o700)
        if run_as:
            # the work directory stays ours (0711: the server's user goes through, never
            # renames or replaces what is in it); the server's user gets only its own parts
            entry = pwd.getpwnam(run_as)
            os.chown(self.socket_dir, entry.pw_uid, entry.pw_gid)
            fd = os.open(self.logfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW,
                         0o600)
            try:
                os.fchown(fd, entry.pw_uid, entry.pw_gid)  # pg_ctl -l appends as that user
            finally:
                os.close(fd)
            self.workdir.chmod(0o711)

    def _fill_datadir(self, run_as: str | None) -> None:
        """initdb, or `populate` (a pgBackRest restore) into an empty data directory."""
        if self.populate is None:
            template = self._template()
            if template is not None and _copy_template(template, self.datadir, run_as,
                                                          self.runner):
                log.debug("data directory copied from the initdb template %s", template)
                return
            self._initdb(run_as)
            if template is not None:
                _save_template(self.datadir, template)
            return
        # ours (root's, 0700) until `populate` hands it to whoever fills it and then to the
        # server's account: never the server's account's while another fills it
        self.datadir.mkdir(mode=0o700)
        self.populate(self.datadir, run_as)
        # socket only, trust: as a fresh sandbox; production's rules do not apply here
        write_data_file(self.datadir, "pg_hba.conf", "local all all trust\n",
                        owner=_uid(run_as), append=False)

    def _pg_ctl_start(self, run_as: str | None) -> None:
        if self.runner is run:  # the real programs: the server's readiness seen at once
            self._start_and_watch(run_as)
            return
        try:
            self.runner(
                pg_ctl_start_argv(self.toolchain, self.datadir, logfile=self.logfile,
                                  timeout=self.start_timeout),
                what="pg_ctl start", run_as=run_as, cwd=self.workdir,
                timeout=self.start_timeout + 30, env=self.env,
                **({"no_unix": True} if self.sealed else {}),
            )
        except CommandFailed as exc:
            raise CommandFailed(
                f"the throwaway PostgreSQL {self.toolchain.version} server did not start: "
                f"{self._log_tail()}",
                detail=exc.detail,
            ) from exc

    def _start_and_watch(self, run_as: str | None) -> None:
        """`pg_ctl start -w`, returning as soon as the server says it is ready in its
        `postmaster.pid` (looked at every 2 ms; `pg_ctl` looks every 100 ms, half of a
        sandbox's start after the copy). `pg_ctl` still judges a start that fails, and ends on
        its own a moment later (reaped when the cluster stops)."""
        since = time.time()
        proc = spawn(pg_ctl_start_argv(self.toolchain, self.datadir, logfile=self.logfile,
                                       timeout=self.start_timeout),
                     what="pg_ctl start", stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                     env=self.env, run_as=run_as, cwd=self.workdir, no_unix=self.sealed)
        try:
            while proc.poll() is None:
                if server_ready(self.datadir / "postmaster.pid", since=since):
                    self._starter = proc
                    return
                time.sleep(0.002)
        except BaseException:
            proc.kill()
            proc.communicate()
            raise
        _, err = proc.communicate()
        if proc.returncode != 0:
            detail = redact(err.decode(errors="replace"))
            raise CommandFailed(
                f"the throwaway PostgreSQL {self.toolchain.version} server did not start: "
                f"{self._log_tail()}", detail=detail)

    def _reap_starter(self) -> None:
        proc, self._starter = self._starter, None
        if proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.communicate(timeout=5)
            if proc.returncode is None:
                proc.kill()
                proc.communicate()

    def _initdb(self, run_as: str | None) -> None:
        assert self.workdir is not None
        pwfile = self.workdir / "pwfile"
        if self.password:
            fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(self.password + "\n")
            if run_as:
                os.chown(pwfile, pwd.getpwnam(run_as).pw_uid, -1)
        # made here, empty, for initdb to fill: the work directory is not the server
        # user's to create entries in
        self.datadir.mkdir(mode=0o700)
        if run_as:
            entry = pwd.getpwnam(run_as)
            os.chown(self.datadir, entry.pw_uid, entry.pw_gid)
        argv = initdb_argv(self.toolchain, self.datadir, superuser=self.superuser,
                           pwfile=pwfile if self.password else None, locale=self.locale)
        try:
            self.runner(argv, what="initdb", run_as=run_as, cwd=self.workdir, timeout=120)
        finally:
            pwfile.unlink(missing_ok=True)

    def _template(self) -> Path | None:
        if self.templates is None or self.password:
            return None
        return template_path(self.templates, self.toolchain, locale=self.locale,
                             superuser=self.superuser, run_as=self.run_as)

    def _log_tail(self) -> str:
        try:
            lines = self.logfile.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "(no server log)"
        return lines[-1] if lines else "(empty server log)"

    def stop_immediately(self) -> None:
        """Stop as a crash would (`-m immediate`): for tests of a server lost mid-work."""
        self.stop(mode="immediate")

    def stop(self, mode: str = "fast") -> None:
        try:
            self._stop(mode)
        finally:  # once the server is gone, a `pg_ctl start` still looking ends at once
            self._reap_starter()

    def _stop(self, mode: str) -> None:
        if not self._running or self.workdir is None:
            return
        pid = self.pid
        if mode == "immediate" and pid is not None and _quit(pid):
            self._running = False
            return
        try:
            self.runner(
                pg_ctl_stop_argv(self.toolchain, self.datadir, mode=mode), what="pg_ctl stop",
                run_as=self.run_as, cwd=self.workdir, timeout=60,
            )
        except AtbError:
            pid = self.pid
            if pid:
                _kill(pid)
        self._running = False

    def destroy(self) -> None:
        """Stop the server and delete every file of it; safe to call twice."""
        try:
            self.stop(mode=self.destroy_mode)
        finally:
            if self.workdir is not None and self.workdir.exists():
                if self.remove_later and not self._running \
                        and _remove_in_background(self.workdir, self._record):
                    self._record = None  # unregistered once removed (`await_removals`)
                else:
                    removal.discard(self.workdir)
            reaper.unregister(self._record)
            self._record = None


_REMOVALS: list[tuple[subprocess.Popen[bytes], Path, Path | None]] = []
_REMOVALS_LOCK = threading.Lock()


def _remove_in_background(workdir: Path, record: Path | None) -> bool:
    """Start removing a stopped cluster's `workdir` in a process of its own (`removal`);
    False (remove it now) when that cannot start. Its reaper record stays until the files
    are gone: a drill killed meanwhile leaves them to the next one's reaper."""
    try:
        proc = spawn(removal.argv(workdir), what="remove a sandbox", stdout=subprocess.DEVNULL,
                     stderr=subprocess.DEVNULL)
    except (AtbError, OSError):
        return False
    with _REMOVALS_LOCK:
        _REMOVALS.append((proc, workdir, record))
    return True


def await_removals() -> None:
    """Wait for the clusters' files being removed in the background (`remove_later`), then
    forget their reaper records."""
    with _REMOVALS_LOCK:
        pending = list(_REMOVALS)
        _REMOVALS.clear()
    for proc, workdir, record in pending:
        if proc.wait() != 0:  # it could not start its work: once more here, and say what is left
            removal.discard(workdir)
        reaper.unregister(record)


atexit.register(await_removals)


def prepared_key(cluster: Cluster) -> dict[str, str]:
    """What a prepared data directory was made for: a cluster adopts only its own kind."""
    return {"bindir": str(cluster.toolchain.bindir), "version": cluster.toolchain.version,
            "locale": cluster.locale, "superuser": cluster.superuser,
            "run_as": cluster.run_as or "",
            "templates": str(cluster.templates or "")}


def _still_ours(record: Path) -> bool:
    """The reaper's `record` still names this process as the sandbox's owner."""
    try:
        owner = reaper.Owner(**json.loads(record.read_text())["owner"])
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return owner == reaper.Owner.current()


def write_marker(marker: Path, facts: Mapping[str, object]) -> None:
    """`facts` for the adopter of a prepared data directory, whole or absent (renamed in)."""
    tmp = marker.with_name(f".{marker.name}.tmp")
    tmp.write_text(json.dumps(facts))
    tmp.replace(marker)


@contextlib.contextmanager
def preparing_lock(marker: Path) -> Iterator[None]:
    """Held by the process preparing a data directory for `marker` (`Cluster.prepare`),
    from before the adopter starts until the block ends: an adopter still waiting when it
    is free knows nobody will write the marker (that process was killed) and stops waiting."""
    fd = os.open(_lock_path(marker), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _lock_path(marker: Path) -> Path:
    return marker.with_name(f"{marker.name}.lock")


def _preparer_gone(marker: Path) -> bool:
    """Nobody holds `marker`'s `preparing_lock` (any more)."""
    return not locking.is_locked(_lock_path(marker))


def _await_marker(marker: Path, *, timeout: float) -> dict[str, object] | None:
    """The facts `Cluster.prepare` wrote in `marker`, waited for (every 2 ms, as the
    server's readiness is); None when they cannot be read, do not come in time, or never
    will (its maker is gone: `preparing_lock`)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            facts = json.loads(marker.read_text())
            return facts if isinstance(facts, dict) else None
        except FileNotFoundError:
            # looked at after the read: a maker that wrote the marker and then ended is
            # seen by the next read, not taken for one that died before writing it
            if time.monotonic() > deadline or (_preparer_gone(marker) and not marker.exists()):
                return None
            time.sleep(0.002)
        except (OSError, ValueError):
            return None


def template_path(templates: Path, chain: Toolchain, *, locale: str, superuser: str,
                  run_as: str | None) -> Path:
    """Where the initdb template for this server binary, locale, superuser and server account
    lives: keyed on the binary's path, size and mtime too, so an upgraded build in place never
    gets an old template; and on the account, as the data directory a template is kept from
    was that account's to change until it was copied (a sandbox never starts from files
    another account, `postgres` say, could have shaped)."""
    postgres = chain.tool("postgres")
    try:
        st = os.stat(postgres)
        build = f"{st.st_size}:{st.st_mtime_ns}"
    except OSError:
        build = "?"
    key = hashlib.sha256("\0".join([str(Path(postgres).resolve()), chain.version, build,
                                    locale, superuser, run_as or ""]
                                   ).encode()).hexdigest()[:16]
    return templates / f"initdb-{chain.version}-{key}"


def _uid(run_as: str | None) -> int:
    """The uid the server's files belong to: the service user's, else ours."""
    return pwd.getpwnam(run_as).pw_uid if run_as else os.geteuid()


def _unsafe_prepared(marker: Path, workdir: Path, owner: int) -> str:
    """Why the data directory another process prepared in `workdir` must not be adopted
    ('' when it may be): its marker in a private directory of ours; the work directory ours
    (0711 or tighter: nobody else renames or replaces what is in it); the data directory
    the server user's own (0700), with a version file, its own postgresql.conf and no
    server on it. Looked at without following links; past here, nothing in the work
    directory can be swapped (what is in the data directory is written by `write_data_file`)."""
    def mode(path: Path) -> os.stat_result | None:
        try:
            return path.lstat()
        except OSError:
            return None

    folder, work, data = mode(marker.parent), mode(workdir), mode(workdir / "data")
    version = mode(workdir / "data" / "PG_VERSION")
    conf = mode(workdir / "data" / "postgresql.conf")
    if folder is None or not stat.S_ISDIR(folder.st_mode) or folder.st_uid != os.geteuid() \
            or folder.st_mode & 0o077:
        return f"its marker's directory {marker.parent} is not a private one of ours"
    if work is None or not stat.S_ISDIR(work.st_mode) or work.st_uid != os.geteuid() \
            or work.st_mode & 0o066:
        return "the work directory is not ours (0711 or tighter, not a link)"
    if data is None or not stat.S_ISDIR(data.st_mode) or data.st_uid != owner \
            or data.st_mode & 0o077:
        return "the data directory is not the server user's (0700, not a link)"
    if version is None or not stat.S_ISREG(version.st_mode):
        return "the data directory has no PG_VERSION"
    if conf is None or not stat.S_ISREG(conf.st_mode) or conf.st_nlink != 1 \
            or conf.st_uid != owner:
        return "its postgresql.conf is not a regular file of the server user's own"
    if os.path.lexists(workdir / "data" / "postmaster.pid"):
        return "a server was started on it (postmaster.pid)"
    return ""


def write_data_file(datadir: Path, name: str, text: str, *, owner: int, append: bool) -> None:
    """Write `text` to `name` in `datadir` (appended, or as its whole content) without
    following a link: the server's user owns the data directory and may have put a link
    there (to a file of root's, whom we may be), a FIFO, or a second name of another file.
    Only a regular file of one name owned by `owner` is written; one made here is given to
    `owner`, as the server reads it."""
    flags = os.O_WRONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
    try:
        dfd = os.open(datadir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise SafetyRefusal(f"{datadir} is not a data directory we can write in: {exc}") from exc
    try:
        try:
            fd = os.open(name, flags | os.O_CREAT | os.O_EXCL, 0o600, dir_fd=dfd)
            try:
                os.fchown(fd, owner, -1)
            except OSError:
                os.close(fd)
                raise
        except FileExistsError:
            fd = os.open(name, flags | (os.O_APPEND if append else 0), dir_fd=dfd)
    except OSError as exc:
        raise SafetyRefusal(f"{datadir / name} cannot be written safely ({exc}): it is not "
                            "a file of the server's own") from exc
    finally:
        os.close(dfd)
    with os.fdopen(fd, "w") as fh:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1 or st.st_uid != owner:
            raise SafetyRefusal(f"{datadir / name} is not a regular file of the server's own "
                                "(a link, a second name or another owner's): not written")
        if not append:
            os.ftruncate(fd, 0)
        fh.write(text)


def _private(path: Path, *, others: int = 0o022) -> bool:
    """A real directory (not a link) of ours that no one else may change (`others`: the mode
    bits that must be clear): what a template is read from and kept in. Anything else is
    ignored (a fresh initdb instead), never trusted."""
    try:
        st = path.lstat()
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid() and not st.st_mode & others


def copy_tree_argv(source: Path, dest: Path) -> list[str]:
    """`cp` copying the directory `source` to `dest` (which must not exist): modes, times and
    links kept, in one process (a Python loop over a data directory's thousand files waits
    on the interpreter lock once per file when another thread is busy, as pytest's imports
    are while an early sandbox starts: a second instead of a tenth)."""
    return ["cp", "-R", "--preserve=mode,timestamps,links", "--no-dereference", "--",
            str(source), str(dest)]


def chown_tree_argv(path: Path, user: str) -> list[str]:
    """`chown` giving `path` and everything below it (links themselves, never their targets)
    to `user` and its group."""
    return ["chown", "-R", "--no-dereference", "--", f"{user}:", str(path)]


def _copy_template(template: Path, datadir: Path, run_as: str | None,
                   runner: Runner = run) -> bool:
    """Copy `template` to `datadir` (which must not exist), owned by `run_as`; False, with
    nothing left behind, when there is no usable template (absent, or not 0700 and ours)."""
    if not (_private(template.parent) and _private(template, others=0o077)):
        return False
    try:
        runner(copy_tree_argv(template, datadir), what="copy the initdb template", timeout=120)
        if run_as:
            runner(chown_tree_argv(datadir, run_as), what="chown the data directory",
                   timeout=120)
        datadir.chmod(0o700)
    except (AtbError, OSError) as exc:
        log.warning("could not copy the initdb template %s (%s): running initdb", template, exc)
        removal.discard(datadir)
        return False
    return True


def _save_template(datadir: Path, template: Path) -> None:
    """Keep a copy of a fresh (never started) data directory as the template, owned by us
    and private (0700): the server's own user cannot change what later clusters start from.
    Best effort: a template that cannot be kept only means the next cluster runs initdb."""
    tmp = template.parent / f".{template.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        make_dirs(template.parent)
        if not _private(template.parent) or os.path.lexists(template):
            log.debug("not keeping an initdb template in %s: there is one, or the directory "
                      "is not a private one of ours", template.parent)
            return
        shutil.copytree(datadir, tmp, symlinks=True)  # the copies are ours, whoever ran initdb
        # a fresh initdb makes directories and files only: a link is the server user's doing
        # (between initdb and here), kept out of every later cluster
        if any(not (p.is_dir() or p.is_file()) or p.is_symlink() for p in tmp.rglob("*")):
            log.warning("not keeping an initdb template of %s: it holds a link or a special "
                        "file initdb does not make", datadir)
            return
        tmp.chmod(0o700)
        tmp.rename(template)  # atomic: a template is whole or absent; another run may win
    except (OSError, AtbError) as exc:
        log.debug("initdb template not kept in %s: %s", template.parent, exc)
    finally:
        removal.discard(tmp)


def server_conf(*, port: int, tcp: bool, socket_dir: Path | None, settings: Mapping[str, str],
                hba_file: Path | None) -> dict[str, str]:
    """The lines appended to the cluster's postgresql.conf: loopback TCP or no TCP at all,
    our socket directory, then the caller's settings (quoted as the file wants them). The
    socket is the server's account's alone (0700, not PostgreSQL's 0777): local connections
    are trusted, so any account that could open the socket would be the superuser, and run
    `COPY ... TO PROGRAM` as the server's account. Every client atb starts is root (who opens
    it anyway) or runs as the server's account (pgBackRest, a server's archive_command), and
    not as root the server runs as us."""
    conf = {
        "listen_addresses": "'127.0.0.1'" if tcp else "''",
        "port": str(port),
        "unix_socket_directories": f"'{socket_dir or ''}'",
        "logging_collector": "off",
        "max_connections": "50",
        **{k: _quote_setting(v) for k, v in settings.items()},
        "unix_socket_permissions": "0700",  # last: no caller's setting opens it
    }
    if hba_file is not None:
        conf.update(hba_file=f"'{hba_file}'", ssl="off")
    return conf


def _quote_setting(value: str) -> str:
    if value.replace(".", "").isdigit() or value in ("on", "off", "true", "false"):
        return value
    return "'" + value.replace("'", "''") + "'"


def server_ready(pid_file: Path, *, since: float) -> bool:
    """The server's lock file says it accepts connections, and it is the server started at
    `since` or later, still running (as `pg_ctl -w` reads it: line 3 the start time, with
    its 2 s of slack, line 8 the status)."""
    try:
        lines = pid_file.read_text().splitlines()
        pid, started = int(lines[0]), int(lines[2])
        ready = lines[7].strip() == "ready"
    except (OSError, ValueError, IndexError):
        return False
    return ready and started >= int(since) - 2 and not _exited(pid)


def _quit(pid: int, *, timeout: float = 30.0) -> bool:
    """Stop the server `pid` as `pg_ctl stop -m immediate` does (SIGQUIT: no shutdown
    checkpoint) and wait for it to end, looking every 2 ms where `pg_ctl -w` looks every
    100 ms (most of a small drill's teardown); False, nothing done, when it cannot be
    signalled (`pg_ctl` is then asked), True once it is gone (killed after `timeout`)."""
    try:
        os.kill(pid, signal.SIGQUIT)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    deadline = time.monotonic() + timeout
    while not _exited(pid):
        if time.monotonic() > deadline:
            _kill(pid)
            break
        time.sleep(0.002)
    return True


def _exited(pid: int) -> bool:
    """`pid` has ended: no such process, or one that only waits to be reaped (its parent,
    init here, reaps it; a zombie still answers a signal)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            state = fh.read().rsplit(")", 1)[-1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    except (OSError, IndexError):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False
    return state in ("Z", "X")


def _kill(pid: int) -> None:
    for sig in (15, 9):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        for _ in range(50):
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)


def random_password() -> str:
    return secrets.token_urlsafe(18)
