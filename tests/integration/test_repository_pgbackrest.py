"""A point-in-time drill whose pgBackRest repository is in object storage (`repo1-type=s3`):
the production cluster archives its WAL to a SeaweedFS bucket over verified TLS, and the drill
recovers a copy from that bucket to a chosen time.

pgBackRest 2.45 talks to S3 only over TLS, so this module starts its own SeaweedFS serving
HTTPS with a certificate of a CA made for the test, and pgBackRest checks it against that CA
(`repo1-storage-ca-file`), as it would a real store's. The keys reach pgBackRest only
through its `PGBACKREST_REPO1_S3_KEY*` variables: never in its config file or on argv.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from backup_core.ops import heartbeat
from backup_core.tools import db, toolchain
from backup_core.tools.cluster import Cluster, random_password, service_user
from backup_core.tools.conninfo import ConnInfo
from drills.demo import alembic_upgrade, example_dir
from tests.helpers import checks, drill, wait_archived
from tests.object_store import ObjectStore, WeedServer

STANZA = "shop"
EXAMPLE = example_dir()


@dataclass(frozen=True)
class S3Production:
    cluster: Cluster
    url: ConnInfo
    config: Path
    store: ObjectStore
    creds: dict[str, str]  # PGBACKREST_REPO1_S3_KEY and _SECRET: the only way the keys travel
    target: datetime  # between the second and the third batch of rows


def _config(path: Path, store: ObjectStore, cluster: Cluster, repo_path: str) -> None:
    port = store.endpoint.rsplit(":", 1)[1]
    path.write_text(f"""[global]
repo1-type=s3
repo1-path={repo_path}
repo1-s3-bucket={store.bucket}
repo1-s3-endpoint=127.0.0.1
repo1-storage-port={port}
repo1-s3-region=us-east-1
repo1-s3-uri-style=path
repo1-storage-ca-file={store.ca_file}
repo1-retention-full=2
lock-path={path.parent / "lock"}
log-path={path.parent / "log"}
log-level-console=warn
start-fast=y
compress-type=none

