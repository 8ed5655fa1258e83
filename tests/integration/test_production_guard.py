"""Production is never touched, for applications atb was not written for.

A hostile-environment matrix against real PostgreSQL 15 clusters: stock `alembic init`
templates with production in `sqlalchemy.url`, DATABASE_URL in every form apps use, libpq
variables pointing at production, a unix-socket route with pg_control_system() revoked, a
sandbox server that is production by another route. Each case asserts that production is
unchanged row for row (`fingerprint`), and the argv sampler that no password reached `ps`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from backup_core.ops.backup import create_backup
from backup_core.tools import db, toolchain
from backup_core.tools.cluster import Cluster, free_port
from backup_core.tools.conninfo import ConnInfo
from tests.conftest import make_database
from tests.helpers import ArgvSampler, atb, fingerprint

REVISIONS = {
    "0001_initial.py": '''
revision = "0001_initial"
down_revision = None
def upgrade():
    pass
''',
    "0002_probe.py": '''
from alembic import op
revision = "0002_probe"
down_revision = "0001_initial"
def upgrade():
    op.execute("CREATE TABLE hostile_probe (id int PRIMARY KEY)")
    op.execute("INSERT INTO hostile_probe VALUES (1)")
''',
}
ENV_READS_DATABASE_URL = '''
import os
from alembic import context
from sqlalchemy import create_engine, pool
engine = create_engine(os.environ["DATABASE_URL"], poolclass=pool.NullPool)
with engine.connect() as connection:
    context.configure(connection=connection)
    with context.begin_transaction():
        context.run_migrations()
'''


def alembic_project(root: Path, layout: str, production: ConnInfo) -> Path:
    """An application's Alembic project as `alembic init` makes it, unedited but for two
    revisions and production's URL in the ini (as many real projects keep it)."""
    template = {"generic": "generic", "async": "async", "pyproject": "pyproject",
                "env-reads-DATABASE_URL": "generic", "package:path": "generic"}[layout]
    where = "myapp/migrations" if layout == "package:path" else "migrations"
    root.mkdir(parents=True, exist_ok=True)
    if layout == "package:path":
        (root / "myapp").mkdir()
        (root / "myapp" / "__init__.py").write_text("")
    subprocess.run([sys.executable, "-m", "alembic", "init", "--template", template, where],
                   cwd=root, check=True, capture_output=True)
    versions = root / where / "versions"
    versions.mkdir(exist_ok=True)
    for name, text in REVISIONS.items():
        (versions / name).write_text(text)
    ini = root / "alembic.ini"
    text = ini.read_text().replace(
        "sqlalchemy.url = driver://user:pass@localhost/dbname",
        "sqlalchemy.url = " + production.sqlalchemy_url.replace("%", "%%"))
    if layout == "package:path":
        text = text.replace("script_location = %(here)s/myapp/migrations",
                            "script_location = myapp:migrations")
        assert "script_location = myapp:migrations" in text
    ini.write_text(text)
    if layout == "env-reads-DATABASE_URL":
        (root / where / "env.py").write_text(ENV_READS_DATABASE_URL)
    return ini


@pytest.fixture
def production(pg15: Cluster, tmp_path: Path) -> Iterator[tuple[ConnInfo, Path]]:
    """A production database with one backup, and a row written after that backup."""
    info = make_database(pg15, rows=200)
    path = create_backup(info, tmp_path / "backups").path
    with db.connect(info, autocommit=True) as conn:
        conn.execute("INSERT INTO accounts(name) VALUES ('written after the backup')")
    yield info, path


def _socket_route(cluster: Cluster, dbname: str) -> ConnInfo:
    return ConnInfo.make(dbname=dbname, host=str(cluster.socket_dir), port=cluster.port,
                         user="postgres")


