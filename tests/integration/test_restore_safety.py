"""Restore targets: system databases refused, the --clean swap keeps what the database is, and a
restore killed at any step leaves either the old database or the new one, never neither."""

from __future__ import annotations

import os
import pwd
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from backup_core.ops import backup
from backup_core.reading.target import INCOMPLETE, TEST_KILL_AT, swap
from backup_core.tools import db, toolchain
from backup_core.tools.cluster import Cluster, service_user
from backup_core.tools.conninfo import ConnInfo
from tests.conftest import make_database
from tests.helpers import atb, atb_inproc, fingerprint

Source = tuple[ConnInfo, Path]


@pytest.fixture(scope="module")
def source(pg15: Cluster, tmp_path_factory: pytest.TempPathFactory,
           chains: list[toolchain.Toolchain]) -> Source:
    """Production and one backup of it, big enough that pg_restore can be caught running."""
    info = make_database(pg15, rows=150_000)
    path = backup.create_backup(info, tmp_path_factory.mktemp("b"), chains=chains).path
    return info, path


def _one_line(done: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in done.stderr
    assert done.stderr.startswith("atb: error: ") and done.stderr.count("\n") == 1, done.stderr
    return done.stderr


def _restore(path: Path, target: ConnInfo, *args: str, production: ConnInfo,
             env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    run = atb if TEST_KILL_AT in (env or {}) else atb_inproc  # a kill -9 needs its own process
    return run("db", "restore", str(path), *args, url=production,
               env={"ATB_TARGET_URL": target.secret_url, **(env or {})})


def _user_relations(info: ConnInfo) -> int:
    with db.connect(info, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM pg_class c JOIN pg_namespace n ON "
                           "n.oid = c.relnamespace WHERE n.nspname = 'public'").fetchone()
    return int(row[0]) if row else -1


def _databases(admin: ConnInfo, prefix: str) -> list[str]:
    with db.connect(admin, autocommit=True) as conn:
        return [r[0] for r in conn.execute(
            "SELECT datname FROM pg_database WHERE starts_with(datname, %s) ORDER BY 1",
            (prefix,)).fetchall()]


def test_system_databases_are_never_restore_targets(source: Source, pg15: Cluster) -> None:
    prod, path = source
    before = fingerprint(prod)
    with db.connect(pg15.url(), autocommit=True) as conn:  # a template of the user's own
        conn.execute("CREATE DATABASE user_template IS_TEMPLATE true")
    counts = {n: _user_relations(pg15.url(n)) for n in ("template1", "postgres")}
    for name in ("template1", "template0", "postgres", "user_template"):
        for clean in ((), ("--clean",)):
            done = _restore(path, pg15.url(name), *clean, production=prod)
            assert done.returncode == 8, (name, clean, done.stderr)
            line = _one_line(done)
            assert f"refusing to restore into {name}" in line
            assert ("system database" in line) == (name != "user_template")
    # the server's reported template flag decides even without a production to compare with
    done = atb_inproc("db", "restore", str(path), env={"ATB_TARGET_URL":
                                                        pg15.url("user_template").secret_url})
    assert done.returncode == 8 and "template database" in _one_line(done)
    assert {n: _user_relations(pg15.url(n)) for n in counts} == counts == {
        "template1": 0, "postgres": 0}
    assert _user_relations(pg15.url("user_template")) == 0
    assert fingerprint(prod) == before


PROPS_SQL = """
SELECT pg_get_userbyid(d.datdba), d.datconnlimit, shobj_description(d.oid, 'pg_database'),
       d.datallowconn, t.spcname,
       (SELECT array_agg(x ORDER BY x) FROM (
          SELECT CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE pg_get_userbyid(a.grantee) END
                 || ':' || a.privilege_type || ':' || a.is_grantable AS x
          FROM aclexplode(d.datacl) a) acl),
       (SELECT array_agg(x ORDER BY x) FROM (
          SELECT CASE WHEN s.setrole = 0 THEN '*' ELSE pg_get_userbyid(s.setrole) END
                 || ':' || array_to_string(s.setconfig, '|') AS x
          FROM pg_db_role_setting s WHERE s.setdatabase = d.oid) settings)
FROM pg_database d JOIN pg_tablespace t ON t.oid = d.dattablespace WHERE d.datname = %s
"""


def _props(admin: ConnInfo, name: str) -> tuple[Any, ...]:
    with db.connect(admin, autocommit=True) as conn:
        row = conn.execute(PROPS_SQL, (name,)).fetchone()
    assert row is not None, name
    return tuple(row)


def test_clean_swap_keeps_the_databases_properties(source: Source, pg15: Cluster,
                                                  sandbox_tmp: Path) -> None:
    prod, path = source
    admin = pg15.url()
    target = pg15.url("kept_props")
    assert _restore(path, target, production=prod).returncode == 0
    space = sandbox_tmp / "space"
    space.mkdir()
    user = service_user()
    if user:
        entry = pwd.getpwnam(user)
        os.chown(space, entry.pw_uid, entry.pw_gid)
    with db.connect(admin, autocommit=True) as conn:
        conn.execute(f"CREATE TABLESPACE props_space LOCATION '{space}'")  # type: ignore[arg-type]
        for statement in (
            "ALTER DATABASE kept_props SET TABLESPACE props_space",
            "CREATE ROLE props_owner", "CREATE ROLE props_reader LOGIN PASSWORD 'r3ader-pw'",
            "CREATE ROLE props_outsider LOGIN PASSWORD 'outs1der-pw'",
            "ALTER DATABASE kept_props OWNER TO props_owner",
            "REVOKE CONNECT, TEMPORARY ON DATABASE kept_props FROM PUBLIC",
            "GRANT CONNECT ON DATABASE kept_props TO props_reader WITH GRANT OPTION",
            "ALTER DATABASE kept_props SET search_path TO 'app', 'My Schema', public",
            "ALTER DATABASE kept_props SET work_mem TO '64MB'",
            "ALTER DATABASE kept_props SET app.tenant TO 'it''s a \"tenant\"'",
            "ALTER ROLE props_reader IN DATABASE kept_props SET statement_timeout TO '5s'",
            "ALTER DATABASE kept_props CONNECTION LIMIT 7",
            "COMMENT ON DATABASE kept_props IS 'trading: do not drop (ticket 42)'",
        ):
            conn.execute(statement)  # type: ignore[arg-type]
    before = _props(admin, "kept_props")
    assert before[0] == "props_owner" and before[1] == 7 and len(before[6]) == 2
    assert before[4] == "props_space"
    done = _restore(path, target, "--clean", production=prod)
    assert done.returncode == 0, done.stderr
    [old] = [n for n in _databases(admin, "kept_props_old_")]
    assert f"the previous kept_props is kept as {old}" in done.stdout
    assert _props(admin, "kept_props") == before
    # PUBLIC still cannot connect; the granted role can, with its own setting
    outsider = target.with_params(user="props_outsider").with_password("outs1der-pw")
    with pytest.raises(psycopg.OperationalError, match="permission denied for database"):
        psycopg.connect(**outsider.psycopg_kwargs()).close()
    reader = target.with_params(user="props_reader").with_password("r3ader-pw")
    with psycopg.connect(**reader.psycopg_kwargs()) as conn:
        assert conn.execute("SHOW statement_timeout").fetchone() == ("5s",)
        assert conn.execute("SHOW search_path").fetchone() == ('app, "My Schema", public',)
        assert conn.execute("SELECT to_regclass('orders') IS NOT NULL").fetchone() == (True,)
    with db.connect(admin, autocommit=True) as conn:  # the shared server as it was
        for name in ("kept_props", old):
            conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')  # type: ignore[arg-type]
        conn.execute("DROP TABLESPACE props_space")


def test_a_database_that_takes_no_connections_is_replaced_only_with_clean_and_stays_closed(
    source: Source, pg15: Cluster
) -> None:
    prod, path = source
    target = pg15.url("closed_db")
    assert _restore(path, target, production=prod).returncode == 0
    with db.connect(pg15.url(), autocommit=True) as conn:
        conn.execute("ALTER DATABASE closed_db ALLOW_CONNECTIONS false")
    refused = _restore(path, target, production=prod)
    assert refused.returncode == 8
    assert "unknown contents (ALLOW_CONNECTIONS false)" in _one_line(refused)
    done = _restore(path, target, "--clean", production=prod)
    assert done.returncode == 0, done.stderr
    with db.connect(pg15.url(), autocommit=True) as conn:
        rows = conn.execute("SELECT datname, datallowconn FROM pg_database WHERE "
                            "starts_with(datname, 'closed_db') ORDER BY 1").fetchall()
        assert rows[0] == ("closed_db", False) and len(rows) == 2
        assert rows[1][0].startswith("closed_db_old_") and rows[1][1] is False
        for name, _ in rows:
            conn.execute(f'DROP DATABASE "{name}"')  # type: ignore[arg-type]


def test_a_killed_restore_into_a_new_target_is_marked_and_refused(source: Source,
                                                                  pg15: Cluster) -> None:
    prod, path = source
    target = pg15.url("half_new")
    killed = _restore(path, target, production=prod, env={TEST_KILL_AT: "restored"})
    assert killed.returncode == -signal.SIGKILL
    with db.connect(pg15.url(), autocommit=True) as conn:
        row = conn.execute("SELECT shobj_description(oid, 'pg_database') FROM pg_database "
                           "WHERE datname = 'half_new'").fetchone()
    assert row is not None and row[0].startswith(f"{INCOMPLETE} of {path.name}")
    again = _restore(path, target, production=prod)
    assert again.returncode == 8
    assert "holds an interrupted restore" in _one_line(again) and "--clean" in again.stderr
    replaced = _restore(path, target, "--clean", production=prod)
    assert replaced.returncode == 0, replaced.stderr
    with db.connect(pg15.url(), autocommit=True) as conn:
        rows = conn.execute("SELECT datname, shobj_description(oid, 'pg_database') FROM "
                            "pg_database WHERE starts_with(datname, 'half_new') ORDER BY 1"
                            ).fetchall()
    assert rows[0] == ("half_new", None)
    assert len(rows) == 2 and rows[1][0].startswith("half_new_old_")
    assert rows[1][1].startswith(INCOMPLETE)  # the interrupted one, kept aside, still says so
    assert fingerprint(target)["public.orders"] == fingerprint(prod)["public.orders"]


def _kill_while_pg_restore_runs(proc: subprocess.Popen[str], admin: ConnInfo,
                                prefix: str) -> None:
    deadline = time.monotonic() + 60
    with db.connect(admin, autocommit=True) as conn:
        while time.monotonic() < deadline and proc.poll() is None:
            row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name "
                               "= 'pg_restore' AND starts_with(datname, %s)",
                               (prefix,)).fetchone()
            if row and row[0]:
                os.killpg(proc.pid, signal.SIGKILL)
                return
            time.sleep(0.01)
    pytest.fail("pg_restore was never seen running")


@pytest.fixture
def old_target(source: Source, pg15: Cluster, request: pytest.FixtureRequest
               ) -> Iterator[tuple[ConnInfo, dict[str, str]]]:
    """A target restored from the backup, then changed: its rows differ from the backup's."""
    prod, path = source
    name = f"swap_{request.node.callspec.id.replace('-', '_')}"
    target = pg15.url(name)
    assert _restore(path, target, production=prod).returncode == 0
    with db.connect(target, autocommit=True) as conn:
        conn.execute("INSERT INTO accounts(name) VALUES ('only-in-the-old-database')")
    yield target, fingerprint(target)
    with db.connect(pg15.url(), autocommit=True) as conn:
        for left in _databases(pg15.url(), name):
            conn.execute(f'DROP DATABASE "{left}" WITH (FORCE)')  # type: ignore[arg-type]


@pytest.mark.parametrize("phase", ["staging-created", "pg_restore", "restored", "before-swap",
                                   "mid-swap", "after-swap"])
def test_restore_clean_killed_at_every_step_loses_nothing(
    phase: str, source: Source, pg15: Cluster, old_target: tuple[ConnInfo, dict[str, str]]
) -> None:
    prod, path = source
    target, old_rows = old_target
    new_rows = fingerprint(prod)
    admin = pg15.url()
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "BACKUP_DIR")}
    env.update(DATABASE_URL=prod.secret_url, ATB_TARGET_URL=target.secret_url)
    if phase != "pg_restore":
        env[TEST_KILL_AT] = phase
    proc = subprocess.Popen([sys.executable, "-m", "drills.cli", "db", "restore", str(path),
                             "--clean"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    if phase == "pg_restore":
        _kill_while_pg_restore_runs(proc, admin, f"{target.dbname}_atb_staging_")
    proc.communicate(timeout=120)
    assert proc.returncode == -signal.SIGKILL, phase
    # the name always holds one complete database: the old one, or (after the swap) the new
    now = fingerprint(target)
    assert now == (new_rows if phase == "after-swap" else old_rows), phase
    aside = [n for n in _databases(admin, f"{target.dbname}_old_")]
    if phase == "after-swap":  # nothing lost: the old rows are kept under the old name
        assert len(aside) == 1 and fingerprint(target.with_dbname(aside[0])) == old_rows
    else:
        assert aside == []
    staging = _databases(admin, f"{target.dbname}_atb_staging_")
    assert len(staging) == (0 if phase == "after-swap" else 1), staging
    # a rerun completes and names what the killed run left, in one line
    rerun = _restore(path, target, "--clean", production=prod)
    assert rerun.returncode == 0, rerun.stderr
    assert fingerprint(target) == new_rows
    [line] = [ln for ln in rerun.stdout.splitlines() if "left by earlier --clean" in ln]
    for left in [*aside, *staging]:
        assert left in line
    assert ("(incomplete)" in line) == (phase in ("staging-created", "pg_restore",
                                                  "restored"))


def test_two_swaps_within_one_second_set_both_old_databases_aside(pg15: Cluster) -> None:
    """The aside name is timestamped to the second; a name already taken (a swap a moment ago,
    or the next seconds too) moves on to the first free second instead of failing the swap."""
    admin = pg15.url()
    base = "twice_in_a_second"
    now = datetime.now(UTC).replace(microsecond=0)
    taken = [f"{base}_old_{now + timedelta(seconds=s):%Y%m%dT%H%M%SZ}" for s in range(3)]
    with db.connect(admin, autocommit=True) as conn:
        for name in (base, "twice_staging", *taken):
            conn.execute(f'CREATE DATABASE "{name}"')
    old = swap(pg15.url(base), "twice_staging")
    assert old not in taken and old.startswith(f"{base}_old_") and len(old) == len(taken[0])
    assert old > taken[-1]  # later than every taken second: names still sort by time
    assert _databases(admin, base) == sorted([base, *taken, old])
