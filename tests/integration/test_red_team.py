"""Red team of issue 16: routes to production nobody listed, each tried against a real
PostgreSQL 15 production by application code written as a stranger would, and blocked
before it connects (production's rows unchanged, by `fingerprint`)."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from backup_core.ops.backup import create_backup
from backup_core.tools import db, isolation, toolchain
from backup_core.tools.cluster import Cluster
from backup_core.tools.conninfo import ConnInfo
from tests.conftest import make_database
from tests.helpers import atb, copy_backup, drill_held_at_its_integration, fingerprint
from tests.integration.test_isolation import _drill, _processes_mentioning
from tests.integration.test_production_guard import alembic_project

INSERT = "INSERT INTO accounts(name) VALUES ('written by the red team')"


@pytest.fixture(scope="module")
def production(pg15: Cluster, tmp_path_factory: pytest.TempPathFactory) -> tuple[
        ConnInfo, Path]:
    """A production database and one backup of it, shared by the module's tests."""
    info = make_database(pg15, rows=50)
    return info, create_backup(info, tmp_path_factory.mktemp("red-backups")).path


@contextlib.contextmanager
def local_forwarder(port: int) -> Iterator[int]:
    """What an operator runs beside production (pgbouncer, `ssh -L`): a loopback port
    whose bytes go to production's port."""
    server = socket.create_server(("127.0.0.1", 0))

    def pipe(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        for s in (src, dst):
            s.close()

    def serve() -> None:
        with contextlib.suppress(OSError):
            while True:
                client, _ = server.accept()
                up = socket.create_connection(("127.0.0.1", port))
                threading.Thread(target=pipe, args=(client, up), daemon=True).start()
                threading.Thread(target=pipe, args=(up, client), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield server.getsockname()[1]
    finally:
        server.close()


def test_an_allowed_service_that_forwards_to_production_carries_no_postgresql(
    production: tuple[ConnInfo, Path], pg15: Cluster, tmp_path: Path
) -> None:
    """`--allow-service 127.0.0.1:F` where F is a local forwarder to production (its address
    in no spelling atb can compare): the integration command, holding production's
    password from its own configuration, connects there and writes. The allowed service
    carries any protocol but PostgreSQL's, so the write never reaches production."""
    prod, path = production
    with local_forwarder(int(prod.port)) as port:
        via = prod.with_params(host="127.0.0.1", port=str(port))
        script = tmp_path / "integration.sh"
        script.write_text(
            f"#!/bin/sh\n{sys.executable} -c \"import psycopg; psycopg.connect("
            f"{via.conninfo!r}, password={prod.password!r}, connect_timeout=5, "
            f"autocommit=True).execute(\\\"{INSERT}\\\")\" >/dev/null 2>&1 "
            "&& echo 'ROUTE forwarder reached' || echo 'ROUTE forwarder blocked'\n")
        script.chmod(0o755)
        before = fingerprint(prod)
        done, result = _drill(path, tmp_path, "--integration-cmd", str(script),
                              "--allow-service", f"127.0.0.1:{port}", url=prod, env={})
    assert result, done.stderr
    assert result["isolation"]["allowed"] == [f"127.0.0.1:{port}"]
    assert result["integration"]["output_tail"] == "ROUTE forwarder blocked"
    assert fingerprint(prod) == before
    # the drill inside the PID namespace sees no owner outside: it reaped nobody's sandbox
    assert (pg15.datadir / "PG_VERSION").is_file()


def test_application_code_run_as_root_cannot_walk_to_productions_socket_through_proc(
    pg15: Cluster, production: tuple[ConnInfo, Path]
) -> None:
    """Run as root, application code becomes the server's user and opens production's
    socket by /proc/<postmaster>/root, the host's file system where nothing is covered;
    or signals production's postmaster. Inside, no process of the host is visible."""
    prod, _ = production
    sock = f"{pg15.socket_dir}/.s.PGSQL.{pg15.port}"
    code = f'''
import os, pwd, socket
try:
    user = pwd.getpwnam("postgres")
    os.setgid(user.pw_gid); os.setuid(user.pw_uid)
except (KeyError, OSError):
    pass
s = socket.socket(socket.AF_UNIX)
try:
    s.connect("/proc/{pg15.pid}/root{sock}")
    print("reached")
except OSError as exc:
    print("blocked", exc.errno)
try:
    os.kill({pg15.pid}, 0)
    print("signalled")
except OSError as exc:
    print("no signal", exc.errno)
'''
    argv, iso = isolation.wrap([sys.executable, "-c", code], env={})
    assert iso.level == "network"
    before = fingerprint(prod)
    done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[0] == "blocked 2", done.stdout  # ENOENT: no such process
    assert done.stdout.split("\n")[1] == "no signal 3", done.stdout  # ESRCH
    assert fingerprint(prod) == before


@pytest.mark.parametrize("spelling", ["0.0.0.0", "[::]", "127.1", "vm"])
def test_productions_port_in_other_spellings_is_refused(spelling: str,
                                                         production: tuple[ConnInfo, Path]
                                                         ) -> None:
    """Production on loopback: its port under any other loopback spelling is refused."""
    prod, _ = production
    from backup_core.tools.errors import ConfigError
    with pytest.raises(ConfigError):
        isolation.refuse_production_service([isolation.check_service(
            f"{spelling}:{prod.port}")], prod)


def test_a_double_forked_daemon_of_application_code_ends_with_it(tmp_path: Path) -> None:
    """A subprocess that double-forks (a daemon the integration command starts) does not
    outlive the command: the namespace's init ends, the kernel kills what is left."""
    marker = f"atb-red-team-daemon-{os.getpid()}"
    code = ("import os, sys\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
            "        null = os.open(os.devnull, os.O_RDWR)\n"
            "        for fd in (0, 1, 2):\n            os.dup2(null, fd)\n"
            "        os.execv(sys.executable, [sys.executable, '-c', "
            f"'import time; time.sleep(120)', {marker!r}])\n    os._exit(0)\n"
            "os.wait()\nprint('forked')\n")
    argv, iso = isolation.wrap([sys.executable, "-c", code], env={})
    assert iso.level == "network"
    done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=60)
    assert (done.returncode, done.stdout) == (0, "forked\n"), done.stderr
    left = _processes_mentioning(marker)
    for pid in left:  # on a launcher without the PID namespace: ours to end
        os.kill(pid, signal.SIGKILL)
    assert left == set()


def test_a_killed_isolated_drills_sandbox_dies_with_it_and_its_directory_is_reaped(
    production: tuple[ConnInfo, Path], sandbox_tmp: Path, tmp_path: Path
) -> None:
    """kill -9 of a network-isolated drill: its local sandbox's server (inside the drill's
    PID namespace) dies at once; the next `atb doctor` removes the directory it left."""
    _, path = production
    proc, workdir = drill_held_at_its_integration(path, tmp_path, sandbox_tmp)
    assert _processes_mentioning(str(workdir)) != set()  # its server runs
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    deadline = time.monotonic() + 10
    while _processes_mentioning(str(workdir)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _processes_mentioning(str(workdir)) == set()
    done = atb("doctor", env={"TMPDIR": str(sandbox_tmp)})
    assert done.returncode == 0, done.stderr
    reaped = [ln for ln in done.stderr.splitlines() if "reaped the local sandbox" in ln]
    assert len(reaped) == 1 and reaped[0].endswith(f"removed {workdir}"), done.stderr
    assert not workdir.exists()


SOCKET_ROUTES = """
import socket, sys
for name, path in (("hard link", sys.argv[1]), ("docker", "/var/run/docker.sock")):
    try:
        socket.socket(socket.AF_UNIX).connect(path)
        print(name, "reached")
    except OSError as exc:
        print(name, "blocked", exc.errno)
"""
TARGET = """
import os, psycopg
with psycopg.connect(os.environ["DATABASE_URL"], connect_timeout=5) as conn:
    print("target", conn.execute("SELECT current_database()").fetchone()[0])
"""


def test_a_hard_link_to_productions_socket_under_another_name_is_unreachable(
    pg15: Cluster, tmp_path: Path
) -> None:
    """Production's socket is mode 0777: any local user may hard-link it (protected_hardlinks
    allows a file one can read and write) under a name nobody lists, and the Docker engine's
    socket is another way out. Application code (`restore --migrate`'s Alembic, an
    integration command) can open no unix socket at all, whatever its path: it reaches its
    target on the namespace's loopback, and nothing else."""
    link = tmp_path / "app.sock"
    os.link(f"{pg15.socket_dir}/.s.PGSQL.{pg15.port}", link)
    target = make_database(pg15, rows=1)
    with isolation.isolated([sys.executable, "-c", SOCKET_ROUTES + TARGET, str(link)],
                            target) as (argv, reach, iso):
        assert iso.level == "network" and "no unix socket" in iso.reason
        assert reach.host == "127.0.0.1"
        done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=60,
                              env={"PATH": os.environ["PATH"], "DATABASE_URL":
                                   reach.secret_url})
    assert done.stdout == ("hard link blocked 13\ndocker blocked 13\n"
                           f"target {target.dbname}\n"), done.stderr
    # the same code without the filter reaches production through the link: the route is live
    argv, _ = isolation.wrap([sys.executable, "-c", SOCKET_ROUTES, str(link)], env={})
    live = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=60)
    assert live.stdout.splitlines()[0] == "hard link reached", live.stderr


