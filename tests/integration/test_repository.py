"""The off-site repository against a real S3 store (SeaweedFS): push, list, verify, restore,
encryption with age, prune and status, and the ways a store fails."""

from __future__ import annotations

import json
import os
import re
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import boto3
import pytest
from pyrage import x25519

from backup_core.tools.cluster import Cluster
from backup_core.tools.conninfo import ConnInfo
from tests.conftest import make_database
from tests.helpers import atb_inproc, copy_backup, fingerprint
from tests.object_store import ObjectStore


def _client(store: ObjectStore) -> object:
    return boto3.client("s3", endpoint_url=store.endpoint, aws_access_key_id=store.access_key,
                        aws_secret_access_key=store.secret_key, region_name="us-east-1")


@pytest.fixture
def repo(object_store: ObjectStore) -> str:
    """A fresh prefix of the session's bucket."""
    return f"s3://{object_store.bucket}/t-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="module")
def source(pg15: Cluster) -> ConnInfo:
    return make_database(pg15, rows=300)


@pytest.fixture(scope="module")
def one_backup(source: ConnInfo, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One backup of `source` (its dump), taken once: tests copy it into trees of their own."""
    tree = tmp_path_factory.mktemp("one-backup")
    done = atb_inproc("db", "backup", "--backup-dir", str(tree), "--json", url=source)
    assert done.returncode == 0, done.stderr
    return Path(json.loads(done.stdout)["path"])


def _tree(one_backup: Path, tmp_path: Path) -> Path:
    tree = tmp_path / "b"
    copy_backup(one_backup, tree)
    return tree


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path, Path]:
    """An age recipient, its identity file, and another identity's file."""
    home = tmp_path_factory.mktemp("age")
    ident, other = x25519.Identity.generate(), x25519.Identity.generate()
    (home / "id.txt").write_text(f"# created: test\n{ident}\n")
    (home / "other.txt").write_text(f"{other}\n")
    return str(ident.to_public()), home / "id.txt", home / "other.txt"


def _env(store: ObjectStore, **extra: str) -> dict[str, str]:
    return {**store.env(), **extra}


def _key(listed: dict[str, object]) -> str:
    return str(listed["path"])


def test_backup_uploads_then_restore_from_the_repository_gives_the_same_rows(
        object_store: ObjectStore, repo: str, source: ConnInfo, pg15: Cluster,
        tmp_path: Path) -> None:
    """A backup with --repo is in the repository, listed as a sound backup; push after it
    uploads nothing; restore --repo brings back exactly the source's rows."""
    env = _env(object_store, BACKUP_REPO=repo)
    done = atb_inproc("db", "backup", "--backup-dir", str(tmp_path / "b"), env=env, url=source)
    assert done.returncode == 0, done.stderr
    listed = atb_inproc("db", "list", "--repo", repo, "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    items = json.loads(listed.stdout)
    assert [i["state"] for i in items] == ["complete"]
    assert _key(items[0]).startswith(f"{source.dbname}/")
    again = atb_inproc("db", "push", "--backup-dir", str(tmp_path / "b"), "--json", env=env)
    assert again.returncode == 0, again.stderr
    assert [p["uploaded"] for p in json.loads(again.stdout)["pushed"]] == [False]
    # the key as a full URL (which a command-line path turns into s3:/...) is the same key
    checked = atb_inproc("db", "verify", "--repo", repo, f"{repo}/{_key(items[0])}", "--json",
                         env=env)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    other = f"s3://{object_store.bucket}/elsewhere/{_key(items[0])}"
    wrong = atb_inproc("db", "verify", "--repo", repo, other, env=env)
    assert (wrong.returncode, wrong.stderr) == (2, (
        f"atb: error: {other} is not in the repository {repo}: give its key as `atb db list "
        "--repo` shows it, or --repo its repository\n"))
    assert [c["name"] for c in json.loads(checked.stdout)[0]["checks"]] == [
        "stored sha256", "size", "sha256", "roles", "toc"]
    target = pg15.url(f"restored_{uuid.uuid4().hex[:8]}")
    back = atb_inproc("db", "restore", "--repo", repo, f"{repo}/{_key(items[0])}",
                      "--target-url", target.secret_url, env=env)
    assert back.returncode == 0, back.stderr
    # the full URL echoed as typed (a command-line path made it `s3:/...`)
    assert back.stdout.startswith(f"restored {repo}/{_key(items[0])} into "), back.stdout
    assert fingerprint(target) == fingerprint(source)


def test_encrypted_push_stores_ciphertext_and_restore_needs_the_identity(
        object_store: ObjectStore, repo: str, source: ConnInfo, pg15: Cluster,
        keys: tuple[str, Path, Path], one_backup: Path, tmp_path: Path) -> None:
    """With BACKUP_ENCRYPT_TO every object is age ciphertext and the plaintext record holds
    neither row counts nor definitions; restore refuses without the identity or with another
    one (exit 2, one line, nothing created), and verify --deep passes with it."""
    recipient, ident, other = keys
    env = _env(object_store, BACKUP_REPO=repo, BACKUP_ENCRYPT_TO=recipient)
    done = atb_inproc("db", "push", "--backup-dir", str(_tree(one_backup, tmp_path)), env=env)
    assert done.returncode == 0, done.stderr
    s3 = _client(object_store)
    prefix = repo.split("/", 3)[3]
    objects = {o["Key"][len(prefix) + 1:] for o in s3.list_objects_v2(  # type: ignore[attr-defined]
        Bucket=object_store.bucket, Prefix=prefix)["Contents"]}
    dumps = [k for k in objects if k.endswith(".dump.age")]
    assert len(dumps) == 1 and not any(k.endswith(".dump") for k in objects)
    body = s3.get_object(Bucket=object_store.bucket,  # type: ignore[attr-defined]
                         Key=f"{prefix}/{dumps[0]}")["Body"].read()
    assert body.startswith(b"age-encryption.org/v1\n")
    record = json.loads(s3.get_object(  # type: ignore[attr-defined]
        Bucket=object_store.bucket,
        Key=f"{prefix}/{dumps[0][:-len('.dump.age')]}.json")["Body"].read())
    assert "row_counts" not in record and "definitions" not in record
    assert record["offsite"]["encryption"] == "age"
    assert len(record["offsite"]["dump"]["sha256"]) == 64
    assert record["offsite"]["dump"]["plain_sha256"] == record["sha256"]
    key = dumps[0][: -len(".age")]
    target = pg15.url(f"enc_{uuid.uuid4().hex[:8]}")
    missing = atb_inproc("db", "restore", "--repo", repo, key, "--target-url",
                         target.secret_url, env=env)
    assert missing.returncode == 2
    assert missing.stderr.count("\n") == 1 and "ATB_AGE_IDENTITY_FILE" in missing.stderr
    wrong = atb_inproc("db", "restore", "--repo", repo, key, "--target-url", target.secret_url,
                       env={**env, "ATB_AGE_IDENTITY_FILE": str(other)})
    assert wrong.returncode == 2 and "none of its identities is a recipient" in wrong.stderr
    with_id = {**env, "ATB_AGE_IDENTITY_FILE": str(ident)}
    checked = atb_inproc("db", "verify", "--repo", repo, "--latest", "--deep", env=with_id)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert checked.stdout == f"OK   {key}\n"
    back = atb_inproc("db", "restore", "--repo", repo, key, "--target-url",
                      target.secret_url, env=with_id)
    assert back.returncode == 0, back.stderr
    assert fingerprint(target) == fingerprint(source)


def test_an_object_altered_in_the_store_fails_verify_and_is_never_restored(
        object_store: ObjectStore, repo: str, one_backup: Path, pg15: Cluster,
        tmp_path: Path) -> None:
    """Bytes changed in the store (same size) fail the stored SHA-256: verify exits 1 naming
    it, restore exits 9 before the target database exists."""
    env = _env(object_store, BACKUP_REPO=repo)
    assert atb_inproc("db", "push", "--backup-dir", str(_tree(one_backup, tmp_path)),
                      env=env).returncode == 0
    key = _key(json.loads(atb_inproc("db", "list", "--repo", repo, "--json", env=env).stdout)[0])
    s3 = _client(object_store)
    full = f"{repo.split('/', 3)[3]}/{key}"
    data = bytearray(s3.get_object(Bucket=object_store.bucket,  # type: ignore[attr-defined]
                                   Key=full)["Body"].read())
    data[len(data) // 2] ^= 0xFF
    s3.put_object(Bucket=object_store.bucket, Key=full, Body=bytes(data))  # type: ignore[attr-defined]
    checked = atb_inproc("db", "verify", "--repo", repo, key, env=env)
    assert checked.returncode == 1
    assert "stored bytes differ from the manifest's SHA-256" in checked.stdout
    name = f"alt_{uuid.uuid4().hex[:8]}"
    back = atb_inproc("db", "restore", "--repo", repo, key, "--target-url",
                      pg15.url(name).secret_url, env=env)
    assert back.returncode == 9, back.stderr
    from backup_core.tools import db

    with db.connect(pg15.url(), autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM pg_database WHERE datname = %s",
                            (name,)).fetchone() == (0,)


def test_an_interrupted_upload_is_invisible_and_the_next_push_completes_it(
        object_store: ObjectStore, repo: str, one_backup: Path, tmp_path: Path) -> None:
    """A multipart upload the store never completed (the store or the host died mid-upload)
    and a dump uploaded without its manifest are not backups to a reader; the next push
    completes the backup."""
    tree = _tree(one_backup, tmp_path)
    dump = next(tree.rglob("*.dump"))
    rel = dump.relative_to(tree).as_posix()
    prefix = repo.split("/", 3)[3]
    s3 = _client(object_store)
    started = s3.create_multipart_upload(  # type: ignore[attr-defined]
        Bucket=object_store.bucket, Key=f"{prefix}/{rel}")
    s3.upload_part(Bucket=object_store.bucket, Key=f"{prefix}/{rel}",  # type: ignore[attr-defined]
                   UploadId=started["UploadId"], PartNumber=1, Body=dump.read_bytes()[:1000])
    env = _env(object_store, BACKUP_REPO=repo)
    assert json.loads(atb_inproc("db", "list", "--repo", repo, "--json", env=env).stdout) == []
    s3.put_object(Bucket=object_store.bucket, Key=f"{prefix}/{rel}",  # type: ignore[attr-defined]
                  Body=dump.read_bytes())
    listed = json.loads(atb_inproc("db", "list", "--repo", repo, "--json", env=env).stdout)
    assert [i["state"] for i in listed] == ["no-manifest"]
    pushed = atb_inproc("db", "push", "--backup-dir", str(tree), "--json", env=env)
    assert pushed.returncode == 0, pushed.stderr
    assert [p["uploaded"] for p in json.loads(pushed.stdout)["pushed"]] == [True]
    listed = json.loads(atb_inproc("db", "list", "--repo", repo, "--json", env=env).stdout)
    assert [i["state"] for i in listed] == ["complete"]


def test_wrong_credentials_missing_bucket_and_read_only_keys_are_one_line_exit_4(
        object_store: ObjectStore, repo: str, tmp_path: Path) -> None:
    """The store's refusals are one line and exit 4, and never show the secret key."""
    wrong = {**object_store.env(), "AWS_SECRET_ACCESS_KEY": "not-the-secret"}
    done = atb_inproc("db", "list", "--repo", repo, env=wrong)
    assert done.returncode == 4
    assert "refused our credentials" in done.stderr and done.stderr.count("\n") == 1
    assert "not-the-secret" not in done.stderr
    gone = atb_inproc("db", "list", "--repo", "s3://no-such-bucket-atb/x",
                      env=object_store.env())
    assert gone.returncode == 4 and "does not exist" in gone.stderr
    tree = tmp_path / "b"
    (tree / "x").mkdir(parents=True)
    read_only = atb_inproc("db", "list", "--repo", repo, env=object_store.env(read_only=True))
    assert read_only.returncode == 0, read_only.stderr
    bare = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    none = atb_inproc("db", "list", "--repo", repo,
                      env={**bare, "AWS_ENDPOINT_URL": object_store.endpoint,
                           "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
                           "AWS_CONFIG_FILE": str(tmp_path / "none"),
                           "AWS_EC2_METADATA_DISABLED": "true"})
    assert none.returncode in (2, 4) and none.stderr.count("\n") == 1



def test_prune_of_the_repository_keeps_the_floor_and_the_newest_drill_verified(
        object_store: ObjectStore, repo: str, source: ConnInfo, tmp_path: Path) -> None:
    """The local tree's plan over the repository: of two expired backups and a fresh one,
    the fresh one and the drill-verified oldest stay; only the middle one goes, manifest
    record and objects alike."""
    from backup_core.store.verdicts import DrillVerdict, record_drill

    tree = tmp_path / "b"
    for day in (12, 11, 0):
        at = (datetime.now(UTC) - timedelta(days=day)).strftime("%Y%m%dT%H%M%SZ")
        assert atb_inproc("db", "backup", "--backup-dir", str(tree), "--at", at,
                          "--row-counts", "off", url=source).returncode == 0
    oldest_dump = sorted(tree.rglob("*.dump"))[0]
    record_drill(oldest_dump, DrillVerdict(passed=True, at=datetime.now(UTC).isoformat(),
                                           verdict="PASS"))
    env = _env(object_store, BACKUP_REPO=repo)
    assert atb_inproc("db", "push", "--backup-dir", str(tree), env=env).returncode == 0
    before = [_key(i) for i in json.loads(atb_inproc("db", "list", "--repo", repo, "--json",
                                                     env=env).stdout)]
    assert len(before) == 3
    plan = atb_inproc("db", "prune", "--repo", repo, "--retention-days", "1", "--keep-last",
                      "1", "--json", env=env)
    assert plan.returncode == 0, plan.stderr
    assert json.loads(plan.stdout)["delete"] == [before[1]]
    after = json.loads(atb_inproc("db", "list", "--repo", repo, "--json", env=env).stdout)
    assert [_key(i) for i in after] == [before[0], before[2]]
    assert after[1]["checked"] == "drill-passed"
    prefix = repo.split("/", 3)[3]
    left = _client(object_store).list_objects_v2(  # type: ignore[attr-defined]
        Bucket=object_store.bucket, Prefix=f"{prefix}/{before[1][:-len('.dump')]}")
    assert left.get("KeyCount") == 0


def test_status_fails_while_the_newest_backup_is_not_off_site_and_exports_the_lag(
        object_store: ObjectStore, repo: str, source: ConnInfo, tmp_path: Path) -> None:
    """A sound local backup two hours old and not pushed misses a 1h off-site bound (exit 1,
    the lag in the Prometheus file); pushed, the lag is 0 and status passes."""
    tree, prom = tmp_path / "b", tmp_path / "atb.prom"
    at = (datetime.now(UTC) - timedelta(hours=2)).strftime("%Y%m%dT%H%M%SZ")
    assert atb_inproc("db", "backup", "--backup-dir", str(tree), "--at", at, "--row-counts",
                      "off", url=source).returncode == 0
    env = _env(object_store, BACKUP_REPO=repo)
    args = ("db", "status", "--backup-dir", str(tree), "--schedule", "1d", "--rpo", "1d",
            "--prometheus", str(prom))
    late = atb_inproc(*args, env=env)
    assert late.returncode == 1, late.stdout + late.stderr
    assert "MISSED: not off-site within 1h" in late.stdout
    lag = re.search(rf'atb_offsite_lag_seconds{{database="{source.dbname}"}} (\d+)',
                    prom.read_text())
    assert lag is not None and 7190 <= int(lag.group(1)) <= 7300
    assert atb_inproc("db", "push", "--backup-dir", str(tree), env=env).returncode == 0
    done = atb_inproc(*args, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f'atb_offsite_lag_seconds{{database="{source.dbname}"}} 0' in prom.read_text()


def test_an_object_deleted_before_its_download_is_one_line_and_leaves_nothing(
        object_store: ObjectStore, repo: str, one_backup: Path, tmp_path: Path) -> None:
    """A dump deleted between the listing and the download: exit 9, one line, no target
    database and no download left behind."""
    from backup_core.store import offsite_catalog, offsite_transfer, repository

    env = _env(object_store, BACKUP_REPO=repo)
    assert atb_inproc("db", "push", "--backup-dir", str(_tree(one_backup, tmp_path)),
                      env=env).returncode == 0
    os.environ.update(object_store.env())
    try:
        store = repository.open_repository(repo)
        remote = offsite_catalog.scan(store)[0]
    finally:
        for k in object_store.env():
            os.environ.pop(k, None)
    store.delete([remote.offsite.dump.key])  # type: ignore[union-attr]
    dest = tmp_path / "fetch"
    with pytest.raises(offsite_transfer.VerifyFailed, match="is gone from"):
        offsite_transfer.fetch(store, remote, dest)
    assert [p for p in dest.rglob("*") if p.is_file()] == []


def test_a_host_clock_far_from_the_stores_is_one_line_naming_the_clock(
        object_store: ObjectStore, repo: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Requests signed two hours ahead of the store's clock are refused by the store: exit 4,
    a line that says to fix the clock, not a credentials riddle."""
    import botocore.auth

    real = botocore.auth.get_current_datetime
    monkeypatch.setattr(botocore.auth, "get_current_datetime",
                        lambda: real() + timedelta(hours=2))
    done = atb_inproc("db", "list", "--repo", repo, env=object_store.env())
    assert done.returncode == 4, done.stderr
    assert "clock" in done.stderr and done.stderr.count("\n") == 1


@pytest.mark.parametrize("encrypted", [False, True])
def test_a_large_object_round_trips_through_parallel_parts(
        object_store: ObjectStore, repo: str, keys: tuple[str, Path, Path], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, encrypted: bool) -> None:
    """Past one part (8 MiB) the upload is multipart and the download ranged and parallel;
    the bytes that come back are the bytes that left, plain or age-encrypted (in threads
    of the one process both ways), and a ciphertext altered in the store is refused by it."""
    from backup_core.store import offsite_catalog, offsite_transfer, repository
    from bench.repository import _backup

    for k, v in object_store.env().items():
        monkeypatch.setenv(k, v)
    dump, manifest = _backup(tmp_path / "tree", (9 << 20) + 12345)
    store = repository.open_repository(repo)
    recipient, ident, _ = keys
    pushed = offsite_transfer.push_backup(store, dump, manifest,
                                    recipients=(recipient,) if encrypted else ())
    assert pushed.uploaded
    remote = offsite_catalog.scan(store)[0]
    assert remote.backup.complete
    got = offsite_transfer.fetch(store, remote, tmp_path / "back",
                           identity_file=ident if encrypted else None)
    assert got.path.read_bytes() == dump.read_bytes()
    assert sorted(p.name for p in got.path.parent.iterdir()) == [
        dump.name, dump.name[: -len(".dump")] + ".json"]
    if encrypted:  # one byte altered in the store: decryption refuses it, nothing kept
        from backup_core.tools.errors import VerifyFailed

        assert remote.offsite is not None
        key = store.url.key(remote.offsite.dump.key)
        s3 = store.client
        data = bytearray(s3.get_object(Bucket=store.url.bucket, Key=key)["Body"].read())
        data[5 << 20] ^= 1
        s3.put_object(Bucket=store.url.bucket, Key=key, Body=bytes(data))
        with pytest.raises(VerifyFailed) as raised:
            offsite_transfer.fetch(store, remote, tmp_path / "again", identity_file=ident)
        assert str(raised.value).startswith(f"{remote.offsite.dump.key}: cannot decrypt (")
        assert str(raised.value).endswith("): the wrong identity, or the object was altered")
        assert [p for p in (tmp_path / "again").rglob("*") if p.is_file()] == []


def test_a_large_encrypted_object_altered_cut_or_replaced_mid_download_restores_nothing(
        object_store: ObjectStore, repo: str, keys: tuple[str, Path, Path], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The encrypted download decrypts each part in the thread that fetched it: a chunk
    altered in a middle part, the object cut short in the store, and the object replaced
    (by another encryption of the same size) while its parts are fetched each fail the
    fetch with their own error, and leave no file behind."""
    from backup_core.store import age_format, offsite_catalog, offsite_transfer, repository
    from backup_core.tools.errors import VerifyFailed
    from bench.repository import _backup

    for k, v in object_store.env().items():
        monkeypatch.setenv(k, v)
    dump, manifest = _backup(tmp_path / "tree", (17 << 20) + 5)  # three parts
    store = repository.open_repository(repo)
    recipient, ident, _ = keys
    offsite_transfer.push_backup(store, dump, manifest, recipients=(recipient,))
    remote = offsite_catalog.scan(store)[0]
    assert remote.offsite is not None
    rel = remote.offsite.dump.key
    bucket, key, s3 = store.url.bucket, store.url.key(rel), store.client
    good = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    start = age_format.header_length(good)
    assert start is not None

    def fails(body: bytes) -> str:
        s3.put_object(Bucket=bucket, Key=key, Body=body)
        dest = tmp_path / f"fetch-{uuid.uuid4().hex[:6]}"
        with pytest.raises(VerifyFailed) as raised:
            offsite_transfer.fetch(store, remote, dest, identity_file=ident)
        assert [p for p in dest.rglob("*") if p.is_file()] == []
        return str(raised.value)

    altered = bytearray(good)
    altered[start + (128 + 3) * age_format.SEALED_CHUNK + 10] ^= 1  # part 2 of 3, chunk 131
    assert fails(bytes(altered)) == (f"{rel}: cannot decrypt (a chunk failed authentication: "
                                     "the payload was altered): the wrong identity, or the "
                                     "object was altered")
    assert fails(good[:-1000]) == (
        f"{rel} in {store.url} is not the object the manifest describes, or changed while "
        f"it was read (its size is {len(good) - 1000} bytes, the manifest's {len(good)}): "
        "nothing was restored")
    other = bytearray(good)  # another encryption of the same size: only the ETag differs
    other[start:] = os.urandom(len(good) - start)
    real = s3.get_object

    def replacing(**kwargs: object) -> object:
        if kwargs.get("Range") == f"bytes={start}-{start + 128 * age_format.SEALED_CHUNK - 1}":
            s3.put_object(Bucket=bucket, Key=key, Body=bytes(other))  # as part 1 is asked
        return real(**kwargs)

    monkeypatch.setattr(s3, "get_object", replacing)
    assert fails(good) == (f"{rel} in {store.url} changed in the store while it was read "
                           "(replaced or cut short): nothing was restored")
    monkeypatch.setattr(s3, "get_object", real)


@pytest.mark.parametrize("encrypted", [False, True])
def test_a_large_dump_changed_since_its_manifest_leaves_nothing_in_the_store(
        object_store: ObjectStore, repo: str, keys: tuple[str, Path, Path], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, encrypted: bool) -> None:
    """The hash is computed while the object uploads (plain) or is encrypted into it (age):
    a dump whose bytes are not its manifest's is refused, its object deleted again, and no
    manifest written."""
    from backup_core.store import offsite_transfer, repository
    from backup_core.tools.errors import VerifyFailed
    from bench.repository import _backup

    for k, v in object_store.env().items():
        monkeypatch.setenv(k, v)
    dump, manifest = _backup(tmp_path / "tree", (9 << 20) + 1)
    with dump.open("r+b") as fh:  # one byte flipped after the manifest was written
        fh.seek(5 << 20)
        byte = fh.read(1)
        fh.seek(5 << 20)
        fh.write(bytes([byte[0] ^ 1]))
    store = repository.open_repository(repo)
    with pytest.raises(VerifyFailed, match="changed since its manifest was written"):
        offsite_transfer.push_backup(store, dump, manifest,
                                     recipients=(keys[0],) if encrypted else ())
    assert store.objects() == {}


def test_a_dump_unreadable_mid_encryption_leaves_nothing_in_the_store(
        object_store: ObjectStore, repo: str, keys: tuple[str, Path, Path], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A disk error while the sealing thread reads the dump (injected at its second block:
    a real store, a real upload under way) fails the push in one line (exit 7) and never
    completes a short object: the upload is abandoned and nothing is visible."""
    import errno

    from backup_core.store import offsite_transfer, repository, sealing
    from backup_core.tools.errors import StorageError
    from bench.repository import _backup

    for k, v in object_store.env().items():
        monkeypatch.setenv(k, v)
    dump, manifest = _backup(tmp_path / "tree", (17 << 20) + 1)
    real, calls = sealing._read_into, []

    def failing(fh: object, buf: bytearray) -> int:
        calls.append(len(buf))
        if len(calls) == 2:
            raise OSError(errno.EIO, "Input/output error")
        return real(fh, buf)  # type: ignore[arg-type]

    monkeypatch.setattr(sealing, "_read_into", failing)
    store = repository.open_repository(repo)
    with pytest.raises(StorageError) as raised:
        offsite_transfer.push_backup(store, dump, manifest, recipients=(keys[0],))
    assert str(raised.value) == f"cannot encrypt {dump}: Input/output error"
    assert raised.value.exit_code == 7
    assert store.objects() == {}
    uploads = store.client.list_multipart_uploads(Bucket=store.url.bucket,
                                                  Prefix=store.url.key(""))
    assert uploads.get("Uploads", []) == []  # the abandoned upload aborted, its parts gone


def test_the_listing_index_never_hides_a_change_to_a_manifest(
        object_store: ObjectStore, repo: str, one_backup: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A push leaves an index segment; a manifest record replaced in the store afterwards
    (another ETag) is read afresh: the listing shows the store, the index only saves reads."""
    from backup_core.store import offsite_catalog, repository

    tree = _tree(one_backup, tmp_path)
    assert atb_inproc("db", "push", "--backup-dir", str(tree), "--repo", repo,
                      env=object_store.env()).returncode == 0
    for k, v in object_store.env().items():
        monkeypatch.setenv(k, v)
    store = repository.open_repository(repo)
    assert [k for k in store.objects() if k.startswith(".index/")] != []
    remote = offsite_catalog.scan(store)[0]
    assert remote.backup.complete
    record = json.loads(store.read_small(remote.manifest_key))
    record["offsite"]["dump"]["size_bytes"] += 1
    store.put(remote.manifest_key, json.dumps(record).encode())
    again = offsite_catalog.scan(store)[0]
    assert again.backup.state == "damaged" and "bytes stored, manifest says" in \
        again.backup.problem


def test_backup_repo_in_the_environment_never_turns_list_or_prune_to_the_repository(
        object_store: ObjectStore, repo: str, one_backup: Path, tmp_path: Path) -> None:
    """BACKUP_REPO, exported for the host's uploads, leaves `list` and `prune` on the local
    tree: a cron prune keeps freeing the disk; the repository is named with --repo."""
    tree = _tree(one_backup, tmp_path)
    env = _env(object_store, BACKUP_REPO=repo)
    listed = json.loads(atb_inproc("db", "list", "--backup-dir", str(tree), "--json",
                                   env=env).stdout)
    assert [i["path"] for i in listed] == [str(next(tree.rglob("*.dump")))]
    pruned = atb_inproc("db", "prune", "--backup-dir", str(tree), "--dry-run", env=env)
    assert pruned.returncode == 0 and pruned.stdout.endswith("1 kept, 0 would delete\n")


_WRITES: list[str] = []
_WATCHING = [False]


def _watch_writes(event: str, args: tuple[object, ...]) -> None:
    """An audit hook: every file this process opens for writing while `_WATCHING` is set."""
    if _WATCHING[0] and event == "open" and isinstance(args[0], str | bytes | os.PathLike):
        mode = args[1] if len(args) > 1 and isinstance(args[1], str) else ""
        flags = args[2] if len(args) > 2 and isinstance(args[2], int) else 0
        if any(c in mode for c in "wax+") or flags & (os.O_WRONLY | os.O_RDWR):
            _WRITES.append(os.fsdecode(args[0]))


def test_keys_that_cannot_write_are_one_line_exit_4_and_nothing_encrypted_lands_on_disk(
        object_store: ObjectStore, repo: str, one_backup: Path, tmp_path: Path,
        keys: tuple[str, Path, Path], source: ConnInfo) -> None:
    """A read-and-list key on push (plain, and encrypted: the small roles and manifest
    objects go up in one request) and on backup: the store's refusal is exit 4 in one line,
    never 70 and a traceback. The small encrypted objects are sealed in memory: no file is
    opened for writing while the push runs (the README promises no ciphertext copy on disk)."""
    recipient = keys[0]
    tree = _tree(one_backup, tmp_path)
    reader = object_store.env(read_only=True)
    plain = atb_inproc("db", "push", "--repo", repo, "--backup-dir", str(tree), env=reader)
    assert (plain.returncode, plain.stderr.count("\n")) == (4, 1), plain.stderr
    assert "refused our credentials (AccessDenied)" in plain.stderr
    assert "traceback" not in plain.stderr
    sealed = atb_inproc("db", "push", "--repo", repo, "--backup-dir", str(tree),
                        env={**reader, "BACKUP_ENCRYPT_TO": recipient})
    assert (sealed.returncode, sealed.stderr.count("\n")) == (4, 1), sealed.stderr
    assert "refused our credentials (AccessDenied)" in sealed.stderr
    local = tmp_path / "local"
    backup = atb_inproc("db", "backup", "--backup-dir", str(local), url=source,
                        env={**reader, "BACKUP_REPO": repo})
    assert (backup.returncode, backup.stderr.count("atb: error:")) == (4, 1), backup.stderr
    assert "written" in backup.stderr.splitlines()[0]  # the local backup's own line first
    assert "refused our credentials (AccessDenied)" in backup.stderr.splitlines()[-1]
    assert len(list(local.rglob("backup-*.dump"))) == 1  # the local backup stays
    import sys
    sys.addaudithook(_watch_writes)
    _WATCHING[0] = True
    try:
        done = atb_inproc("db", "push", "--repo", repo, "--backup-dir", str(tree),
                          env={**object_store.env(), "BACKUP_ENCRYPT_TO": recipient})
    finally:
        _WATCHING[0] = False
    assert done.returncode == 0, done.stderr
    assert [w for w in _WRITES if not w.startswith("/dev/")] == []
