"""Encryption of what leaves the host, in the age format (`age_format`: X25519 recipients,
OpenSSL's ChaCha20-Poly1305): public keys on the backup host, the identity only where a
backup is restored. Both the plaintext and the ciphertext are hashed in the same streaming
pass, so a download proves both.

The work is spread over threads that all release the GIL (OpenSSL's cipher, hashlib on
large buffers, file reads and writes): on the way up, a thread seals a few parts ahead of
the upload into buffers it reuses and hashes each part it filled, another hashes the
plaintext; on the way down, each part is decrypted by the thread that fetched it, and both
sides hashed in order beside (`unseal_ranged`). One helper runs ordered work in a thread of
its own (`_Ordered`: the hashes, the writer)."""

from __future__ import annotations

import hashlib
import io
import os
import queue
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Self

from backup_core.tools.errors import ConfigError, ToolchainError, VerifyFailed
from backup_core.tools.extras import require

if TYPE_CHECKING:
    from backup_core.store.age_format import Identity
    from backup_core.store.repository import Repository

Buffer = bytes | bytearray | memoryview

CHUNK = 1 << 20
BLOCK = 8 << 20  # plaintext read, encrypted and hashed at a time: 128 age chunks
PART = 8 << 20  # the ciphertext handed on at a time: one part of a multipart upload
PLAIN_CHUNK = 8 << 20  # one part of a ranged download, read whole
_DEPTH = 3  # parts queued between the cipher and the upload (memory: a few parts)
HEAD_PROBE = 64 << 10  # the first read of a ranged decryption: the header, and a margin
PART_CHUNKS = 128  # sealed chunks in one part of a ranged decryption: 8 MiB of plaintext
_KEEP = 16  # parts given back and kept for reuse (the upload's in flight, and the queue)
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


class _Ordered:
    """Work applied to buffers in order by a thread of its own (hashing, writing: both
    release the GIL) while the caller goes on; at most `depth` buffers waiting. `add`
    returns the buffer's future (done: the buffer may be reused); the work's error is raised
    from a later `add` or from `wait`. A context manager (the thread ends with it)."""

    def __init__(self, work: Callable[[Buffer], object], *, name: str, depth: int = 2) -> None:
        self.work, self.depth, self.size = work, depth, 0
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self.pending: deque[Future[object]] = deque()

    def add(self, data: Buffer) -> Future[object]:
        self.size += len(data)
        done = self.pool.submit(self.work, data)
        self.pending.append(done)
        while len(self.pending) > self.depth:
            self.pending.popleft().result()
        return done

    def wait(self) -> None:
        while self.pending:
            self.pending.popleft().result()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


class _Digest(_Ordered):
    """A SHA-256 of the buffers added, in order, in a thread of its own."""

    def __init__(self) -> None:
        self.digest = hashlib.sha256()
        super().__init__(self.digest.update, name="atb-hash")

    def hexdigest(self) -> str:
        self.wait()
        return self.digest.hexdigest()


class _Sink(_Ordered):
    """Buffers written to `out` and hashed, in order, in a thread of its own."""

    def __init__(self, out: Any) -> None:
        self.out, self.digest = out, hashlib.sha256()
        super().__init__(self._write, name="atb-write")

    def _write(self, data: Buffer) -> None:
        self.out.write(data)
        self.digest.update(data)


class _Buffers:
    """Buffers of one size given back for reuse (any thread): a fresh 8 MiB buffer costs
    2,048 page faults when first written, ~0.5 CPU s a GB here. Other sizes (a last, short
    part) are made fresh and never kept."""

    def __init__(self, size: int, keep: int) -> None:
        self.size, self.keep = size, keep
        self.free: list[bytearray] = []
        self.lock = threading.Lock()

    def take(self, size: int | None = None) -> bytearray:
        if size is None or size == self.size:
            with self.lock:
                if self.free:
                    return self.free.pop()
            return bytearray(self.size)
        return bytearray(size)

    def give(self, buf: bytearray) -> None:
        if len(buf) == self.size:
            with self.lock:
                if len(self.free) < self.keep:
                    self.free.append(buf)


def _read_into(fh: io.FileIO, buf: bytearray) -> int:
    """Fill `buf` from `fh`: its length, less only at the end of the file."""
    view, got = memoryview(buf), 0
    while got < len(buf) and (n := fh.readinto(view[got:])):
        got += n
    return got