def test_an_integration_command_in_a_drill_opens_no_unix_socket_but_reaches_the_sandbox(
    production: tuple[ConnInfo, Path], pg15: Cluster, chain15: toolchain.Toolchain,
    tmp_path: Path
) -> None:
    """Inside a drill (its pytest child in the namespaces already): the integration command,
    holding production's password, writes through a hard link to production's socket named
    as libpq looks for one; refused at the socket, production's rows unchanged, while the
    sandbox answers on its loopback."""
    prod, path = production
    links = tmp_path / "links"
    links.mkdir()
    os.link(f"{pg15.socket_dir}/.s.PGSQL.{pg15.port}", links / f".s.PGSQL.{pg15.port}")
    psql = chain15.tool("psql")
    script = tmp_path / "integration.sh"
    script.write_text(
        f"#!/bin/sh\nPGPASSWORD={prod.password} {psql} -h {links} -p {pg15.port} -U postgres "
        f"-d {prod.dbname} -c \"{INSERT}\" 2>&1 | grep -o 'Permission denied' | head -1\n"
        f"{psql} \"$DATABASE_URL\" -tAc 'SELECT count(*) FROM accounts'\n")
    script.chmod(0o755)
    before = fingerprint(prod)
    with db.connect(prod) as conn:  # the backup's rows, which the sandbox holds
        rows = conn.execute("SELECT count(*) FROM accounts").fetchone()[0]
    done, result = _drill(path, tmp_path, "--integration-cmd", str(script), url=prod, env={})
    assert result, done.stderr
    assert result["isolation"]["level"] == "network"
    assert result["integration"]["output_tail"] == f"Permission denied\n{rows}"
    assert fingerprint(prod) == before


