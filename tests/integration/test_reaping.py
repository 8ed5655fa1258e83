"""A drill killed with kill -9 leaves its local sandbox's server running (pg_ctl daemonizes
it); the next drill start or `atb doctor` stops it and removes its directory."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from backup_core.ops import backup
from backup_core.tools import db, toolchain
from backup_core.tools.cluster import Cluster
from backup_core.tools.reaper import Owner, process_start, reap_containers
from tests.conftest import make_database
from tests.helpers import atb_inproc, drill_held_at_its_integration


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return not stat[stat.rfind(")") + 2:].startswith("Z")


def test_a_killed_drills_sandbox_is_reaped_by_the_next_start(
    pg15: Cluster, chains: list[toolchain.Toolchain], sandbox_tmp: Path, tmp_path: Path
) -> None:
    info = make_database(pg15, rows=20)
    path = backup.create_backup(info, tmp_path / "backups", chains=chains).path
    # a platform without namespaces: the server outlives the drill (inside the isolation's
    # PID namespace it dies with it: tests/integration/test_red_team.py)
    proc, workdir = drill_held_at_its_integration(path, tmp_path, sandbox_tmp,
                                                  ATB_ISOLATION="off")
    [record] = (sandbox_tmp / f"atb-sandboxes-{os.geteuid()}").glob("*.json")
    assert json.loads(record.read_text())["workdir"] == str(workdir)
    postmaster = int((workdir / "data" / "postmaster.pid").read_text().split()[0])
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    time.sleep(0.5)
    assert _alive(postmaster)  # what this test is about: it outlives the drill
    socket_url = f"host={workdir / 'sock'} port=5432 user=postgres dbname=postgres"
    with db.psycopg.connect(socket_url) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    done = atb_inproc("doctor", env={"TMPDIR": str(sandbox_tmp)})
    assert done.returncode == 0, done.stderr
    reaped = [ln for ln in done.stderr.splitlines() if "reaped the local sandbox" in ln]
    assert len(reaped) == 1, (done.stderr, record.read_text() if record.exists() else None)
    assert f"stopped its server (pid {postmaster})" in reaped[0]
    assert str(workdir) in reaped[0]
    assert not _alive(postmaster)
    assert not workdir.exists() and not record.exists()
    again = atb_inproc("doctor", env={"TMPDIR": str(sandbox_tmp)})  # nothing left to reap
    assert "reaped" not in again.stderr


@pytest.mark.fast  # no server, no engine: values and a short child
def test_a_live_drills_sandbox_and_another_hosts_are_left_alone() -> None:
    """The owner test the reaper relies on: a pid whose start time differs is a new process;
    a live owner and another host's owner are never judged gone."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.2)"])
    start = process_start(child.pid)
    assert start is not None
    child.wait()
    dead = Owner(child.pid, start, Owner.current().host)
    me = Owner.current()
    assert dead.gone() and not me.gone()
    assert Owner(me.pid, "1", me.host).gone()  # the same pid, another process
    assert not Owner(child.pid, start, "another-host").gone()
    assert Owner.from_label(me.label) == me and Owner.from_label("garbage") is None

    class Container:  # the two attributes of a docker SDK container the reaper reads
        def __init__(self, name: str, owner: Owner | None) -> None:
            self.name = name
            self.labels = {"atb.drill": "1", **({"atb.owner": owner.label} if owner else {})}

    removed: list[str] = []
    lines = reap_containers([Container("orphan", dead), Container("mine", me),
                             Container("unlabelled", None)], lambda c: removed.append(c.name))
    assert removed == ["orphan"]
    assert lines == [f"removed the docker sandbox orphan of a drill that is gone (pid "
                     f"{child.pid})"]


@pytest.mark.fast  # no server, no engine: values and a short child
def test_docker_sandboxes_carry_their_owner() -> None:
    pytest.importorskip("testcontainers")
    from drills import docker_engine

    container = docker_engine.postgres_container(docker_engine.container_spec("postgres:15"),
                                                 loopback=True)
    labels = container._kwargs["labels"]
    assert Owner.from_label(labels["atb.owner"]) == Owner.current()