def beside_production(prod: ConnInfo, name: str) -> ConnInfo:
    """A new database on production's own server for a role without server-level powers:
    the only way `restore --migrate` runs beside production (a superuser is refused there,
    the server itself being a route to production)."""
    with db.connect(prod, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = 'migrator'").fetchone():
            conn.execute("CREATE ROLE migrator LOGIN CREATEDB PASSWORD 'migrator-pw-1'")
    return prod.with_params(user="migrator").with_password("migrator-pw-1").with_dbname(name)


@pytest.mark.parametrize("layout", ["generic", "async", "pyproject", "env-reads-DATABASE_URL",
                                    "package:path"])
def test_alembic_migrates_the_copy_and_never_production(
    layout: str, production: tuple[ConnInfo, Path], tmp_path: Path
) -> None:
    prod, path = production
    ini = alembic_project(tmp_path / "app", layout, prod)
    before = fingerprint(prod)
    target = beside_production(prod, prod.dbname + "_copy")
    with ArgvSampler() as ps:
        done = atb("db", "restore", str(path), "--migrate", "--no-owner", "--alembic-config",
                   str(ini), "--app-dir", str(ini.parent), url=prod,
                   env={"ATB_TARGET_URL": target.secret_url})
    assert done.returncode == 0, done.stderr
    assert "alembic: 0001_initial -> 0002_probe" in done.stdout
    assert "alembic ran network (new network and mount namespaces" in done.stdout
    assert "guard: production unchanged" in done.stdout
    with db.connect(target) as conn:
        assert conn.execute("SELECT version_num FROM alembic_version").fetchone() == (
            "0002_probe",)
        assert conn.execute("SELECT count(*) FROM hostile_probe").fetchone() == (1,)
    assert fingerprint(prod) == before
    assert ps.leaked(prod.password) == []


def test_an_env_py_wired_to_production_fails_loudly_and_never_exits_0(
    production: tuple[ConnInfo, Path], tmp_path: Path
) -> None:
    """An env.py with production's URL written into it cannot be redirected, but it runs
    network-isolated: its connection is refused before anything reaches production, and atb
    says the copy is not migrated (exit 5)."""
    prod, path = production
    ini = alembic_project(tmp_path / "app", "env-reads-DATABASE_URL", prod)
    env_py = ini.parent / "migrations" / "env.py"
    env_py.write_text(env_py.read_text().replace('os.environ["DATABASE_URL"]',
                                                 repr(prod.sqlalchemy_url)))
    target = beside_production(prod, prod.dbname + "_copy")
    before = fingerprint(prod)
    done = atb("db", "restore", str(path), "--migrate", "--no-owner", "--alembic-config",
               str(ini), url=prod, env={"ATB_TARGET_URL": target.secret_url})
    assert done.returncode == 5, done.stderr
    # production's address inside is the relay's, which opens the copy alone
    assert "NOT migrated" in done.stderr
    assert f"atb: this connection may only open database {target.dbname}" in done.stderr
    assert prod.password not in done.stderr + done.stdout
    assert fingerprint(prod) == before


def test_a_failing_migration_names_the_exception_and_says_the_copy_is_not_migrated(
    production: tuple[ConnInfo, Path], tmp_path: Path
) -> None:
    prod, path = production
    ini = alembic_project(tmp_path / "app", "generic", prod)
    (ini.parent / "migrations" / "versions" / "0002_probe.py").write_text(
        REVISIONS["0002_probe.py"] + "    raise RuntimeError('boom in 0002: error error')\n")
    target = beside_production(prod, prod.dbname + "_copy")
    done = atb("db", "restore", str(path), "--migrate", "--no-owner", "--alembic-config",
               str(ini), url=prod, env={"ATB_TARGET_URL": target.secret_url})
    assert done.returncode == 5
    assert done.stderr.count("\n") == 1
    assert "is restored but NOT migrated" in done.stderr
    assert "RuntimeError: boom in 0002: error error" in done.stderr


def test_alembic_scripts_that_cannot_be_read_are_a_configuration_error(
    production: tuple[ConnInfo, Path], tmp_path: Path
) -> None:
    prod, path = production
    ini = alembic_project(tmp_path / "app", "generic", prod)
    ini.write_text(ini.read_text().replace("script_location = %(here)s/migrations",
                                           "script_location = %(here)s/no_such_dir"))
    target = beside_production(prod, prod.dbname + "_copy")
    done = atb("db", "restore", str(path), "--migrate", "--no-owner", "--alembic-config",
               str(ini), url=prod, env={"ATB_TARGET_URL": target.secret_url})
    assert done.returncode == 2, done.stderr
    assert "cannot read the Alembic scripts" in done.stderr and done.stderr.count("\n") == 1


def _forms(prod: ConnInfo, pg15: Cluster) -> dict[str, str]:
    pw, port, name = prod.password, pg15.port, prod.dbname
    dead = free_port()
    return {
        "asyncpg": f"postgresql+asyncpg://postgres:{pw}@127.0.0.1:{port}/{name}",
        "psycopg2": f"postgresql+psycopg2://postgres:{pw}@127.0.0.1:{port}/{name}",
        "postgres": f"postgres://postgres:{pw}@127.0.0.1:{port}/{name}",
        "keywords": f"host=127.0.0.1 port={port} dbname={name} user=postgres password={pw}",
        "multi-host": f"postgresql://postgres:{pw}@127.0.0.1:{dead},127.0.0.1:{port}/{name}",
        "ipv4-alias": f"postgresql://postgres:{pw}@localhost:{port}/{name}",
    }


@pytest.mark.parametrize("form", ["asyncpg", "psycopg2", "postgres", "keywords", "multi-host",
                                  "ipv4-alias", "PG*-variables"])
def test_every_form_of_database_url_keeps_the_restore_guard_on(
    form: str, production: tuple[ConnInfo, Path], pg15: Cluster
) -> None:
    """`restore --clean` aimed at production over the unix socket is refused however
    DATABASE_URL (or the libpq environment) names production."""
    prod, path = production
    before = fingerprint(prod)
    target = _socket_route(pg15, prod.dbname)
    if form == "PG*-variables":
        env = {"PGHOST": "127.0.0.1", "PGPORT": str(pg15.port), "PGUSER": "postgres",
               "PGPASSWORD": prod.password, "PGDATABASE": prod.dbname}
    else:
        env = {"DATABASE_URL": _forms(prod, pg15)[form]}
    done = atb("db", "restore", str(path), "--clean",
               env={**env, "ATB_TARGET_URL": target.secret_url})
    assert done.returncode == 8, done.stderr
    assert "it is the DATABASE_URL database" in done.stderr
    assert prod.password not in done.stderr
    assert fingerprint(prod) == before


@pytest.mark.parametrize("url", [
    "postgresql+asyncpg://u:pw12345@h/db?prepared_statements=off",
    "host=h dbname='unterminated",
    "postgresql://u:pw12345@h:99999/db",
    "mysql://u:pw12345@h/db",
])
def test_a_database_url_that_cannot_be_understood_is_exit_2_never_a_disabled_guard(
    url: str, production: tuple[ConnInfo, Path]
) -> None:
    prod, path = production
    before = fingerprint(prod)
    done = atb("db", "restore", str(path), "--clean",
               env={"DATABASE_URL": url, "ATB_TARGET_URL": prod.secret_url})
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("atb: error: ") and done.stderr.count("\n") == 1
    assert "pw12345" not in done.stderr
    assert fingerprint(prod) == before


def test_the_socket_route_is_recognised_without_pg_control_system(
    production: tuple[ConnInfo, Path], pg15: Cluster
) -> None:
    prod, path = production
    with db.connect(pg15.url(), autocommit=True) as conn:
        conn.execute("DROP ROLE IF EXISTS guard_plain")
        conn.execute("CREATE ROLE guard_plain LOGIN PASSWORD 'guard-plain-pw'")
        conn.execute("REVOKE EXECUTE ON FUNCTION pg_control_system() FROM PUBLIC")
    try:
        plain = prod.with_params(user="guard_plain").with_password("guard-plain-pw")
        before = fingerprint(prod)
        done = atb("db", "restore", str(path), "--clean", url=plain,
                   env={"ATB_TARGET_URL": _socket_route(pg15, prod.dbname).secret_url})
        assert done.returncode == 8, done.stderr
        assert fingerprint(prod) == before
    finally:
        with db.connect(pg15.url(), autocommit=True) as conn:
            conn.execute("GRANT EXECUTE ON FUNCTION pg_control_system() TO PUBLIC")


def test_a_sandbox_server_that_is_production_by_another_route_is_refused_before_starting(
    production: tuple[ConnInfo, Path], pg15: Cluster, tmp_path: Path
) -> None:
    prod, path = production
    before = fingerprint(prod)
    done = atb("drill", "run", "--backup", str(path), "--sandbox", "server", "--no-record",
               "--report-dir", str(tmp_path / "r"), url=prod,
               env={"ATB_SANDBOX_URL": _socket_route(pg15, "postgres").secret_url})
    assert done.returncode == 8, done.stderr
    assert "the sandbox server is production's server" in done.stderr
    assert not (tmp_path / "r").exists()
    with db.connect(pg15.url()) as conn:
        assert conn.execute("SELECT count(*) FROM pg_roles WHERE rolname LIKE 'atb_drill_%'"
                            ).fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM pg_database WHERE datname LIKE "
                            "'atb_drill_%'").fetchone() == (0,)
    assert fingerprint(prod) == before


