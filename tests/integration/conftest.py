"""Fixtures shared by integration tests: the suite's one object store."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.object_store import ObjectStore, seaweedfs


@pytest.fixture(scope="session")
def object_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ObjectStore]:
    """One SeaweedFS S3 server for the session (endpoint, bucket, an admin and a read-only
    key); each test uses its own prefix."""
    with seaweedfs(tmp_path_factory.mktemp("seaweedfs")) as store:
        yield store
