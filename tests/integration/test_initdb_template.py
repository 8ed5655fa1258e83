"""A drill's local sandbox starts from a private initdb template, not a fresh initdb (most of
its start), and never from a template anyone else could have changed."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from backup_core.tools import db, toolchain
from backup_core.tools.cluster import Cluster, random_password, server_ready, template_path
from backup_core.tools.errors import CommandFailed


def gone_within(pid: int, seconds: float) -> bool:
    """The server process has exited (it may linger a moment after its pid file is gone)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def system_id(cluster: Cluster) -> str:
    with db.connect(cluster.url(), autocommit=True) as conn:
        row = conn.execute("SELECT system_identifier::text FROM pg_control_system()").fetchone()
    assert row is not None
    return str(row[0])


def test_clusters_start_from_a_private_template_and_never_a_writable_one(
        tmp_path: Path, chain18: toolchain.Toolchain) -> None:
    templates = tmp_path / "templates"
    with Cluster(chain18, templates=templates, destroy_mode="immediate") as first:
        made = sorted(templates.iterdir())
        first_id = system_id(first)
        pid, workdir = first.pid, first.workdir
    # stopped without a shutdown checkpoint, and gone entirely
    assert pid is not None and workdir is not None
    assert not workdir.exists()
    assert gone_within(pid, 10)
    assert [p.name for p in made] == [
        template_path(templates, first.toolchain, locale="C", superuser="postgres",
                      run_as=first.run_as).name]
    template = made[0]
    assert template.stat().st_uid == os.geteuid()
    assert template.stat().st_mode & 0o777 == 0o700
    assert not (template / "postmaster.pid").exists()  # taken before the server ever ran
    with Cluster(chain18, templates=templates) as second:
        # a copy of the template (same system identifier), and a server that works
        assert system_id(second) == first_id
        with db.connect(second.url(), autocommit=True) as conn:
            conn.execute("CREATE DATABASE copied")
            assert conn.execute("SELECT count(*) FROM pg_database WHERE datname = 'copied'"
                                ).fetchone() == (1,)
    # a cluster with a password never takes the template (it carries none)
    with Cluster(chain18, templates=templates, password=random_password(), tcp=True) as pw:
        assert system_id(pw) != first_id
    # a template others may write to is not used: a fresh initdb instead
    template.chmod(0o770)
    with Cluster(chain18, templates=templates) as third:
        assert system_id(third) != first_id
    assert sorted(templates.iterdir()) == [template]  # and it is not replaced either


def test_a_cluster_is_used_once_ready_and_a_start_that_fails_says_why_at_once(
        tmp_path: Path, chain18: toolchain.Toolchain) -> None:
    """The start returns when the server's lock file says ready (not at `pg_ctl -w`'s next
    100 ms step); `pg_ctl` still judges a start that fails, and is reaped when it ends."""
    templates = tmp_path / "templates"
    with Cluster(chain18, templates=templates, destroy_mode="immediate") as ready:
        assert server_ready(ready.datadir / "postmaster.pid", since=time.time() - 60)
        with db.connect(ready.url(), autocommit=True) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        starter = ready._starter
    # reaped: `pg_ctl -w` ended (0 when it saw the server ready before it stopped, 1 when the
    # server was stopped before its next 100 ms look)
    assert ready._starter is None and (starter is None or starter.returncode in (0, 1))
    assert not server_ready(tmp_path / "absent.pid", since=0)
    t0 = time.monotonic()
    with pytest.raises(CommandFailed) as caught, \
            Cluster(chain18, templates=templates, settings={"shared_buffers": "1kB"}):
        pass
    assert time.monotonic() - t0 < 30  # pg_ctl saw the server die: no wait for its timeout
    assert str(caught.value).startswith(
        f"the throwaway PostgreSQL {chain18.version} server did not start: ")
    assert str(caught.value).endswith("postgresql.conf\" contains errors")  # its log
