"""The application's integration tests run against whatever DATABASE_URL names: in a drill,
the restored and migrated sandbox."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, create_engine


@pytest.fixture(scope="session")
def engine() -> Iterator[Engine]:
    url = os.environ.get("DATABASE_URL")
    if not url:
        pytest.fail("DATABASE_URL is not set: these tests run against a restored database")
    url = url.replace("postgresql://", "postgresql+psycopg://", 1)
    eng = create_engine(url)
    yield eng
    eng.dispose()
