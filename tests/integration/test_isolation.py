"""Application code cannot reach production, by construction: the routes nobody listed.

Against a real PostgreSQL 15 production, an integration command and Alembic env.py files
that find production on their own: `~/.pgpass`, `service=prod` in `~/.pg_service.conf`, a
variable atb does not know loaded from a `.env` file, a hard-coded unix socket. Each is
first shown to work outside atb (the route is live), then blocked inside before anything
connects; production's rows are unchanged (`fingerprint`).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from backup_core.ops.backup import create_backup
from backup_core.tools import db, toolchain
from backup_core.tools.cluster import Cluster
from backup_core.tools.conninfo import ConnInfo
from backup_core.tools.relay import Relay
from tests.conftest import make_database
from tests.helpers import atb, fingerprint
from tests.integration.test_production_guard import alembic_project

ENV_PY_FROM_DOTENV = '''
import pathlib
from alembic import context
from sqlalchemy import create_engine, pool
# as python-dotenv would: APP_DB_URL from the .env file beside alembic.ini
values = dict(line.split("=", 1) for line in
              (pathlib.Path(context.config.config_file_name).parent / ".env")
              .read_text().splitlines() if "=" in line)
engine = create_engine(values["APP_DB_URL"].strip(), poolclass=pool.NullPool)
with engine.connect() as connection:
    context.configure(connection=connection)
    with context.begin_transaction():
        context.run_migrations()
'''


@pytest.fixture(scope="module")
def production(pg15: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[
        tuple[ConnInfo, Path]]:
    """A production database and one backup of it, shared by the module's tests."""
    info = make_database(pg15, rows=50)
    path = create_backup(info, tmp_path_factory.mktemp("iso-backups")).path
    yield info, path


def _socket_url(cluster: Cluster, dbname: str) -> ConnInfo:
    return ConnInfo.make(dbname=dbname, host=str(cluster.socket_dir), port=cluster.port,
                         user="postgres")


def _home_naming(prod: ConnInfo, home: Path) -> Path:
    """A HOME whose ~/.pgpass and ~/.pg_service.conf name production."""
    home.mkdir(parents=True)
    pgpass = home / ".pgpass"
    pgpass.write_text(f"{prod.host}:{prod.port}:*:{prod.user}:{prod.password}\n")
    pgpass.chmod(0o600)
    (home / ".pg_service.conf").write_text(
        f"[prod]\nhost={prod.host}\nport={prod.port}\ndbname={prod.dbname}\n"
        f"user={prod.user}\n")
    return home


def _writer(psql: str, cluster: Cluster, prod: ConnInfo, tmp_path: Path) -> Path:
    """An integration command that tries every route to production and writes there."""
    insert = "INSERT INTO accounts(name) VALUES ('written by the integration command')"
    routes = {
        "service": f"{psql} 'service=prod' -c \"{insert}\"",
        "service-file-named": f"PGSERVICEFILE=$HOME/.pg_service.conf {psql} 'service=prod' "
                              f"-c \"{insert}\"",
        "pgpass": f"PGPASSFILE=$HOME/.pgpass {psql} -h {prod.host} -p {prod.port} "
                  f"-U {prod.user} -d {prod.dbname} -c \"{insert}\"",
        "socket": f"{psql} -h {cluster.socket_dir} -p {cluster.port} -U postgres "
                  f"-d {prod.dbname} -c \"{insert}\"",
    }
    script = tmp_path / "integration.sh"
    script.write_text("#!/bin/sh\n" + "".join(
        f"{cmd} >/dev/null 2>&1 && echo 'ROUTE {name} reached' || echo 'ROUTE {name} blocked'\n"
        for name, cmd in routes.items()) + "exit 0\n")
    script.chmod(0o755)
    return script