def test_application_code_cannot_delete_the_backup_being_drilled(
    production: tuple[ConnInfo, Path], tmp_path: Path
) -> None:
    """A careless integration suite's cleanup (`rm -rf` of what it thinks is its own) runs
    as root inside the drill's namespaces, where the backup tree is bound read-only: the
    backup survives (its verdict, when recorded, is written by atb outside)."""
    prod, path = production
    copy = tmp_path / "backups" / path.parent.name / path.name
    copy.parent.mkdir(parents=True)
    for f in path.parent.iterdir():
        if f.name.startswith(path.name.removesuffix(".dump")):
            copy.with_name(f.name).write_bytes(f.read_bytes())
    script = tmp_path / "cleanup.sh"
    script.write_text(f"#!/bin/sh\nrm -f {copy}\n")
    script.chmod(0o755)
    before = copy.read_bytes()
    done, result = _drill(copy, tmp_path, "--integration-cmd", str(script), url=prod, env={})
    assert result, done.stderr
    assert result["isolation"]["level"] == "network"
    assert copy.read_bytes() == before
    integration = next(c for c in result["checks"]
                       if c["name"] == "test_application_integration_suite_passes")
    assert integration["outcome"] == "failed"  # rm: Read-only file system
    assert "Read-only file system" in result["integration"]["output_tail"]


ENV_PY_THROUGH_THE_SERVER = '''
from alembic import context
from sqlalchemy import engine_from_config, pool
engine = engine_from_config(context.config.get_section(context.config.config_ini_section),
                            prefix="sqlalchemy.", poolclass=pool.NullPool)
with engine.connect() as connection:
    # the server runs outside every namespace: a superuser's COPY runs a program there
    connection.exec_driver_sql(%r)
    connection.commit()
    context.configure(connection=connection)
    with context.begin_transaction():
        context.run_migrations()
'''


