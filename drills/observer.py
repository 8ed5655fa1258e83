"""Production seen across the isolation boundary: the isolated drill child cannot reach
production (that is the point), so `atb drill run` answers its questions about production on
a private unix socket. The answer is `guard.observe(production)` as JSON: read-only, and the
only thing the socket can do.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

from backup_core import db, guard
from backup_core.conninfo import ConnInfo

SOCKET_ENV = "ATB_OBSERVER_SOCKET"


def encode(obs: guard.Observation | None) -> bytes:
    if obs is None:
        return b"null"
    return json.dumps({"server": obs.identity.server, "database_oid": obs.identity.database_oid,
                       "database": obs.identity.database,
                       "alembic_revision": obs.alembic_revision,
                       "schema_hash": obs.schema_hash}).encode()


def decode(data: bytes) -> guard.Observation | None:
    raw = json.loads(data or b"null")
    if not isinstance(raw, dict):
        return None
    return guard.Observation(
        identity=db.Identity(server=str(raw["server"]), database_oid=int(raw["database_oid"]),
                             database=str(raw["database"])),
        alembic_revision=raw["alembic_revision"], schema_hash=str(raw["schema_hash"]))


@contextlib.contextmanager
def serve(production: ConnInfo) -> Iterator[Path]:
    """A socket in a private directory; each connection gets one observation and is closed."""
    folder = Path(tempfile.mkdtemp(prefix="atb-observer-"))
    path = folder / "observer.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(4)
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn, contextlib.suppress(OSError):
                conn.sendall(encode(guard.observe(production)))

    thread = threading.Thread(target=loop, name="atb-observer", daemon=True)
    thread.start()
    try:
        yield path
    finally:
        stop.set()
        with contextlib.suppress(OSError):
            listener.shutdown(socket.SHUT_RDWR)
        listener.close()
        shutil.rmtree(folder, ignore_errors=True)


def observer_for(path: str) -> guard.Observer:
    """An observe function (as `guard.observe`) that asks the parent's observer."""
    def ask(production: ConnInfo | None) -> guard.Observation | None:
        if production is None:
            return None
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(120)
                s.connect(path)
                chunks = []
                while chunk := s.recv(65536):
                    chunks.append(chunk)
        except OSError:
            return None
        return decode(b"".join(chunks))
    return ask


def current() -> guard.Observer:
    """How this process observes production: through the parent when it runs isolated."""
    path = os.environ.get(SOCKET_ENV)
    return observer_for(path) if path else guard.observe