def _drill(path: Path, tmp_path: Path, *args: str, env: dict[str, str],
           url: ConnInfo | None = None) -> tuple[subprocess.CompletedProcess[str], dict]:
    done = atb("drill", "run", "--json", "--backup", str(path), "--no-record", "--schedule",
               "1d", "--report-dir", str(tmp_path / "reports"), *args, env=env, url=url)
    assert "Traceback" not in done.stderr, done.stderr
    return done, json.loads(done.stdout) if done.stdout.strip().startswith("{") else {}


def test_a_drill_with_production_in_every_variable_touches_only_the_sandbox(
    production: tuple[ConnInfo, Path], pg15: Cluster, tmp_path: Path,
    chains: list[toolchain.Toolchain]
) -> None:
    """Production in DATABASE_URL, in PGHOST/PGPASSWORD..., and in the ini's sqlalchemy.url;
    the integration command runs `psql` with no arguments and writes. Everything lands in the
    sandbox; production is unchanged and its password is in no argv and no report."""
    prod, path = production
    ini = alembic_project(tmp_path / "app", "generic", prod)
    psql = toolchain.for_restore(15, chains, "psql").tool("psql")
    script = tmp_path / "integration.sh"
    script.write_text(
        "#!/bin/sh\n"
        f"{psql} -v ON_ERROR_STOP=1 -tAc 'CREATE TABLE pwned (x int); "
        "SELECT current_database()' || exit 9\n"
        "env | sort\n"
        "exit 3\n")  # fail, so that its output (the environment) lands in the reports
    script.chmod(0o755)
    pg_env = {"PGHOST": "127.0.0.1", "PGPORT": str(pg15.port), "PGUSER": "postgres",
              "PGPASSWORD": prod.password, "PGDATABASE": prod.dbname}
    before = fingerprint(prod)
    with ArgvSampler() as ps:
        done, result = _drill(path, tmp_path, "--sandbox", "local", "--alembic-config",
                              str(ini), "--integration-cmd", str(script), url=prod, env=pg_env)
    assert done.returncode == 1, done.stdout + done.stderr
    outcomes = {c["name"]: c["outcome"] for c in result["checks"]}
    assert outcomes["test_alembic_upgrade_head_reaches_the_script_head"] == "passed"
    assert outcomes["test_production_was_not_touched"] == "passed"
    assert outcomes["test_application_integration_suite_passes"] == "failed"
    tail = result["integration"]["output_tail"]
    assert result["sandbox"]["database"] in tail  # psql with no arguments reached the sandbox
    assert f"PGDATABASE={result['sandbox']['database']}" in tail
    # the sandbox on the namespace's loopback (its socket forwarded), never production's port
    assert f":{pg15.port}" not in tail and f"PGPORT={pg15.port}" not in tail
    assert "DATABASE_URL=postgresql://postgres@127.0.0.1:" in tail, tail
    assert "PGHOST=127.0.0.1" in tail and "PGPASSWORD" not in tail, tail
    assert fingerprint(prod) == before
    assert ps.leaked(prod.password) == []
    for report in (tmp_path / "reports").rglob("*"):
        if report.is_file():
            assert prod.password not in report.read_text(errors="replace"), report