def test_restore_migrate_as_a_superuser_cannot_reach_production_through_the_server(
    production: tuple[ConnInfo, Path], pg15: Cluster, chain15: toolchain.Toolchain,
    tmp_path: Path
) -> None:
    """`restore --migrate` into a new database on production's server, as the superuser
    operators restore with: the relay opens only the target, but env.py's COPY TO PROGRAM
    (or server files) would act on production from inside the server. Refused before
    anything is restored; the target is never created."""
    prod, path = production
    ini = alembic_project(tmp_path / "app", "generic", prod)
    psql = chain15.tool("psql")
    program = (f"{psql} -h {pg15.socket_dir} -p {pg15.port} -U postgres -d {prod.dbname} "
               f"-c \"{INSERT}\"")
    (ini.parent / "migrations" / "env.py").write_text(
        ENV_PY_THROUGH_THE_SERVER % ("COPY (SELECT 1) TO PROGRAM '" + program.replace("'", "''")
                                     + "'"))
    before = fingerprint(prod)
    target = prod.with_dbname(f"{prod.dbname}_server_route")
    done = atb("db", "restore", str(path), "--migrate", "--alembic-config", str(ini),
               url=prod, env={"ATB_TARGET_URL": target.secret_url})
    assert done.returncode == 8, done.stderr
    assert done.stderr.count("\n") == 1 and done.stderr.startswith(
        "atb: error: refusing --migrate as postgres on production's server: its server-level "
        "powers (superuser) would let env.py reach production through the server"), done.stderr
    assert fingerprint(prod) == before
    with db.connect(pg15.url(), autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM pg_database WHERE datname = %s",
                            (target.dbname,)).fetchone() == (0,)


def test_productions_tcp_address_in_every_spelling_is_unreachable_inside(
    production: tuple[ConnInfo, Path]
) -> None:
    """127.0.0.1, localhost, the host's name, hostaddr= under another host name: each reaches
    production from a plain process and nothing from inside the namespaces."""
    prod, _ = production
    spellings = [f"host=127.0.0.1 port={prod.port}", f"host=localhost port={prod.port}",
                 f"host={socket.gethostname()} port={prod.port}",
                 f"host=db.example hostaddr=127.0.0.1 port={prod.port}"]
    code = ("import psycopg, sys\nfor s in sys.argv[1:]:\n    try:\n"
            f"        psycopg.connect(s + ' dbname={prod.dbname} user={prod.user}', "
            f"password={prod.password!r}, connect_timeout=3).close()\n"
            "        print('reached')\n    except psycopg.OperationalError:\n"
            "        print('blocked')\n")
    outside = subprocess.run([sys.executable, "-c", code, *spellings], capture_output=True,
                             text=True, check=False, timeout=60)
    assert outside.stdout.split() == ["reached"] * 4, outside.stderr
    argv, iso = isolation.wrap([sys.executable, "-c", code, *spellings], env={})
    assert iso.level == "network"
    inside = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=60)
    assert inside.stdout.split() == ["blocked"] * 4, inside.stderr


