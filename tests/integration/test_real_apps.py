"""Real applications from PyPI, drilled the way their users run them: each installed twice, an
old and a new version, each in its own virtualenv (never atb's); production built and filled
by the old one; the drill migrates the copy with the new one's own, unedited migrations.

- optuna (sync Alembic, reads OPTUNA_STORAGE): through its command, `optuna storage upgrade`,
  given with --migrate-cmd, --app-python and --app-url-env.
- prefect (async env.py that owns its event loop, reads PREFECT_API_DATABASE_CONNECTION_URL,
  production's URL is `postgresql+asyncpg://`): through its shipped alembic.ini with
  --alembic-config and --app-python, and through `prefect server database upgrade -y` in
  `restore --migrate-cmd`.

The virtualenvs are made once per machine (uv, from PyPI) and kept in the cache directory,
keyed by what they hold; production is one database per application on the session's
PostgreSQL 15.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

from backup_core.store import verdicts
from backup_core.tools import db
from backup_core.tools.cluster import Cluster, cache_root
from backup_core.tools.conninfo import ConnInfo
from tests.helpers import atb, atb_inproc, checks, drill, fingerprint

# an old release with its dependencies as they were when it was current (newer ones break it)
OPTUNA_OLD = ("optuna==3.1.1", "psycopg2-binary==2.9.11")
OPTUNA_NEW = ("optuna==5.0.0", "psycopg2-binary==2.9.11")
PREFECT_OLD = ("prefect==2.20.16", "asyncpg==0.29.0", "--exclude-newer", "2025-01-10")
PREFECT_NEW = ("prefect==3.9.1", "asyncpg==0.30.0")
OPTUNA_OLD_HEAD, OPTUNA_NEW_HEAD = "v3.0.0.d", "v3.2.0.a"
# the application itself (`python` is optuna 5's, first on PATH) reads the migrated copy
# through its own variable, which holds the same URL as DATABASE_URL, in production's form
OPTUNA_READS_THE_COPY = (
    "python -c \"import optuna, os; url = os.environ['OPTUNA_STORAGE']; "
    "assert url == os.environ['DATABASE_URL'] and url.startswith('postgresql+psycopg2://'); "
    "s = optuna.load_study(study_name='tuning', storage=url); "
    "assert len(s.trials) == 12, len(s.trials)\"")
PREFECT_NEW_HEAD = "91e2b8f3d6a4"  # prefect 3.9.1's newest PostgreSQL revision


@dataclass(frozen=True)
class Venv:
    path: Path
    seconds: float  # how long it took to make here (0 when it came from the cache)

    @property
    def python(self) -> Path:
        return self.path / "bin" / "python"

    def run(self, program: str, *args: str, env: dict[str, str] | None = None,
            cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        """`program` (python, prefect...) of this virtualenv, as if it were activated."""
        done = subprocess.run([str(self.path / "bin" / program), *args], capture_output=True,
                              text=True,
                              env={"PATH": f"{self.path / 'bin'}:/usr/bin:/bin",
                                   "HOME": os.environ.get("HOME", "/root"), **(env or {})},
                              cwd=cwd, timeout=600, check=False)
        assert done.returncode == 0, done.stdout + done.stderr
        return done


def make_venv(requirements: tuple[str, ...]) -> Venv:
    """A virtualenv holding exactly `requirements`, made once per machine: its directory is
    named by their hash, and is complete only once its marker exists (a killed build is
    started again; concurrent runs wait on one lock)."""
    key = hashlib.sha256("\n".join((sys.version, *requirements)).encode()).hexdigest()[:16]
    root = cache_root() / "app-venvs"
    root.mkdir(parents=True, exist_ok=True)
    path, done = root / key, root / f"{key}.complete"
    with open(root / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if done.is_file():
            return Venv(path, 0.0)
        shutil.rmtree(path, ignore_errors=True)
        t0 = time.monotonic()
        uv = [sys.executable, "-m", "uv"]
        steps = [[*uv, "venv", "-q", "--python", sys.executable, str(path)]]
        if requirements:
            steps.append([*uv, "pip", "install", "-q", "--python",
                          str(path / "bin" / "python"), *requirements])
        for argv in steps:
            made = subprocess.run(argv, capture_output=True, text=True, timeout=600,
                                  check=False)
            assert made.returncode == 0, made.stderr
        done.write_text("\n".join(requirements) + "\n")
        return Venv(path, round(time.monotonic() - t0, 1))


@pytest.fixture(scope="module")
def venvs() -> dict[str, Venv]:
    """The four application environments, made in parallel (uv: seconds each, where pip takes
    25 to 70)."""
    wanted = {"optuna_old": OPTUNA_OLD, "optuna_new": OPTUNA_NEW,
              "prefect_old": PREFECT_OLD, "prefect_new": PREFECT_NEW}
    with ThreadPoolExecutor(4) as pool:
        made = dict(zip(wanted, pool.map(make_venv, wanted.values()), strict=True))
    print("app virtualenvs made in", {k: v.seconds for k, v in made.items()})
    return made


def _database(cluster: Cluster, name: str) -> ConnInfo:
    with db.connect(cluster.url(), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    return cluster.url(name)


def build_optuna(info: ConnInfo, venvs: dict[str, Venv], tmp: Path) -> None:
    """Production as optuna 3.1 leaves it: a study with 12 trials, schema at v3.0.0.d."""
    script = ("import os, optuna\n"
              "optuna.logging.set_verbosity(optuna.logging.WARNING)\n"
              "s = optuna.create_study(study_name='tuning', storage=os.environ['URL'])\n"
              "s.optimize(lambda t: (t.suggest_float('x', -10, 10) - 2) ** 2, n_trials=12)\n")
    venvs["optuna_old"].run("python", "-c", script,
                            env={"URL": info.app_url("postgresql+psycopg2")})


def build_prefect(info: ConnInfo, venvs: dict[str, Venv], tmp: Path) -> None:
    """Production as prefect 2.20 leaves it: its schema by its own command, three flows."""
    venvs["prefect_old"].run("prefect", "server", "database", "upgrade", "-y", env={
        "PREFECT_API_DATABASE_CONNECTION_URL": info.app_url("postgresql+asyncpg"),
        "PREFECT_HOME": str(tmp / "prefect-home")})
    with db.connect(info, autocommit=True) as conn:
        conn.execute("INSERT INTO flow (name) VALUES ('etl'), ('report'), ('backfill')")


@dataclass(frozen=True)
class Production:
    info: ConnInfo
    url: str  # as the application writes it, its dialect prefix included
    backup: Path
    before: dict[str, str]  # its fingerprint once backed up


@pytest.fixture(scope="module")
def productions(pg15: Cluster, venvs: dict[str, Venv], backups: Path,
                tmp_path_factory: pytest.TempPathFactory) -> dict[str, Production]:
    """One production database per application, built by its old version (both at once),
    then backed up."""
    tmp = tmp_path_factory.mktemp("app-homes")
    infos = {name: _database(pg15, f"{name}_{os.getpid()}") for name in ("optuna", "prefect")}
    with ThreadPoolExecutor(2) as pool:
        for job in [pool.submit(build_optuna, infos["optuna"], venvs, tmp),
                    pool.submit(build_prefect, infos["prefect"], venvs, tmp)]:
            job.result()
    dialects = {"optuna": "postgresql+psycopg2", "prefect": "postgresql+asyncpg"}
    return {name: Production(info, info.app_url(dialects[name]), backup_of(info, backups),
                             fingerprint(info)) for name, info in infos.items()}


@pytest.fixture(scope="module")
def backups(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("app-backups")


def backup_of(info: ConnInfo, backup_dir: Path) -> Path:
    done = atb_inproc("db", "backup", env={"BACKUP_DIR": str(backup_dir)}, url=info)
    assert done.returncode == 0, done.stderr
    found = sorted((backup_dir / info.dbname).rglob("backup-*.dump"))
    assert found, done.stdout
    return found[-1]


def _rdb_dir(venv: Venv) -> Path:
    """Where optuna keeps its alembic.ini, whose `script_location = alembic` is relative to
    the working directory (as `alembic -c` resolves it)."""
    [ini] = venv.path.glob("lib/python3*/site-packages/optuna/storages/_rdb/alembic.ini")
    return ini.parent


@pytest.fixture(scope="module")
def drilled(productions: dict[str, Production], venvs: dict[str, Venv], backups: Path,
            tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[int, dict]]:
    """Both applications drilled at once, each by `atb drill run` as a child process:
    (exit code, JSON result)."""
    tmp = tmp_path_factory.mktemp("app-drills")
    new_optuna, new_prefect = venvs["optuna_new"], venvs["prefect_new"]
    runs = {
        # optuna's own alembic.ini, from its directory, by optuna 5's interpreter
        "optuna": ["--alembic-config", "alembic.ini", "--app-dir", str(_rdb_dir(new_optuna)),
                   "--app-python", str(new_optuna.python), "--app-url-env", "OPTUNA_STORAGE",
                   "--integration-cmd", OPTUNA_READS_THE_COPY],
        # prefect's own command, in prefect 3's virtualenv, reading its own variable
        "prefect": ["--migrate-cmd", "prefect server database upgrade -y",
                    "--app-python", str(new_prefect.python), "--pass-env", "PREFECT_HOME",
                    "--app-url-env", "PREFECT_API_DATABASE_CONNECTION_URL",
                    "--app-dir", str(tmp)],
    }

    def run(name: str) -> tuple[int, dict]:
        prod = productions[name]
        done = atb("drill", "run", "--json", "--sandbox", "local", "--backup",
                   str(prod.backup), "--backup-dir", str(backups), "--report-dir",
                   str(tmp / "reports"), *runs[name],
                   env={"DATABASE_URL": prod.url, "PREFECT_HOME": str(tmp / "prefect-home")})
        assert "Traceback" not in done.stderr, done.stderr
        return done.returncode, json.loads(done.stdout)

    with ThreadPoolExecutor(2) as pool:
        return dict(zip(runs, pool.map(run, runs), strict=True))


def test_optuna_drilled_through_its_shipped_alembic_ini_under_its_interpreter(
        productions: dict[str, Production], drilled: dict[str, tuple[int, dict]]) -> None:
    """optuna 5's own alembic.ini, unedited (`script_location = alembic`, relative to the
    working directory), run as `alembic -c alembic.ini upgrade head` by optuna 5's
    interpreter from the ini's directory, migrates a copy of optuna 3.1's production (reached
    as postgresql+psycopg2://); production untouched, the verdict recorded beside the
    backup."""
    prod = productions["optuna"]
    assert prod.before["(alembic)"] == OPTUNA_OLD_HEAD
    assert prod.before["public.trials"].startswith("12:")
    code, result = drilled["optuna"]
    outcomes = checks(result)
    assert outcomes["test_revision_before_upgrade_matches_the_backup"] == "passed"
    assert outcomes["test_alembic_upgrade_head_reaches_the_script_head"] == "passed"
    assert outcomes["test_every_table_has_its_backup_time_content"] == "passed"
    assert outcomes["test_production_was_not_touched"] == "passed"
    assert outcomes["test_application_integration_suite_passes"] == "passed"
    assert result["integration"]["exit_code"] == 0
    assert [n for n, o in outcomes.items() if o in ("failed", "error")] == []
    # no heartbeat table and a single backup: INCOMPLETE, never a FAIL of a good backup
    assert (code, result["verdict"]) == (10, "INCOMPLETE")
    assert result["alembic"] == {"before": OPTUNA_OLD_HEAD, "after": OPTUNA_NEW_HEAD,
                                 "heads": [OPTUNA_NEW_HEAD], "ok": True,
                                 "duration_s": result["alembic"]["duration_s"]}
    assert fingerprint(prod.info) == prod.before
    recorded = verdicts.read_drill_history(prod.backup)
    assert [(v.verdict, v.failed_checks) for v in recorded] == [("INCOMPLETE", ())]


def test_prefect_drilled_through_its_own_upgrade_command(
        productions: dict[str, Production], drilled: dict[str, tuple[int, dict]]) -> None:
    """prefect 3's `prefect server database upgrade -y` (an async env.py that must own its
    event loop: bare `alembic upgrade head` cannot run it), from prefect 3's virtualenv,
    migrates a copy of prefect 2.20's production: the copy reaches it under prefect's own
    variable in production's form (postgresql+asyncpg://)."""
    prod = productions["prefect"]
    assert prod.before["public.flow"].startswith("3:")
    code, result = drilled["prefect"]
    outcomes = checks(result)
    assert outcomes["test_alembic_upgrade_head_reaches_the_script_head"] == "passed"
    assert outcomes["test_every_table_has_its_backup_time_row_count"] == "passed"
    assert outcomes["test_production_was_not_touched"] == "passed"
    assert [n for n, o in outcomes.items() if o in ("failed", "error")] == []
    assert (code, result["verdict"]) == (10, "INCOMPLETE")
    alembic = result["alembic"]
    assert (alembic["before"], alembic["ok"], alembic["heads"]) == (
        prod.before["(alembic)"], True, [])
    assert alembic["after"] == PREFECT_NEW_HEAD != prod.before["(alembic)"]
    migration = next(c for c in result["checks"]
                     if c["name"] == "test_alembic_upgrade_head_reaches_the_script_head")
    assert any(e.startswith("`prefect server database upgrade -y` ran network")
               for e in migration["evidence"]), migration["evidence"]
    assert fingerprint(prod.info) == prod.before
    assert [v.verdict for v in verdicts.read_drill_history(prod.backup)] == ["INCOMPLETE"]


