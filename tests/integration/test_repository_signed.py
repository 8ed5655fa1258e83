"""Who wrote a backup: age says who may read it, not who made it, so anyone who may write to
the bucket could plant one. With `ATB_SIGNING_KEY_FILE` on the backup host, push signs each
manifest record (Ed25519); with `ATB_REPO_SIGNER`, restore and drill from the repository
refuse, before downloading anything, a backup that is unsigned, signed by another key, or
altered since it was signed. Against the suite's real store."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import boto3
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from backup_core.tools.cluster import Cluster
from backup_core.tools.conninfo import ConnInfo
from tests.conftest import make_database
from tests.helpers import atb_inproc, copy_backup, fingerprint
from tests.object_store import ObjectStore


def _keypair(home: Path, name: str) -> tuple[Path, Path]:
    key = Ed25519PrivateKey.generate()
    private, public = home / f"{name}.pem", home / f"{name}.pub.pem"
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    public.write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return private, public


def _exists(cluster: Cluster, name: str) -> bool:
    from backup_core.tools import db

    with db.connect(cluster.url(), autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM pg_database WHERE datname = %s",
                           (name,)).fetchone()
    return row == (1,)


@pytest.fixture(scope="module")
def signed_source(pg15: Cluster, tmp_path_factory: pytest.TempPathFactory) -> tuple[ConnInfo,
                                                                                     Path]:
    source = make_database(pg15, rows=50)
    tree = tmp_path_factory.mktemp("signed-backup")
    done = atb_inproc("db", "backup", "--backup-dir", str(tree), "--json", url=source)
    assert done.returncode == 0, done.stderr
    return source, Path(json.loads(done.stdout)["path"])


def test_restore_from_the_repository_requires_the_trusted_signer(
        object_store: ObjectStore, signed_source: tuple[ConnInfo, Path], pg15: Cluster,
        tmp_path: Path) -> None:
    """A record signed by the host's key restores; the same repository read with another
    trusted key, an unsigned record, and a signed record altered in the store are each one
    line and exit 9, and no database is created."""
    source, dump = signed_source
    host_key, host_pub = _keypair(tmp_path, "host")
    _, other_pub = _keypair(tmp_path, "other")
    repo = f"s3://{object_store.bucket}/signed-{uuid.uuid4().hex[:8]}"
    tree = tmp_path / "b"
    copy_backup(dump, tree)
    env = object_store.env()
    pushed = atb_inproc("db", "push", "--backup-dir", str(tree), "--repo", repo, "--json",
                        env={**env, "ATB_SIGNING_KEY_FILE": str(host_key)})
    assert pushed.returncode == 0, pushed.stderr
    [key] = [i["path"] for i in json.loads(
        atb_inproc("db", "list", "--repo", repo, "--json", env=env).stdout)]
    s3 = boto3.client("s3", endpoint_url=object_store.endpoint, region_name="us-east-1",
                      aws_access_key_id=object_store.access_key,
                      aws_secret_access_key=object_store.secret_key)
    record_key = f"{repo.split('/', 3)[3]}/{key[: -len('.dump')]}.json"
    record = json.loads(s3.get_object(Bucket=object_store.bucket, Key=record_key)["Body"].read())
    assert set(record["signature"]) == {"key", "ed25519"}

    def restore(trusted: Path) -> tuple[int, str, str]:
        name = f"signed_{uuid.uuid4().hex[:8]}"
        done = atb_inproc("db", "restore", "--repo", repo, key, "--target-url",
                          pg15.url(name).secret_url,
                          env={**env, "ATB_REPO_SIGNER": str(trusted)})
        assert "Traceback" not in done.stderr
        if done.returncode != 0:
            assert not _exists(pg15, name), "a refused backup was restored"
        return done.returncode, done.stderr.strip(), name

    code, err, name = restore(host_pub)
    assert code == 0, err
    assert fingerprint(pg15.url(name)) == fingerprint(source)

    code, err, _ = restore(other_pub)
    assert code == 9 and len(err.splitlines()) == 1, err
    assert "is not signed by the trusted key" in err and err.endswith("not downloaded"), err

    drilled = atb_inproc("drill", "run", "--repo", repo, "--backup", key, "--sandbox",
                         "local", "--report-dir", str(tmp_path / "reports"),
                         env={**env, "ATB_REPO_SIGNER": str(other_pub)})
    assert drilled.returncode == 9, drilled.stdout + drilled.stderr
    assert drilled.stderr.strip().splitlines()[-1] == err, drilled.stderr
    assert not (tmp_path / "reports").exists() or not list((tmp_path / "reports").rglob("*"))

    altered = dict(record)  # a planted dump: the record points at other bytes
    altered["offsite"] = {**record["offsite"],
                          "dump": {**record["offsite"]["dump"], "sha256": "0" * 64}}
    s3.put_object(Bucket=object_store.bucket, Key=record_key,
                  Body=json.dumps(altered, indent=2, sort_keys=True).encode())
    code, err, _ = restore(host_pub)
    assert code == 9 and "is not signed by the trusted key" in err, err

    del altered["signature"]
    s3.put_object(Bucket=object_store.bucket, Key=record_key,
                  Body=json.dumps(altered, indent=2, sort_keys=True).encode())
    code, err, _ = restore(host_pub)
    assert code == 9 and len(err.splitlines()) == 1, err
    assert "is not signed, and a signer is required (--repo-signer)" in err, err

    code, err, _ = restore(tmp_path / "missing.pem")
    assert code == 2 and err.startswith("atb: error: --repo-signer: cannot read"), err