def test_verify_of_a_fifo_named_like_a_backup_says_what_it_is_and_never_hangs(
    tmp_path: Path
) -> None:
    fifo = tmp_path / "backup-20260101T000000Z.dump"
    os.mkfifo(fifo)
    done = atb("db", "verify", str(fifo), env={"BACKUP_DIR": str(tmp_path)}, timeout=30)
    assert (done.returncode, done.stdout) == (1, f"FAIL {fifo}: exists: not a regular file\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == [fifo.name]  # nothing recorded


def test_the_sandbox_server_itself_opens_no_socket_of_the_host(
    production: tuple[ConnInfo, Path], pg15: Cluster, chain15: toolchain.Toolchain,
    tmp_path: Path
) -> None:
    """The integration command is the local sandbox's superuser: `COPY ... TO PROGRAM` runs
    a program as the server, outside the command's own filter. The sandbox server is sealed
    too (it listens on the namespace's loopback, and opens no unix socket): the program's
    connection to production's socket, by a hard link where the server's user can reach it,
    is refused; production's rows are unchanged."""
    prod, path = production
    links = Path(tempfile.mkdtemp(prefix="atb-red-links-", dir=pg15.socket_dir.parent.parent))
    try:
        links.chmod(0o755)
        os.link(f"{pg15.socket_dir}/.s.PGSQL.{pg15.port}", links / f".s.PGSQL.{pg15.port}")
        psql = chain15.tool("psql")
        program = (f"{psql} -h {links} -p {pg15.port} -U postgres -d {prod.dbname} "
                   f"-c \"{INSERT}\"")
        copy = "COPY (SELECT 1) TO PROGRAM '" + program.replace("'", "''") + "'"
        script = tmp_path / "integration.sh"
        script.write_text(f"#!/bin/sh\n{psql} \"$DATABASE_URL\" -v ON_ERROR_STOP=1 -c "
                          f"{shlex.quote(copy)} 2>&1 | grep -o 'exited with exit code 2'\n")
        script.chmod(0o755)
        before = fingerprint(prod)
        done, result = _drill(path, tmp_path, "--integration-cmd", str(script), url=prod,
                              env={})
    finally:
        shutil.rmtree(links, ignore_errors=True)
    assert result, done.stderr
    assert result["integration"]["output_tail"] == "exited with exit code 2"
    assert fingerprint(prod) == before


USER_CHECK = '''
import socket

import psycopg
import pytest

pytestmark = pytest.mark.drill

try:  # module-level code runs when the drill imports the file
    socket.socket(socket.AF_UNIX).connect(%r)
    AT_IMPORT = "reached"
except OSError as exc:
    AT_IMPORT = f"blocked {exc.errno}"


def _attempt():
    try:
        socket.socket(socket.AF_UNIX).connect(%r)
        return "reached"
    except OSError as exc:
        return f"blocked {exc.errno}"


@pytest.fixture
def at_setup():
    before = _attempt()
    yield before
    assert _attempt() == "blocked 13"  # at teardown too


def test_a_check_that_reaches_for_production(drill_url, at_setup):
    """Written as a careless operator would: production's socket by a hard link, and the
    Docker engine's socket (a container on the host's network reaches production)."""
    assert (AT_IMPORT, at_setup) == ("blocked 13", "blocked 13")
    reached = []
    for path in (%r, "/var/run/docker.sock"):
        try:
            socket.socket(socket.AF_UNIX).connect(path)
            reached.append("reached")
        except OSError as exc:
            reached.append(f"blocked {exc.errno}")
    with psycopg.connect(drill_url.conninfo, **dict(drill_url.secrets)) as conn:
        rows = conn.execute("SELECT count(*) FROM accounts").fetchone()[0]
    assert (reached, rows) == (["blocked 13", "blocked 13"], %d)
'''


@pytest.mark.parametrize("provider", ["local", "docker"])
def test_your_own_checks_open_no_unix_socket_but_reach_the_copy(
    provider: str, production: tuple[ConnInfo, Path], pg15: Cluster, tmp_path: Path,
    request: pytest.FixtureRequest
) -> None:
    """Your checks run in the drill's pytest process, beside atb's own work (which holds
    the Docker engine's socket): each runs in a thread of its own that can open no unix
    socket, where the sandbox answers on the namespace's loopback (a container's socket
    carried there)."""
    prod, path = production
    docker = ["--sandbox", "docker", "--docker-image", request.getfixturevalue(
        "docker_image")] if provider == "docker" else []
    link = tmp_path / "app.sock"
    os.link(f"{pg15.socket_dir}/.s.PGSQL.{pg15.port}", link)
    with db.connect(prod) as conn:
        rows = conn.execute("SELECT count(*) FROM accounts").fetchone()[0]
    checks = tmp_path / "checks" / "test_reach.py"
    checks.parent.mkdir()
    checks.write_text(USER_CHECK % (str(link), str(link), str(link), rows))
    done, result = _drill(path, tmp_path, "--checks", str(checks.parent), *docker, url=prod,
                          env={})
    assert result, done.stderr
    assert result["sandbox"]["provider"] == provider
    mine = next(c for c in result["checks"]
                if c["name"] == "test_a_check_that_reaches_for_production")
    assert (mine["outcome"], mine["message"]) == ("passed", "")


NOBODY_CHECKS = '''
import ctypes, os, socket, sys
print("hidden", open(sys.argv[1]).read() == "")
try:
    socket.socket(socket.AF_UNIX)
    print("unix open")
except OSError as exc:
    print("unix", exc.errno)
try:
    socket.create_connection(("127.0.0.1", int(sys.argv[2])), timeout=5)
    print("tcp open")
except OSError as exc:
    print("tcp", exc.errno)
libc = ctypes.CDLL(None, use_errno=True)
print("umount", libc.umount2(sys.argv[1].encode(), 0), ctypes.get_errno())
print("uid", os.getuid())
'''


def test_isolation_holds_without_root_through_a_user_namespace(pg15: Cluster) -> None:
    """An operator who is not root: the launcher makes its namespaces through a user
    namespace (run here as `nobody`, with the system's Python and only the launcher's two
    modules). A covered file reads empty, no unix socket opens, production's TCP port is
    unreachable, and the command cannot unmount the cover (its capabilities are dropped)."""
    if shutil.which("setpriv") is None or not Path("/usr/bin/python3").exists():
        pytest.skip("needs setpriv and a system python3")
    work = Path(tempfile.mkdtemp(prefix="atb-nobody-", dir="/tmp"))
    try:
        work.chmod(0o755)
        package = work / "backup_core" / "tools"
        package.mkdir(parents=True)
        root = Path(__file__).resolve().parents[2] / "backup_core"
        for rel in ("__init__.py", "tools/__init__.py", "tools/isolate_exec.py",
                    "tools/seccomp.py", "tools/namespaces.py"):
            (work / "backup_core" / rel).write_bytes((root / rel).read_bytes())
        secret = work / "pgpass"
        secret.write_text("*:*:*:*:production-password\n")
        secret.chmod(0o644)
        argv = isolation.isolated_argv(
            ["/usr/bin/python3", "-c", NOBODY_CHECKS, str(secret), str(pg15.port)],
            hide=[str(secret)], root=False, unshare_path=shutil.which("unshare") or "unshare",
            no_unix=True)
        argv[argv.index(sys.executable)] = "/usr/bin/python3"
        done = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                               *argv], capture_output=True, text=True, check=False, timeout=60,
                              cwd=work, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(work)})
    finally:
        shutil.rmtree(work, ignore_errors=True)
    assert done.stdout == "hidden True\nunix 13\ntcp 111\numount -1 1\nuid 65534\n", \
        done.stdout + done.stderr