def _drill(path: Path, tmp_path: Path, *args: str, env: dict[str, str],
           url: ConnInfo) -> tuple[subprocess.CompletedProcess[str], dict]:
    done = atb("drill", "run", "--json", "--backup", str(path), "--no-record", "--schedule",
               "1d", "--sandbox", "local", "--report-dir", str(tmp_path / "reports"), *args,
               env=env, url=url)
    assert "Traceback" not in done.stderr, done.stderr
    return done, json.loads(done.stdout) if done.stdout.strip().startswith("{") else {}


def _outcome(result: dict, name: str) -> dict:
    return next(c for c in result["checks"] if c["name"] == name)


def test_an_integration_command_finds_no_production_through_pgpass_service_or_socket(
    production: tuple[ConnInfo, Path], pg15: Cluster, chain15: toolchain.Toolchain,
    tmp_path: Path
) -> None:
    """Route 6: ~/.pgpass, service=prod (the service file found by default and named
    explicitly), and production's unix socket; all live outside, all blocked in a drill."""
    prod, path = production
    home = _home_naming(prod, tmp_path / "home")
    psql = chain15.tool("psql")
    # the routes are live: each reaches production from a plain shell (read-only here)
    for args in (["service=prod"], ["-h", prod.host, "-p", prod.port, "-U", "postgres",
                                    "-d", prod.dbname],
                 ["-h", str(pg15.socket_dir), "-p", str(pg15.port), "-d", prod.dbname]):
        live = subprocess.run([psql, *args, "-tAc", "SELECT current_database()"],
                              env={"PATH": os.environ["PATH"], "HOME": str(home),
                                   "PGUSER": "postgres"},
                              capture_output=True, text=True, check=False)
        assert live.stdout.strip() == prod.dbname, (args, live.stderr)
    script = _writer(psql, pg15, prod, tmp_path)
    before = fingerprint(prod)
    done, result = _drill(path, tmp_path, "--integration-cmd", str(script), url=prod,
                          env={"HOME": str(home)})
    assert result, done.stderr  # FAIL for this fixture's missing heartbeat: not our concern
    assert _outcome(result, "test_application_integration_suite_passes")["outcome"] == "passed"
    tail = result["integration"]["output_tail"]
    assert sorted(line for line in tail.splitlines() if line.startswith("ROUTE")) == [
        "ROUTE pgpass blocked", "ROUTE service blocked", "ROUTE service-file-named blocked",
        "ROUTE socket blocked"]
    assert fingerprint(prod) == before
    assert result["isolation"]["level"] == "network"
    untouched = _outcome(result, "test_production_was_not_touched")
    assert untouched["outcome"] == "passed"
    assert untouched["evidence"][-1] == ("schema and Alembic revision unchanged; application "
                                         "code ran network-isolated (only the sandbox "
                                         "reachable)")
    md = Path(result["reports"]["md"]).read_text()
    assert "Isolation" in md and "network: new network and mount namespaces" in md


def test_without_namespaces_the_environment_is_still_sealed(
    production: tuple[ConnInfo, Path], pg15: Cluster, chain15: toolchain.Toolchain,
    tmp_path: Path
) -> None:
    """ATB_ISOLATION=off (a platform that cannot isolate): the drill says `environment
    only` and why, and libpq's default pgpass and service files are still out of reach."""
    prod, path = production
    home = _home_naming(prod, tmp_path / "home")
    psql = chain15.tool("psql")
    script = tmp_path / "service.sh"
    script.write_text(f"#!/bin/sh\n{psql} 'service=prod' -c 'SELECT 1' >/dev/null 2>&1 "
                      "&& echo 'ROUTE service reached' || echo 'ROUTE service blocked'\n"
                      f"{psql} -h {prod.host} -p {prod.port} -d {prod.dbname} -U postgres "
                      "-w -c 'SELECT 1' >/dev/null 2>&1 "
                      "&& echo 'ROUTE pgpass reached' || echo 'ROUTE pgpass blocked'\n")
    script.chmod(0o755)
    done, result = _drill(path, tmp_path, "--integration-cmd", str(script), url=prod,
                          env={"HOME": str(home), "ATB_ISOLATION": "off"})
    assert result, done.stderr
    assert result["isolation"] == {"level": "environment only", "reason": "ATB_ISOLATION=off",
                                   "allowed": []}
    tail = result["integration"]["output_tail"]
    assert "ROUTE service blocked" in tail and "ROUTE pgpass blocked" in tail
    assert _outcome(result, "test_production_was_not_touched")["evidence"][-1] == (
        "schema and Alembic revision unchanged; application code ran with a sealed "
        "environment only: ATB_ISOLATION=off")


