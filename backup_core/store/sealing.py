"""Encryption of what leaves the host, in the age format (`age_format`: X25519 recipients,
OpenSSL's ChaCha20-Poly1305): public keys on the backup host, the identity only where a
backup is restored. Both the plaintext and the ciphertext are hashed in the same streaming
pass, so a download proves both.

The work is spread over threads that all release the GIL (OpenSSL's cipher, hashlib on
large buffers, file reads and writes): encrypting block N+1 while block N uploads, and
hashing each side beside the cipher, in order."""

from __future__ import annotations

import hashlib
import io
import queue
import sys
import threading
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from backup_core.tools.errors import ConfigError, ToolchainError, VerifyFailed
from backup_core.tools.extras import require

if TYPE_CHECKING:
    from backup_core.store.age_format import Identity

CHUNK = 1 << 20
BLOCK = 8 << 20  # plaintext read, encrypted and hashed at a time: 128 age chunks
PLAIN_CHUNK = 8 << 20  # one part of a ranged download, read whole
_DEPTH = 3  # blocks queued between the cipher and the upload (memory: a few blocks)
# The cipher releases the GIL for each 64 KiB chunk (16,384 times a GB) and must take it back
# each time; beside a busy Python thread it waits up to the switch interval for it (5 ms by
# default: 1 GiB took 21 s instead of 0.4 s beside a spinning thread). Half a millisecond
# while an object is sealed or unsealed (bench/RESULTS.md: the encrypted fetch 6.2 s against
# 7.8 s in one run; no difference shown in a second, at load 7).
SWITCH_INTERVAL = 0.0005


@contextmanager
def quick_handoff() -> Iterator[None]:
    """The GIL handed between threads every SWITCH_INTERVAL while the cipher runs; the
    interval the process had is put back when the last of several at once ends."""
    with _HANDOFF_LOCK:
        if not _HANDOFF:
            _HANDOFF.append(sys.getswitchinterval())
            sys.setswitchinterval(min(_HANDOFF[0], SWITCH_INTERVAL))
        _HANDOFF.append(0.0)
    try:
        yield
    finally:
        with _HANDOFF_LOCK:
            _HANDOFF.pop()
            if len(_HANDOFF) == 1:
                sys.setswitchinterval(_HANDOFF.pop())


_HANDOFF_LOCK = threading.Lock()
_HANDOFF: list[float] = []  # the process's own interval, then one entry per handoff open


@dataclass(frozen=True)
class Hashed:
    """What one streaming pass saw: bytes in (plaintext) and out (as stored)."""

    plain_size: int
    plain_sha256: str
    stored_size: int
    stored_sha256: str


def fingerprint(recipient: str) -> str:
    """A short, stable name of a public key, recorded in the manifest."""
    return "sha256:" + hashlib.sha256(recipient.strip().encode()).hexdigest()[:16]


def _age() -> Any:
    require("s3", what="encryption (BACKUP_ENCRYPT_TO)")
    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

    if not hasattr(ChaCha20Poly1305, "decrypt_into"):  # cryptography 47 and later
        raise ToolchainError("encryption (BACKUP_ENCRYPT_TO) needs cryptography 47 or later, "
                             "which this install lacks: pip install 'atb-backup-drills[s3]'")
    from backup_core.store import age_format

    return age_format


def recipients(text: str) -> tuple[str, ...]:
    """The age public keys of `BACKUP_ENCRYPT_TO` (comma or space separated), each checked."""
    keys = tuple(k for k in text.replace(",", " ").split() if k)
    if not keys:
        return ()
    age = _age()
    for key in keys:
        try:
            age.Recipient.parse(key)
        except ValueError as exc:
            raise ConfigError(f"BACKUP_ENCRYPT_TO: {key[:12]}… is not an age public key "
                              "(age1…)") from exc
    return keys


