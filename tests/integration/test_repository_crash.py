"""The object store really stopped in the middle of `atb db push`: its process killed (as a
crash or a power cut would stop it) while the dump's multipart upload is under way, then
started again on the same data directory; plain, and encrypted (the dump then encrypted by
a thread one block ahead of its parts' upload)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import boto3
import pyrage
import pytest

from backup_core.store import sealing
from bench.repository import _backup
from tests.helpers import atb_inproc
from tests.object_store import WeedServer

SIZE = 24 << 20  # three parts of 8 MiB: a multipart upload, under way long enough to see


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WeedServer]:
    """One store for both cases (each kills it and starts it again on the same data, and
    leaves it running for the next); its data is thrown away at the end: killed, no
    graceful stop to wait for."""
    weed = WeedServer(tmp_path_factory.mktemp("store"))
    try:
        yield weed
    finally:
        weed.kill()


@pytest.mark.parametrize("encrypted", [False, True], ids=["plain", "age"])
def test_a_store_killed_mid_upload_is_one_line_exit_4_and_the_next_push_completes_it(
        encrypted: bool, server: WeedServer, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """While push uploads the dump's parts the store dies: push says so in one line and
    exits 4, no manifest is visible (a reader sees no backup), and once the store is back on
    the same data the next push uploads it whole, both hashes proven on the way back (for
    an encrypted dump: the object is age ciphertext, decrypted with the identity)."""
    dump, manifest = _backup(tmp_path / "tree", SIZE)
    running = server.proc is not None and server.proc.poll() is None
    store = server.store if running else server.start()
    prefix = "age" if encrypted else "plain"  # each case its own repository
    url = f"s3://{store.bucket}/{prefix}"
    env = {**store.env(), "BACKUP_REPO": url}
    identity = pyrage.x25519.Identity.generate()
    if encrypted:
        env["BACKUP_ENCRYPT_TO"] = str(identity.to_public())
    suffix = ".age" if encrypted else ""
    s3 = boto3.client("s3", endpoint_url=store.endpoint, region_name="us-east-1",
                      aws_access_key_id=store.access_key,
                      aws_secret_access_key=store.secret_key)
    push = subprocess.Popen(
        [sys.executable, "-m", "drills.cli", "db", "push", "--backup-dir",
         str(tmp_path / "tree")], env={**os.environ, **env}, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not s3.list_multipart_uploads(Bucket=store.bucket,
                                           Prefix=prefix).get("Uploads"):
            assert push.poll() is None, push.communicate()
            assert time.monotonic() < deadline, "push never started its upload"
            time.sleep(0.01)
        # freeze push so that it cannot finish between our look and the kill
        os.kill(push.pid, signal.SIGSTOP)
        server.kill()
        os.kill(push.pid, signal.SIGCONT)
        out, err = push.communicate(timeout=120)
    finally:
        if push.poll() is None:
            push.kill()
            push.wait()
    assert push.returncode == 4, out + err  # ConnectionFailed: the store cannot be reached
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"atb: error: uploading {dump.relative_to(tmp_path / 'tree')}"
                          f"{suffix} to {url}: cannot reach the store"), err

    store = server.start()  # the same data directory, ports and keys
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=store.bucket,
                                                  Prefix=prefix).get("Contents", [])}
    assert not [k for k in keys if k.endswith(".json")], keys  # no manifest: no backup
    listed = atb_inproc("db", "list", "--repo", url, "--json", env=env)
    assert listed.returncode == 0 and json.loads(listed.stdout) == [], listed.stderr

    again = atb_inproc("db", "push", "--backup-dir", str(tmp_path / "tree"), "--json",
                       env=env)
    assert again.returncode == 0, again.stderr
    assert [p["uploaded"] for p in json.loads(again.stdout)["pushed"]] == [True]
    listed = atb_inproc("db", "list", "--repo", url, "--json", env=env)
    assert [i["state"] for i in json.loads(listed.stdout)] == ["complete"]

    from backup_core.store import offsite_catalog, offsite_transfer, repository

    for k, v in env.items():
        monkeypatch.setenv(k, v)
    repo = repository.open_repository(url)
    [remote] = offsite_catalog.scan(repo)
    assert remote.offsite is not None and remote.offsite.encrypted is encrypted
    if encrypted:
        head = s3.get_object(Bucket=store.bucket, Key=f"{prefix}/{remote.offsite.dump.key}",
                             Range="bytes=0-21")["Body"].read()
        assert head == b"age-encryption.org/v1\n"
        (tmp_path / "id.txt").write_text(f"{identity}\n")
    got = offsite_transfer.fetch(repo, remote, tmp_path / "back",
                                 identity_file=tmp_path / "id.txt" if encrypted else None)
    assert got.manifest.sha256 == manifest.sha256
    assert got.path.stat().st_size == SIZE
    assert sealing.hash_file(got.path).plain_sha256 == manifest.sha256