def test_a_drill_during_which_production_changes_exits_8_like_restore(
    production: tuple[ConnInfo, Path], chain15: toolchain.Toolchain, tmp_path: Path
) -> None:
    """Without isolation (ATB_ISOLATION=off), an integration command that knows production's
    address and password changes its schema: the drill says so and exits 8, the one code for
    "production changed" that `restore --migrate` uses too."""
    prod, path = production
    script = tmp_path / "touch.sh"  # the password in a test's own file, read by psql's env
    script.write_text(f"#!/bin/sh\nPGPASSWORD='{prod.password}' {chain15.tool('psql')} "
                      f"-h {prod.host} -p {prod.port} -d {prod.dbname} -U {prod.user} -w "
                      "-c 'CREATE TABLE touched_by_the_app (i int)'\n")
    script.chmod(0o700)
    try:
        done, result = _drill(path, tmp_path, "--integration-cmd", str(script), url=prod,
                              env={"ATB_ISOLATION": "off"})
        assert done.returncode == 8, done.stdout + done.stderr
        touched = _outcome(result, "test_production_was_not_touched")
        assert touched["outcome"] == "failed", touched
        assert result["verdict"] == "FAIL"
    finally:
        with db.connect(prod, autocommit=True) as conn:
            conn.execute("DROP TABLE IF EXISTS touched_by_the_app")


def _dotenv_project(root: Path, prod: ConnInfo, url_in_dotenv: str) -> Path:
    ini = alembic_project(root, "generic", prod)
    (ini.parent / "migrations" / "env.py").write_text(ENV_PY_FROM_DOTENV)
    (ini.parent / ".env").write_text(f"APP_DB_URL={url_in_dotenv}\n")
    return ini


def test_an_env_py_reading_a_dotenv_file_cannot_migrate_production_in_a_drill(
    production: tuple[ConnInfo, Path], tmp_path: Path
) -> None:
    """Route 7 in a drill: APP_DB_URL from `.env` names production. The migration fails
    before anything connects; the drill FAILs at the migration, production unchanged."""
    prod, path = production
    ini = _dotenv_project(tmp_path / "app", prod, prod.sqlalchemy_url)
    before = fingerprint(prod)
    done, result = _drill(path, tmp_path, "--alembic-config", str(ini), url=prod, env={})
    assert done.returncode == 1, done.stdout + done.stderr
    migration = _outcome(result, "test_alembic_upgrade_head_reaches_the_script_head")
    assert migration["outcome"] == "failed"
    assert "Connection refused" in migration["message"]
    assert _outcome(result, "test_production_was_not_touched")["outcome"] == "passed"
    assert fingerprint(prod) == before


@pytest.mark.parametrize("route", ["tcp", "socket"])
def test_an_env_py_reading_a_dotenv_file_cannot_migrate_production_on_restore(
    route: str, production: tuple[ConnInfo, Path], pg15: Cluster, pg18: Cluster,
    tmp_path: Path
) -> None:
    """Route 7 in `atb db restore --migrate`, by TCP and by production's unix socket hard-
    coded: the target (on another server: a superuser migration beside production is refused
    outright) is migrated through a relay that opens only the target; production is
    unreachable (exit 5)."""
    prod, path = production
    named = prod if route == "tcp" else _socket_url(pg15, prod.dbname)
    ini = _dotenv_project(tmp_path / "app", prod, named.sqlalchemy_url)
    target = pg18.url(f"{prod.dbname}_{route}_copy")
    before = fingerprint(prod)
    done = atb("db", "restore", str(path), "--migrate", "--alembic-config", str(ini),
               url=prod, env={"ATB_TARGET_URL": target.secret_url})
    assert done.returncode == 5, done.stderr
    assert "NOT migrated" in done.stderr
    assert ("Connection refused" if route == "tcp" else "connection is bad") in done.stderr
    assert done.stderr.endswith("(it ran isolated: only the target is reachable, at "
                                f"127.0.0.1:{pg18.port}, and no unix socket can be opened)\n")
    assert fingerprint(prod) == before
    with db.connect(target) as conn:  # restored, never migrated
        assert conn.execute("SELECT version_num FROM alembic_version").fetchone() == (
            "0001_initial",)


