"""Production seen across the isolation boundary: the isolated drill child cannot reach
production (that is the point), so `atb drill run` answers its questions about production on
a private unix socket: `observe` (`guard.observe(production)`) and `archiver` (its
`pg_stat_archiver` row, for a point-in-time drill's RPO), as JSON. Read-only, and nothing
else the socket can do.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import tempfile
import threading
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import psycopg

from backup_core.pitr import wal_status
from backup_core.reading import guard
from backup_core.tools import db, reaper, removal
from backup_core.tools.conninfo import ConnInfo, redact
from backup_core.tools.errors import AtbError

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


def _when(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def encode_archiver(a: wal_status.Archiver) -> bytes:
    return json.dumps({"last_archived_wal": a.last_archived_wal,
                       "last_archived_at": _when(a.last_archived_at),
                       "last_failed_wal": a.last_failed_wal,
                       "last_failed_at": _when(a.last_failed_at),
                       "failed_count": a.failed_count, "archive_mode": a.archive_mode}).encode()


def decode_archiver(data: bytes) -> wal_status.Archiver:
    raw = json.loads(data or b"{}")
    if not isinstance(raw, dict) or "error" in raw:
        raise AtbError(str(raw.get("error") if isinstance(raw, dict) else "no answer"))
    def when(key: str) -> datetime | None:
        return datetime.fromisoformat(raw[key]) if raw.get(key) else None
    return wal_status.Archiver(
        last_archived_wal=raw["last_archived_wal"], last_archived_at=when("last_archived_at"),
        last_failed_wal=raw["last_failed_wal"], last_failed_at=when("last_failed_at"),
        failed_count=int(raw["failed_count"]), archive_mode=str(raw["archive_mode"]))


def _answer(production: ConnInfo, request: bytes) -> bytes:
    if request.strip() == b"archiver":
        try:
            return encode_archiver(wal_status.read_archiver(production))
        except (AtbError, psycopg.Error) as exc:
            return json.dumps({"error": redact(str(exc).strip().splitlines()[0]
                                               if str(exc).strip() else repr(exc))}).encode()
    return encode(guard.observe(production))


@contextlib.contextmanager
def serve(production: ConnInfo) -> Iterator[Path]:
    """A socket in a private directory; each connection gets one observation and is closed."""
    folder = Path(tempfile.mkdtemp(prefix="atb-observer-"))
    reaper.mark_owner(folder)  # removed by the next drill if this process is killed
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
            with conn, contextlib.suppress(OSError, ValueError):
                conn.settimeout(10)
                conn.sendall(_answer(production, conn.recv(64)))

    thread = threading.Thread(target=loop, name="atb-observer", daemon=True)
    thread.start()
    try:
        yield path
    finally:
        stop.set()
        with contextlib.suppress(OSError):
            listener.shutdown(socket.SHUT_RDWR)
        listener.close()
        removal.discard(folder)


def _ask(path: str, request: bytes) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(120)
        s.connect(path)
        s.sendall(request + b"\n")
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def observer_for(path: str) -> guard.Observer:
    """An observe function (as `guard.observe`) that asks the parent's observer."""
    def ask(production: ConnInfo | None) -> guard.Observation | None:
        if production is None:
            return None
        try:
            return decode(_ask(path, b"observe"))
        except OSError:
            return None
    return ask


def read_archiver(production: ConnInfo) -> wal_status.Archiver:
    """Production's `pg_stat_archiver`, through the parent when this process is isolated;
    `AtbError` when it cannot be read."""
    path = os.environ.get(SOCKET_ENV)
    if not path:
        return wal_status.read_archiver(production)
    try:
        return decode_archiver(_ask(path, b"archiver"))
    except (OSError, ValueError, KeyError) as exc:
        raise AtbError(f"the drill's observer of production did not answer: {exc}") from exc



def current() -> guard.Observer:
    """How this process observes production: through the parent when it runs isolated."""
    path = os.environ.get(SOCKET_ENV)
    return observer_for(path) if path else guard.observe
