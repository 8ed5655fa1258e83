"""A unix socket that forwards to one PostgreSQL server: how a child inside the isolation
namespaces (no network but its own loopback) reaches a server outside, through the file
system, and nothing else.

With `only_database`, the relay reads each client's startup packet and refuses any other
database with a FATAL error before a byte reaches the server: a restore target that shares
production's server is reachable, production on that server is not.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import ssl
import struct
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from backup_core.tools import removal
from backup_core.tools.conninfo import ConnInfo
from backup_core.tools.errors import ConnectionFailed

SSL_REQUEST = 80877103
GSSENC_REQUEST = 80877104
CANCEL_REQUEST = 80877102
PROTOCOL_MAJOR = 3
MAX_STARTUP = 10_000  # PostgreSQL's own limit on a startup packet
TLS_MODES = ("require", "verify-ca", "verify-full")


@dataclass(frozen=True)
class Startup:
    """A client's first real packet: a startup message (its parameters) or a cancel."""

    code: int
    params: tuple[tuple[str, str], ...] = ()

    @property
    def cancel(self) -> bool:
        return self.code == CANCEL_REQUEST

    @property
    def database(self) -> str:
        """The database the client asks for; libpq defaults it to the user name."""
        p = dict(self.params)
        return p.get("database") or p.get("user", "")


def parse_startup(packet: bytes) -> Startup:
    """Parse one length-prefixed startup-phase packet (length included); ValueError when it
    is not one PostgreSQL would accept."""
    if len(packet) < 8:
        raise ValueError("short startup packet")
    length, code = struct.unpack("!ii", packet[:8])
    if length != len(packet):
        raise ValueError("startup packet length mismatch")
    if code in (SSL_REQUEST, GSSENC_REQUEST, CANCEL_REQUEST):
        return Startup(code)
    if code >> 16 != PROTOCOL_MAJOR:
        raise ValueError(f"unsupported protocol {code >> 16}.{code & 0xFFFF}")
    fields = packet[8:].split(b"\0")
    if len(fields) < 2 or fields[-1] != b"" or fields[-2] != b"":
        raise ValueError("unterminated startup parameters")
    items = [f.decode("utf-8", "replace") for f in fields[:-2]]
    if len(items) % 2:
        raise ValueError("odd startup parameters")
    return Startup(code, tuple(zip(items[::2], items[1::2], strict=True)))


def speaks_postgresql(head: bytes) -> bool | None:
    """Whether a client's first bytes open a PostgreSQL session (True), cannot (False), or
    may yet (None: read on). Every PostgreSQL client opens with a length below 65536 and a
    startup, TLS, GSS or cancel code; no text protocol opens with a NUL byte."""
    if head[:1] not in (b"", b"\0") or head[1:2] not in (b"", b"\0"):
        return False
    if len(head) < 8:
        return None
    length, code = struct.unpack("!ii", head[:8])
    return 8 <= length <= MAX_STARTUP and (
        code in (SSL_REQUEST, GSSENC_REQUEST, CANCEL_REQUEST) or 1 <= code >> 16 <= 3)


def error_response(message: str, *, code: str = "28000") -> bytes:
    """A FATAL ErrorResponse, as the server sends one (libpq shows `message`)."""
    body = b"".join(k + v.encode() + b"\0" for k, v in (
        (b"S", "FATAL"), (b"V", "FATAL"), (b"C", code), (b"M", message))) + b"\0"
    return b"E" + struct.pack("!i", len(body) + 4) + body


AUTH_SASL = 10
TLS_CHUNK = 65536
TLS_BUFFER = 1 << 20  # read no more from a side while this much waits for the other


def _nonblocking(call: Any, arg: Any) -> Any:
    """`call(arg)` on a non-blocking socket: None when it would block."""
    try:
        return call(arg)
    except BlockingIOError:
        return None


def read_message(sock: socket.socket) -> bytes:
    """One message of the server's: its type byte, length and body."""
    head = _recv_exactly(sock, 5)
    (length,) = struct.unpack("!i", head[1:])
    if not 4 <= length <= MAX_STARTUP:
        raise ValueError(f"a server message of {length} bytes")
    return head + _recv_exactly(sock, length - 4)