def test_a_relay_opens_only_its_database(pg15: Cluster) -> None:
    """The relay that lets a restore target's Alembic reach its database on production's
    server refuses every other database (production's, template1) with a FATAL error."""
    target = make_database(pg15, rows=1)
    with Relay(target, only_database=target.dbname) as relay:
        url = relay.url()
        assert url.host == str(relay.socket_dir) and relay.socket_path.is_socket()
        with db.connect(url) as conn:
            assert conn.execute("SELECT current_database()").fetchone() == (target.dbname,)
        for other in ("postgres", "template1"):
            with pytest.raises(psycopg.OperationalError,
                               match=f"atb: this connection may only open database "
                                     f"{target.dbname}"):
                psycopg.connect(url.with_dbname(other).conninfo, password=target.password,
                                connect_timeout=5)
    assert not relay.socket_path.exists()


def test_the_isolated_launcher_covers_a_live_postgres_socket(pg15: Cluster) -> None:
    """The mechanism itself: a live PostgreSQL socket of the host, reachable outside, is
    refused inside; loopback is up inside (its own, empty)."""
    from backup_core.tools import isolation

    probe = [sys.executable, "-c",
             "import psycopg, socket, sys\n"
             "s = socket.socket(); s.bind(('127.0.0.1', 0)); s.close()\n"
             f"try:\n    psycopg.connect({_socket_url(pg15, 'postgres').conninfo!r}, "
             "connect_timeout=3)\nexcept psycopg.OperationalError as e:\n"
             "    print('blocked:', str(e).splitlines()[0]); sys.exit(0)\n"
             "print('reached'); sys.exit(1)\n"]
    assert subprocess.run(probe, capture_output=True, text=True, check=False).returncode == 1
    argv, iso = isolation.wrap(probe, env={})
    assert iso.level == "network"
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("blocked:") and "Connection refused" in done.stdout


def test_an_allowed_service_is_let_through_and_production_never_is(
    production: tuple[ConnInfo, Path], tmp_path: Path
) -> None:
    """--allow-service 127.0.0.1:PORT (a mock server the suite needs) reaches that server
    from inside, at the same address, and is recorded; production's address is refused
    before anything starts (exit 2, no report)."""
    prod, path = production
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def answer() -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = server.accept()
                with conn:
                    conn.sendall(b"mock says hello " + conn.recv(100))

    threading.Thread(target=answer, daemon=True).start()
    script = tmp_path / "mock.sh"
    script.write_text(
        f"#!/bin/sh\nexec {sys.executable} -c \"import socket; s = socket.create_connection("
        f"('127.0.0.1', {port}), timeout=10); s.sendall(b'drill'); print(s.recv(100))\"\n")
    script.chmod(0o755)
    try:
        done, result = _drill(path, tmp_path, "--integration-cmd", str(script),
                              "--allow-service", f"127.0.0.1:{port}", url=prod, env={})
    finally:
        server.close()
    assert result, done.stderr
    assert result["integration"]["output_tail"] == "b'mock says hello drill'"
    assert result["isolation"]["level"] == "network"
    assert result["isolation"]["allowed"] == [f"127.0.0.1:{port}"]
    assert f"let through: 127.0.0.1:{port}" in Path(result["reports"]["md"]).read_text()
    refused = atb("drill", "run", "--backup", str(path), "--no-record", "--report-dir",
                  str(tmp_path / "refused"), "--allow-service", f"localhost:{prod.port}",
                  url=prod)
    assert refused.returncode == 2, refused.stderr
    assert refused.stderr == (f"atb: error: --allow-service localhost:{prod.port} is "
                              f"production's address ({prod.redacted}): it is never let "
                              "through\n")
    assert not (tmp_path / "refused").exists()