def identities(path: Path | None) -> list[Identity]:
    """The age identities in `ATB_AGE_IDENTITY_FILE` (comment lines skipped)."""
    if path is None:
        raise ConfigError("this backup is encrypted: set ATB_AGE_IDENTITY_FILE to the age "
                          "identity file whose public key it was encrypted to")
    age = _age()
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeError) as exc:
        raise ConfigError(f"ATB_AGE_IDENTITY_FILE: cannot read {path}: {exc}") from exc
    found = []
    for line in lines:
        line = line.strip()
        if line and not line.startswith("#"):
            try:
                found.append(age.Identity.parse(line))
            except ValueError as exc:
                raise ConfigError(f"ATB_AGE_IDENTITY_FILE: {path} holds a line that is not "
                                  "an age identity (AGE-SECRET-KEY-1…)") from exc
    if not found:
        raise ConfigError(f"ATB_AGE_IDENTITY_FILE: {path} holds no age identity")
    return found


def identity_fingerprints(ids: list[Identity]) -> frozenset[str]:
    return frozenset(fingerprint(str(i.to_public())) for i in ids)


class _Digest:
    """A SHA-256 updated in order by a thread of its own; at most two blocks waiting. A
    context manager (the thread ends with it)."""

    def __init__(self) -> None:
        self.digest, self.size = hashlib.sha256(), 0
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="atb-hash")
        self.pending: deque[Future[None]] = deque()

    def add(self, data: bytes | bytearray) -> None:
        self.size += len(data)
        self.pending.append(self.pool.submit(self.digest.update, data))
        while len(self.pending) > 2:
            self.pending.popleft().result()

    def hexdigest(self) -> str:
        while self.pending:
            self.pending.popleft().result()
        return self.digest.hexdigest()

    def __enter__(self) -> _Digest:
        return self

    def __exit__(self, *exc: object) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


def _read_block(fh: io.FileIO, size: int) -> bytearray:
    """`size` bytes, fewer only at the end of the file."""
    buf = bytearray(size)
    view, got = memoryview(buf), 0
    while got < size and (n := fh.readinto(view[got:])):
        got += n
    del view
    del buf[got:]
    return buf


class SealedStream:
    """`src` encrypted to `keys`, as a readable stream for an upload (`read(n)`) or as
    blocks (iterate), made by a thread of its own a few blocks ahead, both sides hashed in
    two more. A context manager: leaving it early (an upload that failed) stops the thread.
    `hashed()` after the last byte was read. A failure to open or read `src` is raised from
    `read`, and again from every later `read`: the stream never ends as if it were whole."""

    def __init__(self, src: Path, keys: tuple[str, ...]) -> None:
        age = _age()
        self._enc = age.Encryptor([age.Recipient.parse(k) for k in keys])
        self._src = src
        self._scope = ExitStack()
        self._plain = self._scope.enter_context(_Digest())
        self._stored = self._scope.enter_context(_Digest())
        self._scope.enter_context(quick_handoff())
        self._blocks: queue.Queue[bytes | bytearray | BaseException | None] = \
            queue.Queue(_DEPTH)
        self._stop = threading.Event()
        self._view = memoryview(b"")
        self._ended = False
        self.failed: BaseException | None = None  # what stopped the sealing thread
        self._thread = threading.Thread(target=self._make, name="atb-seal", daemon=True)
        self._thread.start()

    def _put(self, item: bytes | bytearray | BaseException | None) -> bool:
        while not self._stop.is_set():
            try:
                self._blocks.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def _make(self) -> None:
        try:
            with self._src.open("rb", buffering=0) as fh:
                self._stored.add(self._enc.head)
                if not self._put(self._enc.head):
                    return
                block = _read_block(fh, BLOCK)
                while True:
                    after = _read_block(fh, BLOCK) if len(block) == BLOCK else bytearray()
                    self._plain.add(block)
                    sealed = self._enc.seal(block, final=not after)
                    self._stored.add(sealed)
                    if not self._put(sealed) or not after:
                        break
                    block = after
            self._put(None)
        except BaseException as exc:  # raised in the reader's thread, from `read`
            self.failed = exc
            self._put(exc)

    def _next(self) -> bytes | bytearray | None:
        if self.failed is not None and self._ended:
            raise self.failed  # a failed stream stays failed, however often it is read
        if self._ended:
            return None
        item = self._blocks.get()
        if isinstance(item, BaseException):
            self._ended = True
            raise item
        if item is None:
            self._ended = True
        return item

    def __iter__(self) -> Iterator[bytes | bytearray]:
        while (item := self._next()) is not None:
            yield item

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        """Exactly `n` bytes (all with -1), fewer only at the end."""
        parts: list[memoryview] = []
        want = n if n >= 0 else 1 << 62
        while want:
            if not self._view:
                item = self._next()
                if item is None:
                    break
                self._view = memoryview(item)
            take = self._view[:want]
            parts.append(take)
            self._view = self._view[len(take):]
            want -= len(take)
        return b"".join(parts)

    def hashed(self) -> Hashed:
        self._thread.join()
        return Hashed(self._plain.size, self._plain.hexdigest(), self._stored.size,
                      self._stored.hexdigest())

    def __enter__(self) -> SealedStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._scope.close()


