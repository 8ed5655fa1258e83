"""The relay's upstream TLS: a target whose URL asks for TLS (`sslmode=require`,
`verify-full` with its CA) is reached over TLS through the relay, whose own side is a local
socket, with real traffic both ways at once; a server whose certificate does not verify, or
that refuses TLS, is refused before a byte of the session leaves."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from backup_core.tools import db, toolchain
from backup_core.tools.cluster import Cluster, service_user
from backup_core.tools.relay import Relay
from tests.conftest import _chain, random_password


def _certificate(where: Path, name: str, *, ip: str) -> tuple[Path, Path]:
    """A self-signed certificate for `ip` (its own CA), and its key."""
    cert, key = where / f"{name}.crt", where / f"{name}.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", f"/CN={name}", "-addext", f"subjectAltName=IP:{ip}",
                    "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    return cert, key


@pytest.fixture(scope="module")
def tls_server(chains: list[toolchain.Toolchain]) -> Iterator[tuple[Cluster, Path]]:
    """A PostgreSQL 15 server with TLS on, its certificate for 127.0.0.1 (and the CA file
    that verifies it)."""
    where = Path(tempfile.mkdtemp(prefix="atb-tls-"))  # the server's user must reach it
    where.chmod(0o755)
    cert, key = _certificate(where, "server", ip="127.0.0.1")
    user = service_user()
    if user:
        entry = pwd.getpwnam(user)
        for f in (cert, key):
            os.chown(f, entry.pw_uid, entry.pw_gid)
    key.chmod(0o600)
    chain = _chain(chains, 15)
    try:
        with Cluster(chain, password=random_password(), tcp=True,
                     settings={"ssl": "on", "ssl_cert_file": str(cert),
                               "ssl_key_file": str(key)}) as cluster:
            yield cluster, cert
    finally:
        shutil.rmtree(where, ignore_errors=True)


@pytest.mark.parametrize("mode", ["require", "verify-full"])
def test_the_relay_reaches_a_tls_target_and_carries_traffic_both_ways(
    mode: str, tls_server: tuple[Cluster, Path]
) -> None:
    """Through the relay: the session upstream is TLS (pg_stat_ssl says so), and a COPY of
    a few megabytes in while a query streams out arrives whole."""
    cluster, ca = tls_server
    params = {"sslmode": mode, **({"sslrootcert": str(ca)} if mode == "verify-full" else {})}
    target = cluster.url().with_params(**params)
    with Relay(target) as relay, db.connect(relay.url(), autocommit=True) as conn:
        assert conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
                            ).fetchone() == (True,)
        conn.execute("CREATE TEMP TABLE blob (n int, t text)")
        with conn.cursor().copy("COPY blob FROM STDIN") as copy:
            for n in range(20_000):
                copy.write_row((n, "x" * 200))
        total = conn.execute("SELECT count(*), sum(length(t)) FROM blob").fetchone()
        streamed = sum(len(r[0]) for r in conn.execute(
            "SELECT repeat('y', 1000) FROM generate_series(1, 5000)"))
    assert total == (20_000, 4_000_000)
    assert streamed == 5_000_000


def test_a_certificate_that_does_not_verify_is_refused(
    tls_server: tuple[Cluster, Path], tmp_path: Path
) -> None:
    """verify-full against another CA: the relay refuses, and the client gets no session."""
    cluster, _ = tls_server
    other, _ = _certificate(tmp_path, "other", ip="127.0.0.1")
    target = cluster.url().with_params(sslmode="verify-full", sslrootcert=str(other))
    with Relay(target) as relay, pytest.raises(
            psycopg.OperationalError, match="atb: the relay cannot reach the target: "
                                            r"\[SSL: CERTIFICATE_VERIFY_FAILED\]"):
        psycopg.connect(relay.url().conninfo, password=target.password, connect_timeout=5)


def test_a_server_without_tls_is_refused_when_the_target_needs_it(pg15: Cluster) -> None:
    """`sslmode=require` against a server with TLS off: refused, never sent in clear."""
    target = pg15.url().with_params(sslmode="require")
    with Relay(target) as relay, pytest.raises(
            psycopg.OperationalError, match="atb: the relay cannot reach the target: the "
                                            "server refused TLS, which the target's sslmode "
                                            "needs"):
        psycopg.connect(relay.url().conninfo, password=target.password, connect_timeout=5)