def test_configuration_errors_refuse_the_drill_before_anything_and_record_nothing(
        productions: dict[str, Production], venvs: dict[str, Venv], backups: Path,
        tmp_path: Path) -> None:
    """A configuration that cannot run is exit 2 with one line, before a sandbox starts or a
    report is claimed, and is never a verdict on the backup."""
    bare = make_venv(())  # an interpreter without Alembic
    rdb = _rdb_dir(venvs["optuna_new"])
    optuna_prod, optuna_backup = productions["optuna"].info, productions["optuna"].backup
    history = verdicts.read_drill_history(optuna_backup)
    prod_url = productions["optuna"].url
    cases: list[tuple[list[str], str]] = [
        (["--migrate-cmd", "no-such-program-xyz"],
         "--migrate-cmd: program no-such-program-xyz not found on PATH (give --app-python to "
         "run the application's own virtualenv)"),
        (["--migrate-cmd", "optuna storage upgrade"],  # optuna is not in atb's environment
         "--migrate-cmd: program optuna not found on PATH (give --app-python to run the "
         "application's own virtualenv)"),
        (["--migrate-cmd", "optuna 'storage upgrade"],
         "--migrate-cmd \"optuna 'storage upgrade\" cannot be split into words: No closing "
         "quotation"),
        (["--alembic-config", "alembic.ini", "--app-dir", str(rdb), "--app-python",
          str(bare.python)],
         f"--alembic-config: {bare.python} has no alembic module: pass --app-python with the "
         "application's own interpreter"),
        (["--alembic-config", "missing.ini", "--app-dir", str(rdb)],
         f"--alembic-config {rdb / 'missing.ini'}: no such file"),
        (["--alembic-config", "alembic.ini", "--app-dir", str(rdb), "--app-python",
          str(tmp_path / "nope")],
         f"--app-python {tmp_path / 'nope'}: not an executable file"),
        (["--migrate-cmd", "true", "--app-url-env", "PGHOST"],
         "--app-url-env PGHOST: a libpq or atb variable cannot carry the application's URL "
         "(DATABASE_URL and PG* are set already)"),
        (["--migrate-cmd", "true", "--pass-env", "OPTUNA_STORAGE"],
         f"--pass-env OPTUNA_STORAGE: its value names the production database "
         f"({optuna_prod.redacted}); pass the sandbox's URL under that name with "
         "--app-url-env OPTUNA_STORAGE instead"),
    ]
    for args, message in cases:
        done, result = drill("--backup", str(optuna_backup), *args, backup_dir=backups,
                             report_dir=tmp_path / "reports",
                             env={"DATABASE_URL": prod_url, "OPTUNA_STORAGE": prod_url})
        assert (done.returncode, done.stderr, result) == (2, f"atb: error: {message}\n", {})
    assert not (tmp_path / "reports").exists()
    assert verdicts.read_drill_history(optuna_backup) == history