def seal_to(src: Path, out: BinaryIO, keys: tuple[str, ...]) -> Hashed:
    """`src` encrypted to `keys` into any binary writer, hashing both sides in the one
    pass."""
    with SealedStream(src, keys) as stream:
        for block in stream:
            out.write(block)
        return stream.hashed()


def seal(src: Path, dest: Path, keys: tuple[str, ...]) -> Hashed:
    """Copy `src` to `dest`, encrypted to `keys`, hashing both sides."""
    # no fsync: a staging copy for the upload, worthless after a crash (the object's hash
    # is what proves it)
    with dest.open("wb") as fout:
        return seal_to(src, fout, keys)


def hash_file(src: Path) -> Hashed:
    """A file stored as it is: one hash for both sides."""
    digest, size = hashlib.sha256(), 0
    with src.open("rb", buffering=0) as fh:
        buf = bytearray(CHUNK)
        view = memoryview(buf)
        while n := fh.readinto(buf):
            digest.update(view[:n])
            size += n
    return Hashed(size, digest.hexdigest(), size, digest.hexdigest())


def unseal(stream: Any, dest: Path, *, ids: list[Identity] | None, what: str) -> Hashed:
    """Write the plaintext of `stream` (decrypted with `ids` when given) to `dest`, hashing
    both sides in the one pass."""
    with dest.open("wb") as fout:
        return unseal_to(stream, fout, ids=ids, what=what)


class _Sink:
    """Plaintext written and hashed, in order, by a thread of its own (both release the
    GIL) while the caller decrypts the next block; the writer's error raised on the next
    `add` or at `close`."""

    def __init__(self, out: Any) -> None:
        self.out, self.digest, self.size = out, hashlib.sha256(), 0
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="atb-write")
        self.pending: deque[Future[None]] = deque()

    def _write(self, data: bytes | bytearray) -> None:
        self.out.write(data)
        self.digest.update(data)

    def add(self, data: bytes | bytearray) -> None:
        if data:
            self.size += len(data)
            self.pending.append(self.pool.submit(self._write, data))
        while len(self.pending) > 2:
            self.pending.popleft().result()

    def close(self) -> None:
        try:
            while self.pending:
                self.pending.popleft().result()
        finally:
            self.pool.shutdown(wait=True, cancel_futures=True)


def unseal_to(stream: Any, out: Any, *, ids: list[Identity] | None, what: str) -> Hashed:
    """`unseal` into any binary writer (a file, a pipe to pg_restore)."""
    if ids is not None:
        age = _age()
        dec, sink = age.Decryptor(ids), _Sink(out)
        with quick_handoff(), _Digest() as stored:
            try:
                while data := stream.read(PLAIN_CHUNK):
                    stored.add(data)
                    sink.add(dec.feed(data))
                sink.add(dec.finish())
            except age.DecryptError as exc:
                raise VerifyFailed(f"{what}: cannot decrypt ({exc}): the wrong identity, or "
                                   "the object was altered") from exc
            finally:
                sink.close()
            return Hashed(sink.size, sink.digest.hexdigest(), stored.size, stored.hexdigest())
    # plain: the bytes stored are the plaintext, so one hash serves both sides, computed
    # in a second thread while this one writes (both release the GIL)
    digest, size = hashlib.sha256(), 0
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="atb-hash") as pool:
        while data := stream.read(PLAIN_CHUNK):
            hashing = pool.submit(digest.update, data)
            try:
                out.write(data)
            finally:
                hashing.result()
            size += len(data)
    return Hashed(size, digest.hexdigest(), size, digest.hexdigest())
