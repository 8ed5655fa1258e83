"""The README cannot drift: its runnable examples run here, its command reference is
generated, and its quick start's main job (the demo) passes end to end."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from backup_core.tools import db, toolchain
from backup_core.tools.cluster import Cluster, random_password
from drills import docs
from drills.demo import alembic_upgrade, example_dir, load_datagen
from tests.helpers import atb

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
EXAMPLE_PREFIX = "postgresql://app:secret@localhost:5432/"
EXAMPLE_NO_PASSWORD = "postgresql://app@localhost:5432/"
EXAMPLE_RESTORE_SERVER = "postgresql://app:secret@restore-db:5432/"
EXAMPLE_STAMP = "20261123T230400Z"


def blocks(kind: str) -> list[str]:
    return re.findall(rf"```{kind}\n(.*?)```", README, flags=re.S)


@pytest.mark.fast  # reads files only: README drift shows in the inner loop
def test_the_command_reference_is_generated_from_the_cli() -> None:
    start, end = README.index(docs.BEGIN), README.index(docs.END) + len(docs.END)
    assert README[start:end] == docs.reference(), "run `python -m drills.docs` into README.md"
    assert (README.count(docs.BEGIN), README.count(docs.END)) == (1, 1)  # no stale marker left


@pytest.mark.fast
def test_quick_start_is_two_make_commands_that_run_the_demo_and_the_tests() -> None:
    quick = README.split("## Quick start", 1)[1].split("```sh\n", 1)[1].split("```", 1)[0]
    commands = [ln.split("#")[0].strip() for ln in quick.splitlines() if ln.strip()]
    assert commands == ["make demo", "make test"]
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^demo:.*\n\t\$\(BIN\)/atb demo$", makefile, flags=re.M)
    assert re.search(r"^test:.*\n\t\$\(BIN\)/pytest -n auto --dist loadfile$", makefile,
                     flags=re.M)
    assert re.search(r'^test-fast:.*\n\t\$\(BIN\)/pytest -m "not slow"$', makefile, flags=re.M)
    assert "make test" in (ROOT / ".ci/run").read_text()


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A user's project: alembic.ini, the application package, tests/integration."""
    shutil.copytree(example_dir(), tmp_path / "trading_bot",
                    ignore=shutil.ignore_patterns("__pycache__", "tests"))
    ini = (example_dir() / "alembic.ini").read_text().replace(
        "%(here)s/migrations", "%(here)s/trading_bot/migrations")
    (tmp_path / "alembic.ini").write_text(ini)
    tests = tmp_path / "tests" / "integration"
    tests.mkdir(parents=True)
    (tmp_path / "tests" / "__init__.py").write_text("")
    for name in ("__init__.py", "conftest.py", "test_invariants.py"):
        shutil.copy(example_dir() / "tests" / name, tests / name)
    return tmp_path


@pytest.fixture
def own15(chain15: toolchain.Toolchain) -> Iterator[Cluster]:
    """A PostgreSQL 15 server of this test's own: the README's database is named `trading`,
    as the session's `history` production is on the shared server."""
    with Cluster(chain15, password=random_password(), tcp=True) as cluster:
        yield cluster


def test_every_runnable_readme_example_works(own15: Cluster, pg18: Cluster,
                                             project: Path) -> None:
    with db.connect(own15.url(), autocommit=True) as conn:
        conn.execute("CREATE DATABASE trading")
    live = own15.url("trading")
    alembic_upgrade(live, "0003_order_index_status")
    now = datetime.now(UTC)
    recent = (now - timedelta(minutes=30)).replace(microsecond=0)  # the README's --at time
    with db.connect(live) as conn:
        gen = load_datagen()
        gen.fill(conn, orders=200, start=now - timedelta(days=1), end=recent)
        gen.heartbeats(conn, [recent - timedelta(minutes=5 * i) for i in range(12)])
    swaps = {
        EXAMPLE_PREFIX: live.secret_url.rsplit("/", 1)[0] + "/",
        EXAMPLE_NO_PASSWORD: live.libpq_url.rsplit("/", 1)[0] + "/",
        EXAMPLE_RESTORE_SERVER: pg18.url("trading_restore").secret_url.rsplit("/", 1)[0] + "/",
        f"2026/11/23/backup-{EXAMPLE_STAMP}": f"{recent:%Y/%m/%d}/backup-"
                                              f"{recent:%Y%m%dT%H%M%SZ}",
        EXAMPLE_STAMP: f"{recent:%Y%m%dT%H%M%SZ}",
    }
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "BACKUP_DIR")}
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    ran = drills = 0
    for block in blocks("console"):
        for line in block.splitlines():
            if not line.startswith("$ "):
                continue
            command, _, comment = line[2:].partition("   # ")
            for old, new in swaps.items():
                command = command.replace(old, new)
            m = re.search(r"exits (\d+)", comment)
            expected = int(m.group(1)) if m else 0
            if command.startswith("export "):
                key, value = command[len("export "):].split("=", 1)
                env[key] = value
                continue
            done = subprocess.run(["bash", "-c", command], cwd=project, env=env,
                                  capture_output=True, text=True, timeout=600, check=False)
            assert done.returncode == expected, f"$ {line[2:]}\n{done.stdout}\n{done.stderr}"
            assert "Traceback" not in done.stderr
            assert live.password not in done.stdout + done.stderr
            ran += 1
            drills += "atb drill run " in command or command.startswith("pytest --backup")
    assert ran >= 13
    with db.connect(pg18.url("trading_restore")) as conn:  # the README's restore
        assert conn.execute("SELECT version_num FROM alembic_version").fetchone() == (
            "0005_rename_balance_equity",)
    reports = list((project / "reports").glob("*/*-drill.json"))
    assert drills == 2 and len(reports) == drills  # each drill the README runs, one report
    assert [json.loads(r.read_text())["verdict"] for r in reports] == ["PASS"] * drills


def test_the_demo_passes_end_to_end(tmp_path: Path) -> None:
    # its own TMPDIR, so what is left there is the demo's and no one else's; under /tmp and
    # traversable, as TMPDIR is, since the demo's server runs as an unprivileged user
    tmp = Path(tempfile.mkdtemp(prefix="atb-demo-test-", dir="/tmp"))
    tmp.chmod(0o755)
    try:
        done = atb("demo", "--json", "--seed", "3", "--report-dir", str(tmp_path / "reports"),
                   timeout=400, env={"TMPDIR": str(tmp)})
        left = list(tmp.glob("atb-demo-*"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(done.stdout)
    assert result["verdict"] == "PASS" and result["backups_made"] > 200
    drill = result["drill"]
    assert drill["alembic"]["before"] in load_datagen().REVISIONS
    assert drill["alembic"]["after"] == "0005_rename_balance_equity"
    assert drill["rto"]["measured_s"] > 0 and drill["rto"]["met"]
    html = Path(result["report"]).read_text()
    assert "Verdict: PASS" in html and "measured, target 1h 00m: met" in html
    assert f"{drill['alembic']['before']} -&gt; 0005_rename_balance_equity" in html
    assert not left, "the demo's backup tree was not removed"