def test_a_server_sandbox_never_hands_its_admin_credentials_to_the_application(
    pg15: Cluster, pg18: Cluster, tmp_path: Path
) -> None:
    prod = make_database(pg15, rows=20)
    path = create_backup(prod, tmp_path / "backups").path
    admin = pg18.url("postgres")
    script = tmp_path / "show-env.sh"
    script.write_text("#!/bin/sh\nenv | sort\nexit 3\n")
    script.chmod(0o755)
    with ArgvSampler() as ps:
        done, result = _drill(path, tmp_path, "--sandbox", "server", "--integration-cmd",
                              str(script), url=prod,
                              env={"ATB_SANDBOX_URL": admin.secret_url})
    assert result, done.stderr
    tail = result["integration"]["output_tail"]
    assert admin.password not in tail and prod.password not in tail
    assert f"PGUSER={result['sandbox']['database']}" in tail  # the drill's own login role
    assert "ATB_SANDBOX_URL" not in tail and "ATB_PRODUCTION_URL" not in tail
    with db.connect(admin) as conn:
        assert conn.execute("SELECT count(*) FROM pg_roles WHERE rolname LIKE 'atb_drill_%'"
                            ).fetchone() == (0,)
    assert ps.leaked(prod.password, admin.password) == []


def test_pgpassword_and_sslpassword_reach_pg_dump_without_argv_log_or_manifest(
    pg15: Cluster, tmp_path: Path
) -> None:
    prod = make_database(pg15, rows=20)
    url = prod.with_password("").with_params(sslmode="prefer").libpq_url + \
        "&sslpassword=ssl-key-phrase-42"
    with ArgvSampler() as ps:
        done = atb("-v", "db", "backup", "--json",
                   env={"DATABASE_URL": url, "PGPASSWORD": prod.password,
                        "BACKUP_DIR": str(tmp_path / "b")})
    assert done.returncode == 0, done.stderr
    manifest = json.loads(done.stdout)["manifest"]
    everything = done.stdout + done.stderr + json.dumps(manifest)
    assert "ssl-key-phrase-42" not in everything and prod.password not in everything
    assert "sslpassword=***" in manifest["source"]
    assert ps.leaked("ssl-key-phrase-42", prod.password) == []
    assert os.listdir(tmp_path / "b")


