"""The docker sandbox against a real engine: runs only where one answers (not on this
project's CI machines, which have the client but no daemon)."""

from __future__ import annotations

import pytest

from backup_core import db
from drills import sandbox

pytestmark = pytest.mark.docker


@pytest.mark.skipif(not sandbox.docker_available(), reason="no Docker engine answers")
def test_docker_sandbox_starts_the_source_major_and_is_removed() -> None:
    with sandbox.open_sandbox("docker", source_major=16, chains=[]) as info:
        assert info.provider == "docker" and info.server_version.startswith("16.")
        with db.connect(info.url) as conn:
            assert conn.execute("SHOW fsync").fetchone() == ("off",)
