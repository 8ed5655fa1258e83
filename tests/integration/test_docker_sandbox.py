"""The docker sandbox against a real engine and a real image (.ci/run starts dockerd and
builds `atb-postgres:15` offline): a passing drill (network-isolated), teardown on failure
and on Ctrl-C, no network and no published port (its socket instead), and `auto` choosing
local (and saying why) when the image is missing."""

from __future__ import annotations

import html
import sys
from pathlib import Path

import docker
import pytest

from backup_core.tools import db, toolchain
from backup_core.tools.conninfo import ConnInfo
from drills import docker_engine, sandbox
from drills.demo import example_dir
from tests.helpers import atb_inproc, checks, drill, fingerprint, interrupt_drill, oldest

pytestmark = pytest.mark.docker
EXAMPLE = example_dir()


def _image_template(image: str) -> str:
    return image.replace(":15", ":{major}")


def test_the_container_has_no_network_and_is_reached_by_its_socket_then_removed(
        docker_image: str, chains: list[toolchain.Toolchain]) -> None:
    """A local engine: no network, no published port; the server's socket directory is a
    private directory of ours (how an isolated drill reaches it), removed with the container."""
    before = set(docker_engine.drill_containers())
    with sandbox.open_sandbox("docker", source_major=15, chains=chains,
                              docker_image=_image_template(docker_image)) as info:
        assert info.provider == "docker" and info.server_version.startswith("15.")
        socket_dir = Path(info.url.get("host"))
        assert info.image == docker_image and (socket_dir / ".s.PGSQL.5432").is_socket()
        assert socket_dir.parent.stat().st_mode & 0o777 == 0o700
        with db.connect(info.url) as conn:
            assert conn.execute("SHOW fsync").fetchone() == ("off",)
        [name] = set(docker_engine.drill_containers()) - before
        client = docker.from_env()
        try:
            host_config = client.api.inspect_container(name)["HostConfig"]
            assert host_config["NetworkMode"] == "none"
            assert not host_config["PortBindings"]
            # the container's processes never carry the password on a command line
            processes = client.api.top(name)["Processes"]
        finally:
            client.close()
        assert info.url.password and info.url.password not in repr(processes)
        assert any("postgres" in repr(p) for p in processes)
    assert name not in docker_engine.drill_containers()
    assert not socket_dir.parent.exists()


def test_a_drill_in_docker_passes_and_leaves_no_container(
        history: tuple[ConnInfo, Path], docker_image: str, tmp_path: Path) -> None:
    source, backup_dir = history
    before = fingerprint(source)
    integration = f"{sys.executable} -m pytest -q -p no:cacheprovider {EXAMPLE / 'tests'}"
    done, result = drill("--sandbox", "docker", "--docker-image", _image_template(docker_image),
                         "--backup", str(oldest(backup_dir)), "--schedule", "1d",
                         "--alembic-config", str(EXAMPLE / "alembic.ini"),
                         "--integration-cmd", integration, "--no-record",
                         backup_dir=backup_dir, report_dir=tmp_path / "r", url=source)
    assert done.returncode == 0, done.stdout + done.stderr
    assert result["verdict"] == "PASS"
    assert result["sandbox"]["provider"] == "docker"
    assert result["sandbox"]["image"] == docker_image
    assert result["isolation"]["level"] == "network"
    assert result["sandbox"]["server_version"].startswith("15.")
    assert result["alembic"]["after"] == "0005_rename_balance_equity"
    assert result["integration"]["exit_code"] == 0
    assert "sandbox start" in result["rto"]["phases"]
    html = Path(result["reports"]["html"]).read_text()
    assert f"docker PostgreSQL {result['sandbox']['server_version']} (image {docker_image})" \
        in html
    assert docker_engine.drill_containers() == []
    assert fingerprint(source) == before


def test_a_failing_drill_in_docker_removes_its_container(
        history: tuple[ConnInfo, Path], docker_image: str, tmp_path: Path) -> None:
    backup_dir = history[1]
    done, result = drill("--sandbox", "docker", "--docker-image", docker_image,
                         "--backup", str(oldest(backup_dir)), "--integration-cmd", "false",
                         "--no-record", backup_dir=backup_dir, report_dir=tmp_path / "r")
    assert done.returncode == 1 and result["verdict"] == "FAIL", done.stdout + done.stderr
    assert checks(result)["test_application_integration_suite_passes"] == "failed"
    assert result["sandbox"]["provider"] == "docker"
    assert docker_engine.drill_containers() == []


def test_ctrl_c_during_a_docker_drill_removes_the_container(
        history: tuple[ConnInfo, Path], docker_image: str, tmp_path: Path) -> None:
    def one_container() -> None:
        assert len(docker_engine.drill_containers()) == 1, "the sandbox should exist now"

    code, out, err = interrupt_drill(["--sandbox", "docker", "--docker-image", docker_image,
                                      "--backup", str(oldest(history[1])), "--no-record"],
                                     tmp_path, one_container)
    assert code == 130, out + err
    assert "Traceback" not in err
    assert docker_engine.drill_containers() == []


def test_auto_falls_back_to_local_and_says_why_when_the_image_is_missing(
        history: tuple[ConnInfo, Path], docker_image: str, tmp_path: Path) -> None:
    backup_dir = history[1]
    done, result = drill("--sandbox", "auto", "--docker-image", "atb-absent-image:{major}",
                         "--backup", str(oldest(backup_dir)), "--no-record", "--schedule", "1d",
                         backup_dir=backup_dir, report_dir=tmp_path / "r")
    assert done.returncode == 10, done.stdout + done.stderr  # not configured: INCOMPLETE
    assert result["sandbox"]["provider"] == "local"
    note = result["sandbox"]["note"]
    assert note.startswith("auto chose local: the image atb-absent-image:15 is not on the "
                           "engine") and "cannot be pulled" in note
    assert "auto chose local" in done.stderr
    assert html.escape(note) in Path(result["reports"]["html"]).read_text()


def test_an_explicit_docker_sandbox_without_its_image_says_what_to_do(
        history: tuple[ConnInfo, Path], docker_image: str, tmp_path: Path) -> None:
    """Before anything starts: exit 3 and one line naming the image and the way out."""
    done = atb_inproc("drill", "run", "--sandbox", "docker", "--docker-image",
               "atb-absent-image:{major}", "--backup", str(oldest(history[1])), "--no-record",
               "--report-dir", str(tmp_path / "r"))
    assert done.returncode == 3, done.stdout + done.stderr
    [line] = done.stderr.strip().splitlines()
    assert "the docker sandbox cannot start: the image atb-absent-image:15 is not on the " \
           "engine" in line and "build-postgres-image" in line
    assert not (tmp_path / "r").exists()
    assert docker_engine.drill_containers() == []
