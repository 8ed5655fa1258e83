"""The age file format (age-encryption.org/v1, https://c2sp.org/age): its X25519 recipient
type and its STREAM payload, over `cryptography`'s primitives (OpenSSL).

Why not pyrage: it holds the GIL for the whole of a file and runs at 1.6 (encrypt) and 2.25
(decrypt) CPU-seconds a GB here, while OpenSSL's ChaCha20-Poly1305 takes 0.33; the format is
small and exactly specified. The files are age files: pyrage (rage) reads what this writes
and this reads what pyrage writes (tests/unit/test_age_format.py), and the age project's own
test vectors (CCTV, tests/data/age_testkit, made with the Go age) pass.

Strict on decryption: any malformed header, a header MAC that does not match, no identity
among the recipients, a chunk whose tag fails, a stream cut short or with bytes after its
last chunk: each raises a `DecryptError` subclass, and no plaintext past the last
authenticated chunk is ever released. Read in order (`Decryptor`) or in parts of a known
whole, in any order and any thread (`Payload`, for a parallel download): the same errors,
tested on the same vectors.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import os
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

VERSION_LINE = b"age-encryption.org/v1"
X25519_INFO = b"age-encryption.org/v1/X25519"
CHUNK = 64 << 10  # plaintext bytes per STREAM chunk
TAG = 16
SEALED_CHUNK = CHUNK + TAG
NONCE = 16  # the payload's nonce, right after the header
HEADER_MAX = 1 << 20  # a header longer than this is not one we wrote or could use
_ZERO_NONCE = bytes(12)


class DecryptError(Exception):
    """Not a readable age file for these identities (the subclasses say which stage)."""


class HeaderError(DecryptError):
    """The header does not parse, or a stanza meant for X25519 is malformed."""


class NoIdentityError(DecryptError):
    """None of the identities opens any recipient stanza: the wrong identity."""


class MacError(DecryptError):
    """The file key opened, but the header was altered (its MAC does not match)."""


class PayloadError(DecryptError):
    """A chunk failed its tag, or the stream was cut short or extended. `partial`: the
    plaintext of the chunks this last step authenticated before the failure."""

    def __init__(self, message: str, partial: bytes = b"") -> None:
        super().__init__(message)
        self.partial = partial


# -- encodings -------------------------------------------------------------------------------


def b64encode(data: bytes) -> bytes:
    """Standard base64 without padding (the spec's encoding)."""
    return base64.b64encode(data).rstrip(b"=")


def b64decode(text: bytes) -> bytes:
    """Strict: the standard alphabet, no padding, canonical (unused bits zero)."""
    if b"=" in text or b"\n" in text or b"\r" in text:
        raise HeaderError("base64 with padding or a line break")
    try:
        data = base64.b64decode(text + b"=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise HeaderError("not base64") from exc
    if b64encode(data) != text:
        raise HeaderError("non-canonical base64")
    return data


_BECH32 = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
_GEN = (0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)


def _polymod(values: list[int]) -> int:
    chk = 1
    for v in values:
        top = chk >> 25
        chk = (chk & 0x1FFFFFF) << 5 ^ v
        for i, g in enumerate(_GEN):
            if (top >> i) & 1:
                chk ^= g
    return chk


def _hrp_expand(hrp: str) -> list[int]:
    return [ord(c) >> 5 for c in hrp] + [0] + [ord(c) & 31 for c in hrp]


def _regroup(data: Sequence[int], frm: int, to: int, *, pad: bool) -> list[int]:
    acc = bits = 0
    out = []
    for v in data:
        acc = (acc << frm) | v
        bits += frm
        while bits >= to:
            bits -= to
            out.append((acc >> bits) & ((1 << to) - 1))
    if pad and bits:
        out.append((acc << (to - bits)) & ((1 << to) - 1))
    elif not pad and (bits >= frm or (acc << (to - bits)) & ((1 << to) - 1)):
        raise ValueError("Bech32 padding is not zero")
    return out


def bech32_encode(hrp: str, data: bytes) -> str:
    """BIP 173 Bech32 without its length limit, as age spells its keys (lower case)."""
    five = _regroup(data, 8, 5, pad=True)
    chk = _polymod(_hrp_expand(hrp) + five + [0] * 6) ^ 1
    return hrp + "1" + "".join(_BECH32[d] for d in five + [(chk >> 5 * (5 - i)) & 31
                                                             for i in range(6)])


def bech32_decode(text: str) -> tuple[str, bytes]:
    """(human-readable part, data) of a Bech32 string in one case; ValueError otherwise."""
    if text.lower() != text and text.upper() != text:
        raise ValueError("Bech32 in mixed case")
    s = text.lower()
    pos = s.rfind("1")
    if pos < 1 or pos + 7 > len(s) or any(not 33 <= ord(c) <= 126 for c in s):
        raise ValueError("not Bech32")
    hrp, values = s[:pos], [_BECH32.find(c) for c in s[pos + 1:]]
    if -1 in values or _polymod(_hrp_expand(hrp) + values) != 1:
        raise ValueError("Bech32 checksum or character wrong")
    return hrp, bytes(_regroup(values[:-6], 5, 8, pad=False))


# -- keys ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Recipient:
    """An X25519 public key, `age1…`."""

    public: bytes

    @classmethod
    def parse(cls, text: str) -> Recipient:
        hrp, data = bech32_decode(text.strip())
        if hrp != "age" or len(data) != 32 or text.strip() != text.strip().lower():
            raise ValueError("not an age X25519 recipient (age1…)")
        try:  # a key of low order makes no shared secret: refused here, not at encryption
            X25519PrivateKey.generate().exchange(X25519PublicKey.from_public_bytes(data))
        except ValueError:
            raise ValueError("an age X25519 recipient of low order (no usable key)") from None
        return cls(data)

    def __str__(self) -> str:
        return bech32_encode("age", self.public)


@dataclass(frozen=True, repr=False)
class Identity:
    """An X25519 private key, `AGE-SECRET-KEY-1…` (never in a repr, a log or an error)."""

    secret: bytes

    @classmethod
    def parse(cls, text: str) -> Identity:
        try:
            hrp, data = bech32_decode(text.strip())
        except ValueError:
            raise ValueError("not an age identity (AGE-SECRET-KEY-1…)") from None
        if hrp != "age-secret-key-" or len(data) != 32 or text.strip() != text.strip().upper():
            raise ValueError("not an age identity (AGE-SECRET-KEY-1…)")
        return cls(data)

    @classmethod
    def generate(cls) -> Identity:
        return cls(os.urandom(32))

    def __repr__(self) -> str:
        return f"Identity({self.to_public()})"

    def __str__(self) -> str:
        return bech32_encode("age-secret-key-", self.secret).upper()

    def to_public(self) -> Recipient:
        key = X25519PrivateKey.from_private_bytes(self.secret)
        return Recipient(key.public_key().public_bytes_raw())


def _hkdf(ikm: bytes, salt: bytes, info: bytes) -> bytes:
    """HKDF-SHA-256 (RFC 5869) to 32 bytes: one extract, one expand block."""
    prk = hmac.digest(salt, ikm, "sha256")
    return hmac.digest(prk, info + b"\x01", "sha256")


def _stream_nonce(counter: int, last: bool) -> bytes:
    return counter.to_bytes(11, "big") + (b"\x01" if last else b"\x00")


# -- encryption ------------------------------------------------------------------------------


class Encryptor:
    """One age file written in blocks: `head` (header and payload nonce) first, then `seal`
    of each block of plaintext, in order. Every block but the last is a whole number of
    64 KiB chunks; the last (final=True) may be any length, empty only if it is the only one.
    """

    def __init__(self, recipients: Sequence[Recipient]) -> None:
        if not recipients:
            raise ValueError("no recipients")
        file_key = os.urandom(16)
        out = [VERSION_LINE + b"\n"]
        for r in recipients:
            eph = X25519PrivateKey.generate()
            share = eph.public_key().public_bytes_raw()
            shared = eph.exchange(X25519PublicKey.from_public_bytes(r.public))
            wrap = _hkdf(shared, share + r.public, X25519_INFO)
            body = ChaCha20Poly1305(wrap).encrypt(_ZERO_NONCE, file_key, None)
            out.append(b"-> X25519 " + b64encode(share) + b"\n" + _wrap64(b64encode(body)))
        text = b"".join(out) + b"---"
        mac = hmac.digest(_hkdf(file_key, b"", b"header"), text, "sha256")
        nonce = os.urandom(NONCE)
        self.head = text + b" " + b64encode(mac) + b"\n" + nonce
        self._aead = ChaCha20Poly1305(_hkdf(file_key, nonce, b"payload"))
        self._counter = 0
        self._done = False

    def seal(self, block: bytes | bytearray | memoryview, *, final: bool) -> bytearray:
        """The ciphertext of `block`: its chunks, each 16 bytes longer."""
        n = len(memoryview(block))
        out = bytearray(sealed_size(n))
        self.seal_into(block, out, final=final)
        return out

    def seal_into(self, block: bytes | bytearray | memoryview, out: bytearray | memoryview,
                  *, final: bool) -> int:
        """Seal `block` into the front of `out` (a buffer the caller reuses: no allocation
        per block); the number of bytes written, `sealed_size(len(block))`."""
        if self._done:
            raise ValueError("the final block was sealed already")
        data = memoryview(block)
        n = len(data)
        if not final and (n % CHUNK or not n):
            raise ValueError("a block before the last must be whole 64 KiB chunks")
        if final and not n and self._counter:
            raise ValueError("an empty final block after chunks (the last must not be empty)")
        chunks = max(1, -(-n // CHUNK))
        view = memoryview(out)
        if len(view) < n + chunks * TAG:
            raise ValueError("the output buffer is too small for the sealed block")
        for i in range(chunks):
            piece = data[i * CHUNK:(i + 1) * CHUNK]
            at = i * SEALED_CHUNK
            self._aead.encrypt_into(_stream_nonce(self._counter, final and i == chunks - 1),
                                    piece, None, view[at:at + len(piece) + TAG])
            self._counter += 1
        self._done = final
        return n + chunks * TAG


def sealed_size(n: int) -> int:
    """The ciphertext length of `n` plaintext bytes sealed as one block (header excluded)."""
    return n + max(1, -(-n // CHUNK)) * TAG


def _wrap64(text: bytes) -> bytes:
    """A stanza body: 64-column lines, the last one shorter (empty when it would be full)."""
    lines = [text[i:i + 64] for i in range(0, len(text), 64)]
    if not lines or len(lines[-1]) == 64:
        lines.append(b"")
    return b"".join(line + b"\n" for line in lines)


def encrypt(data: bytes, recipients: Sequence[Recipient]) -> bytes:
    """A whole (small) file at once."""
    enc = Encryptor(recipients)
    whole = len(data) - (len(data) % CHUNK or (CHUNK if data else 0))
    body = enc.seal(data[:whole], final=False) if whole else b""
    return enc.head + bytes(body) + bytes(enc.seal(data[whole:], final=True))


# -- decryption ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Stanza:
    args: tuple[bytes, ...]
    body: bytes


def _is_vchar(arg: bytes) -> bool:
    return bool(arg) and all(0x21 <= c <= 0x7E for c in arg)


_B64 = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")


def parse_header(header: bytes) -> tuple[list[_Stanza], bytes, bytes]:
    """(stanzas, the bytes the MAC covers, the MAC) of a whole header, ending in its MAC
    line's line feed; strict per the spec's ABNF."""
    lines = header.split(b"\n")
    if lines[-1] != b"" or len(lines) < 3:
        raise HeaderError("the header does not end in a line feed")
    lines.pop()
    if lines[0] != VERSION_LINE:
        if lines[0].startswith(b"age-encryption.org/"):
            raise HeaderError("an age format version other than v1")
        raise HeaderError("not an age file")
    stanzas: list[_Stanza] = []
    i = 1
    while lines[i].startswith(b"-> "):
        args = tuple(lines[i][3:].split(b" "))
        if not all(_is_vchar(a) for a in args):
            raise HeaderError("a stanza argument is empty or not printable")
        body = b""
        while True:
            i += 1
            if i >= len(lines) - 1:
                raise HeaderError("a stanza without its final body line")
            line = lines[i]
            if len(line) > 64 or not _B64.issuperset(line):
                raise HeaderError("a stanza body line that is not base64 wrapped at 64")
            body += line
            if len(line) < 64:
                break
        stanzas.append(_Stanza(args, b64decode(body)))
        i += 1
    if not stanzas:
        raise HeaderError("no recipient stanza")
    end = lines[i]
    if i != len(lines) - 1 or not end.startswith(b"--- ") or len(end) != 47:
        raise HeaderError("a malformed header end (--- and the MAC)")
    mac = b64decode(end[4:])
    return stanzas, header[: len(header) - len(end) - 1 + 3], mac


def unwrap(stanzas: list[_Stanza], identities: Sequence[Identity]) -> bytes:
    """The file key, from the first X25519 stanza one of `identities` opens."""
    keys = [(X25519PrivateKey.from_private_bytes(i.secret), i.to_public().public)
            for i in identities]
    for st in stanzas:
        if st.args[0] != b"X25519":
            continue  # another recipient type, or grease: not ours to judge
        if len(st.args) != 2:
            raise HeaderError("an X25519 stanza with other than one argument")
        share = b64decode(st.args[1])
        if len(share) != 32 or len(st.body) != 32:
            raise HeaderError("an X25519 stanza whose share or body is not 32 bytes")
        for key, public in keys:
            try:
                shared = key.exchange(X25519PublicKey.from_public_bytes(share))
            except ValueError as exc:  # OpenSSL refuses the all-zero shared secret
                raise HeaderError("an X25519 share of low order") from exc
            if not any(shared):
                raise HeaderError("an X25519 share of low order")
            wrap = _hkdf(shared, share + public, X25519_INFO)
            try:
                return ChaCha20Poly1305(wrap).decrypt(_ZERO_NONCE, st.body, None)
            except InvalidTag:
                continue
    raise NoIdentityError("none of the identities is a recipient of this file")


class Decryptor:
    """An age file read in pieces of any size: `feed` returns the plaintext authenticated so
    far, `finish` the rest, once the input has ended. A chunk's plaintext is released only
    after its tag checks; the last chunk must be marked last and nothing may follow it."""

    def __init__(self, identities: Sequence[Identity]) -> None:
        self._ids = list(identities)
        self._buf = bytearray()
        self._aead: ChaCha20Poly1305 | None = None
        self._counter = 0
        self._ended = False

    def feed(self, data: bytes | bytearray | memoryview) -> bytearray:
        if self._ended:
            if len(data):
                raise PayloadError("bytes after the last chunk of the age file")
            return bytearray()
        src = memoryview(data)
        if self._aead is None:
            self._buf += src
            if not self._read_header():
                return bytearray()
            src, self._buf = memoryview(bytes(self._buf)), bytearray()
        # keep back at least one byte past the chunks opened: only the end says which is
        # last; `data` is read in place, only a chunk split between two pieces is copied
        whole = (len(self._buf) + len(src) - 1) // SEALED_CHUNK
        if whole <= 0:
            self._buf += src
            return bytearray()
        pieces = []
        if self._buf:
            take = SEALED_CHUNK - len(self._buf)
            pieces.append(memoryview(bytes(self._buf) + src[:take]))
            src = src[take:]
        pieces += [src[i:i + SEALED_CHUNK]
                   for i in range(0, (whole - len(pieces)) * SEALED_CHUNK, SEALED_CHUNK)]
        self._buf = bytearray(src[(whole - (1 if self._buf else 0)) * SEALED_CHUNK:])
        return self._open(pieces)

    def finish(self) -> bytearray:
        """The last chunk's plaintext; PayloadError when the stream did not end properly."""
        if self._ended:
            return bytearray()
        if self._aead is None:
            self._read_header(at_end=True)  # parses it, or raises
        assert self._aead is not None
        rest = memoryview(self._buf)
        if len(rest) < TAG:
            raise PayloadError("the age payload is cut short (no final chunk)")
        if len(rest) == TAG and self._counter:
            raise PayloadError("an empty last chunk after others")
        out = bytearray(len(rest) - TAG)
        try:
            self._aead.decrypt_into(_stream_nonce(self._counter, True), rest, None, out)
        except InvalidTag as exc:
            plain = _other_flag(self._aead, self._counter, rest, last=True)
            if plain is not None:  # a whole chunk not marked last: cut short after it
                raise _misflagged(last=True, partial=bytes(plain)) from exc
            raise PayloadError("a chunk failed authentication, or the payload was cut "
                               "short") from exc
        self._ended = True
        self._buf = bytearray()
        return out

    def _read_header(self, *, at_end: bool = False) -> bool:
        n = header_length(self._buf)
        if n is None:
            if len(self._buf) > HEADER_MAX:
                raise HeaderError("no age header end within 1 MiB")
            if not at_end:
                return False
            end = _header_end(self._buf)
            if end >= 0:  # a whole header, its payload's nonce cut short
                self._decode_header(bytes(self._buf[:end]))
                raise HeaderError("the age file ends before its payload's nonce")
            raise HeaderError("the file ends inside the age header")
        file_key = self._decode_header(bytes(self._buf[: n - NONCE]))
        nonce = bytes(self._buf[n - NONCE: n])
        self._aead = ChaCha20Poly1305(_hkdf(file_key, nonce, b"payload"))
        del self._buf[:n]
        return True

    def _decode_header(self, header: bytes) -> bytes:
        stanzas, covered, mac = parse_header(header)
        file_key = unwrap(stanzas, self._ids)
        want = hmac.digest(_hkdf(file_key, b"", b"header"), covered, "sha256")
        if not hmac.compare_digest(want, mac):
            raise MacError("the age header's MAC does not match: the header was altered")
        return file_key

    def _open(self, pieces: list[memoryview]) -> bytearray:
        """Whole chunks, none the last (more bytes follow them)."""
        assert self._aead is not None
        out = bytearray(len(pieces) * CHUNK)
        view = memoryview(out)
        for i, piece in enumerate(pieces):
            try:
                self._aead.decrypt_into(_stream_nonce(self._counter, False), piece, None,
                                        view[i * CHUNK:(i + 1) * CHUNK])
            except InvalidTag:
                good = bytes(view[: i * CHUNK])
                # a whole chunk marked last, with bytes after it: the file was extended
                plain = _other_flag(self._aead, self._counter, piece, last=False)
                if plain is None:
                    raise PayloadError("a chunk failed authentication: the payload was "
                                       "altered", good) from None
                raise _misflagged(last=False, partial=good + plain) from None
            self._counter += 1
        return out


def _other_flag(aead: ChaCha20Poly1305, counter: int, piece: memoryview, *,
                last: bool) -> bytearray | None:
    """A whole chunk whose tag failed with the `last` flag expected of it, opened with the
    other: its plaintext when it opens (the file was cut short or extended around it), None
    when it does not (it was altered)."""
    if len(piece) != SEALED_CHUNK:
        return None
    plain = bytearray(CHUNK)
    try:
        aead.decrypt_into(_stream_nonce(counter, not last), piece, None, plain)
    except InvalidTag:
        return None
    return plain


def _misflagged(*, last: bool, partial: bytes = b"") -> PayloadError:
    """A chunk that opened only with the other flag: expected `last`, the file was cut short
    after it; expected not last, bytes follow the file's real last chunk."""
    return PayloadError("the age payload is cut short (no final chunk)" if last
                        else "bytes after the last chunk of the age file", partial)


def _header_end(prefix: bytes | bytearray) -> int:
    """The length of the header (to the end of its `---` line) at the front of an age file,
    or -1 when `prefix` does not reach it yet."""
    end = prefix.find(b"\n---")
    stop = prefix.find(b"\n", end + 1) if end >= 0 else -1
    return stop + 1 if stop >= 0 else -1


def header_length(prefix: bytes | bytearray) -> int | None:
    """The length of the header and payload nonce at the front of an age file, from its first
    bytes; None when `prefix` does not reach their end yet."""
    end = _header_end(prefix)
    return None if end < 0 or len(prefix) < end + NONCE else end + NONCE


class Payload:
    """The payload of one age file of a known length (`size`, the manifest's), opened for
    random access: runs of whole chunks decrypted in any order, from any thread, each at
    its counter, as the parts of a ranged download arrive. The header (its MAC first) is
    checked here, before any chunk; the chunk that `size` makes the last must be marked
    last, and no other may be: a stream cut short, extended or altered raises the same
    `PayloadError`s as `Decryptor`, and a run's plaintext is only written, into the
    caller's buffer, once its every tag checks."""

    def __init__(self, head: bytes, identities: Sequence[Identity], size: int) -> None:
        if header_length(head) != len(head):
            raise HeaderError("not an age header and payload nonce")
        dec = Decryptor(identities)
        self.start = len(head)
        file_key = dec._decode_header(head[: self.start - NONCE])
        self._key = _hkdf(file_key, head[self.start - NONCE:], b"payload")
        body = size - self.start
        if body < TAG:
            raise PayloadError("the age payload is cut short (no final chunk)")
        self.chunks = -(-body // SEALED_CHUNK)
        tail = body - (self.chunks - 1) * SEALED_CHUNK
        if tail < TAG:
            raise PayloadError("the age payload is cut short (no final chunk)")
        if tail == TAG and self.chunks > 1:
            raise PayloadError("an empty last chunk after others")
        self.plain_size = body - self.chunks * TAG

    def open_into(self, first: int, data: bytes | bytearray | memoryview,
                  out: bytearray | memoryview) -> int:
        """Decrypt the chunks numbered from `first` that `data` holds (whole chunks; the
        last chunk of the file may end it) into the front of `out`; the plaintext length."""
        src, view = memoryview(data), memoryview(out)
        aead = ChaCha20Poly1305(self._key)  # one per call: no cipher state shared by threads
        at = done = 0
        index = first
        while at < len(src):
            piece = src[at:at + SEALED_CHUNK]
            last = index == self.chunks - 1
            if index >= self.chunks or (len(piece) < SEALED_CHUNK and not last):
                raise PayloadError("a part of the age payload is not whole chunks")
            target = view[done:done + len(piece) - TAG]
            try:
                aead.decrypt_into(_stream_nonce(index, last), piece, None, target)
            except InvalidTag:
                raise self._why(aead, index, piece, last) from None
            at += len(piece)
            done += len(piece) - TAG
            index += 1
        return done

    def _why(self, aead: ChaCha20Poly1305, index: int, piece: memoryview,
             last: bool) -> PayloadError:
        """A chunk's tag failed: whether it was marked as the other kind (the file cut short
        or extended around it) or altered."""
        if _other_flag(aead, index, piece, last=last) is not None:
            return _misflagged(last=last)
        return PayloadError("a chunk failed authentication: the payload was altered")


def decrypt(data: bytes, identities: Sequence[Identity]) -> bytes:
    """A whole (small) file at once."""
    dec = Decryptor(identities)
    return bytes(dec.feed(data) + dec.finish())
