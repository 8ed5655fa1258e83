"""A throwaway PostgreSQL cluster: `initdb` into a temporary directory, `pg_ctl` start and stop.

Used by the drill's local sandbox, the demo's stand-in production, and the test suite.
PostgreSQL refuses to run as root, so as root the server runs as an unprivileged user.
"""

from __future__ import annotations

import logging
import os
import pwd
import secrets
import shutil
import socket
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from backup_core.conninfo import ConnInfo
from backup_core.errors import AtbError, CommandFailed, ToolchainError
from backup_core.runner import run
from backup_core.toolchain import Toolchain

log = logging.getLogger("atb.cluster")

# Settings for a cluster whose data is disposable: durability traded for restore speed.
FAST_SETTINGS: dict[str, str] = {
    "fsync": "off",
    "full_page_writes": "off",
    "synchronous_commit": "off",
    "wal_level": "minimal",
    "max_wal_senders": "0",
    "max_wal_size": "4GB",
    "checkpoint_timeout": "30min",
    "maintenance_work_mem": "512MB",
    "autovacuum": "off",
}


def service_user() -> str | None:
    """The unprivileged account the server runs as when we are root (None when we are not)."""
    if os.geteuid() != 0:
        return None
    for name in (os.environ.get("ATB_PG_USER", ""), "postgres", "nobody"):
        if not name:
            continue
        try:
            pwd.getpwnam(name)
        except KeyError:
            continue
        return name
    raise ToolchainError("running as root and no unprivileged user exists: set ATB_PG_USER")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Cluster:
    """Context manager: a running cluster on entry, stopped and deleted on exit (Ctrl-C too).

    With `tcp=False` the server opens no TCP port and listens on a unix socket inside its
    temporary directory. A `password` enables scram authentication for TCP clients.
    """

    toolchain: Toolchain
    password: str = ""
    tcp: bool = False
    settings: dict[str, str] = field(default_factory=dict)
    superuser: str = "postgres"
    base_dir: Path | None = None
    workdir: Path | None = field(default=None, init=False)
    port: int = field(default=5432, init=False)
    _running: bool = field(default=False, init=False)

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
        try:
            return int((self.datadir / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

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
        run_as = service_user()
        self.workdir = Path(tempfile.mkdtemp(prefix="atb-pg-", dir=self.base_dir))
        self.socket_dir.mkdir()
        if run_as:
            entry = pwd.getpwnam(run_as)
            for path in (self.workdir, self.socket_dir):
                os.chown(path, entry.pw_uid, entry.pw_gid)
            self.workdir.chmod(0o711)
        pwfile = self.workdir / "pwfile"
        initdb = [
            self.toolchain.tool("initdb"), "-D", str(self.datadir), "-U", self.superuser,
            "--encoding=UTF8", "--locale=C", "--auth-local=trust", "--no-sync",
        ]
        if self.password:
            pwfile.write_text(self.password + "\n")
            pwfile.chmod(0o600)
            if run_as:
                os.chown(pwfile, pwd.getpwnam(run_as).pw_uid, -1)
            initdb += ["--auth-host=scram-sha-256", f"--pwfile={pwfile}"]
        else:
            initdb += ["--auth-host=trust"]
        try:
            run(initdb, what="initdb", run_as=run_as, cwd=self.workdir, timeout=120)
        finally:
            pwfile.unlink(missing_ok=True)
        self.port = free_port() if self.tcp else 5432
        conf = {
            "listen_addresses": "'127.0.0.1'" if self.tcp else "''",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.socket_dir}'",
            "logging_collector": "off",
            "max_connections": "50",
            **{k: _quote_setting(v) for k, v in self.settings.items()},
        }
        with open(self.datadir / "postgresql.conf", "a") as fh:
            fh.write("\n# atb throwaway cluster\n")
            fh.writelines(f"{k} = {v}\n" for k, v in conf.items())
        try:
            run(
                [self.toolchain.tool("pg_ctl"), "-D", str(self.datadir), "-l", str(self.logfile),
                 "-w", "-t", "60", "start"],
                what="pg_ctl start", run_as=run_as, cwd=self.workdir, timeout=90,
            )
        except CommandFailed as exc:
            raise CommandFailed(
                f"the throwaway PostgreSQL {self.toolchain.version} server did not start: "
                f"{self._log_tail()}",
                detail=exc.detail,
            ) from exc
        self._running = True
        log.debug("cluster %s started (PostgreSQL %s)", self.workdir, self.toolchain.version)

    def _log_tail(self) -> str:
        try:
            lines = self.logfile.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "(no server log)"
        return lines[-1] if lines else "(empty server log)"

    def stop(self) -> None:
        if not self._running or self.workdir is None:
            return
        run_as = service_user()
        try:
            run(
                [self.toolchain.tool("pg_ctl"), "-D", str(self.datadir), "-m", "fast", "-w",
                 "-t", "30", "stop"],
                what="pg_ctl stop", run_as=run_as, cwd=self.workdir, timeout=60,
            )
        except AtbError:
            pid = self.pid
            if pid:
                _kill(pid)
        self._running = False

    def destroy(self) -> None:
        """Stop the server and delete every file of it; safe to call twice."""
        try:
            self.stop()
        finally:
            if self.workdir is not None and self.workdir.exists():
                shutil.rmtree(self.workdir, ignore_errors=True)


def _quote_setting(value: str) -> str:
    if value.replace(".", "").isdigit() or value in ("on", "off", "true", "false"):
        return value
    return "'" + value.replace("'", "''") + "'"


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
