"""Encryption of what leaves the host, in the age format (pyrage): public keys on the backup
host, the identity only where a backup is restored. Both the plaintext and the ciphertext are
hashed in the same streaming pass, so a download proves both."""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from backup_core.tools.errors import ConfigError, VerifyFailed
from backup_core.tools.extras import require

CHUNK = 1 << 20
PLAIN_CHUNK = 8 << 20  # one part of a ranged download, read whole


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


def _pyrage() -> Any:
    require("s3", what="encryption (BACKUP_ENCRYPT_TO)")
    import pyrage

    return pyrage


def recipients(text: str) -> tuple[str, ...]:
    """The age public keys of `BACKUP_ENCRYPT_TO` (comma or space separated), each checked."""
    keys = tuple(k for k in text.replace(",", " ").split() if k)
    if not keys:
        return ()
    pyrage = _pyrage()
    for key in keys:
        try:
            pyrage.x25519.Recipient.from_str(key)
        except Exception as exc:
            raise ConfigError(f"BACKUP_ENCRYPT_TO: {key[:12]}… is not an age public key "
                              "(age1…)") from exc
    return keys


def identities(path: Path | None) -> list[Any]:
    """The age identities in `ATB_AGE_IDENTITY_FILE` (comment lines skipped)."""
    if path is None:
        raise ConfigError("this backup is encrypted: set ATB_AGE_IDENTITY_FILE to the age "
                          "identity file whose public key it was encrypted to")
    pyrage = _pyrage()
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeError) as exc:
        raise ConfigError(f"ATB_AGE_IDENTITY_FILE: cannot read {path}: {exc}") from exc
    found = []
    for line in lines:
        line = line.strip()
        if line and not line.startswith("#"):
            try:
                found.append(pyrage.x25519.Identity.from_str(line))
            except Exception as exc:
                raise ConfigError(f"ATB_AGE_IDENTITY_FILE: {path} holds a line that is not "
                                  "an age identity (AGE-SECRET-KEY-1…)") from exc
    if not found:
        raise ConfigError(f"ATB_AGE_IDENTITY_FILE: {path} holds no age identity")
    return found


def identity_fingerprints(ids: list[Any]) -> frozenset[str]:
    return frozenset(fingerprint(str(i.to_public())) for i in ids)


class _HashingReader(io.RawIOBase):
    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.digest = hashlib.sha256()
        self.size = 0
        self.error: Exception | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        try:
            if hasattr(self.inner, "readinto"):
                n = self.inner.readinto(buf)
            else:  # a streaming HTTP body reads, it does not readinto
                data = self.inner.read(len(buf))
                n = len(data)
                buf[:n] = data
        except Exception as exc:
            self.error = exc
            raise
        if n:
            self.digest.update(memoryview(buf)[:n])
            self.size += n
        return n or 0


class _HashingWriter(io.RawIOBase):
    def __init__(self, inner: BinaryIO) -> None:
        self.inner = inner
        self.digest = hashlib.sha256()
        self.size = 0
        self.error: Exception | None = None

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = memoryview(data)
        self.digest.update(view)
        self.size += len(view)
        try:
            self.inner.write(view)
        except Exception as exc:
            self.error = exc
            raise
        return len(view)


def seal_to(src: Path, out: BinaryIO, keys: tuple[str, ...]) -> Hashed:
    """`src` encrypted to `keys` into any binary writer (a pipe into an upload), hashing
    both sides in the one pass."""
    pyrage = _pyrage()
    with src.open("rb") as fin:
        reader, writer = _HashingReader(fin), _HashingWriter(out)
        pyrage.encrypt_io(reader, writer, [pyrage.x25519.Recipient.from_str(k) for k in keys])
    return Hashed(reader.size, reader.digest.hexdigest(), writer.size, writer.digest.hexdigest())


def seal(src: Path, dest: Path, keys: tuple[str, ...]) -> Hashed:
    """Copy `src` to `dest`, encrypted to `keys` when there are any, hashing both sides."""
    with src.open("rb") as fin, dest.open("wb") as fout:
        reader, writer = _HashingReader(fin), _HashingWriter(fout)
        if keys:
            pyrage = _pyrage()
            pyrage.encrypt_io(reader, writer,
                              [pyrage.x25519.Recipient.from_str(k) for k in keys])
        else:
            buf = bytearray(CHUNK)
            while n := reader.readinto(buf):
                writer.write(memoryview(buf)[:n])
        # no fsync: a staging copy for the upload, worthless after a crash (the object's
        # hash is what proves it)
    return Hashed(reader.size, reader.digest.hexdigest(), writer.size, writer.digest.hexdigest())


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


def unseal(stream: Any, dest: Path, *, ids: list[Any] | None, what: str) -> Hashed:
    """Write the plaintext of `stream` (decrypted with `ids` when given) to `dest`, hashing
    both sides in the one pass."""
    with dest.open("wb") as fout:
        return unseal_to(stream, fout, ids=ids, what=what)


def unseal_to(stream: Any, out: Any, *, ids: list[Any] | None, what: str) -> Hashed:
    """`unseal` into any binary writer (a file, a pipe to pg_restore)."""
    if ids is not None:
        reader, writer = _HashingReader(stream), _HashingWriter(out)
        pyrage = _pyrage()
        try:
            pyrage.decrypt_io(reader, writer, ids)
        except (pyrage.DecryptError, OSError) as exc:
            # a chunk altered mid-stream comes out of age as an I/O error; ours (reading
            # the stream, writing the file) are the ones our reader and writer met
            ours = reader.error or writer.error
            if isinstance(exc, OSError) and ours is not None:
                raise ours from exc
            raise VerifyFailed(f"{what}: cannot decrypt ({exc}): the wrong identity, or "
                               "the object was altered") from exc
        return Hashed(writer.size, writer.digest.hexdigest(), reader.size,
                      reader.digest.hexdigest())
    # plain: the bytes stored are the plaintext, so one hash serves both sides, computed
    # in a second thread while this one writes (both release the GIL)
    from concurrent.futures import ThreadPoolExecutor

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
