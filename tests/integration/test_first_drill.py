"""A PASS on the first drill, when it is true: an application with no events table gets atb's
own heartbeat table, its first backup is judged on the configured schedule, the drill says
what it is doing as it goes, and `status` judges the RPO on the schedule and the gaps."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from backup_core.store import catalog
from backup_core.tools import db
from backup_core.tools.cluster import Cluster
from backup_core.tools.conninfo import ConnInfo
from tests.helpers import atb_inproc, drill

ENV_PY = '''\
import os
from alembic import context
from sqlalchemy import create_engine, pool

url = os.environ["DATABASE_URL"].replace("postgresql://", "postgresql+psycopg://", 1)
with create_engine(url, poolclass=pool.NullPool).connect() as connection:
    context.configure(connection=connection)
    with context.begin_transaction():
        context.run_migrations()
'''
REVISION = '''\
from alembic import op

revision = "0001_things"
down_revision = None


def upgrade():
    op.execute("CREATE TABLE things (id serial PRIMARY KEY, name text NOT NULL)")
'''
BACKUP_PASSWORD = "backup-role-pw-7Qx"
INTEGRATION = (f"{sys.executable} -c \"import os, sys; "
               "sys.exit(0 if os.environ.get('DATABASE_URL') else 3)\"")


def alembic_project(root: Path) -> Path:
    """The smallest Alembic project of an application: one revision, env.py reading
    DATABASE_URL."""
    (root / "migrations" / "versions").mkdir(parents=True)
    (root / "migrations" / "env.py").write_text(ENV_PY)
    (root / "migrations" / "versions" / "0001_things.py").write_text(REVISION)
    ini = root / "alembic.ini"
    ini.write_text("[alembic]\nscript_location = %(here)s/migrations\n")
    return ini


def application_without_events_table(cluster: Cluster) -> ConnInfo:
    """Production of an application that never had a `system_events` table, at its head."""
    name = f"noevents_{os.getpid()}"
    with db.connect(cluster.url(), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
        conn.execute(f'DROP ROLE IF EXISTS "backup_{name}"')
        conn.execute(f'CREATE ROLE "backup_{name}" LOGIN PASSWORD \'{BACKUP_PASSWORD}\'')
    info = cluster.url(name)
    with db.connect(info, autocommit=True) as conn:
        conn.execute("CREATE TABLE things (id serial PRIMARY KEY, name text NOT NULL);"
                     "INSERT INTO things (name) SELECT 'thing ' || g FROM generate_series(1, 50) g;"
                     "CREATE TABLE alembic_version (version_num varchar(32) PRIMARY KEY);"
                     "INSERT INTO alembic_version VALUES ('0001_things');"
                     f'GRANT SELECT ON ALL TABLES IN SCHEMA public TO "backup_{name}";'
                     f'GRANT SELECT ON ALL SEQUENCES IN SCHEMA public TO "backup_{name}"')
    return info


def test_an_application_without_an_events_table_passes_its_first_drill(
    pg15: Cluster, tmp_path: Path, sandbox_tmp: Path,
) -> None:
    info = application_without_events_table(pg15)
    role = f"backup_{info.dbname}"
    env = {"BACKUP_DIR": str(tmp_path / "backups")}
    # without a table of its own, heartbeat says how to get one (no migration would help)
    missing = atb_inproc("tests", "heartbeat", url=info)
    assert missing.returncode == 2  # configuration, not a stale heartbeat
    assert missing.stderr.strip().endswith(
        "neither the application's system_events nor atb's atb.heartbeat; create atb's with "
        "`atb tests heartbeat --init`, or name the application's events table with --table")
    init = atb_inproc("tests", "heartbeat", "--init", "--grant-to", role, url=info)
    assert init.returncode == 0, init.stderr
    assert init.stdout.splitlines() == [
        "created atb.heartbeat",
        f'granted to {role}: GRANT USAGE ON SCHEMA atb TO "{role}"; '
        f'GRANT SELECT ON atb.heartbeat TO "{role}";',
        "next: schedule `atb tests heartbeat` every 5 minutes (deploy/crontab.example)"]
    with db.connect(info) as conn:
        assert conn.execute("SELECT has_schema_privilege(%s, 'atb', 'USAGE'), "
                            "has_table_privilege(%s, 'atb.heartbeat', 'SELECT'), "
                            "has_table_privilege(%s, 'atb.heartbeat', 'INSERT')",
                            (role, role, role)).fetchone() == (True, True, False)
    again = atb_inproc("tests", "heartbeat", "--init", url=info)
    assert again.returncode == 0 and again.stdout.startswith("already there: atb.heartbeat\n")
    beat = atb_inproc("tests", "heartbeat", url=info)
    assert beat.returncode == 0, beat.stderr
    assert beat.stdout.startswith("heartbeat inserted into atb.heartbeat at 20")
    assert beat.stdout.rstrip().endswith(" UTC")
    as_json = json.loads(atb_inproc("tests", "heartbeat", "--json", url=info).stdout)
    assert as_json["table"] == "atb.heartbeat" and as_json["inserted_at"].startswith("20")
    check = atb_inproc("tests", "heartbeat", "--check", "--json", url=info)
    assert check.returncode == 0 and json.loads(check.stdout)["table"] == "atb.heartbeat"
    # a table named on purpose never falls back to atb's
    named = atb_inproc("tests", "heartbeat", "--table", "app_events", "--check", url=info)
    assert named.returncode == 2 and "table app_events does not exist" in named.stderr

    # the printed grant is all the backup role needs to dump atb's table with the rest
    as_backup_role = ConnInfo.make(dbname=info.dbname, host="127.0.0.1", port=pg15.port,
                                   user=role, password=BACKUP_PASSWORD)
    taken = atb_inproc("db", "backup", env=env, url=as_backup_role)
    assert taken.returncode == 0, taken.stderr
    # one backup: the RPO is judged from the configured schedule, not left unknown
    assert atb_inproc("db", "status", "--schedule", "15m", "--rpo", "15m",
                      env=env).returncode == 0
    assert atb_inproc("db", "backup", "--row-counts", "off", env=env, url=info).returncode == 0
    hourly = atb_inproc("db", "status", "--schedule", "1h", "--rpo", "15m", env=env)
    assert hourly.returncode == 1  # two backups seconds apart: an hourly schedule still misses
    assert (f"{info.dbname}: 2 complete backups, newest " in hourly.stdout
            and "largest gap in the last 7 days: " in hourly.stdout)
    assert ("  MISSED: backups every 1h 00m cannot meet the RPO target of 15m 00s: the data "
            "lost in the worst case is the time between two backups; back up at least every "
            "15m 00s, or archive WAL") in hourly.stdout.splitlines()

    first = [b for b in catalog.scan(tmp_path / "backups") if b.complete][-1]
    done, result = drill("--backup", str(first.path), "--schedule", "15m",
                         "--alembic-config", str(alembic_project(tmp_path / "app")),
                         "--integration-cmd", INTEGRATION, backup_dir=tmp_path / "backups",
                         report_dir=tmp_path / "reports", url=info,
                         env={"TMPDIR": str(sandbox_tmp)})
    assert done.returncode == 0, done.stdout + done.stderr
    assert result["verdict"] == "PASS" and result["not_run"] == {}
    heartbeat = next(c for c in result["checks"]
                     if c["name"] == "test_heartbeat_is_fresh_at_backup_time")
    assert heartbeat["outcome"] == "passed"
    assert heartbeat["evidence"][0].startswith("newest heartbeat in atb.heartbeat at 20")
    rpo = next(c for c in result["checks"] if c["name"] == "test_schedule_meets_the_rpo_target")
    assert rpo["outcome"] == "passed" and rpo["title"] == "Schedule meets the RPO target"
    assert result["sandbox"]["durability"] == {"fsync": "off", "synchronous_commit": "off",
                                               "full_page_writes": "off"}
    md = Path(result["reports"]["md"]).read_text()
    assert ("| RTO measured | in a sandbox with durability off (fsync=off, "
            "synchronous_commit=off, full_page_writes=off): a server with durability on "
            "restores more slowly |") in md
    # progress without -v: a timestamped log line per phase (not a terminal here), from the
    # child's JSON lines
    lines = done.stderr.splitlines()
    for phase in ("verify", "sandbox", "restore", "migrate", "integration"):
        assert any(f" atb.drill INFO {phase} done in " in ln for ln in lines), (phase, lines)
    restore = next(ln for ln in lines if " atb.drill INFO restore done in " in ln)
    assert f"{restore.split(': ', 1)[1].split(' archive')[0]}" != ""
    assert " archive at " in restore and restore.endswith("/s")
    assert any(ln.endswith("atb.drill INFO check PASSED: Measured RTO is within target")
               for ln in lines)
    assert any(ln.endswith("atb.drill INFO writing the reports") for ln in lines)