def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                stat = (proc / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(proc.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        return "zombie" not in (Path(f"/proc/{pid}/status").read_text().split("State:")[1]
                                .splitlines()[0])
    except (OSError, IndexError):
        return False


def _processes_mentioning(text: str) -> set[int]:
    found = set()
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            with contextlib.suppress(OSError):
                if text.encode() in (proc / "cmdline").read_bytes() and _alive(int(proc.name)):
                    found.add(int(proc.name))
    return found


def test_a_drill_whose_atb_is_killed_tears_itself_down(
    production: tuple[ConnInfo, Path], tmp_path: Path, sandbox_tmp: Path
) -> None:
    """kill -9 of `atb drill run`: its pytest child is told (SIGHUP, by the kernel) and
    stops the integration command and the sandbox server: nothing of the drill survives."""
    _, path = production
    marker = tmp_path / "integration-started"
    slow = tmp_path / "slow.sh"
    slow.write_text(f"#!/bin/sh\ntouch {marker}\nsleep 120\n")
    slow.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env["TMPDIR"] = str(sandbox_tmp)  # the sandbox's server is found by its data directory
    proc = subprocess.Popen([sys.executable, "-m", "drills.cli", "drill", "run", "--backup",
                             str(path), "--sandbox", "local", "--no-record",
                             "--integration-cmd", str(slow), "--report-dir",
                             str(tmp_path / "r")], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not marker.exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
        assert marker.exists(), "the integration command should have started"
        drill_processes = _descendants(proc.pid) | _processes_mentioning(str(sandbox_tmp))
        assert _processes_mentioning(str(sandbox_tmp)), "the sandbox server should run now"
        assert any(b"sleep" in Path(f"/proc/{p}/cmdline").read_bytes()
                   for p in drill_processes if _alive(p))
    finally:
        proc.kill()
        proc.wait()
    deadline = time.monotonic() + 60
    while any(_alive(p) for p in drill_processes) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert [p for p in drill_processes if _alive(p)] == []
    assert _processes_mentioning(str(sandbox_tmp)) == set()


def test_a_target_named_by_service_is_relayed_to_the_server_the_service_names(
    pg15: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A relay needs an address: a target given as `service=` is resolved first, as libpq
    resolves it, and the isolated child (which gets no service file) reaches it."""
    from backup_core.tools import isolation

    target = make_database(pg15, rows=1)
    services = tmp_path / "pg_service.conf"
    services.write_text(f"[copy]\nhost={target.host}\nport={target.port}\n"
                        f"dbname={target.dbname}\nuser=postgres\npassword={target.password}\n")
    monkeypatch.setenv("PGSERVICEFILE", str(services))  # where atb's own process finds it
    named = ConnInfo.parse("service=copy", env={"PGSERVICEFILE": str(services)})
    found = isolation.resolved(named)
    assert (found.host, found.port, found.dbname, found.get("service")) == (
        target.host, target.port, target.dbname, "")
    assert found.password == target.password
    with isolation.isolated([sys.executable, "-c", "import os, psycopg; print(psycopg.connect("
                             "os.environ['URL']).execute('SELECT current_database()')"
                             ".fetchone()[0])"], named) as (argv, reach, iso):
        done = subprocess.run(argv, env={"PATH": os.environ["PATH"],
                                         "URL": reach.secret_url},
                              capture_output=True, text=True, check=False)
    assert iso.level == "network"
    assert (done.returncode, done.stdout.strip()) == (0, target.dbname), done.stderr