[{STANZA}]
pg1-path={cluster.datadir}
pg1-socket-path={cluster.socket_dir}
pg1-port={cluster.port}
pg1-user={cluster.superuser}
""")
    path.chmod(0o644)


def _pgbackrest(config: Path, creds: dict[str, str], *args: str) -> None:
    done = subprocess.run(["pgbackrest", f"--config={config}", f"--stanza={STANZA}",
                           "--log-level-file=off", *args], capture_output=True, text=True,
                          check=False, user=service_user(), timeout=120,
                          env={**os.environ, **creds})
    assert done.returncode == 0, done.stderr + done.stdout


def _add(url: ConnInfo, *numbers: int) -> None:
    with db.connect(url) as conn:
        conn.execute("INSERT INTO marks (n) SELECT unnest(%s::int[])", (list(numbers),))
        conn.commit()


@pytest.fixture(scope="module")
def s3_production(chain15: toolchain.Toolchain) -> Iterator[S3Production]:
    """Rows 1-3, a full backup, rows 4-5 and a heartbeat, the target time, rows 6-7: all of
    it archived to the TLS store."""
    if shutil.which("pgbackrest") is None:
        if os.environ.get("CI"):
            pytest.fail("pgbackrest is required in CI (see .ci/run)")
        pytest.skip("pgbackrest is not installed")
    work = Path(tempfile.mkdtemp(prefix="atb-test-pgbackrest-s3-"))  # the server user reads it
    work.chmod(0o755)
    user = service_user()
    for sub in ("lock", "log"):
        (work / sub).mkdir()
        if user:
            shutil.chown(work / sub, user, pwd.getpwnam(user).pw_gid)
    (work / "store").mkdir()
    config = work / "pgbackrest.conf"
    try:
        with WeedServer(work / "store", tls=True, bucket="pgbackrest") as server:
            store = server.store
            creds = {"PGBACKREST_REPO1_S3_KEY": store.access_key,
                     "PGBACKREST_REPO1_S3_KEY_SECRET": store.secret_key}
            settings = {"wal_level": "replica", "archive_mode": "on",
                        "archive_command": f"pgbackrest --config={config} --stanza={STANZA} "
                                           "archive-push %p"}
            with Cluster(chain15, password=random_password(), tcp=True, settings=settings,
                         env=creds) as cluster:
                _config(config, store, cluster, "/pg-repo")
                _pgbackrest(config, creds, "stanza-create")
                with db.connect(cluster.url(), autocommit=True) as conn:
                    conn.execute("CREATE DATABASE shop")
                url = cluster.url("shop")
                with db.connect(url) as conn:
                    conn.execute("CREATE TABLE marks (n int PRIMARY KEY)")
                    conn.commit()
                alembic_upgrade(url, "head")  # the drill's own upgrade has nothing to do
                _add(url, 1, 2, 3)
                _pgbackrest(config, creds, "backup", "--type=full")
                _add(url, 4, 5)
                heartbeat.insert_heartbeat(url)
                time.sleep(0.3)  # commit timestamps have microseconds: a clear gap
                target = datetime.now(UTC)
                time.sleep(0.3)
                _add(url, 6, 7)
                heartbeat.insert_heartbeat(url)
                wait_archived(url)
                yield S3Production(cluster, url, config, store, creds, target)
            server.kill()  # its data is thrown away: no graceful stop to wait for
    finally:
        shutil.rmtree(work, ignore_errors=True)


def test_a_drill_recovers_from_an_s3_repository_over_verified_tls_to_the_target(
        s3_production: S3Production, tmp_path: Path) -> None:
    """stanza-create, backup and archive-push went to the bucket over TLS verified against
    the test's CA; `atb drill run --source pgbackrest` recovers a copy from it to the target
    time and PASSes, with exactly the rows committed before the target."""
    p = s3_production
    listed = _bucket_keys(p.store)
    assert any(k.startswith("pg-repo/backup/shop/") and k.endswith("/backup.manifest")
               for k in listed), sorted(listed)[:20]
    assert any(k.startswith("pg-repo/archive/shop/15-1/") for k in listed)
    assert "PGBACKREST_REPO1_S3_KEY" not in p.config.read_text().upper().replace("-", "_")
    assert p.store.secret_key not in p.config.read_text()
    seen = tmp_path / "recovered.txt"
    probe = (f"{sys.executable} -c \"import os, psycopg; c = psycopg.connect("
             "os.environ['DATABASE_URL']); open('" + str(seen) + "', 'w').write(repr([r[0] "
             "for r in c.execute('SELECT n FROM marks ORDER BY n')]))\"")
    done, result = drill("--source", "pgbackrest", "--stanza", STANZA, "--pgbackrest-config",
                         str(p.config), "--database", "shop", "--rpo-target", "30s",
                         "--alembic-config", str(EXAMPLE / "alembic.ini"),
                         "--target-time", p.target.isoformat(), "--integration-cmd", probe,
                         backup_dir=tmp_path / "no-dumps", report_dir=tmp_path / "reports",
                         env=p.creds, url=p.url)
    assert done.returncode == 0, done.stdout + done.stderr
    assert result["verdict"] == "PASS"
    outcomes = checks(result)
    assert outcomes["test_recovery_reaches_the_target_time"] == "passed"
    assert outcomes["test_data_loss_is_within_the_rpo_target"] == "passed"
    assert datetime.fromisoformat(result["pitr"]["target"]) == p.target
    assert 0 <= result["pitr"]["data_loss_s"] < 2.5
    assert seen.read_text() == "[1, 2, 3, 4, 5]"
    assert result["alembic"]["after"] == "0005_rename_balance_equity"
    # a network namespace would cut the drill off from the store: the report says so
    assert result["isolation"]["level"] == "environment only"
    assert "repo1-type=s3" in result["isolation"]["reason"]
    # the keys were never written where a report or the config could show them
    for text in (done.stdout, done.stderr, Path(result["reports"]["html"]).read_text()):
        assert p.store.secret_key not in text and p.store.access_key not in text


def _bucket_keys(store: ObjectStore) -> set[str]:
    import boto3

    client = boto3.client("s3", endpoint_url=store.endpoint, verify=store.ca_file,
                          aws_access_key_id=store.access_key,
                          aws_secret_access_key=store.secret_key, region_name="us-east-1")
    keys: set[str] = set()
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=store.bucket):
        keys |= {item["Key"] for item in page.get("Contents", ())}
    return keys