def without_channel_binding(message: bytes) -> bytes:
    """The server's SASL offer with the `-PLUS` mechanisms taken out: over TLS the server
    offers channel binding, which the client, on the relay's local socket, would have to
    bind to a TLS session it does not have (libpq refuses the offer outright). Plain
    SCRAM-SHA-256 is still the server's own, answered by the client's password."""
    if message[:1] != b"R" or len(message) < 9 or struct.unpack(
            "!i", message[5:9])[0] != AUTH_SASL:
        return message
    names = [n for n in message[9:].split(b"\0") if n and not n.endswith(b"-PLUS")]
    body = struct.pack("!i", AUTH_SASL) + b"".join(n + b"\0" for n in names) + b"\0"
    return b"R" + struct.pack("!i", len(body) + 4) + body


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("client closed during startup")
        data += chunk
    return data


def read_packet(sock: socket.socket) -> bytes:
    head = _recv_exactly(sock, 4)
    (length,) = struct.unpack("!i", head)
    if not 8 <= length <= MAX_STARTUP:
        raise ValueError(f"startup packet of {length} bytes")
    return head + _recv_exactly(sock, length - 4)


class Relay:
    """`<private dir>/.s.PGSQL.<port>` forwarding to `upstream`'s server (its first host).
    `url()` is `upstream` reached through the relay; everything is closed on exit."""

    def __init__(self, upstream: ConnInfo, *, only_database: str | None = None,
                 raw: bool = False) -> None:
        self.upstream = upstream
        self.only_database = only_database
        # any TCP service but PostgreSQL (which could be production, behind a forwarder or
        # by another spelling of its address): a client opening a PostgreSQL session is cut
        # off before a byte of it leaves; everything else is forwarded as it comes
        self.raw = raw
        self.port = int((upstream.port or "5432").split(",")[0])
        self._dir: Path | None = None
        self._listener: socket.socket | None = None
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._closed = threading.Event()

    @property
    def socket_dir(self) -> Path:
        assert self._dir is not None, "the relay is not open"
        return self._dir

    @property
    def socket_path(self) -> Path:
        return self.socket_dir / ("service.sock" if self.raw else f".s.PGSQL.{self.port}")

    def url(self) -> ConnInfo:
        """`upstream` by the relay's socket: TLS, if asked, is the relay's business."""
        return self.upstream.with_params(host=str(self.socket_dir), port=str(self.port),
                                         hostaddr="", sslmode="disable")

    def __enter__(self) -> Relay:
        self._dir = Path(tempfile.mkdtemp(prefix="atb-relay-"))
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(str(self.socket_path))
            listener.listen(16)
        except OSError:
            listener.close()
            removal.discard(self._dir)
            raise
        self._listener = listener
        threading.Thread(target=self._accept, name="atb-relay", daemon=True).start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._closed.set()
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
        with self._lock:
            for s in list(self._open):
                with contextlib.suppress(OSError):
                    s.close()
            self._open.clear()
        if self._dir is not None:
            removal.discard(self._dir)

    # -- connections --------------------------------------------------------------------

    def _track(self, s: socket.socket) -> socket.socket:
        with self._lock:
            if self._closed.is_set():
                s.close()
                raise ConnectionError("relay closed")
            self._open.add(s)
        return s

    def _drop(self, *socks: socket.socket) -> None:
        with self._lock:
            for s in socks:
                self._open.discard(s)
                with contextlib.suppress(OSError):  # a FIN now, though another thread is
                    s.shutdown(socket.SHUT_RDWR)  # still in recv on it (close alone waits)
                with contextlib.suppress(OSError):
                    s.close()

    def _accept(self) -> None:
        assert self._listener is not None
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _connect_upstream(self) -> socket.socket:
        host = (self.upstream.get("hostaddr") or self.upstream.host or "/tmp").split(",")[0]
        try:
            if host.startswith("/"):
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.connect(os.path.join(host, f".s.PGSQL.{self.port}"))
                return s
            return socket.create_connection((host, self.port), timeout=30)
        except OSError as exc:
            raise ConnectionFailed(f"the relay cannot reach {self.upstream.redacted}: "
                                   f"{exc}") from exc

    def _tls(self, up: socket.socket) -> socket.socket:
        """TLS to the server when the target's sslmode asks for it."""
        mode = self.upstream.get("sslmode")
        if mode not in TLS_MODES or up.family == socket.AF_UNIX:
            return up
        try:
            up.sendall(struct.pack("!ii", 8, SSL_REQUEST))
            if _recv_exactly(up, 1) != b"S":
                raise ConnectionFailed("the server refused TLS, which the target's sslmode "
                                       "needs")
            ctx = ssl.create_default_context(cafile=self.upstream.get("sslrootcert") or None)
            if mode != "verify-full":
                ctx.check_hostname = False
            if mode == "require" and not self.upstream.get("sslrootcert"):
                ctx.verify_mode = ssl.CERT_NONE
            return ctx.wrap_socket(up, server_hostname=self.upstream.host.split(",")[0])
        except BaseException:  # refused or not verified: nothing of the session was sent
            self._drop(up)
            raise

    def _serve(self, client: socket.socket) -> None:
        up: socket.socket | None = None
        try:
            self._track(client)
            if self.raw:
                up = self._track(self._connect_upstream())
                up.settimeout(None)
                threading.Thread(target=self._pipe, args=(up, client), daemon=True).start()
                head = b""
                while (verdict := speaks_postgresql(head)) is None:
                    chunk = client.recv(8 - len(head))
                    if not chunk:
                        break
                    head += chunk
                if verdict:
                    self._drop(client, up)
                    return
                up.sendall(head)
                self._pipe(client, up)
                return
            client.settimeout(30)
            while True:
                packet = read_packet(client)
                start = parse_startup(packet)
                if start.code in (SSL_REQUEST, GSSENC_REQUEST):
                    client.sendall(b"N")  # the socket is local: no TLS on this side
                    continue
                break
            if (not start.cancel and self.only_database is not None
                    and start.database != self.only_database):
                client.sendall(error_response(
                    f"atb: this connection may only open database {self.only_database}"))
                return
            up = self._track(self._tls(self._connect_upstream()))
            up.settimeout(None)
            client.settimeout(None)
            up.sendall(packet)
            if isinstance(up, ssl.SSLSocket):  # the client sees a local socket, not TLS
                client.sendall(without_channel_binding(read_message(up)))
                self._splice_tls(client, up)
                return
            threading.Thread(target=self._pipe, args=(up, client), daemon=True).start()
            self._pipe(client, up)
        except (ssl.SSLError, ConnectionFailed) as exc:  # said to the client, as a server
            if up is None:  # would: not a closed socket to guess about
                with contextlib.suppress(OSError):
                    client.sendall(error_response(f"atb: the relay cannot reach the target: "
                                                  f"{exc}", code="08001"))
        except (OSError, ValueError):
            pass
        finally:
            if up is None:
                self._drop(client)

    def _splice_tls(self, client: socket.socket, up: ssl.SSLSocket) -> None:
        """Both ways in this one thread: OpenSSL does not let one TLS session be read and
        written from two threads at once. Ends when either side has hung up and what it
        sent is delivered."""
        client.setblocking(False)
        up.setblocking(False)
        to_up, to_client = bytearray(), bytearray()
        client_done = up_done = up_wants_write = False
        try:
            while not ((up_done and not to_client) or (client_done and not to_up)):
                reads = [s for s, ok in ((client, not client_done and len(to_up) < TLS_BUFFER),
                                         (up, not up_done and len(to_client) < TLS_BUFFER))
                         if ok]
                writes = [s for s, ok in ((client, bool(to_client)),
                                          (up, bool(to_up) or up_wants_write)) if ok]
                pending = not up_done and up.pending() > 0  # decrypted, not yet read
                readable, writable, _ = select.select(reads, writes, [], 0 if pending else None)
                if client in readable:
                    data = _nonblocking(client.recv, TLS_CHUNK)
                    if data == b"":
                        client_done = True
                    elif data:
                        to_up += data
                if up in readable or (up in writable and up_wants_write) or pending:
                    up_wants_write = False
                    try:
                        data = up.recv(TLS_CHUNK)
                        if not data:
                            up_done = True
                        to_client += data
                    except ssl.SSLWantReadError:
                        pass
                    except ssl.SSLWantWriteError:
                        up_wants_write = True
                    except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                        up_done = True
                if client in writable and to_client:
                    sent = _nonblocking(client.send, to_client)
                    del to_client[:sent or 0]
                if up in writable and to_up:
                    with contextlib.suppress(ssl.SSLWantReadError, ssl.SSLWantWriteError):
                        del to_up[:up.send(to_up)]
        except OSError:
            pass
        finally:
            self._drop(client, up)

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            self._drop(src, dst)