def test_restore_migrate_refuses_a_bad_configuration_before_restoring(
        pg15: Cluster, productions: dict[str, Production], venvs: dict[str, Venv]) -> None:
    """`restore --migrate` checks the migration first: exit 2, and no database is made."""
    optuna_backup = productions["optuna"].backup
    bare = make_venv(())
    target = pg15.url(f"optuna_copy_{os.getpid()}")
    rdb = _rdb_dir(venvs["optuna_new"])
    for args, message in [
        (["--migrate", "--alembic-config", "alembic.ini", "--app-dir", str(rdb),
          "--app-python", str(bare.python)],
         f"--alembic-config: {bare.python} has no alembic module: pass --app-python with "
         "the application's own interpreter"),
        (["--migrate-cmd", "no-such-program-xyz"],
         "--migrate-cmd: program no-such-program-xyz not found on PATH (give --app-python to "
         "run the application's own virtualenv)")]:
        done = atb_inproc("db", "restore", str(optuna_backup), *args,
                          env={"DATABASE_URL": productions["optuna"].url,
                               "ATB_TARGET_URL": target.secret_url})
        assert (done.returncode, done.stderr) == (2, f"atb: error: {message}\n")
        with db.connect(pg15.url(), autocommit=True) as conn:
            assert conn.execute("SELECT count(*) FROM pg_database WHERE datname = %s",
                                (target.dbname,)).fetchone() == (0,)


