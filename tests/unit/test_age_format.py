"""Our age (backup_core/store/age_format.py) is the age format: pyrage (rage, the Rust age)
opens what it writes and it opens what pyrage writes, at the chunk boundaries and with
several recipients; the age project's own test vectors (CCTV, X25519 and STREAM cases) give
the expected result, success with the exact plaintext or a failure at the exact stage."""

from __future__ import annotations

import hashlib
import zlib
from pathlib import Path

import pyrage
import pytest

from backup_core.store import age_format
from backup_core.store.age_format import Identity, Recipient

KIT = Path(__file__).resolve().parents[1] / "data" / "age_testkit"
SIZES = [0, 1, 65535, 65536, 65537, 3 * 65536 + 1]


def _data(n: int) -> bytes:
    return (hashlib.sha256(str(n).encode()).digest() * (n // 32 + 1))[:n]


def test_keys_are_age_keys_both_ways() -> None:
    theirs = pyrage.x25519.Identity.generate()
    ours = Identity.parse(str(theirs))
    assert str(ours) == str(theirs)
    assert str(ours.to_public()) == str(theirs.to_public())
    mine = Identity.generate()
    assert str(pyrage.x25519.Identity.from_str(str(mine)).to_public()) == str(mine.to_public())
    assert str(Recipient.parse(str(mine.to_public()))) == str(mine.to_public())
    assert str(mine) not in repr(mine)  # a secret never in a repr


@pytest.mark.parametrize("bad", ["age1qqq", "AGE1" + "q" * 58, "age-secret-key-1qqq", ""])
def test_bad_keys_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        Recipient.parse(bad)
    with pytest.raises(ValueError):
        Identity.parse(bad)


@pytest.mark.parametrize("size", SIZES)
def test_pyrage_opens_ours_and_we_open_pyrages(size: int) -> None:
    data = _data(size)
    ids = [pyrage.x25519.Identity.generate() for _ in range(3)]
    ours = [Identity.parse(str(i)) for i in ids]
    sealed = age_format.encrypt(data, [o.to_public() for o in ours])
    assert len(sealed) - len(data) == len(sealed[: sealed.index(b"\n---")]) + 49 + 16 + 16 * (
        max(1, -(-size // 65536)))
    for theirs in ids:  # each recipient alone opens it
        assert pyrage.decrypt(sealed, [theirs]) == data
    theirs_sealed = pyrage.encrypt(data, [i.to_public() for i in ids])
    for one in ours:
        assert age_format.decrypt(theirs_sealed, [one]) == data


@pytest.mark.parametrize("piece", [1, 4096, 65552, 1 << 20])
def test_streaming_in_any_pieces(piece: int) -> None:
    data = _data(3 * 65536 + 1)
    ident = pyrage.x25519.Identity.generate()
    sealed = pyrage.encrypt(data, [ident.to_public()])
    dec = age_format.Decryptor([Identity.parse(str(ident))])
    out = bytearray()
    for at in range(0, len(sealed), piece):
        out += dec.feed(sealed[at:at + piece])
    out += dec.finish()
    assert bytes(out) == data
    enc = age_format.Encryptor([Identity.parse(str(ident)).to_public()])
    blocks = [enc.head, enc.seal(data[:131072], final=False),
              enc.seal(data[131072:], final=True)]
    assert pyrage.decrypt(b"".join(bytes(b) for b in blocks), [ident]) == data


def test_wrong_identity_altered_cut_and_extended() -> None:
    me, other = Identity.generate(), Identity.generate()
    sealed = age_format.encrypt(_data(200_000), [me.to_public()])
    with pytest.raises(age_format.NoIdentityError):
        age_format.decrypt(sealed, [other])
    flipped = bytearray(sealed)
    flipped[-70_000] ^= 1
    with pytest.raises(age_format.PayloadError, match="altered"):
        age_format.decrypt(bytes(flipped), [me])
    for cut in (sealed[:-1], sealed[:-(200_000 - 2 * 65536 + 16)], sealed[:-1 - 65552]):
        with pytest.raises(age_format.PayloadError):
            age_format.decrypt(cut, [me])
    with pytest.raises(age_format.PayloadError):
        age_format.decrypt(sealed + b"x", [me])
    header = bytearray(sealed)
    header[sealed.index(b"X25519") + 1] = ord("Y")  # "XY5519": our stanza is gone
    with pytest.raises(age_format.NoIdentityError):
        age_format.decrypt(bytes(header), [me])
    mac = bytearray(sealed)
    mac[sealed.index(b"\n---") + 6] ^= 2
    with pytest.raises(age_format.DecryptError):
        age_format.decrypt(bytes(mac), [me])


def _vector(path: Path) -> tuple[dict[str, list[str]], bytes]:
    raw = path.read_bytes()
    head, _, body = raw.partition(b"\n\n")
    meta: dict[str, list[str]] = {}
    for line in head.decode().splitlines():
        key, _, value = line.partition(": ")
        meta.setdefault(key, []).append(value)
    if meta.get("compressed") == ["zlib"]:
        body = zlib.decompress(body)
    return meta, body


EXPECT = {"header failure": age_format.HeaderError, "no match": age_format.NoIdentityError,
          "HMAC failure": age_format.MacError, "payload failure": age_format.PayloadError}


@pytest.mark.parametrize("name", sorted(p.name for p in KIT.iterdir() if p.name != "LICENSE"))
def test_age_testkit_vector(name: str) -> None:
    meta, body = _vector(KIT / name)
    ids = [Identity.parse(i) for i in meta.get("identity", [])]
    expect = meta["expect"][0]
    dec = age_format.Decryptor(ids)
    out = bytearray()
    try:
        for at in range(0, len(body), 50_000):
            out += dec.feed(body[at:at + 50_000])
        out += dec.finish()
    except age_format.DecryptError as exc:
        assert expect != "success", f"{name}: {exc}"
        assert isinstance(exc, EXPECT[expect]), f"{name}: {type(exc).__name__} {exc}"
        if isinstance(exc, age_format.PayloadError):
            out += exc.partial
    else:
        assert expect == "success", name
    if "payload" in meta:  # what was released before any failure, exactly
        assert hashlib.sha256(out).hexdigest() == meta["payload"][0], name


def test_a_recipient_of_low_order_is_refused_when_parsed() -> None:
    """The all-zero point parses as Bech32 but gives no shared secret: refused at once
    (BACKUP_ENCRYPT_TO is checked before work starts), not at the first encryption."""
    low = age_format.bech32_encode("age", bytes(32))
    with pytest.raises(ValueError, match="low order"):
        age_format.Recipient.parse(low)


def _random_access(body: bytes, ids: list[Identity], run: int = 2) -> bytes:
    """`body` opened as a ranged download opens it (`sealing.unseal_ranged`): the header,
    then runs of `run` chunks, here in reverse order, each into its place."""
    n = age_format.header_length(body)
    if n is None:  # the download leaves a header that never ends to the stream's own error
        dec = age_format.Decryptor(ids)
        dec.feed(body)
        dec.finish()
        raise AssertionError("a header that never ends was accepted")
    payload = age_format.Payload(body[:n], ids, len(body))
    out = bytearray(payload.plain_size)
    step = run * age_format.SEALED_CHUNK
    for first in reversed(range(0, payload.chunks, run)):
        at = n + first * age_format.SEALED_CHUNK
        done = payload.open_into(first, body[at:at + step],
                                 memoryview(out)[first * age_format.CHUNK:])
        assert done == min(run * age_format.CHUNK, payload.plain_size
                           - first * age_format.CHUNK)
    return bytes(out)


@pytest.mark.parametrize("name", sorted(p.name for p in KIT.iterdir() if p.name != "LICENSE"))
def test_age_testkit_vector_in_parts_out_of_order(name: str) -> None:
    """The ranged download's decryption (parts in any order, in any thread) gives every
    vector the stream's verdict: the exact plaintext, or a failure at the same stage."""
    meta, body = _vector(KIT / name)
    ids = [Identity.parse(i) for i in meta.get("identity", [])]
    expect = meta["expect"][0]
    try:
        out = _random_access(body, ids)
    except age_format.DecryptError as exc:
        assert expect != "success", f"{name}: {exc}"
        assert isinstance(exc, EXPECT[expect]), f"{name}: {type(exc).__name__} {exc}"
    else:
        assert expect == "success", name
        if "payload" in meta:
            assert hashlib.sha256(out).hexdigest() == meta["payload"][0], name


@pytest.mark.parametrize("size", [*SIZES, 5 * 65536 + 7])
def test_parts_opened_out_of_order_are_the_file(size: int) -> None:
    data = _data(size)
    ident = pyrage.x25519.Identity.generate()
    ours = [Identity.parse(str(ident))]
    for sealed in (pyrage.encrypt(data, [ident.to_public()]),
                   age_format.encrypt(data, [ours[0].to_public()])):
        for run in (1, 2, 3):
            assert _random_access(sealed, ours, run) == data


def _both(body: bytes, ids: list[Identity]) -> tuple[str, str]:
    """The error the stream raises and the one the parts raise, each as 'Class: message'."""
    found = []
    for how in (lambda: age_format.decrypt(body, ids), lambda: _random_access(body, ids)):
        with pytest.raises(age_format.DecryptError) as raised:
            how()
        found.append(f"{type(raised.value).__name__}: {raised.value}")
    return found[0], found[1]


def test_parts_refuse_what_the_stream_refuses_each_with_its_own_error() -> None:
    """A chunk altered in a middle part, a stream cut short at a chunk boundary (its last
    chunk not marked last) or inside a chunk, one extended past its last chunk, a header
    MAC that does not match: the ranged decryption raises the stream's own error for each."""
    me = Identity.generate()
    data = _data(5 * 65536 + 7)
    sealed = age_format.encrypt(data, [me.to_public()])
    n = age_format.header_length(sealed)
    assert n is not None
    altered = bytearray(sealed)
    altered[n + 2 * age_format.SEALED_CHUNK + 100] ^= 1  # the third chunk: a middle part
    at_boundary = sealed[: n + 3 * age_format.SEALED_CHUNK]
    inside = sealed[: n + 3 * age_format.SEALED_CHUNK + 10]
    one = age_format.encrypt(_data(65536), [me.to_public()])  # one whole chunk, marked last
    mac = bytearray(sealed)
    first = sealed.index(b"\n---") + 5  # the MAC's first base64 character, another one
    mac[first] = ord("B") if mac[first] == ord("A") else ord("A")
    cases = {
        bytes(altered): "PayloadError: a chunk failed authentication: the payload was altered",
        at_boundary: "PayloadError: the age payload is cut short (no final chunk)",
        inside: "PayloadError: the age payload is cut short (no final chunk)",
        one + _data(100): "PayloadError: bytes after the last chunk of the age file",
        bytes(mac): "MacError: the age header's MAC does not match: the header was altered",
    }
    for body, error in cases.items():
        assert _both(body, [me]) == (error, error)
    with pytest.raises(age_format.NoIdentityError):
        age_format.Payload(sealed[:n], [Identity.generate()], len(sealed))