def test_ipv6_and_libpq_options_reach_every_tool(chain15: toolchain.Toolchain,
                                                 tmp_path: Path) -> None:
    """`[::1]` must stay a bracketed address and `options=-c x=y` keep its spaces on the way
    to pg_dump and pg_restore (both were mangled when URLs were rebuilt by hand)."""
    settings = {"listen_addresses": "127.0.0.1,::1"}
    with Cluster(chain15, password="ipv6-Secret-pw", tcp=True, settings=settings) as server:
        info = make_database(server, rows=10)
        url = (f"postgresql://postgres:ipv6-Secret-pw@[::1]:{server.port}/{info.dbname}"
               "?options=-c%20application_name%3Datb-ipv6")
        done = atb("db", "backup", "--json", env={"DATABASE_URL": url,
                                                  "BACKUP_DIR": str(tmp_path / "b")})
        assert done.returncode == 0, done.stderr
        manifest = json.loads(done.stdout)["manifest"]
        assert f"@[::1]:{server.port}/" in manifest["source"]
        assert "options=-c%20application_name%3Datb-ipv6" in manifest["source"]
        target = url.replace(f"/{info.dbname}?", f"/{info.dbname}_copy?")
        restored = atb("db", "restore", json.loads(done.stdout)["path"],
                       env={"DATABASE_URL": url, "ATB_TARGET_URL": target})
        assert restored.returncode == 0, restored.stderr
        with db.connect(info.with_dbname(info.dbname + "_copy")) as conn:
            assert conn.execute("SELECT count(*) FROM orders").fetchone() == (10,)


def test_an_unreachable_production_is_refused_by_name_and_asked_only_once_by_a_drill(
    production: tuple[ConnInfo, Path], pg15: Cluster, tmp_path: Path
) -> None:
    """Production out of reach (a firewall, the usual CI drill host): a restore target of the
    same name is refused, since nothing can tell it is not production; another name restores;
    a drill records that production was out of reach instead of waiting on it again."""
    prod, path = production
    dead = f"postgresql://postgres:pw123456@127.0.0.1:{free_port()}/{prod.dbname}"
    same_name = atb("db", "restore", str(path), env={"DATABASE_URL": dead,
                                                     "ATB_TARGET_URL": prod.secret_url})
    assert same_name.returncode == 8 and "cannot reach the DATABASE_URL database" in \
        same_name.stderr
    other = prod.with_dbname(prod.dbname + "_elsewhere")
    assert atb("db", "restore", str(path), env={"DATABASE_URL": dead,
                                                "ATB_TARGET_URL": other.secret_url}
               ).returncode == 0
    _, result = _drill(path, tmp_path, "--sandbox", "local", env={"DATABASE_URL": dead})
    untouched = next(c for c in result["checks"]
                     if c["name"] == "test_production_was_not_touched")
    assert untouched["outcome"] == "passed"
    assert "out of reach from the drill host" in untouched["evidence"][0]
    restore = next(c for c in result["checks"]
                   if c["name"] == "test_restore_completes_without_errors")
    assert restore["outcome"] == "passed"