def test_restore_migrates_with_the_applications_own_command(
        pg18: Cluster, productions: dict[str, Production], venvs: dict[str, Venv]) -> None:
    """The runbook's `restore --migrate-cmd`: optuna's own upgrade, from its virtualenv,
    through OPTUNA_STORAGE, on a copy on another server, judged against the head of its
    Alembic scripts (read with its own `alembic heads`); production untouched."""
    prod = productions["optuna"]
    new = venvs["optuna_new"]
    target = pg18.url(f"optuna_restored_{os.getpid()}")
    done = atb_inproc("db", "restore", str(prod.backup), "--migrate-cmd",
                      "optuna storage upgrade", "--app-python", str(new.python),
                      "--app-url-env", "OPTUNA_STORAGE", "--alembic-config", "alembic.ini",
                      "--app-dir", str(_rdb_dir(new)),
                      env={"DATABASE_URL": prod.url, "ATB_TARGET_URL": target.secret_url})
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[1].startswith(f"alembic: {OPTUNA_OLD_HEAD} -> {OPTUNA_NEW_HEAD} in ")
    assert lines[1].endswith(f"(script head {OPTUNA_NEW_HEAD})")
    assert lines[2].startswith("`optuna storage upgrade` ran network")
    with db.connect(target) as conn:
        assert conn.execute("SELECT version_num FROM alembic_version").fetchone() == (
            OPTUNA_NEW_HEAD,)
        assert conn.execute("SELECT count(*) FROM trials").fetchone() == (12,)
    assert fingerprint(prod.info) == prod.before