class SealedStream:
    """`src` encrypted to `keys`, as parts of exactly `part` bytes (the last shorter) for a
    multipart upload (iterate, and `recycle` each part once sent) or as a readable stream
    (`read(n)`), made by a thread of its own a few parts ahead. The plaintext is hashed in
    one more thread; the ciphertext by the sealing thread, which holds each part whole.

    Every buffer is reused (plaintext blocks, ciphertext parts through `recycle`): the
    sealing allocates nothing per block, where fresh 8 MiB buffers cost page faults
    (~0.5 CPU s a GB here) and a join to cut parts out of blocks a copy.

    A context manager: leaving it early (an upload that failed) stops the thread.
    `hashed()` after the last part was taken. A failure to open or read `src` is raised from
    the iteration or `read`, and again from every later one: the stream never ends as if it
    were whole."""

    def __init__(self, src: Path, keys: tuple[str, ...], *, part: int = PART) -> None:
        age = _age()
        self._age = age
        self._enc = age.Encryptor([age.Recipient.parse(k) for k in keys])
        self._src, self._part = src, part
        self._scope = ExitStack()
        self._plain = self._scope.enter_context(_Digest())
        self._scope.enter_context(quick_handoff())
        self._stored, self._stored_size = hashlib.sha256(), 0
        self._parts: queue.Queue[bytearray | BaseException | None] = queue.Queue(_DEPTH)
        self._free = _Buffers(part, _KEEP)  # parts given back, for the sealing thread
        self._out: memoryview | None = None  # the part being filled, and how far
        self._at = 0
        self._stop = threading.Event()
        self._view = memoryview(b"")
        self._reading: bytearray | None = None
        self._ended = False
        self.failed: BaseException | None = None  # what stopped the sealing thread
        self._thread = threading.Thread(target=self._make, name="atb-seal", daemon=True)
        self._thread.start()

    # -- the sealing thread --

    def _put(self, item: bytearray | BaseException | None) -> bool:
        while not self._stop.is_set():
            try:
                self._parts.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def _make(self) -> None:
        try:
            with self._src.open("rb", buffering=0) as fh:
                self._emit(memoryview(self._enc.head))
                # three plaintext blocks in turn: one sealed, one hashed, one read ahead (the
                # read ahead says which block is the last, whose last chunk is marked so)
                blocks = [bytearray(BLOCK) for _ in range(3)]
                hashing: list[Future[object] | None] = [None, None, None]
                k, n = 0, _read_into(fh, blocks[0])
                while True:
                    after = 0
                    if n == BLOCK:
                        nxt = (k + 1) % 3
                        if (pending := hashing[nxt]) is not None:
                            pending.result()
                        after = _read_into(fh, blocks[nxt])
                    block = memoryview(blocks[k % 3])[:n]
                    hashing[k % 3] = self._plain.add(block)
                    if not self._seal(block, final=not after):
                        return
                    if not after:
                        break
                    k, n = k + 1, after
            if self._out is not None and not self._flush():
                return
            self._put(None)
        except BaseException as exc:  # raised in the reader's thread
            self.failed = exc
            self._put(exc)

    def _seal(self, block: memoryview, *, final: bool) -> bool:
        """Seal `block` straight into the parts (a chunk that straddles two parts through a
        scratch buffer); False when the stream was stopped."""
        age, part = self._age, self._part
        chunks = max(1, -(-len(block) // age.CHUNK))
        i = 0
        while i < chunks:
            if self._out is None:
                self._out, self._at = memoryview(self._take()), 0
            fit = min(chunks - i, (part - self._at) // age.SEALED_CHUNK)
            last = final and i + max(fit, 1) == chunks
            if fit:
                piece = block[i * age.CHUNK:(i + fit) * age.CHUNK]
                self._at += self._enc.seal_into(piece, self._out[self._at:], final=last)
                if self._at == part and not self._flush():
                    return False
            else:
                piece = block[i * age.CHUNK:(i + 1) * age.CHUNK]
                scratch = bytearray(age.SEALED_CHUNK)
                done = self._enc.seal_into(piece, scratch, final=last)
                if not self._emit(memoryview(scratch)[:done]):
                    return False
            i += max(fit, 1)
        return True

    def _emit(self, data: memoryview) -> bool:
        """Copy `data` into the parts."""
        while data:
            if self._out is None:
                self._out, self._at = memoryview(self._take()), 0
            take = min(len(data), self._part - self._at)
            self._out[self._at:self._at + take] = data[:take]
            self._at += take
            data = data[take:]
            if self._at == self._part and not self._flush():
                return False
        return True

    def _flush(self) -> bool:
        """Hash the part filled (in this thread, which holds it) and hand it on."""
        assert self._out is not None
        out, n = self._out, self._at
        self._out, self._at = None, 0
        self._stored.update(out[:n])
        self._stored_size += n
        whole = out.obj
        assert isinstance(whole, bytearray)
        if n < len(whole):  # the last part: its own buffer of its length
            short = bytearray(out[:n])
            del out
            self.recycle(whole)
            whole = short
        else:
            del out
        return self._put(whole)

    def _take(self) -> bytearray:
        return self._free.take()

    # -- the reader's side --

    def recycle(self, part: bytearray) -> None:
        """Give back a part that was sent, for the sealing thread to fill again."""
        self._free.give(part)

    def _next(self) -> bytearray | None:
        if self.failed is not None and self._ended:
            raise self.failed  # a failed stream stays failed, however often it is read
        if self._ended:
            return None
        item = self._parts.get()
        if isinstance(item, BaseException):
            self._ended = True
            raise item
        if item is None:
            self._ended = True
        return item

    def __iter__(self) -> Iterator[bytearray]:
        while (item := self._next()) is not None:
            yield item

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        """Exactly `n` bytes (all with -1), fewer only at the end."""
        parts: list[memoryview] = []
        done: list[bytearray] = []  # given back once copied out
        want = n if n >= 0 else 1 << 62
        while want:
            if not self._view:
                if self._reading is not None:
                    done.append(self._reading)
                    self._reading = None
                item = self._next()
                if item is None:
                    break
                self._reading, self._view = item, memoryview(item)
            take = self._view[:want]
            parts.append(take)
            self._view = self._view[len(take):]
            want -= len(take)
        data = b"".join(parts)
        del parts
        for part in done:
            self.recycle(part)
        return data

    def hashed(self) -> Hashed:
        self._thread.join()
        return Hashed(self._plain.size, self._plain.hexdigest(), self._stored_size,
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
        for part in stream:
            out.write(part)
            stream.recycle(part)
        return stream.hashed()


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


def unseal_to(stream: Any, out: Any, *, ids: list[Identity] | None, what: str) -> Hashed:
    """`unseal` into any binary writer (a file, a pipe to pg_restore)."""
    if ids is not None:
        age = _age()
        dec = age.Decryptor(ids)
        with quick_handoff(), _Digest() as stored, _Sink(out) as sink:
            try:
                while data := stream.read(PLAIN_CHUNK):
                    stored.add(data)
                    sink.add(dec.feed(data))
                sink.add(dec.finish())
            except age.DecryptError as exc:
                raise VerifyFailed(f"{what}: cannot decrypt ({exc}): the wrong identity, or "
                                   "the object was altered") from exc
            sink.wait()
            return Hashed(sink.size, sink.digest.hexdigest(), stored.size, stored.hexdigest())
    # plain: the bytes stored are the plaintext, so one hash serves both sides, computed
    # in a second thread while this one writes (both release the GIL)
    with _Digest() as digest:
        while data := stream.read(PLAIN_CHUNK):
            digest.add(data)
            out.write(data)
        return Hashed(digest.size, digest.hexdigest(), digest.size, digest.hexdigest())


def unseal_ranged(repo: Repository, rel: str, size: int, fd: int, *, ids: list[Identity],
                  what: str, progress: Callable[[int], None] | None = None) -> Hashed:
    """A large encrypted object downloaded into the file `fd`: its header read (and its MAC
    checked) first, then its parts fetched in parallel, each decrypted by the thread that
    fetched it and its plaintext written at its offset (as the plain download writes), while
    this thread hashes both sides in order, each in a thread of its own. Every strictness of
    `Decryptor` holds (`age_format.Payload`): a part's plaintext is written only once all
    its chunks authenticate, and any failure is raised (the caller removes the file)."""
    from backup_core.store import repository

    age = _age()
    head, etag = repo.read_range(rel, 0, min(size, HEAD_PROBE))
    n = age.header_length(head)
    if n is None and len(head) == HEAD_PROBE < size:
        head, etag = repo.read_range(rel, 0, min(size, age.HEADER_MAX + 1))
        n = age.header_length(head)
    try:
        if n is None:  # the stream's own error: where the header ends too soon
            dec = age.Decryptor(ids)
            dec.feed(head)
            dec.finish()
            raise age.HeaderError("not an age header")
        payload = age.Payload(bytes(head[:n]), ids, size)
    except age.DecryptError as exc:
        raise VerifyFailed(f"{what}: cannot decrypt ({exc}): the wrong identity, or the "
                           "object was altered") from exc
    step = PART_CHUNKS * age.SEALED_CHUNK
    spans = [repository.Span(at, min(at + step, size)) for at in range(n, size, step)]

    plain_parts = _Buffers(PART_CHUNKS * age.CHUNK, _KEEP)  # the plaintext's, reused

    # at most as many parts decrypted at once as there are cores: ten fetching threads all
    # taking the GIL back after every chunk cost ~0.4 CPU s a GB more than two (measured)
    decrypting = threading.Semaphore(max(1, min(2, os.cpu_count() or 1)))

    def work(i: int, data: bytes) -> bytearray:
        chunks = -(-len(data) // age.SEALED_CHUNK)
        plain = plain_parts.take(len(data) - chunks * age.TAG)
        with decrypting:
            payload.open_into(i * PART_CHUNKS, data, plain)
        view, at = memoryview(plain), i * PART_CHUNKS * age.CHUNK
        while view:
            written = os.pwrite(fd, view, at)
            view, at = view[written:], at + written
        return plain

    hashing: deque[tuple[Future[object], Future[object], bytearray]] = deque()
    with quick_handoff(), _Digest() as stored, _Digest() as plain:
        stored.add(head[:n])
        try:
            with repository.spans_fetched(repo, rel, size, etag, spans, work) as parts:
                for data, text in parts:
                    hashing.append((stored.add(data), plain.add(text), text))
                    while hashing and hashing[0][0].done() and hashing[0][1].done():
                        plain_parts.give(hashing.popleft()[2])
                    if progress is not None:
                        progress(stored.size)
        except age.DecryptError as exc:
            raise VerifyFailed(f"{what}: cannot decrypt ({exc}): the wrong identity, or the "
                               "object was altered") from exc
        return Hashed(plain.size, plain.hexdigest(), stored.size, stored.hexdigest())