ATTEMPT = '''
import os, socket


def attempt(where):
    try:
        socket.socket(socket.AF_UNIX).connect(%r)
        os.environ["ATB_RT_" + where] = "reached"
    except OSError as exc:
        os.environ["ATB_RT_" + where] = f"blocked {exc.errno}"
'''

ROOT_CONFTEST = '''
from attempt import attempt

pytest_plugins = ["reach_plugin"]
attempt("root_import")


def pytest_configure(config):
    attempt("root_configure")
'''

REACH_PLUGIN = '''
import pytest

from attempt import attempt

attempt("plugin_import")


def pytest_runtest_setup(item):
    attempt("plugin_setup")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    attempt("plugin_call")
    return (yield)
'''

CHECKS_CONFTEST = '''
from attempt import attempt

attempt("checks_import")


def pytest_collection_modifyitems(items):
    attempt("checks_collection")
'''

CLASS_CHECK = '''
import os
import unittest

import pytest

from attempt import attempt

pytestmark = pytest.mark.drill


def pytest_generate_tests(metafunc):
    if "generated" in metafunc.fixturenames:
        attempt("generate_tests")
        metafunc.parametrize("generated", [1])


class TestAUnittestCase(unittest.TestCase):
    def setUp(self):
        attempt("unittest_setup")

    def test_a_unittest_check(self):
        attempt("unittest_body")


class TestYourCodeAllSealed:
    def setup_method(self, method):
        attempt("setup_method")

    @pytest.fixture
    def in_a_method(self, request):
        attempt("fixture_method")
        request.addfinalizer(lambda: attempt("fixture_finalizer"))
        return self

    def test_a_leaves_work_for_teardown(self, request, in_a_method, generated):
        assert in_a_method is self  # the fixture method still bound to this test's instance
        request.addfinalizer(lambda: attempt("check_finalizer"))

    def test_every_place_your_code_ran_was_sealed(self, drill_url):
        seen = {k[len("ATB_RT_"):]: v for k, v in os.environ.items() if k.startswith("ATB_RT_")}
        assert seen == dict.fromkeys(sorted(
            ["root_import", "root_configure", "plugin_import", "plugin_setup", "plugin_call",
             "checks_import", "checks_collection", "generate_tests", "unittest_setup",
             "unittest_body", "setup_method", "fixture_method", "fixture_finalizer",
             "check_finalizer"]), "blocked 13")
'''


def test_your_conftest_files_their_hooks_and_plugins_open_no_unix_socket(
    production: tuple[ConnInfo, Path], pg15: Cluster, tmp_path: Path
) -> None:
    """Everywhere your code runs in the drill's process, it runs sealed: a conftest of yours
    (the project's, found from the directory the drill runs in, and the checks directory's),
    the plugin it names, the hooks they implement, parameters generated, xunit and unittest
    set-ups, fixture methods and what they leave for teardown. Each place tries production's
    socket by a hard link and is refused."""
    prod, path = production
    link = tmp_path / "app.sock"
    os.link(f"{pg15.socket_dir}/.s.PGSQL.{pg15.port}", link)
    with socket.socket(socket.AF_UNIX) as live:  # the route is live outside the drill
        live.connect(str(link))
    app = tmp_path / "app"
    (app / "checks").mkdir(parents=True)
    (app / "attempt.py").write_text(ATTEMPT % str(link))
    (app / "conftest.py").write_text(ROOT_CONFTEST)
    (app / "reach_plugin.py").write_text(REACH_PLUGIN)
    (app / "checks" / "conftest.py").write_text(CHECKS_CONFTEST)
    (app / "checks" / "test_sealed.py").write_text(CLASS_CHECK)
    done = atb("drill", "run", "--json", "--backup", str(path), "--no-record", "--schedule",
               "1d", "--sandbox", "local", "--report-dir", str(tmp_path / "reports"),
               "--checks", "checks", env={}, url=prod, cwd=str(app))
    assert "Traceback" not in done.stderr, done.stderr
    result = json.loads(done.stdout)
    mine = next(c for c in result["checks"]
                if c["name"] == "test_every_place_your_code_ran_was_sealed")
    failed = sorted(c["name"] for c in result["checks"] if c["outcome"] == "failed")
    assert (mine["outcome"], mine["message"], failed, done.returncode) == (
        "passed", "", ["test_heartbeat_is_fresh_at_backup_time"], 1)  # a backup with no heartbeat


FORGER = '''#!%s
import errno, os, sys
for path in sys.argv[1:]:
    try:
        with open(path, "ab") as fh:
            fh.write(b"forged")
        print(os.path.basename(path), "written")
    except OSError as exc:
        print(os.path.basename(path), errno.errorcode[exc.errno], exc.strerror)
'''


def test_application_code_cannot_forge_the_hosts_catalog_cache(
    production: tuple[ConnInfo, Path], tmp_path: Path
) -> None:
    """The catalog cache the host trusts (its key beside it) is bound read-only in the
    drill's namespaces: the integration command, as root there, cannot rewrite an entry, the
    key, or add a file; the cache's bytes are as they were, and the child's own scans (the
    pick's tree, the schedule's) still read it, so a drill by pick runs."""
    prod, path = production
    tree = tmp_path / "backups"
    copy = copy_backup(path, tree)
    cache = tmp_path / "cache"
    env = {"ATB_CATALOG_CACHE": str(cache)}
    listed = atb("db", "list", "--json", "--backup-dir", str(tree), env=env)
    assert listed.returncode == 0, listed.stderr
    [cached] = [p for p in cache.iterdir() if p.name.endswith(".json")]
    before = {p.name: p.read_bytes() for p in cache.iterdir()}
    script = tmp_path / "forge.py"
    script.write_text(FORGER % sys.executable)
    script.chmod(0o755)
    done = atb("drill", "run", "--json", "--backup-dir", str(tree), "--seed", "7",
               "--no-record", "--schedule", "1d", "--sandbox", "local",
               "--report-dir", str(tmp_path / "reports"), "--integration-cmd",
               f"{script} {cached} {cache / 'key'} {cache / 'new.json'}", url=prod, env=env)
    assert "Traceback" not in done.stderr, done.stderr
    result = json.loads(done.stdout)
    assert result["isolation"]["level"] == "network"
    assert result["backup"]["path"] == str(copy)
    assert result["backup"]["selection"] == (
        "random among 1 complete backup of the last 90 days (seed 7)")
    assert result["integration"]["output_tail"] == (
        f"{cached.name} EROFS Read-only file system\n"
        "key EROFS Read-only file system\n"
        "new.json EROFS Read-only file system")
    assert {p.name: p.read_bytes() for p in cache.iterdir()} == before
